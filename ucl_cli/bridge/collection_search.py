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
The exact scores (float64) and that ceiling (widened by the float32 products' rounding) are
certified together (`certify_ranking`, through `candidate_sources.Leaders`). Until the first N
positions are proven, the part of the ceiling that binds grows 4x: k and the IVF lists visited
where the heavy rows' ceilings bind, T where the other rows do, up to `max_nearest_rows` heavy
rows, MAX_RETRIEVED_PER_ROW rows per search and every list; a position still unproven then is
returned uncertified, never guessed. Each query is searched on its own (its heavy rows are its own).

Normalised scores (`--normalize candidates`) subtract a per-candidate normaliser that a row not
retrieved has not been given; `rank_sources` streams those over the collection instead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ucl_cli.bridge.methods import Bridge, ScoringSettings
from ucl_cli.estimators.topk import FLOAT32_UNIT_ROUNDOFF, dot_rounding_bound

# The most collection rows one heavy row's search returns (the budget's other half).
MAX_RETRIEVED_PER_ROW = 4096
# Where the search starts: heavy rows per query, and rows retrieved per heavy row (at least N).
FIRST_HEAVY_ROWS = 4
FIRST_RETRIEVED = 16
# A part of the unseen rows' ceiling within this many nats of the weakest leader's lower bound
# is what keeps the leaders unproven: the search grows that part.
BINDING_NATS = 1.0
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
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    search = _Search(
        tempered,
        vectors,
        nearest,
        keep=min(keep, len(vectors)),
        max_heavy=min(settings.max_nearest_rows, len(tempered.query_side.bank)),
        error=_value_error(tempered, queries, row_norm),
        peak=_largest_path(tempered, queries, row_norm),
        # no product <b2_m, c> exceeds this: what a row outside the heavy set may contribute
        reach=tempered.candidate_side.scale
        * tempered.candidate_side.row_norm
        * row_norm
        * (1 + 2 * FLOAT32_UNIT_ROUNDOFF),
        device=device,
    )
    left = _left(q, tempered.query_side, device)  # [N, M] float32
    # One query at a time: each has its own heavy rows, and scoring the union of every query's
    # retrieved rows for every query would cost N times more.
    found = [search.one(q[n : n + 1], left[n : n + 1]) for n in range(q.shape[0])]
    return Leaders(
        torch.cat([f.values for f in found]),
        torch.cat([f.ids for f in found]),
        torch.cat([f.lower for f in found]),
        torch.cat([f.upper for f in found]),
        torch.cat([f.ceiling for f in found]),
    )


@dataclass(frozen=True)
class _Search:
    """One collection searched for one query after another (the module doc's loop)."""

    bridge: Bridge
    vectors: np.ndarray
    nearest: object
    keep: int
    max_heavy: int
    error: float  # float32 products' rounding, both sides
    peak: float  # the largest |path value|
    reach: float  # the largest s2 <b2_m, c>
    device: str

    def one(self, q: torch.Tensor, left: torch.Tensor):
        """The leaders of one query [1, d] with its exact left row [1, M]."""
        from ucl_cli.bridge.candidate_sources import Leaders

        bank = self.bridge.candidate_side.bank
        s2 = self.bridge.candidate_side.scale
        log_m = math.log(left.shape[1])
        left64 = left.double()
        t = min(FIRST_HEAVY_ROWS, self.max_heavy)
        k = min(max(FIRST_RETRIEVED, self.keep), len(self.vectors))
        max_k = min(max(MAX_RETRIEVED_PER_ROW, self.keep), len(self.vectors))
        # IVF lists visited per search: an unvisited list is bounded by Cauchy-Schwarz from its
        # centroid and radius, loose in high dimension, so going deeper visits more lists too
        nprobe, lists = self.nearest.default_nprobe(), self.nearest.lists()
        while True:
            heavy = left.topk(t, dim=1).indices  # [1, t]
            rows = heavy[0].cpu().numpy()
            found = self.nearest(np.ascontiguousarray(bank[rows]), k, nprobe)
            retrieved = np.unique(found.rows[found.rows >= 0])
            scored = _exact_scores(self.bridge, q, self.vectors[retrieved], self.device)
            slack = _float64_slack(scored, self.peak, left.shape[1])
            ceilings = s2 * torch.from_numpy(found.ceiling.astype(np.float64)).to(self.device)
            through_heavy, through_others = _unseen_terms(left64, heavy, ceilings[None], self.reach)
            unseen = torch.logaddexp(through_heavy, through_others) - log_m + self.error
            ids = torch.from_numpy(retrieved.astype(np.int64)).to(self.device)
            leaders = Leaders(scored, ids[None], scored - slack, scored + slack, unseen).best(
                self.keep
            )
            if bool(leaders.certify()[:, : self.keep].all()):
                return leaders
            # Grow what binds: the unseen rows' ceiling through the heavy rows (search deeper,
            # k) or through the rest of the bank (more heavy rows, t). Neither: the leaders
            # themselves are too close to order (a near tie), which no search can change.
            weakest = float(leaders.lower[0, -1])
            deeper = float(through_heavy[0]) - log_m + self.error > weakest - BINDING_NATS
            wider = float(through_others[0]) - log_m + self.error > weakest - BINDING_NATS
            grown = (
                min(4 * t, self.max_heavy) if wider else t,
                min(4 * k, max_k) if deeper else k,
                min(4 * nprobe, lists) if deeper else nprobe,
            )
            if grown == (t, k, nprobe):
                return leaders
            t, k, nprobe = grown


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


def _unseen_terms(
    left: torch.Tensor, heavy: torch.Tensor, heavy_ceilings: torch.Tensor, reach: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """[N] each: the two parts of the bound on the bridge sum of every row retrieved by none of
    a query's heavy rows, through the heavy rows and through all the others."""
    through_heavy = torch.logsumexp(left.gather(1, heavy) + heavy_ceilings, dim=1)
    others = left.scatter(1, heavy, -math.inf)
    through_others = torch.logsumexp(others, dim=1) + reach
    return through_heavy, through_others


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
