"""Layer 5: a content-addressed cache of embeddings, so a second query over the same folder embeds
nothing again (cf. llm's embeddings store and rclip's index).

A vector is stored under (sha256 of the file's bytes, encoder key, digest of the encoder's
preprocessing and of the media loader version, modality). Renaming or copying a file reuses its
vector; a model, preprocessing or loader change only stops matching its own rows, and never
invalidates another model's.

The store is one SQLite file (default `config.cache_path()`):
- numbered schema migrations recorded in `PRAGMA user_version`, applied in a transaction;
- WAL journal: readers never block the writer, and a process killed mid-write leaves the last
  committed state (each batch is one transaction);
- a busy timeout, so that concurrent `ucl` processes queue for the write lock instead of failing;
- vectors as little-endian float32 blobs with their dimension, checked on read;
- a memo of file hashes keyed by path and (size, mtime, ctime, inode), so unchanged files are
  not read again. A file modified within `RACY_WINDOW_NS` before it was hashed is hashed again
  next time: the file system's clock is too coarse to tell a same-size rewrite in that window.

This module imports no torch; `embed_files` works with any `Encoder`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ucl_cli import config
from ucl_cli.errors import InputFileError, UclError

if TYPE_CHECKING:
    from ucl_cli.encoders.base import Encoder, Modality
    from ucl_cli.media import SkipCallback

# Each entry migrates the schema from version i to i + 1 (PRAGMA user_version = i + 1).
# Never edit a released entry: append a new one.
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE embeddings (
            content_hash TEXT NOT NULL,
            model TEXT NOT NULL,
            preprocessing TEXT NOT NULL,
            modality TEXT NOT NULL,
            dim INTEGER NOT NULL,
            vector BLOB NOT NULL,
            created_ns INTEGER NOT NULL,
            PRIMARY KEY (model, preprocessing, modality, content_hash)
        ) WITHOUT ROWID""",
        """CREATE TABLE file_hashes (
            path TEXT PRIMARY KEY,
            size INTEGER NOT NULL,
            mtime_ns INTEGER NOT NULL,
            ctime_ns INTEGER NOT NULL,
            inode INTEGER NOT NULL,
            content_hash TEXT NOT NULL,
            hashed_ns INTEGER NOT NULL
        ) WITHOUT ROWID""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

BUSY_TIMEOUT_S = 60.0
# A memoised hash is trusted only if the file's last change is this much older than the hash.
RACY_WINDOW_NS = 2_000_000_000
# Keys per SELECT (SQLite allows at least 999 bound variables).
_LOOKUP_CHUNK = 500
_HASH_BLOCK = 1 << 20
_VECTOR_DTYPE = np.dtype("<f4")

ProgressCallback = Callable[[int], None]


class _MemoRow(NamedTuple):
    """A file's stat when it was hashed, and the hash (a row of `file_hashes` without its path)."""

    size: int
    mtime_ns: int
    ctime_ns: int
    inode: int
    content_hash: str
    hashed_ns: int


class CacheKey(NamedTuple):
    """Where one vector lives: which bytes, embedded by which model, prepared how, as what."""

    content_hash: str
    model: str
    preprocessing: str
    modality: str


@dataclass(frozen=True)
class ModelStats:
    model: str
    modality: str
    dim: int
    vectors: int
    bytes: int


@dataclass(frozen=True)
class CacheStats:
    path: Path
    file_bytes: int
    schema_version: int
    vectors: int
    hashed_files: int
    models: list[ModelStats]


@dataclass
class HashedFiles:
    """Content hashes by path, and one InputFileError per file that could not be read."""

    digests: dict[Path, str] = field(default_factory=dict)
    failures: list[InputFileError] = field(default_factory=list)
    read: int = 0  # files actually read (the rest came from the memo)


