"""Rows embedded but not yet published: append-only files plus a progress record.

Each batch appends its items and one float32 block per model. A commit syncs the files and
then atomically rewrites `progress.json` with the row count and byte sizes; whatever a crash
leaves beyond those sizes is cut off on recovery, so the staged rows are always aligned across
models and a rerun never embeds a committed batch again. The writer commits after a batch once
`commit_seconds` have passed since the last commit (every batch when batches are slow, as real
models on a CPU are; about once a second when they are fast), so that syncing costs a few
percent of a run at most and a hard kill loses at most that much work.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from ucl_cli.bank.files import iter_raw_rows
from ucl_cli.bank.items import BankItem, iter_items
from ucl_cli.bank.manifest import ModelRecord
from ucl_cli.files import atomic_write_json, temporary_path

STAGING_DIR = ".staging"
PROGRESS_NAME = "progress.json"
ITEMS_NAME = "items.jsonl"
STAGING_FILE = re.compile(r"^(progress\.json|items\.jsonl|vectors-\d+\.f32)(\.tmp-\d+)?$")


@dataclass(frozen=True)
class StagingState:
    """What `progress.json` records: the committed extent of the staging files."""

    base_generation: int  # the published generation these rows extend
    modality: str
    models: tuple[ModelRecord, ...]
    rows: int = 0
    items_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "base_generation": self.base_generation,
            "modality": self.modality,
            "models": [model.to_json() for model in self.models],
            "rows": self.rows,
            "items_bytes": self.items_bytes,
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> StagingState:
        return cls(
            base_generation=int(value["base_generation"]),
            modality=str(value["modality"]),
            models=tuple(ModelRecord.from_json(model) for model in value["models"]),
            rows=int(value["rows"]),
            items_bytes=int(value["items_bytes"]),
        )


class Staging:
    """The staging area of one bank; only the lock holder touches it."""

    def __init__(self, bank_dir: Path, state: StagingState):
        self.dir = bank_dir / STAGING_DIR
        self.state = state
        self._committed = state
        self._handles: list[BinaryIO] = []

    @classmethod
    def read_state(cls, bank_dir: Path) -> StagingState | None:
        """The recorded state, or None when there is no (readable) staging area."""
        try:
            value = json.loads((bank_dir / STAGING_DIR / PROGRESS_NAME).read_text("utf-8"))
            return StagingState.from_json(value)
        except (OSError, ValueError, KeyError, TypeError):
            return None

    @classmethod
    def recover(cls, bank_dir: Path) -> Staging | None:
        """Reopen an interrupted run's rows, cutting off any half-written batch."""
        state = cls.read_state(bank_dir)
        if state is None:
            return None
        staging = cls(bank_dir, state)
        expected = [(staging.items_path, state.items_bytes)] + [
            (staging.vectors_path(i), state.rows * model.dim * 4)
            for i, model in enumerate(state.models)
        ]
        for path, size in expected:
            if not path.exists() or path.stat().st_size < size:
                return None
        for path, size in expected:
            os.truncate(path, size)
        return staging

    @classmethod
    def start(
        cls, bank_dir: Path, base_generation: int, modality: str, models: Sequence[ModelRecord]
    ) -> Staging:
        """A fresh, empty staging area (any previous one is discarded)."""
        staging = cls(bank_dir, StagingState(base_generation, modality, tuple(models)))
        staging.discard()
        staging.dir.mkdir(parents=True)
        for path in [staging.items_path] + [staging.vectors_path(i) for i in range(len(models))]:
            path.touch()
        atomic_write_json(staging.dir / PROGRESS_NAME, staging.state.to_json())
        return staging

    @property
    def items_path(self) -> Path:
        return self.dir / ITEMS_NAME

    def vectors_path(self, position: int) -> Path:
        return self.dir / f"vectors-{position}.f32"

    @property
    def rows(self) -> int:
        return self.state.rows

    def append(self, items: Sequence[BankItem], matrices: Sequence[np.ndarray]) -> None:
        """Write one batch after the staged rows (durable only once `commit` returns)."""
        if not self._handles:
            paths = [self.items_path] + [self.vectors_path(i) for i in range(len(matrices))]
            self._handles = [open(path, "ab") for path in paths]  # noqa: SIM115 (kept open)
        lines = b"".join(item.to_line() for item in items)
        blocks = [np.ascontiguousarray(matrix, dtype="<f4").tobytes() for matrix in matrices]
        for handle, data in zip(self._handles, [lines, *blocks], strict=True):
            handle.write(data)
        self.state = replace(
            self.state,
            rows=self.state.rows + len(items),
            items_bytes=self.state.items_bytes + len(lines),
        )

    @property
    def pending(self) -> bool:
        """Whether rows were appended since the last commit."""
        return self.state != self._committed

    def commit(self) -> None:
        """Make every appended row survive a crash: sync the data, then record its extent.

        The record is renamed into place without syncing the directory: after a power loss it
        may name the previous extent, which is still consistent.
        """
        if not self.pending:
            return
        for handle in self._handles:
            handle.flush()
            os.fsync(handle.fileno())
        record = self.dir / PROGRESS_NAME
        tmp = temporary_path(record)
        tmp.write_text(json.dumps(self.state.to_json()), encoding="utf-8")
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, record)
        self._committed = self.state

    def flush(self) -> None:
        """Hand appended bytes to the OS, so that reading the staging files sees them."""
        for handle in self._handles:
            handle.flush()

    def iter_items(self) -> Iterator[BankItem]:
        self.flush()
        return iter_items(self.items_path, self.state.items_bytes)

    def iter_vectors(self, position: int) -> Iterator[np.ndarray]:
        self.flush()
        return iter_raw_rows(
            self.vectors_path(position), self.state.models[position].dim, self.state.rows
        )

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        self._handles = []

    def discard(self) -> None:
        self.close()
        discard_staging(self.dir.parent)


def discard_staging(bank_dir: Path) -> None:
    """Remove the staging files (only ours: anything else a user put there stays)."""
    folder = bank_dir / STAGING_DIR
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if STAGING_FILE.match(path.name):
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()
