"""Durable file primitives the bank is built from: atomic replace, fsync, checksums, .npy streams.

A bank is only ever changed by writing new files next to the old ones and then atomically
replacing one small file (the manifest), so a crash at any instant leaves either the old or the
new state, never a mix. Everything here is about making that true on POSIX file systems.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ucl_cli.digests import sha256_fd, sha256_file

__all__ = ["sha256_fd", "sha256_file"]  # re-exported: the bank's files are checksummed with them

# Rows copied or hashed per step: bounds the memory of every streaming pass (a few MiB).
CHUNK_BYTES = 8 << 20


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside `path` durable (POSIX needs the directory synced too)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temporary_path(path: Path) -> Path:
    """A sibling name no other process uses, so concurrent writers never clobber each other."""
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that readers see either the old file or the whole new one."""
    tmp = temporary_path(path)
    with open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_bytes(path, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode())


def publish_file(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk and move it to `path` (the caller syncs the directory afterwards)."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


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
