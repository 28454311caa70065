"""`--explain` over a bank's shards: each shard's heaviest rows and mass, joined.

A pair's weights are softmax_m(left + right) over the whole bank, so each actor explains the
pairs over its shards alone (`scoring.explain`: the shard's heaviest rows, their weights within
the shard, its ESS and its mass log sum exp(left + right)), and the driver rescales each
shard's weights by its share of the whole mass (`estimators.explain.join_explanations`): the
heaviest rows and the ESS of one pass over the bank.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from ucl_cli.distributed.actor import ShardHost, ShardRef
from ucl_cli.distributed.bridge_request import BridgeRequest
from ucl_cli.estimators.explain import NO_ROW, Explanation, join_explanations


@dataclass(frozen=True, kw_only=True)
class ExplainRequest(BridgeRequest):
    """`--explain`'s request: the pairs (query n, candidate column k) to explain, over the
    sides' tempered scales, and how many rows to name."""

    what: ClassVar[str] = "explanations"

    pairs: tuple[tuple[int, int], ...]
    top: int

    def on_shard(self, bank: Any, shard: ShardRef, host: ShardHost) -> WireExplanation | None:
        from ucl_cli.bridge.scoring import explain

        held = self.shard_bridge(bank, shard)
        if held is None:
            return None
        bridge, positions = held
        pairs = list(self.pairs)
        part = explain(bridge, self.queries, self.candidates, pairs, self.top, device=host.device)
        indices = part.bank_indices.cpu().numpy()
        numbered = np.where(indices >= 0, positions[np.maximum(indices, 0)], NO_ROW)
        arrays = (part.weights, part.effective_sample_size, part.log_mass)
        return WireExplanation(numbered, *(array.cpu().numpy() for array in arrays))


@dataclass(frozen=True)
class WireExplanation:
    """One shard's `Explanation` as NumPy arrays, its rows numbered in the whole bank."""

    bank_indices: np.ndarray
    weights: np.ndarray
    effective_sample_size: np.ndarray
    log_mass: np.ndarray

    def to_explanation(self) -> Explanation:
        arrays = (self.bank_indices, self.weights, self.effective_sample_size, self.log_mass)
        return Explanation(*(torch.tensor(array) for array in arrays))


def joined(found: Sequence[WireExplanation | None], top: int) -> Explanation:
    """The whole bank's explanation from its shards' (module doc)."""
    parts = [wire.to_explanation() for wire in found if wire is not None]
    if not parts:
        raise ValueError("no shard holds a row of the bank")
    return join_explanations(parts, top)
