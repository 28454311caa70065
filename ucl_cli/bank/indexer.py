"""Embedding a stream of items into a bank with every model, batch by batch.

Each batch is embedded by all the models and committed together, so rows stay aligned; items
whose key the bank (or this run) already holds are skipped before any model sees them, which
makes appending a grown corpus, and rerunning an interrupted run, embed only what is new.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ucl_cli.bank.items import BankItem, KeySet
from ucl_cli.bank.manifest import ModelRecord
from ucl_cli.bank.writer import BankWriter, WriterOptions
from ucl_cli.errors import InputFileError, UsageError

if TYPE_CHECKING:
    from ucl_cli.encoders.base import Encoder


ROW_NOUNS = {"text": "texts", "image": "images", "audio": "audio clips"}


@dataclass(frozen=True)
class IndexOptions:
    modality: str = "text"
    batch_size: int = 64
    faiss_index: str | None = None  # None: the bank's choice, "auto" for a new bank
    # Publish mid-run once this many rows are staged (and at least as many as the bank holds,
    # so that republishing a large bank stays a small fraction of the run).
    publish_every: int = 100_000
    lock_timeout: float | None = None  # None: wait for a concurrent writer; 0: fail at once
    strict: bool = False  # an unreadable file stops the run instead of being skipped
    replace: bool = False  # rebuild the bank from these items alone (published atomically)
    commit_seconds: float = 1.0  # sync finished batches at most this often (0: every batch)


@dataclass
class IndexReport:
    bank: Path
    added: int = 0
    duplicates: int = 0  # items whose key the bank already held, or this run's input repeated
    repeated: int = 0  # of those, repeats of an earlier item of this run's input
    skipped: int = 0  # unreadable files (text corpora report their bad lines themselves)
    resumed: int = 0  # rows an interrupted run had embedded, published by this one
    total: int = 0
    seconds: float = 0.0


class IndexListener:
    """What a caller may want to hear about a run (the CLI draws progress from it).

    Every method does nothing by default; override the ones you need.
    """

    def waiting(self, holder: str) -> None:
        """Another writer holds the bank; this run waits for it."""

    def resumed(self, rows: int) -> None:
        """Rows embedded by an interrupted run were found and will be kept."""

    def progress(self, report: IndexReport) -> None:
        """Called after each batch and every few duplicates, with running totals."""

    def skipped(self, name: str, reason: str) -> None:
        """One input could not be read and was left out."""

    def publishing(self, rows: int) -> None:
        """The bank is being rewritten to hold `rows` rows."""


def index_items(
    bank_dir: str | Path,
    encoders: Sequence[Encoder],
    items: Iterable[BankItem],
    options: IndexOptions | None = None,
    listener: IndexListener | None = None,
) -> IndexReport:
    """Embed the new items among `items` with every encoder and publish them into the bank.

    On any error or interruption, the batches finished so far are published before the error
    propagates; after a hard kill they stay staged and the next run publishes them.
    """
    options = options or IndexOptions()
    listener = listener or IndexListener()
    _check_encoders(encoders, options.modality)
    started = time.perf_counter()
    report = IndexReport(bank=Path(bank_dir))
    writer_options = WriterOptions(
        modality=options.modality,
        faiss_index=options.faiss_index,
        lock_timeout=options.lock_timeout,
        replace=options.replace,
        commit_seconds=options.commit_seconds,
        on_wait=listener.waiting,
    )
    models = [ModelRecord.from_encoder(encoder) for encoder in encoders]
    with BankWriter(Path(bank_dir), models, writer_options) as writer:
        report.resumed = writer.recovered_rows
        if report.resumed:
            listener.resumed(report.resumed)
        try:
            _ingest(
                writer, _in_bank_order(encoders, writer.models), items, options, listener, report
            )
        except BaseException:
            if writer.staged_rows:
                listener.publishing(writer.committed_rows + writer.staged_rows)
                with contextlib.suppress(Exception):  # the rows stay staged for the next run
                    writer.publish()
            raise
        if writer.staged_rows:
            listener.publishing(writer.committed_rows + writer.staged_rows)
        manifest = writer.publish()
        report.total = 0 if manifest is None else manifest.count
    report.seconds = time.perf_counter() - started
    return report


def _ingest(
    writer: BankWriter,
    encoders: Sequence[Encoder],
    items: Iterable[BankItem],
    options: IndexOptions,
    listener: IndexListener,
    report: IndexReport,
) -> None:
    for batch in _new_batches(items, writer, options.batch_size, report, listener):
        kept, inputs = _load_inputs(batch, encoders, options, listener, report)
        if not kept:
            continue
        matrices = [
            encoder.embed(options.modality, encoder_inputs, batch_size=options.batch_size)
            for encoder, encoder_inputs in zip(encoders, inputs, strict=True)
        ]
        writer.add(kept, matrices)
        report.added += len(kept)
        listener.progress(report)
        if writer.staged_rows >= max(options.publish_every, writer.committed_rows):
            listener.publishing(writer.committed_rows + writer.staged_rows)
            writer.publish()


def _new_batches(
    items: Iterable[BankItem],
    writer: BankWriter,
    size: int,
    report: IndexReport,
    listener: IndexListener,
) -> Iterator[list[BankItem]]:
    """Batches of items neither the bank nor this run has seen (one batch in memory at a time).

    The caller adds each batch to `writer` before asking for the next, so the writer's keys plus
    those accepted since the current chunk was looked up cover every item seen.
    """
    batch: list[BankItem] = []
    this_run = KeySet()  # keys of the batches handed out, to tell repeats from old rows
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        keys = [item.key for item in chunk]
        known = writer.contains_many(keys)
        again = this_run.contains_many(keys)
        accepted = {item.key for item in batch}  # the partial batch is not in the writer yet
        before = report.duplicates
        for item, seen, repeat in zip(chunk, known, again, strict=True):
            if seen or item.key in accepted:
                report.duplicates += 1
                report.repeated += bool(repeat or item.key in accepted)
                continue
            accepted.add(item.key)
            batch.append(item)
            if len(batch) == size:
                yield batch
                for handed in batch:
                    this_run.add(handed.key)
                batch = []
        if report.duplicates != before:
            listener.progress(report)
    if batch:
        yield batch


def _load_inputs(
    batch: list[BankItem],
    encoders: Sequence[Encoder],
    options: IndexOptions,
    listener: IndexListener,
    report: IndexReport,
) -> tuple[list[BankItem], list[list[Any]]]:
    """What each encoder embeds for each item; unreadable files are dropped for all models."""
    if options.modality == "text":
        texts = [item.text for item in batch]
        return batch, [texts for _ in encoders]
    from ucl_cli.media import loader_for

    loaders = [loader_for(options.modality, encoder.preprocessing) for encoder in encoders]
    kept: list[BankItem] = []
    inputs: list[list[Any]] = [[] for _ in encoders]
    for item in batch:
        try:
            loaded = [load(Path(item.item_id)) for load in loaders]
        except InputFileError as err:
            if options.strict:
                raise
            report.skipped += 1
            listener.skipped(item.item_id, err.reason)
            continue
        kept.append(item)
        for column, value in zip(inputs, loaded, strict=True):
            column.append(value)
    return kept, inputs


def _check_encoders(encoders: Sequence[Encoder], modality: str) -> None:
    from ucl_cli.encoders.base import Modality

    if not encoders:
        raise UsageError("indexing a bank needs at least one encoder")
    wanted = Modality(modality)
    for encoder in encoders:
        if wanted not in encoder.modalities:
            supported = ", ".join(sorted(m.value for m in encoder.modalities))
            raise UsageError(
                f"{encoder.key} embeds only {supported}, so it cannot index a bank of "
                f"{ROW_NOUNS[wanted.value]}"
            )


def _in_bank_order(encoders: Sequence[Encoder], models: Sequence[ModelRecord]) -> list[Encoder]:
    by_key = {encoder.key: encoder for encoder in encoders}
    return [by_key[model.key] for model in models]
