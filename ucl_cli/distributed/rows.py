"""How a query hands its lse sum to the cluster: the bank's matrices, tagged.

`ClusterBank` wraps an opened bank for a run with `--cluster`: everything is the bank's, except
that `vectors(model)` returns the same rows as a `ClusterRows` view (no copy), tagged with the
`ClusterScorer` whose actors hold them, and that a collection's certified search can run on
them (`cluster_top`, which `candidate_sources.collection_source` finds). The lse method asks
`cluster_lse` first: when both sides of its bridge are such whole, tagged matrices, the sum
runs on the cluster; a sub-bank (eval's smaller bank sizes gather rows, which drops the tag),
and every other method, runs in this process over the rows the driver holds, as without a
cluster.
NumPy only: the hook costs an in-process query nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ucl_cli.bridge.methods import Bridge, Scores
    from ucl_cli.calibration import Calibration
    from ucl_cli.distributed.driver import ClusterScorer


class ClusterRows(np.ndarray):
    """A whole bank matrix of one model whose rows a cluster holds too. Slices and gathers of
    it are not tagged: only the whole bank is scored on the cluster."""

    scorer: ClusterScorer | None = None
    key: str | None = None

    def __array_finalize__(self, obj: Any) -> None:
        self.scorer = None
        self.key = None


def tagged(matrix: np.ndarray, scorer: ClusterScorer, key: str) -> ClusterRows:
    view = matrix.view(ClusterRows)
    view.scorer, view.key = scorer, key
    return view


class ClusterBank:
    """An opened bank whose lse sums run on a cluster (see the module doc); closes the
    cluster's actors, not the bank (the caller opened it)."""

    def __init__(self, bank: Any, scorer: ClusterScorer):
        self._bank = bank
        self.scorer = scorer
        self._tagged: dict[str, ClusterRows] = {}

    def vectors(self, model: Any) -> Any:
        key = self._bank.models[self._bank.position(model)].key
        rows = self._bank.vectors(key)
        if not isinstance(rows, np.ndarray):  # a sharded collection's rows, joined lazily
            return rows  # never a bridge: no lse sum to send to the cluster
        if key not in self._tagged:
            self._tagged[key] = tagged(rows, self.scorer, key)
        return self._tagged[key]

    def cluster_top(
        self, bridge: Bridge, queries: np.ndarray, keep: int, settings: Any, *, key: str
    ) -> Any:
        """A collection's certified top `keep`, each shard searched by the actor holding it
        (`ClusterScorer.collection_top`)."""
        return self.scorer.collection_top(bridge, queries, keep, settings, key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._bank, name)

    def __len__(self) -> int:
        return len(self._bank)

    def __enter__(self) -> ClusterBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.scorer.close()


def cluster_lse(
    bridge: Bridge, queries: np.ndarray, candidates: np.ndarray, calibration: Calibration
) -> Scores | None:
    """lse's scores summed on the cluster that holds this bridge's bank; None when the bridge
    is not a whole bank held by one (score it in this process)."""
    left, right = bridge.query_side.bank, bridge.candidate_side.bank
    if not (isinstance(left, ClusterRows) and isinstance(right, ClusterRows)):
        return None
    if left.scorer is None or left.scorer is not right.scorer:
        return None
    assert left.key is not None and right.key is not None
    return left.scorer.lse_scores(bridge, (left.key, right.key), queries, candidates, calibration)
