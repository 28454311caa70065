"""Reading the paired manifest of `ucl eval`: one CSV row per item, an image and an audio file.

Layout (a header row is required; column names are matched without regard to case):

    image,audio,caption,caption_2
    frames/YzBKd1.jpg,clips/YzBKd1.wav,A dog barks twice,A dog is barking

- `image` and `audio` (required): the item's two files. Relative paths are taken from the
  manifest's own folder, so a manifest can move with its data. `--direction` decides which of
  the two is the query and which the candidate.
- `caption`, `caption_2`, ... (optional, any number of columns whose name starts with
  "caption"): the item's texts, used only by the leakage guard.
- `id` (optional): a name for the item in messages (default: its line number).
Other columns are ignored; a `.tsv` or `.tab` file is read tab-separated.

Every problem names the manifest and the line, and all problems are collected before raising,
so a manifest with several mistakes is fixed in one pass.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from ucl_cli.errors import InputFileError

REQUIRED_COLUMNS = ("image", "audio")
CAPTION_PREFIX = "caption"
# Problems named one by one in the error message; the rest are counted.
SHOWN_PROBLEMS = 5


class ManifestError(InputFileError):
    """The manifest cannot be used as written; the message names its lines."""


@dataclass(frozen=True)
class PairedItem:
    """One evaluation item: two files of the same moment (e.g. a video's frame and its sound)."""

    line: int  # 1-based line of the manifest where the row starts
    name: str
    image: Path
    audio: Path
    captions: tuple[str, ...] = ()


@dataclass(frozen=True)
class PairManifest:
    """The items of a manifest, in file order, with the file's SHA-256 for the report."""

    path: Path
    items: tuple[PairedItem, ...]
    sha256: str

    def __len__(self) -> int:
        return len(self.items)


def read_pairs(path: str | Path) -> PairManifest:
    """Parse and check a manifest: columns, empty cells, missing files, repeated pairs."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(path, "no such file") from None
    except OSError as err:
        raise ManifestError(path, f"cannot read: {err.strerror or err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ManifestError(path, f"not UTF-8 text (byte {err.start})") from None
    delimiter = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
    items = _parse(path, text, delimiter)
    if not items:
        raise ManifestError(path, "holds a header but no items")
    return PairManifest(path, tuple(items), hashlib.sha256(raw).hexdigest())


def pairs_from(items: Sequence[PairedItem], name: str = "<memory>") -> PairManifest:
    """A manifest built in Python (no file): its checksum covers the items' paths and texts."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(repr((str(item.image), str(item.audio), item.captions)).encode())
    return PairManifest(Path(name), tuple(items), digest.hexdigest())


def _parse(path: Path, text: str, delimiter: str) -> list[PairedItem]:
    rows = _rows(path, text, delimiter)
    header_line, header = next(rows, (0, []))
    if not header:
        raise ManifestError(path, f"is empty; expected a header row with {_required()}")
    columns = [name.strip().lower() for name in header]
    missing = [name for name in REQUIRED_COLUMNS if name not in columns]
    if missing:
        raise ManifestError(
            path,
            f"line {header_line}: the header lacks the column {' and '.join(map(repr, missing))} "
            f"(it has: {', '.join(map(repr, columns))}); expected {_required()}",
        )
    base = path.parent
    problems: list[str] = []
    items: list[PairedItem] = []
    first_line: dict[tuple[Path, Path], int] = {}
    for line, row in rows:
        item = _item(line, row, columns, base, problems)
        if item is None:
            continue
        pair = (item.image.resolve(), item.audio.resolve())
        if pair in first_line:
            problems.append(f"line {line}: repeats the image and audio of line {first_line[pair]}")
            continue
        first_line[pair] = line
        items.append(item)
    if problems:
        raise ManifestError(path, _summary(problems))
    return items


def _rows(path: Path, text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """(line where the record starts, fields) for every non-blank record."""
    reader = csv.reader(text.splitlines(keepends=True), delimiter=delimiter)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise ManifestError(path, f"line {start}: malformed CSV ({err})") from None
        if any(cell.strip() for cell in row):
            yield start, row


def _item(
    line: int, row: list[str], columns: list[str], base: Path, problems: list[str]
) -> PairedItem | None:
    if len(row) < len(columns):
        row = row + [""] * (len(columns) - len(row))
    cells = dict(zip(columns, (cell.strip() for cell in row), strict=False))
    files: dict[str, Path] = {}
    for column in REQUIRED_COLUMNS:
        value = cells.get(column, "")
        if not value:
            problems.append(f"line {line}: the {column} cell is empty")
            continue
        file = Path(value).expanduser()
        file = file if file.is_absolute() else base / file
        if not file.is_file():
            what = "is a folder" if file.is_dir() else "does not exist"
            problems.append(f"line {line}: the {column} file {value} {what} ({file})")
            continue
        files[column] = file
    if len(files) < len(REQUIRED_COLUMNS):
        return None
    captions = tuple(
        cells[name] for name in columns if name.startswith(CAPTION_PREFIX) and cells.get(name, "")
    )
    name = cells.get("id") or f"line {line}"
    return PairedItem(line, name, files["image"], files["audio"], captions)


def _summary(problems: list[str]) -> str:
    shown = "; ".join(problems[:SHOWN_PROBLEMS])
    more = len(problems) - SHOWN_PROBLEMS
    return shown + (f" (and {more} more problems)" if more > 0 else "")


def _required() -> str:
    return "the columns 'image' and 'audio' (and optionally 'caption...' and 'id')"
