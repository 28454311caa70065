"""Embedding a stream of items into a bank with every model, batch by batch.

Each batch is embedded by all the models and committed together, so rows stay aligned; items
whose key the bank (or this run) already holds are skipped before any model sees them, which
makes appending a grown corpus, and rerunning an interrupted run, embed only what is new. In a
collection (a bank of files) a file found under a new path keeps its row, and `prune` drops the
rows of files that are gone (see `ucl_cli.bank.collection`).
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ucl_cli.bank.collection import GoneFiles
from ucl_cli.bank.items import BankItem, KeySet
from ucl_cli.bank.manifest import ModelRecord
from ucl_cli.bank.shards import open_writer, read_any_manifest
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
    prune: bool = False  # collections: drop the rows of files that no longer exist
    # Store the bank as shards of at most this many rows (`ucl_cli.bank.shards`); None: as the
    # bank already is (unsharded for a new bank).
    shard_size: int | None = None


@dataclass
class IndexReport:
    bank: Path
    added: int = 0
    duplicates: int = 0  # items whose key the bank already held, or this run's input repeated
    repeated: int = 0  # of those, repeats of an earlier item of this run's input
    skipped: int = 0  # unreadable files (text corpora report their bad lines themselves)
    resumed: int = 0  # rows an interrupted run had embedded, published by this one
    moved: int = 0  # collections: rows whose file was found under a new path (not re-embedded)
    pruned: int = 0  # collections: rows dropped because their file is gone
    replaced: int = 0  # collections: rows dropped because their file now holds other content
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
    check_encoders(encoders, options.modality)
    _check_prune(options)
    started = time.perf_counter()
    report = IndexReport(bank=Path(bank_dir))
    models = [ModelRecord.from_encoder(encoder) for encoder in encoders]
    writer_options = index_writer_options(options, listener)
    with open_writer(Path(bank_dir), models, writer_options, options.shard_size) as writer:
        report.resumed = writer.recovered_rows
        if report.resumed:
            listener.resumed(report.resumed)
        gone = None if options.modality == "text" else GoneFiles(writer)
        try:
            _ingest(
                writer,
                in_bank_order(encoders, writer.models),
                items,
                options,
                listener,
                report,
                gone,
            )
        except BaseException:
            if writer.staged_rows or writer.changed_rows:
                with contextlib.suppress(Exception):  # the rows stay staged for the next run
                    publish_changes(writer, listener)
            raise
        if gone is not None:
            report.replaced = gone.drop_replaced()
        if options.prune and gone is not None:
            report.pruned = gone.prune()
        report.total = publish_changes(writer, listener)
    report.seconds = time.perf_counter() - started
    return report


def prune_collection(
    bank_dir: str | Path,
    options: IndexOptions | None = None,
    listener: IndexListener | None = None,
) -> IndexReport:
    """Drop the rows of a collection whose files no longer exist, loading no model.

    `options.modality` is ignored (the bank's is used); rows an interrupted run left staged are
    published too.
    """
    started = time.perf_counter()
    manifest = read_any_manifest(Path(bank_dir))
    options = replace(options or IndexOptions(), modality=manifest.modality, prune=True)
    listener = listener or IndexListener()
    _check_prune(options)
    report = IndexReport(bank=Path(bank_dir))
    writer_options = index_writer_options(options, listener)
    with open_writer(Path(bank_dir), manifest.models, writer_options) as writer:
        report.resumed = writer.recovered_rows
        if report.resumed:
            listener.resumed(report.resumed)
        report.pruned = GoneFiles(writer).prune()
        report.total = publish_changes(writer, listener)
    report.seconds = time.perf_counter() - started
    return report


def _check_prune(options: IndexOptions) -> None:
    if options.prune and options.modality == "text":
        raise UsageError(
            "pruning drops the rows of deleted files; a bank of texts has no files to prune"
        )


def index_writer_options(options: IndexOptions, listener: IndexListener) -> WriterOptions:
    """How a run's writer writes: the index options, and the listener's notes."""
    return WriterOptions(
        modality=options.modality,
        faiss_index=options.faiss_index,
        lock_timeout=options.lock_timeout,
        replace=options.replace,
        commit_seconds=options.commit_seconds,
        on_wait=listener.waiting,
    )


def publish_changes(writer: BankWriter, listener: IndexListener) -> int:
    """Publish what changed (saying so when it rewrites the bank); the bank's row count."""
    if writer.staged_rows or writer.changed_rows:
        listener.publishing(writer.rows - len(writer.changes.dropped))
    manifest = writer.publish()
    return 0 if manifest is None else manifest.count


def _ingest(
    writer: BankWriter,
    encoders: Sequence[Encoder],
    items: Iterable[BankItem],
    options: IndexOptions,
    listener: IndexListener,
    report: IndexReport,
    gone: GoneFiles | None = None,
) -> None:
    for batch in new_batches(items, writer, options.batch_size, report, listener, gone):
        kept, inputs = load_inputs(batch, encoders, options, listener, report)
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
            publish_changes(writer, listener)


def new_batches(
    items: Iterable[BankItem],
    writer: BankWriter,
    size: int,
    report: IndexReport,
    listener: IndexListener,
    gone: GoneFiles | None = None,
) -> Iterator[list[BankItem]]:
    """Batches of items neither the bank nor this run has seen (one batch in memory at a time).

    The caller adds each batch to `writer` before asking for the next, so the writer's keys plus
    those accepted since the current chunk was looked up cover every item seen. A held file
    whose row's path is `gone` is a moved file: its row takes the new path; every file read is
    shown to `gone`, which finds the rows of files overwritten since they were indexed.
    """
    batch: list[BankItem] = []
    this_run = KeySet()  # keys of the batches handed out, to tell repeats from old rows
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        keys = [item.key for item in chunk]
        known = writer.contains_many(keys)
        again = this_run.contains_many(keys)
        accepted = {item.key for item in batch}  # the partial batch is not in the writer yet
        before = report.duplicates + report.moved
        for item, seen, repeat in zip(chunk, known, again, strict=True):
            if gone is not None:
                gone.observe(item)
            if seen and gone is not None and gone.relocate(item):
                report.moved += 1
                continue
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
        if report.duplicates + report.moved != before:
            listener.progress(report)
    if batch:
        yield batch


def load_inputs(
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


def check_encoders(encoders: Sequence[Encoder], modality: str) -> None:
    """A UsageError unless there are encoders and each embeds `modality` (the bank's rows)."""
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


def in_bank_order(encoders: Sequence[Encoder], models: Sequence[ModelRecord]) -> list[Encoder]:
    """The encoders in the order of the bank's models (its vector files)."""
    by_key = {encoder.key: encoder for encoder in encoders}
    return [by_key[model.key] for model in models]
