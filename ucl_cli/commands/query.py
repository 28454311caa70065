"""`ucl query`: rank candidates for each query through a bridge bank; results on stdout.

Progress and warnings go to stderr, so `ucl query img.jpg --candidates sounds/ --format paths |
xargs ...` sees only results. Every named file is checked (by its header) before a model is
loaded, so a typo fails at once. The scoring lives in `ucl_cli.bridge`; this file parses options,
loads models and formats.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

# The method table imports no torch: --help and the usage check on --method stay fast.
from ucl_cli.bridge.methods import (
    DEFAULT_METHOD,
    METHOD_NAMES,
    check_calibration,
    method_named,
    methods_help,
)
from ucl_cli.commands._help import UclCommand, examples
from ucl_cli.commands._shared import (
    ALLOW_OTHER_WEIGHTS,
    BANK,
    BATCH_SIZE,
    CLUSTER,
    DEVICE,
    IMAGE_TEXT_MODEL,
    IMAGE_TEXT_WEIGHTS,
    NO_CACHE,
    NO_CALIBRATION,
    NORMALIZE,
    TEMPERATURE,
    TEXT_AUDIO_MODEL,
    TEXT_AUDIO_WEIGHTS,
    actor_pool,
    bank_rows,
    calibration_option,
    cluster_bank,
    load_models_and_bank,
    nearest_options,
    plural,
    resolve_calibration,
    scoring_settings,
)
from ucl_cli.errors import InputFileError, UsageError
from ucl_cli.modality import Modality

NEAREST, NEAREST_MAX, OLD_NEAREST, OLD_NEAREST_MAX = nearest_options()

if TYPE_CHECKING:
    from ucl_cli.media.collect import QueryInputs

CANDIDATE_FLAGS = ("--candidates", "-c")
# `ucl_cli.output.FORMATS`, named here so that a usage error comes before torch is imported (a
# test holds them equal).
FORMAT_NAMES = ("table", "jsonl", "tsv", "paths")
# Candidate-skip lines named one by one; the rest are only counted in the summary.
SHOWN_SKIPS = 10

EXAMPLES = examples(
    ("ucl query photo.jpg --candidates sounds/", "audio clips for a photo"),
    ("ucl query clip.wav --candidates photos/ --bank captions --top 3", "photos for a sound"),
    ("ucl query a.png b.png --candidates x.wav y.wav z.wav", "two queries, three candidates"),
    ("find photos -name '*.jpg' | ucl query - -c sounds/ -n 1", "query paths from stdin"),
    ("ucl query photo.jpg --collection sfx", "a library indexed once (ucl index --modality audio)"),
)


class QueryCommand(UclCommand):
    """`--candidates A B C` takes every path up to the next option, as argparse's nargs='+' does;
    a query path after the candidates would be swallowed, so it must come first or after `--`."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        spread, took_several = spread_candidates(args)
        if took_several and not _names_a_query(self, ctx, spread):
            raise UsageError(
                "no query path: every path after --candidates is a candidate; put the queries "
                "first (ucl query photo.jpg --candidates a.wav b.wav) or end the candidates "
                "with `--` (ucl query --candidates a.wav b.wav -- photo.jpg)"
            )
        return super().parse_args(ctx, spread)


def spread_candidates(args: list[str]) -> tuple[list[str], bool]:
    """`--candidates A B C` as `--candidates A --candidates B --candidates C`: after the flag's own
    value, every token up to the next option, `--` or `-` (stdin) is a candidate too. Returns the
    new arguments and whether any flag took more than one path."""
    out: list[str] = []
    took_several = False
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out.extend(args[i:])
            break
        out.append(token)
        i += 1
        if token in CANDIDATE_FLAGS:
            if i < len(args):  # the flag's own value (a missing one is click's error to tell)
                out.append(args[i])
                i += 1
        elif not (token.startswith("--candidates=") or _short_with_value(token)):
            continue
        while i < len(args) and not args[i].startswith("-"):
            out.extend(("--candidates", args[i]))
            took_several = True
            i += 1
    return out, took_several


def _short_with_value(token: str) -> bool:
    """`-cPATH`: the short flag with its value attached."""
    return token.startswith("-c") and not token.startswith("--") and len(token) > 2


def _names_a_query(command: UclCommand, ctx: Any, args: list[str]) -> bool:
    """Whether the query argument gets a value (or help was asked for), by click's own parser."""
    if any(arg in ("--help", "-h") for arg in args[: _end_of_options(args)]):
        return True
    try:
        values, _, _ = command.make_parser(ctx).parse_args(args=list(args))
    except Exception:  # a malformed line: the real parse reports it
        return True
    return bool(values.get("queries"))


def _end_of_options(args: list[str]) -> int:
    return args.index("--") if "--" in args else len(args)


def register(app: typer.Typer) -> None:
    app.command("query", cls=QueryCommand, epilog=EXAMPLES)(query)


