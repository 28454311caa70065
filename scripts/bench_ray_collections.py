"""Benchmark a sharded collection's certified top 10 on a local Ray cluster, side by side with
one process over the same shards.

A collection of 1,000,000 stand-in 512-d vectors in 1,024 concepts (as bench_collections.py
makes them) is written as 4 shards of 250,000 rows, each a bank with its own IVF index (as
`ucl index --shard-size 250000` writes it), and searched with `topk` for 1 query and for a
batch of 100 through a stand-in bank of the built-in bank's size: in this process (the shards'
indexes joined), and by 2 Ray actors holding 2 shards each. Prints the times, whether every
top 10 is certified, and whether the two answers are the same rows. The one-off work of each
side's first query (the shards' IVF scans and list tables, saved for later queries) is timed
apart.

    python scripts/bench_ray_collections.py                 # about 15 minutes on two cores
    python scripts/bench_ray_collections.py --rows 200000   # quicker
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_collections import near, write_collection
from bench_query import best_of, log, stand_in_bank


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=1024)
    parser.add_argument("--bank-size", type=int, default=1054)
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--workdir")
    args = parser.parse_args()

    import ray
    import torch

    from ucl_cli.bank import BankItem, ModelRecord
    from ucl_cli.bank.norms import largest_row_norm
    from ucl_cli.bank.shards import save_sharded_bank
    from ucl_cli.bridge.candidate_sources import collection_source, rank_sources
    from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings, method_named
    from ucl_cli.distributed.driver import ClusterScorer
    from ucl_cli.distributed.rows import ClusterBank

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ucl-bench-ray-"))
    os.environ["UCL_HOME"] = str(work / "home")
    print(f"load average at start: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    rng = np.random.default_rng(0)
    (bank_a, bank_b), (centres_a, centres_b), assign = stand_in_bank(
        args.bank_size, args.dim, args.clusters, 0.8, rng
    )
    covered = np.unique(assign)
    model = ModelRecord("stand-in:audio", args.dim, 33.0, modalities=("text", "audio"))
    path = work / "collection.npy"
    started = time.perf_counter()
    if not path.exists():
        write_collection(path, args.rows, centres_b, 0.8, rng)
    vectors = np.load(path, mmap_mode="r")
    paths = [f"/library/clip{i:07d}.wav" for i in range(args.rows)]
    items = [BankItem(p, p, f"{i:016x}") for i, p in enumerate(paths)]
    collection = save_sharded_bank(
        work / "sfx", items, [vectors], [model], shard_size=-(-args.rows // args.shards),
        modality="audio",
    )  # fmt: skip
    log(f"{args.rows:,} rows as {len(collection.shards)} shards with their indexes: "
        f"{time.perf_counter() - started:.0f} s")
    bridge = Bridge(
        BridgeSide(bank_a, 100.0, None, largest_row_norm(bank_a)),
        BridgeSide(bank_b, 33.0, None, largest_row_norm(bank_b)),
    )

    def top10(held, queries):
        source = collection_source(held, model)
        return rank_sources(method_named("topk"), bridge, queries, [source], ScoringSettings(), 10)

    ray.init(address="local", num_cpus=args.actors, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)  # fmt: skip
    remote = ClusterBank(collection, ClusterScorer(collection, "local", actors=args.actors))
    try:
        warm = near(centres_a[covered[:1]], 0.8, rng)
        for label, held in (("one process", collection), ("ray", remote)):
            started = time.perf_counter()
            top10(held, warm)  # actors' start, shards' scans and list tables: saved, apart
            print(f"one-off, first query ({label}): {time.perf_counter() - started:.1f} s")
        print(
            f"\ncollection {args.rows:,} x {args.dim} in {len(collection.shards)} shards "
            f"({', '.join(shard.manifest.faiss_index for shard in collection.shards)}); bank "
            f"{args.bank_size:,} rows; {args.actors} actors on a local Ray cluster; torch "
            f"{torch.__version__}\n"
        )
        print("| queries | one process | ray | ray / one process | top 10 certified | "
              "same rows |")
        print("|---|---|---|---|---|---|")
        for count in args.queries:
            queries = near(centres_a[rng.choice(covered, size=count)], 0.8, rng)
            t_here, here = best_of(lambda q=queries: top10(collection, q), args.repeats)
            t_ray, there = best_of(lambda q=queries: top10(remote, q), args.repeats)
            certified = bool(there.certified.all()) and bool(here.certified.all())
            same = bool(torch.equal(there.row, here.row))
            print(f"| {count} | {t_here:.2f} s | {t_ray:.2f} s | {t_ray / t_here:.2f}x | "
                  f"{certified} | {same} |")
    finally:
        remote.scorer.close()
        ray.shutdown()
        collection.close()
    print(f"\nload average at end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
