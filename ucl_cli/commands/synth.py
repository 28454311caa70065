"""`ucl synth`: the paper's synthetic experiments, beside the published numbers.

The comparison table goes to stdout; progress goes to stderr; `--out` keeps every per-seed
number as JSON and `--plot` draws the paper-style bar charts. torch, scipy and matplotlib are
imported inside the command so that `ucl --help` stays fast.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console

from ucl_cli.commands._help import UclCommand, examples
from ucl_cli.files import write_json_file

EXAMPLES = examples(
    ("ucl synth", "quick preset: 1 seed"),
    ("ucl synth --preset paper --out run.json --plot run.png", "10 seeds"),
    ("ucl synth --preset paper --resume run.json --out run.json", "continue it"),
    ("ucl synth --calibrated --seeds 0-2", "also tempered, self-normalised scores"),
)


class Preset(str, Enum):
    QUICK = "quick"
    PAPER = "paper"


def register(app: typer.Typer) -> None:
    app.command("synth", cls=UclCommand, epilog=EXAMPLES)(synth)


def synth(
    preset: Preset = typer.Option(
        Preset.QUICK,
        "--preset",
        metavar="quick|paper",
        help="quick: one seed, small data, banks to 10k (about 30 s on 2 cores). "
        "paper: the full recipe, 10 seeds, banks to 100k (2 to 5 minutes per seed on 2 cores).",
    ),
    seeds: str | None = typer.Option(
        None,
        "--seeds",
        metavar="SEEDS",
        help="Seeds to run, e.g. 0-9 or 0,3,7 (default: the preset's).",
        show_default=False,
    ),
    critics: list[str] | None = typer.Option(
        None,
        "--critic",
        metavar="CRITIC",
        help="cosine, dot or neg_sq_l2; repeat or separate with commas (default: all three).",
        show_default=False,
    ),
    rho: float | None = typer.Option(
        None,
        "--rho",
        metavar="RHO",
        help="Share of the A-C signal that bypasses B (0: assumption 1 holds).",
        show_default=False,
    ),
    bank_sizes: str | None = typer.Option(
        None,
        "--bank-sizes",
        metavar="SIZES",
        help="Monte Carlo bank sizes of the table, e.g. 5000,100000 or 5k,100k "
        "(default: the preset's).",
        show_default=False,
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="FILE",
        help="Write every number (per seed, means, CIs, sweep, timing) as JSON.",
        dir_okay=False,
        show_default=False,
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        metavar="FILE",
        help="Draw bar charts with 95% confidence intervals (PNG, PDF or SVG).",
        dir_okay=False,
        show_default=False,
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        min=1,
        metavar="N",
        help="Worker processes, each on one thread (default: one per CPU core, at most one per "
        "task). Results do not depend on it.",
        show_default=False,
    ),
    calibrated: bool = typer.Option(
        False,
        "--calibrated",
        help="Also rank the independent models' bridge with tempered and self-normalised "
        "scores (temperature t in 1, 0.5, 0.25, 0.1, 0.05 on both critics; each candidate's "
        "bridge sum divided by the bank's estimate of 1, or not), and report beside the "
        "paper's estimator: self-normalised at t=1; the calibration each seed's pseudo-pairs "
        "rank best (no labels); and the one the first seed's labels rank best, judged on the "
        "other seeds only (needs two seeds or more). Each row names what it picked. Slower: "
        "20 more bank sweeps per critic and seed.",
    ),
    resume: Path | None = typer.Option(
        None,
        "--resume",
        metavar="FILE",
        help="Reuse the finished tasks of an earlier (interrupted) run's --out file; the other "
        "options must match it, except --seeds.",
        exists=True,
        dir_okay=False,
        show_default=False,
    ),
) -> None:
    """Reproduce the paper's synthetic experiments beside its published numbers.

    Shared vs independent encoders vs an oracle, Direct vs Monte Carlo over banks of B samples,
    three critics, the exact Gaussian references, and a bank-size sweep with effective sample
    sizes; with --calibrated, tempered and self-normalised scores beside the paper's. The table
    goes to stdout, progress to stderr.
    """
    from ucl_cli.commands._progress import ProgressView
    from ucl_cli.experiments.options import preset as preset_options
    from ucl_cli.experiments.options import with_overrides
    from ucl_cli.experiments.report_table import (
        calibrated_table,
        comparison_table,
        sweep_table,
        timing_text,
    )
    from ucl_cli.experiments.runner import run_synthetic
    from ucl_cli.parsing import parse_seeds, parse_sizes

    base = preset_options(preset.value)
    options = with_overrides(
        base,
        seeds=parse_seeds(seeds) if seeds is not None else None,
        critics=_critic_list(critics),
        rho=rho,
        bank_sizes=parse_sizes(bank_sizes) if bank_sizes is not None else None,
        calibrated=calibrated or None,
    )
    if bank_sizes is not None:
        options = with_overrides(options, sweep_sizes=_sweep_within(base, options.bank_sizes))
    earlier = _resume_from(resume, options, out) if resume is not None else None
    stderr = Console(stderr=True, highlight=False)

    def save(partial) -> None:  # after every task, so an interrupted run keeps what it finished
        if out is not None:
            write_json_file(out, partial.to_json())

    with ProgressView(stderr, counts=False) as view:
        view.stage("starting workers")

        def progress(event) -> None:  # a finished task gets a line in a log
            line = event.message.endswith("done")
            view.update(event.done, total=event.total, description=event.message, line=line)

        results = run_synthetic(
            options, workers=workers, on_progress=progress, on_task_done=save, resume=earlier
        )
    record = results.to_json()
    if out is not None:
        write_json_file(out, record)
        stderr.print(f"wrote {out}")
    if plot is not None:
        from ucl_cli.experiments.plotting import plot_results

        plot_results(record, plot)
        stderr.print(f"wrote {plot}")
    stdout = Console(highlight=False, width=max(Console().width, 160))
    stdout.print(comparison_table(record))
    stdout.print(sweep_table(record))
    variants = calibrated_table(record)
    if variants is not None:
        stdout.print(variants)
    stderr.print(timing_text(record))


def _resume_from(path: Path, options, out: Path | None):
    """The finished tasks of `path` that belong to this run (same options; seeds may differ)."""
    import dataclasses

    from ucl_cli.errors import InputFileError, UsageError
    from ucl_cli.experiments.results import load_results
    from ucl_cli.experiments.runner import Resume

    try:
        earlier = load_results(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as err:
        raise InputFileError(path, f"cannot read it as a results file: {err}") from None
    if dataclasses.replace(earlier.options, seeds=options.seeds) != options:
        raise UsageError(
            f"{path} was made with other options than this run's (preset, --critic, --rho, "
            "--bank-sizes, --calibrated); resume with the same ones"
        )
    outcomes = [*earlier.critic_runs, *earlier.reference_runs]
    dropped = sorted({run.seed for run in outcomes} - set(options.seeds))
    if dropped and out is not None and out.resolve() == path.resolve():
        raise UsageError(
            f"{path} holds finished seeds {dropped} that --seeds leaves out; writing it again "
            "would lose them: choose another --out"
        )
    kept = [run for run in outcomes if run.seed in options.seeds]
    return Resume(kept, earlier.wall_seconds if kept else 0.0, earlier.workers)


def _critic_list(critics: list[str] | None) -> tuple[str, ...] | None:
    if not critics:
        return None
    names = [name.strip() for item in critics for name in item.split(",") if name.strip()]
    return tuple(dict.fromkeys(names))


def _sweep_within(base, bank_sizes: tuple[int, ...]) -> tuple[int, ...]:
    """The preset's sweep sizes up to the largest bank asked for (the bank is drawn that big)."""
    largest = max(bank_sizes)
    return tuple(size for size in base.sweep_sizes if size <= largest) or (largest,)
