"""Tempered and self-normalised bridge scores against the paper's estimator, on the synthetic task.

For each seed: train the independent A-B and B-C models of `ucl synth` (one critic), then rank the
held-out groups through the bank with every calibration of a grid (temperature t on both
critics, normalisation none or candidates) at each bank size. The calibration is chosen on the
first seed alone and judged on the others, so the reported recall is held out:

    python scripts/bench_calibration.py --preset paper --seeds 0-9 --critic cosine
    python scripts/bench_calibration.py --preset quick --seeds 0-2      # a minute or two

Prints one row per calibration (recall@1 averaged over the judged seeds at each bank size), the
paper's estimator first, then the one chosen on the first seed at each bank size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

import torch

from ucl_cli.estimators.calibrated import Calibration
from ucl_cli.experiments.evaluation import bank_sweep
from ucl_cli.experiments.families import INDEPENDENT
from ucl_cli.experiments.options import preset
from ucl_cli.experiments.tasks import bridge_terms, seed_data
from ucl_cli.experiments.training import train_families

TEMPERATURES = (1.0, 0.5, 0.25, 0.1, 0.05)
NORMALIZATIONS = ("none", "candidates")


def seeds(text: str) -> list[int]:
    if "-" in text:
        first, last = text.split("-")
        return list(range(int(first), int(last) + 1))
    return [int(part) for part in text.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--seeds", default="0-9", help="the first one chooses, the rest judge")
    parser.add_argument("--critic", default="cosine", choices=("cosine", "dot", "neg_sq_l2"))
    parser.add_argument("--bank-sizes", default=None, help="e.g. 5000,100000 (default: preset)")
    args = parser.parse_args()
    options = preset(args.preset)
    if args.bank_sizes:
        sizes = tuple(int(size) for size in args.bank_sizes.split(","))
        options = replace(options, bank_sizes=sizes, sweep_sizes=())
    sizes = options.all_bank_sizes
    grid = [Calibration(t, t, norm) for norm in NORMALIZATIONS for t in TEMPERATURES]
    dtype = getattr(torch, options.eval_dtype)
    recall: dict[Calibration, list[tuple[float, ...]]] = {c: [] for c in grid}
    for seed in seeds(args.seeds):
        start = time.perf_counter()
        data = seed_data(options, seed)
        trained = train_families((INDEPENDENT,), args.critic, data.train, options.training, seed)
        terms, groups = bridge_terms(trained, INDEPENDENT, data, options, dtype)
        for calibration in grid:
            sweep = bank_sweep(terms, groups, sizes, ess=False, calibration=calibration)
            recall[calibration].append(sweep.recall)
        print(f"seed {seed} done in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    chooser, judged = 0, slice(1, None)
    print(
        f"{args.critic} critic, independent encoders, preset {args.preset}, seeds {args.seeds} "
        f"(chosen on the first, judged on the rest), torch {torch.__version__}"
    )
    print("| calibration | " + " | ".join(f"M={size:,}" for size in sizes) + " |")
    print("|---|" + "---|" * len(sizes))

    def row(name: str, cells: list[float]) -> None:
        print(f"| {name} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")

    def held_out(calibration: Calibration, index: int) -> float:
        values = [run[index] for run in recall[calibration][judged]] or [
            recall[calibration][chooser][index]
        ]
        return statistics.fmean(values)

    for calibration in grid:
        t, norm = calibration.query_temperature, calibration.normalize
        name = "paper's estimator" if calibration.is_paper else f"t={t:g}, normalize={norm}"
        row(name, [held_out(calibration, i) for i in range(len(sizes))])
    chosen = [max(grid, key=lambda c, i=i: recall[c][chooser][i]) for i in range(len(sizes))]
    row(
        "chosen on the first seed: "
        + "; ".join(f"t={c.query_temperature:g} {c.normalize}" for c in chosen),
        [held_out(c, i) for i, c in enumerate(chosen)],
    )


if __name__ == "__main__":
    main()
