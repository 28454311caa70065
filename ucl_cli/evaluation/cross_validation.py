"""Choosing a bank's calibration on paired data (`ucl calibrate`), by cross-validation.

    pairs -> embeddings (each file once, through the cache, as `ucl eval`)
          -> F disjoint folds of items (seeded); T trials of K candidates drawn inside each fold
          -> every calibration of the grid (t1, t2, normalisation): lse through the whole bank
          -> for each fold: the calibration best on the OTHER folds, measured on this fold
          -> the held-out numbers of that procedure, beside the paper's estimator on the same
             trials (and their paired difference)
          -> the calibration best on all folds: the one to store

Why folds of items, not of trials: trials drawn from one pool share items, so a held-out trial
would reuse queries and candidates the selection saw. Why the held-out numbers are the only ones
reported: the best of a grid measured on the data that chose it is biased upwards.

What is selected by: by default the log-likelihood of each trial's positive with the scores read
as log density ratios (log softmax over the trial's candidates). It is a proper scoring rule:
its expectation is largest for the true posterior, which also ranks best, and unlike recall@1
it moves smoothly with t, so far fewer trials find the optimum. `select="recall@1"` selects on
recall directly. Either way the stored calibration replaces the paper's estimator only when the
procedure's held-out recall@1 beats the paper's on the same held-out trials.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ucl_cli.bank import Bank
from ucl_cli.bank.calibrations import StoredCalibration, content_fingerprint
from ucl_cli.bank.manifest import ModelRecord, now_iso
from ucl_cli.bridge.listener import Listener
from ucl_cli.bridge.methods import Bridge, ScoringSettings, method_named
from ucl_cli.bridge.pipeline import encoder_for
from ucl_cli.cache import EmbeddingCache, open_cache
from ucl_cli.calibration import NORMALIZATIONS, Calibration
from ucl_cli.encoders.base import Encoder
from ucl_cli.errors import UsageError
from ucl_cli.evaluation.intervals import Interval, t_interval
from ucl_cli.evaluation.leakage import LeakReport, find_leaks
from ucl_cli.evaluation.manifest import PairManifest, read_pairs
from ucl_cli.evaluation.options import DIRECTIONS, Direction
from ucl_cli.evaluation.provenance import BankInfo, bank_info, software_versions
from ucl_cli.evaluation.report import SkippedItem, without_nan
from ucl_cli.evaluation.runner import embed_pairs
from ucl_cli.evaluation.scoring import TrialMetrics, measure_trials, method_scorer
from ucl_cli.evaluation.trials import draw_trials
from ucl_cli.modality import Modality

FORMAT = "ucl-calibrate/1"
DEFAULT_TEMPERATURES = (1.0, 0.5, 0.3, 0.2, 0.1, 0.05)
SELECTIONS = ("likelihood", "recall@1")
# The method the grid is measured with: the exact bridge sum (topk ranks by the same scores).
METHOD = "lse"
_FOLD_STREAM = 2  # beside the trial (0) and sub-bank (1) streams of `trials`
_PSEUDO_STREAM = 3


@dataclass(frozen=True)
class CalibrateOptions:
    """One calibration's settings.

    folds: disjoint groups of items; each is held out once while the others choose.
    trials, candidates: drawn inside each fold (trials per fold).
    temperatures: the values tried for t1 (query side) and t2 (candidate side), each pair
      unless `same_temperature`; normalizations: "none" and/or "candidates". The paper's
      estimator (1, 1, none) is always measured.
    select: "likelihood" (default) or "recall@1", what the other folds choose by.
    """

    folds: int = 5
    trials: int = 50
    candidates: int = 25
    seed: int = 0
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    same_temperature: bool = False
    normalizations: tuple[str, ...] = NORMALIZATIONS
    select: str = "likelihood"
    direction: Direction = "image->audio"
    ks: tuple[int, ...] = (1, 5, 10)
    confidence: float = 0.95
    batch_size: int | None = None
    strict: bool = False
    block_items: int = 4096
    scoring: ScoringSettings = field(default_factory=ScoringSettings)

    def __post_init__(self) -> None:
        if self.folds < 2:
            raise UsageError(f"cross-validation needs at least 2 folds; got {self.folds}")
        if self.trials < 1:
            raise UsageError(f"trials must be at least 1; got {self.trials}")
        if self.candidates < 2:
            raise UsageError(f"candidates must be at least 2; got {self.candidates}")
        if not self.temperatures or not all(math.isfinite(t) and t > 0 for t in self.temperatures):
            raise UsageError(f"temperatures must be positive numbers; got {self.temperatures}")
        unknown = [n for n in self.normalizations if n not in NORMALIZATIONS]
        if unknown or not self.normalizations:
            raise UsageError(
                f"normalizations must be among {', '.join(NORMALIZATIONS)}; got "
                f"{', '.join(self.normalizations) or '(none)'}"
            )
        if self.select not in SELECTIONS:
            raise UsageError(f"select must be one of {', '.join(SELECTIONS)}; got {self.select!r}")
        if self.direction not in DIRECTIONS:
            raise UsageError(
                f"unknown direction {self.direction!r}; choose {' or '.join(DIRECTIONS)}"
            )
        if 1 not in self.ks or min(self.ks) < 1:
            raise UsageError(f"recall cut-offs must include 1; got {list(self.ks)}")

    @property
    def query_modality(self) -> Modality:
        return Modality(self.direction.split("->")[0])

    @property
    def candidate_modality(self) -> Modality:
        return Modality(self.direction.split("->")[1])

    def grid(self) -> list[Calibration]:
        """The calibrations tried: the paper's estimator first, then every (t1, t2) of the
        temperatures (or t1 = t2) for each normalisation, each once."""
        seen = [Calibration()]
        for normalize in self.normalizations:
            for t1 in self.temperatures:
                for t2 in (t1,) if self.same_temperature else self.temperatures:
                    calibration = Calibration(t1, t2, normalize)
                    if calibration not in seen:
                        seen.append(calibration)
        return seen


@dataclass(frozen=True)
class CalibrationFit:
    """Every calibration's per-trial metrics on every fold, and what cross-validation chose.

    metrics[c][f]: `TrialMetrics` of grid[c] on fold f's trials.
    fold_choices[f]: the grid index chosen on the folds other than f.
    chosen: the grid index best on all folds (what would be stored).
    """

    grid: list[Calibration]
    fold_items: list[int]
    metrics: list[list[TrialMetrics]]
    fold_choices: list[int]
    chosen: int
    select: str
    ks: tuple[int, ...]
    confidence: float = 0.95

    def mean(self, c: int, f: int, metric: str) -> float:
        """Mean of `metric` ("recall@k", "log_likelihood") of grid[c] over fold f's trials."""
        return float(self._values(self.metrics[c][f], metric).mean())

    def held_out(self, metric: str) -> dict[str, Interval]:
        """The procedure ("chosen": each fold scored with the calibration the other folds chose)
        and the paper's estimator on the same held-out trials, and their paired difference."""
        chosen = np.concatenate(
            [self._values(self.metrics[c][f], metric) for f, c in enumerate(self.fold_choices)]
        )
        paper = np.concatenate([self._values(m, metric) for m in self.metrics[0]])
        level = self.confidence
        bounds = (0.0, 1.0) if metric.startswith("recall") else (-math.inf, math.inf)
        return {
            "chosen": t_interval(chosen, level, bounds),
            "paper": t_interval(paper, level, bounds),
            "difference": t_interval(chosen - paper, level),
        }

    @property
    def metric_names(self) -> list[str]:
        return [f"recall@{k}" for k in self.ks] + ["log_likelihood"]

    @property
    def beats_paper(self) -> bool:
        """Whether the procedure's held-out recall@1 is above the paper's estimator's."""
        recall = self.held_out("recall@1")
        return recall["chosen"].mean > recall["paper"].mean

    @property
    def stored(self) -> Calibration:
        """What to store: the choice, where cross-validation shows it beats the paper's
        estimator on held-out recall@1; the paper's estimator otherwise."""
        return self.grid[self.chosen] if self.beats_paper else Calibration()

    @staticmethod
    def _values(metrics: TrialMetrics, metric: str) -> np.ndarray:
        if metric in ("likelihood", "log_likelihood"):
            return metrics.log_likelihood
        return metrics.recall[int(metric.removeprefix("recall@"))]


