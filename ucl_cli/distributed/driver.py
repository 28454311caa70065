"""The driver side: shards placed on actors, each request sent to the actors holding the
shards, failures retried or moved to other actors, and every shard's answer gathered (what is
asked and how the answers combine is the request's: `rows.RemoteBridge`, `collection_tops`).

A score is never computed over part of the bank. Ray first restarts a dead actor and retries
its call (`actor.MAX_RESTARTS`, `MAX_TASK_RETRIES`); an actor that stays dead has its shards
moved to the living ones (or, when none is left, to a new actor), each shard up to
`SHARD_ATTEMPTS` times. A call that stalls (a hung actor, or one Ray restarts where no CPU is
free, as after a lost node) is treated alike once it has run `stall_seconds` and
`STRAGGLER_FACTOR` times the slowest call answered: the actor is stopped and its shards moved.
A shard whose answer still does not come back (or whose actor reports an error, such as a
damaged shard) makes the whole call fail with a `ClusterError` that names it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ucl_cli.distributed.actor import ShardRef, ShardRequest, remote_host_class
from ucl_cli.distributed.cluster import connect, disconnect, import_ray
from ucl_cli.distributed.placement import place_shards, reassign
from ucl_cli.errors import UclError

SHARD_ATTEMPTS = 3  # tries per shard in one call, over actors, before the call fails
STALL_SECONDS = 60.0  # a call out this long (and STRAGGLER_FACTOR x the slowest answered) stalls
STRAGGLER_FACTOR = 4.0
POLL_SECONDS = 1.0  # how often the driver looks for stalled calls
MAX_REPLACEMENTS = 2  # new actors started per call when every actor has died
START_SECONDS = 120.0  # for the actors to start and open their shards


class ClusterError(UclError):
    """Some shards' answers could not be computed: no score is returned."""


def shard_refs(bank: Any) -> list[ShardRef]:
    """The shards an actor opens for `bank`: a sharded bank's (checked by the driver when it
    opened them), or an unsharded bank as one shard."""
    paths = getattr(bank, "shard_paths", None)
    if paths is None:
        digest = hashlib.sha256((Path(bank.path) / "manifest.json").read_bytes()).hexdigest()
        return [ShardRef(bank.name, str(Path(bank.path).resolve()), digest, len(bank))]
    starts = np.cumsum([0] + [record.count for record in bank.manifest.shards])
    return [
        ShardRef(record.name, str((Path(bank.path) / record.name).resolve()),
                 record.manifest_sha256, record.count, int(start))
        for record, start in zip(bank.manifest.shards, starts, strict=False)
    ]  # fmt: skip


