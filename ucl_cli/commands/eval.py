"""`ucl eval`: recall@k of each method on a manifest of paired files, with the paper's protocol.

The results table goes to stdout; progress, leak warnings and the summary go to stderr;
`--out` keeps every number as JSON and `--plot` draws recall against bank size. The measuring
lives in `ucl_cli.evaluation`; this file parses options, loads models and bank, and draws.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ucl_cli.bridge.methods import METHOD_NAMES
from ucl_cli.commands._help import UclCommand, examples
from ucl_cli.commands._shared import (
    ALLOW_OTHER_WEIGHTS,
    BANK,
    BATCH_SIZE,
    CLUSTER,
    DEVICE,
    IMAGE_TEXT_MODEL,
    IMAGE_TEXT_WEIGHTS,
    NO_CACHE,
    NO_CALIBRATION,
    NORMALIZE,
    STRICT_PAIRS,
    TEMPERATURE,
    TEXT_AUDIO_MODEL,
    TEXT_AUDIO_WEIGHTS,
    actor_pool,
    calibration_option,
    cluster_bank,
    load_models_and_bank,
    nearest_options,
    resolve_calibration,
    scoring_settings,
)
from ucl_cli.files import write_json_file

NEAREST, NEAREST_MAX, OLD_NEAREST, OLD_NEAREST_MAX = nearest_options()

# Leaked bank rows and skipped items named one by one on stderr; the rest are counted.
SHOWN = 5


EXAMPLES = examples(
    ("ucl eval pairs.csv --bank captions", "every method, 100 trials"),
    ("ucl eval pairs.csv -m lse,topk --bank-sizes 100,1k --plot recall.png", "recall against M"),
    ("ucl eval pairs.csv --direction audio-to-image --out report.json", "the other way, as JSON"),
)


def register(app: typer.Typer) -> None:
    app.command("eval", cls=UclCommand, epilog=EXAMPLES)(evaluate_command)


def evaluate_command(
    manifest: Path = typer.Argument(
        ...,
        help="CSV of paired files: columns image, audio, optional caption... and id.",
        metavar="MANIFEST",
        dir_okay=False,
        show_default=False,
    ),
    bank: str | None = BANK,
    trials: int = typer.Option(100, "--trials", min=1, metavar="N", help="Random trials."),
    candidates: int = typer.Option(
        25, "--candidates", min=2, metavar="N", help="Candidates per trial."
    ),
    seed: int = typer.Option(
        0, "--seed", metavar="N", help="Seed of the trials and of the sub-banks."
    ),
    methods: str = typer.Option(
        ",".join(METHOD_NAMES),
        "--methods",
        "-m",
        metavar="METHOD,...",
        help="Comma-separated methods; direct only where one model embeds both sides "
        "(or with --force-direct).",
    ),
    bank_sizes: str | None = typer.Option(
        None,
        "--bank-sizes",
        metavar="N,...",
        help="Sizes of random sub-banks to measure recall against M, e.g. 100,1k,10k "
        "(the whole bank is always measured).",
        show_default=False,
    ),
    direction: str = typer.Option(
        "image-to-audio",
        "--direction",
        metavar="DIRECTION",
        help="image-to-audio or audio-to-image (also image->audio, audio->image, quoted): "
        "which side of each pair is the query.",
    ),
    recall_at: str = typer.Option(
        "1,5,10", "--recall-at", metavar="K,...", help="Recall cut-offs k."
    ),
    out: Path | None = typer.Option(
        None,
        "--out",
        metavar="PATH",
        help="Write every number, the options, models, versions and bank checksum as JSON.",
        dir_okay=False,
        show_default=False,
    ),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        metavar="PATH",
        help="Draw recall against bank size with intervals shaded (PNG, PDF or SVG).",
        dir_okay=False,
        show_default=False,
    ),
    allow_leak: bool = typer.Option(
        False, "--allow-leak", help="Keep bank items equal to a manifest caption."
    ),
    force_direct: bool = typer.Option(
        False, "--force-direct", help="Measure direct cosine even between unrelated models."
    ),
    temperature: str | None = TEMPERATURE,
    normalize: str | None = NORMALIZE,
    no_calibration: bool = NO_CALIBRATION,
    nearest: int = NEAREST,
    nearest_max: int = NEAREST_MAX,
    old_nearest: int | None = OLD_NEAREST,
    old_nearest_max: int | None = OLD_NEAREST_MAX,
    image_text_model: str | None = IMAGE_TEXT_MODEL,
    text_audio_model: str | None = TEXT_AUDIO_MODEL,
    image_text_weights: Path | None = IMAGE_TEXT_WEIGHTS,
    text_audio_weights: Path | None = TEXT_AUDIO_WEIGHTS,
    device: str = DEVICE,
    batch_size: int | None = BATCH_SIZE,
    strict: bool = STRICT_PAIRS,
    no_cache: bool = NO_CACHE,
    allow_other_weights: bool = ALLOW_OTHER_WEIGHTS,
    cluster: str | None = CLUSTER,
) -> None:
    """Measure recall@k (fair ties), mean rank and 95% intervals of each method on paired data."""
    from contextlib import ExitStack
    from dataclasses import replace

    from ucl_cli.bridge.methods import ScoringSettings
    from ucl_cli.cache import open_cache
    from ucl_cli.calibration import Calibration
    from ucl_cli.commands._progress import ProgressView, stage_listener
    from ucl_cli.distributed.cluster import cluster_spec
    from ucl_cli.evaluation import (
        EvalOptions,
        evaluate,
        parse_direction,
        read_pairs,
        results_table,
    )
    from ucl_cli.parsing import parse_ints, parse_list, parse_sizes

    on_cluster = cluster_spec(cluster)  # --cluster, else UCL_CLUSTER; checked before any model
    given = calibration_option(temperature, normalize)
    options = EvalOptions(
        trials=trials,
        candidates=candidates,
        seed=seed,
        methods=parse_list(methods),
        bank_sizes=tuple(sorted(parse_sizes(bank_sizes))) if bank_sizes else (),
        direction=parse_direction(direction),
        ks=tuple(sorted(parse_ints(recall_at, flag="--recall-at"))),
        allow_leak=allow_leak,
        strict=strict,
        batch_size=batch_size,
        scoring=ScoringSettings(calibration=given or Calibration()),
    )  # checked before anything slow; the other scoring settings wait for the resolved device
    pairs = read_pairs(manifest)
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
    calibration = resolve_calibration(
        given,
        no_calibration=no_calibration,
        bank=loaded.bank,
        encoders=loaded.encoders,
        direction=options.direction,
        applies=bool(options.calibrated_methods),
        console=stderr,
    )
    if given is None and not calibration.is_paper:
        _same_pairs_warning(loaded.bank, options.direction, pairs.sha256, stderr)
    scoring = scoring_settings(
        loaded.device,
        force_direct=force_direct,
        nearest=nearest,
        nearest_max=nearest_max,
        old_nearest=old_nearest,
        old_nearest_max=old_nearest_max,
        calibration=calibration,
    )
    options = replace(options, scoring=scoring)
    opened = loaded.bank

    def on_cache_warning(text: str) -> None:
        stderr.print(f"[yellow]ucl:[/] {escape(text)}", soft_wrap=True)

    with (
        opened,
        ExitStack() as held,
        open_cache(enabled=not no_cache, on_warning=on_cache_warning) as cache,
        ProgressView(stderr) as view,
    ):
        scored = opened
        if on_cluster is not None:
            pool = held.enter_context(actor_pool(on_cluster))
            scored = held.enter_context(cluster_bank(opened, pool))
        report = evaluate(
            pairs,
            encoders=loaded.encoders,
            bank=scored,
            options=options,
            cache=cache,
            listener=stage_listener(view),
        )
    record = report.to_json()
    if out is not None:
        write_json_file(out, record, what="the report")
    if plot is not None:
        from ucl_cli.evaluation import plot_report

        plot_report(record, plot)
    Console(highlight=False, width=max(Console().width, 120)).print(results_table(record))
    _summary(stderr, record, out, plot)


def _same_pairs_warning(bank, direction: str, sha256: str, console: Console) -> None:
    """The bank's calibration was chosen on these very pairs: their recall is not held out."""
    from ucl_cli.bank.calibrations import read_calibrations

    entry = read_calibrations(bank.path).get(direction)
    if entry is not None and entry.pairs.get("sha256") == sha256:
        console.print(
            "[yellow]ucl:[/] the bank's calibration was chosen on these same pairs, so lse and "
            "topk recall here is not held out (ucl calibrate printed the held-out numbers); "
            "--no-calibration measures the paper's estimator",
            soft_wrap=True,
        )


