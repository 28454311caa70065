"""Benchmark `ucl index --cluster local`: texts/s on 2 local Ray workers against one process.

Both index the same corpus (short AudioCaps-like captions, all distinct) into a sharded bank with
the default pair of text towers at their real sizes: CLIP ViT-B-32's and LAION-CLAP's
(roberta-base), random-weight stand-ins of the same architectures (their cost per text is the
real models'; their vectors mean nothing). The machine this was written for has 2 cores, so
the fair comparison is:

- one process: `index_items` (the whole `ucl index` path: dedupe, both towers, staged commits,
  shards published) with torch on 2 threads, the models loaded and warm beforehand;
- Ray: `index_on_cluster` on a local cluster of 2 CPUs, 2 actors of 1 CPU each (torch on 1
  thread each), each loading its own copy of both models.

Reported: one process's texts/s (and, as a reference, with torch on 1 thread: what the 2
threads add); the actors' texts/s over their busy time (from the first shard
started to the last shard finished: no cluster start-up or model loading) and end to end (the
whole call: starting the actors and loading their models included); the ratio of each to the
one process (target: at least 1.6x for the busy time); whether both banks hold the same items in
the same order and the same vectors; the load average at the start and the end (another
process on the machine skews everything).

    python scripts/bench_ray_index.py --models-dir /tmp/ucl_models   # 4,096 texts
    python scripts/bench_ray_index.py --quick                        # 512 texts: a smoke run

--models-dir is an HF_HOME holding the stand-ins (`python scripts/make_test_models.py DIR`, ~1.3
GB); without it they are written to a temporary folder first.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
if importlib.util.find_spec("ucl_cli") is None:  # run from a checkout that was not pip-installed
    sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from bench_index import captions  # noqa: E402  (the same captions as bench_index.py)


def log(text: str) -> None:
    print(text, flush=True)


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def same_banks(a_dir: Path, b_dir: Path) -> str:
    import numpy as np

    from ucl_cli.bank import load_bank

    with load_bank(a_dir) as a, load_bank(b_dir) as b:
        if list(a.items()) != list(b.items()):
            return "NO (the items differ)"
        if [s.count for s in a.manifest.shards] != [s.count for s in b.manifest.shards]:
            return "NO (the shards differ)"
        worst = max(
            float(np.abs(a.vectors(key) - b.vectors(key)).max())
            for key in a.manifest.model_keys()
        )
        return f"yes: same items, order and shards; largest vector difference {worst:.1e}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="512 texts: a smoke run")
    parser.add_argument("--texts", type=int, default=None, help="default 4,096 (quick: 512)")
    parser.add_argument("--shard-size", type=int, default=None, help="default texts / 8")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--models-dir", type=Path, default=None, help="HF_HOME of the stand-ins")
    args = parser.parse_args()
    log(f"load average at start: {load_average()}")
    count = args.texts or (512 if args.quick else 4096)
    shard_size = args.shard_size or max(1, count // 8)
    work = Path(tempfile.mkdtemp(prefix="bench_ray_index_"))
    models_dir = args.models_dir
    if models_dir is None:
        from ucl_cli.testing.standins import write_defaults

        models_dir = work / "models"
        started = time.perf_counter()
        write_defaults(models_dir)
        log(f"stand-ins written to {models_dir} in {time.perf_counter() - started:.0f} s")
    os.environ["HF_HOME"] = str(models_dir)  # the actors get it too (forwarded)
    os.environ.pop("HF_HUB_CACHE", None)

    import ray
    import torch

    from ucl_cli.bank import IndexOptions, index_items, text_item
    from ucl_cli.distributed.indexing import (
        ClusterIndexOptions,
        RegistryModels,
        index_on_cluster,
    )
    from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO, load_encoder

    keys = (DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO)
    items = [text_item(text) for text in captions(count)]
    options = IndexOptions(shard_size=shard_size, batch_size=args.batch_size)
    log(
        f"corpus: {count:,} captions; shards of {shard_size:,} rows; batches of "
        f"{args.batch_size}; models: {', '.join(keys)} (full-size random-weight stand-ins)"
    )

    torch.set_num_threads(2)
    started = time.perf_counter()
    encoders = [load_encoder(key, device="cpu") for key in keys]
    log(f"one process: models loaded in {time.perf_counter() - started:.1f} s")
    for encoder in encoders:  # warm
        encoder.embed("text", [item.text for item in items[: args.batch_size]])
    started = time.perf_counter()
    index_items(work / "one", encoders, items, options)
    one_s = time.perf_counter() - started
    one_rate = count / one_s
    log(f"one process (torch on {torch.get_num_threads()} threads): {one_s:.1f} s, "
        f"{one_rate:.1f} texts/s")  # fmt: skip

    torch.set_num_threads(1)  # a reference: what one core does, which 2 workers can double
    started = time.perf_counter()
    index_items(work / "one-thread", encoders, items, options)
    single_rate = count / (time.perf_counter() - started)
    log(f"reference, one process with torch on 1 thread: {single_rate:.1f} texts/s (2 threads "
        f"scale it {one_rate / single_rate:.2f}x)")  # fmt: skip
    torch.set_num_threads(2)

    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)  # fmt: skip
    try:
        cluster = ClusterIndexOptions(actors=2, device="cpu")
        started = time.perf_counter()
        index_on_cluster(
            work / "ray", encoders, RegistryModels(keys), items, options, "local", cluster=cluster
        )
        end_to_end_s = time.perf_counter() - started
    finally:
        ray.shutdown()
    busy_s = cluster.stats["busy_s"]
    busy_rate, end_rate = count / busy_s, count / end_to_end_s
    log(f"ray ({cluster.stats['actors']} actors of 1 CPU, torch on 1 thread each, "
        f"{cluster.stats['shards']} shards): busy {busy_s:.1f} s, {busy_rate:.1f} texts/s; "
        f"end to end {end_to_end_s:.1f} s, {end_rate:.1f} texts/s")  # fmt: skip
    ratio = busy_rate / one_rate
    verdict = "meets" if ratio >= 1.6 else "BELOW"
    log(f"texts/s ray / one process: {ratio:.2f}x over the actors' busy time ({verdict} the "
        f"1.6x target); {end_rate / one_rate:.2f}x end to end")  # fmt: skip
    log(f"texts/s ray / one process on 1 thread: {busy_rate / single_rate:.2f}x over the busy "
        "time")  # fmt: skip
    log(f"same bank: {same_banks(work / 'ray', work / 'one')}")
    log(f"load average at end: {load_average()}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
