"""A content-addressed cache of embeddings, so a second query over the same folder embeds
nothing again (cf. llm's embeddings store and rclip's index).

A vector is stored under (sha256 of the file's bytes, encoder key, digest of the encoder's
preprocessing, of the media loader version and of the encoder's `weights_id`, modality). Renaming
or copying a file reuses its vector; a model, weights, preprocessing or loader change only stops
matching its own rows, and never invalidates another model's.

The store is one SQLite file (default `config.cache_path()`):
- numbered schema migrations recorded in `PRAGMA user_version`, applied in a transaction;
- WAL journal: readers never block the writer, and a process killed mid-write leaves the last
  committed state (each batch is one transaction);
- a busy timeout, so that concurrent `ucl` processes queue for the write lock instead of failing;
- vectors as little-endian float32 blobs with their dimension and a checksum (blake2b of key
  and bytes), verified on read: a damaged or non-finite row is a miss, recomputed and replaced,
  and reported (once) through the cache's `on_warning`;
- a memo of file hashes keyed by path and (size, mtime, ctime, inode), so unchanged files are
  not read again. A file modified within `RACY_WINDOW_NS` before it was hashed is hashed again
  next time: the file system's clock is too coarse to tell a same-size rewrite in that window.

A cache never fails a run that can go on without it. A file or folder the user cannot write is
read, and new vectors are kept in memory (so is everything once the disk is full); a file SQLite
finds damaged is set aside for the run. `MemoryCache` is the same interface with no file at all
(`--no-cache`, UCL_NO_CACHE=1); `open_cache` picks one, as the commands do. Each change is
reported once through `on_warning` (default: `warnings.warn` with `CacheWarning`): the library
never prints.

This module imports no torch; `embed_files` works with any `Encoder`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from ucl_cli import config
from ucl_cli.errors import InputFileError, UclError
from ucl_cli.files import sha256_file

if TYPE_CHECKING:
    from ucl_cli.encoders.base import Encoder
    from ucl_cli.media import SkipCallback
    from ucl_cli.modality import Modality

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
    # Rows written before checksums keep NULL and count as absent: recomputed and replaced when
    # next needed. Checksumming them here would certify bytes that may already be damaged (the
    # defect checksums exist to catch), and would read every vector under the write lock.
    ("ALTER TABLE embeddings ADD COLUMN checksum BLOB",),
)
SCHEMA_VERSION = len(MIGRATIONS)

BUSY_TIMEOUT_S = 60.0
# A memoised hash is trusted only if the file's last change is this much older than the hash.
RACY_WINDOW_NS = 2_000_000_000
# Keys per SELECT (SQLite allows at least 999 bound variables).
_LOOKUP_CHUNK = 500
_VECTOR_DTYPE = np.dtype("<f4")

ProgressCallback = Callable[[int], None]
WarningCallback = Callable[[str], None]
# Values of UCL_NO_CACHE that leave the cache on.
_FALSE_WORDS = frozenset({"", "0", "false", "no", "off"})


class CacheWarning(UserWarning):
    """The cache could not be used as asked (damaged rows or file, read-only, full); the run
    went on. Issued only where no `on_warning` callback was given."""


class CacheDamagedError(UclError):
    """The cache file is not a database, or SQLite found it malformed."""

    def __init__(self, path: Path | None, reason: str):
        self.path = path
        self.reason = reason
        super().__init__(
            f"embedding cache {path}: {reason}; the file is damaged; delete it (it holds only "
            "embeddings that can be recomputed)"
        )


class CacheUnavailableError(UclError):
    """There is no cache file and none can be created (a read-only or missing folder)."""


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
    unverified: int = 0  # vectors from before checksums: misses, replaced when recomputed
    read_only: bool = False


@dataclass
class HashedFiles:
    """Content hashes by path, and one InputFileError per file that could not be read."""

    digests: dict[Path, str] = field(default_factory=dict)
    failures: list[InputFileError] = field(default_factory=list)
    read: int = 0  # files actually read (the rest came from the memo)


def preprocessing_digest(
    preprocessing: Mapping[str, Any], *, loader_version: int, weights_id: str | None = None
) -> str:
    """A stable digest of how vectors are made besides the model key: canonical JSON of the
    encoder's preprocessing, the media loader's version and the weights' id, so that two weight
    files under one key (stand-ins then real weights, a fine-tune) never share vectors (raises
    TypeError for values that are not JSON). No weights_id leaves the digest as it was."""
    made_by: dict[str, Any] = {"preprocessing": preprocessing, "loader_version": loader_version}
    if weights_id is not None:
        made_by["weights_id"] = weights_id
    canonical = json.dumps(
        made_by,
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


def encoder_digest(encoder: Encoder) -> str:
    """The `preprocessing` part of the keys of `encoder`'s vectors: its preprocessing, the media
    loader's version and its weights (`weights_id`, set by the registry's `load_encoder`)."""
    # Here, not at the top: media loads soundfile, soxr and Pillow (tens of milliseconds), which
    # `ucl cache info` and `ucl cache clear` never need.
    from ucl_cli import media

    return preprocessing_digest(
        encoder.preprocessing,
        loader_version=media.LOADER_VERSION,
        weights_id=getattr(encoder, "weights_id", None),
    )


class EmbeddingCache:
    """The SQLite store. One instance per thread; any number of processes may share the file.

    Reads and writes that the run can do without never fail it: see the module docstring.
    `read_only` is true once vectors can no longer be written to the file (they are kept in
    memory); `damaged` counts the stored rows that failed verification.
    """

    path: Path | None
    read_only: bool

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        busy_timeout_s: float = BUSY_TIMEOUT_S,
        on_warning: WarningCallback | None = None,
    ):
        file = Path(path) if path is not None else config.cache_path()
        self._start(file, on_warning)
        connection, self.read_only = _connect(file, busy_timeout_s)
        if not self.read_only:
            self._connection = connection
            return
        try:
            version = _schema_version(connection, file)
        except BaseException:
            connection.close()
            raise
        if version < SCHEMA_VERSION:  # cannot be migrated: nothing in it can be verified
            connection.close()
            self._warn(
                "unusable",
                f"embedding cache {file} is read-only and from an older ucl (schema v{version}): "
                "running without it",
            )
            return
        self._connection = connection
        self._warn(
            "unwritable",
            f"embedding cache {file} is read-only: new vectors are kept in memory only",
        )

    def _start(self, path: Path | None, on_warning: WarningCallback | None) -> None:
        self.path = path
        self.on_warning = on_warning
        self.read_only = False
        self.damaged = 0
        self._connection: sqlite3.Connection | None = None
        self._memory: dict[CacheKey, np.ndarray] = {}  # vectors the file could not take
        self._warned: set[str] = set()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def __enter__(self) -> EmbeddingCache:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def get_many(
        self, keys: Iterable[CacheKey], *, dim: int | None = None
    ) -> dict[CacheKey, np.ndarray]:
        """The stored vectors among `keys` (float32 [dim] each); absent keys are left out.

        A row written before checksums, or whose dimension is not `dim`, is absent. A row that
        fails verification (checksum, blob length, finite values) is absent too, counted in
        `damaged` and reported: it is recomputed and overwritten rather than trusted.
        """
        wanted = set(keys)
        found = {key: self._memory[key] for key in wanted if key in self._memory}
        groups: dict[tuple[str, str, str], list[str]] = {}
        for key in wanted - found.keys():
            groups.setdefault((key.model, key.preprocessing, key.modality), []).append(
                key.content_hash
            )
        damaged = 0
        connection = self._connection
        if connection is not None:
            with self._degrading(writing=False):  # damage: what was read so far is verified
                for (model, preprocessing, modality), hashes in groups.items():
                    hashes.sort()
                    for start in range(0, len(hashes), _LOOKUP_CHUNK):
                        chunk = hashes[start : start + _LOOKUP_CHUNK]
                        rows = connection.execute(
                            "SELECT content_hash, dim, vector, checksum FROM embeddings WHERE "
                            "model = ? AND preprocessing = ? AND modality = ? AND content_hash "
                            f"IN ({', '.join('?' * len(chunk))})",
                            (model, preprocessing, modality, *chunk),
                        )
                        for content_hash, stored_dim, blob, checksum in rows:
                            key = CacheKey(content_hash, model, preprocessing, modality)
                            vector = _verified(key, stored_dim, blob, checksum, dim)
                            if vector is _DAMAGED:
                                damaged += 1
                            elif vector is not None:
                                found[key] = vector
        if damaged:
            self.damaged += damaged
            fate = "recomputed" if self.read_only else "recomputed and replaced"
            self._warn(
                "damaged rows",
                f"embedding cache {self.path}: {_plural(damaged, 'stored vector')} "
                f"{'was' if damaged == 1 else 'were'} damaged (checksum mismatch); "
                f"{'it is' if damaged == 1 else 'they are'} {fate} (if this recurs, check the "
                "disk)",
            )
        return found

    def put_many(self, items: Iterable[tuple[CacheKey, np.ndarray]]) -> int:
        """Store (key, vector) pairs in ONE transaction: all of them, or (on any error, or if the
        process dies) none. Replaces existing rows. Returns how many were stored (in memory when
        the file cannot take them)."""
        # Every vector is checked before the write lock is taken.
        blobs = [(key, _vector_blob(key, vector)) for key, vector in items]
        if self._connection is not None and not self.read_only and blobs:
            now = time.time_ns()
            rows = [
                (*key, len(blob) // _VECTOR_DTYPE.itemsize, blob, now, _checksum(key, blob))
                for key, blob in blobs
            ]
            with self._degrading(writing=True), _transaction(self._connection) as connection:
                connection.executemany(
                    "INSERT OR REPLACE INTO embeddings (content_hash, model, preprocessing, "
                    "modality, dim, vector, created_ns, checksum) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
                return len(rows)
        for key, blob in blobs:
            self._memory[key] = np.frombuffer(blob, dtype=_VECTOR_DTYPE).astype(np.float32)
        return len(blobs)

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
        if fresh and self._connection is not None and not self.read_only:
            with self._degrading(writing=True), _transaction(self._connection) as connection:
                connection.executemany(
                    "INSERT OR REPLACE INTO file_hashes (path, size, mtime_ns, ctime_ns, inode, "
                    "content_hash, hashed_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    fresh,
                )
        return result

    def stats(self) -> CacheStats:
        """What the cache holds, per (model, modality, dim), and its size on disk."""
        connection, path = self._file()
        with _sqlite_errors(path):
            rows = connection.execute(
                "SELECT model, modality, dim, COUNT(*), SUM(LENGTH(vector)) FROM embeddings "
                "GROUP BY model, modality, dim ORDER BY model, modality, dim"
            ).fetchall()
            hashed = connection.execute("SELECT COUNT(*) FROM file_hashes").fetchone()[0]
            unverified = connection.execute(
                "SELECT COUNT(*) FROM embeddings WHERE checksum IS NULL"
            ).fetchone()[0]
            version = connection.execute("PRAGMA user_version").fetchone()[0]
        models = [
            ModelStats(model, modality, dim, count, size)
            for model, modality, dim, count, size in rows
        ]
        file_bytes = sum(
            sidecar.stat().st_size for sidecar in (path, Path(f"{path}-wal")) if sidecar.exists()
        )
        return CacheStats(
            path=path,
            file_bytes=file_bytes,
            schema_version=version,
            vectors=sum(entry.vectors for entry in models),
            hashed_files=hashed,
            models=models,
            unverified=unverified,
            read_only=self.read_only,
        )

    def forget_files(self, paths: Sequence[Path]) -> None:
        """Drop the memoised hashes of files that will not be read again (a server's temporary
        uploads): their vectors stay, found by content, but the memo no longer grows by a row
        per upload."""
        if self._connection is None or self.read_only:
            return
        rows = [(os.path.realpath(path),) for path in paths]
        with self._degrading(writing=True), _transaction(self._connection) as connection:
            connection.executemany("DELETE FROM file_hashes WHERE path = ?", rows)

    def clear(self, model: str | None = None) -> int:
        """Delete one model's vectors (all of them, and the hash memo, when `model` is None) and
        give the space back to the file system. Returns how many vectors were deleted."""
        connection, path = self._file()
        if self.read_only:
            raise UclError(f"embedding cache {path} is read-only: it cannot be cleared")
        with _sqlite_errors(path):
            with _transaction(connection):
                if model is None:
                    removed = connection.execute("DELETE FROM embeddings").rowcount
                    connection.execute("DELETE FROM file_hashes")
                else:
                    removed = connection.execute(
                        "DELETE FROM embeddings WHERE model = ?", (model,)
                    ).rowcount
            if removed:
                connection.execute("VACUUM")
                connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._memory.clear()
        return removed

    def _file(self) -> tuple[sqlite3.Connection, Path]:
        if self._connection is None or self.path is None:
            raise UclError(f"embedding cache {self.path}: not open (running without it)")
        return self._connection, self.path

    def _memo(self, real_paths: Sequence[str]) -> dict[str, _MemoRow]:
        memo: dict[str, _MemoRow] = {}
        unique = sorted(set(real_paths))
        connection = self._connection
        if connection is None:
            return memo
        with self._degrading(writing=False):
            for start in range(0, len(unique), _LOOKUP_CHUNK):
                chunk = unique[start : start + _LOOKUP_CHUNK]
                rows = connection.execute(
                    "SELECT path, size, mtime_ns, ctime_ns, inode, content_hash, hashed_ns "
                    f"FROM file_hashes WHERE path IN ({', '.join('?' * len(chunk))})",
                    chunk,
                )
                for path, *remembered in rows:
                    memo[path] = _MemoRow(*remembered)
        return memo

    @contextmanager
    def _degrading(self, *, writing: bool) -> Iterator[None]:
        """SQLite errors a run can go on without: a damaged file is set aside (closed, memory
        only); a write the file system refuses (read-only, full) leaves the file for reading
        and keeps new vectors in memory. Any other error raises, as a UclError."""
        try:
            yield
        except sqlite3.DatabaseError as err:
            if _is_damage(err):
                self.close()
                self._warn("damaged file", _set_aside_message(self.path, str(err)))
            elif writing and (_is_unwritable(err) or _is_full(err)):
                self.read_only = True
                if _is_full(err):
                    message = (
                        f"embedding cache {self.path}: {err}: new vectors are kept in memory "
                        "only (free space, or `ucl cache clear`)"
                    )
                else:
                    message = (
                        f"embedding cache {self.path} is read-only: new vectors are kept in "
                        "memory only"
                    )
                self._warn("unwritable", message)
            else:
                raise _cache_error(self.path, err) from err

    def _warn(self, kind: str, message: str) -> None:
        """Report `message` unless a warning of this kind was already reported."""
        if kind in self._warned:
            return
        self._warned.add(kind)
        if self.on_warning is not None:
            self.on_warning(message)
        else:
            warnings.warn(message, CacheWarning, stacklevel=4)


class MemoryCache(EmbeddingCache):
    """The cache's interface with no file: vectors live as long as the object (`--no-cache`,
    UCL_NO_CACHE=1, or a cache file that cannot be opened or created)."""

    def __init__(self, *, on_warning: WarningCallback | None = None):
        self._start(None, on_warning)


def open_cache(
    path: str | os.PathLike[str] | None = None,
    *,
    enabled: bool = True,
    on_warning: WarningCallback | None = None,
) -> EmbeddingCache:
    """The cache a run embeds through: the file at `path` (default `config.cache_path()`), or a
    MemoryCache when disabled (`enabled=False`, UCL_NO_CACHE=1) or when the file is damaged or
    cannot be created, which is reported once through `on_warning`: a run never fails for want
    of its cache."""
    memory = MemoryCache(on_warning=on_warning)
    if not enabled or cache_disabled():
        return memory
    try:
        return EmbeddingCache(path, on_warning=on_warning)
    except CacheDamagedError as err:
        memory._warn("damaged file", _set_aside_message(err.path, err.reason))
    except CacheUnavailableError as err:
        memory._warn("unwritable", f"{err}; new vectors are kept in memory only")
    return memory


def cache_disabled() -> bool:
    """UCL_NO_CACHE is set to anything but an empty string, 0, false, no or off."""
    return os.environ.get("UCL_NO_CACHE", "").strip().lower() not in _FALSE_WORDS


@dataclass
class EmbeddedFiles:
    """Embeddings of files, row-aligned with `paths` (the input order, bad files left out).

    vectors: float32 [len(paths), dim], unit norm. cached: rows found in the cache; computed:
    distinct contents embedded by this call (files with identical bytes are embedded once).
    skipped: one InputFileError per bad file. damaged: stored rows that failed verification and
    were recomputed (the cache reports them through its `on_warning`).
    """

    paths: list[Path]
    vectors: np.ndarray
    skipped: list[InputFileError]
    cached: int
    computed: int
    damaged: int = 0


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
    from ucl_cli import media  # here, not at the top: see encoder_digest

    modality_name = str(getattr(modality, "value", modality))
    if loader is None:
        loader = media.loader_for(modality_name, encoder.preprocessing)
    digest = encoder_digest(encoder)
    damaged_before = cache.damaged
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
    return EmbeddedFiles(
        kept,
        matrix,
        skipped,
        cached=hits,
        computed=computed,
        damaged=cache.damaged - damaged_before,
    )


def _connect(path: Path, busy_timeout_s: float) -> tuple[sqlite3.Connection, bool]:
    """Open (creating if needed) the cache file in WAL mode and bring its schema up to date; or,
    where it cannot be written, open it for reading only. Returns (connection, read_only)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CacheUnavailableError(
            f"cannot create the embedding cache folder {path.parent}: {err.strerror or err}"
        ) from None
    try:
        return _open_writable(path, busy_timeout_s), False
    except sqlite3.DatabaseError as err:
        if not _is_unwritable(err):
            raise _cache_error(path, err) from err
        if not path.is_file():
            raise CacheUnavailableError(f"cannot create the embedding cache {path}: {err}") from err
    with _sqlite_errors(path):
        return _open_read_only(path, busy_timeout_s), True


