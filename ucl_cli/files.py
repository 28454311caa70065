"""File primitives every part of `ucl` writes and checks files with: content hashes, atomic
replacement, and the one translation of an OS failure into an error that names the file.

A file `ucl` writes (a bank manifest, an eval or synth report, a cache's side files) is written
next to its final name and then renamed over it, so a crash at any instant leaves the old file or
the whole new one, never a mix.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ucl_cli.errors import InputFileError

BLOCK_BYTES = 8 << 20


def sha256_file(path: Path) -> str:
    with open(path, "rb") as handle:
        return sha256_fd(handle.fileno())


def sha256_fd(fd: int) -> str:
    """Checksum of an open file from its start, without moving its offset."""
    digest, offset = hashlib.sha256(), 0
    while block := os.pread(fd, BLOCK_BYTES, offset):
        digest.update(block)
        offset += len(block)
    return digest.hexdigest()


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
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent if str(path.parent) else Path("."))


def atomic_write_json(path: Path, value: Any, *, indent: int = 2) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode())


def write_json_file(path: Path, value: Any, *, what: str = "the results") -> None:
    """A report the user asked for (`--out`): its folder made, written atomically, and any OS
    failure raised as an `InputFileError` naming the file and the reason."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, value, indent=1)
    except OSError as err:
        raise InputFileError(path, f"cannot write {what}: {err.strerror or err}") from None


def publish_file(tmp: Path, path: Path) -> None:
    """Flush `tmp` to disk and move it to `path` (the caller syncs the directory afterwards)."""
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