def preprocessing_digest(preprocessing: Mapping[str, Any], *, loader_version: int) -> str:
    """A stable digest of how inputs are prepared: canonical JSON of the encoder's preprocessing
    and the media loader's version (raises TypeError for values that are not JSON)."""
    canonical = json.dumps(
        {"preprocessing": preprocessing, "loader_version": loader_version},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class EmbeddingCache:
    """The SQLite store. One instance per thread; any number of processes may share the file."""

    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, busy_timeout_s: float = BUSY_TIMEOUT_S
    ):
        self.path = Path(path) if path is not None else config.cache_path()
        self._connection = _connect(self.path, busy_timeout_s)

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_many(
        self, keys: Iterable[CacheKey], *, dim: int | None = None
    ) -> dict[CacheKey, np.ndarray]:
        """The stored vectors among `keys` (float32 [dim] each); absent keys are left out.

        A row whose blob does not hold its recorded dimension, or whose dimension is not `dim`,
        counts as absent: it is recomputed and overwritten rather than trusted.
        """
        groups: dict[tuple[str, str, str], list[str]] = {}
        for key in set(keys):
            groups.setdefault((key.model, key.preprocessing, key.modality), []).append(
                key.content_hash
            )
        found: dict[CacheKey, np.ndarray] = {}
        with _sqlite_errors(self.path):
            for (model, preprocessing, modality), hashes in groups.items():
                hashes.sort()
                for start in range(0, len(hashes), _LOOKUP_CHUNK):
                    chunk = hashes[start : start + _LOOKUP_CHUNK]
                    rows = self._connection.execute(
                        "SELECT content_hash, dim, vector FROM embeddings WHERE model = ? AND "
                        "preprocessing = ? AND modality = ? AND content_hash IN "
                        f"({', '.join('?' * len(chunk))})",
                        (model, preprocessing, modality, *chunk),
                    )
                    for content_hash, stored_dim, blob in rows:
                        if len(blob) != stored_dim * _VECTOR_DTYPE.itemsize:
                            continue
                        if dim is not None and stored_dim != dim:
                            continue
                        vector = np.frombuffer(blob, dtype=_VECTOR_DTYPE).astype(np.float32)
                        found[CacheKey(content_hash, model, preprocessing, modality)] = vector
        return found

    def put_many(self, items: Iterable[tuple[CacheKey, np.ndarray]]) -> int:
        """Store (key, vector) pairs in ONE transaction: all of them, or (on any error, or if the
        process dies) none. Replaces existing rows. Returns how many were written."""
        now = time.time_ns()
        written = 0

        def rows() -> Iterator[tuple[object, ...]]:
            nonlocal written
            for key, vector in items:
                blob = _vector_blob(key, vector)
                written += 1
                yield (*key, len(blob) // _VECTOR_DTYPE.itemsize, blob, now)

        with _sqlite_errors(self.path), _transaction(self._connection) as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO embeddings (content_hash, model, preprocessing, modality, "
                "dim, vector, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                rows(),
            )
        return written

    def hash_files(self, paths: Iterable[str | os.PathLike[str]]) -> HashedFiles:
        """sha256 of each file's bytes, reading only files whose stat changed since last time.

        Files that cannot be read are reported in `failures` (InputFileError), not raised.
        """
        result = HashedFiles()
        stats: dict[Path, tuple[str, os.stat_result]] = {}
        for raw_path in paths:
            path = Path(raw_path)
            try:
                stats[path] = (os.path.realpath(path), path.stat())
            except OSError as err:
                result.failures.append(_unreadable(path, err))
        memo = self._memo([real for real, _ in stats.values()])
        fresh: list[tuple[object, ...]] = []
        for path, (real, info) in stats.items():
            remembered = memo.get(real)
            if remembered is not None and _memo_matches(remembered, info):
                result.digests[path] = remembered.content_hash
                continue
            hashed_ns = time.time_ns()
            try:
                digest = sha256_file(path)
            except OSError as err:
                result.failures.append(_unreadable(path, err))
                continue
            result.digests[path] = digest
            result.read += 1
            fresh.append(_memo_row(real, info, digest, hashed_ns))
        if fresh:
            with _sqlite_errors(self.path), _transaction(self._connection) as connection:
                connection.executemany(
                    "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, ctime_ns, inode, "
                    "content_hash, hashed_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    fresh,
                )
        return result

    def stats(self) -> CacheStats:
        """What the cache holds, per (model, modality, dim), and its size on disk."""
        with _sqlite_errors(self.path):
            rows = self._connection.execute(
                "SELECT model, modality, dim, COUNT(*), SUM(LENGTH(vector)) FROM embeddings "
                "GROUP BY model, modality, dim ORDER BY model, modality, dim"
            ).fetchall()
            hashed = self._connection.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0]
            version = self._connection.execute("PRAGMA user_version").fetchone()[0]
        models = [
            ModelStats(model, modality, dim, count, size)
            for model, modality, dim, count, size in rows
        ]
        file_bytes = sum(
            sidecar.stat().st_size
            for sidecar in (self.path, Path(f"{self.path}-wal"))
            if sidecar.exists()
        )
        return CacheStats(
            path=self.path,
            file_bytes=file_bytes,
            schema_version=version,
            vectors=sum(entry.vectors for entry in models),
            hashed_files=hashed,
            models=models,
        )

    def clear(self, model: str | None = None) -> int:
        """Delete one model's vectors (all of them, and the hash memo, when `model` is None) and
        give the space back to the file system. Returns how many vectors were deleted."""
        with _sqlite_errors(self.path):
            with _transaction(self._connection) as connection:
                if model is None:
                    removed = connection.execute("DELETE FROM embeddings").rowcount
                    connection.execute("DELETE FROM file_hashes")
                else:
                    removed = connection.execute(
                        "DELETE FROM embeddings WHERE model = ?", (model,)
                    ).rowcount
            if removed:
                self._connection.execute("VACUUM")
                self._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return removed

    def _memo(self, real_paths: Sequence[str]) -> dict[str, _MemoRow]:
        memo: dict[str, _MemoRow] = {}
        unique = sorted(set(real_paths))
        with _sqlite_errors(self.path):
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                rows = self._connection.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, inode, content_hash, hashed_ns "
                    f"FROM file_hashes WHERE path IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
                for path, *remembered in rows:
                    memo[path] = _MemoRow(*remembered)
        return memo


