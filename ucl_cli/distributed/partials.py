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

from ucl_cli.distributed.actor import ShardHost, ShardRef, shard_rows
from ucl_cli.estimators.bridge import PartialScores
from ucl_cli.estimators.calibrated import CalibratedPartial


@dataclass(frozen=True)
class ScoreRequest:
    """What every actor needs for one batch: the two models' keys, the tempered logit scales,
    the embeddings (float32, unit-norm rows), whether to normalise per candidate, and the
    sub-bank scored (global rows; None: the whole bank)."""

    what: ClassVar[str] = "partial sums"

    query_key: str
    candidate_key: str
    query_scale: float
    candidate_scale: float
    queries: np.ndarray  # [N, d1]
    candidates: np.ndarray  # [K, d2]
    normalize: str = "none"
    rows: np.ndarray | None = None

    def on_shard(self, bank: Any, shard: ShardRef, host: ShardHost) -> WirePartial:
        keys = (self.query_key, self.candidate_key)
        query_rows, candidate_rows = shard_rows(bank, shard, self.rows, *keys)
        return shard_partial(query_rows, candidate_rows, self, host.device)


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


def shard_partial(
    query_rows: np.ndarray, candidate_rows: np.ndarray, request: ScoreRequest, device: str = "cpu"
) -> WirePartial:
    """The partial sums over one shard's rows (its two models' matrices, row-aligned)."""
    from ucl_cli.bridge.methods import Bridge, BridgeSide
    from ucl_cli.bridge.scoring import lse_parts

    bridge = Bridge(
        BridgeSide(query_rows, request.query_scale),
        BridgeSide(candidate_rows, request.candidate_scale),
    )
    parts = lse_parts(bridge, request.queries, request.candidates, request.normalize, device)
    if not parts:  # an empty shard adds nothing: logsumexp over no rows
        shape = (request.queries.shape[0], request.candidates.shape[0])
        normalizer = None if request.normalize == "none" else np.full(shape[1], -np.inf)
        return WirePartial(np.full(shape, -np.inf), 0, "float32", normalizer)
    return _merged(parts)


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