def fit_calibration(
    queries: np.ndarray,
    candidates: np.ndarray,
    bridge: Bridge,
    options: CalibrateOptions,
    listener: Listener | None = None,
) -> CalibrationFit:
    """Cross-validate the grid on item i = (queries[i], candidates[i]) through `bridge`."""
    listener = listener or Listener()
    folds = fold_trials(len(queries), options)
    sizes = _fold_sizes(len(queries), options.folds)
    grid = options.grid()
    method, top = method_named(METHOD), max(options.ks)
    listener.stage(
        f"scoring {len(grid)} calibrations on {options.folds} folds of {options.trials} trials",
        len(grid) * len(folds),
    )
    metrics: list[list[TrialMetrics]] = []
    for calibration in grid:
        settings = replace(options.scoring, calibration=calibration)
        scorer = method_scorer(method, bridge, settings, top)
        row = []
        for trials in folds:
            row.append(
                measure_trials(scorer, queries, candidates, trials, options.ks, options.block_items)
            )
            listener.advance(1)
        metrics.append(row)
    select = "recall@1" if options.select == "recall@1" else "likelihood"
    table = np.array(
        [
            [CalibrationFit._values(metrics[c][f], select).mean() for f in range(len(folds))]
            for c in range(len(grid))
        ]
    )
    fold_choices, chosen = cross_validated_choices(table)
    return CalibrationFit(
        grid=grid,
        fold_items=sizes,
        metrics=metrics,
        fold_choices=fold_choices,
        chosen=chosen,
        select=select,
        ks=options.ks,
        confidence=options.confidence,
    )


