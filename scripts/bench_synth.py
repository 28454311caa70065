"""Benchmark `ucl synth --preset paper` against the reference implementation (13.5 min per seed
on this 2-core machine, most of it in its Monte Carlo evaluation over the 100k bank).

    .venv/bin/python scripts/bench_synth.py run --seeds 0-1      # time the paper preset
    .venv/bin/python scripts/bench_synth.py report .bench/paper.json   # a finished run's timing
    .venv/bin/python scripts/bench_synth.py parts                # side by side, one thread

`run` and `report` give wall time per seed (and CPU time per seed, which does not depend on how
busy the machine is) and the speed-up over the reference's 810 s per seed. `parts` times the two
costly stages against reference-style implementations written here, on the same data in one run,
one thread each:
  - training steps: one `nn.Module` per model, `torch.optim.Adam`, one loss call per pair (the
    reference's structure) against the batched encoder stack of `ucl synth`;
  - Monte Carlo evaluation of one model at M = 100k over the 31 groups of 32: a streamed
    broadcast logsumexp over [32, chunk, 32] blocks (the reference's estimator) against the
    exact matrix-product route of `ucl_cli.estimators` that `ucl synth` uses (float64, with the
    ESS pass), and the same route in float32.
Results are printed and written as JSON (default .bench/bench_synth.json).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

REFERENCE_SECONDS_PER_SEED = 13.5 * 60


def timing_summary(record: dict) -> dict:
    timing = record["timing"]
    seeds = len(record.get("completed_seeds", record["options"]["seeds"]))
    per_seed = timing["seconds_per_seed"]
    cpu_per_seed = timing.get("cpu_seconds_per_seed")
    summary = {
        "seeds": seeds,
        "complete": record.get("complete", True),
        "workers": timing["workers"],
        "wall_seconds": timing["wall_seconds"],
        "wall_seconds_per_seed": per_seed,
        "speedup_vs_reference_wall": REFERENCE_SECONDS_PER_SEED / per_seed,
    }
    if cpu_per_seed is not None:
        idle_estimate = cpu_per_seed / max(1, min(2, timing["workers"]))
        summary.update(
            cpu_seconds_per_seed=cpu_per_seed,
            idle_two_core_seconds_per_seed=idle_estimate,
            speedup_vs_reference_idle_estimate=REFERENCE_SECONDS_PER_SEED / idle_estimate,
        )
    return summary


def command_run(args) -> dict:
    from ucl_cli.experiments.options import preset, with_overrides
    from ucl_cli.experiments.runner import run_synthetic
    from ucl_cli.parsing import parse_seeds

    options = with_overrides(preset("paper"), seeds=parse_seeds(args.seeds))
    load_before = os.getloadavg()
    started = time.perf_counter()
    results = run_synthetic(options, workers=args.workers)
    wall = time.perf_counter() - started
    record = results.to_json()
    summary = timing_summary(record)
    summary.update(
        command=f"scripts/bench_synth.py run --seeds {args.seeds}",
        measured_wall_seconds=wall,
        load_average_before=load_before,
        load_average_after=os.getloadavg(),
    )
    return summary


def command_report(args) -> dict:
    return timing_summary(json.loads(Path(args.results).read_text()))


def command_parts(args) -> dict:
    from ucl_cli.experiments.families import FAMILIES
    from ucl_cli.experiments.options import preset
    from ucl_cli.experiments.tasks import seed_data
    from ucl_cli.experiments.training import TrainingOptions, train_families

    torch.set_num_threads(1)
    options = preset("paper")
    data = seed_data(options, seed=0)
    out: dict = {"threads": 1, "load_average_before": os.getloadavg()}

    ours = _time_batched_steps(data)
    reference = _time_reference_steps(data, args.steps)
    out["training_ms_per_step_all_three_models"] = {
        "reference_style": reference,
        "batched_stack": ours,
        "ratio": reference / ours,
    }

    for index, critic in enumerate(args.critics):
        trained = train_families(
            FAMILIES, critic, data.train, TrainingOptions(epochs=args.train_epochs), 0
        )
        out[f"mc_eval_seconds_M100k_shared_{critic}"] = _time_evaluations(
            trained, data, critic, with_reference=index == 0
        )
    out["load_average_after"] = os.getloadavg()
    return out


def _time_batched_steps(data) -> float:
    """ms per training step of the three models of one critic, batched (one epoch, warmed up)."""
    from ucl_cli.experiments.families import FAMILIES
    from ucl_cli.experiments.training import TrainingOptions, train_families

    steps = len(data.train) // 2 // 256
    train_families(FAMILIES, "cosine", data.train, TrainingOptions(epochs=1), 0)  # warm-up
    started = time.perf_counter()
    train_families(FAMILIES, "cosine", data.train, TrainingOptions(epochs=1), 0)
    return (time.perf_counter() - started) / steps * 1e3


def _time_reference_steps(data, steps: int) -> float:
    """ms per step of the same three models trained the reference's way, one after another."""

    def mlp(width: int) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(width, 128),
            torch.nn.BatchNorm1d(128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 128),
            torch.nn.ReLU(),
            torch.nn.Linear(128, 32),
        )

    tensors = {key: torch.from_numpy(getattr(data.train, key)) for key in "abc"}
    models = [  # encoders, and pairs as (left, right, left modality, right modality, row block)
        (
            {"A": mlp(32), "B": mlp(16), "C": mlp(32)},
            [("A", "B", "a", "b", 0), ("B", "C", "b", "c", 1)],
        ),
        (
            {"A": mlp(32), "B1": mlp(16), "B2": mlp(16), "C": mlp(32)},
            [("A", "B1", "a", "b", 0), ("B2", "C", "b", "c", 1)],
        ),
        ({"A": mlp(32), "C": mlp(32)}, [("A", "C", "a", "c", 0)]),
    ]
    return sum(_reference_model_ms(encoders, pairs, tensors, steps) for encoders, pairs in models)


