"""Which actor holds which shards: balanced by rows, and a dead actor's shards moved to the
living. Plain arithmetic over shard sizes (no Ray), so it is tested on its own."""

from __future__ import annotations

from collections.abc import Sequence


def place_shards(rows: Sequence[int], actors: int) -> list[list[int]]:
    """Shard indices per actor: largest shards first, each to the actor with the fewest rows
    so far (ties: the lower actor), each actor's list in bank order. At most one actor per
    shard: `actors` beyond the number of shards get none."""
    if actors < 1:
        raise ValueError(f"at least one actor is needed, got {actors}")
    loads = [0] * actors
    placed: list[list[int]] = [[] for _ in range(actors)]
    for shard in sorted(range(len(rows)), key=lambda s: (-rows[s], s)):
        actor = min(range(actors), key=lambda a: (loads[a], a))
        placed[actor].append(shard)
        loads[actor] += rows[shard]
    return [sorted(shards) for shards in placed]


def reassign(
    shards: Sequence[int], rows: Sequence[int], alive: dict[int, int]
) -> dict[int, list[int]]:
    """Spread `shards` (of a dead actor) over the living actors, `alive` mapping each living
    actor to the rows it holds: each shard to the least loaded. Returns actor -> shards."""
    if not alive:
        raise ValueError("no living actor to take the shards")
    loads = dict(alive)
    moved: dict[int, list[int]] = {}
    for shard in sorted(shards, key=lambda s: (-rows[s], s)):
        actor = min(loads, key=lambda a: (loads[a], a))
        moved.setdefault(actor, []).append(shard)
        loads[actor] += rows[shard]
    return {actor: sorted(taken) for actor, taken in moved.items()}
