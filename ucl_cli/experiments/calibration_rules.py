"""Tempered and self-normalised bridge scores on the synthetic task: the grid of calibrations,
what each is measured on, and the rules that pick one (`ucl synth --calibrated`,
scripts/bench_calibration.py).

The grid: temperature t on both critics in 1, 0.5, 0.25, 0.1, 0.05, times normalisation none or
candidates (the arithmetic is `ucl_cli.estimators.calibrated`); "t=1,none" is the paper's
estimator. On one seed, every calibration is measured at every bank size on the labelled
held-out groups (recall@1 and median ESS) and on the label-free pseudo-pairs of
`tasks.pseudo_pair_terms` (recall@1): that seed's `SeedGrid`. The rules read seed grids:

- `best_on_labels`: the best recall on one seed's labelled groups. The best of a grid measured
  on the data that chose it is biased upwards, so this pick is judged on other seeds only
  (`labels_row`: the first seed chooses, the others are judged).
- `best_on_pseudo_pairs`: the best recall on the seed's pseudo-pairs. It uses no labels, so each
  seed chooses for itself (`pseudo_pairs_row`).
- `smallest_t_reaching_ess`: the smallest temperature whose median ESS over (query, candidate)
  pairs reaches sqrt(M). Also label-free.

Ties go to the calibration listed first in the grid (no normalisation before candidates, then
the larger temperature).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ucl_cli.calibration import NORMALIZATIONS, Calibration
from ucl_cli.experiments.evaluation import GroupTerms, bank_sweep

TEMPERATURES = (1.0, 0.5, 0.25, 0.1, 0.05)


def calibration_name(calibration: Calibration) -> str:
    """The key of a calibration in the grid and in results files: "t=0.25,candidates"."""
    return f"t={calibration.query_temperature:g},{calibration.normalize}"


GRID: tuple[Calibration, ...] = tuple(
    Calibration(t, t, normalize) for normalize in NORMALIZATIONS for t in TEMPERATURES
)
GRID_ORDER: dict[str, int] = {calibration_name(c): i for i, c in enumerate(GRID)}
PAPER = calibration_name(Calibration())  # "t=1,none"
SELF_NORMALISED = calibration_name(Calibration(1.0, 1.0, "candidates"))  # "t=1,candidates"


@dataclass(frozen=True)
class GridScores:
    """One calibration on one seed, at each bank size of the sweep (NaN where not measured)."""

    recall: tuple[float, ...]  # recall@1 on the labelled held-out groups
    ess: tuple[float, ...]  # median ESS over every (query, candidate) pair of a group
    pseudo_recall: tuple[float, ...]  # recall@1 on the label-free pseudo-pairs
    ess_positive: tuple[float, ...]  # median ESS over the matched (query, own candidate) pairs

    @classmethod
    def from_json(cls, fields: Mapping[str, Sequence[float | None]]) -> GridScores:
        """From `to_json` output, or from the three-key records of bench_calibration.py."""

        def floats(key: str) -> tuple[float, ...]:
            values = fields.get(key)
            if values is None:
                return tuple(math.nan for _ in fields["recall"])
            return tuple(math.nan if value is None else float(value) for value in values)

        return cls(floats("recall"), floats("ess"), floats("pseudo_recall"), floats("ess_positive"))

    def to_json(self) -> dict[str, list[float]]:
        return {
            "recall": list(self.recall),
            "ess": list(self.ess),
            "pseudo_recall": list(self.pseudo_recall),
            "ess_positive": list(self.ess_positive),
        }


# calibration name -> its numbers, for every calibration of the grid, on one seed
SeedGrid = Mapping[str, GridScores]


def measure_grid(
    terms: GroupTerms,
    groups: int,
    pseudo_terms: GroupTerms,
    pseudo_groups: int,
    sizes: Sequence[int],
    ess: bool = True,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, GridScores]:
    """Every calibration of the grid at every bank size in `sizes` (ascending): recall and ESS
    on the labelled groups (`tasks.bridge_terms`), recall on the pseudo-pairs
    (`tasks.pseudo_pair_terms`). `on_step(done, total)` after each calibration."""
    out = {}
    for index, calibration in enumerate(GRID):
        labelled = bank_sweep(terms, groups, sizes, ess=ess, calibration=calibration)
        free = bank_sweep(pseudo_terms, pseudo_groups, sizes, ess=False, calibration=calibration)
        out[calibration_name(calibration)] = GridScores(
            labelled.recall, labelled.ess_all, free.recall, labelled.ess_positive
        )
        if on_step is not None:
            on_step(index + 1, len(GRID))
    return out


def best_on_labels(grid: SeedGrid, i: int) -> str:
    """The calibration with the best labelled recall at the i-th bank size."""
    return _best(grid, lambda scores: scores.recall[i])


def best_on_pseudo_pairs(grid: SeedGrid, i: int) -> str:
    """The calibration with the best pseudo-pair recall at the i-th bank size (no labels)."""
    return _best(grid, lambda scores: scores.pseudo_recall[i])


def smallest_t_reaching_ess(grid: SeedGrid, size: int, i: int, normalize: str) -> str:
    """With normalisation `normalize`, the smallest temperature whose median ESS reaches
    sqrt(size) at the i-th bank size (the smallest of the grid if none does; no labels)."""
    target = math.sqrt(size)
    ordered = [calibration_name(c) for c in GRID if c.normalize == normalize]  # t descending
    reached = [name for name in ordered if grid[name].ess[i] >= target]
    return reached[0] if reached else ordered[-1]


def _best(grid: SeedGrid, value: Callable[[GridScores], float]) -> str:
    return max(grid, key=lambda name: (value(grid[name]), -GRID_ORDER[name]))


@dataclass(frozen=True)
class VariantRow:
    """One way of scoring, judged on some seeds at every bank size of the sweep.

    picks[i][j] is the calibration applied to seed judged_on[j] at the i-th bank size.
    chosen_on: the seeds whose labels made the picks (empty: no labels were used).
    unavailable: why the row has no numbers (then judged_on and picks are empty), or None.
    """

    variant: str  # "self_normalised", "pseudo_pairs" or "labels"
    rule: str
    chosen_on: tuple[int, ...]
    judged_on: tuple[int, ...]
    picks: tuple[tuple[str, ...], ...]
    unavailable: str | None = None

    def recall(self, grids: Mapping[int, SeedGrid], i: int) -> list[float]:
        """Recall of the judged seeds at the i-th bank size, each with its pick."""
        return [grids[s][self.picks[i][j]].recall[i] for j, s in enumerate(self.judged_on)]

    def ess(self, grids: Mapping[int, SeedGrid], i: int, matched: bool) -> list[float]:
        """Median ESS of each judged seed's pick (matched pairs only, or every pair)."""
        scores = [grids[s][self.picks[i][j]] for j, s in enumerate(self.judged_on)]
        return [(each.ess_positive if matched else each.ess)[i] for each in scores]


