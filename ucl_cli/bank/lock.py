"""One writer per bank at a time: an advisory `flock` on `<bank>/.lock`.

The kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a
crashed writer never leaves a stale lock behind. Readers take no lock: they only ever see
published states (see `manifest.py`).

A run that leaves a bank with nothing in it (an empty corpus, Ctrl-C before the first batch)
removes the lock file, and the directory when it made it, so a failed first run leaves no trace.
A waiter may then hold the lock of a file no longer in the directory; so every holder checks,
once it has the lock, that the file it locked is still the one at `.lock`, and starts again if not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path

from ucl_cli.errors import BankError

LOCK_NAME = ".lock"
POLL_SECONDS = 0.1


class BankLock:
    """Exclusive writer lock; `timeout=None` waits as long as it takes, `0` fails at once."""

    def __init__(
        self,
        bank_dir: Path,
        *,
        timeout: float | None = None,
        on_wait: Callable[[str], None] | None = None,
    ):
        self.path = bank_dir / LOCK_NAME
        self.timeout = timeout
        self.on_wait = on_wait
        self._fd: int | None = None
        self._made_dir = False  # whether this lock created the bank directory
        self._told = False  # on_wait is called once, even if the lock file changes meanwhile

    def acquire(self) -> None:
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            if not self.path.parent.is_dir():
                with contextlib.suppress(FileExistsError):
                    self.path.parent.mkdir(parents=True)
                    self._made_dir = True
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the directory was removed in between: make it again
                continue
            try:
                self._wait_for(fd, deadline)
                if _same_file(fd, self.path):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # its holder removed the file we waited on: lock the current one
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self, *, remove_if_empty: bool = False) -> None:
        """Unlock; with `remove_if_empty`, a directory holding nothing but this lock file loses
        the file, and the directory itself goes too if this lock created it."""
        if self._fd is None:
            return
        try:
            if remove_if_empty and self._only_the_lock_left():
                self.path.unlink()  # while locked: a waiter sees the file is gone and retries
                if self._made_dir:
                    with contextlib.suppress(OSError):  # not empty (a waiter came): kept
                        self.path.parent.rmdir()
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _only_the_lock_left(self) -> bool:
        try:
            return [entry.name for entry in os.scandir(self.path.parent)] == [LOCK_NAME]
        except OSError:
            return False

    def __enter__(self) -> BankLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _wait_for(self, fd: int, deadline: float | None) -> None:
        if _try_lock(fd):
            return
        holder = self._holder(fd)
        if self.timeout is not None and self.timeout <= 0:
            raise self._busy(holder)
        if self.on_wait is not None and not self._told:
            self._told = True
            self.on_wait(holder)
        if deadline is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        while time.monotonic() < deadline:
            time.sleep(POLL_SECONDS)
            if _try_lock(fd):
                return
        raise self._busy(holder)

    def _holder(self, fd: int) -> str:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return f"pid {pid}" if pid.isdigit() else "another process"

    def _busy(self, holder: str) -> BankError:
        return BankError(
            f"bank {self.path.parent} is being written by {holder}; wait for it to finish "
            "(or let this run wait for it)"
        )


def _same_file(fd: int, path: Path) -> bool:
    """Whether `fd` is still the file at `path` (not removed, nor replaced, since it was opened)."""
    try:
        here = path.stat()
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (opened.st_dev, opened.st_ino)


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