def _open_writable(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
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
        connection.execute("SELECT name FROM sqlite_master").fetchall()  # a damaged schema: now
    except BaseException:
        connection.close()
        raise
    return connection


def _open_read_only(path: Path, busy_timeout_s: float) -> sqlite3.Connection:
    """A connection that never writes. Reading a WAL file needs its -shm index, which SQLite
    creates next to the file; in a folder that cannot take it, the file is opened `immutable`:
    without locks, and without what another process has not yet checkpointed (a row read while
    the owner writes is caught by its checksum, a torn page as damage)."""
    uri = path.absolute().as_uri()
    try:
        return _open_uri(f"{uri}?mode=ro", busy_timeout_s)
    except sqlite3.DatabaseError as err:
        if not _is_unwritable(err):
            raise
    return _open_uri(f"{uri}?mode=ro&immutable=1", busy_timeout_s)


def _open_uri(uri: str, busy_timeout_s: float) -> sqlite3.Connection:
    """Open a read-only URI and read its schema (which is when SQLite opens the file)."""
    connection = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None)
    try:
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        connection.execute("SELECT name FROM sqlite_master").fetchall()
    except BaseException:
        connection.close()
        raise
    return connection


def _schema_version(connection: sqlite3.Connection, path: Path) -> int:
    """The file's schema version; a newer one than this ucl knows is refused."""
    with _sqlite_errors(path):
        version = int(connection.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise UclError(
            f"embedding cache {path} has schema version {version}, newer than this ucl knows "
            f"({SCHEMA_VERSION}); upgrade ucl, or delete the file (it holds only embeddings "
            "that can be computed again)"
        )
    return version


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
    if _schema_version(connection, path) == SCHEMA_VERSION:
        return
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
        if connection.in_transaction:  # SQLite has rolled back by itself after some errors
            connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


@contextmanager
def _sqlite_errors(path: Path | None) -> Iterator[None]:
    """SQLite failures as one UclError that names the cache file and says what to do."""
    try:
        yield
    except sqlite3.DatabaseError as err:
        raise _cache_error(path, err) from err


def _cache_error(path: Path | None, err: sqlite3.DatabaseError) -> UclError:
    text = str(err)
    if _is_damage(err):
        return CacheDamagedError(path, text)
    if "locked" in text or "busy" in text:
        advice = "another ucl process held it too long; try again"
    elif _is_full(err):
        advice = "the disk is full; free space or clear the cache with `ucl cache clear`"
    elif "readonly" in text:
        advice = "the file or its folder cannot be written"
    else:
        advice = "delete the file if this persists (it holds only recomputable embeddings)"
    return UclError(f"embedding cache {path}: {text}; {advice}")


def _set_aside_message(path: Path | None, reason: str) -> str:
    return (
        f"embedding cache {path}: {reason}; the file is damaged: running without it (delete it; "
        "it holds only embeddings that can be recomputed)"
    )


def _error_name(err: sqlite3.DatabaseError) -> str:
    return getattr(err, "sqlite_errorname", "") or ""  # Python >= 3.11


def _is_damage(err: sqlite3.DatabaseError) -> bool:
    text = str(err)
    return (
        _error_name(err).startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB"))
        or "malformed" in text
        or "not a database" in text
    )


def _is_unwritable(err: sqlite3.DatabaseError) -> bool:
    """The file system refused: a read-only file or folder (SQLite opens a write-protected file
    for reading, then fails the first write), or a file or -shm index it may not create."""
    text = str(err)
    return (
        _error_name(err).startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_PERM"))
        or "readonly" in text
        or "unable to open database file" in text
    )


def _is_full(err: sqlite3.DatabaseError) -> bool:
    return _error_name(err).startswith("SQLITE_FULL") or "is full" in str(err)


def _checksum(key: CacheKey, blob: bytes) -> bytes:
    """blake2b-128 of the key and the vector's bytes: any flipped bit of the blob fails it, and
    so does a row read under a key it was not written for."""
    digest = hashlib.blake2b("\0".join(key).encode("utf-8"), digest_size=16)
    digest.update(b"\0")
    digest.update(blob)
    return digest.digest()


# `_verified`'s answer for a row that failed verification (None: a plain miss).
_DAMAGED = np.empty(0, dtype=np.float32)


def _verified(
    key: CacheKey, stored_dim: int, blob: bytes, checksum: bytes | None, dim: int | None
) -> np.ndarray | None:
    """A stored row's vector; None for a miss (no checksum yet, another dimension); _DAMAGED
    for a row that fails its checksum, its length, or holds non-finite values."""
    if checksum is None:
        return None
    if checksum != _checksum(key, blob):
        return _DAMAGED
    if dim is not None and stored_dim != dim:
        return None
    if len(blob) != stored_dim * _VECTOR_DTYPE.itemsize:
        return _DAMAGED
    vector = np.frombuffer(blob, dtype=_VECTOR_DTYPE).astype(np.float32)
    return vector if np.isfinite(vector).all() else _DAMAGED


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


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
