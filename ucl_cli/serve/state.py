"""What `ucl serve` keeps warm between requests, and the one way a request is scored.

The encoders, the bridge bank and the served collections are loaded once. Every search goes
through `ucl_cli.bridge.search` (the call under `ucl query`) with the options `ucl query` would
build, so a hit over HTTP is the hit the CLI prints. Searches run one at a time, on one scoring
thread: torch already spreads one search over every core, and neither the encoders (torch
modules, tokenizers) nor a bank's lazily read vectors and FAISS indexes promise thread safety.
That thread also owns the embedding cache's SQLite connection (a connection belongs to the
thread that opened it), kept open between searches. Request threads only look collection rows
up (`Bank.item`: positional reads of a file checked and indexed when the server starts). An
upload is copied into a temporary folder of its own, deleted when its search ends, whatever
happened.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from ucl_cli.bridge.methods import DEFAULT_METHOD, METHOD_NAMES, ScoringSettings, method_named
from ucl_cli.calibration import Calibration
from ucl_cli.errors import InputFileError, UclError, UsageError
from ucl_cli.modality import Modality

if TYPE_CHECKING:
    from rich.console import Console

    from ucl_cli.bank import Bank
    from ucl_cli.bridge.pipeline import QueryOptions, SearchReport
    from ucl_cli.cache import EmbeddingCache
    from ucl_cli.encoders.base import Encoder

# The most hits and explained bank texts one request may ask for: a response stays small
# whatever the collection's size (`ucl query --top 0` is the way to rank everything).
MAX_TOP = 1000
MAX_EXPLAIN = 50
# An uploaded file keeps a short, plain extension (readers that go by name see the right one).
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,8}")
_OTHER = {Modality.IMAGE: Modality.AUDIO, Modality.AUDIO: Modality.IMAGE}
_NOUNS = {Modality.IMAGE: "images", Modality.AUDIO: "audio clips"}


class NotServedError(UclError):
    """A collection that is not served, or a row or file it does not have (HTTP 404)."""


@dataclass(frozen=True)
class SearchRequest:
    """How to score one query, as `ucl query` takes it: `method`, `top` hits (1..MAX_TOP),
    `explain` bank texts per hit (0..MAX_EXPLAIN), and the served `collections` to rank (None:
    every served collection of the other modality than the query's)."""

    method: str = DEFAULT_METHOD
    top: int = 10
    explain: int = 0
    collections: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise UsageError(
                f"unknown method {self.method!r}; choose one of: {', '.join(METHOD_NAMES)}"
            )
        if not 1 <= self.top <= MAX_TOP:
            raise UsageError(f"top must be between 1 and {MAX_TOP}; got {self.top}")
        if not 0 <= self.explain <= MAX_EXPLAIN:
            raise UsageError(f"explain must be between 0 and {MAX_EXPLAIN}; got {self.explain}")


@dataclass(frozen=True)
class Answer:
    """A search's report with what the response names it by: the query's display name (an
    upload's own file name, never its temporary path) and the collections that were ranked."""

    report: SearchReport
    query_name: str
    collections: tuple[str, ...]


@dataclass
class Served:
    """The warm state of one server. `calibrations`: the calibration stored in the bank per
    direction ("image->audio"), applied to methods that calibrate, as `ucl query` does."""

    encoders: list[Encoder]
    bank: Bank
    collections: dict[str, Bank]
    device: str = "cpu"
    calibrations: dict[str, Calibration] = field(default_factory=dict)
    use_cache: bool = True
    on_warning: Callable[[str], None] | None = None
    scoring: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="ucl-scoring"),
        repr=False,
    )
    _cache: EmbeddingCache | None = field(default=None, init=False, repr=False)

    @classmethod
    def of(
        cls, encoders: Sequence[Encoder], bank: Bank, collections: Sequence[Bank], **kwargs
    ) -> Served:
        """Serve `collections` through `bank`: each must hold image or audio files embedded by
        the encoders that embed them here (checked now, not at the first request)."""
        from ucl_cli.bridge.pipeline import encoder_for

        by_name: dict[str, Bank] = {}
        for collection in collections:
            if collection.modality not in ("image", "audio"):
                raise UsageError(
                    f"{collection.name} is a bank of texts, not a collection of files; serve it "
                    f"as the bridge with --bank {collection.name}"
                )
            if collection.name in by_name:
                raise UsageError(f"two collections are named {collection.name}; serve one")
            model = encoder_for(encoders, Modality(collection.modality), Modality(bank.modality))
            collection.check_models([model])
            # Check the items files and index their lines now (each shard's, for a sharded
            # collection): the request threads that later look rows up (media, listings)
            # beside the scoring thread then only pread.
            for part in getattr(collection, "shards", None) or [collection]:
                if len(part):
                    part.item(0)
            by_name[collection.name] = collection
        if not by_name:
            raise UsageError("nothing to serve: name a collection with --collection NAME")
        bank.check_models(encoders)
        return cls(list(encoders), bank, by_name, **kwargs)

    def close(self) -> None:
        """Finish the searches under way, then close the cache and the banks."""
        self.scoring.submit(self._close_cache).result()
        self.scoring.shutdown()
        for collection in self.collections.values():
            collection.close()
        self.bank.close()

    # --- one search: `submit_*` hand it to the scoring thread, `search_*` wait for it -------

    def submit_upload(
        self, stream: BinaryIO, filename: str, request: SearchRequest
    ) -> Future[Answer]:
        """Score an uploaded file (read from `stream` on the scoring thread)."""
        return self.scoring.submit(self._upload, stream, filename, request)

    def submit_item(self, collection: str, row: int, request: SearchRequest) -> Future[Answer]:
        """Score the file of a served collection's row, read from the path it was indexed
        under (as `ucl query PATH` would). An unknown collection or row raises at once."""
        return self.scoring.submit(self._file, self.item_path(collection, row), request)

    def search_upload(self, stream: BinaryIO, filename: str, request: SearchRequest) -> Answer:
        return self.submit_upload(stream, filename, request).result()

    def search_item(self, collection: str, row: int, request: SearchRequest) -> Answer:
        return self.submit_item(collection, row, request).result()

    def search_file(self, path: Path, request: SearchRequest) -> Answer:
        return self.scoring.submit(self._file, path, request).result()

    def _upload(self, stream: BinaryIO, filename: str, request: SearchRequest) -> Answer:
        """The upload copied into a folder of its own, deleted afterwards. An unreadable file
        raises InputFileError naming the upload (never its temporary path), with the CLI's
        reason."""
        name = Path(filename or "upload").name or "upload"
        suffix = Path(name).suffix if _SUFFIX.fullmatch(Path(name).suffix) else ""
        with tempfile.TemporaryDirectory(prefix="ucl-serve-") as folder:
            path = Path(folder) / f"query{suffix.lower()}"
            with open(path, "wb") as handle:
                shutil.copyfileobj(stream, handle, 1 << 20)
            try:
                return self._file(path, request, name=name)
            except InputFileError as error:
                raise InputFileError(name, error.reason) from None
            finally:
                if self._cache is not None:  # this path is never seen again: no memo row
                    self._cache.forget_files([path])

    def _file(self, path: Path, request: SearchRequest, *, name: str | None = None) -> Answer:
        """`search` of one query file over the requested collections."""
        from ucl_cli.media.collect import detect_modality

        modality = detect_modality(path)  # a header check: picks the default collections
        chosen = self.targets(modality, request.collections)
        options = self.options(request, modality, Modality(chosen[0].modality))
        report = self._search(path, options, chosen)
        if report.failed_queries:  # it failed to decode past its header
            raise report.failed_queries[0]
        names = tuple(collection.name for collection in chosen)
        return Answer(report, name or str(path), names)

    def _search(self, path: Path, options: QueryOptions, chosen: list[Bank]) -> SearchReport:
        """On the scoring thread only: the library call, through this thread's cache."""
        from ucl_cli.bridge.pipeline import search
        from ucl_cli.cache import MemoryCache, open_cache

        cache, self._cache = self._cache, None
        if cache is None:
            cache = open_cache(enabled=self.use_cache, on_warning=self.on_warning)
        try:
            return search(
                [path],
                [],
                encoders=self.encoders,
                bank=self.bank,
                options=options,
                cache=cache,
                collections=chosen,
            )
        finally:
            if isinstance(cache, MemoryCache) or cache.read_only:
                cache.close()  # it keeps vectors in memory: kept, it would grow with each upload
            else:
                self._cache = cache

    def _close_cache(self) -> None:
        if self._cache is not None:
            self._cache.close()
            self._cache = None

    def targets(self, modality: Modality, names: Sequence[str] | None) -> list[Bank]:
        """The collections a query ranks: those named, else every served one of the other
        modality."""
        if names:
            return [self.collection(name) for name in dict.fromkeys(names)]
        wanted = _OTHER[modality]
        chosen = [c for c in self.collections.values() if c.modality == wanted.value]
        if not chosen:
            served = ", ".join(f"{c.name} ({c.modality})" for c in self.collections.values())
            raise UsageError(
                f"no served collection holds {_NOUNS[wanted]} to rank for an {modality.value} "
                f"query (served: {served}); name a collection to rank {modality.value} against "
                f"{modality.value}"
            )
        return chosen

    def options(
        self, request: SearchRequest, query: Modality, candidate: Modality
    ) -> QueryOptions:
        """The `QueryOptions` `ucl query` builds for the same flags: its defaults for topk's
        nearest rows, and the bank's stored calibration for this direction when the method
        calibrates."""
        from ucl_cli.bridge.pipeline import QueryOptions

        calibration = Calibration()
        if query != candidate and method_named(request.method).calibrates:
            calibration = self.calibrations.get(f"{query.value}->{candidate.value}", calibration)
        scoring = ScoringSettings(device=self.device, calibration=calibration)
        return QueryOptions(
            method=request.method, top=request.top, explain=request.explain, scoring=scoring
        )

    # --- the collections' files ------------------------------------------------------------

    def collection(self, name: str) -> Bank:
        try:
            return self.collections[name]
        except KeyError:
            served = ", ".join(self.collections)
            raise NotServedError(
                f"no collection named {name!r} is served (served: {served})"
            ) from None

    def item_path(self, name: str, row: int) -> Path:
        """The file a served collection's row was indexed from (it may since have gone)."""
        collection = self.collection(name)
        if not 0 <= row < len(collection):
            raise NotServedError(
                f"collection {name} has no row {row} (it has {len(collection):,})"
            )
        return Path(collection.item(row).item_id)


