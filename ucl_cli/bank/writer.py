"""The one way a bank changes: stage batches of rows, then publish a new generation.

`BankWriter` holds the bank's lock for its lifetime. `add` commits a batch to the staging area
(durable at once); `move_row` and `drop_rows` note changes to rows already held (a collection's
moved or deleted files), kept in memory until the next publish; `publish` streams the published
rows and the staged ones, less the dropped rows and with the moved items, into new,
generation-numbered files, builds each model's FAISS index, and atomically replaces the
manifest. Memory stays a few MiB per step whatever the bank size, except for the FAISS index
itself while it is built.
"""

from __future__ import annotations

import itertools
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from ucl_cli import __version__
from ucl_cli.bank.files import (
    HashingWriter,
    iter_npy_rows,
    slug,
    write_npy_header,
)
from ucl_cli.bank.items import BankItem, KeySet, iter_item_lines, iter_items
from ucl_cli.bank.lock import BankLock
from ucl_cli.bank.manifest import (
    MANIFEST_NAME,
    FileRecord,
    Manifest,
    ModelRecord,
    kind_for,
    model_mismatch,
    now_iso,
    read_manifest,
)
from ucl_cli.bank.norms import largest_row_norm
from ucl_cli.bank.row_changes import RowChanges
from ucl_cli.bank.search_index import build_index, check_factory, choose_factory, write_index
from ucl_cli.bank.staging import Staging, discard_staging
from ucl_cli.digests import remember
from ucl_cli.errors import BankError, UsageError
from ucl_cli.files import (
    atomic_write_json,
    fsync_dir,
    publish_file,
    sha256_file,
    temporary_path,
)

# Files a writer may leave behind; anything else in a bank directory is never touched.
DATA_FILE = re.compile(
    r"^(items\.\d+\.jsonl|m\d+-.+\.\d+\.(npy|faiss)|manifest\.json)(\.tmp-\d+)?$"
)
# Rows further than NORM_TOLERANCE from unit norm are refused (a model bug); rows further than
# RENORMALISE_ABOVE are renormalised in float64 on write, so stored rows are unit norm to float32
# rounding (the manifest records the largest norm for the bounds that need it).
NORM_TOLERANCE = 1e-3
RENORMALISE_ABOVE = 1e-6
FileTable = dict[str, FileRecord]


@dataclass(frozen=True)
class WriterOptions:
    modality: str = "text"
    faiss_index: str | None = None  # None: keep the bank's choice ("auto" for a new bank)
    lock_timeout: float | None = None  # None: wait for another writer; 0: fail at once
    replace: bool = False  # start from an empty bank instead of extending the published one
    commit_seconds: float = 1.0  # sync staged batches at most this often (0: after every batch)
    on_wait: Callable[[str], None] | None = None  # called once if the lock is busy


class HeldRows:
    """What a writer knows of the rows it holds, published and staged, whichever way it stores
    them (one bank, or shards): the content keys it holds, rows moved to a new path and rows to
    drop at the next publish. Subclasses set `changes` and `keys` and define `iter_rows` and
    `_check_row`."""

    changes: RowChanges
    keys: KeySet

    def move_row(self, row: int, item: BankItem) -> None:
        """Give row `row` a new item of the same key (a moved file's new path): its vectors
        stay, nothing is embedded again."""
        self._check_row(row)
        self.changes.moved[row] = item

    def drop_rows(self, rows: Iterable[int]) -> None:
        """Leave these rows out of the next publish (vectors, FAISS indexes and items alike)."""
        rows = set(rows)
        for row in rows:
            self._check_row(row)
        if rows <= self.changes.dropped:
            return
        self.changes.dropped |= rows
        # A dropped item is no longer held: indexing it again must embed it again.
        kept = (item.key for row, item in self.iter_rows() if row not in self.changes.dropped)
        self.keys = KeySet(kept)

    def contains(self, key: str) -> bool:
        return key in self.keys

    def contains_many(self, keys: Sequence[str]) -> np.ndarray:
        """Boolean [len(keys)]: which keys the bank (published or staged) already holds."""
        return self.keys.contains_many(keys)


