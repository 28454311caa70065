"""What several commands share: their common options, choosing and loading the models, and
saying which bank they use. Not a command itself (modules whose names start with '_' are not
registered)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console

if TYPE_CHECKING:
    from ucl_cli.bank import Bank
    from ucl_cli.bank.catalog import BankChoice
    from ucl_cli.bridge.methods import ScoringSettings
    from ucl_cli.calibration import Calibration
    from ucl_cli.encoders.base import Encoder


# Options that several commands take, declared once.
IMAGE_TEXT_MODEL = typer.Option(
    None,
    "--image-text-model",
    metavar="KEY",
    help="Image-text model key (default: the bank's, else the registry default; see ucl models).",
    show_default=False,
)
TEXT_AUDIO_MODEL = typer.Option(
    None,
    "--text-audio-model",
    metavar="KEY",
    help="Text-audio model key (default: the bank's, else the registry default; see ucl models).",
    show_default=False,
)
IMAGE_TEXT_WEIGHTS = typer.Option(
    None,
    "--image-text-weights",
    metavar="PATH",
    help="Checkpoint file (or folder) for the image-text model, instead of the model cache's.",
    show_default=False,
)
TEXT_AUDIO_WEIGHTS = typer.Option(
    None,
    "--text-audio-weights",
    metavar="PATH",
    help="Checkpoint file for the text-audio model, instead of the model cache's.",
    show_default=False,
)
DEVICE = typer.Option("auto", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")
BANK_RULE = (
    "without it: UCL_BANK, else the bank named default when it exists (what `ucl index` writes "
    "without --bank), else the built-in AudioSet bank"
)
BANK = typer.Option(
    None,
    "--bank",
    "-b",
    metavar="NAME",
    help=f"Bank name or directory, or builtin for the built-in AudioSet bank; {BANK_RULE}.",
    show_default=False,
)
BATCH_SIZE = typer.Option(
    None, "--batch-size", min=1, metavar="N", help="Files embedded per batch.", show_default=False
)
STRICT_PAIRS = typer.Option(
    False, "--strict", help="Fail at the first unreadable file instead of leaving its item out."
)
NO_CACHE = typer.Option(
    False, "--no-cache", help="Neither read nor write the embedding cache (or UCL_NO_CACHE=1)."
)


ALLOW_OTHER_WEIGHTS = typer.Option(
    False,
    "--allow-other-weights",
    help="Use a bank whose vectors were made by other weights of the same models.",
)


CLUSTER = typer.Option(
    None,
    "--cluster",
    metavar="auto|local|ray://HOST:PORT",
    help="Score over the bank's shards on Ray actors: auto (a running Ray cluster), local "
    "(start one on this machine) or ray://HOST:PORT. Default: UCL_CLUSTER, else in this "
    "process (docs/SCALING.md).",
    show_default=False,
)


def actor_pool(spec: str) -> Any:
    """The Ray actors of this run on the cluster `spec` names (`ucl_cli.distributed`), shared
    by the bank and the collections; started on the first request, closed on exit."""
    from ucl_cli.distributed.driver import ActorPool

    return ActorPool(spec)


def cluster_bank(bank: Bank, pool: Any) -> Any:
    """The bank, held by the pool's actors: every method that reads its rows asks them (the
    driver keeps none); closing it releases its shards, not the pool."""
    from ucl_cli.distributed.driver import ClusterScorer
    from ucl_cli.distributed.rows import ClusterBank

    return ClusterBank(bank, ClusterScorer(bank, pool))


TEMPERATURE = typer.Option(
    None,
    "--temperature",
    metavar="T|T1,T2",
    help="lse, topk: multiply the query side's and the candidate side's logit scales by T (or "
    "T1 and T2). T < 1 lets more bank texts carry each score instead of the one or two nearest; "
    "1 is the paper's estimator. Default: the bank's calibration (ucl calibrate), else 1.",
    show_default=False,
)
NORMALIZE = typer.Option(
    None,
    "--normalize",
    metavar="none|candidates",
    help="lse, topk: candidates divides each candidate's bridge sum by its own sum over the "
    "bank, so a candidate close to many bank texts no longer wins every query; none is the "
    "paper's estimator. Default: the bank's calibration (ucl calibrate), else none.",
    show_default=False,
)
NO_CALIBRATION = typer.Option(
    False,
    "--no-calibration",
    help="Ignore the calibration ucl calibrate stored in the bank: the paper's estimator "
    "(unless --temperature or --normalize say otherwise).",
)


def calibration_option(temperature: str | None, normalize: str | None) -> Calibration | None:
    """--temperature and --normalize as a `Calibration`, None when neither was given (the
    bank's stored calibration may then apply); a bad value is a usage error (exit 2) before
    any model loads (the settings import no torch)."""
    from ucl_cli.calibration import Calibration

    if temperature is None and normalize is None:
        return None
    return Calibration.parse(temperature or "1", normalize or "none")


def resolve_calibration(
    given: Calibration | None,
    *,
    no_calibration: bool,
    bank: Bank,
    encoders: Sequence[Encoder],
    direction: str | None,
    applies: bool,
    console: Console,
) -> Calibration:
    """The calibration a run uses: the flags when given; else, unless --no-calibration, the
    bank's stored one for `direction` (None: the queries mix directions) when the run has a
    method it `applies` to, said once on stderr; else the paper's estimator."""
    from rich.markup import escape

    from ucl_cli.bank.calibrations import applicable_calibration
    from ucl_cli.bridge.pipeline import encoder_for
    from ucl_cli.calibration import Calibration
    from ucl_cli.errors import UsageError
    from ucl_cli.modality import Modality

    if given is not None:
        return given
    if no_calibration or not applies or direction is None:
        return Calibration()
    query, candidate = (Modality(side) for side in direction.split("->"))
    try:
        models = [
            encoder_for(encoders, side, Modality(bank.modality)) for side in (query, candidate)
        ]
    except UsageError:
        return Calibration()  # the run itself reports the missing model
    found = applicable_calibration(bank, direction, *models)
    if found.note is not None:
        console.print(f"[yellow]ucl:[/] {escape(found.note)}", soft_wrap=True)
    if found.stored is None:
        return Calibration()
    stored = found.stored
    console.print(
        f"ucl: calibration stored in bank {escape(bank.name)} for {direction}: "
        f"{escape(stored.calibration.describe())} ({escape(stored.evidence())}); "
        "--no-calibration for the paper's estimator",
        soft_wrap=True,
    )
    return stored.calibration


def nearest_options() -> tuple[Any, Any, Any, Any]:
    """topk's flags, for `query` and `eval`: --nearest, --nearest-max, and their old spellings
    --k and --k-max, still read but not shown (`k` also named the number of candidates). Made
    on call, with the method table's defaults: `ucl index` imports this module but not the
    query layer."""
    from ucl_cli.bridge.methods import MAX_NEAREST_ROWS, NEAREST_ROWS, QUERY_NEAREST_ROWS

    return (
        typer.Option(
            NEAREST_ROWS,
            "--nearest",
            min=1,
            metavar="N",
            help="topk: nearest bank rows found per candidate (FAISS).",
        ),
        typer.Option(
            MAX_NEAREST_ROWS,
            "--nearest-max",
            min=1,
            metavar="N",
            help=f"topk: most nearest bank rows used per query (from {QUERY_NEAREST_ROWS:,} up).",
        ),
        typer.Option(None, "--k", min=1, metavar="N", hidden=True),
        typer.Option(None, "--k-max", min=1, metavar="N", hidden=True),
    )


def scoring_settings(
    device: str,
    *,
    force_direct: bool,
    nearest: int,
    nearest_max: int,
    old_nearest: int | None = None,
    old_nearest_max: int | None = None,
    calibration: Calibration | None = None,
) -> ScoringSettings:
    """The scoring flags `query` and `eval` share; an old spelling (--k, --k-max), when given,
    wins. A limit below the start means no growth: it is raised to the start. `calibration`:
    from `calibration_option` (default: the paper's estimator)."""
    from ucl_cli.bridge.methods import ScoringSettings
    from ucl_cli.calibration import Calibration

    rows = nearest if old_nearest is None else old_nearest
    most = nearest_max if old_nearest_max is None else old_nearest_max
    return ScoringSettings(
        device=device,
        force_direct=force_direct,
        nearest_rows=rows,
        max_nearest_rows=max(rows, most),
        calibration=calibration or Calibration(),
    )


@dataclass(frozen=True)
class Loaded:
    """What `query` and `eval` run with: the models, on the resolved device, and the bank."""

    encoders: list[Encoder]
    bank: Bank
    device: str


def load_models_and_bank(
    bank: str | None,
    *,
    image_text_model: str | None,
    text_audio_model: str | None,
    weights: Sequence[Path | None],
    device: str,
    allow_other_weights: bool,
    console: Console,
) -> Loaded:
    """The preamble `query` and `eval` share: choose the bank (--bank > UCL_BANK > default >
    built-in) and say so before anything slow, resolve the device, load the models (the
    bank's unless named; `weights` per model) and open the bank for them."""
    from ucl_cli.bank.catalog import choose_bank
    from ucl_cli.config import resolve_device

    choice = choose_bank(bank)
    announce_bank(choice, console)
    resolved = resolve_device(device)
    keys = model_keys(choice.path, image_text_model, text_audio_model)
    encoders = load_encoders(keys, resolved, console, weights)
    opened = open_bank(choice.path, encoders, console, allow_other_weights=allow_other_weights)
    return Loaded(encoders, opened, resolved)


def load_encoder(key: str, *, device: str, weights: Path | None = None) -> Encoder:
    """The registry's loader (real weights, stand-ins or plugins); the seam tests may replace.
    `weights`: a local checkpoint used instead of the model cache's (`--image-text-weights`)."""
    from ucl_cli.encoders.registry import load_encoder as registry_load_encoder

    return registry_load_encoder(key, device=device, weights=weights)


def weights_argument(weights: Sequence[Path | None], n: int) -> dict[str, Path]:
    """`weights=` for the n-th model only when a checkpoint was given for it, so that loaders
    standing in for `load_encoder` need not take the argument."""
    path = weights[n] if n < len(weights) else None
    return {} if path is None else {"weights": path}


def load_encoders(
    keys: Sequence[str], device: str, console: Console, weights: Sequence[Path | None] = ()
) -> list[Encoder]:
    """Load the models; say once, on stderr, when any of them is a random-weight stand-in."""
    from rich.markup import escape

    from ucl_cli.encoders.standin_marks import standin_warning

    with console.status(f"loading {', '.join(keys)} on {device}"):
        encoders = [
            load_encoder(key, device=device, **weights_argument(weights, n))
            for n, key in enumerate(keys)
        ]
    standins = [encoder.key for encoder in encoders if getattr(encoder, "standin", False)]
    if standins:
        console.print(f"[yellow]ucl:[/] {escape(standin_warning(standins))}", soft_wrap=True)
    return encoders


def default_model_keys() -> tuple[str, str]:
    from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO

    return DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO


def model_keys(bank_dir: Path | None, image_text: str | None, text_audio: str | None) -> list[str]:
    """Flags first; then the models the bank (or its interrupted first run) was built with, in
    the order they were given to `ucl index` (image-text, then text-audio); then the defaults."""
    held = bank_model_keys(bank_dir) if bank_dir is not None else []
    if image_text is None and text_audio is None and held:
        return held
    fallback = held if len(held) == 2 else list(default_model_keys())
    return [image_text or fallback[0], text_audio or fallback[1]]


def bank_model_keys(bank_dir: Path) -> list[str]:
    """The bank's model keys in `ucl index` order, or [] where there is no bank yet."""
    from ucl_cli.bank.shards import read_any_manifest
    from ucl_cli.bank.staging import Staging
    from ucl_cli.errors import BankError

    if not bank_dir.is_dir():
        return []
    try:
        return read_any_manifest(bank_dir).model_keys()
    except BankError:
        state = Staging.read_state(bank_dir)  # an interrupted first run, or nothing
        return [] if state is None else [model.key for model in state.models]


def plural(count: int, singular: str, plural_form: str | None = None) -> str:
    """A count and its noun: "1 candidate", "2 candidates", "1,204 texts"."""
    return f"{count:,} {singular if count == 1 else plural_form or singular + 's'}"


# Why `choose_bank` picked a bank, as the one line `query` and `eval` print says it.
_WHY = {
    "--bank": "--bank",
    "UCL_BANK": "from UCL_BANK",
    "default": "the bank `ucl index` writes by default",
    "no default bank": "no bank named default yet; index a corpus with `ucl index corpus.txt`",
}
_ROWS = {"text": ("text", None), "image": ("image", None), "audio": ("audio clip", None)}


def bank_rows(count: int, modality: str) -> str:
    """What a bank holds, in its own words: "1,204 texts", "40 images", "1 audio clip"."""
    return plural(count, *_ROWS.get(modality, ("item", None)))


def announce_bank(choice: BankChoice, console: Console) -> None:
    """Say once on stderr which bank this command uses and why, before anything slow starts:
    "ucl: bank default (1,204 texts; the bank `ucl index` writes by default)"."""
    from rich.markup import escape

    from ucl_cli.bank import audioset_texts
    from ucl_cli.bank.shards import read_any_manifest
    from ucl_cli.errors import BankError

    why = _WHY[choice.reason]
    if choice.builtin:
        why = "--bank builtin" if choice.reason == "--bank" else why
        rows = bank_rows(len(audioset_texts()), "text")
        console.print(f"ucl: built-in AudioSet bank ({rows}; {escape(why)})", soft_wrap=True)
        return
    try:
        manifest = read_any_manifest(choice.path)
    except BankError:
        rows = "unreadable manifest"  # opening the bank reports the problem in full
    else:
        rows = bank_rows(manifest.count, manifest.modality)
        shards = getattr(manifest, "shards", None)
        if shards is not None:
            rows += f" in {plural(len(shards), 'shard')}"
    console.print(f"ucl: bank {escape(choice.name)} ({rows}; {escape(why)})", soft_wrap=True)


def open_bank(
    bank_dir: Path | None,
    encoders: Sequence[Encoder],
    console: Console,
    *,
    allow_other_weights: bool = False,
) -> Bank:
    """The bank at `bank_dir`, or the built-in AudioSet bank for these encoders when None
    (which is keyed by their weights, so it always matches them)."""
    from ucl_cli.bank import load_bank

    if bank_dir is not None:
        bank = load_bank(bank_dir, verify="on_read", check_weights=not allow_other_weights)
        unknown = bank.unknown_weights(encoders)
        if unknown:
            console.print(
                f"[yellow]ucl:[/] bank {bank.name} does not record which weights made its "
                f"{', '.join(unknown)} vectors (built by an older ucl): they cannot be checked "
                "against this query's models; index the corpus again into a new bank to record "
                "them",
                soft_wrap=True,
            )
        return bank
    return _builtin_with_progress(encoders, console)


def _builtin_with_progress(encoders: Sequence[Encoder], console: Console) -> Bank:
    """The built-in bank; on first use say once what is built and where it is kept, then show
    the embedding's progress (minutes on a CPU)."""
    from rich.markup import escape

    from ucl_cli.bank import builtin_bank
    from ucl_cli.commands._progress import IndexProgress, ProgressView

    view = ProgressView(console)
    listener = IndexProgress(view)

    def building(path: Path, rows: int) -> None:
        models = " and ".join(encoder.key for encoder in encoders)
        view.say(
            f"building the built-in AudioSet bank for {escape(models)} ({rows:,} texts, once; "
            f"cached in {escape(str(path))})",
            warning=False,
        )
        listener.start(rows)

    with view:
        return builtin_bank(list(encoders), listener=listener, on_build=building)
