"""`topk`'s certified bounds over a bank's shards, each shard bounded by the actor holding it.

The bridge sum is a logsumexp over the bank's rows, so it splits exactly over shards:
log sum_m exp(l_m + r_m) = logsumexp over shards of each shard's log-sum. Bounds on each
shard's log-sum therefore join into bounds on the whole (logsumexp is monotone in every
argument), less log M. Each round of `scoring.topk_rounds` asks every shard for its bounds
(`BoundsRequest.on_shard`: the one-bank arithmetic, `scoring.BankBounds`, over the shard's
rows, with the whole bank's largest row norms so that every shard shares one `PathLimits`);
`ShardBounds` joins them in float64, widened by the joining's own rounding. Each round first
asks every shard for its queries' best query-side values, so that the shards list together
about the T rows one pass would (`shard_depths`), not T rows each. The driver holds no bank
row. An actor keeps each shard's query side and candidate searches between the rounds
of one search (`ShardHost.kept`: soft state, made again where it is missing).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from ucl_cli.bank.nearest import flat_nearest
from ucl_cli.bridge.methods import (
    MAX_NEAREST_ROWS,
    NEAREST_ROWS,
    Bridge,
    Scores,
)
from ucl_cli.bridge.scoring import (
    BankBounds,
    PathLimits,
    candidate_bank_sums,
    topk_rounds,
)
from ucl_cli.calibration import Calibration
from ucl_cli.distributed.actor import ShardHost, ShardRef, shard_selection
from ucl_cli.distributed.bridge_request import BridgeRequest, ShardedSide
from ucl_cli.errors import UsageError
from ucl_cli.estimators import BridgeBounds
from ucl_cli.estimators.bridge import _full_precision_matmul

# Float64 rounding of the joining, as `estimators.topk.rounding_margin` counts it: 64 ulps of
# the largest magnitude involved, plus one ulp per shard summed.
JOIN_ULPS = 64


@dataclass(frozen=True, kw_only=True)
class BoundsRequest(BridgeRequest):
    """One round of `topk` for every shard, over the sides' tempered scales: the queries' T,
    the candidates' T (`nearest_rows`) and lists to visit ([K]; None: each index's default),
    whether to return the shard's part of the candidates' normalisers, and which search the
    round belongs to."""

    what: ClassVar[str] = "topk bounds"

    t: int
    nearest_rows: int
    nprobe: np.ndarray | None = None
    normalizer: bool = False
    search: str = ""  # names one topk search: its rounds share what each actor kept
    # How many top rows each shard lists (by name; `t` for a shard not named): `shard_depths`
    depths: dict[str, int] | None = None
    tops_only: bool = False  # answer each query's `t` largest query-side values instead

    def on_shard(self, bank: Any, shard: ShardRef, host: ShardHost) -> WireBounds | np.ndarray:
        """Bounds on the log-SUM over this shard's rows (or its rows of the sub-bank); with
        `tops_only`, each query's `t` largest values of the query side there [N, <= t]."""
        local, _ = shard_selection(shard, self.rows)
        if not len(local):
            if self.tops_only:
                return np.empty((len(self.queries), 0), dtype=np.float32)
            return WireBounds.empty(len(self.queries), len(self.candidates), self.normalizer)
        device = host.device

        def shard_source() -> tuple[Bridge, BankBounds]:
            bridge = self._searched_bridge(bank, shard, device)
            source = BankBounds(bridge, self.queries, self.candidates, self.nearest_rows, device)
            return bridge, source

        with _full_precision_matmul():  # the rounding bounds assume true float32 products
            # Later rounds of one search reuse the shard's query side and candidate searches
            # (searching again only the candidates that visit more lists), as in one process.
            if self.search:
                bridge, source = host.kept((self.search, shard.path), shard_source)
            else:
                bridge, source = shard_source()
            if self.tops_only:
                return source.left_tops(self.t).cpu().numpy()
            depth = self.t if self.depths is None else self.depths.get(shard.name, self.t)
            bounds = source.bounds(depth, self.nprobe)
            normalizer = (
                candidate_bank_sums(bridge.candidate_side, self.candidates, device)
                if self.normalizer
                else None
            )
        log_rows = math.log(len(local))  # back from the shard's mean to its sum
        return WireBounds(
            lower=(bounds.lower + log_rows).cpu().numpy(),
            upper=(bounds.upper + log_rows).cpu().numpy(),
            count=len(local),
            lists=source.lists(),
            default_nprobe=source.default_nprobe(),
            normalizer=None if normalizer is None else normalizer.cpu().numpy(),
        )

    def _searched_bridge(self, bank: Any, shard: ShardRef, device: str) -> Bridge:
        """The shard's bridge (`shard_bridge`) with a search of its candidate side: the
        shard's own index for the whole bank, an exact one over a sub-bank's rows."""
        held = self.shard_bridge(bank, shard)
        assert held is not None
        bridge, _ = held
        side = bridge.candidate_side
        if self.rows is None:
            nearest = bank.nearest(self.candidate_side.key, device)
            return replace(bridge, candidate_side=replace(side, nearest=nearest))
        rows = np.ascontiguousarray(side.bank, dtype=np.float32)
        nearest = flat_nearest(rows, side.max_norm, device)
        return replace(bridge, candidate_side=replace(side, bank=rows, nearest=nearest))


