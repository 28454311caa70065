"""The driver's view of a bank the cluster holds: its shape and where it lives, not its rows.

`ClusterBank` wraps an opened bank for a run with `--cluster`: everything is the bank's, except
that `vectors(model)` returns a `RemoteRows` handle instead of the rows, and that a
collection's certified search runs on the actors (`cluster_top`, which
`candidate_sources.collection_source` finds). A bridge whose two sides are such handles is a
`RemoteBridge`, and every method that reads the bank asks its actors instead of this process:
lse (partial sums), topk (each round's bounds), caption (each shard's best row) and
`--explain` (each shard's heaviest rows); eval's smaller banks are the same handles over a
subset of the rows (`direct` reads no bank). A collection's rows are read in this process as
before (lazily, through the shards' memory maps): its hits are named and explained from them.

Something in this process that reads a handle's rows anyway still gets them (read from the
bank, and counted in `ClusterBank.rows_read_here`; the tests hold it at zero).
NumPy only: the hook costs an in-process query nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ucl_cli.bridge.methods import Bridge, Scores, ScoringSettings
    from ucl_cli.calibration import Calibration
    from ucl_cli.distributed.driver import ClusterScorer
    from ucl_cli.estimators.explain import Explanation


class RemoteRows:
    """One model's bank matrix, or a sub-bank of its rows (`rows`, global row numbers), held
    by the actors of `scorer`. Indexing or converting it reads the rows in this process (the
    fallback the module doc describes); `subset` does not."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, owner: ClusterBank, key: str, dim: int, rows: np.ndarray | None = None):
        self.owner = owner
        self.key = key
        self.dim = dim
        self.rows = rows

    @property
    def scorer(self) -> ClusterScorer:
        return self.owner.scorer

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self), self.dim)

    def __len__(self) -> int:
        return len(self.owner) if self.rows is None else len(self.rows)

    def subset(self, rows: np.ndarray) -> RemoteRows:
        """The sub-bank of these rows at `rows` (positions in this matrix), still remote."""
        rows = np.asarray(rows, dtype=np.int64)
        picked = rows if self.rows is None else self.rows[rows]
        return RemoteRows(self.owner, self.key, self.dim, picked)

    def same_rows(self, other: Any) -> bool:
        """Whether `other` is the same bank's same rows (a bridge's two sides must be)."""
        if not isinstance(other, RemoteRows) or other.owner is not self.owner:
            return False
        if self.rows is None or other.rows is None:
            return self.rows is None and other.rows is None
        return np.array_equal(self.rows, other.rows)

    def local(self) -> np.ndarray:
        """The rows, read in this process (see the module doc)."""
        self.owner.rows_read_here += 1
        matrix = self.owner.local_vectors(self.key)
        return np.asarray(matrix if self.rows is None else matrix[self.rows])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        rows = self.local()
        return rows if dtype is None else rows.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.local()[key]


class ClusterBank:
    """An opened bank held by a cluster's actors (see the module doc); closing it releases its
    shards' places on the actors (and the actors, when its scorer has a pool of its own), not
    the bank (the caller opened it)."""

    def __init__(self, bank: Any, scorer: ClusterScorer):
        self._bank = bank
        self.scorer = scorer
        self.rows_read_here = 0  # reads of a bridge bank's rows in this process

    def vectors(self, model: Any) -> Any:
        record = self._bank.models[self._bank.position(model)]
        if self._bank.kind == "collection":  # read here lazily: hits are named from them
            return self._bank.vectors(record.key)
        return RemoteRows(self, record.key, record.dim)

    def local_vectors(self, key: str) -> Any:
        return self._bank.vectors(key)

    def cluster_top(
        self, bridge: Bridge, queries: np.ndarray, keep: int, settings: Any, *, key: str
    ) -> Any:
        """A collection's certified top `keep`, each shard searched by the actor holding it
        (`collection_tops`)."""
        from ucl_cli.distributed.collection_tops import collection_top

        return collection_top(self.scorer, bridge, queries, keep, settings, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)

    def __len__(self) -> int:
        return len(self._bank)

    def __enter__(self) -> ClusterBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.scorer.close()


