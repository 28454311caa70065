"""Reading bridge corpora as a stream of texts: plain lines, CSV/TSV, JSON lines.

Formats come from the file extension (`.csv`, `.tsv`, `.jsonl`/`.ndjson`, anything else: one
text per line) unless given. Blank texts are skipped. A line that is not valid UTF-8 (or, in
JSON lines, not valid JSON or without the field) is skipped and reported through `on_skip`, so
that one bad line does not stop the indexing of a scraped corpus of millions; with
`strict=True` it is an error naming the file and line instead. Duplicates are removed where
items meet the bank (`ucl_cli.bank.indexer`), which also catches duplicates across files.

`ContextFit` fits the texts to the models that will embed them: a text longer than a text
tower's context (77 tokens for CLIP and CLAP) would be cut silently by the tokenizer, differently
by each tower; it is embedded instead as the whole words every tower takes in full, marked
`truncated`, and counted with its FILE:LINE so that the CLI can say so.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ucl_cli.bank.items import BankItem, normalize_text, text_item
from ucl_cli.errors import InputFileError, UsageError

if TYPE_CHECKING:
    from ucl_cli.encoders.base import Encoder

FORMATS = ("lines", "csv", "tsv", "jsonl")
EXTENSIONS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}
DEFAULT_NAME = "text"  # the column or field used when none is given and there is a choice

# Called with ("FILE:LINE", reason) for each line left out.
SkipCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class CorpusOptions:
    format: str = "auto"  # auto | lines | csv | tsv | jsonl
    column: str | None = None  # CSV/TSV column holding the text
    field: str | None = None  # JSON lines field holding the text
    strict: bool = False  # a bad line is an error instead of a skipped line


@dataclass(frozen=True)
class CorpusRecord:
    text: str
    line: int  # 1-based physical line where the record starts


def corpus_format(path: str | Path, options: CorpusOptions) -> str:
    if options.format != "auto":
        if options.format not in FORMATS:
            raise UsageError(f"unknown corpus format {options.format!r} (use one of {FORMATS})")
        return options.format
    detected = EXTENSIONS.get(Path(str(path)).suffix.lower())
    if detected is None and options.column:
        return "csv"
    if detected is None and options.field:
        return "jsonl"
    return detected or "lines"


def read_corpus(
    path: str | Path, options: CorpusOptions | None = None, on_skip: SkipCallback | None = None
) -> Iterator[CorpusRecord]:
    """Stream the texts of one corpus file (`-`: standard input); raise if it holds none."""
    options = options or CorpusOptions()
    fmt = corpus_format(path, options)
    reader = _Reader(str(path), options, on_skip)
    with _open_binary(path) as handle:
        lines = reader.decoded_lines(handle)
        if fmt == "lines":
            records = lines
        elif fmt == "jsonl":
            records = reader.json_records(lines)
        else:
            records = reader.table_records(lines, "\t" if fmt == "tsv" else ",")
        found = 0
        for number, text in records:
            text = normalize_text(text)
            if text:
                found += 1
                yield CorpusRecord(text, number)
    if not found:
        detail = f" ({reader.skipped} unreadable lines skipped)" if reader.skipped else ""
        raise InputFileError(path, f"holds no text: it is empty or every line is blank{detail}")


def corpus_items(
    paths: Iterable[str | Path],
    options: CorpusOptions | None = None,
    on_skip: SkipCallback | None = None,
) -> Iterator[BankItem]:
    """Bank items for the texts of several corpus files, in order (each knows its FILE:LINE)."""
    for path in paths:
        for record in read_corpus(path, options, on_skip):
            yield text_item(record.text, normalized=True, origin=f"{path}:{record.line}")


class ContextFit:
    """Cuts texts some text tower could not embed whole to the longest run of whole words that
    every tower embeds in full, so that both towers embed the same bank text and the bank says
    what was embedded (`BankItem.truncated`). The key stays the full text's, so the same line
    indexed again is still a duplicate.

    Towers are the encoders with `text_token_counts(texts)` and `text_context` (tokens that fit,
    special tokens included); other encoders (precomputed vectors, test fakes) cut nothing.
    `cut` counts the texts cut and `where` names the first SHOWN of them (FILE:LINE).
    """

    SHOWN = 5
    BATCH = 256

    def __init__(self, encoders: Sequence[Encoder]):
        self.towers = [e for e in encoders if callable(getattr(e, "text_token_counts", None))]
        self.context = min((int(e.text_context) for e in self.towers), default=0)
        self.cut = 0
        self.where: list[str] = []

    def apply(self, items: Iterable[BankItem]) -> Iterator[BankItem]:
        """The items, long texts cut (lazily, a batch of texts tokenized at a time)."""
        if not self.towers:
            yield from items
            return
        iterator = iter(items)
        while chunk := list(itertools.islice(iterator, self.BATCH)):
            too_long = self._too_long([item.text for item in chunk])
            for item, cut in zip(chunk, too_long, strict=True):
                yield self._fit(item) if cut else item

    def message(self) -> str | None:
        """One line for the user when texts were cut (the CLI adds `ucl: `), else None."""
        if not self.cut:
            return None
        texts, verb = ("1 text", "was") if self.cut == 1 else (f"{self.cut:,} texts", "were")
        where = ", ".join(self.where)
        if self.cut > len(self.where):
            where += f" and {self.cut - len(self.where):,} more"
        return (
            f"{texts} longer than a text tower's context ({self.context} tokens) {verb} cut to "
            f"the words every tower embeds: {where}; --explain marks them (cut)"
        )

    def _too_long(self, texts: list[str]) -> list[bool]:
        # Every token covers at least one byte of the text; with a margin for the tokenizers'
        # own cleaning, a text of at most half the context in UTF-8 bytes fits every tower.
        floor = (self.context - 2) // 2
        long = [n for n, text in enumerate(texts) if len(text.encode("utf-8")) > floor]
        over = [False] * len(texts)
        for tower in self.towers:
            counts = tower.text_token_counts([texts[n] for n in long]) if long else []
            for n, count in zip(long, counts, strict=True):
                over[n] = over[n] or count > tower.text_context
        return over

    def _fits(self, text: str) -> bool:
        return all(t.text_token_counts([text])[0] <= t.text_context for t in self.towers)

    def _fit(self, item: BankItem) -> BankItem:
        words = item.text.split(" ")
        low, high = 0, len(words) - 1  # the most words that fit, by bisection
        while low < high:
            middle = (low + high + 1) // 2
            if self._fits(" ".join(words[:middle])):
                low = middle
            else:
                high = middle - 1
        self.cut += 1
        if item.origin is not None and len(self.where) < self.SHOWN:
            self.where.append(item.origin)
        # A first word longer than the context: nothing fits whole, the tokenizers cut it.
        text = " ".join(words[:low]) if low else item.text
        return replace(item, text=text, truncated=True)


def count_lines(path: str | Path) -> int | None:
    """Physical lines in a file (an upper bound on its records, for progress bars)."""
    if str(path) == "-":
        return None
    count, ends_with_newline = 0, True
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            count += block.count(b"\n")
            ends_with_newline = block.endswith(b"\n")
    return count + (0 if ends_with_newline else 1)


class _Reader:
    """Decoding and parsing for one file, counting and reporting what it leaves out."""

    def __init__(self, name: str, options: CorpusOptions, on_skip: SkipCallback | None):
        self.name = name
        self.options = options
        self.on_skip = on_skip
        self.skipped = 0
        self.line = 0  # the physical line read last

    def skip(self, line: int, reason: str) -> None:
        if self.options.strict:
            raise InputFileError(self.name, f"line {line}: {reason}")
        self.skipped += 1
        if self.on_skip is not None:
            self.on_skip(f"{self.name}:{line}", reason)

    def decoded_lines(self, handle: BinaryIO) -> Iterator[tuple[int, str]]:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                self.skip(
                    number,
                    f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {err.start + 1})",
                )
                continue
            if number == 1:
                text = text.removeprefix("\ufeff")
            yield number, text.rstrip("\r\n")

    def json_records(self, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, str]]:
        field = self.options.field
        first = True
        for number, line in lines:
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as err:
                self.skip(number, f"not valid JSON ({err.msg} at column {err.colno})")
                continue
            if isinstance(value, str) and field is None:
                yield number, value
                continue
            if not isinstance(value, dict):
                self.skip(number, f"expected a JSON object, found {type(value).__name__}")
                continue
            if first:
                field = self._choose(number, list(value), field, "field", "--field")
                first = False
            text = value.get(field)
            if isinstance(text, str):
                yield number, text
            elif field not in value:
                self.skip(number, f"no field {field!r}")
            elif text is not None:
                self.skip(number, f"field {field!r} is a {type(text).__name__}, not text")

    def table_records(
        self, lines: Iterable[tuple[int, str]], delimiter: str
    ) -> Iterator[tuple[int, str]]:
        rows = csv.reader((line + "\n" for _, line in _tracking(lines, self)), delimiter=delimiter)
        header = self._next_row(rows)
        if header is None:
            return
        column = self._choose(self.line, header, self.options.column, "column", "--column")
        position = header.index(column)
        while (row := self._next_row(rows)) is not None:
            if not row:
                continue
            if position >= len(row):
                self.skip(self.line, f"row has {len(row)} fields, no {column!r}")
                continue
            yield self.line, row[position]

    def _next_row(self, rows: Iterator[list[str]]) -> list[str] | None:
        """The next CSV row; a malformed one (e.g. a field over the size limit) is skipped."""
        while True:
            try:
                return next(rows, None)
            except csv.Error as err:
                self.skip(self.line, f"malformed row ({err})")

    def _choose(
        self, line: int, names: list[str], wanted: str | None, kind: str, option: str
    ) -> str:
        """The named column or field, checked on the first record, so a typo stops the run."""
        if wanted is None:
            return self._pick(line, names, kind, option)
        if wanted not in names:
            raise UsageError(
                f"{self.name}:{line}: no {kind} {wanted!r} (the {kind}s are: {', '.join(names)})"
            )
        return wanted

    def _pick(self, line: int, names: list[str], kind: str, option: str) -> str:
        """The only name, or 'text'; otherwise the user must choose."""
        if len(names) == 1:
            return names[0]
        if DEFAULT_NAME in names:
            return DEFAULT_NAME
        raise UsageError(
            f"{self.name}:{line}: which {kind} holds the text? pass {option} "
            f"(one of: {', '.join(names)})"
        )


def _tracking(lines: Iterable[tuple[int, str]], reader: _Reader) -> Iterator[tuple[int, str]]:
    for number, line in lines:
        reader.line = number
        yield number, line


def _open_binary(path: str | Path) -> contextlib.AbstractContextManager[BinaryIO]:
    if str(path) == "-":
        return contextlib.nullcontext(sys.stdin.buffer)
    try:
        return open(path, "rb")
    except IsADirectoryError:
        raise UsageError(
            f"{path} is a folder; give a text file, or index files with --modality image|audio"
        ) from None
    except FileNotFoundError:
        raise InputFileError(path, "no such file") from None
    except OSError as err:
        raise InputFileError(path, err.strerror or str(err)) from None