def fold_trials(items: int, options: CalibrateOptions) -> list[np.ndarray]:
    """Per fold, int64 [trials, candidates] item indices drawn inside that fold only."""
    order = np.random.default_rng([options.seed, _FOLD_STREAM]).permutation(items)
    folds = np.array_split(order, options.folds)
    smallest = min(_fold_sizes(items, options.folds))
    if smallest < options.candidates:
        raise UsageError(
            f"{items:,} usable pairs make folds of {smallest:,} items, but a trial needs "
            f"{options.candidates} distinct items of one fold: lower --folds or --candidates, "
            f"or add pairs (at least {options.folds * options.candidates:,})"
        )
    return [
        fold[draw_trials(len(fold), options.trials, options.candidates, options.seed, (f,))]
        for f, fold in enumerate(folds)
    ]


def cross_validated_choices(table: np.ndarray) -> tuple[list[int], int]:
    """From table [calibrations, folds] of the selection metric (higher is better): for each
    fold, the calibration best on the OTHER folds (its own column is never read), and the
    calibration best on all folds."""
    folds = table.shape[1]
    for_fold = [_best(np.delete(table, f, axis=1).mean(axis=1)) for f in range(folds)]
    return for_fold, _best(table.mean(axis=1))


def _fold_sizes(items: int, folds: int) -> list[int]:
    return [len(part) for part in np.array_split(np.arange(items), folds)]


def _best(values: np.ndarray) -> int:
    """The first index of the largest value (grid order breaks ties: the paper's estimator
    first); NaN never wins."""
    return int(np.nanargmax(np.where(np.isnan(values), -np.inf, values)))


