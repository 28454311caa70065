"""Bank items (one per row) and the keys that deduplicate them.

A text item's key is a hash of its normalised text, a file item's key a hash of its bytes, so the
same caption or the same recording is embedded once however often it is indexed.
"""

from __future__ import annotations

import hashlib
import json
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Keys are 64-bit: a collision between two different texts among a billion items has a
# probability of about 3%, among a million about 3e-8 (a collision skips one item).
KEY_BYTES = 8


@dataclass(frozen=True)
class BankItem:
    """One row of a bank.

    item_id: a stable name (the key for texts, the file path for images and audio); "id" on disk.
    text: what a person reads for this row and what the models embedded (the text itself, or the
      file's display path).
    key: 16 hex digits identifying the content; equal keys are duplicates.
    truncated: the text was longer than a text tower's context, so `text` holds the whole words
      every tower embedded and the key is still that of the full text (on disk only when true:
      banks written before it existed read as not truncated).
    origin: where the item came from ("FILE:LINE"), for messages; never stored.
    """

    item_id: str
    text: str
    key: str
    truncated: bool = False
    origin: str | None = field(default=None, compare=False, repr=False)

    def to_line(self) -> bytes:
        record: dict[str, object] = {"id": self.item_id, "text": self.text, "key": self.key}
        if self.truncated:
            record["truncated"] = True
        return (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")

    @classmethod
    def from_line(cls, line: bytes | str) -> BankItem:
        record = json.loads(line)
        return cls(
            item_id=record["id"],
            text=record["text"],
            key=record["key"],
            truncated=bool(record.get("truncated", False)),
        )


def normalize_text(text: str) -> str:
    """Unicode NFC with runs of whitespace collapsed: what is embedded and what is deduplicated.

    Case is kept: the CLAP text tower is case-sensitive, so "Dog" and "dog" are distinct samples.
    """
    return " ".join(unicodedata.normalize("NFC", text).split())


def text_item(text: str, *, normalized: bool = False, origin: str | None = None) -> BankItem:
    """The bank row for a text; `normalized=True` skips normalising it again."""
    normalized = text if normalized else normalize_text(text)
    key = hashlib.blake2b(normalized.encode("utf-8"), digest_size=KEY_BYTES).hexdigest()
    return BankItem(item_id=key, text=normalized, key=key, origin=origin)


def file_key(path: Path) -> str:
    """Content hash of a file, so a renamed or copied file is not embedded twice."""
    digest = hashlib.blake2b(digest_size=KEY_BYTES)
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def iter_item_lines(path: Path, limit_bytes: int | None = None) -> Iterator[bytes]:
    """The raw JSON lines of an items file (the first `limit_bytes` bytes when given)."""
    with open(path, "rb") as handle:
        read = 0
        for line in handle:
            read += len(line)
            if limit_bytes is not None and read > limit_bytes:
                return
            yield line


def iter_items(path: Path, limit_bytes: int | None = None) -> Iterator[BankItem]:
    for line in iter_item_lines(path, limit_bytes):
        yield BankItem.from_line(line)


class KeySet:
    """A set of 64-bit item keys that costs 8 bytes a key (a Python set costs about 70).

    Keys live in a sorted array; new ones gather in a small set and are merged in batches, so
    deduplicating a corpus of millions keeps memory flat. Lookups are vectorised per batch.
    """

    MERGE_AT = 1 << 16

    def __init__(self, keys: Iterable[str] = ()):
        self._sorted = np.empty(0, dtype=np.uint64)
        self._recent: set[int] = set()
        for key in keys:
            self.add(key)

    def __len__(self) -> int:
        self._merge()
        return len(self._sorted)

    def __contains__(self, key: str) -> bool:
        return bool(self.contains_many([key])[0])

    def contains_many(self, keys: Sequence[str]) -> np.ndarray:
        """Boolean [len(keys)]: which of `keys` the set holds."""
        values = np.fromiter((int(key, 16) for key in keys), dtype=np.uint64, count=len(keys))
        positions = np.minimum(np.searchsorted(self._sorted, values), max(len(self._sorted) - 1, 0))
        found = (
            self._sorted[positions] == values if len(self._sorted) else np.zeros(len(keys), bool)
        )
        if self._recent:
            found |= np.fromiter(
                (int(v) in self._recent for v in values), dtype=bool, count=len(keys)
            )
        return found

    def add(self, key: str) -> None:
        """Add one key (adding a key already there is harmless)."""
        self._recent.add(int(key, 16))
        if len(self._recent) >= self.MERGE_AT:
            self._merge()

    def _merge(self) -> None:
        if self._recent:
            fresh = np.fromiter(self._recent, dtype=np.uint64, count=len(self._recent))
            self._sorted = np.union1d(self._sorted, fresh)
            self._recent.clear()