@dataclass(frozen=True)
class WireBounds:
    """One shard's answer (what Ray sends back): bounds on log sum_m exp(left + right) over its
    rows, lower and upper [N, K] float64 (-inf for no rows); its row count; the most lists
    and the default lists its index visits; with `normalizer`, log sum_m exp(s2 <x_m, y_k>)
    over its rows [K] float64."""

    lower: np.ndarray
    upper: np.ndarray
    count: int
    lists: int
    default_nprobe: int
    normalizer: np.ndarray | None = None

    @classmethod
    def empty(cls, queries: int, candidates: int, normalizer: bool) -> WireBounds:
        """A shard with no row: an empty sum, which a search visits in full."""
        nothing = np.full((queries, candidates), -np.inf)
        partial = np.full(candidates, -np.inf) if normalizer else None
        return cls(nothing, nothing, 0, 1, 1, partial)


class ShardBounds:
    """`scoring.BoundsSource` over a bank's shards: each round one `gather` of every shard's
    `WireBounds`, joined. `lists`, `default_nprobe` and `normalizer` come with the first
    round's answers (`topk_rounds` asks them after it)."""

    def __init__(
        self,
        gather: Callable[[BoundsRequest], Mapping[str, WireBounds]],
        shards: Sequence[ShardRef],
        request: BoundsRequest,
        bank_size: int,
        *,
        normalize: bool = False,
    ) -> None:
        self._gather = gather
        self._shards = list(shards)
        self._request = request
        self._bank_size = bank_size
        self._normalize = normalize
        self._limits = PathLimits.between(
            request.queries,
            request.candidates,
            scales=(request.query_side.scale, request.candidate_side.scale),
            row_norms=(request.query_side.row_norm, request.candidate_side.row_norm),
        )
        self._answered: list[WireBounds] | None = None
        self._normalizer: tuple[torch.Tensor, float] | None = None

    @property
    def bank_size(self) -> int:
        return self._bank_size

    def bounds(self, t: int, nprobe: np.ndarray | None) -> BridgeBounds:
        wants_normalizer = self._normalize and self._normalizer is None
        round_request = replace(self._request, t=t, nprobe=nprobe)
        tops = self._gather(replace(round_request, tops_only=True))
        depths = shard_depths({shard.name: tops[shard.name] for shard in self._shards}, t)
        request = replace(round_request, normalizer=wants_normalizer, depths=depths)
        found = self._gather(request)
        answers = [found[shard.name] for shard in self._shards]
        rows = sum(answer.count for answer in answers)
        if rows != self._bank_size:
            raise UsageError(
                f"the shards hold {rows} rows of the bank bounded, not {self._bank_size}"
            )
        self._answered = answers
        if wants_normalizer:
            partials = np.stack([np.asarray(answer.normalizer) for answer in answers])
            values, margin = joined_log_mean(partials, rows)
            error = self._limits.right_error + (float(margin.max()) if margin.numel() else 0.0)
            self._normalizer = (values, error)
        lower, lower_margin = joined_log_mean(np.stack([a.lower for a in answers]), rows)
        upper, upper_margin = joined_log_mean(np.stack([a.upper for a in answers]), rows)
        return BridgeBounds(lower=lower - lower_margin, upper=upper + upper_margin)

    def lists(self) -> int:
        return max(answer.lists for answer in self._first_answers())

    def default_nprobe(self) -> int:
        return max(answer.default_nprobe for answer in self._first_answers())

    def normalizer(self) -> tuple[torch.Tensor, float]:
        if self._normalizer is None:
            raise RuntimeError("the normaliser comes with the first bounds of a normalize source")
        return self._normalizer

    def _first_answers(self) -> list[WireBounds]:
        if self._answered is None:
            raise RuntimeError("the shards' indexes are known from their first bounds only")
        return self._answered


