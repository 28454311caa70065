"""Tempered and self-normalised bridge scores against the paper's estimator, on the synthetic task.

For each seed: train the independent A-B and B-C models of `ucl synth` (one critic), then rank the
held-out groups through the bank with every calibration of a grid (temperature t on both
critics, normalisation none or candidates) at each bank size. Three ways of choosing the
calibration are judged, each on seeds whose labels it did not use:

- chosen on the first seed's labels, judged on the other seeds;
- pseudo-pairs (label-free, every seed): fresh bridge items through both models' bridge towers
  stand in for (query, candidate) pairs; the calibration with the best pseudo-pair recall is used;
- target ESS (label-free, every seed): the smallest temperature whose median effective sample
  size over (query, candidate) pairs reaches sqrt(M).

    python scripts/bench_calibration.py --preset paper --seeds 0-9 --out calibration.json
    python scripts/bench_calibration.py --preset quick --seeds 0-2      # a minute or two

`--out` keeps every seed's numbers as it finishes, and a second run with the same file skips the
seeds already there (so the 10-seed table can be built over several sittings); `--report` prints
the table from the file alone.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ucl_cli.calibration import NORMALIZATIONS
from ucl_cli.experiments.calibration_rules import (
    GRID_ORDER,
    GridScores,
    best_on_labels,
    best_on_pseudo_pairs,
    smallest_t_reaching_ess,
)
from ucl_cli.experiments.families import INDEPENDENT
from ucl_cli.experiments.options import preset
from ucl_cli.experiments.tasks import calibration_grid, seed_data
from ucl_cli.experiments.training import train_families
from ucl_cli.files import atomic_write_json
from ucl_cli.parsing import parse_seeds, parse_sizes


def run_seed(options, critic: str, seed: int) -> dict:
    """Every calibration's recall and median ESS on the labelled groups, and its recall on the
    label-free pseudo-pairs, at every bank size of `options.all_bank_sizes`."""
    dtype = getattr(torch, options.eval_dtype)
    start = time.perf_counter()
    data = seed_data(options, seed)
    trained = train_families((INDEPENDENT,), critic, data.train, options.training, seed)
    trained_s = time.perf_counter() - start
    grid = calibration_grid(trained, INDEPENDENT, data, replace(options, ess=True), dtype, seed)
    out = {"train_s": trained_s, "calibrations": {}}
    for name, scores in grid.items():
        out["calibrations"][name] = {
            "recall": list(scores.recall),
            "ess": list(scores.ess),
            "pseudo_recall": list(scores.pseudo_recall),
        }
    out["total_s"] = time.perf_counter() - start
    return out


def report(record: dict) -> None:
    sizes = record["sizes"]
    seeds = sorted(record["seeds"], key=int)
    chooser, judged = seeds[0], seeds[1:] or seeds[:1]
    grids = {
        seed: {
            calibration: GridScores.from_json(numbers)
            for calibration, numbers in record["seeds"][seed]["calibrations"].items()
        }
        for seed in seeds
    }

    def mean_over(pick, over: list[str], i: int) -> float:
        return statistics.fmean(grids[seed][pick(seed, i)].recall[i] for seed in over)

    def by_pseudo(seed: str, i: int) -> str:
        return best_on_pseudo_pairs(grids[seed], i)

    def by_ess(normalize: str):
        def pick(seed: str, i: int) -> str:
            return smallest_t_reaching_ess(grids[seed], sizes[i], i, normalize)

        return pick

    chosen = [best_on_labels(grids[chooser], i) for i in range(len(sizes))]
    print(
        f"{record['critic']} critic, independent encoders, preset {record['preset']}, "
        f"seeds {','.join(seeds)}; label-chosen rows judged on seeds {','.join(judged)}, "
        f"label-free rows on every seed; torch {record['torch']}"
    )
    print("| calibration | " + " | ".join(f"M={size:,}" for size in sizes) + " |")
    print("|---|" + "---|" * len(sizes))

    def row(label: str, cells: list[float]) -> None:
        print(f"| {label} | " + " | ".join(f"{cell:.3f}" for cell in cells) + " |")

    for calibration in GRID_ORDER:
        label = "paper's estimator (t=1, none)" if calibration == "t=1,none" else calibration
        row(label, [mean_over(lambda s, i, c=calibration: c, judged, i) for i in range(len(sizes))])
    row(
        "chosen on seed " + chooser + " (" + "; ".join(chosen) + ")",
        [mean_over(lambda s, i: chosen[i], judged, i) for i in range(len(sizes))],
    )
    row(
        "label-free: best pseudo-pair recall",
        [mean_over(by_pseudo, seeds, i) for i in range(len(sizes))],
    )
    for normalize in NORMALIZATIONS:
        row(
            f"label-free: ESS >= sqrt(M), {normalize}",
            [mean_over(by_ess(normalize), seeds, i) for i in range(len(sizes))],
        )
    print()
    print("what each rule picked, per seed (first bank size / last):")
    for seed in seeds:
        picks = [(by_pseudo(seed, i), by_ess("candidates")(seed, i)) for i in (0, len(sizes) - 1)]
        best = [best_on_labels(grids[seed], i) for i in (0, len(sizes) - 1)]
        print(
            f"  seed {seed}: label-best {best[0]} / {best[1]}; pseudo-pairs {picks[0][0]} / "
            f"{picks[1][0]}; ESS rule {picks[0][1]} / {picks[1][1]}"
        )
    print()
    print("median ESS at each calibration (mean over seeds):")
    for calibration in GRID_ORDER:
        cells = [
            statistics.fmean(grids[s][calibration].ess[i] for s in seeds) for i in range(len(sizes))
        ]
        print(f"  {calibration}: " + ", ".join(f"{cell:.1f}" for cell in cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--seeds", default="0-9", help="the first one chooses, the rest judge")
    parser.add_argument("--critic", default="cosine", choices=("cosine", "dot", "neg_sq_l2"))
    parser.add_argument("--bank-sizes", default=None, help="e.g. 5k,100k (default: preset's)")
    parser.add_argument("--out", type=Path, help="keep per-seed results here (resumable)")
    parser.add_argument("--report", action="store_true", help="only print the table from --out")
    args = parser.parse_args()
    options = preset(args.preset)
    if args.bank_sizes:
        options = replace(options, bank_sizes=parse_sizes(args.bank_sizes), sweep_sizes=())
    sizes = options.all_bank_sizes
    record = {
        "preset": args.preset,
        "critic": args.critic,
        "sizes": list(sizes),
        "torch": torch.__version__,
        "seeds": {},
    }
    if args.out and args.out.exists():
        saved = json.loads(args.out.read_text())
        same = all(saved[key] == record[key] for key in ("preset", "critic", "sizes"))
        if not same:
            sys.exit(f"{args.out} holds another run (preset, critic or sizes differ)")
        record = saved
    if not args.report:
        for seed in parse_seeds(args.seeds):
            if str(seed) in record["seeds"]:
                continue
            record["seeds"][str(seed)] = run_seed(options, args.critic, seed)
            done = record["seeds"][str(seed)]
            print(
                f"seed {seed}: trained in {done['train_s']:.0f} s, all in {done['total_s']:.0f} s",
                file=sys.stderr,
            )
            if args.out:
                atomic_write_json(args.out, record)
    wanted = {str(seed) for seed in parse_seeds(args.seeds)}
    record["seeds"] = {s: run for s, run in record["seeds"].items() if s in wanted}
    report(record)


if __name__ == "__main__":
    main()
