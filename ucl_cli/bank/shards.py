"""Sharded banks: one bank (or collection) stored as shards, each a complete small bank.

A sharded bank is a directory whose `manifest.json` lists its shards instead of its files:

    manifest.json        {"format": "ucl-sharded-bank", modality, kind, count, generation,
                          models, shard_size, and per shard: name, rows, the SHA-256 of the
                          shard's own manifest.json and its FAISS index string}
    shard-000000/        a complete bank: its own manifest, items, vectors, FAISS indexes,
    shard-000001/        loadable on its own with `load_bank` (what a Ray actor opens)
    pending.json         the shard a writer is filling now (crash recovery), if any
    .lock                held by the one process writing the bank

Rows are numbered across shards in the order the manifest lists them. A listed shard is never
modified: a writer fills a new shard directory (seeded with hard links to the last shard's files
when that one is not full yet, or to a shard whose rows moved or were dropped), publishes it as
a bank of its own, and then replaces the top-level manifest atomically; shard directories no
manifest lists are removed afterwards. So readers see one published state or the next, and a
killed writer leaves no half-written shard visible (its pending shard is resumed by the next
run, as an unsharded bank's staged rows are).

Reading: `load_bank` dispatches here; a `ShardedBank` has `Bank`'s interface (the query
pipeline, eval and calibrate use it unchanged). Each shard's manifest is checked against the
SHA-256 the top-level manifest records, and each shard's files against its own manifest, as an
unsharded bank's are. `vectors(model)` concatenates the shards' matrices on first use (in
memory, read-only); `index(model)` is an exact inner-product index over them (a Flat index:
the shards' own IVF indexes each have their own lists, which no single certified search can
visit together yet), so `topk` over a sharded bank searches exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ucl_cli import __version__
from ucl_cli.bank.items import BankItem, KeySet, iter_items
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
from ucl_cli.bank.row_changes import RowChanges
from ucl_cli.bank.staging import Staging
from ucl_cli.bank.store import BankBase
from ucl_cli.bank.writer import BankWriter, HeldRows, WriterOptions
from ucl_cli.errors import BankError, UsageError
from ucl_cli.files import atomic_write_json, fsync_dir

if TYPE_CHECKING:
    import faiss

    from ucl_cli.bank.joined_nearest import JoinedNearest
    from ucl_cli.bank.store import Bank, ModelRef, Verify
    from ucl_cli.encoders.base import Encoder

SHARDED_FORMAT = "ucl-sharded-bank"
SHARDED_VERSION = 1
PENDING_NAME = "pending.json"
SHARD_NAME = re.compile(r"^shard-\d{6,}$")
OPEN_ATTEMPTS = 5
SEED_BATCH_ROWS = 65_536


@dataclass(frozen=True)
class ShardRecord:
    """One shard as the top-level manifest lists it."""

    name: str  # its directory, inside the bank's
    count: int
    manifest_sha256: str  # of the shard's own manifest.json: pins every file of the shard
    faiss_index: str = "Flat"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "count": self.count,
            "manifest_sha256": self.manifest_sha256,
            "faiss_index": self.faiss_index,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ShardRecord:
        name = str(value["name"])
        if not SHARD_NAME.match(name):  # a manifest must not point a reader or writer elsewhere
            raise ValueError(f"shard name {name!r}")
        return cls(
            name, int(value["count"]), str(value["manifest_sha256"]), str(value["faiss_index"])
        )


@dataclass(frozen=True)
class ShardedManifest:
    """A published state of a sharded bank. Read by the same callers as `Manifest` (`ucl banks`,
    eval's provenance, calibrations), so it answers the same questions: count, modality, kind,
    models, dates, and `files`/`items_file`/`vector_files` as `content_fingerprint` reads them
    (one entry per shard, whose checksum is its manifest's: any row changed changes it)."""

    modality: str
    count: int
    generation: int
    models: tuple[ModelRecord, ...]
    shards: tuple[ShardRecord, ...]
    shard_size: int
    faiss_request: str
    next_shard: int  # the number of the next shard directory (names are never reused)
    created: str
    updated: str
    ucl_version: str
    format_version: int = SHARDED_VERSION
    kind: str = ""

    def __post_init__(self) -> None:
        if not self.kind:
            object.__setattr__(self, "kind", kind_for(self.modality))
        if sum(shard.count for shard in self.shards) != self.count:
            raise ValueError(f"count {self.count} (the shards hold another number of rows)")

    def model_keys(self) -> list[str]:
        return [model.key for model in self.models]

    @property
    def faiss_index(self) -> str:
        """The shards' index strings ("Flat", or "Flat, IVF1024,Flat" when they differ)."""
        return ", ".join(dict.fromkeys(shard.faiss_index for shard in self.shards)) or "Flat"

    @property
    def items_file(self) -> str:
        return ""

    @property
    def vector_files(self) -> tuple[str, ...]:
        return tuple(shard.name for shard in self.shards)

    @property
    def files(self) -> dict[str, FileRecord]:
        return {shard.name: FileRecord(shard.manifest_sha256, 0) for shard in self.shards}

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SHARDED_FORMAT,
            "format_version": self.format_version,
            "ucl_version": self.ucl_version,
            "modality": self.modality,
            "kind": self.kind,
            "count": self.count,
            "generation": self.generation,
            "created": self.created,
            "updated": self.updated,
            "shard_size": self.shard_size,
            "faiss_request": self.faiss_request,
            "next_shard": self.next_shard,
            "models": [model.to_json() for model in self.models],
            "shards": [shard.to_json() for shard in self.shards],
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ShardedManifest:
        return cls(
            format_version=int(value["format_version"]),
            ucl_version=str(value.get("ucl_version", "unknown")),
            modality=str(value["modality"]),
            kind=str(value.get("kind") or ""),
            count=int(value["count"]),
            generation=int(value["generation"]),
            created=str(value["created"]),
            updated=str(value["updated"]),
            shard_size=int(value["shard_size"]),
            faiss_request=str(value.get("faiss_request", "auto")),
            next_shard=int(value["next_shard"]),
            models=tuple(ModelRecord.from_json(model) for model in value["models"]),
            shards=tuple(ShardRecord.from_json(shard) for shard in value["shards"]),
        )


def _read_json(path: Path) -> Any:
    try:
        return json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def is_sharded(path: str | Path) -> bool:
    """Whether the directory holds a sharded bank (False for anything else, readable or not:
    `read_manifest` then says what is wrong)."""
    value = _read_json(Path(path).expanduser())
    return isinstance(value, dict) and value.get("format") == SHARDED_FORMAT


def read_sharded_manifest(bank_dir: Path) -> ShardedManifest:
    """Parse a sharded bank's top-level manifest, saying in one sentence why it cannot be."""
    path = bank_dir / MANIFEST_NAME
    value = _read_json(bank_dir)
    if not isinstance(value, dict) or value.get("format") != SHARDED_FORMAT:
        read_manifest(bank_dir)  # raises the precise reason (missing, not JSON, not a bank)
        raise BankError(f"bank {bank_dir} is not sharded (it was built without --shard-size)")
    version = value.get("format_version")
    if not isinstance(version, int) or version > SHARDED_VERSION:
        raise BankError(
            f"sharded bank {bank_dir} uses format version {version}; this ucl reads versions up "
            f"to {SHARDED_VERSION} (upgrade ucl)"
        )
    try:
        return ShardedManifest.from_json(value)
    except (KeyError, TypeError, ValueError) as err:
        raise BankError(f"{path} is corrupt: missing or malformed field {err}") from None


def read_any_manifest(bank_dir: Path) -> Manifest | ShardedManifest:
    """The manifest of a bank, sharded or not: what listing and model lookups read."""
    return read_sharded_manifest(bank_dir) if is_sharded(bank_dir) else read_manifest(bank_dir)


def manifest_digest(shard_dir: Path) -> str:
    """SHA-256 of a shard's manifest.json (which pins every other file of the shard)."""
    try:
        return hashlib.sha256((shard_dir / MANIFEST_NAME).read_bytes()).hexdigest()
    except FileNotFoundError:
        raise BankError(f"shard {shard_dir} is missing ({MANIFEST_NAME} is gone)") from None


# -- reading -------------------------------------------------------------------------------------


class ShardedBank(BankBase):
    """A published sharded bank with `Bank`'s interface; row m is row m - offset of the shard
    that holds it. The shards are opened (and checked) when the bank is, so a writer publishing
    meanwhile does not disturb it."""

    def __init__(
        self,
        path: Path,
        manifest: ShardedManifest,
        shards: Sequence[Bank],
        *,
        check_weights: bool = True,
    ):
        self.path = path
        self.manifest = manifest
        self.shards = list(shards)
        self.check_weights = check_weights
        self.offsets = np.cumsum([0] + [len(shard) for shard in self.shards])
        self._vectors: dict[int, np.ndarray] = {}
        self._indexes: dict[int, faiss.Index] = {}

    @property
    def shard_paths(self) -> list[Path]:
        return [shard.path for shard in self.shards]

    def __repr__(self) -> str:
        keys = ", ".join(self.manifest.model_keys())
        return (
            f"ShardedBank({str(self.path)!r}, {len(self)} items in {len(self.shards)} shards, "
            f"models: {keys})"
        )

    def row_norm(self, model: ModelRef) -> float:
        """The largest row norm of any shard (each shard's manifest records its own)."""
        key = self.models[self.position(model)].key
        return max(shard.row_norm(key) for shard in self.shards)

    def vectors(self, model: ModelRef) -> np.ndarray:
        """Read-only float32 [M, dim]: the shards' memory maps concatenated on first use (one
        shard's is returned as it is). A collection's rows are a `JoinedRows` view instead:
        the searches over it read slices and picked rows, so the whole library is never
        copied into this process's memory."""
        position = self.position(model)
        if position not in self._vectors:
            key = self.models[position].key
            parts = [shard.vectors(key) for shard in self.shards]
            if len(parts) == 1:
                matrix = parts[0]
            elif self.kind == "collection":
                matrix = JoinedRows(parts)
            else:
                matrix = np.concatenate(parts)
                matrix.flags.writeable = False
            self._vectors[position] = matrix
        return self._vectors[position]

    def index(self, model: ModelRef, *, keep: bool = True) -> faiss.Index:
        """An exact inner-product (Flat) index over every shard's rows, ids = global rows."""
        from ucl_cli.bank.search_index import faiss_module

        position = self.position(model)
        if position in self._indexes:
            return self._indexes[position]
        matrix = self.vectors(self.models[position].key)
        index = faiss_module().IndexFlatIP(matrix.shape[1])
        index.add(np.ascontiguousarray(matrix, dtype=np.float32))
        if keep:
            self._indexes[position] = index
        return index

    def nearest(self, model: ModelRef, device: str = "cpu") -> JoinedNearest:
        """Certified nearest-row search for `topk`: each shard searches its own saved index
        (IVF or Flat) and certifies what it skipped; the joined result certifies every row."""
        from ucl_cli.bank.joined_nearest import JoinedNearest

        key = self.models[self.position(model)].key
        parts = [shard.nearest(key, device) for shard in self.shards]
        return JoinedNearest(parts, [len(shard) for shard in self.shards], self.row_norm(key))

    def index_sha256(self, model: ModelRef) -> str | None:
        """None: the Flat index is built in memory, and has no file to key a scan by."""
        self.position(model)
        return None

    def content_key(self, model: ModelRef) -> str | None:
        """What names one model's rows by content: the shards' own keys, in order (None when a
        shard's manifest does not record them)."""
        key = self.models[self.position(model)].key
        parts = [shard.content_key(key) for shard in self.shards]
        if any(part is None for part in parts):
            return None
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def search(
        self, model: ModelRef, queries: np.ndarray, k: int, *, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        from ucl_cli.bank.search_index import search

        return search(self.index(model), queries, min(k, max(len(self), 1)), nprobe=nprobe)

    def items(self) -> Iterator[BankItem]:
        for shard in self.shards:
            yield from shard.items()

    def item(self, row: int) -> BankItem:
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} is outside bank {self.name} of {len(self)} rows")
        shard = int(np.searchsorted(self.offsets, row, side="right")) - 1
        return self.shards[shard].item(row - int(self.offsets[shard]))

    def texts(self, rows: Sequence[int]) -> list[str]:
        return [self.item(int(row)).text for row in rows]

    def close(self) -> None:
        for shard in self.shards:
            shard.close()
        self._vectors.clear()
        self._indexes.clear()

    def __enter__(self) -> ShardedBank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class JoinedRows:
    """Several row-aligned matrices read as one [sum of rows, dim] matrix, without copying them
    together: a slice or a list of rows is gathered from the parts that hold it (what a
    collection's searches read). Read-only, like the memory maps it joins."""

    def __init__(self, parts: Sequence[np.ndarray]):
        self.parts = list(parts)
        self.offsets = np.cumsum([0] + [len(part) for part in self.parts])
        self.dtype = self.parts[0].dtype
        self.shape = (int(self.offsets[-1]), int(self.parts[0].shape[1]))
        self.ndim = 2

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        joined = np.concatenate(self.parts)
        return joined if dtype is None else joined.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            if step != 1:
                return self[np.arange(start, stop, step)]
            pieces = []
            for part, first in zip(self.parts, self.offsets, strict=False):
                lo, hi = max(start - first, 0), min(stop - first, len(part))
                if lo < hi:
                    pieces.append(part[lo:hi])
            if not pieces:
                return np.empty((0, self.shape[1]), dtype=self.dtype)
            return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
        if isinstance(key, (int, np.integer)):
            row = int(key) + len(self) if key < 0 else int(key)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} is outside {len(self)} rows")
            part = int(np.searchsorted(self.offsets, row, side="right")) - 1
            return self.parts[part][row - self.offsets[part]]
        rows = np.asarray(key)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        rows = np.where(rows < 0, rows + len(self), rows).astype(np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside {len(self)} rows")
        out = np.empty((len(rows), self.shape[1]), dtype=self.dtype)
        which = np.searchsorted(self.offsets, rows, side="right") - 1
        for part in np.unique(which):
            mine = which == part
            out[mine] = self.parts[part][rows[mine] - self.offsets[part]]
        return out


def load_sharded_bank(
    path: str | Path, *, verify: Verify = "now", check_weights: bool = True
) -> ShardedBank:
    """Open every shard the top-level manifest lists, each checked against the digest it
    records and against the bank's models; a writer publishing meanwhile makes this read the
    new manifest (its old shards may be gone)."""
    bank_dir = Path(path).expanduser()
    for attempt in range(OPEN_ATTEMPTS):
        manifest = read_sharded_manifest(bank_dir)
        opened: list[Bank] = []
        try:
            for record in manifest.shards:
                opened.append(open_shard(bank_dir, manifest, record, verify, check_weights))
        except BankError:
            for shard in opened:
                shard.close()
            if attempt + 1 < OPEN_ATTEMPTS and _changed(bank_dir, manifest):
                continue
            raise
        return ShardedBank(bank_dir, manifest, opened, check_weights=check_weights)
    raise BankError(f"bank {bank_dir} keeps changing while being opened; try again")


def _changed(bank_dir: Path, manifest: ShardedManifest) -> bool:
    try:
        return read_sharded_manifest(bank_dir) != manifest
    except BankError:
        return True


def open_shard(
    bank_dir: Path,
    manifest: ShardedManifest,
    record: ShardRecord,
    verify: Verify = "on_read",
    check_weights: bool = True,
) -> Bank:
    """One listed shard, opened as the bank it is, after checking it is the shard the top-level
    manifest names (its manifest's SHA-256, rows, modality and models)."""
    from ucl_cli.bank.store import load_bank

    shard_dir = bank_dir / record.name
    digest = manifest_digest(shard_dir)
    if digest != record.manifest_sha256:
        raise BankError(
            f"bank {bank_dir} is corrupt: {record.name}/{MANIFEST_NAME} has SHA-256 "
            f"{digest[:12]}…; the top-level manifest says {record.manifest_sha256[:12]}…"
        )
    shard = load_bank(shard_dir, verify=verify, check_weights=check_weights)
    problem = None
    if len(shard) != record.count:
        problem = f"holds {len(shard)} rows; the top-level manifest says {record.count}"
    elif shard.modality != manifest.modality:
        problem = f"holds {shard.modality} rows; the bank holds {manifest.modality}"
    elif [m.key for m in shard.models] != manifest.model_keys() or not all(
        mine.same_vectors_as(theirs)
        for mine, theirs in zip(shard.models, manifest.models, strict=True)
    ):
        problem = "was embedded by other models than the bank's"
    if problem is not None:
        shard.close()
        raise BankError(f"bank {bank_dir} is inconsistent: shard {record.name} {problem}")
    return shard


def staged_rows(bank_dir: Path, manifest: ShardedManifest) -> int:
    """Rows an interrupted writer left in its pending shard (`ucl banks` says so)."""
    pending = _read_pending(bank_dir)
    if pending is None or pending.get("generation") != manifest.generation:
        return 0
    shard_dir = bank_dir / str(pending.get("shard"))
    state = Staging.read_state(shard_dir)
    return 0 if state is None else state.rows


def _read_pending(bank_dir: Path) -> dict[str, Any] | None:
    try:
        value = json.loads((bank_dir / PENDING_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(value, dict) or not SHARD_NAME.match(str(value.get("shard"))):
        return None
    return value


# -- writing -------------------------------------------------------------------------------------


def open_writer(
    bank_dir: Path,
    models: Sequence[ModelRecord],
    options: WriterOptions,
    shard_size: int | None = None,
) -> BankWriter | ShardedWriter:
    """The writer of a bank: sharded when `shard_size` is given or the bank already is."""
    if shard_size is not None or is_sharded(bank_dir):
        return ShardedWriter(bank_dir, models, options, shard_size)
    return BankWriter(bank_dir, models, options)


class ShardedWriter(HeldRows):
    """Exclusive, crash-safe writer of a sharded bank, with `BankWriter`'s interface (what
    `index_items` and `GoneFiles` use). New rows fill a pending shard of at most `shard_size`
    rows (the last shard when it has room, copied first); a full shard is published at once.
    Moved and dropped rows of listed shards are applied by rewriting those shards."""

    def __init__(
        self,
        bank_dir: Path,
        models: Sequence[ModelRecord],
        options: WriterOptions,
        shard_size: int | None = None,
    ):
        if shard_size is not None and shard_size < 1:
            raise UsageError(f"--shard-size must be at least 1, got {shard_size}")
        if options.replace:
            raise UsageError("a sharded bank is extended, not replaced: write a new bank instead")
        self.dir = Path(bank_dir)
        self.options = options
        self.requested_size = shard_size
        self.shard_size = shard_size or 0
        self.models: tuple[ModelRecord, ...] = tuple(models)
        self._lock = BankLock(self.dir, timeout=options.lock_timeout, on_wait=options.on_wait)
        self.published: ShardedManifest | None = None
        self.recovered_rows = 0
        self.keys = KeySet()
        self.changes = RowChanges()  # global row numbers, as `iter_rows` numbers them
        self._pending: BankWriter | None = None
        self._pending_name: str | None = None
        self._replaces: ShardRecord | None = None  # the listed shard the pending one extends
        self._next_shard = 0

    # -- the BankWriter interface ---------------------------------------------------------------

    def __enter__(self) -> ShardedWriter:
        self._lock.acquire()
        try:
            self._open()
        except BaseException:
            self._close_pending()
            self._lock.release(remove_if_empty=True)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._close_pending()  # its staged rows wait for the next run (pending.json)
        finally:
            self._lock.release(remove_if_empty=True)

    @property
    def committed_rows(self) -> int:
        return 0 if self.published is None else self.published.count

    @property
    def rows(self) -> int:
        frozen = sum(record.count for record in self._frozen())
        return frozen + (0 if self._pending is None else self._pending.rows)

    @property
    def staged_rows(self) -> int:
        return self.rows - self.committed_rows

    @property
    def changed_rows(self) -> int:
        return len(self.changes)

    def iter_rows(self) -> Iterator[tuple[int, BankItem]]:
        sources = [iter_items(self._items_path(record)) for record in self._frozen()]
        if self._pending is not None:
            sources.append(item for _, item in self._pending.iter_rows())
        for row, item in enumerate(itertools.chain.from_iterable(sources)):
            yield row, self.changes.moved.get(row, item)

    def commit(self) -> None:
        if self._pending is not None:
            self._pending.commit()

    def add(self, items: Sequence[BankItem], matrices: Sequence[np.ndarray]) -> None:
        """Stage rows into the pending shard; each shard that fills is published at once."""
        if len(matrices) != len(self.models):
            raise UsageError(f"got {len(matrices)} matrices for {len(self.models)} models")
        items = list(items)
        start = 0
        while start < len(items):
            pending = self._pending_writer()
            take = min(self.shard_size - pending.rows, len(items) - start)
            rows = slice(start, start + take)
            pending.add(items[rows], [np.asarray(matrix)[rows] for matrix in matrices])
            for item in items[rows]:
                self.keys.add(item.key)
            start += take
            if pending.rows >= self.shard_size:
                self.publish()

    def publish(self) -> ShardedManifest | None:
        """Publish the pending shard and every changed shard, then the top-level manifest, in
        one atomic step; None if the bank is still empty."""
        if self.staged_rows == 0 and not self.changes:
            return self.published
        previous = self.published
        offsets = np.cumsum([0] + [record.count for record in self._frozen()])
        shards: list[ShardRecord] = []
        for position, record in enumerate(self._frozen()):
            local = self._local_changes(int(offsets[position]), record.count)
            shards.extend([record] if not local else self._rewrite(record, local))
        if self._pending is not None:
            base = int(offsets[-1])
            local = self._local_changes(base, self._pending.rows)
            for row, item in local.moved.items():
                self._pending.move_row(row, item)
            if local.dropped:
                self._pending.drop_rows(local.dropped)
            shard_manifest = self._pending.publish()
            name = self._pending_name
            self._close_pending()
            if shard_manifest is not None and shard_manifest.count:
                shards.append(self._shard_record(name, shard_manifest))
        manifest = self._next_manifest(shards, previous)
        atomic_write_json(self.dir / MANIFEST_NAME, manifest.to_json())
        self.published = manifest
        self.changes = RowChanges()
        self._replaces = None
        (self.dir / PENDING_NAME).unlink(missing_ok=True)
        self._remove_unlisted()
        return manifest

    # -- shards written by other processes (`ucl_cli.distributed.indexing`) ----------------------

    def reserve_names(self, count: int) -> list[str]:
        """Names for `count` new shards that other processes write into this bank's directory
        under this writer's lock (the next publish records them as used)."""
        if self.staged_rows or self.changes:
            raise UsageError("publish the pending shard and the row changes before reserving")
        if self._pending is not None:  # an interrupted run's pending shard that added nothing
            self._close_pending()
            self._replaces = None
            (self.dir / PENDING_NAME).unlink(missing_ok=True)
        return [self._new_name() for _ in range(count)]

    def publish_shards(
        self, shards: Sequence[ShardRecord], *, tidy: bool = False
    ) -> ShardedManifest:
        """Publish a top-level manifest listing exactly `shards`, in one atomic step. Shards not
        listed now were written by other processes (`start_shard`) and are checked first as a
        reader checks a shard; a listed shard may be left out only for one that extends it.
        Unlisted shard directories are removed only with `tidy`: others may be being written."""
        if self._pending is not None or self.changes:
            raise UsageError("publish the pending shard and the row changes first")
        previous = self.published
        listed = {record.name: record for record in self._listed()}
        manifest = self._next_manifest(shards, previous)
        added = [record for record in shards if listed.get(record.name) != record]
        for record in added:
            if _shard_number(record.name) >= self._next_shard:
                raise BankError(f"shard {record.name} of bank {self.dir} was never reserved")
            open_shard(self.dir, manifest, record, verify="on_read").close()
        atomic_write_json(self.dir / MANIFEST_NAME, manifest.to_json())
        self.published = manifest
        for record in added:
            for item in iter_items(self._items_path(record)):
                self.keys.add(item.key)
        if tidy:
            self._remove_unlisted()
        return manifest

    # -- opening ----------------------------------------------------------------------------------

    def _open(self) -> None:
        if (self.dir / MANIFEST_NAME).exists():
            self.published = read_sharded_manifest(self.dir)  # an unsharded bank is refused
            self._adopt(self.published)
            self._next_shard = self.published.next_shard
        if not self.shard_size:
            raise UsageError(f"a new sharded bank needs --shard-size (bank {self.dir})")
        self._recover_pending()
        if self._pending is None:
            self._remove_unlisted()
        for record in self._frozen():
            for item in iter_items(self._items_path(record)):
                self.keys.add(item.key)
        if self._pending is not None:
            for _, item in self._pending.iter_rows():
                self.keys.add(item.key)

    def _adopt(self, manifest: ShardedManifest) -> None:
        """The bank's models and shard size (unless a new size is asked for new shards)."""
        if manifest.modality != self.options.modality:
            raise BankError(
                f"bank {self.dir} holds {manifest.modality} rows ({manifest.kind}); this run "
                f"indexes {self.options.modality}"
            )
        problem = model_mismatch(
            manifest.models, self.models, bank=f"bank {self.dir}", user="this run", exact=True
        )
        if problem is not None:
            raise BankError(problem)
        self.models = manifest.models
        self.shard_size = self.requested_size or manifest.shard_size

    def _recover_pending(self) -> None:
        """Resume the pending shard of an interrupted run of the same generation."""
        pending = _read_pending(self.dir)
        generation = 0 if self.published is None else self.published.generation
        if pending is None or pending.get("generation") != generation:
            (self.dir / PENDING_NAME).unlink(missing_ok=True)
            return
        listed = {record.name: record for record in self._listed()}
        replaces = pending.get("replaces")
        if replaces is not None and replaces not in listed:
            (self.dir / PENDING_NAME).unlink(missing_ok=True)
            return
        name = str(pending["shard"])
        seeded = (self.dir / name / MANIFEST_NAME).exists()  # linked last: all files are there
        if name in listed or not (self.dir / name).is_dir() or (replaces and not seeded):
            (self.dir / PENDING_NAME).unlink(missing_ok=True)
            return
        self._replaces = None if replaces is None else listed[replaces]
        self._start_pending(name, seed=False)
        seeded = 0 if self._replaces is None else self._replaces.count
        self.recovered_rows = max(0, self._pending.rows - seeded)
        self._next_shard = max(self._next_shard, _shard_number(name) + 1)

    # -- shards -----------------------------------------------------------------------------------

    def _listed(self) -> list[ShardRecord]:
        return [] if self.published is None else list(self.published.shards)

    def _frozen(self) -> list[ShardRecord]:
        """The listed shards that stay as they are (all but the one the pending shard extends)."""
        return [record for record in self._listed() if record != self._replaces]

    def _items_path(self, record: ShardRecord) -> Path:
        return self.dir / record.name / read_manifest(self.dir / record.name).items_file

    def _pending_writer(self) -> BankWriter:
        """The shard new rows go into: the last listed shard's copy while it has room."""
        if self._pending is None:
            listed = self._listed()
            last = listed[-1] if listed else None
            if last is not None and last.count < self.shard_size and not self._touches(last):
                self._replaces = last
            name = self._new_name()
            atomic_write_json(
                self.dir / PENDING_NAME,
                {
                    "shard": name,
                    "replaces": None if self._replaces is None else self._replaces.name,
                    "generation": 0 if self.published is None else self.published.generation,
                },
            )
            self._start_pending(name, seed=True)
        assert self._pending is not None
        return self._pending

    def _touches(self, record: ShardRecord) -> bool:
        """Whether a change is noted for one of this listed shard's rows."""
        offsets = np.cumsum([0] + [r.count for r in self._frozen()])
        position = self._frozen().index(record)
        return bool(self._local_changes(int(offsets[position]), record.count))

    def _start_pending(self, name: str, *, seed: bool) -> None:
        shard_dir = self.dir / name
        if seed and self._replaces is not None:
            _link_shard(self.dir / self._replaces.name, shard_dir)
        self._pending = BankWriter(shard_dir, self.models, self.shard_options())
        self._pending.__enter__()
        self._pending_name = name

    def _close_pending(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.__exit__(None, None, None)

    def _rewrite(self, record: ShardRecord, local: RowChanges) -> list[ShardRecord]:
        """A listed shard with its moves and drops applied, as a new shard (none if every row
        was dropped)."""
        if len(local.dropped) >= record.count:
            return []
        name = self._new_name()
        _link_shard(self.dir / record.name, self.dir / name)
        with BankWriter(self.dir / name, self.models, self.shard_options()) as writer:
            for row, item in local.moved.items():
                writer.move_row(row, item)
            if local.dropped:
                writer.drop_rows(local.dropped)
            shard_manifest = writer.publish()
        assert shard_manifest is not None
        return [self._shard_record(name, shard_manifest)]

    def _local_changes(self, start: int, count: int) -> RowChanges:
        """The changes to global rows [start, start + count), numbered from the shard's first."""
        local = RowChanges()
        inside = range(start, start + count)
        local.moved = {
            row - start: item for row, item in self.changes.moved.items() if row in inside
        }
        local.dropped = {row - start for row in self.changes.dropped if row in inside}
        return local

    def _next_manifest(
        self, shards: Sequence[ShardRecord], previous: ShardedManifest | None
    ) -> ShardedManifest:
        """The top-level manifest that lists `shards`, one generation after `previous`."""
        return ShardedManifest(
            modality=self.options.modality,
            count=sum(record.count for record in shards),
            generation=(0 if previous is None else previous.generation) + 1,
            models=self.models,
            shards=tuple(shards),
            shard_size=self.shard_size,
            faiss_request=self._faiss_request(),
            next_shard=self._next_shard,
            created=previous.created if previous else now_iso(),
            updated=now_iso(),
            ucl_version=__version__,
        )

    def _shard_record(self, name: str, shard_manifest: Manifest) -> ShardRecord:
        return ShardRecord(
            name, shard_manifest.count, manifest_digest(self.dir / name), shard_manifest.faiss_index
        )

    def shard_options(self) -> WriterOptions:
        """What each shard is written with, here or by another process (`start_shard`)."""
        return replace(
            self.options,
            faiss_index=self.options.faiss_index or self._faiss_request(),
            lock_timeout=0,  # shards are written only under the bank's own lock
            on_wait=None,
        )

    def _faiss_request(self) -> str:
        if self.options.faiss_index:
            return self.options.faiss_index
        return "auto" if self.published is None else self.published.faiss_request

    def _new_name(self) -> str:
        name = f"shard-{self._next_shard:06d}"
        self._next_shard += 1
        if (self.dir / name).exists():  # an unlisted leftover (never a listed shard's name)
            shutil.rmtree(self.dir / name)
        return name

    def _remove_unlisted(self) -> None:
        """Delete shard directories no manifest lists (superseded shards, crashed writes),
        except the pending one; readers holding an old shard keep its open files."""
        if not self.dir.is_dir():
            return
        keep = {record.name for record in self._listed()}
        if self._pending_name is not None and self._pending is not None:
            keep.add(self._pending_name)
        for path in self.dir.iterdir():
            if SHARD_NAME.match(path.name) and path.name not in keep and path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
        fsync_dir(self.dir)

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.rows:
            raise IndexError(f"row {row} is outside bank {self.dir} of {self.rows} rows")


def _shard_number(name: str) -> int:
    return int(name.split("-", 1)[1])


def _link_shard(source: Path, target: Path) -> None:
    """A new shard directory holding the files of `source` (hard links: nothing is copied, and
    the new shard's writer replaces, never modifies, them)."""
    manifest = read_manifest(source)
    target.mkdir()
    for name in (*manifest.files, MANIFEST_NAME):  # the manifest last: it vouches for the rest
        try:
            os.link(source / name, target / name)
        except OSError:
            shutil.copy2(source / name, target / name)
    fsync_dir(target)


def start_shard(bank_dir: Path, name: str, extends: str | None = None) -> Path:
    """The empty directory of shard `name` that another process writes as a bank (seeded with
    the files of the listed shard `extends` when it adds rows to that one); whatever an earlier,
    failed try left there is removed first."""
    if not SHARD_NAME.match(name) or (extends is not None and not SHARD_NAME.match(extends)):
        raise ValueError(f"shard name {name!r} / {extends!r}")
    shard_dir = Path(bank_dir) / name
    if shard_dir.exists():
        shutil.rmtree(shard_dir)
    if extends is None:
        shard_dir.mkdir()
    else:
        _link_shard(Path(bank_dir) / extends, shard_dir)
    return shard_dir


# -- writing from memory --------------------------------------------------------------------------


def save_sharded_bank(
    path: str | Path,
    items: Sequence[BankItem],
    vectors: Sequence[np.ndarray],
    models: Sequence[Encoder | ModelRecord],
    *,
    shard_size: int,
    modality: str = "text",
    faiss_index: str = "auto",
) -> ShardedBank:
    """`save_bank` for a sharded bank: rows embedded elsewhere, written as shards of at most
    `shard_size` rows (what benchmarks and tests build stand-in banks with)."""
    from ucl_cli.bank.store import load_bank

    bank_dir = Path(path).expanduser()
    if (bank_dir / MANIFEST_NAME).exists():
        raise BankError(f"{bank_dir} already holds a bank")
    records = [ModelRecord.of(model) for model in models]
    options = WriterOptions(modality=modality, faiss_index=faiss_index, commit_seconds=60.0)
    with ShardedWriter(bank_dir, records, options, shard_size) as writer:
        for start in range(0, len(items), SEED_BATCH_ROWS):
            rows = slice(start, start + SEED_BATCH_ROWS)
            writer.add(items[rows], [np.asarray(matrix[rows]) for matrix in vectors])
        writer.publish()
    bank = load_bank(bank_dir)
    assert isinstance(bank, ShardedBank)
    return bank


__all__ = [
    "SHARDED_FORMAT",
    "ShardRecord",
    "ShardedBank",
    "ShardedManifest",
    "ShardedWriter",
    "is_sharded",
    "load_sharded_bank",
    "open_shard",
    "open_writer",
    "read_any_manifest",
    "read_sharded_manifest",
    "save_sharded_bank",
    "staged_rows",
    "start_shard",
]
