"""Benchmark `ucl query`, side by side in one process.

warm:  a query over 1,000 candidate clips whose embeddings are already cached, through the
       built-in AudioSet bank, with the default architectures (random-weight stand-ins from
       scripts/make_test_models.py). Reports the time of each stage and the ratio of the scoring
       to the one query embedding (target: under 5%).
topk:  `topk` against `lse` on a bank of 1,000,000 stand-in embeddings (items grouped in
       concepts, unit norm, an IVF index on the candidate side), 1 query and 1,000 candidates of
       which some share the query's concept: time ratio, whether the top 10 is certified,
       whether it equals the exact top 10, and whether the exact scores lie inside the bounds.

trial: one `ucl eval` trial (25 x 25 over a 48.6k bank of random vectors): lse and topk times.

checks: what the integrity checks add to the warm query (run `warm` first with the same
       --workdir): the whole CLI path (open the bank as `ucl query` does, checking each file it
       reads against the digest memo; search; the cache's per-vector checksums) with the checks on
       and off, alternating in one process, best of --repeats each.

    python scripts/bench_query.py warm --models /tmp/standins      # reuses stand-ins if there
    python scripts/bench_query.py topk --bank-size 1000000
    python scripts/bench_query.py trial
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def best_of(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- warm query ------------------------------------------------------------------------------


def bench_warm(args: argparse.Namespace) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ucl-bench-"))
    models = Path(args.models or work / "models")
    os.environ.update(HF_HOME=str(models), HF_HUB_OFFLINE="1", UCL_HOME=str(work / "home"))
    if not (models / "hub").is_dir():
        import subprocess

        log(f"writing random-weight stand-ins of the default models to {models}")
        subprocess.run([sys.executable, "scripts/make_test_models.py", str(models)], check=True)

    import soundfile as sf
    import torch
    from PIL import Image
    from skimage import data

    from ucl_cli import media
    from ucl_cli.bank import builtin_bank
    from ucl_cli.bridge import QueryOptions, search
    from ucl_cli.bridge.methods import Bridge, ScoringSettings
    from ucl_cli.bridge.scoring import lse_scores
    from ucl_cli.cache import CacheKey, EmbeddingCache, embed_files, encoder_digest
    from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO, load_encoder

    torch.set_num_threads(args.threads or torch.get_num_threads())
    clip = load_encoder(DEFAULT_IMAGE_TEXT)
    clap = load_encoder(DEFAULT_TEXT_AUDIO)
    start = time.perf_counter()
    bank = builtin_bank([clip, clap])
    log(f"built-in bank ({len(bank)} rows) ready in {time.perf_counter() - start:.1f} s")

    audio_dir = work / "audio"
    audio_dir.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(args.candidates):
        path = audio_dir / f"clip{i:04d}.wav"
        if not path.exists():
            sf.write(path, (0.1 * rng.standard_normal(12_000)).astype(np.float32), 48_000)
        paths.append(path)
    cache = EmbeddingCache()
    digest = encoder_digest(clap)  # the key embed_files uses: preprocessing, loader, weights
    hashed = cache.hash_files(paths)
    vectors = rng.standard_normal((len(paths), clap.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    cache.put_many(
        (CacheKey(hashed.digests[p], clap.key, digest, "audio"), v)
        for p, v in zip(paths, vectors, strict=True)
    )
    log(f"cache filled with {len(paths)} candidate embeddings")

    astronaut = data.astronaut()
    queries = []
    for i in range(args.repeats + 1):  # a new image each run, so the query is embedded each time
        image = astronaut.copy()
        image[0, 0, :] = (i, time.time_ns() % 251, os.getpid() % 251)  # new to the cache
        queries.append(work / f"query{i}.png")
        Image.fromarray(image).save(queries[-1])
    options = QueryOptions(top=10, scoring=ScoringSettings(device="cpu"))
    search([queries[-1]], [audio_dir], encoders=[clip, clap], bank=bank, options=options)  # warm-up

    runs = iter(queries)
    total, report = best_of(
        lambda: search(
            [next(runs)],
            [audio_dir],
            encoders=[clip, clap],
            bank=bank,
            options=options,
            cache=cache,
        ),
        args.repeats,
    )
    assert report.embedded == 1 and report.cached == len(paths), (report.embedded, report.cached)
    image = media.load_image(queries[0])
    embed, query_vector = best_of(lambda: clip.embed("image", [image]), args.repeats)
    lookup, cached = best_of(lambda: embed_files(clap, "audio", paths, cache), args.repeats)
    bridge = Bridge.of(bank, clip, clap)
    score, _ = best_of(
        lambda: lse_scores(bridge, query_vector, cached.vectors), max(args.repeats, 20)
    )
    print(
        f"warm query, {len(paths)} cached candidates, built-in bank of {len(bank)} rows, "
        f"default architectures (random weights), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print("| stage | time |")
    print("|---|---|")
    print(f"| whole `search()` (1 new query, everything else cached) | {total * 1e3:.1f} ms |")
    print(f"| query embedding alone (CLIP ViT-B-32 image tower) | {embed * 1e3:.1f} ms |")
    print(
        f"| candidate cache lookup ({len(paths)} files: stat, memo, SQLite) | "
        f"{lookup * 1e3:.1f} ms |"
    )
    print(f"| scoring (`lse` over the bank) | {score * 1e3:.2f} ms |")
    print(f"\nscoring / query embedding = {score / embed:.2%} (target < 5%)")


# --- topk against lse ------------------------------------------------------------------------


def noise_for_cosine(cosine: float, dim: int) -> float:
    """Per-coordinate noise sigma that leaves a unit vector at about `cosine` to where it was."""
    return float(np.sqrt((1.0 / cosine**2 - 1.0) / dim))


def stand_in_bank(rows: int, dim: int, clusters: int, spread: float, rng: np.random.Generator):
    """Two row-aligned unit-norm embeddings of the same items (one per model): each item belongs
    to one of `clusters` concepts and sits at cosine ~`spread` to its concept's centre."""
    assign = rng.integers(clusters, size=rows)
    sides, centres = [], []
    sigma = noise_for_cosine(spread, dim)
    for _ in range(2):
        centers = rng.standard_normal((clusters, dim)).astype(np.float32)
        centers /= np.linalg.norm(centers, axis=1, keepdims=True)
        out = np.empty((rows, dim), dtype=np.float32)
        for start in range(0, rows, 1 << 16):
            block = centers[assign[start : start + (1 << 16)]]
            block += sigma * rng.standard_normal(block.shape, dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start : start + len(block)] = block
        sides.append(out)
        centres.append(centers)
    return sides, centres, assign


