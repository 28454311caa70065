"""Benchmark the methods over a sharded bank on a local 2-worker Ray cluster against one process.

A stand-in bank (random unit vectors, as the stand-in models' meaningless embeddings are; the
embedding cost is not what is measured) of --rows rows for two 512-d models, written as 4
shards, is scored for a batch of queries against a set of candidates by each of --methods
(default lse): with the bank held by 2 Ray actors on a local cluster of 2 CPUs (`ucl query
--cluster local`: the driver holds no bank row), then in this process (the shards' rows
concatenated, as `ucl query` reads a sharded bank), each warm (actors started, rows mapped)
and timed best of --repeats. Prints per method the time ratio (target for lse: at most 1.5x)
and whether the results are equal (scores to float32 rounding; topk: the same certified
leading candidates), the driver's own (anonymous) memory after the cluster runs and after the
in-process runs, and the load average at the start and the end (another process skews both).

    python scripts/bench_ray.py                         # 1,000,000 rows: ~12 GB in a temp dir
    python scripts/bench_ray.py --methods topk --planted    # matches topk can certify
    python scripts/bench_ray.py --quick                 # 40,000 rows: a smoke run
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


def score(method: str, bank, queries: np.ndarray, candidates: np.ndarray):
    """The method's scores through the whole bank, its sides as `ucl query` builds them."""
    from ucl_cli.distributed.rows import ClusterBank

    keys = [model.key for model in MODELS]
    here = not isinstance(bank, ClusterBank)  # on a cluster the actors search their shards
    bridge = Bridge(
        *(
            BridgeSide(
                bank.vectors(key),
                model.logit_scale,
                bank.nearest(key) if here else None,
                bank.row_norm(key),
            )
            for key, model in zip(keys, MODELS, strict=True)
        )
    )
    return method_named(method).score(bridge, queries, candidates, ScoringSettings(), 10)


def same(method: str, remote, local) -> str:
    """Whether the cluster's result is the one process's, and by how much the scores differ."""
    difference = float((remote.values - local.values).abs().max())
    if method == "topk":  # the positions certified in both, and whether they name the same
        both = (remote.certified & local.certified).int().cumprod(dim=1)
        leading = both.sum(dim=1)  # [N] certified leading positions, per query
        agree = all(
            torch.equal(remote.order[n, :k], local.order[n, :k]) for n, k in enumerate(leading)
        )
        return (
            f"certified leading positions per query (both runs): min {int(leading.min())}, "
            f"max {int(leading.max())}; the same candidates there: {agree} (estimates differ "
            f"by {difference:.2e})"
        )
    equal = torch.allclose(remote.values, local.values, rtol=1e-6, atol=1e-5)
    return f"scores equal: {equal} (largest difference {difference:.2e} nats)"


def anonymous_mb() -> float:
    """This process's anonymous resident memory (its own arrays, not mapped files), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="40,000 rows: a smoke run")
    parser.add_argument("--rows", type=int, default=None, help="bank rows (default 1,000,000)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=None, help="default 100 (quick: 8)")
    parser.add_argument("--candidates", type=int, default=None, help="default 1000 (quick: 500)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default="lse", help="comma-separated, e.g. lse,topk,caption")
    parser.add_argument(
        "--planted",
        action="store_true",
        help="query n and candidate n are the two sides of one bank row (a peaked bridge sum, "
        "as real matches give, where topk certifies; random vectors give a flat one)",
    )
    args = parser.parse_args()
    methods = [name.strip() for name in args.methods.split(",") if name.strip()]
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
        if args.planted:
            picked = rng.choice(rows, size=min(n_queries, n_candidates), replace=False)
            queries[: len(picked)] = vectors[0][picked]
            candidates[: len(picked)] = vectors[1][picked]
        del vectors
        log(
            f"bank: {rows:,} rows x 2 models x 512 dims in {len(bank.shards)} shards "
            f"({time.perf_counter() - started:.1f} s to write); {n_queries} queries x "
            f"{n_candidates:,} candidates"
        )
        remote_s, remote = {}, {}
        ray.init(address="local", num_cpus=2, include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)  # fmt: skip
        try:
            with ClusterBank(bank, ClusterScorer(bank, "local", actors=2)) as on_ray:
                warm = time.perf_counter()
                score("lse", on_ray, queries[:1], candidates[:1])  # actors start, shards open
                log(f"ray: 2 actors started in {time.perf_counter() - warm:.1f} s")
                for method in methods:
                    score(method, on_ray, queries[:1], candidates[:1])
                    remote_s[method], remote[method] = best_of(
                        args.repeats, lambda m=method: score(m, on_ray, queries, candidates)
                    )
                    log(f"ray (2 actors, 2 CPUs), {method}: {remote_s[method]:.3f} s")
                assert on_ray.rows_read_here == 0, "the driver read bank rows"
        finally:
            ray.shutdown()
        log(f"driver's own memory after the cluster runs: {anonymous_mb():,.0f} MB")
        for method in methods:
            score(method, bank, queries[:1], candidates[:1])  # warm: the rows concatenated
            local_s, local = best_of(
                args.repeats, lambda m=method: score(m, bank, queries, candidates)
            )
            threads = torch.get_num_threads()
            log(f"one process ({threads} torch threads), {method}: {local_s:.3f} s")
            ratio = remote_s[method] / local_s
            target = (
                ""
                if method != "lse"
                else (" (within the 1.5x target)" if ratio <= 1.5 else " (ABOVE the 1.5x target)")
            )
            log(f"{method}: time ratio ray / one process {ratio:.2f}x{target}; "
                f"{same(method, remote[method], local)}")  # fmt: skip
        log(f"... and after the in-process runs: {anonymous_mb():,.0f} MB")
        bank.close()
    log(f"load average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
