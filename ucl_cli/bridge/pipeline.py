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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from ucl_cli.bank import Bank
from ucl_cli.bridge import methods
from ucl_cli.bridge.methods import BridgeSide, Scores
from ucl_cli.bridge.sides import bank_side
from ucl_cli.cache import EmbeddingCache, embed_files, open_cache
from ucl_cli.encoders.base import Encoder
from ucl_cli.errors import InputFileError, UsageError
from ucl_cli.modality import Modality

if TYPE_CHECKING:
    from ucl_cli.media.collect import QueryInputs

Method = Literal["lse", "topk", "direct", "caption"]
METHODS: tuple[str, ...] = ("lse", "topk", "direct", "caption")


@dataclass(frozen=True)
class QueryOptions:
    """How to score. `top=None` keeps every candidate; `explain` bank items per hit."""

    method: Method = "lse"
    top: int | None = 10
    explain: int = 0
    strict: bool = False
    force_direct: bool = False
    batch_size: int | None = None
    device: str = "cpu"
    topk_start: int = 64  # topk: nearest bank rows found per candidate (`--k`)
    topk_max: int = 8192  # topk: most top bank rows used per query (`--k-max`)


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


@dataclass(frozen=True)
class QueryResult:
    query: Path
    query_modality: Modality
    candidate_modality: Modality
    method: str
    bank: str
    hits: list[Hit]


@dataclass
class SearchReport:
    results: list[QueryResult]
    skipped: list[InputFileError] = field(default_factory=list)  # candidates left out
    failed_queries: list[InputFileError] = field(default_factory=list)  # queries left out
    candidates: int = 0
    embedded: int = 0  # files embedded by this run (cache misses)
    cached: int = 0  # files whose embeddings came from the cache


@dataclass
class SearchListener:
    """Hooks the CLI uses for progress and warnings; the library itself never prints."""

    on_skip: Callable[[InputFileError], None] | None = None  # a candidate left out
    on_query_skip: Callable[[InputFileError], None] | None = None  # a query left out
    on_stage: Callable[[str, int], None] | None = None  # (description, total items)
    on_advance: Callable[[int], None] | None = None


def search(
    queries: Sequence[str | Path],
    candidates: Sequence[str | Path],
    *,
    encoders: Sequence[Encoder],
    bank: Bank,
    options: QueryOptions | None = None,
    cache: EmbeddingCache | None = None,
    listener: SearchListener | None = None,
) -> SearchReport:
    """Rank `candidates` for each of `queries` through `bank` with the given encoders."""
    from ucl_cli.media.collect import collect_query_inputs

    options = options or QueryOptions()
    listener = listener or SearchListener()
    _check_method(options)
    inputs = collect_query_inputs(
        queries,
        candidates,
        strict=options.strict,
        on_query_skip=listener.on_query_skip,
        on_skip=listener.on_skip,
    )
    return search_inputs(
        inputs, encoders=encoders, bank=bank, options=options, cache=cache, listener=listener
    )


def search_inputs(
    inputs: QueryInputs,
    *,
    encoders: Sequence[Encoder],
    bank: Bank,
    options: QueryOptions | None = None,
    cache: EmbeddingCache | None = None,
    listener: SearchListener | None = None,
) -> SearchReport:
    """`search` on inputs `collect_query_inputs` has already checked (as `ucl query` does, before
    it loads the models). A query that fails to decode is left out like one that failed its
    check: every query ends up in `results` or in `failed_queries`."""
    options = options or QueryOptions()
    listener = listener or SearchListener()
    _check_method(options)
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
                    paths,
                    query_modality,
                    inputs.candidates.paths,
                    candidate_modality,
                    encoders,
                    bank,
                    options,
                    cache,
                    listener,
                    report,
                )
            )
    finally:
        if own_cache:
            cache.close()
    order = {Path(f.path): i for i, f in enumerate(query_files.files)}
    report.results.sort(key=lambda result: order[result.query])
    return report


def _check_method(options: QueryOptions) -> None:
    if options.method not in METHODS:
        raise UsageError(f"unknown method {options.method!r}; choose one of: {', '.join(METHODS)}")


