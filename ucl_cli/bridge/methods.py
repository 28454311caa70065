"""The four ways `ucl query` scores candidates, over embeddings already computed.

Vocabulary: N queries, M bank rows, K candidates. The "query model" embeds the queries and the
bank (e.g. CLIP: image and text); the "candidate model" embeds the bank and the candidates (e.g.
CLAP: text and audio). All embeddings are float32 unit-norm rows, so cosine is a dot product and
each critic value is scale * dot.

- `lse`: the exact Monte Carlo bridge score (PAPER.md Lemma 1), streamed over bank chunks
  (each chunk is a shard; `combine_partials` joins them exactly).
- `topk`: certified bounds from the T nearest bank rows of each query and each candidate (FAISS),
  with T grown until the leading results are certified or a limit is reached.
- `direct`: cosine between query and candidate, defined only when one model embeds both.
- `caption`: the two-step baseline: the query's nearest bank text, then candidates by that text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ucl_cli.errors import UsageError
from ucl_cli.estimators import (
    certify_ranking,
    combine_partials,
    explain_pairs,
    partial_bridge_scores,
    topk_bridge_bounds,
)
from ucl_cli.estimators.explain import Explanation
from ucl_cli.estimators.topk import TopEntries

# Bank rows scored per step: bounds memory at (N + K) * BANK_CHUNK floats whatever M is.
BANK_CHUNK = 1 << 16

# (unit-norm vectors [R, d], T) -> (inner products [R, T], bank rows [R, T], ceiling [R]): a
# search that also bounds every row it did not return (see certified_search.CertifiedNearest).
NearestRows = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class BridgeSide:
    """One model's view of the bridge: its bank matrix and its trained logit scale."""

    bank: np.ndarray  # [M, d], float32 unit-norm rows (may be a memory map)
    scale: float
    nearest: NearestRows | None = None  # FAISS search over `bank`, for `topk`


@dataclass(frozen=True)
class Scores:
    """[N, K] scores, and for `topk` which ranking positions the bounds certify."""

    values: torch.Tensor
    order: torch.Tensor  # [N, K] candidate indices, best first
    certified: torch.Tensor | None = None  # [N, K] per position, `topk` only
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None
    bank_rows: torch.Tensor | None = None  # [N] the caption method's chosen bank row


def lse_scores(
    queries: np.ndarray,
    candidates: np.ndarray,
    query_side: BridgeSide,
    candidate_side: BridgeSide,
    *,
    device: str = "cpu",
    chunk: int = BANK_CHUNK,
) -> Scores:
    """Exact bridge scores, one bank chunk (shard) at a time."""
    q = _tensor(queries, device)
    c = _tensor(candidates, device)
    parts = []
    for m0 in range(0, len(query_side.bank), chunk):
        left = query_side.scale * (q @ _tensor(query_side.bank[m0 : m0 + chunk], device).T)
        right = candidate_side.scale * (_tensor(candidate_side.bank[m0 : m0 + chunk], device) @ c.T)
        parts.append(partial_bridge_scores(left, right))
    values = combine_partials(parts)
    return Scores(values, _order(values))


def topk_scores(
    queries: np.ndarray,
    candidates: np.ndarray,
    query_side: BridgeSide,
    candidate_side: BridgeSide,
    *,
    top: int,
    start_t: int = 64,
    max_t: int = 8192,
    device: str = "cpu",
) -> Scores:
    """Certified top-T bounds; T grows 4x until the first `top` positions are certified, T
    reaches `max_t`, or growing T stopped helping (no more positions certified than before:
    then the ceiling of the rows never visited, not T, is what keeps the bounds apart)."""
    if query_side.nearest is None or candidate_side.nearest is None:
        raise UsageError("the topk method needs a nearest-neighbour index on both bank sides")
    bank_size = len(query_side.bank)
    needed = min(top, candidates.shape[0])
    t = min(start_t, bank_size)
    previous = -1
    while True:
        scores = _bounded_scores(queries, candidates, query_side, candidate_side, t, device)
        leading = int(scores.certified.int().cumprod(dim=1).sum(dim=1).min())
        if (
            leading >= needed
            or t >= min(max_t, bank_size)
            or (previous >= 0 and leading <= previous)
        ):
            return scores
        previous = leading
        t = min(t * 4, max_t, bank_size)


