"""`ucl index`: embed a bridge corpus (texts) or a collection (image or audio files) into a bank.

A collection is embedded only by the models that embed its files; rerunning it on a library
finds moved files (their rows take the new path), replaces the rows of overwritten ones, and
`--prune` drops the rows of deleted ones.

Progress, warnings and the closing summary go to stderr; stdout stays empty. Everything heavy
(torch, FAISS, the models) is imported inside the command so that `ucl --help` stays fast.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

from ucl_cli.commands._help import UclCommand, examples
from ucl_cli.commands._shared import (
    DEVICE,
    IMAGE_TEXT_MODEL,
    IMAGE_TEXT_WEIGHTS,
    TEXT_AUDIO_MODEL,
    TEXT_AUDIO_WEIGHTS,
)
from ucl_cli.errors import UsageError
from ucl_cli.modality import Modality  # torch-free: Typer offers its values as the choices

if TYPE_CHECKING:
    from ucl_cli.bank import BankItem, CorpusOptions, IndexOptions, IndexReport
    from ucl_cli.commands._progress import IndexProgress


EXAMPLES = examples(
    ("ucl index captions.txt", "one text a line, into the bank named default"),
    ("ucl index --bank audiocaps captions.csv --column caption", "a CSV column, into audiocaps"),
    ("ucl index --modality image photos/ --bank photos", "a folder of images as the rows"),
    ("ucl index --modality audio sounds/ --bank sfx", "a collection of sounds"),
    ("ucl index --prune --bank sfx", "drop rows of deleted files"),
)


def register(app: typer.Typer) -> None:
    app.command("index", cls=UclCommand, epilog=EXAMPLES)(index)


def index(
    sources: list[str] | None = typer.Argument(
        None,
        help="Corpus files (text; '-' reads standard input), or image/audio files and folders.",
        metavar="SOURCE...",
        show_default=False,
    ),
    modality: Modality | None = typer.Option(
        None,
        "--modality",
        metavar="text|image|audio",
        help="What the bank's rows are: texts (a bridge bank), or image or audio files (a "
        "collection). Default: text; with --prune, the bank's.",
        show_default=False,
    ),
    bank: str | None = typer.Option(
        None,
        "--bank",
        "-b",
        metavar="NAME",
        help="Bank to write: a name under the banks directory, or a directory (default: "
        "UCL_BANK, else default, the bank `ucl query` and `ucl eval` read without --bank).",
        show_default=False,
    ),
    image_text_model: str | None = IMAGE_TEXT_MODEL,
    text_audio_model: str | None = TEXT_AUDIO_MODEL,
    image_text_weights: Path | None = IMAGE_TEXT_WEIGHTS,
    text_audio_weights: Path | None = TEXT_AUDIO_WEIGHTS,
    device: str = DEVICE,
    batch_size: int = typer.Option(
        64, "--batch-size", min=1, metavar="N", help="Items embedded per batch."
    ),
    corpus_format: str = typer.Option(
        "auto",
        "--format",
        metavar="auto|lines|csv|tsv|jsonl",
        help="Corpus format (auto: from the extension).",
    ),
    column: str | None = typer.Option(
        None, metavar="NAME", help="CSV/TSV column holding the text.", show_default=False
    ),
    field: str | None = typer.Option(
        None, metavar="NAME", help="JSON lines field holding the text.", show_default=False
    ),
    strict: bool = typer.Option(
        False, "--strict", help="Stop at the first unreadable line or file instead of skipping it."
    ),
    faiss_index: str | None = typer.Option(
        None,
        "--faiss-index",
        metavar="FACTORY",
        help="FAISS index_factory string, e.g. Flat, HNSW32, IVF4096,Flat (default: the bank's, "
        "or auto: Flat up to 100k rows, IVF beyond).",
        show_default=False,
    ),
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Wait for another run writing the same bank, or fail."
    ),
    shard_size: int | None = typer.Option(
        None,
        "--shard-size",
        min=1,
        metavar="N",
        help="Store the bank as shards of at most N rows, each a complete bank (new rows fill "
        "new shards; docs/SCALING.md). A sharded bank stays sharded; an unsharded one is refused.",
        show_default=False,
    ),
    cluster: str | None = typer.Option(
        None,
        "--cluster",
        metavar="auto|local|ray://HOST:PORT",
        help="Embed and write the shards on Ray actors (one model copy each, a GPU each where "
        "the cluster has them): auto (a running Ray cluster), local (start one on this machine) "
        "or ray://HOST:PORT. Writes a sharded bank. Default: UCL_CLUSTER, else in this process.",
        show_default=False,
    ),
    prune: bool = typer.Option(
        False,
        "--prune",
        help="Collections: also drop the rows of files that no longer exist; without SOURCE, "
        "only that.",
    ),
) -> None:
    """Embed texts with both models, or image or audio files with the models that embed them,
    into a bank; only new items are embedded, and moved files keep their rows."""
    from ucl_cli.bank import CorpusOptions, IndexOptions, index_items, prune_collection
    from ucl_cli.bank.catalog import choose_bank
    from ucl_cli.bank.corpus import ContextFit
    from ucl_cli.commands._collection import collection_encoders, collection_weights
    from ucl_cli.commands._progress import IndexProgress, ProgressView
    from ucl_cli.commands._shared import load_encoders, model_keys
    from ucl_cli.config import resolve_device

    choice = choose_bank(bank, writing=True)  # --bank, else UCL_BANK, else default
    bank_dir, bank = choice.path, bank or choice.name
    modality = _modality(modality, prune, bank_dir)
    console = Console(stderr=True, highlight=False)
    on_cluster = _cluster(cluster, bank_dir, shard_size, console) if sources else None
    if not sources and not prune:
        raise UsageError(
            "nothing to index: give corpus files, or image or audio files and folders "
            "(SOURCE...), or --prune alone to drop the rows of deleted files"
        )
    view = IndexProgress(ProgressView(console), modality.value)
    options = IndexOptions(
        modality=modality.value,
        batch_size=batch_size,
        faiss_index=faiss_index,
        lock_timeout=None if wait else 0,
        strict=strict,
        prune=prune,
        shard_size=shard_size,
    )
    if not sources:  # --prune alone: no model is loaded
        with view.view:
            report = prune_collection(bank_dir, options, view)
        console.print(_summary(bank, modality, report, view, indexed=False), soft_wrap=True)
        _save_index_scans(bank_dir)
        return
    corpus = CorpusOptions(format=corpus_format, column=column, field=field, strict=strict)
    items, total = _items(sources, modality, corpus, view)
    keys = model_keys(bank_dir, image_text_model, text_audio_model)
    # On a cluster the actors embed; the driver's copies give the records and the context fit.
    here = "cpu" if on_cluster is not None else resolve_device(device)
    if modality is Modality.TEXT:
        weights = [image_text_weights, text_audio_weights]
        encoders = load_encoders(keys, here, console, weights)
    else:  # a collection: only the models that embed its files
        weights = collection_weights(
            len(keys), modality.value, image_text_weights, text_audio_weights
        )
        encoders = collection_encoders(keys, weights, modality.value, here, console)
    fit = ContextFit(encoders)  # texts past a text tower's context: cut to whole words, marked
    if modality is Modality.TEXT:
        items = fit.apply(items)
    try:
        with view.view:
            view.start(total)
            if on_cluster is None:
                report = index_items(bank_dir, encoders, items, options, view)
            else:
                report = _index_on_cluster(
                    bank_dir, encoders, dict(zip(keys, weights, strict=False)), items, options,
                    on_cluster, device, view, console,
                )  # fmt: skip
    except BaseException:
        if view.saving is not None:
            console.print(
                f"ucl: bank {escape(bank)} keeps the {view.saving:,} items embedded so far; "
                "run the same command again to finish",
                soft_wrap=True,
            )
        raise
    if (cut := fit.message()) is not None:
        console.print(f"[yellow]ucl:[/] {escape(cut)}", soft_wrap=True)
    console.print(_summary(bank, modality, report, view), soft_wrap=True)
    if report.added or report.resumed or report.moved or report.pruned or report.replaced:
        _save_index_scans(bank_dir)


def _cluster(
    flag: str | None, bank_dir: Path, shard_size: int | None, console: Console
) -> str | None:
    """The cluster to index on (--cluster, else UCL_CLUSTER), for a sharded bank only: an
    unsharded one named by --cluster is refused; by UCL_CLUSTER alone, indexed here."""
    from ucl_cli.bank.shards import is_sharded
    from ucl_cli.distributed.cluster import cluster_spec

    spec = cluster_spec(flag)
    if spec is None or shard_size is not None or is_sharded(bank_dir):
        return spec
    exists = (bank_dir / "manifest.json").exists()
    why = f"bank {bank_dir.name} is not sharded" if exists else "a new bank needs --shard-size N"
    if flag:
        raise UsageError(f"--cluster writes sharded banks, and {why}")
    console.print(f"ucl: UCL_CLUSTER={escape(spec)} not used: {escape(why)}", soft_wrap=True)
    return None


def _index_on_cluster(
    bank_dir: Path,
    encoders: list,
    weights: dict[str, Path | None],
    items: Iterable[BankItem],
    options: IndexOptions,
    spec: str,
    device: str,
    view: IndexProgress,
    console: Console,
) -> IndexReport:
    """`index_items` with the embedding done by Ray actors (`ucl_cli.distributed.indexing`)."""
    from ucl_cli.distributed.indexing import ClusterIndexOptions, RegistryModels, index_on_cluster

    keys = tuple(encoder.key for encoder in encoders)
    paths = tuple(None if weights.get(key) is None else str(weights[key]) for key in keys)
    cluster = ClusterIndexOptions(device=device)
    try:
        report = index_on_cluster(
            bank_dir, encoders, RegistryModels(keys, paths), items, options, spec, view, cluster
        )
    except BaseException:
        if cluster.stats:  # the actors had started: some shards may be listed
            _say_resumable(bank_dir, console)
        raise
    if cluster.stats:
        where = "GPU" if cluster.stats["gpus"] else "CPU"
        console.print(
            f"ucl: embedded on Ray cluster {escape(spec)}: {cluster.stats['shards']:,} shards "
            f"written by {cluster.stats['actors']} {where} actors",
            soft_wrap=True,
        )
    return report


def _say_resumable(bank_dir: Path, console: Console) -> None:
    """After a failed cluster run: what the bank holds, and that rerunning finishes it."""
    from ucl_cli.bank.shards import is_sharded, read_sharded_manifest

    if is_sharded(bank_dir):
        count = read_sharded_manifest(bank_dir).count
        console.print(
            f"ucl: bank {escape(bank_dir.name)} holds {count:,} items in whole shards; run the "
            "same command again to embed the rest",
            soft_wrap=True,
        )


def _modality(given: Modality | None, prune: bool, bank_dir: Path) -> Modality:
    """--modality; without it, text, or with --prune the bank's (which must exist then)."""
    from ucl_cli.bank.shards import read_any_manifest

    if given is None and prune:
        given = Modality(read_any_manifest(bank_dir).modality)  # no bank: says how to build one
    modality = given or Modality.TEXT
    if prune and modality is Modality.TEXT:
        raise UsageError(
            f"--prune drops the rows of deleted files from a collection (a bank of image or "
            f"audio files); bank {bank_dir.name} holds texts, which have no files to prune"
        )
    return modality