def shard_depths(tops: Mapping[str, np.ndarray], t: int) -> dict[str, int]:
    """How many of its top rows each shard lists: the most, over the queries, of its rows
    among the query's `t` best of the whole bank (at least 1). Any depth gives sound bounds
    (a shard bounds the rows it does not list by its own last listed value); with these the
    shards list together about the `t` rows one pass over the bank would, each bounding the
    rest by a value no larger than one pass's, instead of `t` rows each. `tops`: each shard's
    `t` largest query-side values per query [N, <= t]."""
    joined = np.concatenate(list(tops.values()), axis=1)
    k = min(t, joined.shape[1])
    if k == 0:
        return {}
    threshold = np.partition(joined, joined.shape[1] - k, axis=1)[:, joined.shape[1] - k]
    return {
        name: max(1, int((values >= threshold[:, None]).sum(axis=1).max()))
        if values.shape[1]
        else 1
        for name, values in tops.items()
    }


def joined_log_mean(parts: np.ndarray, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log(1/rows sum over parts of exp(part)) for parts [S, ...] of log-sums, in float64, and
    how far that may be from the exact value of the given parts (elementwise): 64 ulps of the
    largest magnitude involved, one more per part summed."""
    values = torch.from_numpy(np.array(parts, dtype=np.float64))
    log_rows = math.log(rows)
    joined = torch.logsumexp(values, dim=0) - log_rows
    finite = torch.where(torch.isfinite(values), values.abs(), torch.zeros_like(values))
    magnitude = finite.amax(dim=0) if len(values) else torch.zeros(values.shape[1:])
    magnitude = torch.maximum(magnitude, joined.abs().nan_to_num(posinf=0.0)) + log_rows
    eps = torch.finfo(torch.float64).eps
    return joined, eps * (JOIN_ULPS * (magnitude + 1.0) + len(values))


def cluster_topk_scores(
    gather: Callable[[BoundsRequest], Mapping[str, WireBounds]],
    shards: Sequence[ShardRef],
    query_side: ShardedSide,
    candidate_side: ShardedSide,
    queries: np.ndarray,
    candidates: np.ndarray,
    *,
    top: int,
    nearest_rows: int = NEAREST_ROWS,
    max_nearest_rows: int = MAX_NEAREST_ROWS,
    calibration: Calibration | None = None,
    rows: np.ndarray | None = None,
) -> Scores:
    """`scoring.topk_scores` over a bank whose shards `gather` asks (one call per round, every
    shard's `WireBounds` by name): the same rounds, certificates and calibration, with the
    sides untempered (their scales are tempered here) and `rows` a sub-bank (global rows)."""
    calibration = calibration or Calibration()
    bank_size = sum(shard.count for shard in shards) if rows is None else len(rows)
    if bank_size == 0:
        raise UsageError("the bank is empty: topk has no rows to bound the score with")
    request = BoundsRequest(
        query_side=query_side.scaled(calibration.query_temperature),
        candidate_side=candidate_side.scaled(calibration.candidate_temperature),
        queries=np.ascontiguousarray(queries, dtype=np.float32),
        candidates=np.ascontiguousarray(candidates, dtype=np.float32),
        t=0,  # each round's own
        nearest_rows=nearest_rows,
        rows=None if rows is None else np.asarray(rows, dtype=np.int64),
        search=uuid.uuid4().hex,
    )
    normalize = calibration.normalize == "candidates"
    source = ShardBounds(gather, shards, request, bank_size, normalize=normalize)
    return topk_rounds(
        source,
        top=top,
        nearest_rows=nearest_rows,
        max_nearest_rows=max_nearest_rows,
        normalize=normalize,
    )


__all__ = [
    "BoundsRequest",
    "ShardBounds",
    "WireBounds",
    "cluster_topk_scores",
    "joined_log_mean",
    "shard_depths",
]
