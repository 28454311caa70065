"""Benchmark `bridge_scores` side by side with the alternatives, in one process.

For each shape (N queries, M bank items, K candidates) and logit scale it times, and measures the
peak extra memory of:
  - matmul:   one plain float32 product left @ right (the floor for any exact method);
  - bridge:   ucl's `bridge_scores`;
  - streamed: the reference implementation's method, logaddexp over [N, B, K] blocks of 2^24;
  - naive:    torch.logsumexp(left[:, :, None] + right[None], dim=1), where it fits in memory;
  - topk:     the certified top-K bounds (T = 100) computed from the full matrices;
  - calibrated: the tempered, self-normalised score (t = 0.25 on both critics, normalised over
    the bank's candidates: `estimators.calibrated`), whose cost should stay that of `bridge`;
and the error of each exact method against a float64 streamed reference. Critic values are
scale * u with u ~ U(-1, 1), so the row and column maxima are far apart (a hard case). The wide-
range case draws them from N(0, sigma^2) instead (sigma = 30): each entry's best path then lies
~80 nats below its row plus column maxima, beyond the ~58 nats that float32's underflow guard
certifies, so most entries fail it (`bridge_scores` resolves them in float64 exp space, before
any streamed fallback).

Ratios are what matter: the methods run in the same process on the same inputs. On CPU the peak
memory is measured in a child process whose allocator returns every large block to the system
(so that peaks cannot hide in memory freed earlier); the times come from this process, with the
ordinary allocator that a user's process has (the child's setting puts page faults in every
allocation).

    python scripts/bench_estimators.py                      # the issue's table (a few minutes)
    python scripts/bench_estimators.py --quick              # small shapes only
    python scripts/bench_estimators.py --device cuda        # on a GPU
    python scripts/bench_estimators.py --cases wide         # the wide-range case alone
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ucl_cli.estimators import bridge_scores, certify_ranking, topk_bounds_from_matrices
from ucl_cli.estimators.calibrated import Calibration, calibrated_scores

CALIBRATION = Calibration(0.25, 0.25, "candidates")

SHAPES = [(25, 10_000, 25), (25, 100_000, 25), (25, 1_000_000, 25), (1, 100_000, 10_000)]
QUICK_SHAPES = [(25, 10_000, 25), (25, 100_000, 25)]
SCALES = [1.0, 14.0, 100.0]
# Wide range: N(0, 30^2) values at the target shape (best paths ~80 nats below the maxima).
WIDE_SHAPES = [(25, 100_000, 25)]
WIDE_SIGMA = 30.0
STREAM_BLOCK = 1 << 24


@dataclass(frozen=True)
class Case:
    """One benchmark case: a shape and how its values are drawn (uniform or normal)."""

    shape: tuple[int, int, int]
    scale: float
    wide: bool = False

    @property
    def key(self) -> str:
        n, bank, k = self.shape
        return f"{n},{bank},{k},{'normal' if self.wide else 'uniform'},{self.scale:g}"

    @property
    def label(self) -> str:
        return f"N(0, {self.scale:g}^2)" if self.wide else f"{self.scale:g}"


def benchmark_cases(quick: bool, which: str) -> list[Case]:
    shapes = QUICK_SHAPES if quick else SHAPES
    cases = []
    if which in ("all", "uniform"):
        cases += [Case(shape, scale) for shape in shapes for scale in SCALES]
    if which in ("all", "wide"):
        cases += [Case(shape, WIDE_SIGMA, wide=True) for shape in WIDE_SHAPES]
    return cases


def streamed_logaddexp(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """The reference implementation's method: [N, B, K] blocks of 2^24 elements."""
    n, bank = left.shape
    k = right.shape[1]
    block = max(1, STREAM_BLOCK // (n * k))
    acc = torch.full((n, k), -math.inf, dtype=left.dtype, device=left.device)
    for m0 in range(0, bank, block):
        paths = left[:, m0 : m0 + block, None] + right[None, m0 : m0 + block, :]
        acc = torch.logaddexp(acc, torch.logsumexp(paths, dim=1))
    return acc - math.log(bank)


def naive_broadcast(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(left[:, :, None] + right[None], dim=1) - math.log(left.shape[1])


class PeakMemory:
    """Peak extra memory of a call: CUDA allocator stats, or the process's RSS high-water mark."""

    def __init__(self, device: torch.device):
        self.device = device

    def measure(self, fn: Callable[[], object]) -> tuple[object, int]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            out = fn()
            torch.cuda.synchronize()
            return out, torch.cuda.max_memory_allocated() - base
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        base = _status_kib("VmRSS")
        out = fn()
        return out, (_status_kib("VmHWM") - base) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def best_time(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def run_case(case: Case, device, repeats, naive_limit_bytes, log, peaks=None) -> dict:
    """Time every method (and measure its peak memory unless `peaks` has it already)."""
    n, bank, k = case.shape
    left, right = case_inputs(case, device)
    reference = streamed_logaddexp(left.double(), right.double())
    inputs_bytes = (left.numel() + right.numel()) * 4
    methods = case_methods(left, right, case, naive_limit_bytes)
    memory = PeakMemory(device)
    row = {"N": n, "M": bank, "K": k, "scale": case.scale, "label": case.label}
    row["inputs_bytes"] = inputs_bytes
    for name, fn in methods.items():
        if peaks is None:
            out, peak = memory.measure(fn)
        else:
            out, peak = fn(), peaks[name]
        slow = name in ("streamed", "naive") and bank * n * k >= 10**8
        seconds = best_time(fn, device, 1 if slow else repeats)
        row[f"{name}_s"] = seconds
        row[f"{name}_peak_bytes"] = peak
        if name in ("bridge", "streamed", "naive"):
            row[f"{name}_max_error"] = (out.double() - reference).abs().max().item()
        if name == "topk":
            exact = bridge_scores(left, right)
            row["topk_contains_exact"] = bool(
                ((out.lower <= exact + 1e-3) & (exact <= out.upper + 1e-3)).all()
            )
            row["topk_median_width"] = out.width.median().item()
            ranking = certify_ranking(out)
            row["topk_certified_top10"] = (
                (ranking.leading_certified() >= min(10, k)).float().mean().item()
            )
        log(f"  {name:8s} {seconds * 1e3:10.1f} ms  peak {peak / 2**20:9.1f} MiB")
    row["tolerance"] = 1e-6 * (1 + left.abs().max().item() + right.abs().max().item())
    return row


def case_inputs(case: Case, device) -> tuple[torch.Tensor, torch.Tensor]:
    """left [N, M] and right [M, K]: scale * U(-1, 1), or N(0, scale^2) for a wide case; the
    same for every run of a case."""
    n, bank, k = case.shape
    generator = torch.Generator().manual_seed(0)
    if case.wide:
        left = torch.randn(n, bank, generator=generator) * case.scale
        right = torch.randn(bank, k, generator=generator) * case.scale
    else:
        left = (torch.rand(n, bank, generator=generator) * 2 - 1) * case.scale
        right = (torch.rand(bank, k, generator=generator) * 2 - 1) * case.scale
    return left.to(device), right.to(device)


def case_methods(left, right, case: Case, naive_limit_bytes) -> dict[str, Callable[[], object]]:
    n, bank = left.shape
    k = right.shape[1]
    methods: dict[str, Callable[[], object]] = {
        "matmul": lambda: left @ right,
        "bridge": lambda: bridge_scores(left, right),
        "calibrated": lambda: calibrated_scores(left, right, CALIBRATION),
        "streamed": lambda: streamed_logaddexp(left, right),
    }
    if n * bank * k * 4 * 2 <= naive_limit_bytes:
        methods["naive"] = lambda: naive_broadcast(left, right)
    top = min(100, bank)
    # The floors are lower bounds on the values: -scale for U(-1, 1) * scale, the minimum else.
    left_floor = left.min().item() if case.wide else -case.scale
    right_floor = right.min().item() if case.wide else -case.scale
    methods["topk"] = lambda: topk_bounds_from_matrices(
        left, right, top, left_floor=left_floor, right_floor=right_floor
    )
    return methods


def measure_peaks(cases: list[Case], naive_limit_bytes) -> dict[str, dict[str, int]]:
    """Run in the child (honest allocator): each method once per case, its peak extra RSS."""
    peaks = {}
    memory = PeakMemory(torch.device("cpu"))
    # Warm up first (thread pool, allocator arenas), or the first case is charged for them.
    small = torch.rand(4, 2048), torch.rand(2048, 4)
    for fn in case_methods(*small, Case((4, 2048, 4), 1.0), naive_limit_bytes).values():
        fn()
    for case in cases:
        left, right = case_inputs(case, torch.device("cpu"))
        methods = case_methods(left, right, case, naive_limit_bytes)
        peaks[case.key] = {name: memory.measure(fn)[1] for name, fn in methods.items()}
    return peaks


def peaks_from_child(argv: list[str]) -> dict[str, dict[str, int]]:
    """This script again, in a child whose allocator returns every large block on free."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--memory-child"]
    done = subprocess.run(command, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def ratio(row: dict, a: str, b: str) -> str:
    if f"{a}_s" not in row or f"{b}_s" not in row:
        return "-"
    return f"{row[f'{a}_s'] / row[f'{b}_s']:.1f}x"


def _milliseconds(row: dict) -> Callable[[str], str]:
    def ms(name: str) -> str:
        key = f"{name}_s"
        return f"{row[key] * 1e3:.1f} ms" if key in row else "does not fit"

    return ms


def markdown_table(rows: list[dict]) -> str:
    lines = [
        "| N, M, K | scale | matmul | bridge | streamed | naive | streamed/bridge "
        "| naive/bridge | bridge/matmul | bridge peak / inputs | bridge max err (tol) | topk "
        "| topk width (median) | top-10 certified | calibrated | calibrated/bridge |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ms = _milliseconds(row)
        lines.append(
            f"| {row['N']}, {row['M']:.0e}, {row['K']} | {row['label']} | {ms('matmul')} "
            f"| {ms('bridge')} | {ms('streamed')} | {ms('naive')} "
            f"| {ratio(row, 'streamed', 'bridge')} | {ratio(row, 'naive', 'bridge')} "
            f"| {ratio(row, 'bridge', 'matmul')} "
            f"| {row['bridge_peak_bytes'] / row['inputs_bytes']:.2f} "
            f"| {row['bridge_max_error']:.1e} ({row['tolerance']:.0e}) | {ms('topk')} "
            f"| {row['topk_median_width']:.2f} | {row['topk_certified_top10']:.0%} "
            f"| {ms('calibrated')} | {ratio(row, 'calibrated', 'bridge')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true", help="small shapes only")
    parser.add_argument(
        "--cases",
        choices=["all", "uniform", "wide"],
        default="all",
        help="U(-1, 1) * scale cases, the N(0, 30^2) wide-range case, or both (default)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="best of this many runs")
    parser.add_argument("--naive-limit-gb", type=float, default=6.0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", type=Path, help="write every measurement as JSON")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cases = benchmark_cases(args.quick, args.cases)
    limit = args.naive_limit_gb * 2**30
    if args.memory_child:
        print(json.dumps(measure_peaks(cases, limit)))
        return

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    all_peaks = None
    if device.type == "cpu":
        log("measuring peak memory in a child process ...")
        all_peaks = peaks_from_child(sys.argv[1:])
    rows = []
    for case in cases:
        log(f"N, M, K = {case.shape}, scale {case.label}")
        peaks = None if all_peaks is None else all_peaks[case.key]
        rows.append(run_case(case, device, args.repeats, limit, log, peaks))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    header = (
        f"device: {device} ({name}, {torch.get_num_threads()} threads), torch {torch.__version__}"
    )
    print(header)
    print(markdown_table(rows))
    if args.out:
        args.out.write_text(json.dumps({"header": header, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