def _summary(console: Console, record: dict, out: Path | None, plot: Path | None) -> None:
    leakage = record["leakage"]
    rows = leakage["rows"]
    if rows:
        fate = "excluded from every bank size" if leakage["excluded"] else "KEPT (--allow-leak)"
        console.print(
            f"[yellow]ucl: {len(rows):,} bank items equal a manifest caption and were {fate}:[/]",
            soft_wrap=True,
        )
        for row in rows[:SHOWN]:
            lines = ", ".join(map(str, row["manifest_lines"]))
            console.print(f"  row {row['row']}: {escape(row['text'])!r} (lines {lines})")
        if len(rows) > SHOWN:
            console.print(f"  ... and {len(rows) - SHOWN:,} more (all in --out)")
    calibration = record["options"]["scoring"].get("calibration")
    if calibration is not None and not calibration["paper"]:
        console.print(
            f"[yellow]ucl:[/] {escape(calibration['description'])}: applied to "
            f"{', '.join(calibration['applies_to'])} only (not the paper's estimator)",
            soft_wrap=True,
        )
    for method, reason in record["skipped_methods"].items():
        console.print(f"[yellow]ucl:[/] {method} not measured: {escape(reason)}", soft_wrap=True)
    skipped = record["manifest"]["skipped"]
    for item in skipped[:SHOWN]:
        console.print(
            f"[yellow]ucl:[/] left out line {item['line']}: {escape(item['path'])}: "
            f"{escape(item['reason'])}",
            soft_wrap=True,
        )
    embedding = record["embedding"]
    console.print(
        f"[dim]{record['manifest']['usable_items']:,} items"
        + (f" ({len(skipped):,} left out)" if skipped else "")
        + f"; embedded {embedding['embedded']:,} files, {embedding['cached']:,} from the cache; "
        f"bank {escape(record['bank']['name'])}: {record['usable_bank_rows']:,} usable rows; "
        f"{record['seconds']:.1f} s[/]",
        soft_wrap=True,
    )
    for path in (out, plot):
        if path is not None:
            console.print(f"wrote {escape(str(path))}")
