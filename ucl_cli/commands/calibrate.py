"""`ucl calibrate`: choose a bank's temperatures and normalisation on paired data, and store them.

The held-out table goes to stdout; progress and what was stored go to stderr; `--out` keeps
every number as JSON. The fitting lives in `ucl_cli.evaluation.cross_validation`, the stored
entries in `ucl_cli.bank.calibrations`; this file parses options, loads models and bank, and draws.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ucl_cli.commands._help import UclCommand, examples
from ucl_cli.commands._shared import (
    ALLOW_OTHER_WEIGHTS,
    BANK,
    BATCH_SIZE,
    DEVICE,
    IMAGE_TEXT_MODEL,
    IMAGE_TEXT_WEIGHTS,
    NO_CACHE,
    STRICT_PAIRS,
    TEXT_AUDIO_MODEL,
    TEXT_AUDIO_WEIGHTS,
    load_models_and_bank,
    scoring_settings,
)
from ucl_cli.files import write_json_file

if TYPE_CHECKING:
    from ucl_cli.evaluation.cross_validation import CalibrationReport

EXAMPLES = examples(
    ("ucl calibrate pairs.csv --bank captions", "choose and store, 5 folds"),
    ("ucl calibrate pairs.csv --bank captions --dry-run --out fit.json", "measure only"),
    ("ucl calibrate pairs.csv --direction audio-to-image", "the other direction"),
    ("ucl calibrate --pseudo-pairs 1000 --bank captions", "no paired data"),
)


def register(app: typer.Typer) -> None:
    app.command("calibrate", cls=UclCommand, epilog=EXAMPLES)(calibrate_command)


def calibrate_command(
    manifest: Path | None = typer.Argument(
        None,
        help="CSV of paired files: columns image, audio, optional caption... and id "
        "(or --pseudo-pairs without one).",
        metavar="MANIFEST",
        dir_okay=False,
        show_default=False,
    ),
    bank: str | None = BANK,
    folds: int = typer.Option(
        5, "--folds", min=2, metavar="N", help="Disjoint groups of pairs, each held out once."
    ),
    trials: int = typer.Option(50, "--trials", min=1, metavar="N", help="Trials per fold."),
    candidates: int = typer.Option(
        25, "--candidates", min=2, metavar="N", help="Candidates per trial."
    ),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the folds and trials."),
    temperatures: str = typer.Option(
        "1,0.5,0.3,0.2,0.1,0.05",
        "--temperatures",
        metavar="T,...",
        help="Temperatures tried on each side (every pair t1, t2 unless --same-temperature).",
    ),
    same_temperature: bool = typer.Option(
        False, "--same-temperature", help="Try t1 = t2 only (fewer calibrations)."
    ),
    normalize: str = typer.Option(
        "none,candidates",
        "--normalize",
        metavar="none,candidates",
        help="Normalisations tried.",
    ),
    select: str = typer.Option(
        "likelihood",
        "--select",
        metavar="likelihood|recall@1",
        help="What the other folds choose by: the log-likelihood of each trial's positive "
        "(smooth, finds the optimum with fewer pairs) or recall@1.",
    ),
    direction: str = typer.Option(
        "image-to-audio",
        "--direction",
        metavar="DIRECTION",
        help="image-to-audio or audio-to-image: which side of each pair is the query.",
    ),
    pseudo_pairs: int | None = typer.Option(
        None,
        "--pseudo-pairs",
        min=2,
        metavar="N",
        help="No paired data: take N bank texts as pairs (through the query model's text tower "
        "as the query, the candidate model's as its candidate), ranked through the other texts.",
        show_default=False,
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Measure and report, but store nothing in the bank."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="PATH",
        help="Write every number (each calibration on each fold, the held-out results) as JSON.",
        dir_okay=False,
        show_default=False,
    ),
    image_text_model: str | None = IMAGE_TEXT_MODEL,
    text_audio_model: str | None = TEXT_AUDIO_MODEL,
    image_text_weights: Path | None = IMAGE_TEXT_WEIGHTS,
    text_audio_weights: Path | None = TEXT_AUDIO_WEIGHTS,
    device: str = DEVICE,
    batch_size: int | None = BATCH_SIZE,
    strict: bool = STRICT_PAIRS,
    no_cache: bool = NO_CACHE,
    allow_other_weights: bool = ALLOW_OTHER_WEIGHTS,
) -> None:
    """Choose the bank's temperature and normalisation on paired data by cross-validation, and
    store them in the bank: ucl query and ucl eval then use them (--no-calibration does not).

    Each fold of pairs is scored with the calibration the other folds chose, so the recall
    printed is held out, never the fitted one. The choice is stored only where it beats the
    paper's estimator on those held-out trials; pairs whose captions are bank texts are refused.
    """
    from dataclasses import replace

    from ucl_cli.bank.calibrations import store_calibration
    from ucl_cli.cache import open_cache
    from ucl_cli.commands._progress import ProgressView, stage_listener
    from ucl_cli.errors import UsageError
    from ucl_cli.evaluation import parse_direction, read_pairs
    from ucl_cli.evaluation.cross_validation import (
        CalibrateOptions,
        calibrate,
        calibrate_label_free,
    )
    from ucl_cli.parsing import parse_list

    if (manifest is None) == (pseudo_pairs is None):
        raise UsageError("give a MANIFEST of paired files or --pseudo-pairs N (one of the two)")

    options = CalibrateOptions(
        folds=folds,
        trials=trials,
        candidates=candidates,
        seed=seed,
        temperatures=_temperatures(temperatures),
        same_temperature=same_temperature,
        normalizations=tuple(parse_list(normalize)),
        select=select,
        direction=parse_direction(direction),
        batch_size=batch_size,
        strict=strict,
    )  # checked before anything slow
    pairs = None if manifest is None else read_pairs(manifest)
    stderr = Console(stderr=True, highlight=False)
    loaded = load_models_and_bank(
        bank,
        image_text_model=image_text_model,
        text_audio_model=text_audio_model,
        weights=[image_text_weights, text_audio_weights],
        device=device,
        allow_other_weights=allow_other_weights,
        console=stderr,
    )
    settings = scoring_settings(loaded.device, force_direct=False, nearest=1, nearest_max=1)
    options = replace(options, scoring=settings)

    def on_cache_warning(text: str) -> None:
        stderr.print(f"[yellow]ucl:[/] {escape(text)}", soft_wrap=True)

    with (
        loaded.bank as opened,
        open_cache(enabled=not no_cache, on_warning=on_cache_warning) as cache,
        ProgressView(stderr) as view,
    ):
        if pairs is None:
            report = calibrate_label_free(
                encoders=loaded.encoders,
                bank=opened,
                pseudo_pairs=pseudo_pairs or 0,
                options=options,
                listener=stage_listener(view),
            )
        else:
            report = calibrate(
                pairs,
                encoders=loaded.encoders,
                bank=opened,
                options=options,
                cache=cache,
                listener=stage_listener(view),
            )
        stored_at = None if dry_run else store_calibration(opened.path, report.entry())
    record = report.to_json()
    if out is not None:
        write_json_file(out, record, what="the calibration report")
    Console(highlight=False, width=max(Console().width, 110)).print(held_out_table(record))
    _summary(stderr, report, record, stored_at, out)


def _temperatures(text: str) -> tuple[float, ...]:
    from ucl_cli.errors import UsageError
    from ucl_cli.parsing import parse_list

    try:
        values = tuple(float(part) for part in parse_list(text))
    except ValueError:
        raise UsageError(
            f"--temperatures takes numbers separated by commas, got {text!r}"
        ) from None
    if not values:
        raise UsageError("--temperatures needs at least one number")
    return values


def held_out_table(record: dict[str, Any]) -> Table:
    """One row per fold (the calibration the other folds chose, and both estimators on this
    fold's trials), then all folds with intervals: every number held out."""
    options = record["options"]
    ks = [f"recall@{k}" for k in options["ks"]][:2]
    table = Table(
        title=(
            f"{options['direction']}: {_pairs(record['pairs'])} in "
            f"{options['folds']} folds, {options['trials_per_fold']} trials of "
            f"{options['candidates']} candidates each, bank {record['bank']['name']}"
        ),
        caption=(
            f"held out: each fold scored with what the other folds chose (by {options['select']})"
            "; the paper's estimator on the same trials; log-lik: mean log-probability of the "
            "positive among its trial's candidates"
        ),
    )
    table.add_column("fold")
    table.add_column("chosen on the other folds")
    for metric in ks:
        table.add_column(f"{metric.replace('recall', 'R')} chosen", justify="right")
        table.add_column(f"{metric.replace('recall', 'R')} paper", justify="right")
    table.add_column("log-lik chosen", justify="right")
    table.add_column("log-lik paper", justify="right")
    for number, fold in enumerate(record["folds"], start=1):
        cells = []
        for metric in [*ks, "log_likelihood"]:
            cells += [f"{fold['held_out'][metric][name]:.3f}" for name in ("chosen", "paper")]
        table.add_row(str(number), _describe(fold["chosen_on_other_folds"]), *cells)
    held_out = record["held_out"]
    cells = []
    for metric in [*ks, "log_likelihood"]:
        cells += [_interval(held_out[metric][name]) for name in ("chosen", "paper")]
    table.add_row("all", "(per fold, as above)", *cells, style="bold")
    return table


def _pairs(source: dict[str, Any]) -> str:
    if "pseudo_pairs" in source:
        return f"{source['pseudo_pairs']:,} pseudo-pairs of bank texts"
    return f"{source['items']:,} pairs"


def _describe(calibration: dict[str, Any]) -> str:
    from ucl_cli.calibration import Calibration

    t1, t2 = calibration["temperature"]
    return Calibration(t1, t2, calibration["normalize"]).describe()


def _interval(value: dict[str, Any]) -> str:
    if value["low"] is None:
        return f"{value['mean']:.3f}"
    return f"{value['mean']:.3f} ±{value['half_width']:.3f}"


def _summary(
    console: Console,
    report: CalibrationReport,
    record: dict[str, Any],
    stored_at: Path | None,
    out: Path | None,
) -> None:
    if not report.leaks.checked and report.manifest_path is not None:
        console.print(
            f"[yellow]ucl:[/] leak guard not applied: {escape(report.leaks.reason or '')}",
            soft_wrap=True,
        )
    skipped = record["manifest"]["skipped"]
    for item in skipped[:5]:
        console.print(
            f"[yellow]ucl:[/] left out line {item['line']}: {escape(item['path'])}: "
            f"{escape(item['reason'])}",
            soft_wrap=True,
        )
    difference = record["held_out"]["recall@1"]["difference"]
    change = f"{difference['mean']:+.3f}"
    if difference["low"] is not None:
        change += f" [{difference['low']:+.3f}, {difference['high']:+.3f}]"
    chosen = report.chosen.describe()
    if report.fit.beats_paper:
        verdict = (
            f"chosen on all folds: {chosen}; held-out recall@1 {change} over the paper's estimator"
        )
    else:
        verdict = (
            f"the fitted choices did not beat the paper's estimator on held-out recall@1 "
            f"({change}); the paper's estimator stays (best on all folds: {chosen})"
        )
    console.print(f"ucl: {escape(verdict)}", soft_wrap=True)
    direction = report.options.direction
    if stored_at is not None:
        console.print(
            f"ucl: stored in bank {escape(report.bank.name)} for {direction} "
            f"({escape(str(stored_at))}): ucl query and ucl eval use it unless --no-calibration",
            soft_wrap=True,
        )
    else:
        console.print("ucl: nothing stored (--dry-run)", soft_wrap=True)
    console.print(
        f"[dim]{_pairs(record['pairs'])}; {len(report.fit.grid)} calibrations x "
        f"{report.options.folds} folds; embedded {report.embedded:,} files, "
        f"{report.cached:,} from the cache; {report.seconds:.1f} s[/]",
        soft_wrap=True,
    )
    if out is not None:
        console.print(f"wrote {escape(str(out))}")
