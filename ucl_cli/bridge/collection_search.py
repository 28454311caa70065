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
positions are proven, the part of the ceiling that binds grows: k (4x) and the IVF lists visited
(16x; a search of every list for many rows is one matrix product over the collection, shared
by the round's rows) where the heavy rows' ceilings bind, T (4x) where the other rows do, up to
`max_nearest_rows` heavy rows, MAX_RETRIEVED_PER_ROW rows per search and every list; a
position still unproven then is returned uncertified, never guessed. A search about to retrieve
a quarter of the collection or more scores every row exactly instead (certified outright, at
about lse's cost in float64).
A batch of queries is searched in rounds together: each query has its own heavy rows and its own
exactly scored rows, and each round's index searches are shared (a bank row heavy for several
queries is searched once, as deep as the most demanding of them asks).

Normalised scores (`--normalize candidates`) subtract a per-candidate normaliser that a row not
retrieved has not been given; `rank_sources` streams those over the collection instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
# Once the search would retrieve (heavy rows x rows per search) this fraction of the collection
# or more, every row is scored instead: a query whose weight no few bank rows carry (about a
# concept the bank barely covers) has nothing for the index to prune.
EVERY_ROW_FRACTION = 4
# float64 elements of one [bank chunk, retrieved] product in the exact scoring (64 MiB)
EXACT_CHUNK_ELEMENTS = 1 << 23
EXACT_CANDIDATE_BLOCK = 8192  # retrieved rows scored at a time
# A bank of up to this many values (both sides) is held in float64 for a search's exact scoring
# (256 MiB): converting it again for every few rows scored would cost more than the scoring.
FLOAT64_BANK_ELEMENTS = 1 << 25
# Most [heavy rows, retrieved rows] entries bounded from the search's own products; past it every
# retrieved row is scored exactly.
BOUND_MATRIX_ELEMENTS = 1 << 24
# IVF lists visited grow this much a round (a partial visit rarely certifies in high dimension:
# an unvisited list's bound is loose), and a search that visits them all is a matrix product
NPROBE_GROWTH = 16
SCAN_CHUNK_ROWS = 1 << 16
SCAN_ALL_FROM_ROWS = 8
TABLE_NOTE = (
    "bounding the collection's lists for this bank: one pass over the collection, saved for "
    "later topk queries"
)


def certified_collection_top(
    bridge: Bridge,
    queries: np.ndarray,
    vectors: np.ndarray,
    nearest,
    row_norm: float,
    keep: int,
    settings: ScoringSettings,
    identity: str | None = None,
    on_note: Callable[[str], None] | None = None,
):
    """The `keep` best rows of the collection `vectors` for each query, with bounds and the
    ceiling of every row not returned (a `candidate_sources.Leaders` of collection rows).

    `nearest`: the collection's certified search (`Bank.nearest`); `row_norm`: the largest norm
    of its rows (the manifest's); `identity`: what names the collection's vectors and index, so
    that the per-list table (`list_search`) is saved for the next query (`on_note` hears when it
    is made). An IVF collection whose table fits is searched list by list; any other from the
    bank rows that carry the weight."""
    from ucl_cli.bridge.list_search import ListSearch, list_table, table_fits

    device = settings.device
    tempered = bridge.tempered(settings.calibration)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(device)
    bank_rows = len(tempered.query_side.bank)
    if table_fits(bank_rows, nearest.lists(), len(vectors)):
        groups, lists = nearest.row_groups()
        by_lists = ListSearch(
            tempered,
            vectors,
            list_table(
                tempered.candidate_side.bank,
                vectors,
                groups,
                lists,
                row_norm,
                device=device,
                identity=identity,
                on_build=None if on_note is None else lambda: on_note(TABLE_NOTE),
            ),
            keep=min(keep, len(vectors)),
            max_heavy=min(settings.max_nearest_rows, bank_rows),
            error=value_error(tempered, queries, row_norm),
            peak=largest_path(tempered, queries, row_norm),
            device=device,
            row_norm=row_norm,
        )
        found = by_lists.all(query_side_values(q, tempered.query_side, device), q)
        return _joined(found)
    search = _Search(
        tempered,
        vectors,
        nearest,
        keep=min(keep, len(vectors)),
        max_heavy=min(settings.max_nearest_rows, len(tempered.query_side.bank)),
        error=value_error(tempered, queries, row_norm),
        peak=largest_path(tempered, queries, row_norm),
        # no product <b2_m, c> exceeds this: what a row outside the heavy set may contribute
        reach=tempered.candidate_side.scale
        * tempered.candidate_side.row_norm
        * row_norm
        * (1 + 2 * FLOAT32_UNIT_ROUNDOFF),
        device=device,
        row_norm=row_norm,
    )
    left = query_side_values(q, tempered.query_side, device)  # [N, M] float32
    return _joined(search.all(q, left))


def _joined(found: list):
    """One `Leaders` of N queries from each query's own."""
    from ucl_cli.bridge.candidate_sources import Leaders

    return Leaders(
        torch.cat([f.values for f in found]),
        torch.cat([f.ids for f in found]),
        torch.cat([f.lower for f in found]),
        torch.cat([f.upper for f in found]),
        torch.cat([f.ceiling for f in found]),
    )


@dataclass(frozen=True)
class _Search:
    """One collection searched for a batch of queries (the module doc's loop)."""

    bridge: Bridge
    vectors: np.ndarray
    nearest: object
    keep: int
    max_heavy: int
    error: float  # float32 products' rounding, both sides
    peak: float  # the largest |path value|
    reach: float  # the largest s2 <b2_m, c>
    device: str
    row_norm: float  # the largest norm of a collection row

    @property
    def max_k(self) -> int:
        return min(max(MAX_RETRIEVED_PER_ROW, self.keep), len(self.vectors))

    def all(self, q: torch.Tensor, left: torch.Tensor) -> list:
        """The leaders of each query, the queries searched in rounds together: each round's
        index searches are shared (a bank row heavy for several queries is searched once, at
        the depth the most demanding wants), while each query keeps its own heavy rows and
        its own exactly scored rows (scoring every query's rows for every query would cost N
        times more)."""
        first_k = min(max(FIRST_RETRIEVED, self.keep), len(self.vectors))
        first_nprobe = self.nearest.default_nprobe()
        depth: dict[int, tuple[int, int]] = {}  # bank row -> (k, nprobe) wanted
        searched: dict[int, _Searched] = {}  # bank row -> its latest search
        queries = [
            _QueryState(self, q[n : n + 1], left[n : n + 1], min(FIRST_HEAVY_ROWS, self.max_heavy))
            for n in range(q.shape[0])
        ]
        done: dict[int, object] = {}
        while len(done) < len(queries):
            active = [n for n in range(len(queries)) if n not in done]
            heavy = {n: queries[n].heavy_rows() for n in active}
            for rows in heavy.values():
                for row in rows:
                    depth.setdefault(int(row), (first_k, first_nprobe))
            wanted = np.unique(np.concatenate(list(heavy.values())))
            self._search(self.bridge.candidate_side.bank, wanted, depth, searched)
            for n in active:
                outcome = queries[n].step(heavy[n], depth, searched)
                if outcome is not None:
                    done[n] = outcome
        return [done[n] for n in range(len(queries))]

    def _search(self, bank, rows: np.ndarray, depth: dict, searched: dict) -> None:
        """Search the collection for each row not yet searched at its wanted depth, rows of
        one depth together."""
        pending: dict[tuple[int, int], list[int]] = {}
        for row in rows:
            wanted = depth[int(row)]
            if int(row) not in searched or searched[int(row)].depth != wanted:
                pending.setdefault(wanted, []).append(int(row))
        for (k, nprobe), group in pending.items():
            vectors = np.ascontiguousarray(bank[group])
            # how far float32 products may be from the exact ones, per searched row
            norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
            slack = dot_rounding_bound(vectors.shape[1]) * norms * self.row_norm
            if nprobe >= self.nearest.lists() and len(group) >= SCAN_ALL_FROM_ROWS:
                # every list visited, for many rows: one matrix product over the collection
                # shares the pass among them (for a few rows the index's own scan is faster)
                values, found_rows, ceiling = self._scan_all(vectors, k, slack)
            else:
                found = self.nearest(vectors, k, nprobe)
                values, found_rows, ceiling = found.values, found.rows, found.ceiling
            for i, row in enumerate(group):
                hits = found_rows[i] >= 0
                searched[row] = _Searched(
                    (k, nprobe),
                    float(ceiling[i]),
                    found_rows[i][hits],
                    values[i][hits].astype(np.float64),
                    float(slack[i]),
                )

    def _scan_all(
        self, vectors: np.ndarray, k: int, slack: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The k largest inner products of each of `vectors` with every collection row, by
        float32 matrix products over chunks of the collection: (values, rows, ceiling), the
        ceiling being the k-th value plus the products' rounding (-inf when k covers all)."""
        from ucl_cli.estimators.bridge import _full_precision_matmul

        queries = torch.from_numpy(vectors).to(self.device)
        total = len(self.vectors)
        k = min(k, total)
        best_values = best_rows = None
        with _full_precision_matmul():  # the slack assumes true float32 products
            for start in range(0, total, SCAN_CHUNK_ROWS):
                chunk = np.array(self.vectors[start : start + SCAN_CHUNK_ROWS], np.float32)
                products = queries @ torch.from_numpy(chunk).to(self.device).T
                top = products.topk(min(k, products.shape[1]), dim=1)
                rows = top.indices + start
                if best_values is None:
                    best_values, best_rows = top.values, rows
                    continue
                merged = torch.cat([best_values, top.values], dim=1)
                keep = merged.topk(k, dim=1)
                best_rows = torch.cat([best_rows, rows], dim=1).gather(1, keep.indices)
                best_values = keep.values
        values = best_values.cpu().numpy()
        ceiling = values[:, -1].astype(np.float64) + slack
        if k >= total:
            ceiling = np.full(len(vectors), -math.inf)
        return values, best_rows.cpu().numpy(), ceiling

    def every_row(self, q: torch.Tensor):
        """Every collection row scored exactly in float64, a chunk at a time: the top `keep`
        with bounds no wider than float64 rounding, and nothing left unseen."""
        from ucl_cli.bridge.candidate_sources import Leaders

        bank_size = len(self.bridge.query_side.bank)
        chunk = max(1024, EXACT_CHUNK_ELEMENTS // bank_size)
        kept = None
        for start in range(0, len(self.vectors), chunk):
            scored = exact_scores(
                self.bridge, q, self.vectors[start : start + chunk], self.device
            )
            slack = float64_slack(scored, self.peak, bank_size)
            ids = torch.arange(start, start + scored.shape[1], device=self.device)[None]
            unseen = torch.full((1,), -math.inf, dtype=torch.float64, device=self.device)
            fresh = Leaders(scored, ids, scored - slack, scored + slack, unseen)
            kept = fresh.best(self.keep) if kept is None else kept.merged(fresh, self.keep)
        return kept


class _QueryState:
    """One query's side of the search: its heavy rows, its exactly scored rows, its leaders."""

    def __init__(self, search: _Search, q: torch.Tensor, left: torch.Tensor, t: int):
        self.search, self.q, self.left, self.t = search, q, left, t
        self.left64 = left.double()
        self.scored = ScoredRows(search, q)

    def heavy_rows(self) -> np.ndarray:
        """The query's t heaviest bank rows, heaviest first."""
        return self.left.topk(self.t, dim=1).indices[0].cpu().numpy()

    def _bounded(self, found, heavy, ceilings, through_others, log_m):
        return _bounded_rows(self, found, heavy, ceilings, through_others, log_m)

    def step(self, rows: np.ndarray, depth: dict, searched: dict):
        """Certify from this round's searches: the leaders when proven (or when nothing left
        to grow can prove more); None after asking for more (deeper rows in `depth`, a larger
        t) for the next round."""
        from ucl_cli.bridge.candidate_sources import Leaders

        search = self.search
        s2 = search.bridge.candidate_side.scale
        log_m = math.log(self.left.shape[1])
        found = [searched[int(r)] for r in rows]
        ceilings = torch.from_numpy(np.array([f.ceiling for f in found]))
        ceilings = s2 * ceilings.to(search.device)
        heavy = torch.from_numpy(rows).to(search.device)[None]
        through_heavy, through_others = _unseen_terms(
            self.left64, heavy, ceilings[None], search.reach
        )
        unseen = torch.logaddexp(through_heavy, through_others) - log_m + search.error
        values, ids, lower, upper = self._bounded(found, heavy, ceilings, through_others, log_m)
        leaders = Leaders(values, ids[None], lower, upper, unseen).best(search.keep)
        if bool(leaders.certify()[:, : search.keep].all()):
            return leaders
        # Grow what binds: the unseen rows' ceiling through the heavy rows (search deeper from
        # the rows whose share binds) or through the rest of the bank (more heavy rows).
        # Neither: the leaders are too close to order (a near tie), which no search can
        # change; or the budget is spent.
        weakest = float(leaders.lower[0, -1]) - BINDING_NATS
        shares = (self.left64[0, heavy[0]] + ceilings - log_m + search.error).cpu().numpy()
        deepened = False
        if float(through_heavy[0]) - log_m + search.error > weakest:
            # each row whose share alone could reach the weakest leader once t rows add up;
            # if none does, the largest shares
            binding = shares > weakest - math.log(len(rows))
            if not binding.any():
                binding = shares >= shares.max() - BINDING_NATS
            for row in rows[binding]:
                k, nprobe = depth[int(row)]
                grown = (
                    min(4 * k, search.max_k),
                    min(NPROBE_GROWTH * nprobe, search.nearest.lists()),
                )
                if grown != (k, nprobe):
                    depth[int(row)] = grown
                    deepened = True
        through_rest = float(through_others[0]) - log_m + search.error
        wider = through_rest > weakest and self.t < search.max_heavy
        if not deepened and not wider:
            return leaders
        if wider:
            self.t = min(4 * self.t, search.max_heavy)
        wanted = sum(depth.get(int(r), (0, 0))[0] for r in self.heavy_rows())
        if wanted * EVERY_ROW_FRACTION >= len(search.vectors):
            # The weight is spread over so many bank rows that the search would retrieve much
            # of the collection: score all of it exactly instead (certified outright).
            return search.every_row(self.q)
        return None


@dataclass(frozen=True)
class _Searched:
    """One bank row's latest search of the collection: the depth it was searched at, the
    certified ceiling on every row it did not return, the rows it returned and their inner
    products (float32 products, within `slack` of the exact ones)."""

    depth: tuple[int, int]
    ceiling: float
    rows: np.ndarray
    values: np.ndarray
    slack: float


def _bounded_rows(state: _QueryState, found, heavy, ceilings, through_others, log_m):
    """The retrieved rows of one query with bounds: ([1, R] values, [R] ids, [1, R] lower,
    [1, R] upper). A row's bounds come from the search itself: its inner product with each
    heavy row that returned it (within that search's rounding), the heavy row's ceiling for
    the others, and the rest of the bank's bound. Only the rows whose upper bound reaches the
    keep-th best lower bound are scored exactly (float64); the others keep their bounds, which
    is all a certificate needs to rank them below."""
    search = state.search
    device = search.device
    retrieved = np.unique(np.concatenate([f.rows for f in found]))
    if len(found) * len(retrieved) > BOUND_MATRIX_ELEMENTS:  # too many to bound: score them all
        values, ids = state.scored.of(retrieved)
        slack = float64_slack(values, search.peak, state.left.shape[1])
        return values, ids, values - slack, values + slack
    known = np.full((len(found), len(retrieved)), np.nan)
    for i, f in enumerate(found):
        known[i, np.searchsorted(retrieved, f.rows)] = f.values
    products = torch.from_numpy(known).to(device)
    slack = torch.tensor([f.slack for f in found], dtype=torch.float64, device=device)[:, None]
    returned = ~torch.isnan(products)
    s2 = search.bridge.candidate_side.scale
    weights = state.left64[0, heavy[0]][:, None]  # [t, 1]
    # `ceilings` are already s2 times the searches' ceilings
    above = weights + torch.where(returned, s2 * (products + slack), ceilings[:, None])
    upper = torch.logaddexp(torch.logsumexp(above, dim=0), through_others[0])
    upper = upper - log_m + search.error
    below = torch.where(returned, weights + s2 * (products - slack), -math.inf)
    lower = torch.logsumexp(below, dim=0) - log_m - search.error
    reachable = upper >= lower.topk(min(search.keep, len(retrieved))).values[-1]
    values, ids = state.scored.of(retrieved[reachable.cpu().numpy()])
    exact_slack = float64_slack(values, search.peak, state.left.shape[1])
    scored = torch.from_numpy(np.isin(retrieved, ids.cpu().numpy())).to(device)
    only_bounded = ~scored
    bounded_ids = torch.from_numpy(retrieved).to(device)[only_bounded]
    return (
        torch.cat([values, lower[only_bounded][None]], dim=1),
        torch.cat([ids, bounded_ids]),
        torch.cat([values - exact_slack, lower[only_bounded][None]], dim=1),
        torch.cat([values + exact_slack, upper[only_bounded][None]], dim=1),
    )


class ScoredRows:
    """Exact scores of collection rows for one query, each row scored once per search."""

    def __init__(self, search: _Search, q: torch.Tensor, banks: Float64Bank | None = None):
        self.search, self.q, self.banks = search, q, banks
        self.ids = np.empty(0, dtype=np.int64)
        self.values = torch.empty((1, 0), dtype=torch.float64, device=search.device)

    def of(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """([1, R] float64 scores, [R] ids) for every row scored so far, `rows` included."""
        fresh = np.setdiff1d(rows, self.ids)
        if len(fresh):
            search = self.search
            rows = search.vectors[fresh]
            values = exact_scores(search.bridge, self.q, rows, search.device, self.banks)
            self.ids = np.concatenate([self.ids, fresh])
            self.values = torch.cat([self.values, values], dim=1)
        return self.values, torch.from_numpy(self.ids).to(self.search.device)


@dataclass(frozen=True)
class Float64Bank:
    """Both sides of a bank in float64 on the device, made once for the many small exact
    scorings of one search (a bank of up to FLOAT64_BANK_ELEMENTS values; larger ones are
    converted a chunk at a time, per scoring)."""

    query_rows: torch.Tensor
    candidate_rows: torch.Tensor

    @classmethod
    def of(cls, bridge: Bridge, device: str) -> Float64Bank | None:
        query_bank, candidate_bank = bridge.query_side.bank, bridge.candidate_side.bank
        if query_bank.size + candidate_bank.size > FLOAT64_BANK_ELEMENTS:
            return None
        return cls(
            torch.from_numpy(np.array(query_bank, np.float64)).to(device),
            torch.from_numpy(np.array(candidate_bank, np.float64)).to(device),
        )


def exact_scores(
    bridge: Bridge,
    q: torch.Tensor,
    candidates: np.ndarray,
    device: str,
    banks: Float64Bank | None = None,
) -> torch.Tensor:
    """The bridge scores of the retrieved rows [N, |C|] in float64 (products too): their
    rounding is then far below any gap a certificate relies on, unlike float32's, whose sums
    over M terms drift by up to M ulps. Memory: one [bank chunk, candidate block] product."""
    return torch.cat(
        [
            _exact_block(
                bridge, q, candidates[start : start + EXACT_CANDIDATE_BLOCK], device, banks
            )
            for start in range(0, len(candidates), EXACT_CANDIDATE_BLOCK)
        ]
        or [torch.empty((q.shape[0], 0), dtype=torch.float64, device=device)],
        dim=1,
    )


def _exact_block(
    bridge: Bridge,
    q: torch.Tensor,
    candidates: np.ndarray,
    device: str,
    banks: Float64Bank | None,
) -> torch.Tensor:
    from ucl_cli.estimators import combine_partials, partial_bridge_scores

    query_side, candidate_side = bridge.query_side, bridge.candidate_side
    q64 = q.double()
    c64 = torch.from_numpy(np.array(candidates, np.float64)).to(device)
    chunk = max(256, EXACT_CHUNK_ELEMENTS // max(c64.shape[0], q64.shape[0], 1))
    parts = []
    for start in range(0, len(query_side.bank), chunk):
        # float64 copies of the (read-only, memory-mapped) rows: the products are exact to
        # float64 rounding
        if banks is not None:
            rows1 = banks.query_rows[start : start + chunk]
            rows2 = banks.candidate_rows[start : start + chunk]
        else:
            rows1 = torch.from_numpy(np.array(query_side.bank[start : start + chunk], np.float64))
            rows2 = torch.from_numpy(
                np.array(candidate_side.bank[start : start + chunk], np.float64)
            )
        left = query_side.scale * (q64 @ rows1.to(device).T)
        right = candidate_side.scale * (rows2.to(device) @ c64.T)
        parts.append(partial_bridge_scores(left, right))
    return combine_partials(parts)


def float64_slack(scored: torch.Tensor, peak: float, bank_size: int) -> torch.Tensor:
    """A generous bound on the float64 route's error: 64 ulps of every magnitude it passed
    through (the products, up to `peak`; the sum, up to log M above the score)."""
    eps = torch.finfo(torch.float64).eps
    return 64 * eps * (scored.abs() + peak + math.log(max(bank_size, 1)) + 1.0)


def largest_path(bridge: Bridge, queries: np.ndarray, row_norm: float) -> float:
    """The largest |s1 <a, b1> + s2 <b2, c>| any path can take (Cauchy-Schwarz)."""
    from ucl_cli.bank.norms import largest_row_norm

    query_side, candidate_side = bridge.query_side, bridge.candidate_side
    query_norm = largest_row_norm(np.asarray(queries)) if len(queries) else 0.0
    return (
        query_side.scale * query_norm * query_side.row_norm
        + candidate_side.scale * row_norm * candidate_side.row_norm
    )


def query_side_values(q: torch.Tensor, side, device: str) -> torch.Tensor:
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


def value_error(bridge: Bridge, queries: np.ndarray, row_norm: float) -> float:
    """How far the float32 products behind a score may be from the exact ones (both sides)."""
    from ucl_cli.bank.norms import largest_row_norm

    query_side, candidate_side = bridge.query_side, bridge.candidate_side
    query_norm = largest_row_norm(np.asarray(queries)) if len(queries) else 0.0
    left = query_side.scale * query_norm * query_side.row_norm
    right = candidate_side.scale * row_norm * candidate_side.row_norm
    dim = queries.shape[1]
    return (left + right) * dot_rounding_bound(dim + 2)


__all__ = ["MAX_RETRIEVED_PER_ROW", "certified_collection_top"]
