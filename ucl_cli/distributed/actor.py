"""The Ray actor that holds shards of a bank: their partial bridge sums (a bridge bank's
shards) or their certified top candidates (a collection's shards).

An actor opens each shard it is asked for once (memory-mapped, checked against the digest of
the shard's manifest that the driver read, so a different copy of a shard is refused rather
than scored) and keeps it. It holds no state a retry could not rebuild: Ray restarts a dead
actor (`MAX_RESTARTS`) and retries its unfinished calls (`MAX_TASK_RETRIES`); the driver moves
the shards of an actor that stays dead to the others (`driver`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ucl_cli.distributed.partials import ScoreRequest, WirePartial, shard_partial

MAX_RESTARTS = 1
MAX_TASK_RETRIES = 1


@dataclass(frozen=True)
class ShardRef:
    """One shard as the driver names it to an actor: its directory (a complete bank), the
    SHA-256 of its manifest, and its rows. An unsharded bank is one shard: itself."""

    name: str
    path: str
    manifest_sha256: str
    count: int


class ShardHost:
    """Holds the shards it was asked for; `partials` computes their partial sums."""

    def __init__(self) -> None:
        self._banks: dict[str, Any] = {}

    def open(self, shards: list[ShardRef]) -> list[str]:
        """Open shards ahead of the first query (so it does not pay for it)."""
        return [self._bank(shard).name for shard in shards]

    def partials(self, shards: list[ShardRef], request: ScoreRequest) -> dict[str, WirePartial]:
        """Each shard's partial sums for the request, by shard name."""
        out = {}
        for shard in shards:
            bank = self._bank(shard)
            query_rows = bank.vectors(request.query_key)
            candidate_rows = bank.vectors(request.candidate_key)
            out[shard.name] = shard_partial(query_rows, candidate_rows, request)
        return out

    def collection_tops(self, shards: list[ShardRef], request: Any) -> dict[str, Any]:
        """Each collection shard's certified top N for the request (`collection_tops`), by
        shard name; None for an empty shard (it adds no candidate)."""
        from ucl_cli.distributed.collection_tops import shard_top

        out = {}
        for shard in shards:
            bank = self._bank(shard)
            out[shard.name] = shard_top(bank, request) if len(bank) else None
        return out

    def pid(self) -> int:
        import os

        return os.getpid()

    def _bank(self, shard: ShardRef) -> Any:
        if shard.name not in self._banks:
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
            self._banks[shard.name] = bank
        return self._banks[shard.name]


@cache
def remote_host_class() -> Any:
    """`ShardHost` as a Ray actor class: one CPU each, restarted and retried once."""
    import ray

    return ray.remote(num_cpus=1, max_restarts=MAX_RESTARTS, max_task_retries=MAX_TASK_RETRIES)(
        ShardHost
    )
