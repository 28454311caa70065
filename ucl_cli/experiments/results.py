"""A synthetic run's numbers: per-seed results, means with 95% confidence intervals, the
comparison with the published table, and the JSON written by `ucl synth --out`."""

from __future__ import annotations

import dataclasses
import math
import statistics
from dataclasses import dataclass

from ucl_cli.errors import UsageError
from ucl_cli.experiments.calibration_rules import (
    GRID_ORDER,
    PAPER,
    GridScores,
    SeedGrid,
    VariantRow,
    variant_rows,
)
from ucl_cli.experiments.evaluation import BankSweep
from ucl_cli.experiments.families import FAMILIES, INDEPENDENT
from ucl_cli.experiments.options import SynthOptions
from ucl_cli.experiments.published import published_value
from ucl_cli.experiments.tasks import CriticRun, FamilyResult, ReferenceRun
from ucl_cli.experiments.training import TrainingOptions

FORMAT = "ucl-synth/1"


@dataclass(frozen=True)
class Summary:
    """Mean over seeds with the half-width of a 95% Student-t interval (NaN for one seed)."""

    mean: float
    ci95: float
    values: tuple[float, ...]

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        n = len(values)
        if n == 0:
            return cls(math.nan, math.nan, ())
        mean = statistics.fmean(values)
        if n < 2:
            return cls(mean, math.nan, tuple(values))
        from scipy.stats import t

        half = float(t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)
        return cls(mean, half, tuple(values))


@dataclass(frozen=True)
class SweepRow:
    """The bank-size sweep of one family and critic (or of Lemma 1 with exact ratios)."""

    family: str
    critic: str
    sizes: tuple[int, ...]
    recall: tuple[Summary, ...]
    ess_positive: tuple[float, ...]  # median over seeds of each seed's median ESS
    ess_all: tuple[float, ...]


@dataclass(frozen=True)
class CalibratedRow:
    """A tempered and/or self-normalised score of the independent family, against bank size
    (`ucl synth --calibrated`): which rule picked its calibration, what it picked, and how it
    did on the seeds it is judged on (never on a seed whose labels chose it).

    picked[i][j]: the calibration ("t=0.1,candidates") applied to seed judged_on[j] at sizes[i].
    unavailable: why the row has no numbers (one seed cannot both choose and judge), or None.
    """

    family: str
    critic: str
    variant: str  # "self_normalised", "pseudo_pairs" or "labels"
    rule: str
    chosen_on: tuple[int, ...]  # seeds whose labels chose (empty: no labels used)
    judged_on: tuple[int, ...]
    sizes: tuple[int, ...]
    recall: tuple[Summary, ...]
    ess_positive: tuple[float, ...]  # median over judged seeds of each seed's median ESS
    ess_all: tuple[float, ...]
    picked: tuple[tuple[str, ...], ...]
    unavailable: str | None = None