class BankWriter(HeldRows):
    """Exclusive, crash-safe writer of one bank directory (use as a context manager)."""

    def __init__(self, bank_dir: Path, models: Sequence[ModelRecord], options: WriterOptions):
        self.dir = Path(bank_dir)
        self.options = options
        self._lock = BankLock(self.dir, timeout=options.lock_timeout, on_wait=options.on_wait)
        self.requested = tuple(models)
        self.published: Manifest | None = None
        self.models: tuple[ModelRecord, ...] = self.requested
        self.staging: Staging | None = None
        self.recovered_rows = 0
        self.keys = KeySet()
        self._last_commit = time.monotonic()
        # Drops and moves of rows already held, applied by the next publish. Rows are numbered
        # as `iter_rows` yields them; only a publish renumbers them, and it clears the changes.
        self.changes = RowChanges()

    def __enter__(self) -> BankWriter:
        self._lock.acquire()
        try:
            self._open()
        except BaseException:
            self._lock.release(remove_if_empty=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if self.staging is not None:
                self.commit()  # rows a failed publish left staged wait for the next run
                self.staging.close()
        finally:
            self._lock.release(remove_if_empty=True)  # a run that left no rows leaves no trace

    @property
    def committed_rows(self) -> int:
        return 0 if self.published is None or self.options.replace else self.published.count

    @property
    def staged_rows(self) -> int:
        return 0 if self.staging is None else self.staging.rows

    @property
    def rows(self) -> int:
        """Rows held now, published and staged (dropped ones included until the publish)."""
        return self.committed_rows + self.staged_rows

    @property
    def changed_rows(self) -> int:
        """Rows dropped or moved since the last publish (the next publish applies them)."""
        return len(self.changes)

    def iter_rows(self) -> Iterator[tuple[int, BankItem]]:
        """(row, item) for every row held, published first, then staged; moves applied."""
        sources = []
        if self.published is not None and not self.options.replace:
            sources.append(iter_items(self.dir / self.published.items_file))
        if self.staging is not None:
            sources.append(self.staging.iter_items())
        for row, item in enumerate(itertools.chain.from_iterable(sources)):
            yield row, self.changes.moved.get(row, item)

    def commit(self) -> None:
        """Make the rows added so far survive a crash of this process (see `staging`)."""
        if self.staging is not None:
            self.staging.commit()
            self._last_commit = time.monotonic()

    def add(self, items: Sequence[BankItem], matrices: Sequence[np.ndarray]) -> None:
        """Stage one batch: `matrices[i]` holds model `self.models[i]`'s rows for `items`."""
        if len(matrices) != len(self.models):
            raise UsageError(f"got {len(matrices)} matrices for {len(self.models)} models")
        checked = [
            _checked_rows(matrix, model, len(items))
            for matrix, model in zip(matrices, self.models, strict=True)
        ]
        if self.staging is None:
            generation = 0 if self.published is None else self.published.generation
            self.staging = Staging.start(self.dir, generation, self.options.modality, self.models)
        self.staging.append(items, checked)
        for item in items:
            self.keys.add(item.key)
        if time.monotonic() - self._last_commit >= self.options.commit_seconds:
            self.commit()

    def publish(self) -> Manifest | None:
        """Make every staged row, drop and move part of the bank in one atomic step; None if
        nothing changed."""
        if self.staged_rows == 0 and not self.options.replace and not self.changed_rows:
            return self.published
        if self.staging is not None:
            self.staging.flush()  # publishing reads the staging files back
        previous = self.published
        base = None if self.options.replace else previous
        generation = (0 if previous is None else previous.generation) + 1
        count = (0 if base is None else base.count) + self.staged_rows - len(self.changes.dropped)
        request = self.options.faiss_index or (base.faiss_request if base else "auto")
        factory = choose_factory(request, count)
        files: FileTable = {}
        items_file = self._write_items(base, generation, files)
        vector_files, index_files, max_norms = [], [], []
        for position, model in enumerate(self.models):
            name = f"m{position}-{slug(model.key)}.{generation:06d}"
            vectors, max_norm = self._write_vectors(base, position, f"{name}.npy", count, files)
            vector_files.append(vectors)
            max_norms.append(max_norm)
            index = build_index(self.dir / vector_files[-1], model.dim, count, factory)
            index_files.append(self._write_index(index, f"{name}.faiss", files))
            del index
        manifest = Manifest(
            modality=self.options.modality,
            kind=kind_for(self.options.modality),
            count=count,
            generation=generation,
            models=self.models,
            faiss_index=factory,
            faiss_request=request,
            items_file=items_file,
            vector_files=tuple(vector_files),
            index_files=tuple(index_files),
            files=files,
            created=previous.created if previous else now_iso(),
            updated=now_iso(),
            ucl_version=__version__,
            max_norms=tuple(max_norms),
        )
        atomic_write_json(self.dir / MANIFEST_NAME, manifest.to_json())
        self.published = manifest
        self.options = _replace_done(self.options)
        self.changes = RowChanges()
        if self.staging is not None:
            self.staging.discard()
            self.staging = None
        self._remove_unreferenced()
        return manifest

    # -- opening ---------------------------------------------------------------------------

    def _open(self) -> None:
        if (self.dir / MANIFEST_NAME).exists():
            self.published = read_manifest(self.dir)
        self._remove_unreferenced()
        if self.published is not None and not self.options.replace:
            self._adopt_models(self.published.models, self.published.modality, "bank")
        if (self.options.faiss_index or "auto").lower() != "auto":
            for model in self.models:
                check_factory(self.options.faiss_index, model.dim)
        self._recover_staging()
        if self.published is not None and not self.options.replace:
            for item in iter_items(self.dir / self.published.items_file):
                self.keys.add(item.key)

    def _adopt_models(self, held: Sequence[ModelRecord], modality: str, what: str) -> None:
        """Use the bank's model order; refuse a run whose models or modality differ from it."""
        subject = f"{what} {self.dir}" if what == "bank" else f"the interrupted run in {self.dir}"
        if modality != self.options.modality:  # first: a collection's models differ with it
            raise BankError(
                f"{subject} holds {modality} rows ({kind_for(modality)}); this run indexes "
                f"{self.options.modality}"
            )
        problem = model_mismatch(held, self.requested, bank=subject, user="this run", exact=True)
        if problem is not None:
            raise BankError(problem)
        self.models = tuple(held)

    def _recover_staging(self) -> None:
        staging = Staging.recover(self.dir)
        if staging is None:
            discard_staging(self.dir)  # unreadable leftovers of a run that never committed
            return
        generation = 0 if self.published is None else self.published.generation
        if staging.state.base_generation != generation or self.options.replace:
            staging.discard()  # already published (crash after publishing), or being replaced
            return
        self._adopt_models(staging.state.models, staging.state.modality, "staging")
        self.staging = staging
        self.recovered_rows = staging.rows
        for item in staging.iter_items():
            self.keys.add(item.key)

    # -- publishing ------------------------------------------------------------------------

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} is outside bank {self.dir} of {self.rows} rows")

    def _write_items(self, base: Manifest | None, generation: int, files: FileTable) -> str:
        name = f"items.{generation:06d}.jsonl"
        tmp = temporary_path(self.dir / name)
        with HashingWriter(tmp) as out:
            if self.changed_rows:
                out.writelines(self._changed_item_lines(base))
            else:  # the common case: copy the files as they are
                if base is not None:
                    with open(self.dir / base.items_file, "rb") as source:
                        shutil.copyfileobj(source, out)
                if self.staging is not None:
                    out.writelines(
                        iter_item_lines(self.staging.items_path, self.staging.state.items_bytes)
                    )
        return self._publish(tmp, name, files, FileRecord(out.sha256, out.size))

    def _changed_item_lines(self, base: Manifest | None) -> Iterator[bytes]:
        lines = []
        if base is not None:
            lines.append(iter_item_lines(self.dir / base.items_file))
        if self.staging is not None:
            lines.append(iter_item_lines(self.staging.items_path, self.staging.state.items_bytes))
        return self.changes.item_lines(itertools.chain.from_iterable(lines))

    def _write_vectors(
        self, base: Manifest | None, position: int, name: str, count: int, files: FileTable
    ) -> tuple[str, float]:
        """Write one model's matrix; returns its name and its rows' largest norm (rounded up)."""
        dim = self.models[position].dim
        tmp = temporary_path(self.dir / name)
        chunks = []
        if base is not None:
            chunks.append(iter_npy_rows(self.dir / base.vector_files[position], dim))
        if self.staging is not None:
            chunks.append(self.staging.iter_vectors(position))
        largest = 0.0
        with HashingWriter(tmp) as out:
            write_npy_header(out, count, dim)
            for chunk in self.changes.kept_rows(itertools.chain.from_iterable(chunks)):
                largest = max(largest, largest_row_norm(chunk))
                out.write(chunk.tobytes())
        return self._publish(tmp, name, files, FileRecord(out.sha256, out.size)), largest

    def _write_index(self, index: object, name: str, files: FileTable) -> str:
        tmp = temporary_path(self.dir / name)
        write_index(index, tmp)
        return self._publish(tmp, name, files, FileRecord(sha256_file(tmp), tmp.stat().st_size))

    def _publish(self, tmp: Path, name: str, files: FileTable, record: FileRecord) -> str:
        publish_file(tmp, self.dir / name)
        files[name] = record
        remember(self.dir / name, record.sha256)  # checksummed on the way: readers need not
        return name

    def _remove_unreferenced(self) -> None:
        """Delete data files the manifest does not name (older generations, crashed writes).

        Readers that loaded an older generation keep their open files (see `store.Bank`).
        """
        if not self.dir.is_dir():
            return
        keep = {MANIFEST_NAME} | (set(self.published.files) if self.published else set())
        for path in self.dir.iterdir():
            if DATA_FILE.match(path.name) and path.name not in keep:
                path.unlink(missing_ok=True)
        fsync_dir(self.dir)


def _checked_rows(matrix: np.ndarray, model: ModelRecord, count: int) -> np.ndarray:
    """Refuse rows that would silently corrupt a bank: wrong shape, NaN, or not unit norm."""
    rows = np.asarray(matrix, dtype=np.float32)
    if rows.shape != (count, model.dim):
        raise BankError(
            f"{model.key} gave vectors of shape {tuple(rows.shape)}; the bank needs "
            f"[{count}, {model.dim}]"
        )
    wide = rows.astype(np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", wide, wide))
    bad = np.flatnonzero(~np.isfinite(norms) | (np.abs(norms - 1) > NORM_TOLERANCE))
    if bad.size:
        raise BankError(
            f"{model.key} gave a vector of norm {norms[bad[0]]:.4g} for batch row {bad[0]}; "
            "bank rows must be finite and unit norm"
        )
    off = np.abs(norms - 1) > RENORMALISE_ABOVE
    if off.any():  # unit-norm rows are stored bit for bit as given
        rows = rows.copy()
        rows[off] = (wide[off] / norms[off, None]).astype(np.float32)
    return rows


def _replace_done(options: WriterOptions) -> WriterOptions:
    """After the first publish of a `replace` run, later publishes extend it."""
    return replace(options, replace=False) if options.replace else options
