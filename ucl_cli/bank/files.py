"""The bank's own file formats: float32 .npy streams written and read in bounded chunks, files
checksummed as they are written, and file-name-safe model keys. (The general primitives, atomic
replacement and hashes, are `ucl_cli.files`.)
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

# Rows copied or hashed per step: bounds the memory of every streaming pass (a few MiB).
CHUNK_BYTES = 8 << 20


class HashingWriter:
    """A file being written that checksums what passes through it, so no second read is needed."""

    def __init__(self, path: Path):
        self._file = open(path, "wb")  # noqa: SIM115 (closed by __exit__)
        self._digest = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        self.size += len(data)
        return self._file.write(data)

    def writelines(self, lines: Iterator[bytes]) -> None:
        for line in lines:
            self.write(line)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def __enter__(self) -> HashingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def slug(text: str) -> str:
    """A file-name-safe form of a model key ("clip:ViT-B-32/laion2b" -> "clip_ViT-B-32_laion2b")."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "model"


def write_npy_header(handle: BinaryIO, rows: int, dim: int) -> None:
    """Start a float32 C-order .npy file of shape [rows, dim]; the caller streams the rows after."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)}
    np.lib.format.write_array_header_1_0(handle, header)


def rows_per_chunk(dim: int) -> int:
    return max(1, CHUNK_BYTES // (4 * max(dim, 1)))


def read_npy_header(handle: BinaryIO) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran_order, dtype) of the .npy at the handle's position, left after the header."""
    version = np.lib.format.read_magic(handle)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


def map_npy(handle: BinaryIO) -> np.ndarray:
    """Read-only memory map of an open .npy file (np.load maps only by file name)."""
    handle.seek(0)
    shape, fortran_order, dtype = read_npy_header(handle)
    if not np.prod(shape):
        return np.empty(shape, dtype=dtype)
    order = "F" if fortran_order else "C"
    return np.memmap(handle, dtype=dtype, mode="r", offset=handle.tell(), shape=shape, order=order)


def iter_npy_rows(path: Path, dim: int) -> Iterator[np.ndarray]:
    """Stream a float32 [rows, dim] .npy in chunks with plain reads.

    Plain reads instead of a memory map keep the pages out of this process's resident memory,
    so building a bank of any size costs the same few MiB here.
    """
    with open(path, "rb") as handle:
        shape, _, _ = read_npy_header(handle)
        remaining = shape[0]
        step = rows_per_chunk(dim)
        while remaining:
            count = min(step, remaining)
            chunk = np.fromfile(handle, dtype="<f4", count=count * dim)
            if chunk.size != count * dim:
                raise OSError(f"{path} ends early (truncated .npy)")
            yield chunk.reshape(count, dim)
            remaining -= count


def iter_raw_rows(path: Path, dim: int, rows: int) -> Iterator[np.ndarray]:
    """Stream the first `rows` float32 rows of a headerless staging file."""
    step = rows_per_chunk(dim)
    with open(path, "rb") as handle:
        remaining = rows
        while remaining:
            count = min(step, remaining)
            chunk = np.fromfile(handle, dtype="<f4", count=count * dim)
            if chunk.size != count * dim:
                raise OSError(f"{path} ends early (truncated staging file)")
            yield chunk.reshape(count, dim)
            remaining -= count
