"""A shard's partial bridge sums: what an actor computes over the rows it holds.

The arithmetic is `ucl_cli.bridge.scoring.lse_scores`'s, over one shard instead of the whole
bank: the same float32 products of unit-norm rows, scaled by the tempered logit scales, summed
a chunk of rows at a time by `partial_calibrated_scores`, the chunks joined in float64. The
result travels as NumPy arrays (`WirePartial`) and is turned back into a `CalibratedPartial` on
the driver, which joins every shard's with `combine_calibrated`: any split of the rows gives
the scores of one pass over the bank, to float64 rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ucl_cli.calibration import Calibration
from ucl_cli.estimators.bridge import PartialScores
from ucl_cli.estimators.calibrated import CalibratedPartial, partial_calibrated_scores

BANK_CHUNK = 1 << 16  # as `scoring.BANK_CHUNK`: (N + K) * BANK_CHUNK floats per step


@dataclass(frozen=True)
class ScoreRequest:
    """What every actor needs for one batch: the two models' keys, the tempered logit scales,
    the embeddings (float32, unit-norm rows) and whether to normalise per candidate."""

    query_key: str
    candidate_key: str
    query_scale: float
    candidate_scale: float
    queries: np.ndarray  # [N, d1]
    candidates: np.ndarray  # [K, d2]
    normalize: str = "none"


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
    query_rows: np.ndarray, candidate_rows: np.ndarray, request: ScoreRequest
) -> WirePartial:
    """The partial sums over one shard's rows (its two models' matrices, row-aligned)."""
    q = _tensor(request.queries)
    c = _tensor(request.candidates)
    normalize_only = Calibration(normalize=request.normalize)
    parts = []
    for m0 in range(0, len(query_rows), BANK_CHUNK):
        left = request.query_scale * (q @ _tensor(query_rows[m0 : m0 + BANK_CHUNK]).T)
        right = request.candidate_scale * (_tensor(candidate_rows[m0 : m0 + BANK_CHUNK]) @ c.T)
        parts.append(partial_calibrated_scores(left, right, normalize_only))
    if not parts:  # an empty shard adds nothing: logsumexp over no rows
        empty = np.full((q.shape[0], c.shape[0]), -np.inf)
        normalizer = None if request.normalize == "none" else np.full(c.shape[0], -np.inf)
        return WirePartial(empty, 0, "float32", normalizer)
    return _merged(parts)


def _merged(parts: list[CalibratedPartial]) -> WirePartial:
    """One shard's chunks joined (logaddexp in float64, as `combine_calibrated` joins them)."""
    lse = torch.logsumexp(torch.stack([part.bridge.lse.double() for part in parts]), dim=0)
    normalizer = None
    if parts[0].normalizer is not None:
        normalizer = torch.logsumexp(torch.stack([p.normalizer for p in parts]), dim=0).numpy()
    dtype = str(parts[0].bridge.dtype).removeprefix("torch.")
    return WirePartial(lse.numpy(), sum(p.bridge.count for p in parts), dtype, normalizer)


def _tensor(array: np.ndarray) -> torch.Tensor:
    """A float32 CPU tensor; memory-mapped (read-only) rows are copied, a chunk at a time."""
    array = np.asarray(array, dtype=np.float32)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=np.float32, order="C")
    return torch.from_numpy(array)
