"""`evaluate`: the paper's retrieval protocol on a manifest of paired files, one call.

    files -> embeddings (each file once, through the cache) -> trials (seeded)
          -> per method and bank size: one score matrix, read by every trial
          -> recall@k, mean rank, intervals -> EvalReport

Recall@k is defined as in the paper (docs/METHOD.md#pretrained-models): T trials, each of K distinct
items drawn at random; every item of a trial is a query once, ranking the trial's K candidate files
(its own is the positive). A trial's recall@k is the mean over its K queries of P(rank of the
positive <= k), ties broken fairly; the reported recall is the mean over the T trials (equivalently
over the T * K queries), with a Student-t interval over the T trial values (see `intervals`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from ucl_cli.bank import Bank
from ucl_cli.bridge.listener import Listener
from ucl_cli.bridge.methods import Bridge, Method, method_named
from ucl_cli.bridge.pipeline import encoder_for
from ucl_cli.cache import EmbeddingCache, embed_files, open_cache
from ucl_cli.encoders.base import Encoder
from ucl_cli.errors import UsageError
from ucl_cli.evaluation.intervals import t_interval
from ucl_cli.evaluation.leakage import find_leaks
from ucl_cli.evaluation.manifest import PairedItem, PairManifest, read_pairs
from ucl_cli.evaluation.options import EvalOptions
from ucl_cli.evaluation.provenance import bank_info, model_info, software_versions
from ucl_cli.evaluation.report import (
    EvalReport,
    MethodResult,
    SkippedItem,
)
from ucl_cli.evaluation.scoring import (
    Scorer,
    TrialMetrics,
    block_limit,
    measure_trials,
    method_scorer,
)
from ucl_cli.evaluation.trials import bank_sizes, draw_trials, sub_bank_rows
from ucl_cli.modality import Modality


@dataclass
class EmbeddedPairs:
    """Per usable item: the query-side and candidate-side vectors (rows aligned with items)."""

    items: list[PairedItem]
    queries: np.ndarray
    candidates: np.ndarray
    skipped: list[SkippedItem] = field(default_factory=list)
    embedded: int = 0
    cached: int = 0


class PairSides(Protocol):
    """What embedding a manifest's pairs needs to know of a run's options."""

    batch_size: int | None
    strict: bool

    @property
    def query_modality(self) -> Modality: ...

    @property
    def candidate_modality(self) -> Modality: ...


@dataclass(frozen=True)
class _BankPlan:
    """The bank, the (query, candidate) models, the usable rows and the sizes measured."""

    bank: Bank
    models: tuple[Encoder, Encoder]
    usable: np.ndarray
    sizes: tuple[int, ...]


def evaluate(
    manifest: PairManifest | str | Path,
    *,
    encoders: Sequence[Encoder],
    bank: Bank,
    options: EvalOptions | None = None,
    cache: EmbeddingCache | None = None,
    listener: Listener | None = None,
) -> EvalReport:
    """Measure every requested method on the manifest's pairs through `bank`."""
    started = time.perf_counter()
    options = options or EvalOptions()
    listener = listener or Listener()
    pairs = manifest if isinstance(manifest, PairManifest) else read_pairs(manifest)
    bank.check_models(encoders)
    bridge = Modality(bank.modality)
    query_model = encoder_for(encoders, options.query_modality, bridge)
    candidate_model = encoder_for(encoders, options.candidate_modality, bridge)
    methods, skipped_methods = _runnable(options, query_model, candidate_model)

    if options.candidates > len(pairs):  # before embedding anything
        draw_trials(len(pairs), 1, options.candidates, options.seed)
    listener.stage("checking the bank for manifest captions", 0)
    leaks = find_leaks(bank, pairs.items)
    usable = leaks.usable_rows(len(bank), allow_leak=options.allow_leak)
    sizes = bank_sizes(options.bank_sizes, len(usable))

    own_cache = cache is None
    cache = cache or open_cache()
    try:
        embedded = embed_pairs(pairs, query_model, candidate_model, options, cache, listener)
    finally:
        if own_cache:
            cache.close()
    trials = draw_trials(len(embedded.items), options.trials, options.candidates, options.seed)
    plan = _BankPlan(bank, (query_model, candidate_model), usable, sizes)
    results = _measure(methods, embedded, trials, plan, options, listener)
    return EvalReport(
        options=options,
        manifest_path=pairs.path,
        manifest_sha256=pairs.sha256,
        manifest_items=len(pairs),
        items=len(embedded.items),
        models=[model_info("query", query_model), model_info("candidate", candidate_model)],
        bank=bank_info(bank),
        leaks=leaks,
        usable_bank_rows=len(usable),
        bank_sizes=sizes,
        results=results,
        skipped_methods=skipped_methods,
        skipped_items=embedded.skipped,
        embedded=embedded.embedded,
        cached=embedded.cached,
        versions=software_versions(),
        seconds=time.perf_counter() - started,
    )


