"""What several commands share: choosing and loading the models. Not a command itself
(modules whose names start with '_' are not registered)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

if TYPE_CHECKING:
    from ucl_cli.bank import Bank
    from ucl_cli.encoders.base import Encoder


# Options that several commands take, declared once.
IMAGE_TEXT_MODEL = typer.Option(
    None, "--image-text-model", help="Image-text model key.", show_default=False
)
TEXT_AUDIO_MODEL = typer.Option(
    None, "--text-audio-model", help="Text-audio model key.", show_default=False
)
DEVICE = typer.Option("auto", help="auto, cpu, cuda or cuda:N.")
BANK = typer.Option(
    None,
    "--bank",
    "-b",
    help="Bank name or directory (default: the built-in AudioSet labels bank).",
    show_default=False,
)
BATCH_SIZE = typer.Option(
    None, "--batch-size", min=1, help="Files embedded per batch.", show_default=False
)
TOPK_K = typer.Option(64, "--k", min=1, help="topk: nearest bank rows found per candidate (FAISS).")
TOPK_K_MAX = typer.Option(
    8192, "--k-max", min=1, help="topk: most top bank rows used per query (from 1,024 up)."
)
NO_CACHE = typer.Option(
    False, "--no-cache", help="Neither read nor write the embedding cache (or UCL_NO_CACHE=1)."
)


ALLOW_OTHER_WEIGHTS = typer.Option(
    False,
    "--allow-other-weights",
    help="Use a bank whose vectors were made by other weights of the same models.",
)


def load_encoder(key: str, *, device: str) -> Encoder:
    """The registry's loader (real weights, stand-ins or plugins); the seam tests may replace."""
    from ucl_cli.encoders.registry import load_encoder as registry_load_encoder

    return registry_load_encoder(key, device=device)


def load_encoders(keys: Sequence[str], device: str, console: Console) -> list[Encoder]:
    with console.status(f"loading {', '.join(keys)} on {device}"):
        return [load_encoder(key, device=device) for key in keys]


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
    from ucl_cli.bank.manifest import read_manifest
    from ucl_cli.bank.staging import Staging
    from ucl_cli.errors import BankError

    if not bank_dir.is_dir():
        return []
    try:
        return read_manifest(bank_dir).model_keys()
    except BankError:
        state = Staging.read_state(bank_dir)  # an interrupted first run, or nothing
        return [] if state is None else [model.key for model in state.models]


def existing_bank(spec: str) -> Path:
    """The directory of an existing bank, or a BankError saying how to build one."""
    from ucl_cli.bank import resolve_bank
    from ucl_cli.bank.manifest import MANIFEST_NAME
    from ucl_cli.errors import BankError

    path = resolve_bank(spec)
    if not (path / MANIFEST_NAME).exists():
        raise BankError(
            f"no bank at {path}: build one with `ucl index --bank {spec} corpus.txt`, "
            "or omit --bank to use the built-in AudioSet bank"
        )
    return path


def open_bank(
    bank_dir: Path | None,
    encoders: Sequence[Encoder],
    console: Console,
    *,
    allow_other_weights: bool = False,
) -> Bank:
    """The bank at `bank_dir`, or the built-in AudioSet bank for these encoders when None
    (which is keyed by their weights, so it always matches them)."""
    from ucl_cli.bank import builtin_bank, load_bank

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
    with console.status("preparing the built-in AudioSet bank (first use only)"):
        return builtin_bank(list(encoders))
