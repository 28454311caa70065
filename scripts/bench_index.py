"""Benchmark `ucl index`: its throughput next to the encoders alone, and its peak memory.

(a) throughput: the whole `ucl index` path (corpus reader, dedupe, both text towers, staged
    commits with fsync, publishing, FAISS index) against the two text encoders' forward passes
    alone on the same texts and batches, in one process, alternating, median of --repeats.
    --encoder default loads the registry's default pair (CLIP ViT-B-32 and LAION-CLAP HTSAT-tiny
    text towers); without real weights, make random-weight stand-ins of the same architectures
    first with `python scripts/make_test_models.py DIR` and pass --models-dir DIR.
    --encoder fake (hashed word vectors) and --encoder lookup (one table row a text) are cheap
    stand-ins that show ucl's own overhead per text.
(b) memory: the peak resident memory (VmHWM) of `ucl index` over --lines short lines with a
    cheap stand-in (dim --dim for each of two models), in a fresh process, next to the size of
    the embedding matrices it writes.

    python scripts/bench_index.py throughput --encoder default --models-dir /tmp/ucl_models
    python scripts/bench_index.py throughput --encoder lookup --lines 100000 --batch-size 256
    python scripts/bench_index.py memory --lines 1000000
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

if importlib.util.find_spec("ucl_cli") is None:  # run from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORDS = [
    "dog",
    "cat",
    "bird",
    "car",
    "engine",
    "rain",
    "wind",
    "crowd",
    "child",
    "woman",
    "man",
    "siren",
    "bell",
    "music",
    "guitar",
    "piano",
    "drum",
    "water",
    "door",
    "train",
    "plane",
    "baby",
    "laughter",
    "speech",
    "whistle",
    "horn",
    "thunder",
    "footsteps",
    "bus",
]
ROLES = ("image-text", "text-audio")
PLACES = [
    "street",
    "kitchen",
    "forest",
    "beach",
    "station",
    "park",
    "office",
    "stadium",
    "church",
    "river",
]


def captions(count: int) -> list[str]:
    """Short, varied captions (AudioCaps-like lengths); every one distinct."""
    return [
        f"a {WORDS[i % 29]} and a {WORDS[(i // 29) % 29]} near the {PLACES[(i // 841) % 10]} "
        f"while {WORDS[(i * 7) % 29]} sounds in the distance {i}"
        for i in range(count)
    ]


def short_line(i: int) -> str:
    """'dog street 17': about 20 bytes, distinct for every i."""
    return f"{WORDS[i % 29]} {PLACES[(i // 29) % 10]} {i}"


def stand_in_encoder(key: str, dim: int, kind: str = "fake"):
    """Cheap text encoders: `fake` sums hashed word vectors (tens of microseconds a text);
    `lookup` takes one row per text by its hash (about a microsecond), leaving ucl alone."""
    import numpy as np

    from ucl_cli.encoders.base import Encoder, Modality

    class StandInEncoder(Encoder):
        def __init__(self) -> None:
            self.key = key
            self.modalities = frozenset({Modality.TEXT})
            self.dim = dim
            self.logit_scale = 1.0
            self.preprocessing = {"stand_in": kind}
            self.device = "cpu"
            self.table = np.random.default_rng(zlib.crc32(key.encode())).standard_normal(
                (4096, dim), dtype=np.float32
            )

        def _embed_batch(self, modality, batch):
            if kind == "lookup":
                return self.table[[zlib.crc32(text.encode()) & 4095 for text in batch]]
            ids = [[zlib.crc32(word.encode()) & 4095 for word in text.split()] for text in batch]
            starts = np.cumsum([0] + [len(row) for row in ids[:-1]])
            flat = np.fromiter((i for row in ids for i in row), dtype=np.int64)
            return np.add.reduceat(self.table[flat], starts, axis=0)

    return StandInEncoder()


def load_encoders(kind: str, device: str, dim: int) -> list:
    if kind != "default":
        return [stand_in_encoder(f"{kind}:{role}", dim, kind) for role in ROLES]
    from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO, load_encoder

    return [load_encoder(key, device=device) for key in (DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO)]


def run_cli_index(encoders: Sequence, corpus: Path, bank: Path, batch_size: int) -> None:
    """`ucl index CORPUS --bank BANK` in this process, with these (already loaded) encoders."""
    import ucl_cli.commands._shared as shared
    from ucl_cli.cli import app

    by_key = {encoder.key: encoder for encoder in encoders}
    shared.load_encoder = lambda key, *, device: by_key[key]  # the commands' one seam
    keys = [encoder.key for encoder in encoders]
    args = ["index", str(corpus), "--bank", str(bank), "--batch-size", str(batch_size)]
    args += ["--image-text-model", keys[0], "--text-audio-model", keys[1], "--device", "cpu"]
    app(args, standalone_mode=False)


def forward_only(encoders: Sequence, texts: list[str], batch_size: int) -> None:
    for start in range(0, len(texts), batch_size):
        batch = texts[start : start + batch_size]
        for encoder in encoders:
            encoder.embed("text", batch, batch_size=batch_size)


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_both(fn: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): on a shared machine the CPU
    time is the steadier of the two, though it leaves out waiting for the disk (fsync)."""
    cpu = time.process_time()
    wall = timed(fn)
    return wall, time.process_time() - cpu


