"""Benchmark `ucl serve`: what HTTP adds to a warm search, and how it holds under 8 clients.

The case: a collection of 1,000 audio clips and a bridge bank of 1,054 texts (the built-in
bank's size), embedded by content-seeded 512-d stand-in encoders (`HashEncoder` of
bench_collections.py: embedding costs next to nothing, so what is measured is the pipeline
and the server, the least favourable case for the overhead ratio). The query is a 256x256 PNG.
The server runs in a child process (`ucl_cli.serve`'s app under uvicorn, as `ucl serve` runs
it), so its resident memory is its own.

overhead: the upload search over HTTP (one keep-alive client) against the same `search` call
          in this process with the same options and an embedding cache kept open (as the
          server keeps its own), called in turns, median of --repeats each (target <= 1.2x).
load:     --clients concurrent clients, --requests uploads in all: errors, p50 and p95
          latency, and the server's resident memory after the first 20 requests and after
          the run (target: within 10%).

    python scripts/bench_serve.py                     # both, about a minute on two cores
    python scripts/bench_serve.py --repeats 20 --requests 100
    python scripts/bench_serve.py --models DIR --repeats 10 --requests 40   # the README's case
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_collections import HashEncoder
from bench_query import log

DIM = 512
QUERY_MODEL, CANDIDATE_MODEL = "bench:image-text", "bench:text-audio"


def encoders(models: str | None = None) -> list:
    """Content-seeded stand-ins (embedding costs nothing), or with `models` (a hub cache of
    random-weight stand-ins of the default pair, scripts/make_test_models.py) the default
    architectures themselves: the README's case, where the query's embedding is real work."""
    if models is not None:
        from ucl_cli.commands._shared import default_model_keys
        from ucl_cli.encoders.registry import load_encoder

        os.environ.update(HF_HOME=str(models), HF_HUB_OFFLINE="1")
        return [load_encoder(key, device="cpu") for key in default_model_keys()]
    out = [
        HashEncoder(QUERY_MODEL, ("image", "text")),
        HashEncoder(CANDIDATE_MODEL, ("text", "audio")),
    ]
    for encoder in out:
        encoder.dim = DIM
    return out


def prepare(work: Path, candidates: int, bank_size: int, models: str | None = None) -> Path:
    """The bank, the collection and a query image under `work` (kept for the next run). With
    `models`, the bank's and the collection's rows are random unit vectors under the real
    models' records (what scoring costs does not depend on their values; embedding 1,000 clips
    with the audio tower on a CPU would take longer than the benchmark)."""
    import soundfile as sf
    from PIL import Image

    from ucl_cli.bank import IndexOptions, collect_file_items, index_items, text_item

    os.environ["UCL_HOME"] = str(work / "home")
    audio, query = work / "audio", work / "query.png"
    if not (work / "collection").exists():
        audio.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        for i in range(candidates):
            samples = 0.1 * rng.standard_normal(1600).astype(np.float32)
            sf.write(audio / f"clip{i:05d}.wav", samples, 16_000)
        pixels = rng.integers(0, 255, (256, 256, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(query)
        query_model, candidate_model = encoders(models)
        texts = [text_item(f"bridge text {m}") for m in range(bank_size)]
        files = collect_file_items([audio], "audio")
        if models is None:
            index_items(work / "bank", [query_model, candidate_model], texts, IndexOptions())
            options = IndexOptions(modality="audio")
            index_items(work / "collection", [candidate_model], files, options)
        else:
            from ucl_cli.bank import save_bank

            def unit(rows: int, dim: int) -> np.ndarray:
                out = rng.standard_normal((rows, dim)).astype(np.float32)
                return out / np.linalg.norm(out, axis=1, keepdims=True)

            pair = [query_model, candidate_model]
            save_bank(work / "bank", texts, [unit(bank_size, e.dim) for e in pair], pair).close()
            clips = list(files)
            rows = [unit(len(clips), candidate_model.dim)]
            save_bank(work / "collection", clips, rows, [candidate_model], modality="audio").close()
        log(f"wrote {candidates:,} clips, a bank of {bank_size:,} texts and a query under {work}")
    return query


def load(work: Path, models: str | None = None):
    from ucl_cli.bank import load_bank
    from ucl_cli.serve.state import Served

    bank = load_bank(work / "bank", verify="on_read")
    collection = load_bank(work / "collection", verify="on_read")
    return Served.of(encoders(models), bank, [collection], device="cpu")


def serve(args: argparse.Namespace) -> None:
    """The child process: the app over the prepared state, as `ucl serve` runs it."""
    from ucl_cli.serve.app import create_app
    from ucl_cli.serve.server import run

    work = Path(args.workdir)
    os.environ["UCL_HOME"] = str(work / "home")
    run(create_app(load(work, args.models)), "127.0.0.1", args.port)


def resident_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(work: Path, port: int, models: str | None = None) -> subprocess.Popen:
    import httpx

    server_log = open(work / "server.log", "w")  # noqa: SIM115 (kept open for the child)
    child = subprocess.Popen(
        [sys.executable, __file__, "_serve", "--workdir", str(work), "--port", str(port)]
        + ([] if models is None else ["--models", str(models)]),
        stdout=server_log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise SystemExit(f"the server exited; see {work / 'server.log'}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/banks").status_code == 200:
                return child
        except httpx.TransportError:
            time.sleep(0.2)
    child.kill()
    raise SystemExit("the server did not start within 2 minutes")


def interleaved(first, second, repeats: int) -> tuple[float, float, object, object]:
    """Median milliseconds of `first` and of `second`, called in turns, and their last results."""
    times: tuple[list[float], list[float]] = ([], [])
    out: list[object] = [None, None]
    for _ in range(repeats):
        for k, fn in enumerate((first, second)):
            start = time.perf_counter()
            out[k] = fn()
            times[k].append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3, out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", nargs="?", default="all", choices=["all", "_serve"])
    parser.add_argument("--candidates", type=int, default=1000)
    parser.add_argument("--bank-size", type=int, default=1054)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--workdir")
    parser.add_argument("--port", type=int)
    parser.add_argument(
        "--models", help="hub cache of full-size stand-ins (scripts/make_test_models.py)"
    )
    args = parser.parse_args()
    if args.mode == "_serve":
        serve(args)
        return

    import httpx
    import torch

    from ucl_cli.bridge.methods import ScoringSettings
    from ucl_cli.bridge.pipeline import QueryOptions, search
    from ucl_cli.cache import open_cache
    from ucl_cli.output import hit_records

    load_start = os.getloadavg()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ucl-bench-serve-"))
    query = prepare(work, args.candidates, args.bank_size, args.models)
    body = query.read_bytes()
    port = free_port()
    child = start_server(work, port, args.models)
    url = f"http://127.0.0.1:{port}"
    try:
        served = load(work, args.models)
        options = QueryOptions(top=10, scoring=ScoringSettings(device="cpu"))
        collection = list(served.collections.values())

        cache = open_cache()  # kept open, as the server keeps its own

        fresh = iter(range(time.time_ns() % (1 << 40), 1 << 62))  # never an earlier run's

        def query_bytes() -> bytes:
            """The query image; with --models a new one each time (one pixel changed), so that
            its embedding is computed every time, as for a user's new photo (the README's case:
            else the cache answers it by content)."""
            if args.models is None:
                return body
            from io import BytesIO

            from PIL import Image

            image = Image.open(query).convert("RGB")
            n = next(fresh)
            for k in range(3):  # inside the models' centre crop, in three places
                xy = (64 + (n >> (8 * k)) % 128, 64 + k * 40)
                image.putpixel(xy, ((n >> k) % 251, (n >> 3) % 241, (n >> 5) % 239))
            out = BytesIO()
            image.save(out, format="PNG")
            return out.getvalue()

        def in_process():
            path = query
            if args.models is not None:
                path = work / "fresh.png"
                path.write_bytes(query_bytes())
            return search(
                [path],
                [],
                encoders=served.encoders,
                bank=served.bank,
                options=options,
                cache=cache,
                collections=collection,
            )

        def upload(client: httpx.Client) -> httpx.Response:
            return client.post("/api/search", files={"file": ("query.png", query_bytes())})

        with httpx.Client(base_url=url, timeout=120) as client:
            for _ in range(5):  # warm: cache rows, pages, the server's first requests
                in_process(), upload(client)
            # interleaved, so that a drift of the machine's speed falls on both alike
            direct_ms, http_ms, report, response = interleaved(
                in_process, lambda: upload(client), args.repeats
            )
            if args.models is not None:  # the same query both ways, for the comparison below
                report = search(
                    [query], [], encoders=served.encoders, bank=served.bank, options=options,
                    cache=cache, collections=collection,
                )  # fmt: skip
                response = client.post("/api/search", files={"file": ("query.png", body)})
        same = [
            {k: v for k, v in r.items() if k != "query"} for r in hit_records(report.results)
        ] == [
            {k: v for k, v in h.items() if k not in ("query", "row", "media")}
            for h in response.json()["hits"]
        ]

        latencies: list[float] = []
        statuses: list[int] = []
        clients = threading.local()  # one keep-alive client per worker thread, as 8 users

        def one(_: int) -> None:
            if not hasattr(clients, "client"):
                clients.client = httpx.Client(base_url=url, timeout=120)
            start = time.perf_counter()
            answer = upload(clients.client)
            latencies.append(time.perf_counter() - start)
            statuses.append(answer.status_code)

        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(one, range(20)))
            rss_early = resident_kb(child.pid)
            list(pool.map(one, range(args.requests - 20)))
        rss_late = resident_kb(child.pid)
        errors = sum(status != 200 for status in statuses)
    finally:
        child.terminate()
        child.wait(timeout=30)
    load_end = os.getloadavg()
    p50, p95 = (np.percentile(latencies, q) * 1e3 for q in (50, 95))
    print("$ python scripts/bench_serve.py " + " ".join(sys.argv[1:]))
    print(
        f"ucl serve, {args.candidates:,}-clip collection, bank of {args.bank_size:,} texts, "
        + (f"{DIM}-d stand-in encoders" if args.models is None else
           "the default models' architectures (random weights, CPU)")
        + f", 256x256 PNG query ({len(body) / 1e3:.0f} kB), lse top 10; "
        f"torch {torch.__version__}, {os.cpu_count()} CPUs"
    )
    print(f"load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}")
    print("| measure | value |")
    print("|---|---|")
    print(f"| in-process `search`, median of {args.repeats} | {direct_ms:.1f} ms |")
    print(f"| HTTP upload search, median of {args.repeats} | {http_ms:.1f} ms |")
    print(f"| HTTP / in-process | {http_ms / direct_ms:.2f}x (target <= 1.2x) |")
    print(f"| what HTTP adds (upload, form parsing, temporary file, JSON) | "
          f"{http_ms - direct_ms:.1f} ms |")
    print(f"| same hits over HTTP as in-process | {'yes' if same else 'NO'} |")
    print(
        f"| {args.clients} clients, {args.requests} requests: errors | {errors} |"
    )
    print(f"| latency p50 / p95 | {p50:.0f} ms / {p95:.0f} ms |")
    print(
        f"| server RSS after 20 requests / after {args.requests} | {rss_early / 1024:.0f} MiB / "
        f"{rss_late / 1024:.0f} MiB ({(rss_late - rss_early) / rss_early:+.1%}; target within "
        "10%) |"
    )
    print(f"load average at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")


if __name__ == "__main__":
    main()
