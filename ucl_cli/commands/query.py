"""`ucl query`: rank candidates for each query through a bridge bank; results on stdout.

Progress and warnings go to stderr, so `ucl query img.jpg --candidates sounds/ --format paths |
xargs ...` sees only results. The scoring lives in `ucl_cli.bridge.search`; this file parses
options, loads models and formats.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from ucl_cli.commands._shared import (
    ALLOW_OTHER_WEIGHTS,
    BANK,
    BATCH_SIZE,
    DEVICE,
    IMAGE_TEXT_MODEL,
    NO_CACHE,
    TEXT_AUDIO_MODEL,
    TOPK_K,
    TOPK_K_MAX,
)
from ucl_cli.errors import UsageError

METHOD_HELP = (
    "lse: exact Monte Carlo bridge score (default); topk: certified top-K approximation through "
    "the FAISS indexes; direct: cosine, only for one shared model; caption: nearest bank text, "
    "then candidates against it."
)


def register(app: typer.Typer) -> None:
    app.command("query")(query)


def query(
    queries: list[str] = typer.Argument(
        ..., help="Query image or audio files ('-' reads paths from stdin).", show_default=False
    ),
    candidates: list[str] = typer.Option(
        ...,
        "--candidates",
        "-c",
        help="Candidate files or folders (searched recursively). Repeatable.",
        show_default=False,
    ),
    bank: str | None = BANK,
    top: int = typer.Option(10, "--top", "-n", min=0, help="Results per query (0: all)."),
    method: str = typer.Option("lse", "--method", "-m", help=METHOD_HELP),
    output_format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="table, jsonl, tsv or paths (default: table on a terminal, jsonl otherwise).",
        show_default=False,
    ),
    explain: int = typer.Option(
        0, "--explain", min=0, help="Show the N bank items that carried each score, and the ESS."
    ),
    k: int = TOPK_K,
    k_max: int = TOPK_K_MAX,
    force_direct: bool = typer.Option(
        False, "--force-direct", help="Compute direct cosine even between unrelated models."
    ),
    image_text_model: str | None = IMAGE_TEXT_MODEL,
    text_audio_model: str | None = TEXT_AUDIO_MODEL,
    device: str = DEVICE,
    batch_size: int | None = BATCH_SIZE,
    strict: bool = typer.Option(
        False, "--strict", help="Fail at the first unreadable candidate instead of skipping it."
    ),
    no_cache: bool = NO_CACHE,
    allow_other_weights: bool = ALLOW_OTHER_WEIGHTS,
) -> None:
    """Rank candidates (audio for an image, images for audio) through a bank of bridge texts."""
    from ucl_cli.bridge import METHODS, QueryOptions, SearchListener, search
    from ucl_cli.cache import open_cache
    from ucl_cli.commands._shared import existing_bank, load_encoders, model_keys, open_bank
    from ucl_cli.config import resolve_device
    from ucl_cli.output import FORMATS, default_format, write_results

    if method not in METHODS:
        raise UsageError(f"unknown --method {method!r}; choose one of: {', '.join(METHODS)}")
    fmt = output_format or default_format()
    if fmt not in FORMATS:
        raise UsageError(f"unknown --format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    query_paths = _expand_stdin(queries)
    console = Console(stderr=True, highlight=False)
    resolved = resolve_device(device)
    bank_dir = None if bank is None else existing_bank(bank)
    keys = model_keys(bank_dir, image_text_model, text_audio_model)
    encoders = load_encoders(keys, resolved, console)
    opened = open_bank(bank_dir, encoders, console, allow_other_weights=allow_other_weights)
    options = QueryOptions(
        method=method,
        top=top or None,
        explain=explain,
        strict=strict,
        force_direct=force_direct,
        batch_size=batch_size,
        device=resolved,
        topk_start=k,
        topk_max=max(k, k_max),
    )
    skipped = []

    def on_skip(error) -> None:
        skipped.append(error)
        if len(skipped) <= 10:
            console.print(f"[yellow]ucl:[/] skipping {escape(str(error))}", soft_wrap=True)

    def on_cache_warning(text: str) -> None:
        console.print(f"[yellow]ucl:[/] {escape(text)}", soft_wrap=True)

    with (
        opened,
        open_cache(enabled=not no_cache, on_warning=on_cache_warning) as cache,
        console.status("scoring") as status,
    ):
        listener = SearchListener(
            on_skip=on_skip, on_stage=lambda text, _total: status.update(escape(text))
        )
        report = search(
            query_paths,
            candidates,
            encoders=encoders,
            bank=opened,
            options=options,
            cache=cache,
            listener=listener,
        )
    write_results(report.results, fmt)
    summary = (
        f"ranked {report.candidates:,} candidates for {len(report.results):,} "
        f"{'query' if len(report.results) == 1 else 'queries'} with {method} over bank "
        f"{escape(opened.name)} ({len(opened):,} items); embedded {report.embedded:,} files, "
        f"{report.cached:,} from the cache"
    )
    if report.skipped:
        summary += f"; skipped {len(report.skipped):,} unreadable files"
    console.print(f"[dim]{summary}[/]", soft_wrap=True)


def _expand_stdin(queries: list[str]) -> list[str]:
    """`-` stands for the paths on standard input, one per line (blank lines ignored)."""
    expanded: list[str] = []
    for item in queries:
        if item == "-":
            expanded.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            expanded.append(item)
    if not expanded:
        raise UsageError("no query paths given (stdin was empty)")
    return expanded
