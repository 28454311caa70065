"""A collection's certified top N, each shard searched by the actor that holds it.

Candidates are independent: the best N of a collection are among the best N of its shards, and
a candidate a shard leaves out is below that shard's ceiling. So each actor runs the one-machine
search (`bridge.collection_search`: the list walk over the shard's own saved index) on each
shard it holds and returns its leaders, their bounds and its ceiling; the driver renumbers the
rows, merges the shards' leaders and certifies the union (`candidate_sources.Leaders`), exactly
as one process merges several collections. The bridge bank travels with the request (both of
its matrices, once per call through Ray's object store): every shard's score needs all of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ucl_cli.calibration import Calibration


@dataclass(frozen=True)
class TopRequest:
    """What every actor needs for one batch of queries over its collection shards."""

    candidate_key: str  # the model whose vectors the collection holds
    query_bank: np.ndarray  # [M, d1] the bridge bank as the query model embeds it
    candidate_bank: np.ndarray  # [M, d2] ... as the candidate model does
    query_scale: float
    candidate_scale: float
    query_row_norm: float
    candidate_row_norm: float
    queries: np.ndarray  # [N, d1]
    keep: int
    calibration: Calibration
    max_nearest_rows: int


@dataclass(frozen=True)
class WireLeaders:
    """One shard's `Leaders` as NumPy arrays (what Ray sends back); ids are the shard's rows."""

    values: np.ndarray
    ids: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    ceiling: np.ndarray

    @classmethod
    def of(cls, leaders: Any) -> WireLeaders:
        return cls(*(t.cpu().numpy() for t in _fields(leaders)))

    def to_leaders(self, offset: int, device: str = "cpu") -> Any:
        """The shard's leaders, their ids renumbered as rows of the whole collection."""
        from ucl_cli.bridge.candidate_sources import Leaders

        values, ids, lower, upper, ceiling = (
            torch.tensor(array, device=device)
            for array in (self.values, self.ids, self.lower, self.upper, self.ceiling)
        )
        return Leaders(values, ids + offset, lower, upper, ceiling)


def request_for(
    bridge: Any, queries: np.ndarray, keep: int, settings: Any, candidate_key: str
) -> TopRequest:
    """The request for `bridge` (untempered: the calibration travels and is applied there)."""
    query_side, candidate_side = bridge.query_side, bridge.candidate_side
    return TopRequest(
        candidate_key=candidate_key,
        query_bank=np.ascontiguousarray(query_side.bank, dtype=np.float32),
        candidate_bank=np.ascontiguousarray(candidate_side.bank, dtype=np.float32),
        query_scale=query_side.scale,
        candidate_scale=candidate_side.scale,
        query_row_norm=query_side.row_norm,
        candidate_row_norm=candidate_side.row_norm,
        queries=np.ascontiguousarray(queries, dtype=np.float32),
        keep=keep,
        calibration=settings.calibration,
        max_nearest_rows=settings.max_nearest_rows,
    )


def shard_top(shard: Any, request: TopRequest) -> WireLeaders:
    """The certified top `keep` of one collection shard (an opened bank), on this process."""
    from ucl_cli.bridge.collection_search import certified_collection_top
    from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings

    bridge = Bridge(
        BridgeSide(request.query_bank, request.query_scale, None, request.query_row_norm),
        BridgeSide(
            request.candidate_bank, request.candidate_scale, None, request.candidate_row_norm
        ),
    )
    key = request.candidate_key
    settings = ScoringSettings(
        calibration=request.calibration, max_nearest_rows=request.max_nearest_rows
    )
    found = certified_collection_top(
        bridge,
        request.queries,
        shard.vectors(key),
        shard.nearest(key),
        shard.row_norm(key),
        min(request.keep, len(shard)),
        settings,
        identity=shard.content_key(key),
    )
    return WireLeaders.of(found)


def _fields(leaders: Any) -> tuple:
    return leaders.values, leaders.ids, leaders.lower, leaders.upper, leaders.ceiling
