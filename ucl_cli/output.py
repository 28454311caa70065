"""How results reach stdout: a Rich table for people, JSON lines / TSV / paths for pipes.

The JSON lines schema of query results is stable: one object per ranked candidate with the keys
    query, query_modality, rank, candidate, candidate_modality, score, method, bank,
    temperature ([t1, t2]), normalize ("none" or "candidates")
(temperature [1.0, 1.0] with normalize "none" is the paper's estimator), and, when they
apply, certified / lower / upper (topk), caption (caption), bridge (a list of
{row, text, weight}, plus truncated: true for a bank text cut to the text towers' context),
effective_sample_size (--explain) and collection (the collection a candidate is a row of; its
candidate is the path the file had when it was indexed).

The listing commands (`ucl banks`, `ucl cache info`, `ucl models`) take `--format table|jsonl`
with the same default: a table on a terminal, JSON lines into a pipe or file.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Literal, TextIO

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ucl_cli.errors import UsageError

if TYPE_CHECKING:
    from ucl_cli.bridge import QueryResult
    from ucl_cli.bridge.pipeline import BridgeWeight

Format = Literal["table", "jsonl", "tsv", "paths"]
FORMATS: tuple[str, ...] = ("table", "jsonl", "tsv", "paths")
LIST_FORMATS: tuple[str, ...] = ("table", "jsonl")
TSV_COLUMNS = ("query", "rank", "candidate", "score", "method")
LIST_FORMAT = typer.Option(
    None,
    "--format",
    "-f",
    metavar="table|jsonl",
    help="table or jsonl (default: table on a terminal, jsonl in a pipe or file).",
    show_default=False,
)


def default_format(stream: TextIO | None = None) -> Format:
    """A table on a terminal, JSON lines into a pipe or file."""
    stream = stream or sys.stdout
    return "table" if stream.isatty() else "jsonl"


def list_format(chosen: str | None, stream: TextIO | None = None) -> str:
    """The format of a listing command: the one asked for, else a table only on a terminal."""
    chosen = chosen or default_format(stream)
    if chosen not in LIST_FORMATS:
        raise UsageError(f"unknown --format {chosen!r}; choose one of: {', '.join(LIST_FORMATS)}")
    return chosen


def write_jsonl(records: Iterable[dict[str, Any]], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    for record in records:
        stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    stream.flush()


def hit_records(results: Iterable[QueryResult]) -> Iterator[dict[str, Any]]:
    """One flat dict per ranked candidate: the JSON lines schema."""
    for result in results:
        for hit in result.hits:
            record: dict[str, Any] = {
                "query": str(result.query),
                "query_modality": result.query_modality.value,
                "rank": hit.rank,
                "candidate": str(hit.candidate),
                "candidate_modality": result.candidate_modality.value,
                "score": hit.score,
                "method": result.method,
                "bank": result.bank,
                **result.calibration.to_json(),  # temperature [t1, t2], normalize
            }
            if hit.certified is not None:
                record.update(certified=hit.certified, lower=hit.lower, upper=hit.upper)
            if hit.caption is not None:
                record["caption"] = hit.caption
            if hit.bridge:
                record["bridge"] = [_bridge_record(item) for item in hit.bridge]
                record["effective_sample_size"] = hit.effective_sample_size
            if hit.collection is not None:
                record["collection"] = hit.collection
            yield record


def _bridge_record(item: BridgeWeight) -> dict[str, Any]:
    record: dict[str, Any] = {"row": item.row, "text": item.text, "weight": item.weight}
    if item.truncated:  # the bank text was cut to the towers' context
        record["truncated"] = True
    return record


def write_results(results: list[QueryResult], fmt: Format, stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    if fmt == "jsonl":
        for record in hit_records(results):
            stream.write(json.dumps(record, ensure_ascii=False) + "\n")
    elif fmt == "tsv":
        stream.write("\t".join(TSV_COLUMNS) + "\n")
        for record in hit_records(results):
            stream.write("\t".join(_tsv_field(record[c]) for c in TSV_COLUMNS) + "\n")
    elif fmt == "paths":
        for record in hit_records(results):
            stream.write(record["candidate"] + "\n")
    else:
        console = Console(file=stream, highlight=False)
        for result in results:
            console.print(_table(result, console.width))
    stream.flush()


def _table(result: QueryResult, width: int) -> Table:
    title = (
        f"{escape(str(result.query))} ({result.query_modality.value}) -> "
        f"{result.candidate_modality.value}, method {result.method}, bank {escape(result.bank)}"
    )
    has_bounds = any(hit.certified is not None for hit in result.hits)
    has_caption = any(hit.caption is not None for hit in result.hits)
    has_bridge = any(hit.bridge for hit in result.hits)
    rows = []
    for hit in result.hits:
        row = {"rank": str(hit.rank), "score": f"{hit.score:.3f}"}
        if has_bounds:
            row["certified"] = "yes" if hit.certified else "no"
            row["bounds"] = f"[{hit.lower:.3f}, {hit.upper:.3f}]"
        if has_caption:
            row["via caption"] = escape(hit.caption or "")
        if has_bridge:
            row["carried by (weight)"] = "\n".join(_bridge_line(b) for b in hit.bridge)
            row["ESS"] = f"{hit.effective_sample_size:.1f}"
        rows.append(row)
    texts = [name for name in ("via caption", "carried by (weight)") if name in (rows or [{}])[0]]
    fixed = [name for name in (rows or [{}])[0] if name not in texts]
    paths = [str(hit.candidate) for hit in result.hits]
    path_width = _candidate_width(paths, width, fixed, rows, len(texts))
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right")
    # A fixed width: Rich may then narrow only the text columns, never cut a name in two.
    table.add_column("candidate", overflow="fold", width=path_width)
    table.add_column("score", justify="right")
    if has_bounds:
        table.add_column("certified")
        table.add_column("bounds", justify="right")
    if has_caption:
        table.add_column("via caption")
    if has_bridge:
        table.add_column("carried by (weight)", overflow="fold")
        table.add_column("ESS", justify="right")
    for row, path in zip(rows, paths, strict=True):
        cells = [row["rank"], escape(fold_path(path, path_width)), row["score"]]
        table.add_row(*cells, *(row[name] for name in list(row)[2:]))
    return table


def _candidate_width(
    paths: list[str], width: int, fixed: list[str], rows: list[dict[str, str]], texts: int
) -> int:
    """The candidate column's width: what is left of the terminal after the narrow columns (and
    half of it when bank texts share the row), but never less than the longest file or folder
    name, so that a path is folded only between names."""
    if not paths:
        return len("candidate")
    columns = len(fixed) + 1 + texts
    frame = columns + 1 + 2 * columns  # borders and each column's padding
    narrow = sum(max(len(name), *(len(row[name]) for row in rows)) for name in fixed)
    room = width - frame - narrow
    if texts:
        room = room // 2
    longest_name = max(len(part) for path in paths for part in _path_parts(path))
    longest_path = max(len(path) for path in paths)
    chosen = min(longest_path, max(room, longest_name, len("candidate")))
    return max(len(line) for path in paths for line in fold_path(path, chosen).split("\n"))


def _path_parts(path: str) -> list[str]:
    """The pieces `fold_path` never breaks: each name with its trailing separator."""
    separators = "/" + (os.sep if os.sep != "/" else "")
    return [part for part in re.split(f"(?<=[{re.escape(separators)}])", path) if part]


def _bridge_line(item: BridgeWeight) -> str:
    """A bank text and its weight; a text cut to the towers' context ends in "… (cut)"."""
    cut = "… (cut)" if item.truncated else ""
    return f"{escape(item.text)}{cut} ({item.weight:.2f})"


def fold_path(path: str, width: int) -> str:
    """`path` on lines of at most `width` characters, broken only after a folder separator, so
    that no file or folder name is cut in two (a single name longer than `width` keeps its line).
    """
    lines, line = [], ""
    for part in _path_parts(path):
        if line and len(line) + len(part) > width:
            lines.append(line)
            line = part
        else:
            line += part
    return "\n".join([*lines, line])


def _tsv_field(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text.replace("\t", " ").replace("\n", " ")