@dataclass
class SynthResults:
    options: SynthOptions
    critic_runs: list[CriticRun]
    reference_runs: list[ReferenceRun]
    wall_seconds: float
    workers: int
    complete: bool = True  # False while a run is still going (or was interrupted)

    @property
    def completed_seeds(self) -> list[int]:
        """Seeds whose every task (each critic, and the references if asked for) is done."""
        done = {(run.seed, run.critic) for run in self.critic_runs}
        done |= {(run.seed, None) for run in self.reference_runs}
        needed = [*self.options.critics, *([None] if self.options.exact_references else [])]
        return [seed for seed in self.options.seeds if all((seed, c) in done for c in needed)]

    @property
    def seconds_per_seed(self) -> float:
        """Wall time per finished seed (for an unfinished run, time spent on the unfinished
        seeds is charged to the finished ones)."""
        return self.wall_seconds / max(1, len(self.completed_seeds))

    @property
    def cpu_seconds(self) -> float:
        """CPU time of all tasks (one thread each): the run's cost on idle cores."""
        runs = [*self.critic_runs, *self.reference_runs]
        return sum(run.cpu_seconds for run in runs)

    def columns(self) -> list[str]:
        return ["direct", *[f"mc_{size}" for size in sorted(self.options.bank_sizes)]]

    def cell_values(self, family: str, critic: str, column: str) -> list[float]:
        """Per-seed values of one cell, in seed order."""
        if family == "reference":
            return [_reference_value(run, critic, column) for run in self._references()]
        values = []
        for run in self._runs(critic):
            result = run.families[family]
            if column == "direct":
                values.append(result.direct)
            elif result.sweep is not None:
                values.append(result.sweep.recall_at(int(column.removeprefix("mc_"))))
        return values

    def summary(self, family: str, critic: str, column: str) -> Summary:
        return Summary.of(self.cell_values(family, critic, column))

    def table(self) -> list[dict]:
        """Main-table cells: this run's mean and CI beside the published value."""
        rows = []
        for family in FAMILIES:
            for critic in self.options.critics:
                for column in self.columns():
                    if column != "direct" and family.bridge is None:
                        continue
                    rows.append(self._cell(family.name, critic, column))
        if self.options.exact_references:
            rows.append(self._cell("reference", "bayes", "direct"))
            rows += [self._cell("reference", "lemma1", c) for c in self.columns()[1:]]
        return rows

    def sweep(self) -> list[SweepRow]:
        """Recall and ESS against bank size for every bridged family, critic and Lemma 1."""
        rows = []
        for family in FAMILIES:
            if family.bridge is None:
                continue
            for critic in self.options.critics:
                sweeps = [run.families[family.name].sweep for run in self._runs(critic)]
                rows.append(_sweep_row(family.name, critic, sweeps))
        if self.options.exact_references:
            rows.append(_sweep_row("reference", "lemma1", [r.lemma1 for r in self._references()]))
        return rows

    def calibrated(self) -> list[CalibratedRow]:
        """The --calibrated rows of every critic (none without --calibrated)."""
        if not self.options.calibrated:
            return []
        sizes = self.options.all_bank_sizes
        rows = []
        for critic in self.options.critics:
            grids = self._grids(critic)
            waiting = len(grids) < len(self.options.seeds)
            for row in variant_rows(grids, sizes, self.options.seeds[0], waiting):
                rows.append(_calibrated_row(INDEPENDENT.name, critic, row, grids, sizes))
        return rows

    def to_json(self) -> dict:
        """Everything needed to redraw the table and the figure, and every per-seed number."""
        options = dataclasses.asdict(self.options)
        if not self.options.calibrated:
            del options["calibrated"]  # files of runs without it stay as they were
        extra = {}
        if self.options.calibrated:
            extra["calibrated"] = {
                "family": INDEPENDENT.name,
                "grid": list(GRID_ORDER),
                "paper": PAPER,
                "rows": [_finite(dataclasses.asdict(row)) for row in self.calibrated()],
            }
        return {
            "format": FORMAT,
            "complete": self.complete,
            "completed_seeds": self.completed_seeds,
            "options": options,
            "timing": {
                "wall_seconds": self.wall_seconds,
                "seconds_per_seed": self.seconds_per_seed,
                "workers": self.workers,
                "cpu_seconds": self.cpu_seconds,
                "cpu_seconds_per_seed": self.cpu_seconds / max(1, len(self.completed_seeds)),
                "task_train_seconds": sum(run.train_seconds for run in self.critic_runs),
                "task_eval_seconds": sum(run.eval_seconds for run in self.critic_runs),
                "task_reference_seconds": sum(run.seconds for run in self.reference_runs),
            },
            "table": self.table(),
            "sweep": [_finite(dataclasses.asdict(row)) for row in self.sweep()],
            "runs": [_critic_run_json(run) for run in self._runs(None)],
            "reference_runs": [_reference_run_json(run) for run in self._references()],
            **extra,
        }

    def _cell(self, family: str, critic: str, column: str) -> dict:
        summary = self.summary(family, critic, column)
        published = published_value(self.options.rho, family, critic, column)
        return _finite(
            {
                "family": family,
                "critic": critic,
                "column": column,
                "mean": summary.mean,
                "ci95": summary.ci95,
                "seeds": len(summary.values),
                "published": None if published is None else [published.low, published.high],
                "difference": None
                if published is None or not summary.values
                else published.distance(summary.mean),
            }
        )

    def _runs(self, critic: str | None) -> list[CriticRun]:
        runs = [run for run in self.critic_runs if critic is None or run.critic == critic]
        return sorted(runs, key=lambda run: (run.seed, run.critic))

    def _references(self) -> list[ReferenceRun]:
        return sorted(self.reference_runs, key=lambda run: run.seed)

    def _grids(self, critic: str) -> dict[int, SeedGrid]:
        """Seed -> the independent family's calibration grid, for the finished runs of a critic."""
        grids = {}
        for run in self._runs(critic):
            result = run.families.get(INDEPENDENT.name)
            if result is not None and result.calibrations is not None:
                grids[run.seed] = result.calibrations
        return grids


def load_results(record: dict) -> SynthResults:
    """The inverse of `SynthResults.to_json` (for resuming and re-rendering a saved run)."""
    if record.get("format") != FORMAT:
        raise UsageError(
            f"not a `ucl synth` results file (format {record.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        options = options_from_json(record["options"])
        critic_runs = [_critic_run_from_json(run) for run in record["runs"]]
        reference_runs = [_reference_run_from_json(run) for run in record["reference_runs"]]
        timing = record["timing"]
        return SynthResults(
            options,
            critic_runs,
            reference_runs,
            float(timing["wall_seconds"]),
            int(timing["workers"]),
            bool(record.get("complete", True)),
        )
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"results file is incomplete or damaged: {err!r}") from None


