"""`ucl banks`: the banks under the banks directory, with their models, sizes and dates.

The list goes to stdout (a table on a terminal, JSON lines in a pipe); a note that there are none
goes to stderr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ucl_cli.commands._help import UclCommand, examples
from ucl_cli.output import LIST_FORMAT

if TYPE_CHECKING:
    from ucl_cli.bank import BankSummary


PIPE_WIDTH = 200
EXAMPLES = examples(
    ("ucl banks", "items, kind, models, index, size, last update"),
    ("ucl banks --verify", "also re-read every file against its SHA-256"),
    ("ucl banks --format jsonl | jq -r .name", "bank names, for scripts"),
)


def register(app: typer.Typer) -> None:
    app.command("banks", cls=UclCommand, epilog=EXAMPLES)(banks)


def banks(
    verify: bool = typer.Option(
        False, "--verify", help="Also check every file's SHA-256 (reads each bank once)."
    ),
    output_format: str | None = LIST_FORMAT,
) -> None:
    """List the banks under the banks directory (UCL_HOME/banks).

    JSON lines: one object per bank with name, path, items, modality, kind (bridge: texts;
    collection: image or audio files), models (key, dim), index, size_bytes, updated,
    staged_rows, shards (how many; null for an unsharded bank), problem, and verified with
    --verify."""
    from ucl_cli.bank import list_banks
    from ucl_cli.config import banks_dir
    from ucl_cli.output import list_format, write_jsonl

    chosen = list_format(output_format)
    root = banks_dir()
    summaries = list_banks(root)
    if not summaries:
        Console(stderr=True, highlight=False).print(
            f"no banks under {escape(str(root))} yet; build one with `ucl index CORPUS`"
        )
        return
    if chosen == "jsonl":
        write_jsonl(_record(summary, verify) for summary in summaries)
        return
    table = Table(title=f"banks in {escape(str(root))}")
    table.add_column("name", no_wrap=True)
    table.add_column("items", justify="right")
    table.add_column("of")
    table.add_column("kind")
    table.add_column("models (dim)", no_wrap=True)
    table.add_column("index")
    table.add_column("size", justify="right")
    table.add_column("updated (UTC)")
    table.add_column("notes")
    for summary in summaries:
        table.add_row(*_row(summary, verify))
    stdout = Console(highlight=False)
    if not stdout.is_terminal:  # a pipe or a file: no terminal width to fit, so never truncate
        stdout = Console(highlight=False, width=max(stdout.width, PIPE_WIDTH))
    stdout.print(table)


def _record(summary: BankSummary, verify: bool) -> dict[str, Any]:
    """One bank as a JSON object (the `--format jsonl` schema)."""
    manifest = summary.manifest
    models = [] if manifest is None else manifest.models
    record: dict[str, Any] = {
        "name": summary.name,
        "path": str(summary.path),
        "items": None if manifest is None else manifest.count,
        "modality": None if manifest is None else manifest.modality,
        "kind": summary.kind,
        "models": [{"key": model.key, "dim": model.dim} for model in models],
        "index": None if manifest is None else manifest.faiss_index,
        "size_bytes": summary.size_bytes,
        "updated": None if manifest is None else manifest.updated,
        "staged_rows": summary.staged_rows,
        "shards": summary.shards,  # null: not sharded
        "problem": summary.problem,
    }
    if verify and manifest is not None:
        record["verified"] = _verify(summary)
    return record


def _row(summary: BankSummary, verify: bool) -> list[str]:
    manifest = summary.manifest
    notes = [escape(summary.problem)] if summary.problem else []
    if summary.staged_rows:
        notes.append(
            f"{summary.staged_rows:,} rows staged by an interrupted run (rerun `ucl index`)"
        )
    if manifest is None:
        return [
            escape(summary.name),
            "-",
            "-",
            "-",
            "-",
            "-",
            _size(summary.size_bytes),
            "-",
            "; ".join(notes),
        ]
    if summary.shards is not None:
        size = getattr(manifest, "shard_size", 0)
        shards = "1 shard" if summary.shards == 1 else f"{summary.shards:,} shards"
        notes.append(f"{shards} of up to {size:,} rows")
    if verify:
        verified = _verify(summary)
        notes.append(escape(verified) if verified == VERIFIED else f"[red]{escape(verified)}[/]")
    models = "\n".join(f"{escape(model.key)} ({model.dim})" for model in manifest.models)
    return [
        escape(summary.name),
        f"{manifest.count:,}",
        manifest.modality,
        manifest.kind,
        models,
        escape(manifest.faiss_index),
        _size(summary.size_bytes),
        manifest.updated.replace("T", " ")[:16],
        "; ".join(notes),
    ]


VERIFIED = "checksums ok"


def _verify(summary: BankSummary) -> str:
    """"checksums ok", or why the bank's files do not match its manifest."""
    from ucl_cli.bank import load_bank
    from ucl_cli.errors import BankError

    try:
        load_bank(summary.path, verify="reread").close()
    except BankError as err:
        return str(err)
    return VERIFIED


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
