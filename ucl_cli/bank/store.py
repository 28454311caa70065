"""Reading a published bank: validated, memory-mapped, safe while a writer publishes.

`load_bank` opens every file the manifest names before returning, so a writer that publishes a
new generation (and deletes the old files) afterwards does not disturb an open `Bank`: POSIX
keeps an unlinked file alive while a process holds it open.

Damage is detected, never used: every file is checked against the SHA-256 its manifest records,
either all at once when the bank is opened (`verify="now"`) or each file the first time it is
read (`verify="on_read"`, what queries use). Both go through the digest memo
(`ucl_cli.digests`), so a file whose stat has not changed since it was last checked (or since
`ucl index` wrote it) is not read again: a warm query pays a stat per file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Union

import numpy as np

from ucl_cli.bank.files import map_npy
from ucl_cli.bank.items import BankItem
from ucl_cli.bank.manifest import (
    MANIFEST_NAME,
    Manifest,
    ModelRecord,
    model_mismatch,
    read_manifest,
)
from ucl_cli.bank.search_index import read_index, search
from ucl_cli.digests import memoised_sha256
from ucl_cli.errors import BankError

if TYPE_CHECKING:
    import faiss

    from ucl_cli.bank.nearest import LazyNearest
    from ucl_cli.encoders.base import Encoder

# A writer may publish between our reading the manifest and opening its files; try again then.
OPEN_ATTEMPTS = 5

SAVE_BATCH_ROWS = 65_536

ModelRef = Union[str, "Encoder", ModelRecord]  # a model key, or what carries one
Verify = Literal["now", "on_read", "reread"]
# The largest row norm assumed for a bank whose manifest does not record one (written before
# rows were renormalised on write, when norms within 1e-3 of 1 were accepted).
LEGACY_ROW_NORM = 1.001


class BankBase:
    """What every published bank knows from its manifest alone, one bank or shards of one: its
    name, models, modality and kind, and whether it can serve a query's encoders. Subclasses
    set `path`, `manifest` and `check_weights`."""

    path: Path
    manifest: Any
    check_weights: bool

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def models(self) -> tuple[ModelRecord, ...]:
        return self.manifest.models

    @property
    def modality(self) -> str:
        return self.manifest.modality

    @property
    def kind(self) -> str:
        """Bridge (texts, the route between modalities) or collection (candidate files)."""
        return self.manifest.kind

    def __len__(self) -> int:
        return self.manifest.count

    def check_models(self, encoders: Sequence[Encoder | ModelRecord]) -> None:
        """Raise `BankError` (one sentence naming both sides) unless the bank serves them all,
        made by the same weights (unless the bank was opened with `check_weights=False`)."""
        wanted = [ModelRecord.of(encoder) for encoder in encoders]
        problem = model_mismatch(
            self.models,
            wanted,
            bank=f"bank {self.name}",
            user="the query",
            weights=self.check_weights,
        )
        if problem is not None:
            raise BankError(problem)

    def unknown_weights(self, encoders: Sequence[Encoder | ModelRecord]) -> list[str]:
        """Keys of the models whose weights the query's encoders name but the manifest does not
        record (banks written by an older ucl): those vectors cannot be checked against them."""
        named = {record.key for record in map(ModelRecord.of, encoders) if record.weights}
        return [model.key for model in self.models if model.weights is None and model.key in named]

    def position(self, model: ModelRef) -> int:
        key = model if isinstance(model, str) else model.key
        for position, record in enumerate(self.models):
            if record.key == key:
                return position
        held = ", ".join(self.manifest.model_keys())
        raise BankError(f"bank {self.name} holds no vectors of {key} (it holds {held})")


class Bank(BankBase):
    """A published bank: items and, per model, a memory-mapped matrix and a FAISS index.

    Rows are aligned: row m of every model's matrix embeds `item(m)`.
    """

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        handles: dict[str, BinaryIO],
        *,
        verified: bool = True,
        check_weights: bool = True,
    ):
        self.path = path
        self.manifest = manifest
        self.check_weights = check_weights  # False: vectors of other weights are accepted
        self._handles = handles
        self._verified: set[str] = set(handles) if verified else set()
        self._vectors: dict[int, np.ndarray] = {}
        self._indexes: dict[int, faiss.Index] = {}
        self._nearest: dict[tuple[int, str], LazyNearest] = {}
        self._offsets: np.ndarray | None = None

    def __repr__(self) -> str:
        keys = ", ".join(self.manifest.model_keys())
        return f"Bank({str(self.path)!r}, {len(self)} items, models: {keys})"

    def row_norm(self, model: ModelRef) -> float:
        """The largest norm of one model's rows, as the manifest records it (bounds use it)."""
        recorded = self.manifest.max_norms[self.position(model)]
        return LEGACY_ROW_NORM if recorded is None else recorded

    def vectors(self, model: ModelRef) -> np.ndarray:
        """Read-only float32 [M, dim] matrix of one model, memory-mapped."""
        position = self.position(model)
        if position not in self._vectors:
            name = self.manifest.vector_files[position]
            self._vectors[position] = map_npy(self._checked(name))
        return self._vectors[position]

    def index(self, model: ModelRef, *, keep: bool = True) -> faiss.Index:
        """One model's FAISS index, read on first use and kept (unless `keep` is False: a
        caller passing over several large indexes once need not hold them all)."""
        position = self.position(model)
        if position not in self._indexes:
            name = self.manifest.index_files[position]
            handle = self._checked(name)
            index = read_index(
                Path(f"/dev/fd/{handle.fileno()}"),
                self.manifest.faiss_index,
                name=f"bank {self.name}: {name}",
            )
            record = self.models[position]
            if index.ntotal != len(self) or index.d != record.dim:
                raise BankError(
                    f"bank {self.name} is inconsistent: the {record.key} index holds "
                    f"{index.ntotal} vectors of dim {index.d}; the manifest says {len(self)} "
                    f"of dim {record.dim}"
                )
            if not keep:
                return index
            self._indexes[position] = index
        return self._indexes[position]

    def nearest(self, model: ModelRef, device: str = "cpu") -> LazyNearest:
        """One model's certified nearest-row search (what `topk` asks of the bank). The index is
        read on first search, so methods that never search never read it; an IVF index's scan is
        loaded from where `ucl index` saved it (`ucl_cli.bank.nearest.scan_path`). With a CUDA
        `device` the searches run on a GPU copy when FAISS can make one (`bank.placement`)."""
        # Imported here: its bounds' arithmetic loads torch, which opening a bank must not.
        from ucl_cli.bank.nearest import DEFAULT_NPROBE, CertifiedNearest, LazyNearest, scan_path
        from ucl_cli.bank.placement import place_index

        position = self.position(model)
        if (position, device) in self._nearest:  # a warm process (ucl serve) searches it again
            return self._nearest[(position, device)]
        key = self.models[position].key
        max_norm = self.row_norm(key)  # what the manifest records: no pass over the rows
        vectors, scan_cache = self.vectors(key), scan_path(self, key)

        def search() -> CertifiedNearest:
            index = self.index(key)
            copy = place_index(index, device).gpu
            return CertifiedNearest(
                index, vectors, DEFAULT_NPROBE, scan_cache, max_norm, device_copy=copy
            )

        self._nearest[(position, device)] = LazyNearest(search)
        return self._nearest[(position, device)]

    def content_key(self, model: ModelRef) -> str | None:
        """What names one model's vectors and index by content (the manifest's SHA-256 of
        both): the key of anything derived from them. None when either is not recorded."""
        position = self.position(model)
        vectors = self.manifest.files.get(self.manifest.vector_files[position])
        index = self.index_sha256(model)
        if vectors is None or index is None:
            return None
        return f"{vectors.sha256}:{index}"

    def index_sha256(self, model: ModelRef) -> str | None:
        """The SHA-256 the manifest records for one model's index file (a content key)."""
        record = self.manifest.files.get(self.manifest.index_files[self.position(model)])
        return None if record is None else record.sha256

    def search(
        self, model: ModelRef, queries: np.ndarray, k: int, *, nprobe: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k bank rows by inner product with unit-norm queries [N, dim]: (scores, rows)."""
        return search(self.index(model), queries, min(k, max(len(self), 1)), nprobe=nprobe)

    def items(self) -> Iterator[BankItem]:
        """Every row's item, in row order, streamed."""
        fd = self._checked(self.manifest.items_file).fileno()
        offset, pending = 0, b""
        while block := os.pread(fd, 1 << 20, offset):
            offset += len(block)
            lines = (pending + block).split(b"\n")
            pending = lines.pop()
            for raw in lines:
                yield BankItem.from_line(raw)
        if pending:
            yield BankItem.from_line(pending)

    def item(self, row: int) -> BankItem:
        """The item of one row (the first call indexes line offsets: 8 bytes a row)."""
        if not 0 <= row < len(self):
            raise IndexError(f"row {row} is outside bank {self.name} of {len(self)} rows")
        offsets = self._line_offsets()
        handle = self._checked(self.manifest.items_file)
        size = int(offsets[row + 1] - offsets[row])
        return BankItem.from_line(os.pread(handle.fileno(), size, int(offsets[row])))

    def texts(self, rows: Sequence[int]) -> list[str]:
        return [self.item(int(row)).text for row in rows]

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles = {}
        self._vectors.clear()
        self._indexes.clear()
        self._nearest.clear()

    def __enter__(self) -> Bank:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _checked(self, name: str) -> BinaryIO:
        """The open file `name`, checked against the manifest's SHA-256 on first use."""
        handle = self._handles[name]
        if name not in self._verified:
            _verify_file(self.path, name, handle, self.manifest.files[name].sha256)
            self._verified.add(name)
        return handle

    def _line_offsets(self) -> np.ndarray:
        if self._offsets is None:
            handle = self._checked(self.manifest.items_file)
            starts, offset = [np.zeros(1, dtype=np.int64)], 0
            while block := os.pread(handle.fileno(), 1 << 22, offset):
                newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
                starts.append(newlines.astype(np.int64) + offset + 1)
                offset += len(block)
            self._offsets = np.concatenate(starts)
            if len(self._offsets) != len(self) + 1:
                raise BankError(
                    f"bank {self.name} is inconsistent: {self.manifest.items_file} holds "
                    f"{len(self._offsets) - 1} items; the manifest says {len(self)}"
                )
        return self._offsets


def load_bank(path: str | Path, *, verify: Verify = "now", check_weights: bool = True) -> Bank:
    """Open the bank at `path`, checking every file against the manifest.

    Sizes, shapes and dtypes are checked at once; SHA-256 checksums at once (`verify="now"`) or
    each file's when it is first read (`"on_read"`: a query reads only what its method needs),
    both skipping files the digest memo already vouches for; `"reread"` reads every file now
    whatever the memo says (`ucl banks --verify`).
    `check_weights=False` accepts encoders whose weights differ from the ones that made the
    bank's vectors (`check_models` refuses them otherwise).
    """
    if verify not in ("now", "on_read", "reread"):
        raise ValueError(f"verify must be 'now', 'on_read' or 'reread', not {verify!r}")
    bank_dir = Path(path).expanduser()
    from ucl_cli.bank.shards import is_sharded, load_sharded_bank

    if is_sharded(bank_dir):  # a bank stored as shards, each a bank of its own
        return load_sharded_bank(bank_dir, verify=verify, check_weights=check_weights)
    for attempt in range(OPEN_ATTEMPTS):
        manifest = read_manifest(bank_dir)
        try:
            handles = _open_files(bank_dir, manifest)
        except FileNotFoundError as err:
            if attempt + 1 < OPEN_ATTEMPTS and read_manifest(bank_dir) != manifest:
                continue  # a writer published meanwhile: read the new manifest
            raise BankError(
                f"bank {bank_dir} is incomplete: {Path(err.filename).name} is missing"
            ) from None
        try:
            _validate(bank_dir, manifest, handles, verify)
        except BaseException:
            for handle in handles.values():
                handle.close()
            raise
        return Bank(
            bank_dir, manifest, handles, verified=verify != "on_read", check_weights=check_weights
        )
    raise BankError(f"bank {bank_dir} keeps changing while being opened; try again")


def _open_files(bank_dir: Path, manifest: Manifest) -> dict[str, BinaryIO]:
    handles: dict[str, BinaryIO] = {}
    try:
        for name in manifest.files:
            handles[name] = open(bank_dir / name, "rb")  # noqa: SIM115 (held by the Bank)
    except BaseException:
        for handle in handles.values():
            handle.close()
        raise
    named = {manifest.items_file, *manifest.vector_files, *manifest.index_files}
    if not named <= set(manifest.files):
        missing = sorted(named - set(manifest.files))[0]
        raise BankError(f"bank {bank_dir} is corrupt: the manifest lists no checksum for {missing}")
    return handles


def _validate(
    bank_dir: Path, manifest: Manifest, handles: dict[str, BinaryIO], verify: Verify
) -> None:
    for name, record in manifest.files.items():
        size = os.fstat(handles[name].fileno()).st_size
        if size != record.size:
            raise BankError(
                f"bank {bank_dir} is corrupt: {name} has {size} bytes; the manifest says "
                f"{record.size}"
            )
    for model, name in zip(manifest.models, manifest.vector_files, strict=True):
        matrix = map_npy(handles[name])
        if matrix.dtype != np.float32 or matrix.shape != (manifest.count, model.dim):
            raise BankError(
                f"bank {bank_dir} is inconsistent: {name} holds {matrix.dtype} "
                f"{list(matrix.shape)}; the manifest says float32 [{manifest.count}, {model.dim}]"
            )
    if verify != "on_read":
        for name, record in manifest.files.items():
            _verify_file(bank_dir, name, handles[name], record.sha256, reread=verify == "reread")


def _verify_file(
    bank_dir: Path, name: str, handle: BinaryIO, expected: str, *, reread: bool = False
) -> None:
    actual = memoised_sha256(bank_dir / name, fd=handle.fileno(), reread=reread)
    if actual != expected:
        raise BankError(
            f"bank {bank_dir} is corrupt: {name} has SHA-256 {actual[:12]}…; the manifest says "
            f"{expected[:12]}…"
        )


def save_bank(
    path: str | Path,
    items: Sequence[BankItem],
    vectors: Sequence[np.ndarray],
    models: Sequence[Encoder | ModelRecord],
    *,
    modality: str = "text",
    faiss_index: str = "auto",
    overwrite: bool = False,
) -> Bank:
    """Write a bank from in-memory rows (e.g. embeddings computed elsewhere) and open it.

    `vectors[i]` is model `models[i]`'s float32 [len(items), dim] matrix of unit-norm rows.
    """
    from ucl_cli.bank.writer import BankWriter, WriterOptions

    bank_dir = Path(path).expanduser()
    if (bank_dir / MANIFEST_NAME).exists() and not overwrite:
        raise BankError(f"{bank_dir} already holds a bank; pass overwrite=True to replace it")
    if len(vectors) != len(models) or any(len(matrix) != len(items) for matrix in vectors):
        shapes = ", ".join(str(np.shape(matrix)) for matrix in vectors)
        raise BankError(
            f"save_bank needs one [{len(items)}, dim] matrix per model ({len(models)}); "
            f"got {shapes or 'none'}"
        )
    records = [ModelRecord.of(model) for model in models]
    options = WriterOptions(modality=modality, faiss_index=faiss_index, replace=True)
    with BankWriter(bank_dir, records, options) as writer:
        step = SAVE_BATCH_ROWS
        for start in range(0, len(items), step):
            rows = slice(start, start + step)
            writer.add(items[rows], [np.asarray(matrix[rows]) for matrix in vectors])
        writer.publish()
    return load_bank(bank_dir)