def _save_index_scans(bank_dir: Path) -> None:
    """Prepare `ucl query --method topk` now (IVF banks only), rather than at its first query."""
    from ucl_cli.bank import load_bank
    from ucl_cli.bank.nearest import save_index_scans

    with load_bank(bank_dir, verify="on_read") as bank:
        save_index_scans(bank)


def _items(
    sources: Sequence[str], modality: Modality, options: CorpusOptions, view: IndexProgress
) -> tuple[Iterable[BankItem], int | None]:
    """The items to index and how many there are at most (for the progress bar)."""
    if modality is Modality.TEXT:
        from ucl_cli.bank import corpus_items

        for source in sources:
            if source != "-" and Path(source).is_dir():
                raise UsageError(
                    f"{source} is a folder; give text files, or index files with "
                    "--modality image|audio"
                )
        counts = [_count(source) for source in sources]
        total = None if None in counts else sum(counts)
        return corpus_items(sources, options, view.skipped_line), total
    from ucl_cli.bank.file_items import collect_file_items

    files = collect_file_items(
        sources, modality.value, strict=options.strict, on_skip=view.skipped_file
    )
    if not files.paths:
        raise UsageError(f"no {modality.value} files found in {', '.join(sources)}")
    return files, len(files)


def _count(source: str) -> int | None:
    from ucl_cli.bank.corpus import count_lines
    from ucl_cli.errors import InputFileError

    try:
        return count_lines(source)
    except FileNotFoundError:
        raise InputFileError(source, "no such file") from None


