"""`ucl index`: embed a bridge corpus (or a folder of images or audio) into a bank.

Progress, warnings and the closing summary go to stderr; stdout stays empty. Everything heavy
(torch, FAISS, the models) is imported inside the command so that `ucl --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from ucl_cli.errors import UsageError

if TYPE_CHECKING:
    from ucl_cli.bank import BankItem, CorpusOptions, IndexReport
    from ucl_cli.errors import InputFileError

# Skipped inputs are named one by one up to this many; the rest are only counted.
SHOWN_SKIPS = 10


class Modality(str, Enum):
    """The option's choices (the encoders' own enum would import torch for `ucl --help`)."""

    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"


def register(app: typer.Typer) -> None:
    app.command("index")(index)


def index(
    sources: list[str] = typer.Argument(
        ...,
        help="Corpus files (text; '-' reads standard input), or image/audio files and folders.",
        show_default=False,
    ),
    modality: Modality = typer.Option(
        Modality.TEXT, "--modality", "-m", help="What the bank's rows are: texts, images or audio."
    ),
    bank: str = typer.Option(
        "default", "--bank", "-b", help="Bank name (under the banks directory) or a directory."
    ),
    image_text_model: str | None = typer.Option(
        None,
        "--image-text-model",
        help="Image-text model key (default: the bank's models, else the registry default).",
        show_default=False,
    ),
    text_audio_model: str | None = typer.Option(
        None,
        "--text-audio-model",
        help="Text-audio model key (default: the bank's models, else the registry default).",
        show_default=False,
    ),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Items embedded per batch."),
    corpus_format: str = typer.Option(
        "auto", "--format", help="Corpus format: auto (from the extension), lines, csv, tsv, jsonl."
    ),
    column: str | None = typer.Option(None, help="CSV/TSV column holding the text."),
    field: str | None = typer.Option(None, help="JSON lines field holding the text."),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first unreadable line or file instead of skipping it."
    ),
    faiss_index: str | None = typer.Option(
        None,
        "--faiss-index",
        help="FAISS index_factory string, e.g. Flat, HNSW32, IVF4096,Flat (default: the bank's, "
        "or auto: Flat up to 100k rows, IVF beyond).",
        show_default=False,
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Wait for another run writing the same bank, or fail."
    ),
) -> None:
    """Embed texts (or files) with both models into a bank; only new items are embedded."""
    from ucl_cli.bank import CorpusOptions, IndexOptions, index_items, resolve_bank
    from ucl_cli.commands._shared import load_encoders, model_keys
    from ucl_cli.config import resolve_device

    bank_dir = resolve_bank(bank)
    console = Console(stderr=True, highlight=False)
    view = _ProgressView(console)
    corpus = CorpusOptions(format=corpus_format, column=column, field=field, strict=strict)
    items, total = _items(sources, modality, corpus, view)
    keys = model_keys(bank_dir, image_text_model, text_audio_model)
    encoders = load_encoders(keys, resolve_device(device), console)
    options = IndexOptions(
        modality=modality.value,
        batch_size=batch_size,
        faiss_index=faiss_index,
        lock_timeout=None if wait else 0,
        strict=strict,
    )
    try:
        with view.running(total):
            report = index_items(bank_dir, encoders, items, options, view)
    except BaseException:
        if view.saving is not None:
            console.print(
                f"ucl: bank {escape(bank)} keeps the {view.saving:,} items embedded so far; "
                "run the same command again to finish",
                soft_wrap=True,
            )
        raise
    console.print(_summary(bank, modality, report, view), soft_wrap=True)
    if report.added or report.resumed:
        _save_index_scans(bank_dir)


def _save_index_scans(bank_dir: Path) -> None:
    """Prepare `ucl query --method topk` now (IVF banks only), rather than at its first query."""
    from ucl_cli.bank import load_bank
    from ucl_cli.bridge.sides import save_index_scans

    with load_bank(bank_dir, verify="on_read") as bank:
        save_index_scans(bank)


def _items(
    sources: Sequence[str], modality: Modality, options: CorpusOptions, view: _ProgressView
) -> tuple[Iterable[BankItem], int | None]:
    """The items to index and how many there are at most (for the progress bar)."""
    if modality is Modality.TEXT:
        from ucl_cli.bank import corpus_items

        for source in sources:
            if source != "-" and Path(source).is_dir():
                raise UsageError(
                    f"{source} is a folder; give text files, or index files with "
                    "--modality image|audio"
                )
        counts = [_count(source) for source in sources]
        total = None if None in counts else sum(counts)
        return corpus_items(sources, options, view.skipped_line), total
    from ucl_cli.bank.file_items import collect_file_items

    files = collect_file_items(
        sources, modality.value, strict=options.strict, on_skip=view.skipped_file
    )
    if not files.paths:
        raise UsageError(f"no {modality.value} files found in {', '.join(sources)}")
    return files, len(files)


def _count(source: str) -> int | None:
    from ucl_cli.bank.corpus import count_lines
    from ucl_cli.errors import InputFileError

    try:
        return count_lines(source)
    except FileNotFoundError:
        raise InputFileError(source, "no such file") from None


def _summary(bank: str, modality: Modality, report: IndexReport, view: _ProgressView) -> str:
    skipped = [f"{report.duplicates:,} duplicates"]
    if view.skips:
        unit = "lines" if modality is Modality.TEXT else "files"
        skipped.append(f"{view.skips:,} unreadable {unit}")
    resumed = f", kept {report.resumed:,} rows from an interrupted run" if report.resumed else ""
    return (
        f"bank {escape(bank)}: added {report.added:,} items{resumed}, skipped "
        f"{' and '.join(skipped)}; {report.total:,} items in total ({report.seconds:.1f} s)"
    )


class _ProgressView:
    """Draws `index_items`'s progress on stderr and names the first few skipped inputs."""

    def __init__(self, console: Console):
        self.console = console
        self.bar: Progress | None = None
        self.task = None
        self.skips = 0
        self.line_skips = 0
        self.saving: int | None = None  # rows in the bank being published, if any

    def running(self, total: int | None) -> Progress:
        self.bar = Progress(
            SpinnerColumn(),
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        )
        self.task = self.bar.add_task("embedding", total=total)
        return self.bar

    # IndexListener -----------------------------------------------------------------------

    def waiting(self, holder: str) -> None:
        self._say(f"waiting for {holder}, which is writing this bank")

    def resumed(self, rows: int) -> None:
        self._say(f"resuming: {rows:,} rows embedded by an interrupted run are kept")

    def progress(self, report: IndexReport) -> None:
        if self.bar is not None:
            done = report.added + report.duplicates + report.skipped + self.line_skips
            self.bar.update(self.task, completed=done)

    def skipped(self, name: str, reason: str) -> None:
        self._skip(name, reason)

    def publishing(self, rows: int) -> None:
        self.saving = rows
        if self.bar is not None:
            self.bar.update(self.task, description=f"saving {rows:,} rows")

    # corpus and media callbacks ----------------------------------------------------------

    def skipped_line(self, where: str, reason: str) -> None:
        self.line_skips += 1
        self._skip(where, reason)

    def skipped_file(self, error: InputFileError) -> None:
        self._skip(error.path, error.reason)

    def _skip(self, name: str, reason: str) -> None:
        self.skips += 1
        if self.skips <= SHOWN_SKIPS:
            self._say(f"skipping {escape(str(name))}: {escape(reason)}")
        elif self.skips == SHOWN_SKIPS + 1:
            self._say("(further skipped inputs are only counted)")

    def _say(self, message: str) -> None:
        console = self.bar.console if self.bar is not None else self.console
        console.print(f"[yellow]ucl:[/] {message}", highlight=False, soft_wrap=True)