def options_from_json(fields: dict) -> SynthOptions:
    """SynthOptions from `dataclasses.asdict` output (lists back to tuples)."""
    training = TrainingOptions(**fields["training"])
    plain = {
        key: tuple(value) if isinstance(value, list) else value
        for key, value in fields.items()
        if key != "training"
    }
    return SynthOptions(**plain, training=training)


def _sweep_from_json(fields: dict | None) -> BankSweep | None:
    if fields is None:
        return None

    def floats(values: list) -> tuple[float, ...]:
        return tuple(math.nan if value is None else float(value) for value in values)

    return BankSweep(
        tuple(int(size) for size in fields["sizes"]),
        floats(fields["recall"]),
        floats(fields["ess_positive"]),
        floats(fields["ess_all"]),
    )


def _grid_from_json(fields: dict | None) -> dict[str, GridScores] | None:
    if fields is None:
        return None
    return {name: GridScores.from_json(numbers) for name, numbers in fields.items()}


def _critic_run_from_json(run: dict) -> CriticRun:
    families = {
        name: FamilyResult(
            float(result["direct"]),
            _sweep_from_json(result["sweep"]),
            {pair: float(scale) for pair, scale in result["logit_scales"].items()},
            _grid_from_json(result.get("calibrations")),
        )
        for name, result in run["families"].items()
    }
    return CriticRun(
        int(run["seed"]),
        run["critic"],
        families,
        float(run["final_loss"]),
        float(run["train_seconds"]),
        float(run["eval_seconds"]),
        float(run["cpu_seconds"]),
    )


def _reference_run_from_json(run: dict) -> ReferenceRun:
    return ReferenceRun(
        int(run["seed"]),
        float(run["bayes"]),
        _sweep_from_json(run["lemma1"]),
        float(run["seconds"]),
        float(run["cpu_seconds"]),
    )


def _reference_value(run: ReferenceRun, name: str, column: str) -> float:
    if name == "bayes":
        return run.bayes
    return run.lemma1.recall_at(int(column.removeprefix("mc_")))


def _sweep_row(family: str, critic: str, sweeps: list[BankSweep]) -> SweepRow:
    sizes = sweeps[0].sizes if sweeps else ()
    recall = tuple(Summary.of([sweep.recall[i] for sweep in sweeps]) for i in range(len(sizes)))

    def median_over_seeds(field: str, i: int) -> float:
        values = [getattr(sweep, field)[i] for sweep in sweeps]
        return statistics.median(values) if values else math.nan

    return SweepRow(
        family,
        critic,
        sizes,
        recall,
        tuple(median_over_seeds("ess_positive", i) for i in range(len(sizes))),
        tuple(median_over_seeds("ess_all", i) for i in range(len(sizes))),
    )


def _calibrated_row(
    family: str,
    critic: str,
    row: VariantRow,
    grids: dict[int, SeedGrid],
    sizes: tuple[int, ...],
) -> CalibratedRow:
    """Means and CIs over the judged seeds (none: NaN, as for an unavailable row)."""

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else math.nan

    every = range(len(sizes))
    return CalibratedRow(
        family,
        critic,
        row.variant,
        row.rule,
        row.chosen_on,
        row.judged_on,
        sizes,
        tuple(Summary.of(row.recall(grids, i)) for i in every),
        tuple(median(row.ess(grids, i, matched=True)) for i in every),
        tuple(median(row.ess(grids, i, matched=False)) for i in every),
        row.picks,
        row.unavailable,
    )


def _sweep_json(sweep: BankSweep | None) -> dict | None:
    return None if sweep is None else _finite(dataclasses.asdict(sweep))


def _critic_run_json(run: CriticRun) -> dict:
    return {
        "seed": run.seed,
        "critic": run.critic,
        "final_loss": run.final_loss,
        "train_seconds": run.train_seconds,
        "eval_seconds": run.eval_seconds,
        "cpu_seconds": run.cpu_seconds,
        "families": {name: _family_json(result) for name, result in run.families.items()},
    }


def _family_json(result: FamilyResult) -> dict:
    fields = {
        "direct": result.direct,
        "logit_scales": result.logit_scales,
        "sweep": _sweep_json(result.sweep),
    }
    if result.calibrations is not None:  # --calibrated, independent family
        fields["calibrations"] = {
            name: _finite(scores.to_json()) for name, scores in result.calibrations.items()
        }
    return fields


def _reference_run_json(run: ReferenceRun) -> dict:
    return {
        "seed": run.seed,
        "bayes": run.bayes,
        "lemma1": _sweep_json(run.lemma1),
        "seconds": run.seconds,
        "cpu_seconds": run.cpu_seconds,
    }


def _finite(value):
    """JSON has no NaN: replace NaN (one seed has no interval) by null, recursively."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
