"""One query run: files -> media -> encoders (through the cache) -> bank -> method -> ranked hits.

`search` is the library entry point under `ucl query`: the CLI only formats what it returns.
It is `collect_query_inputs` (every named file checked by its header, cheap, before any model is
loaded) then `search_inputs`. Queries may be images or audio; each query's modality picks the
direction (image -> audio through the image-text model then the text-audio model, audio -> image
the other way). All queries of one modality share one pass over the bank and one embedding of
the candidates. A query that cannot be read is left out like a bad candidate (`failed_queries`), so
one bad file does not sink a batch; `strict` raises the first instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ucl_cli.bank import Bank
from ucl_cli.bridge.listener import Listener
from ucl_cli.bridge.methods import (
    DEFAULT_METHOD,
    Bridge,
    Method,
    Scores,
    ScoringSettings,
    check_calibration,
    method_named,
)
from ucl_cli.cache import EmbeddingCache, embed_files, open_cache
from ucl_cli.calibration import Calibration
from ucl_cli.encoders.base import Encoder
from ucl_cli.errors import InputFileError, UsageError
from ucl_cli.modality import Modality

if TYPE_CHECKING:
    from ucl_cli.media.collect import QueryInputs


@dataclass(frozen=True)
class QueryOptions:
    """How to score. `top=None` keeps every candidate; `explain` bank items per hit; `scoring`:
    the settings `ucl eval` shares (device, force_direct, topk's nearest rows, the
    calibration: e.g. `ScoringSettings(calibration=Calibration.parse("0.25", "candidates"))`
    for a tempered, self-normalised bridge sum; lse and topk only)."""

    method: str = DEFAULT_METHOD
    top: int | None = 10
    explain: int = 0
    strict: bool = False
    batch_size: int | None = None
    scoring: ScoringSettings = field(default_factory=ScoringSettings)


@dataclass(frozen=True)
class BridgeWeight:
    """A bank item that carried a match, and its share softmax_m of the bridge sum.
    `truncated`: the bank text was cut to the text towers' context; `text` is what they embedded.
    """

    row: int
    text: str
    weight: float
    truncated: bool = False


@dataclass(frozen=True)
class Hit:
    rank: int
    candidate: Path
    score: float
    certified: bool | None = None  # topk: is this rank proven by the bounds?
    lower: float | None = None  # topk: certified bounds on the exact score
    upper: float | None = None
    caption: str | None = None  # caption: the bank text the query was mapped to
    bridge: tuple[BridgeWeight, ...] = ()
    effective_sample_size: float | None = None
    collection: str | None = None  # the collection the candidate is a row of (None: a file)
    row: int | None = None  # its row in that collection (`ucl serve` streams a hit by it)


@dataclass(frozen=True)
class QueryResult:
    query: Path
    query_modality: Modality
    candidate_modality: Modality
    method: str
    bank: str
    hits: list[Hit]
    # how the bridge sum was tempered and normalised (the paper's estimator unless asked)
    calibration: Calibration = field(default_factory=Calibration)


@dataclass
class SearchReport:
    results: list[QueryResult]
    skipped: list[InputFileError] = field(default_factory=list)  # candidates left out
    failed_queries: list[InputFileError] = field(default_factory=list)  # queries left out
    candidates: int = 0
    embedded: int = 0  # files embedded by this run (cache misses)
    cached: int = 0  # files whose embeddings came from the cache


def search(
    queries: Sequence[str | Path],
    candidates: Sequence[str | Path],
    *,
    encoders: Sequence[Encoder],
    bank: Bank,
    options: QueryOptions | None = None,
    cache: EmbeddingCache | None = None,
    listener: Listener | None = None,
    collections: Sequence[Bank] = (),
) -> SearchReport:
    """Rank `candidates` (files and folders) and the rows of `collections` (banks of image or
    audio files, `ucl index --modality audio|image`) for each of `queries` through `bank` with
    the given encoders. Either may be empty, not both."""
    from ucl_cli.media.collect import collect_query_inputs

    options = options or QueryOptions()
    listener = listener or Listener()
    # an unknown method, or a calibration it cannot use, fails before any file is read
    check_calibration(method_named(options.method), options.scoring)
    inputs = collect_query_inputs(
        queries,
        candidates,
        strict=options.strict,
        on_query_skip=listener.on_query_skip,
        on_skip=listener.on_skip,
        collection_modality=collections_modality(collections),
    )
    return search_inputs(
        inputs,
        encoders=encoders,
        bank=bank,
        options=options,
        cache=cache,
        listener=listener,
        collections=collections,
    )


def collections_modality(collections: Sequence[Bank]) -> Modality | None:
    """The one modality of the collections' files (None for no collections); a UsageError
    when they mix images and audio, or one holds texts."""
    if not collections:
        return None
    kinds = {collection.modality for collection in collections}
    if len(kinds) > 1 or "text" in kinds:
        named = ", ".join(f"{c.name} ({c.modality})" for c in collections)
        raise UsageError(
            f"collections must all hold images or all hold audio; got {named} (a bank of "
            "texts is a bridge bank: pass it as --bank)"
        )
    return Modality(kinds.pop())


def search_inputs(
    inputs: QueryInputs,
    *,
    encoders: Sequence[Encoder],
    bank: Bank,
    options: QueryOptions | None = None,
    cache: EmbeddingCache | None = None,
    listener: Listener | None = None,
    collections: Sequence[Bank] = (),
) -> SearchReport:
    """`search` on inputs `collect_query_inputs` has already checked (as `ucl query` does, before
    it loads the models). A query that fails to decode is left out like one that failed its
    check: every query ends up in `results` or in `failed_queries`."""
    options = options or QueryOptions()
    listener = listener or Listener()
    chosen = method_named(options.method)
    check_calibration(chosen, options.scoring)
    query_files, candidate_modality = inputs.queries, inputs.candidate_modality
    bank.check_models(encoders)
    own_cache = cache is None
    cache = cache or open_cache()
    report = SearchReport(
        results=[],
        skipped=list(inputs.candidates.skipped),
        failed_queries=list(query_files.skipped),
    )
    try:
        for query_modality in sorted(query_files.modalities, key=lambda m: m.value):
            paths = [f.path for f in query_files.files if f.modality == query_modality]
            report.results.extend(
                _search_one_direction(
                    _Direction(query_modality, candidate_modality, chosen),
                    paths,
                    inputs.candidates.paths,
                    encoders,
                    bank,
                    options,
                    cache,
                    listener,
                    report,
                    collections,
                )
            )
    finally:
        if own_cache:
            cache.close()
    order = {Path(f.path): i for i, f in enumerate(query_files.files)}
    report.results.sort(key=lambda result: order[result.query])
    return report


@dataclass(frozen=True)
class _Direction:
    """Queries of one modality ranking candidates of another, by one method."""

    query: Modality
    candidate: Modality
    method: Method


def _search_one_direction(
    direction: _Direction,
    query_paths: list[Path],
    candidate_paths: list[Path],
    encoders: Sequence[Encoder],
    bank: Bank,
    options: QueryOptions,
    cache: EmbeddingCache,
    listener: Listener,
    report: SearchReport,
    collections: Sequence[Bank] = (),
) -> list[QueryResult]:
    query_modality, candidate_modality = direction.query, direction.candidate
    through = Modality(bank.modality)
    query_model = encoder_for(encoders, query_modality, through)
    candidate_model = encoder_for(encoders, candidate_modality, through)
    refusal = direction.method.refusal(query_model, candidate_model, options.scoring)
    if refusal is not None:
        raise UsageError(f"{refusal}; or use --method {DEFAULT_METHOD}")
    query_embeddings = _embed(
        query_model, query_modality, query_paths, cache, options, listener, report, query=True
    )
    if not query_embeddings.paths:
        return []  # every query of this modality failed to decode: each is in failed_queries
    return _search_sources(
        direction,
        query_embeddings,
        candidate_paths,
        candidate_model,
        query_model,
        bank,
        options,
        cache,
        listener,
        report,
        collections,
    )


def _search_sources(
    direction: _Direction,
    query_embeddings,
    candidate_paths: list[Path],
    candidate_model: Encoder,
    query_model: Encoder,
    bank: Bank,
    options: QueryOptions,
    cache: EmbeddingCache,
    listener: Listener,
    report: SearchReport,
    collections: Sequence[Bank],
) -> list[QueryResult]:
    """Rank the candidate files and the collections' rows as one candidate set, streamed a
    chunk at a time (`candidate_sources`): the collections' files are never opened. Files
    alone are one source, ranked the same way."""
    import torch

    from ucl_cli.bridge.candidate_sources import collection_source, file_source, rank_sources

    for collection in collections:
        if collection.modality != direction.candidate.value:
            raise UsageError(
                f"collection {collection.name} holds {collection.modality}; the candidates of "
                f"{direction.query.value} queries here are {direction.candidate.value}"
            )
    sources = []
    if candidate_paths:
        embedded = _embed(
            candidate_model, direction.candidate, candidate_paths, cache, options, listener, report
        )
        if embedded.paths:
            sources.append(file_source(embedded.paths, embedded.vectors))
    device = options.scoring.device
    sources += [collection_source(c, candidate_model, device) for c in collections]
    if not sources:
        raise UsageError("every candidate file was skipped: nothing to rank")
    total = sum(len(source) for source in sources)
    if collections:
        names = ", ".join(collection.name for collection in collections)
        listener.stage(f"scoring {total:,} candidates (collections {names})", total)
    if direction.method.certifies:
        from ucl_cli.bank.placement import gpu_unavailable

        reason = gpu_unavailable(device)
        if reason is not None:
            listener.note(f"FAISS searches run on the CPU: {reason}")
    bridge = Bridge.of(bank, query_model, candidate_model, device=device)
    queries = query_embeddings.vectors
    ranked = rank_sources(
        direction.method,
        bridge,
        queries,
        sources,
        options.scoring,
        options.top,
        on_advance=listener.on_advance if collections else None,  # files: no stage of its own
        on_note=listener.note,
    )
    report.candidates = ranked.total
    shown = ranked.values.shape[1]
    explanations = {}
    if options.explain > 0 and direction.method.explains and shown:
        # the shown hits' vectors, gathered into one small candidate matrix for `explain`
        picks = [
            (int(ranked.source[n, p]), int(ranked.row[n, p]))
            for n in range(queries.shape[0])
            for p in range(shown)
        ]
        vectors = np.stack([sources[s].vectors[r] for s, r in picks]).astype(np.float32)
        order = torch.arange(len(picks)).reshape(queries.shape[0], shown)
        gathered = Scores(ranked.values, order)
        by_pick = _explanations(bridge, queries, vectors, gathered, shown, bank, options)
        explanations = {
            (n, p): by_pick[(n, n * shown + p)]
            for n in range(queries.shape[0])
            for p in range(shown)
        }
    results = []
    for n, query in enumerate(query_embeddings.paths):
        hits = []
        for position in range(shown):
            source = sources[int(ranked.source[n, position])]
            weights, ess = explanations.get((n, position), ((), None))
            hits.append(
                Hit(
                    rank=position + 1,
                    candidate=source.locate(int(ranked.row[n, position])),
                    score=float(ranked.values[n, position]),
                    certified=_optional_bool(ranked.certified, n, position),
                    lower=_optional_float(ranked.lower, n, position),
                    upper=_optional_float(ranked.upper, n, position),
                    caption=_caption(ranked, bank, n),
                    bridge=weights,
                    effective_sample_size=ess,
                    collection=source.collection,
                    row=None if source.collection is None else int(ranked.row[n, position]),
                )
            )
        results.append(
            QueryResult(
                query,
                direction.query,
                direction.candidate,
                options.method,
                bank.name,
                hits,
                options.scoring.calibration,
            )
        )
    return results


def _explanations(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    scores: Scores,
    top: int,
    bank: Bank,
    options: QueryOptions,
) -> dict[tuple[int, int], tuple[tuple[BridgeWeight, ...], float]]:
    """The bank rows that carried each shown (query, candidate) pair's score, and its ESS."""
    from ucl_cli.bridge.methods import remote_bridge
    from ucl_cli.bridge.scoring import explain

    pairs = [
        (n, int(scores.order[n, position]))
        for n in range(queries.shape[0])
        for position in range(top)
    ]
    scoring = options.scoring
    remote = remote_bridge(bridge)
    if remote is not None:  # each shard's heaviest rows, from the actor holding it
        explanation = remote.explain(
            queries, candidates, pairs, options.explain, scoring.calibration
        )
    else:
        explanation = explain(
            bridge,
            queries,
            candidates,
            pairs,
            options.explain,
            device=scoring.device,
            calibration=scoring.calibration,
        )
    out = {}
    for p, pair in enumerate(pairs):
        # A pair with no finite path lists no rows (NO_ROW, weight 0): nothing carried it.
        listed = [
            (row, weight)
            for row, weight in zip(
                explanation.bank_indices[p].tolist(), explanation.weights[p].tolist(), strict=True
            )
            if row >= 0
        ]
        items = [bank.item(row) for row, _ in listed]
        weights = tuple(
            BridgeWeight(row, item.text, float(weight), item.truncated)
            for (row, weight), item in zip(listed, items, strict=True)
        )
        out[pair] = (weights, float(explanation.effective_sample_size[p]))
    return out