@dataclass
class EmbeddedFiles:
    """Embeddings of files, row-aligned with `paths` (the input order, bad files left out).

    vectors: float32 [len(paths), dim], unit norm. cached: rows found in the cache; computed:
    distinct contents embedded by this call (files with identical bytes are embedded once).
    skipped: one InputFileError per bad file.
    """

    paths: list[Path]
    vectors: np.ndarray
    skipped: list[InputFileError]
    cached: int
    computed: int


def embed_files(
    encoder: Encoder,
    modality: Modality | str,
    paths: Sequence[str | os.PathLike[str]],
    cache: EmbeddingCache,
    loader: Callable[[Path], Any] | None = None,
    *,
    batch_size: int | None = None,
    progress: ProgressCallback | None = None,
    strict: bool = False,
    on_skip: SkipCallback | None = None,
) -> EmbeddedFiles:
    """Embed files through the cache: hash them all, look the whole set up at once, then load
    and embed only the misses, storing each batch in one transaction as it completes (an
    interrupted run keeps what it finished).

    loader: file -> the item `encoder.embed` takes (default: `media.loader_for`).
    progress: called with the number of files just finished (hits first, then each batch).
    strict: raise the first bad file's InputFileError; otherwise pass each to `on_skip` and
      leave it out of the result.
    """
    from ucl_cli import media  # here, not at the top: media imports torch (for Modality)

    modality_name = str(getattr(modality, "value", modality))
    if loader is None:
        loader = media.loader_for(modality_name, encoder.preprocessing)
    digest = preprocessing_digest(encoder.preprocessing, loader_version=media.LOADER_VERSION)
    size = batch_size or encoder.default_batch_size
    failures: dict[Path, InputFileError] = {}

    def skip(error: InputFileError, path: Path) -> None:
        if strict:
            raise error
        failures[path] = error
        if on_skip is not None:
            on_skip(error)

    ordered = [Path(path) for path in paths]
    hashed = cache.hash_files(ordered)
    for error in hashed.failures:
        skip(error, Path(error.path))
    keys = {
        path: CacheKey(hashed.digests[path], encoder.key, digest, modality_name)
        for path in ordered
        if path in hashed.digests
    }
    vectors = cache.get_many(keys.values(), dim=encoder.dim)
    hits = sum(1 for key in keys.values() if key in vectors)
    if progress is not None:
        progress(hits)

    # One load per distinct content; every path with those bytes shares the result.
    sharing: dict[CacheKey, list[Path]] = {}
    for path, key in keys.items():
        if key not in vectors:
            sharing.setdefault(key, []).append(path)
    misses = list(sharing.items())
    computed = 0
    for start in range(0, len(misses), size):
        batch_keys, items = [], []
        for key, same_paths in misses[start : start + size]:
            try:
                items.append(loader(same_paths[0]))
                batch_keys.append(key)
            except InputFileError as error:
                for path in same_paths:
                    skip(
                        error if path == same_paths[0] else InputFileError(path, error.reason), path
                    )
        if items:
            embedded = encoder.embed(modality_name, items, batch_size=size)
            cache.put_many(zip(batch_keys, embedded, strict=True))
            vectors.update(zip(batch_keys, embedded, strict=True))
            computed += len(batch_keys)
        if progress is not None:
            progress(sum(len(same_paths) for _, same_paths in misses[start : start + size]))

    kept = [path for path in ordered if path in keys and path not in failures]
    matrix = np.empty((len(kept), encoder.dim), dtype=np.float32)
    for row, path in enumerate(kept):
        matrix[row] = vectors[keys[path]]
    skipped = [failures[path] for path in dict.fromkeys(ordered) if path in failures]
    return EmbeddedFiles(kept, matrix, skipped, cached=hits, computed=computed)