def _search_one_direction(
    query_paths: list[Path],
    query_modality: Modality,
    candidate_paths: list[Path],
    candidate_modality: Modality,
    encoders: Sequence[Encoder],
    bank: Bank,
    options: QueryOptions,
    cache: EmbeddingCache,
    listener: SearchListener,
    report: SearchReport,
) -> list[QueryResult]:
    bridge = Modality(bank.modality)
    query_model = encoder_for(encoders, query_modality, bridge)
    candidate_model = encoder_for(encoders, candidate_modality, bridge)
    query_embeddings = _embed(
        query_model, query_modality, query_paths, cache, options, listener, report, query=True
    )
    if not query_embeddings.paths:
        return []  # every query of this modality failed to decode: each is in failed_queries
    candidate_embeddings = _embed(
        candidate_model, candidate_modality, candidate_paths, cache, options, listener, report
    )
    kept_candidates = candidate_embeddings.paths
    if not kept_candidates:
        raise UsageError("every candidate file was skipped: nothing to rank")
    report.candidates = len(kept_candidates)
    query_side = bank_side(bank, query_model, None)
    candidate_side = bank_side(bank, candidate_model, None)
    scores = _score(
        query_embeddings.vectors,
        candidate_embeddings.vectors,
        query_side,
        candidate_side,
        query_model,
        candidate_model,
        options,
    )
    top = len(kept_candidates) if options.top is None else min(options.top, len(kept_candidates))
    explanations = _explanations(
        query_embeddings.vectors,
        candidate_embeddings.vectors,
        query_side,
        candidate_side,
        scores,
        top,
        bank,
        options,
    )
    results = []
    for n, query in enumerate(query_embeddings.paths):
        hits = []
        for position in range(top):
            k = int(scores.order[n, position])
            weights, ess = explanations.get((n, k), ((), None))
            hits.append(
                Hit(
                    rank=position + 1,
                    candidate=kept_candidates[k],
                    score=float(scores.values[n, k]),
                    certified=_optional_bool(scores.certified, n, position),
                    lower=_optional_float(scores.lower, n, k),
                    upper=_optional_float(scores.upper, n, k),
                    caption=_caption(scores, bank, n),
                    bridge=weights,
                    effective_sample_size=ess,
                )
            )
        results.append(
            QueryResult(query, query_modality, candidate_modality, options.method, bank.name, hits)
        )
    return results


def _score(
    queries: np.ndarray,
    candidates: np.ndarray,
    query_side: BridgeSide,
    candidate_side: BridgeSide,
    query_model: Encoder,
    candidate_model: Encoder,
    options: QueryOptions,
) -> Scores:
    device = options.device
    if options.method == "lse":
        return methods.lse_scores(queries, candidates, query_side, candidate_side, device=device)
    if options.method == "topk":
        return methods.topk_scores(
            queries,
            candidates,
            query_side,
            candidate_side,
            top=options.top or candidates.shape[0],
            start_t=options.topk_start,
            max_t=options.topk_max,
            device=device,
        )
    if options.method == "caption":
        return methods.caption_scores(
            queries, candidates, query_side, candidate_side, device=device
        )
    _check_direct(query_model, candidate_model, queries, candidates, options.force_direct)
    return methods.direct_scores(queries, candidates, device=device)


def _check_direct(
    query_model: Encoder,
    candidate_model: Encoder,
    queries: np.ndarray,
    candidates: np.ndarray,
    forced: bool,
) -> None:
    """Direct comparison is Bayes-consistent only inside one trained space
    (docs/METHOD.md#when-direct-is-valid)."""
    if query_model.key == candidate_model.key:
        return
    if not forced:
        raise UsageError(
            f"direct comparison needs one model that embeds both modalities; {query_model.key} "
            f"and {candidate_model.key} were trained separately, so the cosine between their "
            "embeddings is meaningless (Che & Eysenbach, ICLR 2025, Lemma 2). Use --method lse, or "
            "--force-direct to compute it anyway"
        )
    if queries.shape[1] != candidates.shape[1]:
        raise UsageError(
            f"--force-direct: {query_model.key} has dim {queries.shape[1]} but "
            f"{candidate_model.key} has dim {candidates.shape[1]}; there is no cosine to compute"
        )


def _explanations(
    queries: np.ndarray,
    candidates: np.ndarray,
    query_side: BridgeSide,
    candidate_side: BridgeSide,
    scores: Scores,
    top: int,
    bank: Bank,
    options: QueryOptions,
) -> dict[tuple[int, int], tuple[tuple[BridgeWeight, ...], float]]:
    if options.explain <= 0 or options.method in ("direct", "caption"):
        return {}
    pairs = [
        (n, int(scores.order[n, position]))
        for n in range(queries.shape[0])
        for position in range(top)
    ]
    explanation = methods.explain(
        queries,
        candidates,
        query_side,
        candidate_side,
        pairs,
        options.explain,
        device=options.device,
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
    listener: SearchListener,
    report: SearchReport,
    *,
    query: bool = False,
):
    """Embed through the cache; a file that fails to decode is left out (queries into
    `failed_queries`, candidates into `skipped`), or raised with `strict`."""
    if listener.on_stage is not None:
        listener.on_stage(
            f"embedding {len(paths)} {modality.value} files with {encoder.key}", len(paths)
        )
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


def _caption(scores: Scores, bank: Bank, n: int) -> str | None:
    if scores.bank_rows is None:
        return None
    return bank.texts([int(scores.bank_rows[n])])[0]


def _optional_bool(matrix, n: int, position: int) -> bool | None:
    return None if matrix is None else bool(matrix[n, position])


def _optional_float(matrix, n: int, k: int) -> float | None:
    return None if matrix is None else float(matrix[n, k])
