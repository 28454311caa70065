"""Benchmark lse over a sharded bank on a local 2-worker Ray cluster against one process.

A stand-in bank (random unit vectors, as the stand-in models' meaningless embeddings are; the
embedding cost is not what is measured) of --rows rows for two 512-d models, written as 4
shards, is scored for a batch of queries against a set of candidates: once in this process
(the shards' rows concatenated, as `ucl query` reads a sharded bank) and once with the bank's
rows summed by 2 Ray actors on a local cluster of 2 CPUs (`ucl query --cluster local`), each
warm (actors started, rows mapped) and timed best of --repeats. Prints the time ratio (target:
at most 1.5x) and whether the scores are equal (to float32 rounding), and the load average at
the start and the end (another process on the machine skews both).

    python scripts/bench_ray.py            # 1,000,000 rows: ~12 GB written to a temp dir
    python scripts/bench_ray.py --quick    # 40,000 rows: a smoke run
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ucl_cli.bank import ModelRecord, text_item
from ucl_cli.bank.shards import save_sharded_bank
from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings, method_named

MODELS = [
    ModelRecord("standin:image-text", 512, 100.0, modalities=("image", "text")),
    ModelRecord("standin:text-audio", 512, 33.0, modalities=("text", "audio")),
]


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim), dtype=np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def log(text: str) -> None:
    print(text, flush=True)


def best_of(repeats: int, run) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    return min(times), result


def score(bank, queries: np.ndarray, candidates: np.ndarray):
    keys = [model.key for model in MODELS]
    bridge = Bridge(
        BridgeSide(bank.vectors(keys[0]), MODELS[0].logit_scale),
        BridgeSide(bank.vectors(keys[1]), MODELS[1].logit_scale),
    )
    return method_named("lse").score(bridge, queries, candidates, ScoringSettings(), 10).values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40,000 rows: a smoke run")
    parser.add_argument("--rows", type=int, default=None, help="bank rows (default 1,000,000)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=None, help="default 100 (quick: 8)")
    parser.add_argument("--candidates", type=int, default=None, help="default 1000 (quick: 500)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = args.rows or (40_000 if args.quick else 1_000_000)
    n_queries = args.queries or (8 if args.quick else 100)
    n_candidates = args.candidates or (500 if args.quick else 1000)
    log(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    import ray

    from ucl_cli.distributed.driver import ClusterScorer
    from ucl_cli.distributed.rows import ClusterBank

    rng = np.random.default_rng(0)
    queries = unit_rows(rng, n_queries, 512)
    candidates = unit_rows(rng, n_candidates, 512)
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        started = time.perf_counter()
        items = [text_item(f"stand-in text {i}") for i in range(rows)]
        vectors = [unit_rows(rng, rows, model.dim) for model in MODELS]
        size = -(-rows // args.shards)
        bank = save_sharded_bank(
            Path(tmp) / "bank", items, vectors, MODELS, shard_size=size, faiss_index="Flat"
        )
        del vectors
        log(
            f"bank: {rows:,} rows x 2 models x 512 dims in {len(bank.shards)} shards "
            f"({time.perf_counter() - started:.1f} s to write); {n_queries} queries x "
            f"{n_candidates:,} candidates"
        )
        score(bank, queries[:1], candidates[:1])  # warm: the shards' rows concatenated
        local_s, local = best_of(args.repeats, lambda: score(bank, queries, candidates))
        log(f"one process ({torch.get_num_threads()} torch threads): {local_s:.3f} s")
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1",
                 log_to_driver=False)  # fmt: skip
        try:
            with ClusterBank(bank, ClusterScorer(bank, "local", actors=2)) as on_ray:
                warm = time.perf_counter()
                score(on_ray, queries[:1], candidates[:1])  # actors started, shards opened
                log(f"ray: 2 actors started in {time.perf_counter() - warm:.1f} s")
                ray_s, remote = best_of(args.repeats, lambda: score(on_ray, queries, candidates))
        finally:
            ray.shutdown()
        bank.close()
    log(f"ray (2 actors, 2 CPUs): {ray_s:.3f} s")
    ratio = ray_s / local_s
    verdict = "within" if ratio <= 1.5 else "ABOVE"
    log(f"time ratio ray / one process: {ratio:.2f}x ({verdict} the 1.5x target)")
    difference = float((remote - local).abs().max())
    equal = torch.allclose(remote, local, rtol=1e-6, atol=1e-5)
    log(f"scores equal: {equal} (largest difference {difference:.2e} nats)")
    log(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