def _embed(
    encoder: Encoder,
    modality: Modality,
    paths: list[Path],
    cache: EmbeddingCache,
    options: QueryOptions,
    listener: Listener,
    report: SearchReport,
    *,
    query: bool = False,
):
    """Embed through the cache; a file that fails to decode is left out (queries into
    `failed_queries`, candidates into `skipped`), or raised with `strict`."""
    listener.stage(f"embedding {len(paths)} {modality.value} files with {encoder.key}", len(paths))
    embedded = embed_files(
        encoder,
        modality,
        paths,
        cache,
        batch_size=options.batch_size,
        progress=listener.on_advance,
        strict=options.strict,
        on_skip=listener.on_query_skip if query else listener.on_skip,
    )
    (report.failed_queries if query else report.skipped).extend(embedded.skipped)
    report.embedded += embedded.computed
    report.cached += embedded.cached
    return embedded


def encoder_for(encoders: Sequence[Encoder], modality: Modality, bridge: Modality) -> Encoder:
    for encoder in encoders:
        if modality in encoder.modalities and bridge in encoder.modalities:
            return encoder
    have = "; ".join(
        f"{e.key} ({', '.join(sorted(m.value for m in e.modalities))})" for e in encoders
    )
    raise UsageError(
        f"no model embeds both {modality.value} and the bank's {bridge.value}: have {have}"
    )


def _caption(scores, bank: Bank, n: int) -> str | None:
    if scores.bank_rows is None:
        return None
    return bank.texts([int(scores.bank_rows[n])])[0]


def _optional_bool(matrix, n: int, position: int) -> bool | None:
    return None if matrix is None else bool(matrix[n, position])


def _optional_float(matrix, n: int, k: int) -> float | None:
    return None if matrix is None else float(matrix[n, k])