class ActorPool:
    """The Ray actors of one run, shared by every bank it reads (a bridge bank and the
    collections searched through it: one actor may hold shards of each). Connects on first use,
    so a run that never reads a bank starts no cluster; closed with `close`.

    `actors`: the most actors (default: the cluster's CPUs); a bank uses at most one per shard.
    `on_dispatch` hears each round of calls sent, with the living actors' handles (progress;
    tests kill one there).
    """

    def __init__(
        self,
        spec: str,
        *,
        actors: int | None = None,
        on_dispatch: Callable[[dict[int, Any]], None] | None = None,
    ):
        self.spec = spec
        self.requested_actors = actors
        self.on_dispatch = on_dispatch
        self.handles: dict[int, Any] = {}  # actor number -> handle (the living ones)
        self._connected = False
        self._owns_ray = False
        self._limit = 1
        self._actor_cpus = 1.0
        self._actor_gpus = 0.0
        self._next_actor = 0

    def grow(self, wanted: int) -> list[int]:
        """The numbers of the living actors a bank of `wanted` shards uses (at most the limit),
        starting as many as are missing."""
        if not self._connected:
            ray = import_ray()
            self._owns_ray = connect(self.spec)
            self._connected = True
            resources = ray.cluster_resources()
            cpus = float(resources.get("CPU", 1.0))
            self._limit = self.requested_actors or max(1, int(cpus))
            # More actors than CPUs share them (a whole CPU each would leave some never placed);
            # on a cluster with GPUs each actor takes its share of one, and computes there.
            self._actor_cpus = min(1.0, cpus / self._limit)
            self._actor_gpus = min(1.0, float(resources.get("GPU", 0.0)) / self._limit)
        target = max(1, min(wanted, self._limit))
        while len(self.handles) < target:
            self.spawn()
        return sorted(self.handles)[:target]

    def spawn(self) -> int:
        number = self._next_actor
        self._next_actor += 1
        host = remote_host_class().options(num_cpus=self._actor_cpus, num_gpus=self._actor_gpus)
        self.handles[number] = host.remote()
        return number

    def bury(self, actor: int) -> None:
        self.handles.pop(actor, None)

    def close(self) -> None:
        if not self._connected:
            return
        ray = import_ray()
        for handle in self.handles.values():
            ray.kill(handle, no_restart=True)
        self.handles.clear()
        self._connected = False
        if self._owns_ray:
            disconnect()

    def __enter__(self) -> ActorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class ClusterScorer:
    """A bank whose shards live on the actors of a pool (`cluster`: an `ActorPool` shared by
    the run, or a cluster spec for a pool of its own). Placed on first use (`start`); closed
    with `close` (which closes the pool only when it is its own)."""

    def __init__(
        self,
        bank: Any,
        cluster: str | ActorPool,
        *,
        actors: int | None = None,
        on_dispatch: Callable[[dict[int, Any]], None] | None = None,
        stall_seconds: float = STALL_SECONDS,
    ):
        self.bank = bank
        self.stall_seconds = stall_seconds
        self._owns_pool = not isinstance(cluster, ActorPool)
        self.pool = (
            ActorPool(cluster, actors=actors, on_dispatch=on_dispatch)
            if isinstance(cluster, str)
            else cluster
        )
        self.shards = shard_refs(bank)
        self.held: dict[int, list[int]] = {}  # actor number -> shard indices
        self.reassigned: list[str] = []  # shards moved off a dead or stalled actor
        self.stalled: list[int] = []  # actors stopped for stalling (for reports and tests)
        self._started = False

    @property
    def spec(self) -> str:
        return self.pool.spec

    @property
    def handles(self) -> dict[int, Any]:
        """The pool's living actors."""
        return self.pool.handles

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        if self._started:
            return
        ray = import_ray()
        actors = self.pool.grow(len(self.shards))
        placed = place_shards([shard.count for shard in self.shards], len(actors))
        self.held = {actor: shards for actor, shards in zip(actors, placed, strict=True) if shards}
        opening = [
            self.handles[a].open.remote([self.shards[s] for s in self.held[a]]) for a in self.held
        ]
        self._started = True
        ready, waiting = ray.wait(opening, num_returns=len(opening), timeout=START_SECONDS)
        if waiting:
            self.close()
            raise ClusterError(
                f"{len(waiting)} of {len(opening)} Ray actors did not start within "
                f"{START_SECONDS:.0f} s on the cluster at {self.spec} (not enough CPUs free?)"
            )
        try:
            ray.get(ready)  # an actor that cannot open its shards says why here
        except ray.exceptions.RayError as err:
            self.close()
            cause = getattr(err, "cause", None) or err
            raise ClusterError(
                f"the cluster cannot hold bank {self.bank.name}: {_first_line(cause)}"
            ) from None

    def close(self) -> None:
        self.held.clear()
        self._started = False
        if self._owns_pool:
            self.pool.close()

    def __enter__(self) -> ClusterScorer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- scoring ----------------------------------------------------------------------------------

    def gather(self, request: ShardRequest) -> dict[str, Any]:
        """Every shard's answer to `request` (by shard name), retried or moved off dead or
        stalled actors (module doc), or a `ClusterError` naming the shards that gave none."""
        ray = import_ray()
        from ray.exceptions import RayActorError, RayError, RayTaskError

        self.start()
        self._adopt_orphans()
        call = _Call(ray.put(request), len(self.shards))
        for actor in self.held:
            self._send(call, actor, self.held[actor])
        if self.pool.on_dispatch is not None:
            self.pool.on_dispatch(dict(self.handles))
        while call.pending and len(call.found) < len(self.shards):
            ready, _ = ray.wait(list(call.pending), num_returns=1, timeout=POLL_SECONDS)
            if not ready:
                for actor, shards in call.stalled(self.stall_seconds):
                    # Hung, or restarting where no resources are free (a lost node): its
                    # shards go to the others; it is stopped, so that it frees its CPU.
                    self.stalled.append(actor)
                    why = f"its actor stalled (over {self.stall_seconds:.0f} s)"
                    self._move_off(call, actor, shards, why, kill=True)
                continue
            actor, shards, started = call.pending.pop(ready[0])
            try:
                call.found.update(ray.get(ready[0]))
                call.answered(started)
            except RayActorError as err:
                self._move_off(call, actor, shards, f"its actor died ({_first_line(err)})")
            except RayTaskError as err:
                for s in shards:  # a shard that fails to score fails the same way elsewhere
                    call.failures[s] = _first_line(err.cause if err.cause is not None else err)
            except RayError as err:  # out of memory, an object lost: no answer from this call
                for s in shards:
                    call.failures[s] = _first_line(err)
        missing = [shard for shard in self.shards if shard.name not in call.found]
        if missing:
            reasons = "; ".join(
                f"{shard.name}: {call.failures.get(self.shards.index(shard), 'no result')}"
                for shard in missing
            )
            raise ClusterError(
                f"the cluster returned no {request.what} for {len(missing)} of "
                f"{len(self.shards)} shards of bank {self.bank.name} ({reasons}); no result "
                "over part of the bank is returned"
            )
        return {shard.name: call.found[shard.name] for shard in self.shards}

    def _send(self, call: _Call, actor: int, shards: Sequence[int]) -> None:
        for s in shards:
            call.attempts[s] += 1
        future = self.handles[actor].run.remote([self.shards[s] for s in shards], call.request)
        call.pending[future] = (actor, list(shards), time.monotonic())

    def _move_off(
        self, call: _Call, actor: int, shards: list[int], why: str, *, kill: bool = False
    ) -> None:
        """An actor that died or stalled: its shards (those without an answer yet) go to the
        living, each up to `SHARD_ATTEMPTS` times in this call."""
        if kill and actor in self.handles:
            import_ray().kill(self.handles[actor], no_restart=True)
        self._bury(actor)
        open_shards = [s for s in shards if self.shards[s].name not in call.found]
        retry = [s for s in open_shards if call.attempts[s] < SHARD_ATTEMPTS]
        for s in set(open_shards) - set(retry):
            call.failures[s] = f"{why}, {SHARD_ATTEMPTS} times"
        if not retry:
            return
        if not self.handles and call.replacements < MAX_REPLACEMENTS:
            call.replacements += 1
            self.pool.spawn()
        if not self.handles:
            for s in retry:
                call.failures[s] = f"{why}, and no actor is left"
            return
        self.reassigned.extend(self.shards[s].name for s in retry)
        for target, moved in self._place(retry).items():
            self._send(call, target, moved)

    def _place(self, shards: list[int]) -> dict[int, list[int]]:
        """Give `shards` to the least loaded living actors of the pool; actor -> shards."""
        rows = [shard.count for shard in self.shards]
        loads = {a: sum(rows[s] for s in self.held.get(a, [])) for a in self.handles}
        moved = reassign(shards, rows, loads)
        for target, taken in moved.items():
            self.held.setdefault(target, []).extend(taken)
        return moved

    def _adopt_orphans(self) -> None:
        """Shards of actors that died during another bank's call go to the living."""
        orphans = [s for a in list(self.held) if a not in self.handles for s in self.held.pop(a)]
        if orphans:
            if not self.handles:
                self.pool.spawn()
            self.reassigned.extend(self.shards[s].name for s in orphans)
            self._place(orphans)

    def _bury(self, actor: int) -> None:
        self.pool.bury(actor)
        self.held.pop(actor, None)


