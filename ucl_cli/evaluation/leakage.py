"""The leakage guard: bank texts that ARE a test item's caption.

A bank that holds an evaluated clip's own caption hands the bridge the answer (the paper's original
code leaked the true B into the bank; docs/METHOD.md#what-the-bank-should-look-like), so recall
would measure memory, not zero-shot transfer. A bank row leaks when its text equals a manifest
caption after Unicode NFC, case folding and collapsing runs of white space. Leaked rows are
reported, and left out of every bank size unless the user allows them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ucl_cli.bank import Bank
from ucl_cli.evaluation.manifest import PairedItem


@dataclass(frozen=True)
class LeakedRow:
    row: int
    text: str
    lines: tuple[int, ...]  # manifest lines whose captions equal this row's text


@dataclass(frozen=True)
class LeakReport:
    """Which bank rows equal a manifest caption; `checked` is False where it cannot apply."""

    checked: bool
    captions: int  # distinct normalised captions in the manifest
    rows: tuple[LeakedRow, ...] = field(default_factory=tuple)
    reason: str | None = None  # why nothing was checked

    def usable_rows(self, bank_size: int, *, allow_leak: bool) -> np.ndarray:
        """Bank rows an evaluation may use: all, or all but the leaked ones."""
        if allow_leak or not self.rows:
            return np.arange(bank_size, dtype=np.int64)
        return np.setdiff1d(np.arange(bank_size, dtype=np.int64), [row.row for row in self.rows])


def caption_key(text: str) -> str:
    """The form texts are compared in: NFC, case-folded, single spaces, no outer space."""
    return " ".join(unicodedata.normalize("NFC", text).casefold().split())


def find_leaks(bank: Bank, items: Sequence[PairedItem]) -> LeakReport:
    """Scan the bank's texts once (streamed) for the manifest's captions."""
    lines_of: dict[str, list[int]] = {}
    for item in items:
        for caption in item.captions:
            key = caption_key(caption)
            if key:
                lines_of.setdefault(key, []).append(item.line)
    if bank.modality != "text":
        return LeakReport(False, len(lines_of), reason=f"the bank holds {bank.modality}, not text")
    if not lines_of:
        return LeakReport(False, 0, reason="the manifest has no captions")
    leaked = []
    for row, bank_item in enumerate(bank.items()):
        lines = lines_of.get(caption_key(bank_item.text))
        if lines is not None:
            leaked.append(LeakedRow(row, bank_item.text, tuple(sorted(set(lines)))))
    return LeakReport(True, len(lines_of), tuple(leaked))
