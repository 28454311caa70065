"""`ucl models`: the model registry and what of it is cached; `ucl models fetch KEY...`.

The list goes to stdout; the warning that cached models are random-weight stand-ins, to stderr.
"""

from __future__ import annotations

import json
import sys
from typing import Any

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
    """List every model of the registry: key, backend, modalities, dimension, cached or not, and
    how each tower prepares its inputs (image size, resize and mean/std; audio rate, clip length
    and fusion; text context in tokens).

    Models whose cached files are random-weight stand-ins are marked (`standin` in JSON lines),
    and a warning says so on stderr."""
    if ctx.invoked_subcommand is not None:
        return
    from ucl_cli.encoders.standin_marks import standin_warning
    from ucl_cli.encoders.status import (
        all_model_status,
        hub_cache,
        standin_keys,
        tower_preprocessing,
    )
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
                "preprocessing": tower_preprocessing(spec),
            }
            typer.echo(json.dumps(row))
        return
    table = Table(title=f"models (hub cache: {hub_cache()})", title_justify="left")
    for column in ("key", "backend", "modalities", "dim", "default", "files"):
        table.add_column(column, no_wrap=True)
    table.add_column("preprocessing")
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
            escape(preprocessing_text(tower_preprocessing(spec))),
        )
    # A wide virtual terminal when piped, so that the table is not squeezed to 80 columns.
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def preprocessing_text(towers: dict[str, dict[str, Any]]) -> str:
    """The table's preprocessing cell, a line or two per tower: what the JSON lines hold, with
    mean/std to three digits."""
    lines: list[str] = []
    for modality, tower in towers.items():
        if not tower:  # e.g. a plugin's model whose spec states nothing of this tower
            lines.append(f"{modality}: not stated")
        elif modality == "image":
            lines += _image_lines(tower)
        elif modality == "audio":
            lines += _audio_lines(tower)
        elif modality == "text":
            lines.append(f"text {tower['context_length']} tokens")
    return "\n".join(lines)


def _image_lines(tower: dict[str, Any]) -> list[str]:
    how = [f"resize {tower['resize_mode']}"] if "resize_mode" in tower else []
    how += [tower["interpolation"]] if "interpolation" in tower else []
    size = f" {tower['image_size']} px" if "image_size" in tower else ""
    lines = [f"image{size}" + (f" ({', '.join(how)})" if how else "")]
    norm = [
        f"{name} {' '.join(f'{value:.3g}' for value in tower[name])}"
        for name in ("mean", "std")
        if name in tower
    ]
    return lines + (["  " + ", ".join(norm)] if norm else [])


def _audio_lines(tower: dict[str, Any]) -> list[str]:
    line = f"audio {tower['sample_rate']:,} Hz" if "sample_rate" in tower else "audio"
    if "clip_seconds" in tower:
        line += f", {tower['clip_seconds']:g} s clips ({tower['clip_samples']:,} samples)"
    how = [f"{tower['crop']} crop"] if "crop" in tower else []
    how += [tower["pad"]] if "pad" in tower else []
    if "fusion" in tower:
        how.append("fusion" if tower["fusion"] else "no fusion")
    return [line] + (["  " + ", ".join(how)] if how else [])


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
