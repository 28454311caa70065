"""The random draws of an evaluation, all from one seed: trials, and the sub-banks.

A trial is `candidates` distinct items drawn uniformly without replacement. Each item of the
trial is a query once; the trial's candidates are the candidate-side files of the same items,
and the positive of a query is its own item's file (the paper: 100 trials of 25 candidates;
docs/METHOD.md#pretrained-models).

Sub-banks are nested: one seeded permutation of the usable bank rows, cut at each size, so
that the curve of recall against M changes only by the rows added between two sizes.
The two draws use independent streams of the seed, so asking for other bank sizes never
changes the trials.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ucl_cli.errors import UsageError

_TRIAL_STREAM = 0
_BANK_STREAM = 1


def draw_trials(
    items: int, trials: int, candidates: int, seed: int, stream: tuple[int, ...] = ()
) -> np.ndarray:
    """int64 [trials, candidates]: each row distinct item indices in [0, items). `stream`
    names an independent draw of the same seed (`ucl calibrate`: one per fold)."""
    if candidates > items:
        raise UsageError(
            f"a trial needs {candidates} distinct items but the manifest has {items} usable "
            f"items; lower --candidates or add items"
        )
    rng = np.random.default_rng([seed, _TRIAL_STREAM, *stream])
    return np.stack([rng.choice(items, size=candidates, replace=False) for _ in range(trials)])


def bank_sizes(requested: Sequence[int], usable: int) -> tuple[int, ...]:
    """The sizes measured: those requested, then the whole usable bank."""
    if usable < 1:
        raise UsageError("the bank has no usable rows (every row was excluded as a leak)")
    too_large = [size for size in requested if size > usable]
    if too_large:
        raise UsageError(
            f"bank size {too_large[0]:,} asked for, but the bank has {usable:,} usable rows"
        )
    return tuple(sorted({*requested, usable}))


def sub_bank_rows(usable: np.ndarray, sizes: Sequence[int], seed: int) -> dict[int, np.ndarray]:
    """size -> sorted bank rows of the nested sub-bank of that size (all rows at full size)."""
    order = np.random.default_rng([seed, _BANK_STREAM]).permutation(np.asarray(usable))
    return {
        size: (np.sort(order[:size]) if size < len(order) else np.sort(order)) for size in sizes
    }


def trial_blocks(trials: np.ndarray, limit: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive groups of trials whose items together number at most `limit`.

    Yields (trial indices, the group's sorted distinct items): one [items, items] score matrix
    per group then serves all its trials (one group for the paper's 2,500 draws).
    """
    start, seen = 0, np.empty(0, dtype=np.int64)
    for t in range(len(trials)):
        merged = np.union1d(seen, trials[t])
        if len(merged) > limit and t > start:
            yield np.arange(start, t), seen
            start, merged = t, np.unique(trials[t])
        seen = merged
    if len(trials):
        yield np.arange(start, len(trials)), seen
