"""Content digests of files, and a memo so that an unchanged file is never read twice.

Two things are identified by their bytes: model weights (vectors are keyed by the weights that
made them) and bank files (damage is detected before a bank is used). Both can be gigabytes, so
each file's SHA-256 is remembered in `digests.json` under `UCL_HOME`, keyed by its resolved path
and stat (size, mtime, ctime, inode): any write to the file changes its ctime and so forgets the
digest. A digest taken while the file might still have been changing within the file system's
clock tick (`RACY_WINDOW_NS`) is used once and taken again next time. The memo is a cache: a
damaged or unwritable one costs a re-read, never a wrong answer.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

from ucl_cli import config
from ucl_cli.files import sha256_fd, sha256_file

# A digest is trusted only if the file's last change is this much older than the digest.
RACY_WINDOW_NS = 2_000_000_000
MEMO_NAME = "digests.json"


def memoised_sha256(path: Path, *, fd: int | None = None, reread: bool = False) -> str:
    """The SHA-256 of `path` (read through `fd` when given), from the memo when the file's stat
    is the one it had when it was last read; otherwise (or with `reread`) read now and
    remembered."""
    real = os.path.realpath(path)
    info = os.fstat(fd) if fd is not None else os.stat(real)
    entry = None if reread else _read_memo().get(real)
    if entry is not None and entry.get("stat") == _stat_key(info) and _settled(entry, info):
        return str(entry["sha256"])
    started = time.time_ns()
    digest = sha256_fd(fd) if fd is not None else sha256_file(Path(real))
    remember(Path(real), digest, info=info, hashed_ns=started)
    return digest


def remember(
    path: Path, digest: str, *, info: os.stat_result | None = None, hashed_ns: int | None = None
) -> None:
    """Record that `path`, as it is now, has SHA-256 `digest`: for files this process has just
    written and checksummed on the way (their stat is taken after the last write), and for files
    just read. `hashed_ns`: when the bytes were read (default: settled, the writer's case)."""
    real = os.path.realpath(path)
    try:
        info = info or os.stat(real)
    except OSError:
        return
    memo = _read_memo()
    memo[real] = {
        "stat": _stat_key(info),
        "sha256": digest,
        "hashed_ns": hashed_ns if hashed_ns is not None else _settled_ns(info),
    }
    _write_memo(memo)


def _stat_key(info: os.stat_result) -> list[int]:
    return [info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino]


def _settled_ns(info: os.stat_result) -> int:
    return max(info.st_mtime_ns, info.st_ctime_ns) + RACY_WINDOW_NS + 1


def _settled(entry: dict, info: os.stat_result) -> bool:
    return max(info.st_mtime_ns, info.st_ctime_ns) + RACY_WINDOW_NS < int(entry["hashed_ns"])


def _memo_path() -> Path:
    return config.ucl_home() / MEMO_NAME


def _read_memo() -> dict[str, dict]:
    try:
        value = json.loads(_memo_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_memo(memo: dict[str, dict]) -> None:
    """Atomically, and not at all where UCL_HOME cannot be written (the memo is only a cache).
    Entries of files that no longer exist are dropped."""
    path = _memo_path()
    kept = {name: entry for name, entry in memo.items() if os.path.exists(name)}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".digests-", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(kept, out)
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