def _runnable(
    options: EvalOptions, query_model: Encoder, candidate_model: Encoder
) -> tuple[list[Method], dict[str, str]]:
    """The methods to measure, and why any requested one is left out (its precondition)."""
    methods: list[Method] = []
    skipped: dict[str, str] = {}
    for method in map(method_named, options.methods):
        refusal = method.refusal(query_model, candidate_model, options.scoring)
        if refusal is None:
            methods.append(method)
        else:
            skipped[method.name] = refusal
    if not methods:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped.items())
        raise UsageError(f"no method left to measure: {reasons}")
    return methods, skipped


def embed_pairs(
    pairs: PairManifest,
    query_model: Encoder,
    candidate_model: Encoder,
    options: PairSides,
    cache: EmbeddingCache,
    listener: Listener,
) -> EmbeddedPairs:
    """Embed each distinct file once; drop the items whose query or candidate file failed.
    Shared by `evaluate` and `ucl calibrate` (`options`: either's, for the direction, batch
    size and strictness)."""
    sides = (
        (query_model, options.query_modality),
        (candidate_model, options.candidate_modality),
    )
    vectors: list[dict[Path, np.ndarray]] = []
    failed: dict[Path, str] = {}
    embedded = cached = 0
    for encoder, modality in sides:
        paths = list(dict.fromkeys(_file(item, modality) for item in pairs.items))
        listener.stage(
            f"embedding {len(paths)} {modality.value} files with {encoder.key}", len(paths)
        )
        found = embed_files(
            encoder,
            modality,
            paths,
            cache,
            batch_size=options.batch_size,
            progress=listener.on_advance,
            strict=options.strict,
            on_skip=listener.on_skip,
        )
        vectors.append(dict(zip(found.paths, found.vectors, strict=True)))
        failed.update({Path(error.path): error.reason for error in found.skipped})
        embedded += found.computed
        cached += found.cached
    items, skipped, query_rows, candidate_rows = [], [], [], []
    for item in pairs.items:
        query_file = _file(item, options.query_modality)
        candidate_file = _file(item, options.candidate_modality)
        bad = next((f for f in (query_file, candidate_file) if f in failed), None)
        if bad is not None:
            skipped.append(SkippedItem(item.line, item.name, bad, failed[bad]))
            continue
        items.append(item)
        query_rows.append(vectors[0][query_file])
        candidate_rows.append(vectors[1][candidate_file])
    if not items:
        raise UsageError(f"no item of {pairs.path} has two readable files")
    return EmbeddedPairs(
        items, np.stack(query_rows), np.stack(candidate_rows), skipped, embedded, cached
    )


def _measure(
    methods: list[Method],
    embedded: EmbeddedPairs,
    trials: np.ndarray,
    plan: _BankPlan,
    options: EvalOptions,
    listener: Listener,
) -> list[MethodResult]:
    """Each method through the bank at every size (`through_bank`), the others once."""
    bank, models, sizes = plan.bank, plan.models, plan.sizes
    settings, top = options.scoring, max(options.ks)
    through_bank = [method for method in methods if method.through_bank]
    once = [method for method in methods if not method.through_bank]
    steps = len(through_bank) * len(sizes) + len(once)
    listener.stage(f"scoring {len(trials)} trials of {trials.shape[1]} candidates", steps)
    results = []
    whole = Bridge.of(bank, *models, device=settings.device)
    for method in once:
        scorer = method_scorer(method, whole, settings, top)
        forced = method.forced(*models, settings)
        results.append(_result(method, None, scorer, embedded, trials, options, forced))
        listener.advance(1)
    rows_by_size = sub_bank_rows(plan.usable, sizes, options.seed)
    for size in sizes:
        rows = None if size == len(bank) else rows_by_size[size]
        bridge = whole if rows is None else Bridge.of(bank, *models, rows, device=settings.device)
        for method in through_bank:
            scorer = method_scorer(method, bridge, settings, top)
            results.append(_result(method, size, scorer, embedded, trials, options))
            listener.advance(1)
    order = {name: i for i, name in enumerate(options.methods)}
    return sorted(results, key=lambda r: (order[r.method], r.bank_size or 0))


def _result(
    method: Method,
    size: int | None,
    scorer: Scorer,
    embedded: EmbeddedPairs,
    trials: np.ndarray,
    options: EvalOptions,
    forced: bool = False,
) -> MethodResult:
    block = block_limit(method, options.candidates, options.block_items)
    metrics: TrialMetrics = measure_trials(
        scorer, embedded.queries, embedded.candidates, trials, options.ks, block
    )
    level = options.confidence
    recall = {k: t_interval(metrics.recall[k], level, (0.0, 1.0)) for k in options.ks}
    rank = t_interval(metrics.mean_rank, level, (1.0, float(options.candidates)))
    return MethodResult(method.name, size, recall, rank, forced)


def _file(item: PairedItem, modality: Modality) -> Path:
    return item.image if modality is Modality.IMAGE else item.audio


__all__ = ["EmbeddedPairs", "PairSides", "embed_pairs", "evaluate"]
