"""The driver side: shards placed on actors, each batch's work sent out, failures retried or
moved to other actors, and every shard's partial sums combined into the scores.

A score is never computed over part of the bank. Ray first restarts a dead actor and retries
its call (`actor.MAX_RESTARTS`, `MAX_TASK_RETRIES`); an actor that stays dead has its shards
moved to the living ones (or, when none is left, to a new actor), each shard up to
`SHARD_ATTEMPTS` times; a shard whose sums still do not come back (or whose actor reports an
error, such as a damaged shard) makes the whole call fail with a `ClusterError` that names it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ucl_cli.distributed.actor import ShardRef, remote_host_class
from ucl_cli.distributed.cluster import connect, disconnect, import_ray
from ucl_cli.distributed.partials import ScoreRequest
from ucl_cli.distributed.placement import place_shards, reassign
from ucl_cli.errors import UclError

if TYPE_CHECKING:
    from ucl_cli.bridge.methods import Bridge, Scores
    from ucl_cli.calibration import Calibration

SHARD_ATTEMPTS = 3  # tries per shard in one call, over actors, before the call fails
MAX_REPLACEMENTS = 2  # new actors started per call when every actor has died
START_SECONDS = 120.0  # for the actors to start and open their shards


class ClusterError(UclError):
    """Some shards' partial sums could not be computed: no score is returned."""


def shard_refs(bank: Any) -> list[ShardRef]:
    """The shards an actor opens for `bank`: a sharded bank's (checked by the driver when it
    opened them), or an unsharded bank as one shard."""
    paths = getattr(bank, "shard_paths", None)
    if paths is None:
        digest = hashlib.sha256((Path(bank.path) / "manifest.json").read_bytes()).hexdigest()
        return [ShardRef(bank.name, str(Path(bank.path).resolve()), digest, len(bank))]
    return [
        ShardRef(record.name, str((Path(bank.path) / record.name).resolve()),
                 record.manifest_sha256, record.count)
        for record in bank.manifest.shards
    ]  # fmt: skip


