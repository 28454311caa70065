"""`ucl models`: the model registry and what of it is cached; `ucl models fetch KEY...`.

The list goes to stdout; the warning that cached models are random-weight stand-ins, to stderr.
"""

from __future__ import annotations

import json
import sys

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ucl_cli.commands._help import UclCommand, examples
from ucl_cli.output import LIST_FORMAT

models_app = typer.Typer(
    name="models",
    help="List the known models and whether their files are cached; fetch them.",
    invoke_without_command=True,
    no_args_is_help=False,
    epilog=examples(
        ("ucl models", "every model, cached or not"),
        ("ucl models --format jsonl | jq -r .key", "the keys, for scripts"),
        ("ucl models fetch", "download the two default models"),
    ),
)
FETCH_EXAMPLES = examples(
    ("ucl models fetch", "the two default models"),
    ("ucl models fetch clip:ViT-L-14/laion2b_s32b_b82k", "one model, by its key"),
    ("HF_HOME=/mnt/models ucl models fetch", "into another cache"),
)


@models_app.callback()
def models(
    ctx: typer.Context,
    output_format: str | None = LIST_FORMAT,
) -> None:
    """List every model of the registry: key, backend, modalities, dimension, cached or not.

    Models whose cached files are random-weight stand-ins are marked (`standin` in JSON lines),
    and a warning says so on stderr."""
    if ctx.invoked_subcommand is not None:
        return
    from ucl_cli.encoders.standins import standin_warning
    from ucl_cli.encoders.status import all_model_status, hub_cache, standin_keys
    from ucl_cli.output import list_format

    chosen = list_format(output_format)
    statuses = all_model_status()
    standins = standin_keys(statuses)
    if standins:
        Console(stderr=True, highlight=False).print(
            f"[yellow]ucl:[/] {escape(standin_warning(standins))}", soft_wrap=True
        )
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
                "standin": status.standin,
                "missing": status.missing,
                "description": spec.description,
            }
            typer.echo(json.dumps(row))
        return
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
            "[yellow]cached (stand-in)[/]"
            if status.standin
            else f"[{styles[status.state]}]{status.state}[/]",
        )
    # A wide virtual terminal when piped, so that the table is not squeezed to 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


@models_app.command("fetch", cls=UclCommand, epilog=FETCH_EXAMPLES)
def fetch(
    keys: list[str] = typer.Argument(
        None,
        metavar="KEY...",
        help="Model keys (default: the two default models).",
        show_default=False,
    ),
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
