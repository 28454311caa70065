"""A shard's partial bridge sums: what an actor computes over the rows it holds.

The arithmetic is `ucl_cli.bridge.scoring.lse_scores`'s (`lse_parts`), over one shard instead of
the whole bank: the same float32 products of unit-norm rows, scaled by the tempered logit
scales, summed a chunk of rows at a time, the chunks joined in float64. The
result travels as NumPy arrays (`WirePartial`) and is turned back into a `CalibratedPartial` on
the driver, which joins every shard's with `combine_calibrated`: any split of the rows gives
the scores of one pass over the bank, to float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ucl_cli.bridge.scoring import lse_parts
from ucl_cli.distributed.actor import ShardHost, ShardRef
from ucl_cli.distributed.bridge_request import BridgeRequest
from ucl_cli.estimators.bridge import PartialScores
from ucl_cli.estimators.calibrated import CalibratedPartial


@dataclass(frozen=True, kw_only=True)
class ScoreRequest(BridgeRequest):
    """lse's request: the sides' tempered scales, and whether to normalise per candidate."""

    what: ClassVar[str] = "partial sums"

    normalize: str = "none"

    def on_shard(self, bank: Any, shard: ShardRef, host: ShardHost) -> WirePartial:
        held = self.shard_bridge(bank, shard)
        if held is None:  # no row of the sub-bank here: logsumexp over no rows
            shape = (self.queries.shape[0], self.candidates.shape[0])
            normalizer = None if self.normalize == "none" else np.full(shape[1], -np.inf)
            return WirePartial(np.full(shape, -np.inf), 0, "float32", normalizer)
        bridge, _ = held
        parts = lse_parts(bridge, self.queries, self.candidates, self.normalize, host.device)
        return _merged(parts)


@dataclass(frozen=True)
class WirePartial:
    """A `CalibratedPartial` as NumPy arrays (what Ray sends back)."""

    lse: np.ndarray  # [N, K] float64
    count: int
    dtype: str
    normalizer: np.ndarray | None  # [K] float64

    def to_partial(self) -> CalibratedPartial:
        # Ray hands arrays back read-only; torch wants its own writable copy.
        normalizer = None if self.normalizer is None else torch.tensor(self.normalizer)
        bridge = PartialScores(torch.tensor(self.lse), self.count, getattr(torch, self.dtype))
        return CalibratedPartial(bridge, normalizer)


def _merged(parts: list[CalibratedPartial]) -> WirePartial:
    """One shard's chunks joined (logaddexp in float64, as `combine_calibrated` joins them)."""
    lse = torch.logsumexp(torch.stack([part.bridge.lse.double() for part in parts]), dim=0)
    normalizer = None
    if parts[0].normalizer is not None:
        normalizer = torch.logsumexp(torch.stack([p.normalizer for p in parts]), dim=0)
        normalizer = normalizer.cpu().numpy()
    dtype = str(parts[0].bridge.dtype).removeprefix("torch.")
    count = sum(p.bridge.count for p in parts)
    return WirePartial(lse.cpu().numpy(), count, dtype, normalizer)