def ivf(bank: np.ndarray, nlist: int, rng: np.random.Generator):
    import faiss

    index = faiss.index_factory(bank.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    sample = bank[np.sort(rng.choice(len(bank), size=min(len(bank), 40 * nlist), replace=False))]
    index.train(sample)
    index.add(bank)
    return index


def bench_topk(args: argparse.Namespace) -> None:
    import torch

    from ucl_cli.bank.nearest import DEFAULT_NPROBE, CertifiedNearest
    from ucl_cli.bank.norms import largest_row_norm
    from ucl_cli.bridge.methods import Bridge, BridgeSide
    from ucl_cli.bridge.scoring import lse_scores, topk_scores

    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    start = time.perf_counter()
    (bank_a, bank_b), (centres_a, centres_b), _ = stand_in_bank(
        args.bank_size, args.dim, args.clusters, args.spread, rng
    )
    index_b = ivf(bank_b, args.nlist, rng)
    log(f"stand-in bank and IVF index built in {time.perf_counter() - start:.0f} s")

    def near(centres: np.ndarray, cosine: float) -> np.ndarray:
        out = centres + noise_for_cosine(cosine, args.dim) * rng.standard_normal(
            centres.shape, dtype=np.float32
        )
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    # One query about concept 0; `relevant` candidates about the same concept, the rest about
    # random others: a retrieval where the answer is in the candidate set.
    query = near(centres_a[[0]], args.match)
    concepts = np.concatenate(
        [np.zeros(args.relevant, dtype=int), rng.integers(1, args.clusters, args.candidates)]
    )[: args.candidates]
    candidates = near(centres_b[concepts], args.match)
    scan_cache = Path(tempfile.mkdtemp(prefix="ucl-bench-")) / "scan.npz"
    nprobe = args.nprobe or DEFAULT_NPROBE

    # The largest row norms, which `ucl index` records in the manifest as it writes the rows.
    norm_a, norm_b = largest_row_norm(bank_a), largest_row_norm(bank_b)

    def sides() -> Bridge:
        """A fresh search object, as a new `ucl query` process has (the scan file persists)."""
        near_b = CertifiedNearest(index_b, bank_b, nprobe, scan_cache, norm_b)
        return Bridge(
            BridgeSide(bank_a, args.scale, None, norm_a),
            BridgeSide(bank_b, args.scale, near_b, norm_b),
        )

    def topk(bridge: Bridge):
        return topk_scores(bridge, query, candidates, top=10, max_nearest_rows=args.nearest_max)

    cold, _ = best_of(lambda: topk(sides()), 1)  # includes the one-off scan of the IVF lists
    saved, _ = best_of(lambda: topk(sides()), 3)  # a new process: the saved scan is loaded
    warm = sides()
    t_topk, approx = best_of(lambda: topk(warm), 3)
    t_lse, exact = best_of(lambda: lse_scores(warm, query, candidates), args.lse_repeats)
    leading = int(approx.certified.int().cumprod(dim=1).sum())
    same_top10 = torch.equal(approx.order[0, :10], exact.order[0, :10])
    inside = bool(
        ((approx.lower <= exact.values + 1e-3) & (exact.values <= approx.upper + 1e-3)).all()
    )
    width = float((approx.upper - approx.lower)[0, approx.order[0, :10]].max())
    print(
        f"topk vs lse: bank {args.bank_size:,} x dim {args.dim} ({args.clusters} concepts, "
        f"items at cosine ~{args.spread:g} to their concept; candidate side IVF{args.nlist}, "
        f"nprobe from {nprobe}), 1 query and {args.candidates} candidates at cosine "
        f"~{args.match:g} to their concept ({args.relevant} share the query's), scale "
        f"{args.scale:g}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print("| method | time | lse / this | note |")
    print("|---|---|---|---|")
    print(f"| lse (exact) | {t_lse * 1e3:.0f} ms | 1.0x | |")
    for name, seconds, note in (
        ("topk, warm (search object reused)", t_topk, f"certified leading ranks: {leading}"),
        ("topk, new process, saved IVF scan", saved, "what `ucl query` pays after its first run"),
        ("topk, first run ever (scans the IVF lists)", cold, "scan saved for later runs"),
    ):
        print(f"| {name} | {seconds * 1e3:.0f} ms | {t_lse / seconds:.1f}x | {note} |")
    print(
        f"\ntop 10 certified: {leading >= 10}; equal to the exact top 10: {same_top10}; "
        f"exact scores inside the bounds: {inside}; widest top-10 bound: {width:.3g} nats"
    )


# --- one `ucl eval` trial ------------------------------------------------------------------


def bench_trial(args: argparse.Namespace) -> None:
    """lse and topk on one eval-sized trial of random unit vectors over Flat indexes: the worst
    case for topk, whose bounds cannot certify anything there."""
    import faiss
    import torch

    from ucl_cli.bank.nearest import CertifiedNearest
    from ucl_cli.bridge.methods import Bridge, BridgeSide
    from ucl_cli.bridge.scoring import lse_scores, topk_scores

    rng = np.random.default_rng(0)

    def unit(rows: int) -> np.ndarray:
        x = rng.standard_normal((rows, args.dim)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    sides = []
    for scale in (100.0, 33.0):
        bank = unit(args.bank_size)
        index = faiss.IndexFlatIP(args.dim)
        index.add(bank)
        sides.append(BridgeSide(bank, scale, CertifiedNearest(index, bank)))
    queries, candidates = unit(args.trial_size), unit(args.trial_size)
    bridge = Bridge(*sides)
    t_lse, _ = best_of(lambda: lse_scores(bridge, queries, candidates), 3)
    t_topk, scores = best_of(lambda: topk_scores(bridge, queries, candidates, top=10), 3)
    leading = int(scores.certified.int().cumprod(dim=1).sum(dim=1).min())
    print(
        f"one trial, {args.trial_size} queries x {args.trial_size} candidates, random bank of "
        f"{args.bank_size:,} x {args.dim} (Flat), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads: lse {t_lse:.3f} s, topk {t_topk:.3f} s "
        f"(certified leading ranks: {leading})"
    )


def bench_checks(args: argparse.Namespace) -> None:
    import contextlib

    import torch
    from PIL import Image
    from skimage import data

    work = Path(args.workdir)
    os.environ.update(HF_HOME=str(args.models), HF_HUB_OFFLINE="1", UCL_HOME=str(work / "home"))
    import ucl_cli.bank.store as store
    import ucl_cli.cache as cache_module
    from ucl_cli.bank import builtin_bank_name, load_bank
    from ucl_cli.bridge import QueryOptions, ScoringSettings, search
    from ucl_cli.config import banks_dir
    from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO, load_encoder

    torch.set_num_threads(args.threads or torch.get_num_threads())
    encoders = [load_encoder(DEFAULT_IMAGE_TEXT), load_encoder(DEFAULT_TEXT_AUDIO)]
    bank_path = banks_dir() / builtin_bank_name(encoders)
    audio_dir = work / "audio"
    verified, verify_file = cache_module._verified, store._verify_file

    def unchecked_row(key, stored_dim, blob, checksum, dim):  # the reader before checksums
        if dim is not None and stored_dim != dim:
            return None
        return np.frombuffer(blob, dtype="<f4").astype(np.float32)

    @contextlib.contextmanager
    def checks(on: bool):
        if not on:
            cache_module._verified = unchecked_row
            store._verify_file = lambda *a, **k: None
        try:
            yield
        finally:
            cache_module._verified, store._verify_file = verified, verify_file

    astronaut = data.astronaut()
    counter = iter(range(10**6))

    def new_query() -> Path:
        image = astronaut.copy()
        image[0, 0, :] = (next(counter) % 251, time.time_ns() % 251, os.getpid() % 251)
        path = work / f"checks{image[0, 0, 0]}-{image[0, 0, 1]}.png"
        Image.fromarray(image).save(path)
        return path

    def query(on: bool) -> float:
        path = new_query()
        with checks(on):
            start = time.perf_counter()
            with load_bank(bank_path, verify="on_read") as bank, cache_module.open_cache() as cache:
                report = search(
                    [path],
                    [audio_dir],
                    encoders=encoders,
                    bank=bank,
                    options=QueryOptions(top=10, scoring=ScoringSettings(device="cpu")),
                    cache=cache,
                )
            elapsed = time.perf_counter() - start
        assert report.embedded == 1, report.embedded
        return elapsed

    query(True), query(False)  # warm-up
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for on in (True, False):
            times[on].append(query(on))
    on, off = min(times[True]), min(times[False])
    print(
        f"warm query with and without the integrity checks, best of {args.repeats} each, "
        f"alternating; load {os.getloadavg()[0]:.2f}"
    )
    print("| path | time |\n|---|---|")
    print(f"| open bank + search + cache, checks on | {on * 1e3:.1f} ms |")
    print(f"| the same, checks off | {off * 1e3:.1f} ms |")
    print(f"\nchecks add {on / off - 1:+.1%} (target: at most +5%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="which", required=True)
    warm = sub.add_parser("warm")
    warm.add_argument("--models", help="hub-cache folder with stand-ins (written if missing)")
    warm.add_argument("--workdir")
    warm.add_argument("--candidates", type=int, default=1000)
    warm.add_argument("--repeats", type=int, default=5)
    warm.add_argument("--threads", type=int)
    topk = sub.add_parser("topk")
    topk.add_argument("--bank-size", type=int, default=1_000_000)
    topk.add_argument("--dim", type=int, default=512)
    topk.add_argument("--clusters", type=int, default=4096)
    topk.add_argument("--spread", type=float, default=0.8, help="item cosine to its concept")
    topk.add_argument("--match", type=float, default=0.6, help="query/candidate cosine to theirs")
    topk.add_argument("--relevant", type=int, default=20, help="candidates of the query's concept")
    topk.add_argument("--lse-repeats", type=int, default=2)
    topk.add_argument("--threads", type=int)
    topk.add_argument("--nlist", type=int, default=1024)
    topk.add_argument("--nprobe", type=int, help="lists first visited (default: ucl's)")
    topk.add_argument("--candidates", type=int, default=1000)
    topk.add_argument("--scale", type=float, default=100.0)
    topk.add_argument("--nearest-max", type=int, default=4096)
    checks = sub.add_parser("checks")
    checks.add_argument("--models", required=True)
    checks.add_argument("--workdir", required=True)
    checks.add_argument("--repeats", type=int, default=15)
    checks.add_argument("--threads", type=int)
    trial = sub.add_parser("trial")
    trial.add_argument("--bank-size", type=int, default=48_600)
    trial.add_argument("--dim", type=int, default=512)
    trial.add_argument("--trial-size", type=int, default=25)
    args = parser.parse_args()
    benches = {"warm": bench_warm, "topk": bench_topk, "trial": bench_trial, "checks": bench_checks}
    benches[args.which](args)


if __name__ == "__main__":
    main()