class ClusterScorer:
    """lse over a bank whose shards live on Ray actors. Started on first use (`start`), so a
    run whose methods never sum over the bank starts no cluster; closed with `close`.

    `actors`: how many (default: one per shard, at most the cluster's CPUs). `on_dispatch`
    hears each round of calls sent, with the actors' handles (progress; tests kill one there).
    """

    def __init__(
        self,
        bank: Any,
        spec: str,
        *,
        actors: int | None = None,
        on_dispatch: Callable[[dict[int, Any]], None] | None = None,
    ):
        self.bank = bank
        self.spec = spec
        self.shards = shard_refs(bank)
        self.requested_actors = actors
        self.on_dispatch = on_dispatch
        self.handles: dict[int, Any] = {}  # actor number -> handle (the living ones)
        self.held: dict[int, list[int]] = {}  # actor number -> shard indices
        self.reassigned: list[str] = []  # shards moved off a dead actor (for reports and tests)
        self._started = False
        self._owns_ray = False
        self._next_actor = 0
        self._actor_cpus = 1.0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        ray = import_ray()
        self._owns_ray = connect(self.spec)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        count = self.requested_actors or max(1, min(len(self.shards), int(cpus)))
        # More actors than CPUs share them (a whole CPU each would leave some never placed).
        self._actor_cpus = min(1.0, cpus / count)
        placed = place_shards([shard.count for shard in self.shards], count)
        for shards in placed:
            if shards:
                self._spawn(shards)
        opening = [
            self.handles[a].open.remote([self.shards[s] for s in self.held[a]])
            for a in self.handles
        ]
        ready, waiting = ray.wait(opening, num_returns=len(opening), timeout=START_SECONDS)
        if waiting:
            self._started = True
            self.close()
            raise ClusterError(
                f"{len(waiting)} of {len(opening)} Ray actors did not start within "
                f"{START_SECONDS:.0f} s on the cluster at {self.spec} (not enough CPUs free?)"
            )
        self._started = True
        try:
            ray.get(ready)  # an actor that cannot open its shards says why here
        except ray.exceptions.RayError as err:
            self.close()
            cause = getattr(err, "cause", None) or err
            raise ClusterError(
                f"the cluster cannot hold bank {self.bank.name}: {_first_line(cause)}"
            ) from None

    def close(self) -> None:
        if not self._started:
            return
        ray = import_ray()
        for handle in self.handles.values():
            ray.kill(handle, no_restart=True)
        self.handles.clear()
        self.held.clear()
        self._started = False
        if self._owns_ray:
            disconnect()

    def __enter__(self) -> ClusterScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scoring ----------------------------------------------------------------------------------

    def lse_scores(
        self,
        bridge: Bridge,
        keys: tuple[str, str],
        queries: np.ndarray,
        candidates: np.ndarray,
        calibration: Calibration,
    ) -> Scores:
        """`ucl_cli.bridge.scoring.lse_scores`, with the bank's rows summed on the actors."""
        from ucl_cli.bridge.methods import Scores
        from ucl_cli.estimators.calibrated import combine_calibrated

        tempered = bridge.tempered(calibration)
        request = ScoreRequest(
            query_key=keys[0],
            candidate_key=keys[1],
            query_scale=tempered.query_side.scale,
            candidate_scale=tempered.candidate_side.scale,
            queries=np.ascontiguousarray(queries, dtype=np.float32),
            candidates=np.ascontiguousarray(candidates, dtype=np.float32),
            normalize=calibration.normalize,
        )
        found = self.partials(request)
        values = combine_calibrated([found[shard.name].to_partial() for shard in self.shards])
        return Scores(values, values.argsort(dim=1, descending=True, stable=True))

    def collection_top(
        self, bridge: Bridge, queries: np.ndarray, keep: int, settings: Any, key: str
    ) -> Any:
        """The certified top `keep` of this collection (`bridge.collection_search` run by each
        actor on its shards), merged: a `candidate_sources.Leaders` over the collection's rows,
        whose certificate covers every shard, or a `ClusterError` naming shards not searched."""
        from ucl_cli.distributed.collection_tops import request_for

        found = self.gather("collection_tops", request_for(bridge, queries, keep, settings, key))
        merged = None
        offset = 0
        for shard in self.shards:
            wire = found[shard.name]
            if wire is not None:
                leaders = wire.to_leaders(offset, settings.device)
                merged = leaders if merged is None else merged.merged(leaders, keep)
            offset += shard.count
        if merged is None:
            raise ClusterError(f"collection {self.bank.name} holds no rows")
        return merged

    def partials(self, request: ScoreRequest) -> dict[str, Any]:
        """Every shard's partial sums (by name), or a `ClusterError` naming the missing."""
        return self.gather("partials", request)

    def gather(self, method: str, request: Any) -> dict[str, Any]:
        """Every shard's answer to one actor method (by shard name), retried or moved off dead
        actors (module doc), or a `ClusterError` naming the shards that gave none."""
        ray = import_ray()
        from ray.exceptions import RayActorError, RayTaskError

        self.start()
        request_ref = ray.put(request)
        attempts = {index: 0 for index in range(len(self.shards))}
        failures: dict[int, str] = {}
        found: dict[str, Any] = {}
        pending = {
            self._send(method, a, self.held[a], request_ref, attempts): (a, list(self.held[a]))
            for a in self.handles
        }
        if self.on_dispatch is not None:
            self.on_dispatch(dict(self.handles))
        replacements = 0
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            future = ready[0]
            actor, shards = pending.pop(future)
            try:
                found.update(ray.get(future))
            except RayActorError as err:
                self._bury(actor)
                retry = [s for s in shards if attempts[s] < SHARD_ATTEMPTS]
                for s in set(shards) - set(retry):
                    failures[s] = f"its actor died {SHARD_ATTEMPTS} times ({_first_line(err)})"
                if not retry:
                    continue
                if not self.handles and replacements < MAX_REPLACEMENTS:
                    replacements += 1
                    self._spawn([])
                if not self.handles:
                    for s in retry:
                        failures[s] = "every actor died"
                    continue
                self.reassigned.extend(self.shards[s].name for s in retry)
                rows = [shard.count for shard in self.shards]
                loads = {a: sum(rows[s] for s in held) for a, held in self.held.items()}
                for target, moved in reassign(retry, rows, loads).items():
                    self.held[target].extend(moved)
                    sent = self._send(method, target, moved, request_ref, attempts)
                    pending[sent] = (target, moved)
            except RayTaskError as err:
                for s in shards:  # a shard that fails to score fails the same way elsewhere
                    failures[s] = _first_line(err.cause if err.cause is not None else err)
        missing = [shard for shard in self.shards if shard.name not in found]
        if missing:
            reasons = "; ".join(
                f"{shard.name}: {failures.get(self.shards.index(shard), 'no result')}"
                for shard in missing
            )
            raise ClusterError(
                f"the cluster returned no {_WHAT.get(method, method)} for {len(missing)} of "
                f"{len(self.shards)} shards of bank {self.bank.name} ({reasons}); no result "
                "over part of the bank is returned"
            )
        return found

    def _send(
        self,
        method: str,
        actor: int,
        shards: Sequence[int],
        request_ref: Any,
        attempts: dict[int, int],
    ) -> Any:
        for s in shards:
            attempts[s] += 1
        call = getattr(self.handles[actor], method)
        return call.remote([self.shards[s] for s in shards], request_ref)

    def _spawn(self, shards: list[int]) -> int:
        number = self._next_actor
        self._next_actor += 1
        host = remote_host_class().options(num_cpus=self._actor_cpus)
        self.handles[number] = host.remote()
        self.held[number] = list(shards)
        return number

    def _bury(self, actor: int) -> None:
        self.handles.pop(actor, None)
        self.held.pop(actor, None)


_WHAT = {"partials": "partial sums", "collection_tops": "certified top candidates"}


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
