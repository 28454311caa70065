"""Certified top N over a collection, list by list, from a table of per-list maxima.

A collection's IVF index splits its rows into lists (groups of near rows). For a bank row m and a
list g, let T[m, g] be the largest inner product <b2_m, c> over the rows c of the list. Then
for a query a, with L_m = s1 <a, b1_m>, every row c of list g scores

    S(c) = logsumexp_m (L_m + s2 <b2_m, c>) - log M  <=  logsumexp_m (L_m + s2 T[m, g]) - log M

a bound per list that is tight for each bank row separately (unlike the Cauchy-Schwarz bound of
a list's radius, which in high dimension is loose by most of the radius). The table is a
property of the bank and the collection, not of the query: one pass over the collection makes
it (about the cost of one `lse` query), and it is saved under the index bounds, named by what
it was made from (both matrices and the collection's lists), so later queries only read it.

A query then visits lists in decreasing order of their bound. In a visited list each row is
bounded from the query's T heaviest bank rows H (the T largest L_m): exactly through them
(T inner products per row, within float32 rounding) and through the table for the rest,

    E_H(c) = logsumexp_{h in H} (L_h + s2 <b2_h, c>)
    E_H(c) <= S(c) + log M <= logaddexp(E_H(c), logsumexp_{m not in H} (L_m + s2 T[m, g]))

and only the rows whose upper bound reaches the N-th best lower bound are scored exactly (in
float64). The leaders are certified against each other, against the rows only bounded, and
against the bound of the first list not visited; the visit widens (2x the lists) until they are,
and stops at a near tie that no visit can resolve (those ranks are returned uncertified).

The table costs M x lists floats: it is used when that stays within `TABLE_ELEMENTS` and the
lists hold `MAX_LIST_ROWS` rows or fewer on average; otherwise (a very large bridge bank, or a
few Flat shards joined) `collection_search` searches the index from the heavy rows instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ucl_cli.bridge.methods import Bridge
from ucl_cli.estimators.topk import dot_rounding_bound

# The largest table (bank rows x lists, float32) the search builds and keeps: 256 MiB.
TABLE_ELEMENTS = 1 << 26
# Past this many rows a list on average, a visit costs more than the heavy rows' search.
MAX_LIST_ROWS = 4096
# Bumped when the saved table's meaning changes; a table of another version is made again.
TABLE_VERSION = 1
# Lists visited first per query (the visit doubles until the leaders are certified).
FIRST_LISTS = 2
# Heavy bank rows whose products bound a visited row exactly; 4x more, up to every bank row,
# while more than EXACT_BUDGET rows of a query would need exact scoring.
FIRST_HEAVY = 64
EXACT_BUDGET = 4096
TABLE_CHUNK_ROWS = 1 << 15
# Tables a process keeps once read (by file), so that a warm server does not read them per query.
HELD_TABLES = 4
_HELD: dict[tuple[str, str], ListTable] = {}


def table_fits(bank_rows: int, lists: int, rows: int) -> bool:
    """Whether the per-list table is small enough to build, keep and search with, and its lists
    small enough to be worth visiting whole (a few Flat shards joined are a few huge lists)."""
    return lists > 1 and bank_rows * lists <= TABLE_ELEMENTS and rows <= MAX_LIST_ROWS * lists


@dataclass(frozen=True)
class ListTable:
    """T[m, g] (float64, rounding included: no exact product exceeds it; -inf for an empty
    list), and each list's member rows (`members[starts[g]:starts[g + 1]]`)."""

    maxima: torch.Tensor  # [M, G]
    members: np.ndarray
    starts: np.ndarray

    def rows_of(self, lists: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, the list of each) of the given lists, in that order."""
        parts = [self.members[self.starts[g] : self.starts[g + 1]] for g in lists]
        sizes = [len(part) for part in parts]
        rows = np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)
        return rows, np.repeat(np.asarray(lists, dtype=np.int64), sizes)


def list_table(
    bank: np.ndarray,
    vectors: np.ndarray,
    groups: np.ndarray,
    lists: int,
    row_norm: float,
    *,
    device: str = "cpu",
    identity: str | None = None,
    on_build: Callable[[], None] | None = None,
) -> ListTable:
    """The table for bank rows `bank` [M, d] and the collection `vectors` [C, d] split into
    `lists` by `groups` [C]. With an `identity` (what names the collection's vectors and lists)
    it is saved, and read back by the next query through the same bank. `on_build` hears that
    the table is being made (a pass over the collection) rather than read."""
    from ucl_cli import config

    path = None
    if identity is not None:
        digest = hashlib.sha256(f"{TABLE_VERSION}:{identity}:{lists}:".encode())
        digest.update(np.ascontiguousarray(bank, dtype=np.float32).tobytes())
        path = config.index_bounds_dir() / f"lists-{digest.hexdigest()}.npy"
        held = _HELD.get((str(path), device))
        if held is not None and path.exists():  # a warm process (ucl serve): no reading again
            return held
    order = np.argsort(groups, kind="stable")
    starts = np.searchsorted(groups[order], np.arange(lists + 1))
    raw = _load(path, (len(bank), lists))
    if raw is None:
        if on_build is not None:
            on_build()
        raw = _maxima(bank, vectors, groups, lists, device)
        _save(path, raw)
    # No exact product exceeds a computed one by more than gamma_d |b2_m| |c|.
    norms = np.linalg.norm(np.asarray(bank, dtype=np.float64), axis=1)
    slack = dot_rounding_bound(bank.shape[1]) * norms * row_norm * (1 + 1e-6)
    maxima = torch.from_numpy(raw.astype(np.float64) + slack[:, None]).to(device)
    table = ListTable(maxima, order.astype(np.int64), starts)
    if path is not None:
        while len(_HELD) >= HELD_TABLES:
            _HELD.pop(next(iter(_HELD)))
        _HELD[(str(path), device)] = table
    return table


def _maxima(
    bank: np.ndarray, vectors: np.ndarray, groups: np.ndarray, lists: int, device: str
) -> np.ndarray:
    """max over each list's rows of the float32 products with each bank row, [M, G] float32:
    one pass over the collection, a chunk of rows at a time."""
    from ucl_cli.estimators.bridge import _full_precision_matmul

    rows = torch.from_numpy(np.array(bank, dtype=np.float32)).to(device)
    table = torch.full((len(bank), lists), -math.inf, dtype=torch.float32, device=device)
    with _full_precision_matmul():  # the slack assumes true float32 products
        for start in range(0, len(vectors), TABLE_CHUNK_ROWS):
            chunk = np.array(vectors[start : start + TABLE_CHUNK_ROWS], np.float32)
            products = rows @ torch.from_numpy(chunk).to(device).T
            index = torch.from_numpy(groups[start : start + len(chunk)]).to(device)
            with warnings.catch_warnings():  # "index_reduce() is in beta": its amax is exact
                warnings.simplefilter("ignore", UserWarning)
                table.index_reduce_(1, index, products, "amax")
    return table.cpu().numpy()


def _load(path, shape: tuple[int, int]) -> np.ndarray | None:
    if path is None or not path.exists():
        return None
    try:
        saved = np.load(path)
    except (OSError, ValueError):
        return None
    return saved if saved.shape == shape and saved.dtype == np.float32 else None


def _save(path, table: np.ndarray) -> None:
    """Atomically; a table that cannot be saved is simply made again next time."""
    if path is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as out:
            np.save(out, table)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)


@dataclass(frozen=True)
class ListSearch:
    """One collection searched list by list for a batch of queries (the module doc)."""

    bridge: Bridge  # tempered
    vectors: np.ndarray
    table: ListTable
    keep: int
    max_heavy: int
    error: float  # the float32 query-side values' rounding (and the rest, conservatively)
    peak: float  # the largest |path value|, for the float64 scores' slack
    device: str
    row_norm: float

    def all(self, left: torch.Tensor, q: torch.Tensor) -> list:
        """Each query's leaders (`candidate_sources.Leaders` of one row)."""
        from ucl_cli.bridge.collection_search import Float64Bank

        left64 = left.double()
        log_m = math.log(left.shape[1])
        bounds = self._list_bounds(left64, log_m)
        banks = Float64Bank.of(self.bridge, self.device)
        return [self.one(q[n : n + 1], left64[n], bounds[n], banks) for n in range(q.shape[0])]

    def _list_bounds(self, left64: torch.Tensor, log_m: float) -> torch.Tensor:
        """[N, G] the bound of every row of each list, per query (-inf for an empty list)."""
        from ucl_cli.bridge.collection_search import float64_slack
        from ucl_cli.estimators import partial_bridge_scores

        s2 = self.bridge.candidate_side.scale
        maxima = self.table.maxima
        empty = torch.isinf(maxima).all(dim=0)
        filled = torch.where(torch.isinf(maxima), torch.zeros_like(maxima), maxima)
        sums = partial_bridge_scores(left64, s2 * filled).lse
        bound = sums - log_m
        bound = bound + float64_slack(bound, self.peak, left64.shape[1]) + self.error
        return bound.masked_fill(empty[None], -math.inf)

    def one(self, q: torch.Tensor, left64: torch.Tensor, bounds: torch.Tensor, banks):
        """One query's leaders: lists visited in order of their bound until they are proven."""
        from ucl_cli.bridge.candidate_sources import Leaders
        from ucl_cli.bridge.collection_search import ScoredRows, float64_slack

        order = torch.argsort(bounds, descending=True).cpu().numpy()
        order = order[np.isfinite(bounds.cpu().numpy()[order])]
        scored = ScoredRows(self, q, banks)
        heavy = min(FIRST_HEAVY, self.max_heavy)
        visited, rows, lists = 0, np.empty(0, np.int64), np.empty(0, np.int64)
        lower = upper = torch.empty(0, dtype=torch.float64, device=self.device)
        step = FIRST_LISTS
        while True:
            fresh_rows, fresh_lists = self.table.rows_of(order[visited : visited + step])
            # each row's bounds hold on their own: only the newly visited rows are bounded
            fresh_lower, fresh_upper = self._row_bounds(left64, fresh_rows, fresh_lists, heavy)
            rows = np.concatenate([rows, fresh_rows])
            lists = np.concatenate([lists, fresh_lists])
            lower, upper = torch.cat([lower, fresh_lower]), torch.cat([upper, fresh_upper])
            visited = min(visited + step, len(order))
            unseen = bounds[order[visited]] if visited < len(order) else -math.inf
            nth = lower.topk(min(self.keep, len(rows))).values[-1] if len(rows) else -math.inf
            reachable = upper >= nth
            while int(reachable.sum()) > EXACT_BUDGET and heavy < self.max_heavy:
                heavy = min(4 * heavy, self.max_heavy)  # tighter bounds, for every row
                lower, upper = self._row_bounds(left64, rows, lists, heavy)
                nth = lower.topk(min(self.keep, len(rows))).values[-1]
                reachable = upper >= nth
            exact, ids = scored.of(rows[reachable.cpu().numpy()])
            slack = float64_slack(exact, self.peak, left64.shape[0])
            only_bounded = ~torch.from_numpy(np.isin(rows, ids.cpu().numpy())).to(self.device)
            bounded_ids = torch.from_numpy(rows).to(self.device)[only_bounded]
            ceiling = torch.tensor([float(unseen)], dtype=torch.float64, device=self.device)
            leaders = Leaders(
                torch.cat([exact, lower[only_bounded][None]], dim=1),
                torch.cat([ids, bounded_ids])[None],
                torch.cat([exact - slack, lower[only_bounded][None]], dim=1),
                torch.cat([exact + slack, upper[only_bounded][None]], dim=1),
                ceiling,
            ).best(self.keep)
            enough = leaders.values.shape[1] >= self.keep
            if enough and bool(leaders.certify().all()):
                return leaders
            # Unproven: the lists not visited may still hold a better row (visit more), or
            # the leaders are too close to order, which no visit changes.
            weakest = float(leaders.lower[0, -1]) if enough else -math.inf
            if visited >= len(order) or float(unseen) < weakest:
                return leaders
            step *= 2

    def _row_bounds(
        self, left64: torch.Tensor, rows: np.ndarray, lists: np.ndarray, heavy: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """[R] lower and upper bounds on the scores of `rows` (of lists `lists`): exact through
        the `heavy` heaviest bank rows, the table for the rest."""
        s2 = self.bridge.candidate_side.scale
        log_m = math.log(left64.shape[0])
        top = left64.topk(min(heavy, left64.shape[0])).indices
        bank = self.bridge.candidate_side.bank
        chosen = np.sort(top.cpu().numpy())
        b2 = np.ascontiguousarray(bank[chosen], dtype=np.float32)
        slack = dot_rounding_bound(b2.shape[1]) * self.row_norm
        slack = slack * np.linalg.norm(b2.astype(np.float64), axis=1)
        weights = left64[torch.from_numpy(chosen).to(self.device)]
        products = _products(self.vectors, rows, b2, self.device)  # [R, t] float64
        slack_t = torch.from_numpy(slack).to(self.device)
        through_heavy_hi = torch.logsumexp(weights + s2 * (products + slack_t), dim=1)
        through_heavy_lo = torch.logsumexp(weights + s2 * (products - slack_t), dim=1)
        rest = left64.clone()
        rest[torch.from_numpy(chosen).to(self.device)] = -math.inf
        unique_lists, position = np.unique(lists, return_inverse=True)
        columns = self.table.maxima[:, torch.from_numpy(unique_lists).to(self.device)]
        through_rest = torch.logsumexp(rest[:, None] + s2 * columns, dim=0)  # [lists]
        through_rest = through_rest[torch.from_numpy(position).to(self.device)]
        upper = torch.logaddexp(through_heavy_hi, through_rest) - log_m + self.error
        lower = through_heavy_lo - log_m - self.error
        return lower, upper


def _products(vectors: np.ndarray, rows: np.ndarray, b2: np.ndarray, device: str) -> torch.Tensor:
    """<c, b2_h> for the rows c of the collection named, float32 products as float64 [R, t]."""
    from ucl_cli.estimators.bridge import _full_precision_matmul

    if len(rows) == 0:
        return torch.empty((0, len(b2)), dtype=torch.float64, device=device)
    picked = np.asarray(vectors[np.sort(rows)], dtype=np.float32)
    back = np.argsort(np.argsort(rows))  # rows were read in sorted order (faster on a map)
    with _full_precision_matmul():
        out = torch.from_numpy(picked).to(device) @ torch.from_numpy(b2).to(device).T
    return out[torch.from_numpy(back).to(device)].double()
