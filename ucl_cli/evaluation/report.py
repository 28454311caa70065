"""What an evaluation returns, and the JSON that `ucl eval --out` writes (format ucl-eval/1).

The JSON holds every number (per-trial values included), the options, the models with their
dimensions, logit scales and weights, the software versions, and the bank's identity (name,
rows, SHA-256 of its manifest.json, which lists the SHA-256 of every bank file), so that a
result can be traced to exactly what produced it. NaN never appears: missing values are null.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ucl_cli.bridge.methods import METHOD_TABLE
from ucl_cli.evaluation.intervals import Interval
from ucl_cli.evaluation.leakage import LeakReport
from ucl_cli.evaluation.options import EvalOptions

FORMAT = "ucl-eval/1"


@dataclass(frozen=True)
class MethodResult:
    """One method at one bank size (None for a method that uses no bank: `direct`)."""

    method: str
    bank_size: int | None
    recall: dict[int, Interval]
    mean_rank: Interval
    forced: bool = False  # direct between two separately trained models (--force-direct)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "bank_size": self.bank_size,
            "forced": self.forced,
            "recall": {str(k): interval.to_json() for k, interval in self.recall.items()},
            "mean_rank": self.mean_rank.to_json(),
        }


@dataclass(frozen=True)
class ModelInfo:
    role: str  # "query" or "candidate"
    key: str
    dim: int
    logit_scale: float
    modalities: tuple[str, ...]
    preprocessing: dict[str, Any]
    weights: dict[str, Any] | None  # hub repo, file, revision, checksum (None: not a hub model)


@dataclass(frozen=True)
class BankInfo:
    name: str
    path: Path
    rows: int
    modality: str
    generation: int
    manifest_sha256: str
    ucl_version: str  # the version that wrote the bank


@dataclass(frozen=True)
class SkippedItem:
    """A manifest row left out because one of its files could not be read."""

    line: int
    name: str
    path: Path
    reason: str


@dataclass
class EvalReport:
    options: EvalOptions
    manifest_path: Path
    manifest_sha256: str
    manifest_items: int
    items: int  # usable items (manifest rows minus skipped ones)
    models: list[ModelInfo]
    bank: BankInfo
    leaks: LeakReport
    usable_bank_rows: int
    bank_sizes: tuple[int, ...]
    results: list[MethodResult]
    skipped_methods: dict[str, str] = field(default_factory=dict)
    skipped_items: list[SkippedItem] = field(default_factory=list)
    embedded: int = 0  # files embedded by this run (cache misses)
    cached: int = 0  # files whose embeddings came from the cache
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0

    def result(self, method: str, bank_size: int | None = None) -> MethodResult:
        """A method's result at `bank_size` (default: the whole usable bank)."""
        once = method in METHOD_TABLE and not METHOD_TABLE[method].through_bank
        wanted = None if once else (bank_size or self.usable_bank_rows)
        for result in self.results:
            if result.method == method and result.bank_size == wanted:
                return result
        raise KeyError(f"no result for {method} at bank size {wanted}")

    def chance(self) -> dict[str, Any]:
        """What a ranking that ignores the query scores on average."""
        size = self.options.candidates
        return {
            "recall": {str(k): min(k, size) / size for k in self.options.ks},
            "mean_rank": (size + 1) / 2,
        }

    def to_json(self) -> dict[str, Any]:
        options = dataclasses.asdict(self.options)
        options["scoring"]["calibration"] = self._calibration()
        record = {
            "format": FORMAT,
            "options": {key: list(v) if isinstance(v, tuple) else v for key, v in options.items()},
            "protocol": {
                "trials": self.options.trials,
                "candidates": self.options.candidates,
                "queries": self.options.trials * self.options.candidates,
                "direction": self.options.direction,
                "interval": f"Student t over per-trial values, {self.options.confidence:.0%}, "
                "clipped to the metric's range",
                "ties": "fair: a tie counts as the expected value over a random order",
            },
            "manifest": {
                "path": str(self.manifest_path),
                "sha256": self.manifest_sha256,
                "items": self.manifest_items,
                "usable_items": self.items,
                "skipped": [
                    {"line": s.line, "item": s.name, "path": str(s.path), "reason": s.reason}
                    for s in self.skipped_items
                ],
            },
            "models": [dataclasses.asdict(model) for model in self.models],
            "bank": {**dataclasses.asdict(self.bank), "path": str(self.bank.path)},
            "leakage": {
                "checked": self.leaks.checked,
                "reason": self.leaks.reason,
                "captions": self.leaks.captions,
                "excluded": bool(self.leaks.rows) and not self.options.allow_leak,
                "rows": [
                    {"row": r.row, "text": r.text, "manifest_lines": list(r.lines)}
                    for r in self.leaks.rows
                ],
            },
            "usable_bank_rows": self.usable_bank_rows,
            "bank_sizes": list(self.bank_sizes),
            "chance": self.chance(),
            "results": [result.to_json() for result in self.results],
            "skipped_methods": dict(self.skipped_methods),
            "embedding": {"embedded": self.embedded, "cached": self.cached},
            "versions": dict(self.versions),
            "seconds": self.seconds,
        }
        return without_nan(record)

    def _calibration(self) -> dict[str, Any]:
        """options.scoring.calibration: temperature [t1, t2], normalize, whether it is the
        paper's estimator, in words, and the measured methods it applied to."""
        calibration = self.options.scoring.calibration
        return {
            **calibration.to_json(),
            "paper": calibration.is_paper,
            "description": calibration.describe(),
            "applies_to": list(self.options.calibrated_methods),
        }


def without_nan(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(item) for item in value]
    return value
