"""One writer per bank at a time: an advisory `flock` on `<bank>/.lock`.

The kernel drops the lock when its holder exits, however it exits (SIGKILL included), so a
crashed writer never leaves a stale lock behind. Readers take no lock: they only ever see
published states (see `manifest.py`).
"""

from __future__ import annotations

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

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            self._wait_for(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> BankLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _wait_for(self, fd: int) -> None:
        if _try_lock(fd):
            return
        holder = self._holder(fd)
        if self.timeout is not None and self.timeout <= 0:
            raise self._busy(holder)
        if self.on_wait is not None:
            self.on_wait(holder)
        if self.timeout is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
            return
        deadline = time.monotonic() + self.timeout
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


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True
