"""What every request about a bridge bank's shards carries, and how an actor reads it.

A request names the bank's two sides (each model's key, its logit scale as the method uses it,
and the largest row norm of the WHOLE bank, so that every shard bounds with the same limits),
the batch's embeddings and the sub-bank (global rows; None: the whole bank). Each method's
request adds what only it needs: `partials` (lse), `bridge_topk`, `captions`, `explanations`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from ucl_cli.distributed.actor import ShardRef, shard_rows, shard_selection


@dataclass(frozen=True)
class ShardedSide:
    """One model's side of a bridge bank as the driver knows it without reading a row: its
    key, its logit scale, and the largest row norm of the WHOLE bank (the manifest's)."""

    key: str
    scale: float
    row_norm: float

    def scaled(self, factor: float) -> ShardedSide:
        """This side with its logit scale times a temperature (`Bridge.tempered`)."""
        return self if factor == 1.0 else replace(self, scale=self.scale * factor)


@dataclass(frozen=True, kw_only=True)
class BridgeRequest:
    """The part every bridge request shares (module doc); queries [N, d1] and candidates
    [K, d2] are float32 rows."""

    query_side: ShardedSide
    candidate_side: ShardedSide
    queries: np.ndarray
    candidates: np.ndarray
    rows: np.ndarray | None = None

    def shard_bridge(self, bank: Any, shard: ShardRef) -> tuple[Any, np.ndarray] | None:
        """The shard's rows of the (sub-)bank as a `Bridge` with these scales and the whole
        bank's row norms (memory-mapped for the whole bank, gathered for a sub-bank), and
        their positions in the bank (or sub-bank); None when the shard holds none of them."""
        from ucl_cli.bridge.methods import Bridge, BridgeSide

        local, positions = shard_selection(shard, self.rows)
        if not len(local):
            return None
        query, candidate = self.query_side, self.candidate_side
        query_rows, candidate_rows = shard_rows(bank, shard, self.rows, query.key, candidate.key)
        bridge = Bridge(
            BridgeSide(query_rows, query.scale, None, query.row_norm),
            BridgeSide(candidate_rows, candidate.scale, None, candidate.row_norm),
        )
        return bridge, positions