@dataclass
class CalibrationReport:
    """What `calibrate` returns, and the JSON `ucl calibrate --out` writes (ucl-calibrate/1)."""

    options: CalibrateOptions
    manifest_path: Path | None  # None: label-free, on pseudo-pairs of bank rows
    manifest_sha256: str | None
    manifest_items: int
    items: int
    query_model: ModelRecord
    candidate_model: ModelRecord
    bank: BankInfo
    bank_content: str
    leaks: LeakReport
    fit: CalibrationFit
    skipped_items: list[SkippedItem] = field(default_factory=list)
    embedded: int = 0
    cached: int = 0
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def chosen(self) -> Calibration:
        return self.fit.grid[self.fit.chosen]

    @property
    def stored(self) -> Calibration:
        return self.fit.stored

    def source(self) -> dict[str, Any]:
        """What the pairs were: a manifest (path, checksum, usable items) or pseudo-pairs."""
        if self.manifest_path is None:
            return {"pseudo_pairs": self.items, "seed": self.options.seed, "items": self.items}
        return {
            "path": str(self.manifest_path),
            "sha256": self.manifest_sha256,
            "items": self.items,
        }

    def held_out_summary(self) -> dict[str, dict[str, float]]:
        """metric -> {"chosen": mean, "paper": mean} over the held-out trials."""
        return {
            metric: {name: interval.mean for name, interval in self.fit.held_out(metric).items()}
            for metric in self.fit.metric_names
        }

    def entry(self) -> StoredCalibration:
        """The bank entry this calibration stores (`store_calibration`)."""
        return StoredCalibration(
            direction=self.options.direction,
            calibration=self.stored,
            query_model=self.query_model,
            candidate_model=self.candidate_model,
            bank_rows=self.bank.rows,
            bank_content=self.bank_content,
            pairs=self.source(),
            held_out=without_nan(self.held_out_summary()),
            fit={
                "chosen": self.chosen.to_json(),
                "beats_paper": self.fit.beats_paper,
                "select": self.fit.select,
                "folds": self.options.folds,
                "trials_per_fold": self.options.trials,
                "candidates": self.options.candidates,
                "seed": self.options.seed,
                "grid": len(self.fit.grid),
            },
            created=now_iso(),
        )

    def to_json(self) -> dict[str, Any]:
        fit = self.fit
        record = {
            "format": FORMAT,
            "options": {
                "folds": self.options.folds,
                "trials_per_fold": self.options.trials,
                "candidates": self.options.candidates,
                "seed": self.options.seed,
                "temperatures": list(self.options.temperatures),
                "same_temperature": self.options.same_temperature,
                "normalizations": list(self.options.normalizations),
                "select": fit.select,
                "direction": self.options.direction,
                "ks": list(self.options.ks),
                "method": METHOD,
                "confidence": self.options.confidence,
            },
            "pairs": self.source(),
            "manifest": {
                "path": None if self.manifest_path is None else str(self.manifest_path),
                "sha256": self.manifest_sha256,
                "items": self.manifest_items,
                "usable_items": self.items,
                "skipped": [
                    {"line": s.line, "item": s.name, "path": str(s.path), "reason": s.reason}
                    for s in self.skipped_items
                ],
            },
            "models": {
                "query": self.query_model.to_json(),
                "candidate": self.candidate_model.to_json(),
            },
            "bank": {
                **dataclasses.asdict(self.bank),
                "path": str(self.bank.path),
                "content": self.bank_content,
            },
            "leakage": {
                "checked": self.leaks.checked,
                "reason": self.leaks.reason,
                "captions": self.leaks.captions,
            },
            "held_out": {
                metric: {name: i.to_json() for name, i in fit.held_out(metric).items()}
                for metric in fit.metric_names
            },
            "folds": [
                {
                    "items": fit.fold_items[f],
                    "chosen_on_other_folds": fit.grid[c].to_json(),
                    "held_out": {
                        metric: {
                            "chosen": fit.mean(c, f, metric),
                            "paper": fit.mean(0, f, metric),
                        }
                        for metric in fit.metric_names
                    },
                }
                for f, c in enumerate(fit.fold_choices)
            ],
            "grid": [
                {
                    **calibration.to_json(),
                    "per_fold": {
                        metric: [fit.mean(c, f, metric) for f in range(len(fit.fold_items))]
                        for metric in fit.metric_names
                    },
                }
                for c, calibration in enumerate(fit.grid)
            ],
            "chosen": self.chosen.to_json(),
            "beats_paper": fit.beats_paper,
            "stored": self.stored.to_json(),
            "embedding": {"embedded": self.embedded, "cached": self.cached},
            "versions": dict(self.versions),
            "seconds": self.seconds,
        }
        return without_nan(record)


def calibrate(
    manifest: PairManifest | str | Path,
    *,
    encoders: Sequence[Encoder],
    bank: Bank,
    options: CalibrateOptions | None = None,
    cache: EmbeddingCache | None = None,
    listener: Listener | None = None,
) -> CalibrationReport:
    """Choose the bank's calibration for `options.direction` on the manifest's pairs.

    Refuses pairs whose captions are bank texts (they would calibrate the bank to find its own
    answers). Storing the result is a separate step: `store_calibration(bank.path,
    report.entry())`.
    """
    started = time.perf_counter()
    options = options or CalibrateOptions()
    listener = listener or Listener()
    pairs = manifest if isinstance(manifest, PairManifest) else read_pairs(manifest)
    query_model, candidate_model = _models(encoders, bank, options)
    if len(pairs) < options.folds * options.candidates:  # before embedding anything
        fold_trials(len(pairs), options)
    listener.stage("checking the bank for manifest captions", 0)
    leaks = find_leaks(bank, pairs.items)
    if leaks.rows:
        shown = "; ".join(
            f"row {row.row} {row.text!r} (line {', '.join(map(str, row.lines))})"
            for row in leaks.rows[:3]
        )
        more = f" and {len(leaks.rows) - 3:,} more" if len(leaks.rows) > 3 else ""
        raise UsageError(
            f"{len(leaks.rows):,} bank texts are captions of {pairs.path}: {shown}{more}. "
            "Calibrating on them would tune the bank to find its own answers; calibrate on "
            "pairs whose captions are not in the bank, or index the bank without them"
        )
    own_cache = cache is None
    cache = cache or open_cache()
    try:
        embedded = embed_pairs(pairs, query_model, candidate_model, options, cache, listener)
    finally:
        if own_cache:
            cache.close()
    bridge = Bridge.of(bank, query_model, candidate_model)
    fit = fit_calibration(embedded.queries, embedded.candidates, bridge, options, listener)
    return CalibrationReport(
        options=options,
        manifest_path=pairs.path,
        manifest_sha256=pairs.sha256,
        manifest_items=len(pairs),
        items=len(embedded.items),
        query_model=ModelRecord.from_encoder(query_model),
        candidate_model=ModelRecord.from_encoder(candidate_model),
        bank=bank_info(bank),
        bank_content=content_fingerprint(bank.manifest),
        leaks=leaks,
        fit=fit,
        skipped_items=embedded.skipped,
        embedded=embedded.embedded,
        cached=embedded.cached,
        versions=software_versions(),
        seconds=time.perf_counter() - started,
    )


