"""Certified top N over a collection through its FAISS index, without scoring every row.

For a query a the bridge score of a collection row c is

    S(c) = logsumexp_m (L_m + s2 <b2_m, c>) - log M,      L_m = s1 <a, b1_m>

(temperatures ride on the scales). L is exact and cheap: one pass over the query side of the
bank. A query is thus a weighted set of bank rows, and the candidates that can win are the
nearest collection rows of the few bank rows that carry the weight. The T largest L_m of a query
are its heavy rows H. The collection's index is searched with each heavy row's candidate-side
vector b2_h: its k nearest collection rows, and a ceiling on every other row's inner product
(`CertifiedNearest`: the k-th value, or for an IVF list it did not visit the Cauchy-Schwarz bound
from the list's centroid and radius, plus float32 rounding). Every retrieved row is scored
exactly (lse over the whole bank in float64, for those few). A row retrieved by no heavy row of
the query has <b2_h, c> <= ceiling_h for every h in H and <b2_m, c> <= |b2_m| |c| for the
others, so

    S(c) <= logsumexp( logsumexp_{h in H} (L_h + s2 ceiling_h),
                       logsumexp_{m not in H} L_m + s2 R ) - log M

one ceiling for all of them (R: the largest bank-row norm times the largest collection-row norm).
The exact scores and that ceiling, each widened by the float32 products' rounding, are certified
together (`certify_ranking`, through `candidate_sources.Leaders`). Until the first N positions are
proven, T and k grow 4x, up to `max_nearest_rows` heavy rows and MAX_RETRIEVED_PER_ROW rows per
search; a position still unproven then is returned uncertified, never guessed.

Normalised scores (`--normalize candidates`) subtract a per-candidate normaliser that a row not
retrieved has not been given; `rank_sources` streams those over the collection instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ucl_cli.bridge.methods import Bridge, ScoringSettings
from ucl_cli.estimators.topk import FLOAT32_UNIT_ROUNDOFF, dot_rounding_bound

# The most collection rows one heavy row's search returns (the budget's other half).
MAX_RETRIEVED_PER_ROW = 4096
# Where the search starts: heavy rows per query, and rows retrieved per heavy row (at least N).
FIRST_HEAVY_ROWS = 32
FIRST_RETRIEVED = 16
# float64 elements of one [bank chunk, retrieved] product in the exact scoring (64 MiB)
EXACT_CHUNK_ELEMENTS = 1 << 23


def certified_collection_top(
    bridge: Bridge,
    queries: np.ndarray,
    vectors: np.ndarray,
    nearest,
    row_norm: float,
    keep: int,
    settings: ScoringSettings,
):
    """The `keep` best rows of the collection `vectors` for each query, with bounds and the
    ceiling of every row not returned (a `candidate_sources.Leaders` of collection rows).

    `nearest`: the collection's certified search (`Bank.nearest`); `row_norm`: the largest norm
    of its rows (the manifest's)."""
    from ucl_cli.bridge.candidate_sources import Leaders

    device = settings.device
    tempered = bridge.tempered(settings.calibration)
    query_side, candidate_side = tempered.query_side, tempered.candidate_side
    s2 = candidate_side.scale
    bank_size = len(query_side.bank)
    total = len(vectors)
    keep = min(keep, total)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    left = _left(q, query_side, device)  # [N, M] float32
    left64 = left.double()
    error = _value_error(tempered, queries, row_norm)
    peak = _largest_path(tempered, queries, row_norm)
    # no product <b2_m, c> exceeds this: what a row outside the heavy set may contribute
    reach = s2 * candidate_side.row_norm * row_norm * (1 + 2 * FLOAT32_UNIT_ROUNDOFF)
    t = min(FIRST_HEAVY_ROWS, bank_size)
    k = min(max(FIRST_RETRIEVED, keep), total)
    max_t = min(settings.max_nearest_rows, bank_size)
    max_k = min(max(MAX_RETRIEVED_PER_ROW, keep), total)
    while True:
        heavy = left.topk(t, dim=1).indices  # [N, t]
        rows = torch.unique(heavy)  # sorted: heavy rows of any query
        found = nearest(np.ascontiguousarray(candidate_side.bank[rows.cpu().numpy()]), k)
        retrieved = np.unique(found.rows[found.rows >= 0])
        scored = _exact_scores(tempered, q, vectors[retrieved], device)  # [N, |C|] float64
        slack = _float64_slack(scored, peak, bank_size)
        ceilings = s2 * torch.from_numpy(found.ceiling.astype(np.float64)).to(device)
        position = torch.searchsorted(rows, heavy)  # each query's heavy rows in `rows`
        unseen = _unseen_ceiling(left64, heavy, ceilings[position], reach) + error
        ids = torch.from_numpy(retrieved.astype(np.int64)).to(device)
        leaders = Leaders(
            scored,
            ids.expand(len(queries), -1),
            scored - slack,
            scored + slack,
            unseen,
        ).best(keep)
        proven = leaders.certify()[:, :keep].all()
        if bool(proven) or (t >= max_t and k >= max_k):
            return leaders
        t, k = min(4 * t, max_t), min(4 * k, max_k)


def _exact_scores(
    bridge: Bridge, q: torch.Tensor, candidates: np.ndarray, device: str
) -> torch.Tensor:
    """The bridge scores of the retrieved rows [N, |C|] in float64 (products too): their
    rounding is then far below any gap a certificate relies on, unlike float32's, whose sums
    over M terms drift by up to M ulps."""
    from ucl_cli.estimators import combine_partials, partial_bridge_scores

    query_side, candidate_side = bridge.query_side, bridge.candidate_side
    q64 = q.double()
    c64 = torch.from_numpy(np.array(candidates, np.float64)).to(device)
    chunk = max(1024, EXACT_CHUNK_ELEMENTS // max(c64.shape[0], q64.shape[0], 1))
    parts = []
    for start in range(0, len(query_side.bank), chunk):
        # float64 copies of the (read-only, memory-mapped) rows: the products are exact to
        # float64 rounding
        rows1 = torch.from_numpy(np.array(query_side.bank[start : start + chunk], np.float64))
        rows2 = torch.from_numpy(np.array(candidate_side.bank[start : start + chunk], np.float64))
        left = query_side.scale * (q64 @ rows1.to(device).T)
        right = candidate_side.scale * (rows2.to(device) @ c64.T)
        parts.append(partial_bridge_scores(left, right))
    return combine_partials(parts)


def _float64_slack(scored: torch.Tensor, peak: float, bank_size: int) -> torch.Tensor:
    """A generous bound on the float64 route's error: 64 ulps of every magnitude it passed
    through (the products, up to `peak`; the sum, up to log M above the score)."""
    eps = torch.finfo(torch.float64).eps
    return 64 * eps * (scored.abs() + peak + math.log(max(bank_size, 1)) + 1.0)


def _largest_path(bridge: Bridge, queries: np.ndarray, row_norm: float) -> float:
    """The largest |s1 <a, b1> + s2 <b2, c>| any path can take (Cauchy-Schwarz)."""
    from ucl_cli.bank.norms import largest_row_norm

    query_side, candidate_side = bridge.query_side, bridge.candidate_side
    query_norm = largest_row_norm(np.asarray(queries)) if len(queries) else 0.0
    return (
        query_side.scale * query_norm * query_side.row_norm
        + candidate_side.scale * row_norm * candidate_side.row_norm
    )


def _left(q: torch.Tensor, side, device: str) -> torch.Tensor:
    """s1 <a, b1_m> [N, M] in float32, as every other path value is computed."""
    from ucl_cli.bridge.scoring import _full_left

    return _full_left(q, side, device)


def _unseen_ceiling(
    left: torch.Tensor, heavy: torch.Tensor, heavy_ceilings: torch.Tensor, reach: float
) -> torch.Tensor:
    """[N]: the bound on S(c) for every row retrieved by none of a query's heavy rows."""
    bank_size = left.shape[1]
    through_heavy = torch.logsumexp(left.gather(1, heavy) + heavy_ceilings, dim=1)
    others = left.scatter(1, heavy, -math.inf)
    through_others = torch.logsumexp(others, dim=1) + reach
    return torch.logaddexp(through_heavy, through_others) - math.log(bank_size)


def _value_error(bridge: Bridge, queries: np.ndarray, row_norm: float) -> float:
    """How far the float32 products behind a score may be from the exact ones (both sides)."""
    from ucl_cli.bank.norms import largest_row_norm

    query_side, candidate_side = bridge.query_side, bridge.candidate_side
    query_norm = largest_row_norm(np.asarray(queries)) if len(queries) else 0.0
    left = query_side.scale * query_norm * query_side.row_norm
    right = candidate_side.scale * row_norm * candidate_side.row_norm
    dim = queries.shape[1]
    return (left + right) * dot_rounding_bound(dim + 2)


__all__ = ["MAX_RETRIEVED_PER_ROW", "certified_collection_top"]
