"""The caption method over a bank's shards: each shard's best row per query, the best kept.

The caption method picks each query's nearest bank text and ranks the candidates against it.
The nearest text of the whole bank is the nearest of the shards' nearest texts, so each actor
returns, per query, its shards' best row (its product with the query, its position in the
bank) and the candidates' scores against that row; the driver keeps the shard whose row is
best, the earliest row on a tie, as one pass over the bank does (`scoring.caption_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ucl_cli.distributed.actor import ShardHost, ShardRef
from ucl_cli.distributed.bridge_request import BridgeRequest


@dataclass(frozen=True, kw_only=True)
class CaptionRequest(BridgeRequest):
    """caption's request: the bank's sides (the candidate side's scale as trained)."""

    what: ClassVar[str] = "best captions"

    def on_shard(self, bank: Any, shard: ShardRef, host: ShardHost) -> WireCaption | None:
        from ucl_cli.bridge.scoring import caption_rows, direct_scores

        held = self.shard_bridge(bank, shard)
        if held is None:
            return None  # no row of the sub-bank here
        bridge, positions = held
        value, best = caption_rows(bridge.query_side, self.queries, device=host.device)
        best = best.cpu().numpy()
        picked = bridge.candidate_side.bank[best]
        scores = direct_scores(picked, self.candidates, device=host.device).values
        scores = scores * bridge.candidate_side.scale  # as caption_scores: scale * products
        return WireCaption(value.cpu().numpy(), positions[best], scores.cpu().numpy())


@dataclass(frozen=True)
class WireCaption:
    """One shard's best row per query: its product with the query [N] (float32), its
    position in the bank [N], and the candidates' scaled scores against it [N, K]."""

    value: np.ndarray
    position: np.ndarray
    scores: np.ndarray


def best_captions(found: Sequence[WireCaption | None]) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole bank's caption scores [N, K] and rows [N] from its shards' answers: per
    query the best row of any shard, the earliest on a tie."""
    shards = [wire for wire in found if wire is not None]
    if not shards:
        raise ValueError("no shard holds a row of the bank")
    value = np.stack([wire.value for wire in shards])  # [S, N]
    position = np.stack([wire.position for wire in shards])
    best = value.max(axis=0)
    # among the shards that reach the best product, the one with the earliest row
    position = np.where(value == best, position, np.iinfo(np.int64).max)
    winner = position.argmin(axis=0)
    queries = np.arange(value.shape[1])
    scores = np.stack([wire.scores for wire in shards])[winner, queries]
    return torch.from_numpy(scores), torch.from_numpy(position[winner, queries])