def load_served(
    bank: str | None,
    collections: Sequence[str],
    *,
    image_text_model: str | None,
    text_audio_model: str | None,
    weights: Sequence[Path | None],
    device: str,
    allow_other_weights: bool,
    no_calibration: bool,
    use_cache: bool,
    console: Console,
) -> Served:
    """Load what `ucl query --bank BANK --collection C...` loads, once: the bank chosen by the
    same rule, the models, the collections, and the bank's stored calibrations."""
    from rich.markup import escape

    from ucl_cli.bank import load_bank
    from ucl_cli.bank.catalog import resolve_bank
    from ucl_cli.bank.shards import read_any_manifest
    from ucl_cli.commands._shared import load_models_and_bank, resolve_calibration

    if not collections:
        raise UsageError("nothing to serve: name a collection with --collection NAME")
    paths = [resolve_bank(name) for name in collections]
    for name, path in zip(collections, paths, strict=True):
        if read_any_manifest(path).modality == "text":  # a typo or a bridge: before any model
            raise UsageError(
                f"{name} is a bank of texts, not a collection of files; serve it as the "
                f"bridge with --bank {name}, or build a collection with `ucl index --modality "
                "audio FOLDER --bank NAME`"
            )
    loaded = load_models_and_bank(
        bank,
        image_text_model=image_text_model,
        text_audio_model=text_audio_model,
        weights=weights,
        device=device,
        allow_other_weights=allow_other_weights,
        console=console,
    )
    opened = [load_bank(p, verify="on_read", check_weights=not allow_other_weights) for p in paths]

    def warn(text: str) -> None:
        console.print(f"[yellow]ucl:[/] {escape(text)}", soft_wrap=True)

    try:
        served = Served.of(
            loaded.encoders,
            loaded.bank,
            opened,
            device=loaded.device,
            use_cache=use_cache,
            on_warning=warn,
        )
    except BaseException:
        for collection in opened:
            collection.close()
        loaded.bank.close()
        raise
    for kind in {Modality(c.modality) for c in opened}:
        direction = f"{_OTHER[kind].value}->{kind.value}"
        served.calibrations[direction] = resolve_calibration(
            None,
            no_calibration=no_calibration,
            bank=loaded.bank,
            encoders=loaded.encoders,
            direction=direction,
            applies=True,
            console=console,
        )
    return served
