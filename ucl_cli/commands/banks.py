"""`ucl banks`: the banks under the banks directory, with their models, sizes and dates.

The table goes to stdout; a note that there are none goes to stderr.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from ucl_cli.bank import BankSummary


PIPE_WIDTH = 200


def register(app: typer.Typer) -> None:
    app.command("banks")(banks)


def banks(
    verify: bool = typer.Option(
        False, "--verify", help="Also check every file's SHA-256 (reads each bank once)."
    ),
) -> None:
    """List the banks under the banks directory (UCL_HOME/banks)."""
    from ucl_cli.bank import list_banks
    from ucl_cli.config import banks_dir

    root = banks_dir()
    summaries = list_banks(root)
    if not summaries:
        Console(stderr=True, highlight=False).print(
            f"no banks under {escape(str(root))} yet; build one with `ucl index CORPUS`"
        )
        return
    table = Table(title=f"banks in {escape(str(root))}")
    table.add_column("name", no_wrap=True)
    table.add_column("items", justify="right")
    table.add_column("of")
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
            _size(summary.size_bytes),
            "-",
            "; ".join(notes),
        ]
    if verify:
        notes.append(_verified(summary))
    models = "\n".join(f"{escape(model.key)} ({model.dim})" for model in manifest.models)
    return [
        escape(summary.name),
        f"{manifest.count:,}",
        manifest.modality,
        models,
        escape(manifest.faiss_index),
        _size(summary.size_bytes),
        manifest.updated.replace("T", " ")[:16],
        "; ".join(notes),
    ]


def _verified(summary: BankSummary) -> str:
    from ucl_cli.bank import load_bank
    from ucl_cli.errors import BankError

    try:
        load_bank(summary.path, verify="reread").close()
    except BankError as err:
        return f"[red]{escape(str(err))}[/]"
    return "checksums ok"


def _size(size: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:,.0f} {unit}" if unit == "B" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"