def query(
    queries: list[str] = typer.Argument(
        ...,
        help="Query image or audio files ('-' reads paths from stdin, one a line).",
        metavar="QUERY...",
        show_default=False,
    ),
    candidates: list[str] | None = typer.Option(
        None,
        "--candidates",
        "-c",
        help="Candidate files or folders (searched recursively): every path up to the next "
        "option; repeatable. Put the queries first, or end the candidates with `--`.",
        metavar="PATH...",
        show_default=False,
    ),
    collections: list[str] | None = typer.Option(
        None,
        "--collection",
        "-C",
        help="A collection to rank (a bank of audio or image files built by `ucl index "
        "--modality audio|image`): its stored vectors are scored, its files never opened; "
        "hits are named by their indexed paths. Repeatable; combines with --candidates.",
        metavar="NAME",
        show_default=False,
    ),
    bank: str | None = BANK,
    top: int = typer.Option(
        10, "--top", "-n", min=0, metavar="N", help="Results per query (0: all)."
    ),
    method: str = typer.Option(
        DEFAULT_METHOD, "--method", "-m", metavar="|".join(METHOD_NAMES), help=methods_help()
    ),
    output_format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        metavar="table|jsonl|tsv|paths",
        help="Output format (default: table on a terminal, jsonl otherwise).",
        show_default=False,
    ),
    explain: int = typer.Option(
        0,
        "--explain",
        min=0,
        metavar="N",
        help="Show the N bank items that carried each score, and the ESS.",
    ),
    nearest: int = NEAREST,
    nearest_max: int = NEAREST_MAX,
    old_nearest: int | None = OLD_NEAREST,
    old_nearest_max: int | None = OLD_NEAREST_MAX,
    force_direct: bool = typer.Option(
        False, "--force-direct", help="Compute direct cosine even between unrelated models."
    ),
    temperature: str | None = TEMPERATURE,
    normalize: str | None = NORMALIZE,
    no_calibration: bool = NO_CALIBRATION,
    image_text_model: str | None = IMAGE_TEXT_MODEL,
    text_audio_model: str | None = TEXT_AUDIO_MODEL,
    image_text_weights: Path | None = IMAGE_TEXT_WEIGHTS,
    text_audio_weights: Path | None = TEXT_AUDIO_WEIGHTS,
    device: str = DEVICE,
    batch_size: int | None = BATCH_SIZE,
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Stop at the first unreadable query or candidate instead of skipping it.",
    ),
    no_cache: bool = NO_CACHE,
    allow_other_weights: bool = ALLOW_OTHER_WEIGHTS,
    cluster: str | None = CLUSTER,
) -> None:
    """Rank candidates (audio for an image, images for audio) through a bank of bridge texts.

    Candidates are files and folders (--candidates), collections indexed beforehand
    (--collection), or both. Unreadable queries and candidates are skipped with one line each on
    stderr; the exit status is 1 when a query could not be read (after the other queries'
    results).
    """
    from ucl_cli.media.collect import collect_query_inputs

    candidates, collections = candidates or [], collections or []
    if not candidates and not collections:
        raise UsageError(
            "no candidates: give files or folders with --candidates, or a collection with "
            "--collection NAME"
        )
    collection_dirs, collection_modality = _collection_dirs(collections)

    if method not in METHOD_NAMES:
        raise UsageError(f"unknown --method {method!r}; choose one of: {', '.join(METHOD_NAMES)}")
    if output_format is not None and output_format not in FORMAT_NAMES:
        choices = ", ".join(FORMAT_NAMES)
        raise UsageError(f"unknown --format {output_format!r}; choose one of: {choices}")
    from ucl_cli.bridge.methods import ScoringSettings
    from ucl_cli.distributed.cluster import cluster_spec

    on_cluster = cluster_spec(cluster)  # --cluster, else UCL_CLUSTER; checked before any model
    given = calibration_option(temperature, normalize)
    if given is not None:
        check_calibration(method_named(method), ScoringSettings(calibration=given))
    console = Console(stderr=True, highlight=False)
    skipped: list[InputFileError] = []

    def on_skip(error: InputFileError) -> None:
        skipped.append(error)
        if len(skipped) <= SHOWN_SKIPS:
            console.print(f"[yellow]ucl:[/] skipping {escape(str(error))}", soft_wrap=True)

    def on_query_skip(error: InputFileError) -> None:
        console.print(f"[yellow]ucl:[/] skipping query {escape(str(error))}", soft_wrap=True)

    # Every named file is checked, and the bank found, before torch or a model is loaded.
    inputs = collect_query_inputs(
        _expand_stdin(queries),
        candidates,
        strict=strict,
        on_query_skip=on_query_skip,
        on_skip=on_skip,
        collection_modality=collection_modality,
    )
    _same_modality_notice(inputs, console)

    loaded = load_models_and_bank(
        bank,
        image_text_model=image_text_model,
        text_audio_model=text_audio_model,
        weights=[image_text_weights, text_audio_weights],
        device=device,
        allow_other_weights=allow_other_weights,
        console=console,
    )

    from ucl_cli.bridge.listener import Listener
    from ucl_cli.bridge.pipeline import QueryOptions, search_inputs
    from ucl_cli.cache import open_cache
    from ucl_cli.output import default_format, write_results

    opened = loaded.bank
    calibration = resolve_calibration(
        given,
        no_calibration=no_calibration,
        bank=opened,
        encoders=loaded.encoders,
        direction=_direction(inputs),
        applies=method_named(method).calibrates,
        console=console,
    )
    options = QueryOptions(
        method=method,
        top=top or None,
        explain=explain,
        strict=strict,
        batch_size=batch_size,
        scoring=scoring_settings(
            loaded.device,
            force_direct=force_direct,
            nearest=nearest,
            nearest_max=nearest_max,
            old_nearest=old_nearest,
            old_nearest_max=old_nearest_max,
            calibration=calibration,
        ),
    )

    def say_warning(text: str) -> None:
        console.print(f"[yellow]ucl:[/] {escape(text)}", soft_wrap=True)

    from contextlib import ExitStack

    from ucl_cli.bank import load_bank

    with (
        opened,
        ExitStack() as held,
        open_cache(enabled=not no_cache, on_warning=say_warning) as cache,
        console.status("scoring") as status,
    ):
        libraries = [
            held.enter_context(
                load_bank(path, verify="on_read", check_weights=not allow_other_weights)
            )
            for path in collection_dirs
        ]
        scored = opened
        if on_cluster is not None:  # one pool of actors holds the bank and the collections
            pool = held.enter_context(actor_pool(on_cluster))
            scored = held.enter_context(cluster_bank(opened, pool))
            libraries = [held.enter_context(cluster_bank(library, pool)) for library in libraries]
        listener = Listener(
            on_skip=on_skip,
            on_query_skip=on_query_skip,
            on_stage=lambda text, _total: status.update(escape(text)),
            on_note=say_warning,
        )
        report = search_inputs(
            inputs,
            encoders=loaded.encoders,
            bank=scored,
            options=options,
            cache=cache,
            listener=listener,
            collections=libraries,
        )
    write_results(report.results, output_format or default_format())
    summary = (
        f"ranked {plural(report.candidates, 'candidate')} for "
        f"{plural(len(report.results), 'query', 'queries')}"
        + (f" (collections {escape(', '.join(collections))})" if collections else "")
        + f" with {method}"
        + ("" if calibration.is_paper else f" ({calibration.describe()})")
        + ("" if on_cluster is None else f" (on Ray cluster {escape(on_cluster)})")
        + " over bank "
        f"{escape(opened.name)} ({bank_rows(len(opened), opened.modality)}); embedded "
        f"{plural(report.embedded, 'file')}, {report.cached:,} from the cache"
    )
    if report.skipped:
        summary += f"; skipped {plural(len(report.skipped), 'unreadable file')}"
    if report.failed_queries:
        failed = plural(len(report.failed_queries), "query", "queries")
        summary += f"; {failed} could not be read"
    console.print(f"[dim]{summary}[/]", soft_wrap=True)
    if report.failed_queries:
        raise typer.Exit(1)


