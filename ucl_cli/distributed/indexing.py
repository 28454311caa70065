"""Indexing a corpus or collection into a sharded bank on a Ray cluster (`ucl index --cluster`).

The driver (the `ucl` process) reads the corpus, skips every item the bank already holds (by
content key, as `index_items` does; a collection's moved and overwritten files are handled
there too, as without a cluster) and plans the new rows as shards, in corpus order: the first
fills the bank's last shard while it has room, the others hold `--shard-size` rows. Each
planned shard's items are written to a file in the bank's directory as soon as the shard is
full (the driver holds one shard's items at a time, whatever the corpus). The plans are a Ray
dataset, mapped by a pool of actors (`map_batches` with the callable class
`ShardEmbedder`, one model copy per actor, one GPU per actor where the cluster has GPUs): an
actor decodes its shard's files (collections), embeds the items with every model in batches of
`--batch-size`, and writes the shard into the bank's directory as a complete bank
(`start_shard`, `BankWriter`). The driver holds the bank's lock for the whole run and lists each
finished shard in the top-level manifest as soon as it arrives, in one atomic step
(`ShardedWriter.publish_shards`), always in plan order: a finished run leaves the same rows, in
the same order and the same shards, as `ucl index --shard-size` in one process.

Killed anywhere, a run leaves only whole, listed shards visible (a shard being written is not
listed; the next writer removes it). Rerun, it embeds only the items no listed shard holds, so
the shards that were published are never embedded again; they then come before the rerun's
shards. Ray restarts a dead actor and retries its shard (Ray Data's actor fault tolerance).

Actors open the bank by path: every machine of the cluster must see its directory at the same
path (a shared file system), as for `query --cluster`. The driver's model-location variables
(HF_*, HUGGINGFACE_*, TRANSFORMERS_*, UCL_*, TORCH_HOME) go with the actors.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from ucl_cli.bank.indexer import (
    IndexListener,
    IndexOptions,
    IndexReport,
    check_encoders,
    in_bank_order,
    index_writer_options,
    load_inputs,
    new_batches,
    publish_changes,
)
from ucl_cli.bank.items import BankItem, KeySet
from ucl_cli.bank.manifest import ModelRecord
from ucl_cli.distributed.cluster import connect, disconnect, import_ray
from ucl_cli.errors import BankError, InputFileError, UclError, UsageError

if TYPE_CHECKING:
    from ucl_cli.bank.shards import ShardedWriter, ShardRecord
    from ucl_cli.bank.writer import WriterOptions
    from ucl_cli.encoders.base import Encoder

FORWARDED_ENV = ("HF_", "HUGGINGFACE_", "TRANSFORMERS_", "UCL_", "TORCH_HOME")
PLANS_FOLDER = ".cluster-plans"  # in the bank's directory: each planned shard's items


class ModelSource(Protocol):
    """What an actor loads its own copy of the models from (pickled to every actor)."""

    def load(self, device: str) -> list[Encoder]: ...


@dataclass(frozen=True)
class RegistryModels:
    """The models `ucl index` names: registry keys, and a checkpoint for some of them."""

    keys: tuple[str, ...]
    weights: tuple[str | None, ...] = ()

    def load(self, device: str) -> list[Encoder]:
        from ucl_cli.encoders.registry import load_encoder

        encoders = []
        for n, key in enumerate(self.keys):
            path = self.weights[n] if n < len(self.weights) else None
            extra = {} if path is None else {"weights": path}
            encoders.append(load_encoder(key, device=device, **extra))
        return encoders


@dataclass(frozen=True)
class ShardPlan:
    """One shard to write: its name, the listed shard it adds rows to (or none), and the file
    that lists its items (the bank's own JSON lines, in the run's plans folder)."""

    name: str
    items: Path
    extends: ShardRecord | None = None

    def row(self) -> dict[str, str]:
        """As a dataset row: plain strings (an actor reads the items from the file)."""
        return {"shard": self.name, "extends": self.extends.name if self.extends else "",
                "items": str(self.items.resolve())}  # fmt: skip


@dataclass
class ClusterIndexOptions:
    """How the work is spread: `actors` (default: one per GPU, else one per CPU, at most one
    per shard), on GPUs where the cluster has them unless `device` is cpu; `on_shard` hears
    each shard as it is published (progress; tests stop a run there)."""

    actors: int | None = None
    device: str = "auto"
    on_shard: Callable[[ShardRecord], None] | None = None
    # Filled in by the run: actors, gpus, shards, and busy_s, the seconds from the first shard
    # started to the last finished on the actors (their throughput without starting up).
    stats: dict[str, Any] = field(default_factory=dict)


def index_on_cluster(
    bank_dir: str | Path,
    encoders: Sequence[Encoder],
    models: ModelSource,
    items: Iterable[BankItem],
    options: IndexOptions,
    spec: str,
    listener: IndexListener | None = None,
    cluster: ClusterIndexOptions | None = None,
) -> IndexReport:
    """`index_items` into a sharded bank, the new rows embedded and written by Ray actors.

    `encoders` are the driver's copies (their records go into the manifest; each actor checks
    that the models it loads from `models` are the same); `spec` names the cluster (`cluster`).
    """
    from ucl_cli.bank.collection import GoneFiles
    from ucl_cli.bank.shards import ShardedWriter

    options = options or IndexOptions()
    listener = listener or IndexListener()
    cluster = cluster or ClusterIndexOptions()
    check_encoders(encoders, options.modality)
    if options.replace:
        raise UsageError("--cluster extends a sharded bank; it does not replace one")
    started = time.perf_counter()
    report = IndexReport(bank=Path(bank_dir))
    records = [ModelRecord.from_encoder(encoder) for encoder in encoders]
    writer_options = index_writer_options(options, listener)
    with ShardedWriter(Path(bank_dir), records, writer_options, options.shard_size) as writer:
        report.resumed = writer.recovered_rows
        if report.resumed:
            listener.resumed(report.resumed)
        gone = None if options.modality == "text" else GoneFiles(writer)
        plans_dir = writer.dir / PLANS_FOLDER
        shutil.rmtree(plans_dir, ignore_errors=True)  # an interrupted run's: planned again
        try:
            parts = _plan_parts(writer, items, options, listener, report, gone, plans_dir)
            if gone is not None:
                report.replaced = gone.drop_replaced()
                if options.prune:
                    report.pruned = gone.prune()
            # an interrupted run's rows, moves and drops
            report.total = publish_changes(writer, listener)
            plans = _named(writer, parts)
            if plans:
                _run(writer, plans, models, options, spec, listener, report, cluster)
        finally:
            shutil.rmtree(plans_dir, ignore_errors=True)
        report.total = 0 if writer.published is None else writer.published.count
    report.seconds = time.perf_counter() - started
    return report


class _Planned:
    """The writer's keys and this run's planned ones: what `new_batches` asks of a writer."""

    def __init__(self, writer: ShardedWriter):
        self.writer = writer
        self.keys = KeySet()

    def contains_many(self, keys: Sequence[str]) -> np.ndarray:
        return self.writer.contains_many(keys) | self.keys.contains_many(keys)


def _plan_parts(
    writer: ShardedWriter,
    items: Iterable[BankItem],
    options: IndexOptions,
    listener: IndexListener,
    report: IndexReport,
    gone: Any,
    plans_dir: Path,
) -> list[tuple[Path, bool]]:
    """The new items (deduplicated against the bank and this run), cut into shards as they
    come, as a writer in one process would cut them: the last listed shard filled first while
    it has room, then shards of `shard_size` rows. Each shard's items go to a file of its own
    as soon as it is full, so the driver holds one shard's items at a time, whatever the
    corpus; (its file, whether it extends the last listed shard), in order."""
    planned = _Planned(writer)
    size = writer.shard_size
    listed = [] if writer.published is None else list(writer.published.shards)
    room = size - listed[-1].count if listed and listed[-1].count < size else 0
    plans_dir.mkdir()
    parts: list[tuple[Path, bool]] = []
    lines: list[bytes] = []

    def cut() -> None:
        path = plans_dir / f"{len(parts):06d}.jsonl"
        path.write_bytes(b"".join(lines))
        parts.append((path, not parts and room > 0))
        lines.clear()

    batches = new_batches(items, planned, options.batch_size, report, listener, gone)  # type: ignore[arg-type]
    for batch in batches:
        for item in batch:
            planned.keys.add(item.key)
            lines.append(item.to_line())
            if len(lines) == (room if not parts and room else size):
                cut()
    if lines:
        cut()
    return parts


def _named(writer: ShardedWriter, parts: list[tuple[Path, bool]]) -> list[ShardPlan]:
    """The planned shards with their names (reserved once the bank's changes are published)."""
    listed = [] if writer.published is None else list(writer.published.shards)
    names = writer.reserve_names(len(parts))
    return [
        ShardPlan(name, path, listed[-1] if extends else None)
        for name, (path, extends) in zip(names, parts, strict=True)
    ]


def _run(
    writer: ShardedWriter,
    plans: list[ShardPlan],
    models: ModelSource,
    options: IndexOptions,
    spec: str,
    listener: IndexListener,
    report: IndexReport,
    cluster: ClusterIndexOptions,
) -> None:
    """Map the plans on the cluster and publish each shard as it comes back."""
    ray = import_ray()
    owns = connect(spec)
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0)) if cluster.device != "cpu" else 0
        cpus = max(1, int(resources.get("CPU", 1)))
        actors = cluster.actors or (gpus or cpus)
        actors = max(1, min(actors, len(plans)))
        # CPU actors share the CPUs out (a fraction each when asked for more actors than CPUs).
        actor_cpus = 1.0 if gpus else (cpus / actors if actors > cpus else float(cpus // actors))
        cluster.stats.update(actors=actors, gpus=gpus, shards=len(plans))
        base = [] if writer.published is None else list(writer.published.shards)
        finished: dict[int, ShardRecord] = {}
        position = {plan.name: n for n, plan in enumerate(plans)}
        span = (float("inf"), float("-inf"))
        rows = _mapped(ray, writer, plans, models, options, actors, actor_cpus, bool(gpus))
        try:
            for row in rows:
                n = position[str(row["shard"])]
                span = (min(span[0], float(row["started"])), max(span[1], float(row["finished"])))
                cluster.stats["busy_s"] = span[1] - span[0]
                record = _record(row)
                for name, reason in _skips(row):
                    report.skipped += 1
                    listener.skipped(name, reason)
                report.added += int(row["added"])
                if record is None:
                    continue
                finished[n] = record
                writer.publish_shards(_listing(base, plans, finished))
                listener.progress(report)
                if cluster.on_shard is not None:
                    cluster.on_shard(record)
        finally:
            rows.close()  # stops the dataset: no actor writes on after an error
        writer.publish_shards(_listing(base, plans, finished), tidy=True)
    except Exception as err:
        raise _reason(err) from None
    finally:
        if owns:
            disconnect()


def _listing(
    base: list[ShardRecord], plans: list[ShardPlan], finished: dict[int, ShardRecord]
) -> list[ShardRecord]:
    """The shards to list now: the listed ones (one perhaps replaced by the shard that extends
    it), then the finished new ones in plan order."""
    extended = {plans[n].extends.name: r for n, r in finished.items() if plans[n].extends}
    listing = [extended.get(record.name, record) for record in base]
    listing += [finished[n] for n in sorted(finished) if plans[n].extends is None]
    return listing


def _mapped(
    ray: Any,
    writer: ShardedWriter,
    plans: list[ShardPlan],
    models: ModelSource,
    options: IndexOptions,
    actors: int,
    actor_cpus: float,
    gpu: bool,
) -> Generator[dict[str, Any], None, None]:
    """The plans as a Ray dataset, mapped by the actor pool: one result row per shard, in the
    order they finish."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # its notes are not the CLI's
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.execution_options.preserve_order = False  # publish each shard when it is done
    for setting in ("raise_original_map_exception", "print_on_execution_start"):
        if hasattr(context, setting):  # newer Ray: an actor's ucl error comes back as itself
            setattr(context, setting, setting.startswith("raise"))
    dataset = ray.data.from_items([plan.row() for plan in plans], override_num_blocks=len(plans))
    shard_options = writer.shard_options()
    mapped = dataset.map_batches(
        ShardEmbedder,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors),  # a fixed pool: one model copy each
        num_cpus=actor_cpus,
        num_gpus=1 if gpu else 0,
        fn_constructor_kwargs={
            "bank_dir": str(writer.dir.resolve()),
            "models": models,
            "records": [record.to_json() for record in writer.models],
            "options": shard_options,
            "batch_size": options.batch_size,
            "strict": options.strict,
            "device": "cuda" if gpu else "cpu",
            "threads": max(1, int(actor_cpus)),
        },
        runtime_env={"env_vars": _forwarded_env()},
    )
    return iter(mapped.iter_rows())  # a generator: closing it stops the dataset


def _forwarded_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}


class ShardEmbedder:
    """One actor of the pool: loads the models once, then writes each shard it is given."""

    def __init__(
        self,
        bank_dir: str,
        models: ModelSource,
        records: list[dict[str, Any]],
        options: WriterOptions,
        batch_size: int,
        strict: bool,
        device: str,
        threads: int,
    ):
        import torch

        if device == "cpu":
            torch.set_num_threads(threads)
        self.bank_dir = Path(bank_dir)
        self.records = [ModelRecord.from_json(record) for record in records]
        self.options = options
        self.index_options = IndexOptions(
            modality=options.modality, batch_size=batch_size, strict=strict
        )
        self.encoders: list[Encoder] = []
        self.failed: UclError | None = None  # raised by the first shard: Ray hands a task's
        try:  # error back as itself, an actor's constructor's only as text
            self.encoders = self._load(models, device)
        except UclError as err:
            self.failed = err

    def _load(self, models: ModelSource, device: str) -> list[Encoder]:
        loaded = models.load(device)
        for encoder in loaded:
            mine = ModelRecord.from_encoder(encoder)
            theirs = next((r for r in self.records if r.key == mine.key), None)
            if theirs is not None and not mine.same_vectors_as(theirs):
                raise BankError(
                    f"{mine.key} on this worker is not the model the driver loaded (other "
                    "weights or preprocessing): every machine needs the same model files"
                )
        return in_bank_order(loaded, self.records)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        shards = zip(batch["shard"], batch["extends"], batch["items"], strict=True)
        try:
            if self.failed is not None:
                raise self.failed
            for name, extends, lines in shards:
                written = self.write(str(name), str(extends) or None, str(lines))
                for column, value in written.items():
                    out.setdefault(column, []).append(value)
        except UclError as err:
            raise CarriedError.of(err) from None
        return out

    def write(self, name: str, extends: str | None, listing: str) -> dict[str, Any]:
        """Embed one shard's items (listed in the file `listing`) and write the shard: its
        record's fields, the items added and skipped, and when it started and finished (the
        actor's clock: the pool's busy time in `ClusterIndexOptions.stats`)."""
        from ucl_cli.bank.shards import manifest_digest, start_shard
        from ucl_cli.bank.writer import BankWriter

        started = time.time()
        lines = Path(listing).read_text(encoding="utf-8")
        items = [BankItem.from_line(line) for line in lines.splitlines() if line]
        shard_dir = start_shard(self.bank_dir, name, extends)
        skips = _Skips()
        report = IndexReport(bank=shard_dir)
        size = self.index_options.batch_size
        with BankWriter(shard_dir, self.records, self.options) as writer:
            seeded = writer.rows
            for start in range(0, len(items), size):
                kept, inputs = load_inputs(
                    items[start : start + size], self.encoders, self.index_options, skips, report
                )
                if not kept:
                    continue
                matrices = [
                    encoder.embed(self.options.modality, column, batch_size=size)
                    for encoder, column in zip(self.encoders, inputs, strict=True)
                ]
                writer.add(kept, matrices)
            added = writer.rows - seeded
            manifest = writer.publish() if added else None
        return {
            "shard": name,
            "count": 0 if manifest is None else manifest.count,
            "manifest_sha256": "" if manifest is None else manifest_digest(shard_dir),
            "faiss_index": "" if manifest is None else manifest.faiss_index,
            "added": added,
            "skipped": "\n".join(f"{n}\t{reason}" for n, reason in skips.found),
            "started": started,
            "finished": time.time(),
        }


class _Skips(IndexListener):
    def __init__(self) -> None:
        self.found: list[tuple[str, str]] = []

    def skipped(self, name: str, reason: str) -> None:
        self.found.append((name, reason.replace("\n", " ")))


def _record(row: dict[str, Any]) -> ShardRecord | None:
    from ucl_cli.bank.shards import ShardRecord

    if not int(row["count"]):
        return None
    return ShardRecord(str(row["shard"]), int(row["count"]), str(row["manifest_sha256"]),
                       str(row["faiss_index"]))  # fmt: skip


def _skips(row: dict[str, Any]) -> list[tuple[str, str]]:
    text = str(row["skipped"])
    return [tuple(line.split("\t", 1)) for line in text.splitlines() if line]  # type: ignore[misc]


class CarriedError(Exception):
    """A ucl error raised on an actor, as its class name and arguments: Ray sends exceptions
    back pickled, and some of ucl's (`InputFileError`) do not unpickle as themselves. Ray Data
    adds notes to an exception's message, so the class and arguments are attributes."""

    def __init__(self, kind: str, arguments: tuple[str, ...]):
        super().__init__(f"{kind}{arguments}")
        self.kind, self.arguments = kind, tuple(arguments)

    def __reduce__(self) -> tuple[Any, ...]:
        return (CarriedError, (self.kind, self.arguments))

    @classmethod
    def of(cls, err: UclError) -> CarriedError:
        if isinstance(err, InputFileError):
            return cls("InputFileError", (err.path, err.reason))
        return cls(type(err).__name__, (str(err),))

    def restored(self) -> UclError:
        from ucl_cli import errors

        error_class = getattr(errors, self.kind, None)
        if isinstance(error_class, type) and issubclass(error_class, UclError):
            return error_class(*self.arguments)
        return UclError(*self.arguments)


def _reason(err: Exception) -> Exception:
    """The error a run reports: a ucl error raised on an actor as itself (an unreadable file
    with --strict, other models on a worker), anything else as it is."""
    seen: BaseException | None = err
    while seen is not None:
        cause = getattr(seen, "cause", None)  # a RayTaskError's: the exception on the actor
        if isinstance(cause, Exception) and cause is not seen:
            seen = cause
        elif isinstance(seen, CarriedError):
            return seen.restored()
        elif isinstance(seen, UclError):
            return seen
        else:
            seen = seen.__cause__
    return err
