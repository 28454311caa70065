"""`ucl cache info` and `ucl cache clear [--model KEY]`: look at and empty the embedding cache
(and, clearing everything, the index scans and collection list tables that `ucl query --method
topk` saves).

Results (a table on a terminal, JSON lines in a pipe) go to stdout, messages to stderr. The cache
module is imported inside the commands so that `ucl --help` stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ucl_cli import config
from ucl_cli.commands._help import UclCommand, examples
from ucl_cli.output import LIST_FORMAT

if TYPE_CHECKING:
    from ucl_cli.cache import CacheStats

GROUP_EXAMPLES = examples(
    ("ucl cache info", "where, how large, vectors per model"),
    ("ucl cache clear --model clap:630k-audioset-best", "forget one model's vectors"),
    ("ucl query photo.jpg -c sounds/ --no-cache", "a query without the cache"),
)
INFO_EXAMPLES = examples(
    ("ucl cache info", "a table on a terminal"),
    ("ucl cache info --format jsonl | jq .vectors", "for scripts"),
)
CLEAR_EXAMPLES = examples(
    ("ucl cache clear", "every cached vector and the saved index bounds"),
    ("ucl cache clear --model clap:630k-audioset-best", "one model's vectors only"),
)


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="cache",
        help="The embedding cache: what it holds, and emptying it.",
        no_args_is_help=True,
        epilog=GROUP_EXAMPLES,
    )
    group.command("info", cls=UclCommand, epilog=INFO_EXAMPLES)(info)
    group.command("clear", cls=UclCommand, epilog=CLEAR_EXAMPLES)(clear)
    app.add_typer(group, name="cache")


def info(output_format: str | None = LIST_FORMAT) -> None:
    """Show where the cache is, its size, and how many vectors each model has there.

    JSON lines: one object for the cache, with path, file_bytes, vectors, hashed_files,
    schema_version, unverified, read_only and models (model, modality, dim, vectors, bytes)."""
    from ucl_cli.cache import EmbeddingCache
    from ucl_cli.output import list_format, write_jsonl

    chosen = list_format(output_format)
    path = config.cache_path()
    messages = Console(stderr=True, highlight=False)
    if not path.exists():
        messages.print(f"no embedding cache yet at {escape(str(path))}")
        return
    with EmbeddingCache(path, on_warning=_ignore) as cache:  # read-only: said in the caption
        stats = cache.stats()
    if chosen == "jsonl":
        write_jsonl([_record(stats)])
        return
    caption = (
        f"{stats.vectors:,} vectors, {_size(stats.file_bytes)} on disk, "
        f"{stats.hashed_files:,} file hashes remembered, schema v{stats.schema_version}"
    )
    if stats.unverified:
        caption += f"; {stats.unverified:,} from before checksums (recomputed when next needed)"
    if stats.read_only:
        caption += "; read-only"
    table = Table(title=f"embedding cache {escape(str(path))}", caption=caption)
    table.add_column("model")
    table.add_column("modality")
    for column in ("dim", "vectors", "size"):
        table.add_column(column, justify="right")
    for entry in stats.models:
        table.add_row(
            escape(entry.model),
            entry.modality,
            str(entry.dim),
            f"{entry.vectors:,}",
            _size(entry.bytes),
        )
    Console(highlight=False).print(table)


def _record(stats: CacheStats) -> dict[str, Any]:
    """The cache as one JSON object (the `--format jsonl` schema)."""
    return {
        "path": str(stats.path),
        "file_bytes": stats.file_bytes,
        "vectors": stats.vectors,
        "hashed_files": stats.hashed_files,
        "schema_version": stats.schema_version,
        "unverified": stats.unverified,
        "read_only": stats.read_only,
        "models": [
            {
                "model": entry.model,
                "modality": entry.modality,
                "dim": entry.dim,
                "vectors": entry.vectors,
                "bytes": entry.bytes,
            }
            for entry in stats.models
        ],
    }


def clear(
    model: str | None = typer.Option(
        None,
        "--model",
        metavar="KEY",
        help="Remove only this model's vectors (its key); others are kept.",
        show_default=False,
    ),
) -> None:
    """Delete cached embeddings (all, or one model's); they are recomputed when next needed.

    Without --model, also delete the index bounds `--method topk` saves (scans, list tables)."""
    from ucl_cli.cache import EmbeddingCache

    path = config.cache_path()
    messages = Console(stderr=True, highlight=False)
    if model is None:
        _clear_index_scans(messages)
    if not path.exists():
        messages.print(f"nothing to clear: no embedding cache at {escape(str(path))}")
        return
    with EmbeddingCache(path, on_warning=_ignore) as cache:  # read-only: clear() says so
        cached_models = sorted({entry.model for entry in cache.stats().models})
        removed = cache.clear(model)
    if model is not None and removed == 0:
        others = ", ".join(cached_models) if cached_models else "none"
        messages.print(
            f"no cached vectors for model {escape(model)} (cached models: {escape(others)})"
        )
        return
    scope = f" of {escape(model)}" if model is not None else ""
    messages.print(f"removed {removed:,} cached vectors{scope} from {escape(str(path))}")


def _clear_index_scans(messages: Console) -> None:
    """The bounds `topk` saves beside the indexes: each IVF index's scan and each collection's
    list table for a bank. Derived data: the next query makes what it needs again."""
    folder = config.index_bounds_dir()
    scans = sorted(folder.glob("*.npz"))
    tables = sorted(folder.glob("lists-*.npy"))
    for path in [*scans, *tables]:
        path.unlink(missing_ok=True)
    said = []
    if scans:
        said.append(f"{len(scans):,} saved index scan{'' if len(scans) == 1 else 's'}")
    if tables:
        said.append(f"{len(tables):,} collection list table{'' if len(tables) == 1 else 's'}")
    if said:
        messages.print(f"removed {' and '.join(said)} from {escape(str(folder))}")


def _ignore(message: str) -> None:
    """For warnings that are about embedding runs, not about looking at the cache."""


def _size(count: int) -> str:
    """Bytes for people: 512 B, 3.4 MiB."""
    if count < 1024:
        return f"{count} B"
    units = ("KiB", "MiB", "GiB", "TiB")
    value, index = count / 1024, 0
    while value >= 1024 and index < len(units) - 1:
        value, index = value / 1024, index + 1
    return f"{value:.1f} {units[index]}"