def throughput(args: argparse.Namespace) -> dict:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    encoders = load_encoders(args.encoder, args.device, args.dim)
    texts = captions(args.lines)
    forward_only(encoders, texts[: args.batch_size], args.batch_size)  # warm up
    work = Path(tempfile.mkdtemp(prefix="bench_index_"))
    corpus = work / "corpus.txt"
    corpus.write_text("".join(text + "\n" for text in texts), encoding="utf-8")
    forward, index = [], []
    for repeat in range(args.repeats):
        forward.append(timed_both(lambda: forward_only(encoders, texts, args.batch_size)))
        bank = work / f"bank{repeat}"
        index.append(
            timed_both(lambda bank=bank: run_cli_index(encoders, corpus, bank, args.batch_size))
        )
    wall = [i[0] / f[0] for f, i in zip(forward, index, strict=True)]
    cpu = [i[1] / f[1] for f, i in zip(forward, index, strict=True)]
    return {
        "benchmark": "throughput",
        "encoder": args.encoder,
        "models": [encoder.key for encoder in encoders],
        "device": str(encoders[0].device),
        "torch_threads": torch.get_num_threads(),
        "texts": len(texts),
        "batch_size": args.batch_size,
        "forward_wall_s": [round(f[0], 3) for f in forward],
        "index_wall_s": [round(i[0], 3) for i in index],
        "forward_cpu_s": [round(f[1], 3) for f in forward],
        "index_cpu_s": [round(i[1], 3) for i in index],
        "forward_texts_per_s": round(len(texts) / statistics.median(f[0] for f in forward), 1),
        "index_texts_per_s": round(len(texts) / statistics.median(i[0] for i in index), 1),
        "ratio_wall_median_of_pairs": round(statistics.median(wall), 3),
        "ratio_cpu_median_of_pairs": round(statistics.median(cpu), 3),
    }


def memory(args: argparse.Namespace) -> dict:
    """Run the indexing in a fresh process so its high-water mark is its own."""
    work = Path(tempfile.mkdtemp(prefix="bench_index_mem_"))
    corpus = work / "corpus.txt"
    with open(corpus, "w", encoding="utf-8") as handle:
        handle.writelines(short_line(i) + "\n" for i in range(args.lines))
    command = [sys.executable, __file__, "memory-child", str(corpus), str(work / "bank")]
    command += ["--dim", str(args.dim), "--batch-size", str(args.batch_size)]
    command += ["--encoder", args.encoder]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"the indexing process failed:\n{done.stderr}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["summary_line"] = done.stderr.strip().splitlines()[-1]
    if not args.keep:
        import shutil

        shutil.rmtree(work)
    return result


def memory_child(args: argparse.Namespace) -> None:
    encoders = load_encoders(args.encoder, "cpu", args.dim)
    baseline = status_kib("VmRSS")
    seconds = timed(
        lambda: run_cli_index(encoders, Path(args.corpus), Path(args.bank), args.batch_size)
    )
    from ucl_cli.bank import load_bank

    with load_bank(args.bank, verify="on_read") as bank:
        rows = len(bank)
    peak = status_kib("VmHWM")
    matrices = rows * args.dim * 4 * len(encoders)
    report = {
        "benchmark": "memory",
        "encoder": args.encoder,
        "lines": rows,
        "dim_per_model": args.dim,
        "batch_size": args.batch_size,
        "seconds": round(seconds, 1),
        "baseline_rss_mib": round(baseline / 1024, 1),
        "peak_rss_mib": round(peak / 1024, 1),
        "peak_over_baseline_mib": round((peak - baseline) / 1024, 1),
        "matrices_mib": round(matrices / 2**20, 1),
        "one_matrix_mib": round(matrices / len(encoders) / 2**20, 1),
        "target_mib": round(1024 + matrices / 2**20, 1),
    }
    print(json.dumps(report))


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    a = modes.add_parser("throughput", help="ucl index next to the forward passes alone")
    a.add_argument("--encoder", choices=("default", "fake", "lookup"), default="default")
    a.add_argument("--models-dir", type=Path, help="HF_HOME holding the models (stand-ins)")
    a.add_argument("--device", default="cpu")
    a.add_argument("--lines", type=int, default=512)
    a.add_argument("--batch-size", type=int, default=64)
    a.add_argument("--repeats", type=int, default=3)
    a.add_argument("--dim", type=int, default=512, help="embedding size of the fake encoders")
    a.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    b = modes.add_parser("memory", help="peak RSS of indexing many short lines")
    b.add_argument("--lines", type=int, default=1_000_000)
    b.add_argument("--dim", type=int, default=512)
    b.add_argument("--batch-size", type=int, default=1024)
    b.add_argument("--encoder", choices=("fake", "lookup"), default="lookup")
    b.add_argument("--keep", action="store_true", help="keep the corpus and bank")
    c = modes.add_parser("memory-child")
    c.add_argument("corpus")
    c.add_argument("bank")
    c.add_argument("--dim", type=int, default=512)
    c.add_argument("--batch-size", type=int, default=1024)
    c.add_argument("--encoder", choices=("fake", "lookup"), default="lookup")
    args = parser.parse_args(argv)

    if getattr(args, "models_dir", None):
        os.environ["HF_HOME"] = str(args.models_dir)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.mode == "memory-child":
        memory_child(args)
        return 0
    result = throughput(args) if args.mode == "throughput" else memory(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
