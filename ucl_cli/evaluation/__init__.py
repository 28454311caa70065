"""Measuring retrieval on paired data (`ucl eval`) with the paper's protocol, and choosing a
calibration on it (`ucl calibrate`).

- `manifest`: the CSV of paired files (image, audio, optional captions), checked line by line.
- `options`: `EvalOptions` (trials, candidates, seed, methods, bank sizes, direction, ...),
  with the `ScoringSettings` `ucl query` shares; the methods are `ucl_cli.bridge.methods`'.
- `trials`: the seeded draws (trials of distinct items; nested random sub-banks).
- `leakage`: bank texts equal to a manifest caption, reported and excluded by default.
- `scoring`: one score matrix per method and bank, read by every trial; recall and mean rank.
- `intervals`: Student-t intervals over per-trial values.
- `runner`: `evaluate`, the one call; `report`: `EvalReport` and its JSON; `provenance`: the
  models, bank checksum and versions it records; `table` and `plot` draw it.
- `cross_validation`: `calibrate` and `calibrate_label_free`, cross-validating temperatures and
  normalisation over disjoint folds of pairs (stored by `ucl_cli.bank.calibrations`).

Nothing here prints: progress goes through a `Listener` (the one `search` takes), and the CLI
draws it.
"""

from ucl_cli.bridge.listener import Listener
from ucl_cli.bridge.methods import ScoringSettings
from ucl_cli.evaluation.cross_validation import (
    CalibrateOptions,
    CalibrationReport,
    calibrate,
    calibrate_label_free,
)
from ucl_cli.evaluation.intervals import Interval, t_interval
from ucl_cli.evaluation.leakage import LeakedRow, LeakReport, caption_key, find_leaks
from ucl_cli.evaluation.manifest import (
    ManifestError,
    PairedItem,
    PairManifest,
    pairs_from,
    read_pairs,
)
from ucl_cli.evaluation.options import (
    DIRECTIONS,
    METHODS,
    EvalOptions,
    parse_direction,
)
from ucl_cli.evaluation.plot import plot_report
from ucl_cli.evaluation.report import FORMAT, EvalReport, MethodResult
from ucl_cli.evaluation.runner import evaluate
from ucl_cli.evaluation.scoring import TrialMetrics, measure_trials
from ucl_cli.evaluation.table import results_table
from ucl_cli.evaluation.trials import bank_sizes, draw_trials, sub_bank_rows

EvalListener = Listener  # the public API's older name

__all__ = [
    "DIRECTIONS",
    "FORMAT",
    "METHODS",
    "CalibrateOptions",
    "CalibrationReport",
    "EvalListener",
    "EvalOptions",
    "EvalReport",
    "Interval",
    "LeakReport",
    "LeakedRow",
    "Listener",
    "ManifestError",
    "MethodResult",
    "PairManifest",
    "PairedItem",
    "ScoringSettings",
    "TrialMetrics",
    "bank_sizes",
    "calibrate",
    "calibrate_label_free",
    "caption_key",
    "draw_trials",
    "evaluate",
    "find_leaks",
    "measure_trials",
    "pairs_from",
    "parse_direction",
    "plot_report",
    "read_pairs",
    "results_table",
    "sub_bank_rows",
    "t_interval",
]