def _reference_model_ms(encoders: dict, pairs: list, tensors: dict, steps: int) -> float:
    rows = tensors["a"].shape[0] // 2
    scales = torch.nn.Parameter(torch.zeros(len(pairs)))
    parameters = [p for encoder in encoders.values() for p in encoder.parameters()]
    optimizer = torch.optim.Adam([*parameters, scales], lr=0.01)
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(256)

    def step() -> None:
        loss = torch.zeros(())
        for index, (left, right, mod_left, mod_right, block) in enumerate(pairs):
            chosen = torch.randint(0, rows, (256,), generator=generator) + block * rows
            z_left = F.normalize(encoders[left](tensors[mod_left][chosen]), dim=-1)
            z_right = F.normalize(encoders[right](tensors[mod_right][chosen]), dim=-1)
            logits = scales[index].exp() * z_left @ z_right.T
            loss = loss + 0.5 * (
                F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)
            )
        optimizer.zero_grad()
        (loss / len(pairs)).backward()
        optimizer.step()

    for _ in range(5):
        step()  # warm-up (the first optimizer step also imports torch._dynamo)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps * 1e3


def _time_evaluations(trained, data, critic: str, with_reference: bool) -> dict:
    """Seconds to score the shared model's 31 groups at M = 100k, three ways. The reference
    style's cost does not depend on the critic, so it is timed for the first critic only."""
    from ucl_cli.estimators import get_critic
    from ucl_cli.experiments.evaluation import bank_sweep

    score = get_critic(critic)
    a = trained.embed("shared", "A", torch.from_numpy(data.val.a))
    c = trained.embed("shared", "C", torch.from_numpy(data.val.c))
    bank = trained.embed("shared", "B", torch.from_numpy(data.bank[:100_000]))
    s1, s2 = trained.scale("shared", "A", "B"), trained.scale("shared", "B", "C")
    groups = a.shape[0] // 32

    def terms(dtype):
        def group(g: int):
            rows = slice(32 * g, 32 * (g + 1))
            return (
                score(a[rows].to(dtype), bank.to(dtype), s1),
                score(bank.to(dtype), c[rows].to(dtype), s2),
            )

        return group

    left, right = terms(torch.float64)(0)
    timings = {  # the spread of the bridge terms: what decides float32's underflow fallback
        "left_range_group0": [float(left.min()), float(left.max())],
        "right_range_group0": [float(right.min()), float(right.max())],
    }
    for name, dtype, ess in [
        ("ucl_float64_with_ess", torch.float64, True),
        ("ucl_float32_no_ess", torch.float32, False),
    ]:
        started = time.perf_counter()
        sweep = bank_sweep(terms(dtype), groups, (100_000,), ess=ess)
        timings[name] = time.perf_counter() - started
        timings[f"{name}_recall"] = sweep.recall[0]
    if with_reference:
        started = time.perf_counter()
        recall = _reference_style_recall(terms(torch.float32), groups)
        timings["reference_style_float32"] = time.perf_counter() - started
        timings["reference_style_recall"] = recall
    return timings


def _reference_style_recall(terms, groups: int, block_elements: int = 1 << 24) -> float:
    """logsumexp over [32, chunk, 32] broadcast blocks, as the reference estimator streams."""
    hits = 0.0
    for g in range(groups):
        left, right = terms(g)
        bank = left.shape[1]
        chunk = max(1, block_elements // (left.shape[0] * right.shape[1]))
        scores = torch.full((left.shape[0], right.shape[1]), -math.inf)
        for m0 in range(0, bank, chunk):
            block = left[:, m0 : m0 + chunk, None] + right[None, m0 : m0 + chunk, :]
            scores = torch.logaddexp(scores, block.logsumexp(1))
        positive = scores.diagonal()[:, None]
        better = (scores > positive).sum(1).double()
        tied = (scores == positive).sum(1).double()
        hits += float(((1 - better) / tied).clamp(0, 1).sum())
    return hits / (groups * 32)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=".bench/bench_synth.json")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="time the paper preset on some seeds")
    run.add_argument("--seeds", default="0-1")
    run.add_argument("--workers", type=int, default=None)
    report = commands.add_parser("report", help="timing of a finished `ucl synth --out` file")
    report.add_argument("results")
    parts = commands.add_parser("parts", help="side-by-side stage timings, one thread")
    parts.add_argument("--steps", type=int, default=100, help="training steps timed per model")
    parts.add_argument(
        "--train-epochs",
        type=int,
        default=8,
        help="epochs before timing the evaluation (sets the logit ranges)",
    )
    parts.add_argument("--critics", nargs="+", default=["cosine", "dot", "neg_sq_l2"])
    args = parser.parse_args()
    result = {"run": command_run, "report": command_report, "parts": command_parts}[args.command](
        args
    )
    result["numpy"], result["torch"] = np.__version__, torch.__version__
    print(json.dumps(result, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
