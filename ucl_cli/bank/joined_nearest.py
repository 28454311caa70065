"""One certified nearest-row search over several banks' searches (a sharded bank's shards).

Each shard searches its own index (IVF or Flat) and certifies what it did not return. Joined,
row m of shard s is row offset_s + m, and the IVF lists of all shards are the groups of the
whole (shard s's list g is group first_s + g). The T best of the shards' results are the joined
result; a row some shard returned but the join cut is bounded by its computed product plus
float32 rounding (the shards' ceilings already include it for the rows they did not return), so

    ceiling = max( max_s ceiling_s, largest cut value + rounding )

and each group's ceiling is raised to cover the cut rows of that group. Nothing is copied
between shards: a search over 4 shards of 250,000 rows visits their indexes as they are saved
(and the list walk of `bridge.list_search` sees the union of their lists).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ucl_cli.bank.nearest import LazyNearest, Neighbours
from ucl_cli.estimators.topk import dot_rounding_bound


class JoinedNearest:
    """The certified search of shards' searches, `LazyNearest`'s interface over all rows."""

    def __init__(self, parts: Sequence[LazyNearest], sizes: Sequence[int], row_norm: float):
        self.parts = list(parts)
        self.offsets = np.cumsum([0, *sizes])
        self.row_norm_bound = row_norm
        self._groups: tuple[np.ndarray, int] | None = None

    def __call__(self, queries: np.ndarray, t: int, nprobe: int | None = None) -> Neighbours:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        t = min(t, int(self.offsets[-1]))
        shards = [s for s in range(len(self.parts)) if self._size(s)]
        found = [self.parts[s](queries, min(t, self._size(s)), nprobe) for s in shards]
        values = np.concatenate([f.values for f in found], axis=1)
        rows = np.concatenate(
            [
                np.where(f.rows >= 0, f.rows + self.offsets[s], -1)
                for f, s in zip(found, shards, strict=True)
            ],
            axis=1,
        )
        order = np.argsort(-values, axis=1, kind="stable")
        kept, cut = order[:, :t], order[:, t:]
        norm = np.linalg.norm(queries.astype(np.float64), axis=1)
        slack = dot_rounding_bound(queries.shape[1]) * norm * self.row_norm_bound
        cut_values = np.take_along_axis(values, cut, axis=1).astype(np.float64)
        cut_rows = np.take_along_axis(rows, cut, axis=1)
        cut_values = np.where(cut_rows >= 0, cut_values, -np.inf)
        ceiling = np.max([f.ceiling for f in found], axis=0)
        if cut.shape[1]:
            ceiling = np.maximum(ceiling, cut_values.max(axis=1) + slack)
        by_shard = dict(zip(shards, found, strict=True))
        group_ceiling = np.concatenate(
            [
                by_shard[s].group_ceiling
                if s in by_shard
                else np.full((len(queries), part.row_groups()[1]), -np.inf)  # an empty shard
                for s, part in enumerate(self.parts)
            ],
            axis=1,
        )
        if cut.shape[1]:
            groups, _ = self.row_groups()
            has = cut_rows >= 0
            query_of = np.broadcast_to(np.arange(len(queries))[:, None], cut_rows.shape)[has]
            np.maximum.at(
                group_ceiling,
                (query_of, groups[cut_rows[has]]),
                (cut_values + slack[:, None])[has],
            )
        products = [f.centroid_products for f in found]
        whole = len(found) == len(self.parts) and all(p is not None for p in products)
        centroid = np.concatenate(products, axis=1) if whole else None
        return Neighbours(
            np.take_along_axis(values, kept, axis=1),
            np.take_along_axis(rows, kept, axis=1),
            ceiling,
            group_ceiling,
            centroid,
        )

    def lists(self) -> int:
        """Every shard's lists: a search given this many visits them all."""
        return sum(part.lists() for part in self.parts)

    def default_nprobe(self) -> int:
        return max(part.default_nprobe() for part in self.parts)

    def row_groups(self) -> tuple[np.ndarray, int]:
        """Each row's group (its shard's list, numbered after the earlier shards' lists)."""
        if self._groups is None:
            groups, first = [], 0
            for part in self.parts:
                own, count = part.row_groups()
                groups.append(own + first)
                first += count
            self._groups = (np.concatenate(groups), first)
        return self._groups

    def row_distances(self) -> np.ndarray | None:
        distances = [part.row_distances() for part in self.parts]
        if any(d is None for d in distances):
            return None
        return np.concatenate(distances)

    def _size(self, shard: int) -> int:
        return int(self.offsets[shard + 1] - self.offsets[shard])