def calibrate_label_free(
    *,
    encoders: Sequence[Encoder],
    bank: Bank,
    pseudo_pairs: int,
    options: CalibrateOptions | None = None,
    listener: Listener | None = None,
) -> CalibrationReport:
    """Choose the calibration without labels: `pseudo_pairs` bank rows, drawn at random, stand
    in for (query, candidate) pairs (row m through the query model's bank tower as the query,
    through the candidate model's as its candidate), ranked through the OTHER rows only.

    On the synthetic task this rule picks almost exactly what labels pick. With pretrained
    models a text stands in for an image or a clip, and a text tower's texts sit closer to each
    other than to images or audio (the modality gap), so the temperature it picks may not be
    what real queries need: prefer paired data when there is some, and compare with `ucl eval`.
    """
    started = time.perf_counter()
    options = options or CalibrateOptions()
    listener = listener or Listener()
    if Modality(bank.modality) is not Modality.TEXT:
        raise UsageError(
            f"pseudo-pairs need a bank of texts; bank {bank.name} holds {bank.modality}"
        )
    query_model, candidate_model = _models(encoders, bank, options)
    if pseudo_pairs >= len(bank):
        raise UsageError(
            f"--pseudo-pairs {pseudo_pairs:,} leaves no bridge: bank {bank.name} has "
            f"{len(bank):,} rows (take at most a small share of them)"
        )
    fold_trials(pseudo_pairs, options)  # enough pairs for the folds, before any work
    rows, rest = pseudo_pair_rows(len(bank), pseudo_pairs, options.seed)
    listener.stage(f"taking {pseudo_pairs:,} bank rows as pseudo-pairs", 0)
    queries = np.ascontiguousarray(bank.vectors(query_model.key)[rows])
    candidates = np.ascontiguousarray(bank.vectors(candidate_model.key)[rows])
    bridge = Bridge.of(bank, query_model, candidate_model, rest)
    fit = fit_calibration(queries, candidates, bridge, options, listener)
    return CalibrationReport(
        options=options,
        manifest_path=None,
        manifest_sha256=None,
        manifest_items=0,
        items=pseudo_pairs,
        query_model=ModelRecord.from_encoder(query_model),
        candidate_model=ModelRecord.from_encoder(candidate_model),
        bank=bank_info(bank),
        bank_content=content_fingerprint(bank.manifest),
        leaks=LeakReport(False, 0, reason="pseudo-pairs are ranked through the other rows only"),
        fit=fit,
        versions=software_versions(),
        seconds=time.perf_counter() - started,
    )


def _models(
    encoders: Sequence[Encoder], bank: Bank, options: CalibrateOptions
) -> tuple[Encoder, Encoder]:
    """The (query, candidate) models of the direction, checked against the bank's vectors."""
    bank.check_models(encoders)
    bridge = Modality(bank.modality)
    return (
        encoder_for(encoders, options.query_modality, bridge),
        encoder_for(encoders, options.candidate_modality, bridge),
    )


def pseudo_pair_rows(bank_rows: int, pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(the sorted rows taken as pseudo-pairs, the sorted rows left as the bridge): disjoint."""
    order = np.random.default_rng([seed, _PSEUDO_STREAM]).permutation(bank_rows)
    return np.sort(order[:pairs]), np.sort(order[pairs:])


__all__ = [
    "DEFAULT_TEMPERATURES",
    "FORMAT",
    "SELECTIONS",
    "CalibrateOptions",
    "CalibrationFit",
    "CalibrationReport",
    "calibrate",
    "calibrate_label_free",
    "cross_validated_choices",
    "fit_calibration",
    "fold_trials",
    "pseudo_pair_rows",
]