class _Call:
    """One request's progress over a bank's shards: what is sent and when, what came back."""

    def __init__(self, request: Any, shards: int):
        self.request = request  # its reference in Ray's object store, sent to every actor
        self.attempts = dict.fromkeys(range(shards), 0)
        self.failures: dict[int, str] = {}
        self.found: dict[str, Any] = {}
        self.pending: dict[Any, tuple[int, list[int], float]] = {}  # future -> actor, shards, sent
        self.replacements = 0
        self.slowest: float | None = None  # the longest an answered call took

    def answered(self, started: float) -> None:
        took = time.monotonic() - started
        self.slowest = took if self.slowest is None else max(self.slowest, took)

    def stalled(self, stall_seconds: float) -> list[tuple[int, list[int]]]:
        """The calls still out that have run past `stall_seconds` and STRAGGLER_FACTOR times
        the slowest answered call (so a round that is slow everywhere, such as a first search
        building its tables, stalls nothing), with their actors. Taken out of `pending`."""
        if self.slowest is None:
            return []
        limit = max(stall_seconds, STRAGGLER_FACTOR * self.slowest)
        now = time.monotonic()
        late = [f for f, (_, _, sent) in self.pending.items() if now - sent > limit]
        return [self.pending.pop(f)[:2] for f in late]


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