def self_normalised_row(grids: Mapping[int, SeedGrid], sizes: Sequence[int]) -> VariantRow:
    """The paper's estimator divided by each candidate's bank sum (t=1): nothing is chosen."""
    seeds = tuple(grids)
    return VariantRow(
        "self_normalised",
        "fixed: t=1, each candidate's bridge sum divided by the bank's estimate of 1",
        (),
        seeds,
        tuple((SELF_NORMALISED,) * len(seeds) for _ in sizes),
    )


def pseudo_pairs_row(grids: Mapping[int, SeedGrid], sizes: Sequence[int]) -> VariantRow:
    """Each seed and bank size with the calibration its own pseudo-pairs rank best (no labels)."""
    seeds = tuple(grids)
    picks = tuple(
        tuple(best_on_pseudo_pairs(grids[s], i) for s in seeds) for i in range(len(sizes))
    )
    return VariantRow(
        "pseudo_pairs",
        "label-free, per seed and bank size: the best recall on pseudo-pairs (fresh B samples "
        "through the A-B model's B encoder as queries and the B-C model's as their candidates)",
        (),
        seeds,
        picks,
    )


def labels_row(
    grids: Mapping[int, SeedGrid], sizes: Sequence[int], chooser: int, waiting: bool = False
) -> VariantRow:
    """Per bank size, the calibration with the best labelled recall on seed `chooser`, judged on
    every other seed of `grids` (never on the chooser). Unavailable with no other seed; with
    `waiting`, other seeds are still to come (an unfinished run)."""
    rule = f"per bank size, the best recall on the labels of seed {chooser}, judged on the others"
    others = tuple(seed for seed in grids if seed != chooser)
    if chooser not in grids or not others:
        if chooser in grids and not waiting:
            reason = (
                f"one seed only: seed {chooser}'s labels choose, and judging the choice on the "
                "seed that made it would flatter it; run two seeds or more"
            )
        else:
            reason = "waiting for more seeds to finish"
        return VariantRow("labels", rule, (chooser,), (), (), reason)
    picks = tuple((best_on_labels(grids[chooser], i),) * len(others) for i in range(len(sizes)))
    return VariantRow("labels", rule, (chooser,), others, picks)


def variant_rows(
    grids: Mapping[int, SeedGrid], sizes: Sequence[int], chooser: int, waiting: bool = False
) -> list[VariantRow]:
    """The rows `ucl synth --calibrated` reports beside the paper's estimator."""
    return [
        self_normalised_row(grids, sizes),
        pseudo_pairs_row(grids, sizes),
        labels_row(grids, sizes, chooser, waiting),
    ]