def _collection_dirs(names: list[str]) -> tuple[list[Path], Modality | None]:
    """Each --collection's directory and the collections' one modality, read from their
    manifests before any model loads: a typo, a bridge bank or a mix fails at once."""
    from ucl_cli.bank.catalog import resolve_bank
    from ucl_cli.bank.shards import read_any_manifest

    dirs, kinds = [], {}
    for name in names:
        path = resolve_bank(name)
        manifest = read_any_manifest(path)  # sharded or not
        if manifest.modality == "text":
            raise UsageError(
                f"{name} is a bank of texts, not a collection of files; rank it as the bridge "
                f"with --bank {name}, or build a collection with `ucl index --modality audio "
                f"FOLDER --bank NAME`"
            )
        dirs.append(path)
        kinds[name] = manifest.modality
    if len(set(kinds.values())) > 1:
        listed = ", ".join(f"{name} ({kind})" for name, kind in kinds.items())
        raise UsageError(f"the collections mix images and audio: {listed}; pass one kind")
    return dirs, (Modality(next(iter(kinds.values()))) if kinds else None)


def _direction(inputs: QueryInputs) -> str | None:
    """The direction (image->audio or audio->image) when every query is of the other modality
    than the candidates; None otherwise (no one stored calibration fits them all)."""
    kinds = {file.modality for file in inputs.queries.files}
    candidate = inputs.candidate_modality
    if len(kinds) != 1 or candidate in kinds:
        return None
    return f"{next(iter(kinds)).value}->{candidate.value}"


def _same_modality_notice(inputs: QueryInputs, console: Console) -> None:
    """Image candidates for an image query are ranked (through the bank, image to image), but
    that is rarely what was meant: say so once."""
    same = inputs.same_modality_queries()
    if not same:
        return
    kind = inputs.candidate_modality.value
    other = "audio" if kind == "image" else "image"
    nouns = {"image": "images", "audio": "audio clips"}
    queries = len(inputs.queries.files)
    whom = f"{same:,} of the queries" if same < queries else "the queries"
    if queries == 1:
        whom = "the query"
    console.print(
        f"[yellow]ucl:[/] the candidates are {nouns[kind]}, like {whom}: ranked {kind} to {kind} "
        f"through the bank (same modality; give {other} candidates for an {kind} query)",
        soft_wrap=True,
    )


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