def _bounded_scores(
    queries: np.ndarray,
    candidates: np.ndarray,
    query_side: BridgeSide,
    candidate_side: BridgeSide,
    t: int,
    device: str,
) -> Scores:
    left_values, left_rows, left_ceiling = query_side.nearest(queries, t)  # [N, T]
    right_values, right_rows, right_ceiling = candidate_side.nearest(candidates, t)  # [K, T]
    q = _tensor(queries, device)
    c = _tensor(candidates, device)
    left_top = _scaled_top(left_values, left_rows, left_ceiling, query_side.scale, device)
    right_top = _scaled_top(right_values, right_rows, right_ceiling, candidate_side.scale, device)
    # right[I_n[t], k] from the N*T gathered bank rows; left[n, J_k[t]] from the K*T gathered
    # rows, or, when that is more rows than the bank holds, from one pass of q over the bank.
    query_bank_rows = _tensor(candidate_side.bank[np.asarray(left_rows).reshape(-1)], device)
    right_at_left_top = candidate_side.scale * (query_bank_rows @ c.T).reshape(*left_rows.shape, -1)
    right_rows_t = torch.as_tensor(np.asarray(right_rows), device=device)
    if right_rows_t.numel() > len(query_side.bank):
        left_full = _full_left(q, query_side, device)  # [N, M]
        left_at_right_top = left_full[:, right_rows_t]  # [N, K, T]
    else:
        candidate_bank_rows = _tensor(query_side.bank[np.asarray(right_rows).reshape(-1)], device)
        left_at_right_top = query_side.scale * (q @ candidate_bank_rows.T).reshape(
            q.shape[0], *right_rows.shape
        )
    bounds = topk_bridge_bounds(
        left_top,
        right_top,
        right_at_left_top,
        left_at_right_top,
        len(query_side.bank),
        left_floor=-query_side.scale,  # cosine >= -1
        right_floor=-candidate_side.scale,
    )
    ranking = certify_ranking(bounds)
    return Scores(
        bounds.estimate,
        ranking.order,
        certified=ranking.certified,
        lower=bounds.lower,
        upper=bounds.upper,
    )


def _full_left(q: torch.Tensor, side: BridgeSide, device: str) -> torch.Tensor:
    """scale * <q, bank row> for every bank row, [N, M], copying one chunk of the (memory-mapped)
    bank at a time instead of the whole matrix."""
    parts = [
        q @ _tensor(side.bank[m0 : m0 + BANK_CHUNK], device).T
        for m0 in range(0, len(side.bank), BANK_CHUNK)
    ]
    return side.scale * torch.cat(parts, dim=1)


def _scaled_top(
    values: np.ndarray, rows: np.ndarray, ceiling: np.ndarray, scale: float, device: str
) -> TopEntries:
    return TopEntries(
        _tensor(values, device) * scale,
        torch.as_tensor(rows, device=device),
        torch.as_tensor(ceiling * scale, dtype=torch.float32, device=device),
    )


def direct_scores(queries: np.ndarray, candidates: np.ndarray, *, device: str = "cpu") -> Scores:
    """Cosine between query and candidate embeddings of ONE shared space."""
    values = _tensor(queries, device) @ _tensor(candidates, device).T
    return Scores(values, _order(values))


def caption_scores(
    queries: np.ndarray,
    candidates: np.ndarray,
    query_side: BridgeSide,
    candidate_side: BridgeSide,
    *,
    device: str = "cpu",
    chunk: int = BANK_CHUNK,
) -> Scores:
    """Pick each query's best bank row, then rank candidates against that row (scaled)."""
    q = _tensor(queries, device)
    best_value = torch.full((q.shape[0],), -torch.inf, device=device)
    best_row = torch.zeros(q.shape[0], dtype=torch.long, device=device)
    for m0 in range(0, len(query_side.bank), chunk):
        sims = q @ _tensor(query_side.bank[m0 : m0 + chunk], device).T
        value, row = sims.max(dim=1)
        better = value > best_value
        best_value = torch.where(better, value, best_value)
        best_row = torch.where(better, row + m0, best_row)
    captions = _tensor(candidate_side.bank[best_row.cpu().numpy()], device)
    values = candidate_side.scale * (captions @ _tensor(candidates, device).T)
    return Scores(values, _order(values), bank_rows=best_row)


def explain(
    queries: np.ndarray,
    candidates: np.ndarray,
    query_side: BridgeSide,
    candidate_side: BridgeSide,
    pairs: list[tuple[int, int]],
    top: int,
    *,
    device: str = "cpu",
) -> Explanation:
    """Bridge weights and ESS for (query, candidate) pairs; only the pairs' columns are built."""
    rows = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=device)
    cols = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=device)
    wanted = sorted({p[1] for p in pairs})
    column_of = {k: i for i, k in enumerate(wanted)}
    left = _full_left(_tensor(queries, device), query_side, device)  # [N, M]
    right = _full_left(_tensor(candidates[wanted], device), candidate_side, device).T  # [M, K']
    local_cols = torch.tensor([column_of[int(k)] for k in cols], dtype=torch.long, device=device)
    return explain_pairs(left, right, rows, local_cols, top=top)


def _order(values: torch.Tensor) -> torch.Tensor:
    return values.argsort(dim=1, descending=True, stable=True)


def _tensor(array: np.ndarray, device: str) -> torch.Tensor:
    """A float32 tensor on `device`; bank matrices are read-only memory maps, so copy those."""
    array = np.asarray(array, dtype=np.float32)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=np.float32, order="C")
    return torch.from_numpy(array).to(device)


__all__ = [
    "BANK_CHUNK",
    "BridgeSide",
    "Scores",
    "caption_scores",
    "direct_scores",
    "explain",
    "lse_scores",
    "topk_scores",
]