def _connect(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """Open (creating if needed) the cache file in WAL mode and bring its schema up to date."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UclError(f"cannot create the embedding cache folder {path.parent}: {err}") from None
    with _sqlite_errors(path):
        connection = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None)
        try:
            connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            deadline = time.monotonic() + busy_timeout_s
            # Switching a new file to WAL takes an exclusive lock for which SQLite does not
            # always call its busy handler, so two processes opening a fresh cache at once can
            # see "database is locked" at once: retry until the busy timeout instead.
            _retry_while_locked(lambda: connection.execute("PRAGMA journal_mode = WAL"), deadline)
            # In WAL mode NORMAL loses no committed transaction when a process dies (only on
            # power loss, which a cache of recomputable vectors can afford).
            connection.execute("PRAGMA synchronous = NORMAL")
            _retry_while_locked(lambda: _migrate(connection, path), deadline)
        except BaseException:
            connection.close()
            raise
    return connection


def _retry_while_locked(step: Callable[[], object], deadline: float) -> None:
    delay = 0.005
    while True:
        try:
            step()
            return
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version == SCHEMA_VERSION:
        return
    if version > SCHEMA_VERSION:
        raise UclError(
            f"embedding cache {path} has schema version {version}, newer than this ucl knows "
            f"({SCHEMA_VERSION}); upgrade ucl, or delete the file (it holds only embeddings "
            "that can be computed again)"
        )
    with _transaction(connection):
        # Another process may have migrated while this one waited for the write lock.
        version = connection.execute("PRAGMA user_version").fetchone()[0]
        for statements in MIGRATIONS[version:]:
            for statement in statements:
                connection.execute(statement)
        connection.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@contextmanager
def _transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A write transaction that takes the write lock up front (BEGIN IMMEDIATE), so that two
    writers queue on the busy timeout instead of deadlocking on a lock upgrade."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


@contextmanager
def _sqlite_errors(path: Path) -> Iterator[None]:
    """SQLite failures as one UclError that names the cache file and says what to do."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        text = str(err)
        if "locked" in text or "busy" in text:
            advice = "another ucl process held it too long; try again"
        elif "not a database" in text or "malformed" in text:
            advice = (
                "the file is damaged; delete it (it holds only embeddings that can be recomputed)"
            )
        elif "full" in text:
            advice = "the disk is full; free space or clear the cache with `ucl cache clear`"
        else:
            advice = "delete the file if this persists (it holds only recomputable embeddings)"
        raise UclError(f"embedding cache {path}: {text}; {advice}") from err


def _vector_blob(key: CacheKey, vector: np.ndarray) -> bytes:
    array = np.asarray(vector)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"cache vectors are 1-D and non-empty; got shape {array.shape} for {key}")
    if not np.isfinite(array).all():
        raise ValueError(f"refusing to cache a non-finite vector for {key}")
    return array.astype(_VECTOR_DTYPE, copy=False).tobytes()


def _memo_row(real: str, info: os.stat_result, digest: str, hashed_ns: int) -> tuple[object, ...]:
    return (real, info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino, digest, hashed_ns)


def _memo_matches(remembered: _MemoRow, info: os.stat_result) -> bool:
    """The file's stat is the one it had when hashed, and it had settled by then."""
    unchanged = (
        remembered.size,
        remembered.mtime_ns,
        remembered.ctime_ns,
        remembered.inode,
    ) == (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)
    settled = max(remembered.mtime_ns, remembered.ctime_ns) + RACY_WINDOW_NS < remembered.hashed_ns
    return unchanged and settled


def _unreadable(path: Path, err: OSError) -> InputFileError:
    if isinstance(err, FileNotFoundError):
        return InputFileError(path, "file not found")
    return InputFileError(path, f"cannot be read: {err.strerror or err}")
