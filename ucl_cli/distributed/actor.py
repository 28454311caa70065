"""The Ray actor that holds shards of a bank and answers requests about them.

An actor has one method that does work, `run`: each request knows what to compute over one
shard (`request.on_shard(bank, shard, host)`: a bridge bank shard's partial sums, best
caption row, explanation or topk bounds; a collection shard's certified top candidates), so a
new kind of work is a new request class, never a new actor method.

An actor opens each shard it is asked for once (memory-mapped, checked against the digest of
the shard's manifest that the driver read, so a different copy of a shard is refused rather
than scored) and keeps it. It holds no state a retry could not rebuild: Ray restarts a dead
actor (`MAX_RESTARTS`) and retries its unfinished calls (`MAX_TASK_RETRIES`); the driver moves
the shards of an actor that stays dead to the others (`driver`).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

MAX_RESTARTS = 1
MAX_TASK_RETRIES = 1
KEPT = 4  # values requests leave on an actor for their next round (`ShardHost.kept`)


@dataclass(frozen=True)
class ShardRef:
    """One shard as the driver names it to an actor: its directory (a complete bank), the
    SHA-256 of its manifest, its rows, and its first row's number in the whole bank. An
    unsharded bank is one shard: itself."""

    name: str
    path: str
    manifest_sha256: str
    count: int
    start: int = 0


class ShardRequest(Protocol):
    """Work on one shard (`bank`, opened): `host.bank` opens (and keeps) any other shard the
    work reads too, and `host.device` is where it computes. `what` names the answers in an
    error ("the cluster returned no partial sums for ...")."""

    what: ClassVar[str]

    def on_shard(self, bank: Any, shard: ShardRef, host: ShardHost) -> Any: ...


def shard_selection(shard: ShardRef, rows: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The shard's part of a sub-bank: (its local row numbers, their positions in `rows`), in
    the order `rows` lists them; `rows` None is the whole bank (every row, positions = global
    rows)."""
    if rows is None:
        local = np.arange(shard.count, dtype=np.int64)
        return local, local + shard.start
    rows = np.asarray(rows, dtype=np.int64)
    positions = np.flatnonzero((rows >= shard.start) & (rows < shard.start + shard.count))
    return rows[positions] - shard.start, positions


def shard_rows(bank: Any, shard: ShardRef, rows: np.ndarray | None, *keys: str) -> list[np.ndarray]:
    """The shard's matrices of `keys` (memory-mapped), or only its rows in the sub-bank `rows`
    (gathered, in the order `rows` lists them)."""
    if rows is None:
        return [bank.vectors(key) for key in keys]
    local, _ = shard_selection(shard, rows)
    return [bank.vectors(key)[local] for key in keys]


class ShardHost:
    """Holds the shards it was asked for; `run` answers a request over each of them, on the
    GPU Ray gave this actor when it has one (`device`), else on the CPU."""

    def __init__(self, device: str | None = None) -> None:
        self._banks: dict[str, Any] = {}
        self._kept: OrderedDict[Hashable, Any] = OrderedDict()
        self.device = device or _visible_device()

    def open(self, shards: list[ShardRef]) -> list[str]:
        """Open shards ahead of the first query (so it does not pay for it)."""
        return [self.bank(shard).name for shard in shards]

    def run(self, shards: list[ShardRef], request: ShardRequest) -> dict[str, Any]:
        """The request's answer over each shard, by shard name."""
        return {shard.name: request.on_shard(self.bank(shard), shard, self) for shard in shards}

    def kept(self, key: Hashable, make: Callable[[], Any]) -> Any:
        """What an earlier round of a request left here under `key`, else `make()`, kept for
        the next round: soft state (a restarted actor, or another one a shard moves to, makes
        it again), the `KEPT` most recent only."""
        if key in self._kept:
            self._kept.move_to_end(key)
            return self._kept[key]
        value = make()
        self._kept[key] = value
        while len(self._kept) > KEPT:
            self._kept.popitem(last=False)
        return value

    def pid(self) -> int:
        import os

        return os.getpid()

    def bank(self, shard: ShardRef) -> Any:
        """The shard, opened and checked on first use, then kept."""
        if shard.path not in self._banks:  # by path: a bridge bank's and a collection's
            # shards may share names
            from ucl_cli.bank.shards import manifest_digest
            from ucl_cli.bank.store import load_bank
            from ucl_cli.errors import BankError

            digest = manifest_digest(Path(shard.path))
            if digest != shard.manifest_sha256:
                raise BankError(
                    f"shard {shard.name} at {shard.path} is not the one the driver opened (its "
                    f"manifest's SHA-256 is {digest[:12]}…, not {shard.manifest_sha256[:12]}…)"
                )
            bank = load_bank(shard.path, verify="on_read")
            if len(bank) != shard.count:
                raise BankError(f"shard {shard.name} holds {len(bank)} rows, not {shard.count}")
            self._banks[shard.path] = bank
        return self._banks[shard.path]


def _visible_device() -> str:
    """cuda when this process sees a GPU (under Ray: when the actor was given one, since Ray
    hides the others), else cpu."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@cache
def remote_host_class() -> Any:
    """`ShardHost` as a Ray actor class: restarted and retried once (its CPUs and GPUs are
    set per pool: `driver.ActorPool`)."""
    import ray

    return ray.remote(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)(
        ShardHost
    )
