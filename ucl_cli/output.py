"""How query results reach stdout: a Rich table for people, JSON lines / TSV / paths for pipes.

The JSON lines schema is stable: one object per ranked candidate with the keys
    query, query_modality, rank, candidate, candidate_modality, score, method, bank
and, when they apply, certified / lower / upper (topk), caption (caption), bridge (a list of
{row, text, weight}) and effective_sample_size (--explain).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any, Literal, TextIO

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ucl_cli.bridge import QueryResult

Format = Literal["table", "jsonl", "tsv", "paths"]
FORMATS: tuple[str, ...] = ("table", "jsonl", "tsv", "paths")
TSV_COLUMNS = ("query", "rank", "candidate", "score", "method")


def default_format(stream: TextIO | None = None) -> Format:
    """A table on a terminal, JSON lines into a pipe or file."""
    stream = stream or sys.stdout
    return "table" if stream.isatty() else "jsonl"


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
            }
            if hit.certified is not None:
                record.update(certified=hit.certified, lower=hit.lower, upper=hit.upper)
            if hit.caption is not None:
                record["caption"] = hit.caption
            if hit.bridge:
                record["bridge"] = [
                    {"row": item.row, "text": item.text, "weight": item.weight}
                    for item in hit.bridge
                ]
                record["effective_sample_size"] = hit.effective_sample_size
            yield record


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
            console.print(_table(result))
    stream.flush()


def _table(result: QueryResult) -> Table:
    title = (
        f"{escape(str(result.query))} ({result.query_modality.value}) -> "
        f"{result.candidate_modality.value}, method {result.method}, bank {escape(result.bank)}"
    )
    table = Table(title=title, title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("candidate", overflow="fold")
    table.add_column("score", justify="right")
    has_bounds = any(hit.certified is not None for hit in result.hits)
    has_caption = any(hit.caption is not None for hit in result.hits)
    has_bridge = any(hit.bridge for hit in result.hits)
    if has_bounds:
        table.add_column("certified")
        table.add_column("bounds", justify="right")
    if has_caption:
        table.add_column("via caption")
    if has_bridge:
        table.add_column("carried by (weight)", overflow="fold")
        table.add_column("ESS", justify="right")
    for hit in result.hits:
        row = [str(hit.rank), escape(str(hit.candidate)), f"{hit.score:.3f}"]
        if has_bounds:
            row += ["yes" if hit.certified else "no", f"[{hit.lower:.3f}, {hit.upper:.3f}]"]
        if has_caption:
            row.append(escape(hit.caption or ""))
        if has_bridge:
            row.append("\n".join(f"{escape(b.text)} ({b.weight:.2f})" for b in hit.bridge))
            row.append(f"{hit.effective_sample_size:.1f}")
        table.add_row(*row)
    return table


def _tsv_field(value: Any) -> str:
    text = f"{value:.6g}" if isinstance(value, float) else str(value)
    return text.replace("\t", " ").replace("\n", " ")