@dataclass(frozen=True)
class RemoteBridge:
    """A bridge whose bank (or sub-bank) the actors of one cluster hold: each method's work
    sent to them as a request (`ucl_cli.distributed.*`), their answers combined here."""

    bridge: Bridge
    query_rows: RemoteRows
    candidate_rows: RemoteRows

    @property
    def scorer(self) -> ClusterScorer:
        return self.query_rows.scorer

    @property
    def rows(self) -> np.ndarray | None:
        return self.query_rows.rows

    def lse(self, queries: np.ndarray, candidates: np.ndarray, calibration: Calibration) -> Scores:
        """`scoring.lse_scores`: every shard's partial sums, combined (`partials`)."""
        from ucl_cli.bridge.methods import Scores
        from ucl_cli.distributed.partials import ScoreRequest
        from ucl_cli.estimators.calibrated import combine_calibrated

        request = ScoreRequest(
            **self._batch(queries, candidates, calibration), normalize=calibration.normalize
        )
        found = self.scorer.gather(request)
        values = combine_calibrated([found[name].to_partial() for name in self._names()])
        return Scores(values, _order(values))

    def caption(self, queries: np.ndarray, candidates: np.ndarray) -> Scores:
        """`scoring.caption_scores`: each shard's best row, the best kept (`captions`)."""
        from ucl_cli.bridge.methods import Scores
        from ucl_cli.distributed.captions import CaptionRequest, best_captions

        found = self.scorer.gather(CaptionRequest(**self._batch(queries, candidates)))
        values, rows = best_captions([found[name] for name in self._names()])
        return Scores(values, _order(values), bank_rows=rows)

    def explain(
        self,
        queries: np.ndarray,
        candidates: np.ndarray,
        pairs: list[tuple[int, int]],
        top: int,
        calibration: Calibration,
    ) -> Explanation:
        """`scoring.explain`: each shard's heaviest rows and mass, joined (`explanations`)."""
        from ucl_cli.distributed.explanations import ExplainRequest, joined

        wanted = sorted({k for _, k in pairs})  # only the pairs' candidates travel
        column = {k: i for i, k in enumerate(wanted)}
        request = ExplainRequest(
            **self._batch(queries, np.asarray(candidates)[wanted], calibration),
            pairs=tuple((n, column[k]) for n, k in pairs),
            top=top,
        )
        found = self.scorer.gather(request)
        return joined([found[name] for name in self._names()], top)

    def topk(
        self, queries: np.ndarray, candidates: np.ndarray, settings: ScoringSettings, top: int
    ) -> Scores:
        """`scoring.topk_scores`: each round's bounds from every shard, joined (`bridge_topk`;
        the sides go untempered: the calibration is applied there)."""
        from ucl_cli.distributed.bridge_topk import cluster_topk_scores

        batch = self._batch(queries, candidates)
        return cluster_topk_scores(
            self.scorer.gather,
            self.scorer.shards,
            batch["query_side"],
            batch["candidate_side"],
            batch["queries"],
            batch["candidates"],
            top=top,
            nearest_rows=settings.nearest_rows,
            max_nearest_rows=settings.max_nearest_rows,
            calibration=settings.calibration,
            rows=self.rows,
        )

    def _batch(
        self,
        queries: np.ndarray,
        candidates: np.ndarray,
        calibration: Calibration | None = None,
    ) -> dict[str, Any]:
        """What every request carries (`bridge_request.BridgeRequest`): the two sides (their
        scales tempered by `calibration`, when given), the embeddings, the sub-bank."""
        from ucl_cli.distributed.bridge_request import ShardedSide

        bridge = self.bridge if calibration is None else self.bridge.tempered(calibration)
        query, candidate = bridge.query_side, bridge.candidate_side
        return {
            "query_side": ShardedSide(self.query_rows.key, query.scale, query.row_norm),
            "candidate_side": ShardedSide(
                self.candidate_rows.key, candidate.scale, candidate.row_norm
            ),
            "queries": _float32(queries),
            "candidates": _float32(candidates),
            "rows": self.rows,
        }

    def _names(self) -> list[str]:
        """The shards' names in bank order (`gather` has an answer from each, or fails)."""
        return [shard.name for shard in self.scorer.shards]


def remote_bridge(bridge: Bridge) -> RemoteBridge | None:
    """The bridge as its cluster sees it; None when its bank is not held by one (score it in
    this process)."""
    left, right = bridge.query_side.bank, bridge.candidate_side.bank
    if not isinstance(left, RemoteRows) or not left.same_rows(right):
        return None
    return RemoteBridge(bridge, left, right)


def _order(values: Any) -> Any:
    return values.argsort(dim=1, descending=True, stable=True)


def _float32(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype=np.float32)


__all__ = ["ClusterBank", "RemoteBridge", "RemoteRows", "remote_bridge"]
