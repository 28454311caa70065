"""Benchmark searching a collection, side by side in one process.

million: a collection of 1,000,000 stand-in 512-d vectors in 1,024 concepts (memory-mapped from
         a .npy, with an IVF index, as `ucl index --modality audio` stores one) and a stand-in
         bridge bank of 1,054 rows (the built-in bank's size). `topk` through the collection's
         index against `lse` streamed over every row, for 1 query and for a batch of 100: time
         ratio, whether the top 10 is certified and equal to the exact top 10 (float64 scores of
         both answers' rows: `lse`'s float32 ranking may swap a near tie). The one-off work a
         collection's first `topk` query through a bank does (the IVF scan and the per-list
         table, both saved for later queries) is timed apart. The peak extra
         memory of the streamed `lse` is measured in a child process (resident set, which
         counts the memory-mapped pages it reads) against the collection's size.
files:   10,000 audio files: `search` over `--candidates DIR` with a warm embedding cache (walk,
         header checks, stat, SQLite) against the same files as a collection (no file touched),
         for 1 query and for 100.

    python scripts/bench_collections.py million              # a few minutes on two cores
    python scripts/bench_collections.py files
    python scripts/bench_collections.py million --rows 100000  # smaller, quicker
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_query import best_of, ivf, log, noise_for_cosine, stand_in_bank

from ucl_cli.encoders.base import Encoder
from ucl_cli.modality import Modality


def near(centres: np.ndarray, cosine: float, rng: np.random.Generator) -> np.ndarray:
    out = centres + noise_for_cosine(cosine, centres.shape[1]) * rng.standard_normal(
        centres.shape, dtype=np.float32
    )
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def write_collection(path: Path, rows: int, centres: np.ndarray, cosine: float, rng) -> None:
    """Rows about random concepts, written to a .npy block by block (never all in memory)."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (rows, centres.shape[1])}
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        for start in range(0, rows, 1 << 16):
            count = min(1 << 16, rows - start)
            block = near(centres[rng.integers(len(centres), size=count)], cosine, rng)
            handle.write(block.tobytes())


def bench_million(args: argparse.Namespace) -> None:
    import torch

    from ucl_cli.bank.nearest import CertifiedNearest
    from ucl_cli.bank.norms import largest_row_norm
    from ucl_cli.bridge.candidate_sources import CandidateSource, rank_sources
    from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings, method_named

    work = Path(args.workdir or tempfile.mkdtemp(prefix="ucl-bench-"))
    os.environ["UCL_HOME"] = str(work / "home")  # where the per-list table is saved
    rng = np.random.default_rng(0)
    (bank_a, bank_b), (centres_a, centres_b), assign = stand_in_bank(
        args.bank_size, args.dim, args.clusters, args.spread, rng
    )
    covered = np.unique(assign)  # concepts with at least one bank row
    uncovered = np.setdiff1d(np.arange(args.clusters), covered)
    path = work / "collection.npy"
    started = time.perf_counter()
    if not path.exists():
        write_collection(path, args.rows, centres_b, args.match, rng)
    vectors = np.load(path, mmap_mode="r")
    index = ivf(np.asarray(vectors), args.nlist, rng)
    log(f"collection of {args.rows:,} rows and its IVF{args.nlist} index: "
        f"{time.perf_counter() - started:.0f} s")
    norm = largest_row_norm(vectors)
    bridge = Bridge(
        BridgeSide(bank_a, args.scale_a, None, largest_row_norm(bank_a)),
        BridgeSide(bank_b, args.scale_b, None, largest_row_norm(bank_b)),
    )
    searched = CandidateSource(
        vectors,
        Path,
        "bench",
        CertifiedNearest(index, vectors, args.nprobe, None, norm),
        norm,
        identity=f"bench-{args.rows}-{args.dim}-{args.clusters}-{args.nlist}-{time.time()}",
    )
    streamed = CandidateSource(vectors, Path, "bench")
    print(
        f"collection {args.rows:,} x {args.dim} ({args.clusters} concepts, rows at cosine "
        f"~{args.match:g} to theirs, IVF{args.nlist}, nprobe {args.nprobe}); bank "
        f"{args.bank_size:,} rows covering {len(covered)} concepts (queries are about covered "
        f"concepts but the last); scales {args.scale_a:g}, {args.scale_b:g}; torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads; load average "
        f"{os.getloadavg()[0]:.2f} before"
    )
    # Apart: the one-off scan of the IVF lists (`ucl index` saves it with a collection) and the
    # per-list table of this bank and collection (saved by the first topk query).
    started = time.perf_counter()
    rank_sources(
        method_named("topk"), bridge, near(centres_a[covered[:1]], args.match, rng), [searched],
        ScoringSettings(device=args.device), 10,
    )
    print(f"one-off, first topk query (IVF scan + per-list table): "
          f"{time.perf_counter() - started:.1f} s\n")
    print("| queries | lse (streamed) | topk (index) | lse / topk | top 10 certified | "
          "equal to exact top 10 |")
    print("|---|---|---|---|---|---|")
    settings = ScoringSettings(device=args.device)
    runs = [(str(count), rng.choice(covered, size=count)) for count in args.queries]
    if len(uncovered):
        runs.append(("1, about a concept no bank row covers", uncovered[:1]))
    for label, concepts in runs:
        queries = near(centres_a[concepts], args.match, rng)
        t_topk, approx = best_of(
            lambda q=queries: rank_sources(
                method_named("topk"), bridge, q, [searched], settings, 10
            ),
            args.repeats,
        )
        t_lse, exact = best_of(
            lambda q=queries: rank_sources(
                method_named("lse"), bridge, q, [streamed], settings, 10
            ),
            1,
        )
        certified = bool(approx.certified.all())
        same = equal_to_exact(bridge, queries, vectors, approx.row, exact.row)
        print(
            f"| {label} | {t_lse:.1f} s | {t_topk:.2f} s | {t_lse / t_topk:.1f}x | "
            f"{certified} | {same} |"
        )
    size = vectors.nbytes
    peak = measure_peak(path, args)
    print(
        f"\nlse peak extra memory (child process, resident set incl. mapped pages read): "
        f"{peak / 2**20:,.0f} MiB for a {size / 2**20:,.0f} MiB collection "
        f"({peak / size:.2f}x); load average {os.getloadavg()[0]:.2f} after"
    )


