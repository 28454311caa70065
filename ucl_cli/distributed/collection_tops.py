"""A collection's certified top N, each shard searched by the actor that holds it.

Candidates are independent: the best N of a collection are among the best N of its shards, and
a candidate a shard leaves out is below that shard's ceiling. So each actor runs the one-machine
search (`bridge.collection_search`: the list walk over the shard's own saved index) on each
shard it holds and returns its leaders, their bounds and its ceiling; the driver renumbers the
rows, merges the shards' leaders and certifies the union (`candidate_sources.Leaders`), exactly
as one process merges several collections. Every shard's score needs the whole bridge bank:
a bank the cluster holds travels as the names of its shards, which each actor maps from disk
once (`BridgeRows`); a bank held in this process travels with the request (its two matrices,
once per call through Ray's object store).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ucl_cli.calibration import Calibration
from ucl_cli.distributed.actor import ShardHost, ShardRef


@dataclass(frozen=True)
class BridgeRows:
    """One model's bridge bank as an actor reads it: a matrix sent with the request, or the
    bank's shards (`shards`, with `key`), mapped on the actor and joined once, then kept there
    (`ShardHost.kept`) for the next search."""

    matrix: np.ndarray | None = None
    shards: tuple[ShardRef, ...] = ()
    key: str = ""

    def read(self, host: ShardHost) -> np.ndarray:
        if self.matrix is not None:
            return self.matrix
        if len(self.shards) == 1:
            return host.bank(self.shards[0]).vectors(self.key)  # the memory map, as it is

        def joined() -> np.ndarray:
            rows = np.concatenate([host.bank(shard).vectors(self.key) for shard in self.shards])
            rows.flags.writeable = False
            return rows

        paths = tuple(shard.path for shard in self.shards)
        return host.kept(("bridge rows", paths, self.key), joined)


def bridge_rows(side_bank: Any) -> BridgeRows:
    """How one side of a bridge travels (module doc)."""
    from ucl_cli.distributed.rows import RemoteRows

    if isinstance(side_bank, RemoteRows):
        if side_bank.rows is not None:
            raise ValueError("a collection is searched through a whole bridge bank only")
        return BridgeRows(shards=tuple(side_bank.scorer.shards), key=side_bank.key)
    return BridgeRows(matrix=np.ascontiguousarray(side_bank, dtype=np.float32))


@dataclass(frozen=True)
class TopRequest:
    """What every actor needs for one batch of queries over its collection shards."""

    candidate_key: str  # the model whose vectors the collection holds
    query_bank: BridgeRows  # [M, d1] the bridge bank as the query model embeds it
    candidate_bank: BridgeRows  # [M, d2] ... as the candidate model does
    query_scale: float
    candidate_scale: float
    query_row_norm: float
    candidate_row_norm: float
    queries: np.ndarray  # [N, d1]
    keep: int
    calibration: Calibration
    max_nearest_rows: int

    what: ClassVar[str] = "certified top candidates"

    def on_shard(self, bank: Any, shard: ShardRef, host: ShardHost) -> WireLeaders | None:
        """The shard's certified top (None for an empty shard: it adds no candidate)."""
        return shard_top(bank, self, host) if len(bank) else None


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
        query_bank=bridge_rows(query_side.bank),
        candidate_bank=bridge_rows(candidate_side.bank),
        query_scale=query_side.scale,
        candidate_scale=candidate_side.scale,
        query_row_norm=query_side.row_norm,
        candidate_row_norm=candidate_side.row_norm,
        queries=np.ascontiguousarray(queries, dtype=np.float32),
        keep=keep,
        calibration=settings.calibration,
        max_nearest_rows=settings.max_nearest_rows,
    )


def collection_top(
    scorer: Any, bridge: Any, queries: np.ndarray, keep: int, settings: Any, key: str
) -> Any:
    """The certified top `keep` of the collection whose shards `scorer` (a `ClusterScorer`)
    holds: each shard's leaders renumbered and merged, a `candidate_sources.Leaders` whose
    certificate covers every shard (or the scorer's `ClusterError` naming shards not searched)."""
    found = scorer.gather(request_for(bridge, queries, keep, settings, key))
    merged = None
    offset = 0
    for shard in scorer.shards:
        wire = found[shard.name]
        if wire is not None:
            leaders = wire.to_leaders(offset, settings.device)
            merged = leaders if merged is None else merged.merged(leaders, keep)
        offset += shard.count
    if merged is None:
        raise ValueError(f"collection {scorer.bank.name} holds no rows")
    return merged


def shard_top(shard: Any, request: TopRequest, host: ShardHost) -> WireLeaders:
    """The certified top `keep` of one collection shard (an opened bank), on this process."""
    from ucl_cli.bridge.collection_search import certified_collection_top
    from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings

    bridge = Bridge(
        BridgeSide(
            request.query_bank.read(host), request.query_scale, None, request.query_row_norm
        ),
        BridgeSide(
            request.candidate_bank.read(host),
            request.candidate_scale,
            None,
            request.candidate_row_norm,
        ),
    )
    key = request.candidate_key
    settings = ScoringSettings(
        device=host.device,
        calibration=request.calibration,
        max_nearest_rows=request.max_nearest_rows,
    )
    found = certified_collection_top(
        bridge,
        request.queries,
        shard.vectors(key),
        shard.nearest(key, host.device),
        shard.row_norm(key),
        min(request.keep, len(shard)),
        settings,
        identity=shard.content_key(key),
    )
    return WireLeaders.of(found)


def _fields(leaders: Any) -> tuple:
    return leaders.values, leaders.ids, leaders.lower, leaders.upper, leaders.ceiling
