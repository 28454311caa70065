"""`ucl models`: the model registry and what of it is cached; `ucl models fetch KEY...`."""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.table import Table

models_app = typer.Typer(
    name="models",
    help="List the known models and whether their files are cached; fetch them.",
    invoke_without_command=True,
    no_args_is_help=False,
)


def _default_format() -> str:
    return "table" if sys.stdout.isatty() else "jsonl"


@models_app.callback()
def models(
    ctx: typer.Context,
    output_format: str = typer.Option(
        None, "--format", help="table or jsonl (default: table on a terminal, else jsonl)."
    ),
) -> None:
    """List every model of the registry: key, backend, modalities, dimension, cached or not."""
    if ctx.invoked_subcommand is not None:
        return
    from ucl_cli.encoders.status import all_model_status, hub_cache

    statuses = all_model_status()
    chosen = output_format or _default_format()
    if chosen == "jsonl":
        for status in statuses:
            spec = status.spec
            row = {
                "key": spec.key,
                "backend": spec.backend,
                "modalities": list(spec.modalities),
                "dim": spec.dim,
                "default": status.is_default,
                "state": status.state,
                "missing": status.missing,
                "description": spec.description,
            }
            typer.echo(json.dumps(row))
        return
    if chosen != "table":
        raise typer.BadParameter(
            f"unknown format {chosen!r} (use table or jsonl)", param_hint="--format"
        )
    table = Table(title=f"models (hub cache: {hub_cache()})", title_justify="left")
    for column in ("key", "backend", "modalities", "dim", "default", "files"):
        table.add_column(column, no_wrap=True)
    styles = {"cached": "green", "missing": "red", "no backend": "red"}
    for status in statuses:
        spec = status.spec
        table.add_row(
            spec.key,
            spec.backend,
            " ".join(spec.modalities),
            str(spec.dim),
            "yes" if status.is_default else "",
            f"[{styles[status.state]}]{status.state}[/]",
        )
    # A wide virtual terminal when piped, so that the table is not squeezed to 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@models_app.command("fetch")
def fetch(
    keys: list[str] = typer.Argument(None, help="Model keys (default: the two default models)."),
) -> None:
    """Download the models' files into the hub cache (needs internet access; fails fast without)."""
    from ucl_cli.encoders.registry import DEFAULT_KEYS, fetch_model

    stderr = Console(stderr=True)
    for key in keys or list(DEFAULT_KEYS):
        stderr.print(f"fetching {key} ...", highlight=False)
        for path in fetch_model(key):
            typer.echo(str(path))


def register(app: typer.Typer) -> None:
    app.add_typer(models_app)