def equal_to_exact(bridge, queries, vectors, found, streamed) -> bool:
    """Whether `found` [N, 10] is the top 10 by float64 scores of the rows either answer holds
    (a row neither holds scores below both answers' tenth). Exact ties may come in any order."""
    import torch

    from ucl_cli.bridge.collection_search import exact_scores

    for n in range(queries.shape[0]):
        rows = np.union1d(found[n].numpy(), streamed[n].numpy())
        query = torch.from_numpy(np.ascontiguousarray(queries[n : n + 1], dtype=np.float32))
        scores = exact_scores(bridge, query, np.asarray(vectors[rows]), "cpu")[0]
        by_row = dict(zip(rows.tolist(), scores.tolist(), strict=True))
        mine = [by_row[int(r)] for r in found[n]]
        if mine != sorted(mine, reverse=True):
            return False
        tenth = mine[-1]
        if any(by_row[int(r)] > tenth for r in rows if int(r) not in set(found[n].tolist())):
            return False
    return True


def measure_peak(path: Path, args: argparse.Namespace) -> int:
    """The resident-set growth of one streamed lse query in a fresh process."""
    code = f"""
import json, sys
import numpy as np
sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})
from bench_query import stand_in_bank
from ucl_cli.bank.norms import largest_row_norm
from ucl_cli.bridge.candidate_sources import CandidateSource, rank_sources
from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings, method_named
from pathlib import Path
rng = np.random.default_rng(0)
(a, b), (ca, cb), _ = stand_in_bank({args.bank_size}, {args.dim}, {args.clusters},
                                    {args.spread}, rng)
bridge = Bridge(BridgeSide(a, {args.scale_a}, None, 1.0), BridgeSide(b, {args.scale_b}, None, 1.0))
vectors = np.load({str(path)!r}, mmap_mode="r")
query = ca[:1].copy()
def resident(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
rank_sources(method_named("lse"), bridge, query, [CandidateSource(vectors[:2048], Path)],
             ScoringSettings(), 10)  # warm: torch's one-off allocations are not the stream's
with open("/proc/self/clear_refs", "w") as handle:
    handle.write("5")  # resets the peak resident set (VmHWM) to the current one
before = resident("VmRSS")
rank_sources(method_named("lse"), bridge, query, [CandidateSource(vectors, Path)],
             ScoringSettings(), 10)
print(json.dumps({{"peak": resident("VmHWM") - before}}))
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    return int(json.loads(out.strip().splitlines()[-1])["peak"])


# --- files against a collection of the same files --------------------------------------------


def bench_files(args: argparse.Namespace) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ucl-bench-"))
    os.environ["UCL_HOME"] = str(work / "home")
    import soundfile as sf
    from PIL import Image

    from ucl_cli.bank import IndexOptions, collect_file_items, index_items, load_bank, text_item
    from ucl_cli.bridge.pipeline import QueryOptions, search
    from ucl_cli.cache import open_cache

    audio, images = work / "audio", work / "images"
    if not audio.exists():
        audio.mkdir(parents=True)
        rng = np.random.default_rng(0)
        for i in range(args.files):
            samples = 0.1 * rng.standard_normal(1600).astype(np.float32)
            sf.write(audio / f"clip{i:05d}.wav", samples, 16_000)
        images.mkdir()
        for i in range(max(args.queries)):
            pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(images / f"photo{i:03d}.png")
        log(f"wrote {args.files:,} clips and {max(args.queries)} photos under {work}")
    query_model = HashEncoder("bench:image-text", ("image", "text"))
    candidate_model = HashEncoder("bench:text-audio", ("text", "audio"))
    bank_dir, collection_dir = work / "bank", work / "collection"
    if not bank_dir.exists():
        texts = (text_item(f"bridge text {m}") for m in range(args.bank_size))
        index_items(bank_dir, [query_model, candidate_model], texts, IndexOptions())
        files = collect_file_items([audio], "audio")
        index_items(collection_dir, [candidate_model], files, IndexOptions(modality="audio"))
    photos = sorted(images.iterdir())
    print(
        f"{args.files:,} audio files; bank of {args.bank_size:,} texts; lse; load average "
        f"{os.getloadavg()[0]:.2f} before"
    )
    print("| queries | --candidates DIR (warm cache) | --collection | ratio |")
    print("|---|---|---|---|")
    with load_bank(bank_dir, verify="on_read") as bank, load_bank(
        collection_dir, verify="on_read"
    ) as collection, open_cache() as cache:
        options = QueryOptions(top=10)
        encoders = [query_model, candidate_model]
        search(photos[:1], [audio], encoders=encoders, bank=bank, options=options, cache=cache)
        for count in args.queries:
            queries = photos[:count]
            t_files, by_files = best_of(
                lambda q=queries: search(
                    q, [audio], encoders=encoders, bank=bank, options=options, cache=cache
                ),
                args.repeats,
            )
            t_collection, by_collection = best_of(
                lambda q=queries: search(
                    q,
                    [],
                    encoders=encoders,
                    bank=bank,
                    options=options,
                    cache=cache,
                    collections=[collection],
                ),
                args.repeats,
            )
            same = [h.candidate.name for r in by_files.results for h in r.hits] == [
                h.candidate.name for r in by_collection.results for h in r.hits
            ]
            print(
                f"| {count} | {t_files * 1e3:.0f} ms | {t_collection * 1e3:.0f} ms | "
                f"{t_files / t_collection:.1f}x | "
                + ("same hits" if same else "HITS DIFFER")
                + " |"
            )
    print(f"load average {os.getloadavg()[0]:.2f} after")


class HashEncoder(Encoder):
    """Content-seeded random unit vectors: the embedding cost is not what is measured."""

    def __init__(self, key: str, modalities: tuple[str, ...]):
        self.key = key
        self.modalities = frozenset(Modality(m) for m in modalities)
        self.dim = 64
        self.logit_scale = 30.0
        self.preprocessing = {"sample_rate": 16_000, "image_size": 16}
        self.device = "cpu"

    def _embed_batch(self, modality, batch):
        rows = []
        for item in batch:
            raw = item.encode() if isinstance(item, str) else np.asarray(item).tobytes()
            seed = int.from_bytes(hashlib.sha256(raw).digest()[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dim))
        out = np.asarray(rows, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    million = sub.add_parser("million")
    million.add_argument("--rows", type=int, default=1_000_000)
    million.add_argument("--dim", type=int, default=512)
    million.add_argument("--clusters", type=int, default=1024)
    million.add_argument("--bank-size", type=int, default=1054)
    million.add_argument("--spread", type=float, default=0.8)
    million.add_argument("--match", type=float, default=0.8)
    million.add_argument("--scale-a", type=float, default=100.0)
    million.add_argument("--scale-b", type=float, default=33.0)
    million.add_argument("--nlist", type=int, default=1024)
    million.add_argument("--nprobe", type=int, default=8)
    million.add_argument("--queries", type=int, nargs="+", default=[1, 100])
    million.add_argument("--repeats", type=int, default=3)
    million.add_argument("--workdir")
    million.add_argument("--device", default="cpu", help="cpu or cuda (scoring; FAISS too if GPU)")
    files = sub.add_parser("files")
    files.add_argument("--files", type=int, default=10_000)
    files.add_argument("--bank-size", type=int, default=1054)
    files.add_argument("--queries", type=int, nargs="+", default=[1, 100])
    files.add_argument("--repeats", type=int, default=3)
    files.add_argument("--workdir")
    args = parser.parse_args()
    {"million": bench_million, "files": bench_files}[args.bench](args)


if __name__ == "__main__":
    main()