def _summary(
    bank: str,
    modality: Modality,
    report: IndexReport,
    view: IndexProgress,
    *,
    indexed: bool = True,
) -> str:
    """"bank captions: added 2 items, skipped 3 already in the bank and 1 repeated line; 5 items
    in total (0.4 s)": what happened to every input (and, in a collection, to moved and deleted
    files), in words. `indexed`: False for --prune alone, which adds nothing."""
    from ucl_cli.commands._shared import plural

    unit = "line" if modality is Modality.TEXT else "file"
    skipped = []
    if report.duplicates - report.repeated:
        skipped.append(f"{report.duplicates - report.repeated:,} already in the bank")
    if report.repeated:
        skipped.append(plural(report.repeated, f"repeated {unit}"))
    if view.skips:
        skipped.append(plural(view.skips, f"unreadable {unit}"))
    said = ""
    if skipped:
        listed = " and ".join([", ".join(skipped[:-1]), skipped[-1]] if skipped[:-1] else skipped)
        said = f", skipped {listed}"
    done = [f"added {plural(report.added, 'item')}"] if indexed else []
    if report.resumed:
        done.append(f"kept {report.resumed:,} rows from an interrupted run")
    if report.moved:
        done.append("updated " + plural(report.moved, "moved file's path", "moved files' paths"))
    if report.replaced:
        rows = "row" if report.replaced == 1 else "rows"
        done.append(f"dropped the old {rows} of {plural(report.replaced, 'overwritten file')}")
    if not indexed or report.pruned:
        gone = "row whose file is gone" if report.pruned == 1 else "rows whose files are gone"
        done.append(f"removed {report.pruned:,} {gone}")
    return (
        f"bank {escape(bank)}: {', '.join(done)}{said}; "
        f"{plural(report.total, 'item')} in total ({report.seconds:.1f} s)"
    )
