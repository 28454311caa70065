"""`ucl serve`'s HTTP API, against a real uvicorn server on a loopback port.

The specification: a search over HTTP (an upload, or a served collection's row) returns the hits
`ucl_cli.bridge.search` returns in-process, in the CLI's JSON form; a hit's file streams by
collection and row only, with HTTP ranges; uploads over the limit get 413 and unreadable ones a
4xx naming the CLI's reason; concurrent requests all get the same answers; the page and the
OpenAPI schema are served; Ctrl-C stops `ucl serve` without a traceback.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import planted_backend as planted
import pytest
from test_collection_query import build_collection
from test_query import BANK_TEXTS, expected_score, index_planted
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="ucl serve needs the serve extra")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from rich.console import Console  # noqa: E402

from ucl_cli.bridge.methods import ScoringSettings  # noqa: E402
from ucl_cli.bridge.pipeline import QueryOptions, search  # noqa: E402
from ucl_cli.cli import app as cli  # noqa: E402
from ucl_cli.output import hit_records  # noqa: E402
from ucl_cli.serve.app import create_app  # noqa: E402
from ucl_cli.serve.server import exposure_warning  # noqa: E402
from ucl_cli.serve.state import SearchRequest, Served, load_served  # noqa: E402

TESTS = Path(__file__).resolve().parent


@contextlib.contextmanager
def running(app) -> Iterator[str]:
    """`app` under uvicorn in a background thread on a free loopback port; yields its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@pytest.fixture
def served(plugin, media_dir, tmp_path) -> Iterator[Served]:
    """The planted bridge bank, an audio collection `sfx` and an image collection `photos` of
    the planted media, loaded as `ucl serve --bank planted -C sfx -C photos` loads them."""
    index_planted(CliRunner(), tmp_path / "corpus.txt", BANK_TEXTS, "planted")
    build_collection("sfx", [media_dir / "audio"])
    build_collection("photos", [media_dir / "images"], modality="image")
    state = load_served(
        "planted",
        ["sfx", "photos"],
        image_text_model=None,
        text_audio_model=None,
        weights=[],
        device="cpu",
        allow_other_weights=False,
        no_calibration=False,
        use_cache=True,
        console=Console(file=io.StringIO()),
    )
    yield state
    state.close()


@pytest.fixture
def api(served) -> Iterator[httpx.Client]:
    with running(create_app(served)) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def upload(client, path: Path, **fields) -> httpx.Response:
    with open(path, "rb") as handle:
        files = {"file": (path.name, handle.read())}
    data = {key: str(value) for key, value in fields.items()}
    return client.post("/api/search", files=files, data=data)


def row_of(client, collection: str, name: str) -> int:
    listing = client.get(f"/api/collections/{collection}").json()
    [row] = [item["row"] for item in listing["items"] if Path(item["path"]).name == name]
    return row


# --- searching -------------------------------------------------------------------------------


def test_an_uploaded_image_ranks_the_audio_collection_planted_concept_first(api, media_dir):
    response = upload(api, media_dir / "images" / "concept3.png", top=3)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == {"name": "concept3.png", "modality": "image"}
    assert answer["candidate_modality"] == "audio" and answer["collections"] == ["sfx"]
    assert answer["candidates"] == planted.CONCEPTS and len(answer["hits"]) == 3
    best = answer["hits"][0]
    assert Path(best["candidate"]).name == "concept3.wav"
    assert best["score"] == pytest.approx(expected_score(True), abs=1e-4)
    assert best["collection"] == "sfx" and best["query"] == "concept3.png"
    assert best["media"] == f"/api/media/sfx/{best['row']}"
    assert [hit["rank"] for hit in answer["hits"]] == [1, 2, 3]


def test_an_uploaded_sound_ranks_the_image_collection(api, media_dir):
    response = upload(api, media_dir / "audio" / "concept4.wav", top=1)
    assert response.status_code == 200, response.text
    [best] = response.json()["hits"]
    assert Path(best["candidate"]).name == "concept4.png" and best["collection"] == "photos"


@pytest.mark.parametrize(("method", "explain"), [("lse", 3), ("topk", 0), ("caption", 0)])
def test_http_hits_are_the_in_process_search_hits(api, served, media_dir, method, explain):
    """The same library call, the same options: every field of every hit is equal."""
    image = media_dir / "images" / "concept2.png"
    response = upload(api, image, method=method, top=4, explain=explain)
    assert response.status_code == 200, response.text
    over_http = response.json()["hits"]

    report = search(
        [image],
        [],
        encoders=served.encoders,
        bank=served.bank,
        options=QueryOptions(
            method=method, top=4, explain=explain, scoring=ScoringSettings(device="cpu")
        ),
        collections=[served.collections["sfx"]],
    )
    in_process = list(hit_records(report.results))
    for hit in over_http:
        assert hit.pop("query") == "concept2.png"
        hit.pop("row"), hit.pop("media")
    for record in in_process:
        record.pop("query")
    assert over_http == in_process
    if explain:
        assert over_http[0]["bridge"][0]["text"] == "concept 2"
        assert over_http[0]["effective_sample_size"] >= 1.0


def test_a_collection_row_is_a_query(api, media_dir):
    row = row_of(api, "photos", "concept5.png")
    response = api.post("/api/search/item", json={"collection": "photos", "row": row, "top": 2})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"]["collection"] == "photos" and answer["query"]["row"] == row
    assert Path(answer["query"]["name"]).name == "concept5.png"
    assert Path(answer["hits"][0]["candidate"]).name == "concept5.wav"
    by_upload = upload(api, media_dir / "images" / "concept5.png", top=2).json()
    assert [h["score"] for h in answer["hits"]] == [h["score"] for h in by_upload["hits"]]


def test_a_query_may_name_the_collections_it_ranks(api, media_dir):
    """An image against the image collection: the same modality, ranked through the bank."""
    response = upload(api, media_dir / "images" / "concept1.png", top=1, collection="photos")
    assert response.status_code == 200, response.text
    [best] = response.json()["hits"]
    assert Path(best["candidate"]).name == "concept1.png"


def test_eight_concurrent_clients_each_get_their_own_answer(api, media_dir):
    """Uploads of every concept, images and sounds, 8 at a time: each answer is the one the
    same upload gets alone (no request sees another's file, cache row or result)."""
    files = [media_dir / "images" / f"concept{j}.png" for j in range(planted.CONCEPTS)]
    files += [media_dir / "audio" / f"concept{j}.wav" for j in range(planted.CONCEPTS)]
    alone = {path: upload(api, path, explain=2).json() for path in files}

    def one(n: int) -> tuple[Path, int, dict]:
        path = files[n % len(files)]
        response = upload(api, path, explain=2)
        return path, response.status_code, response.json()

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, range(36)))
    assert [status for _, status, _ in answers] == [200] * 36
    for path, _, answer in answers:
        assert answer == alone[path]
        assert Path(answer["hits"][0]["candidate"]).stem == path.stem


def test_uploads_leave_no_file_behind(api, media_dir, tmp_path, monkeypatch):
    spool = tmp_path / "spool"
    spool.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(spool))
    assert upload(api, media_dir / "images" / "concept0.png").status_code == 200
    assert upload(api, media_dir / "audio" / "concept0.wav").status_code == 200
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a picture")
    assert upload(api, bad).status_code == 422
    assert list(spool.iterdir()) == []


def test_uploads_leave_no_row_in_the_caches_memo_of_file_hashes(served, api, media_dir):
    """A server runs for weeks: its uploads' temporary paths are never seen again, so the
    cache's memo of file hashes does not keep them (their vectors stay, found by content)."""
    from ucl_cli.config import cache_path

    image = media_dir / "images" / "concept2.png"
    for _ in range(3):
        assert upload(api, image).status_code == 200
    served.scoring.submit(served._close_cache).result()  # the scoring thread's connection
    with closing(sqlite3.connect(cache_path())) as connection:
        paths = [row[0] for row in connection.execute("SELECT path FROM file_hashes")]
        vectors = connection.execute("SELECT COUNT(*) FROM embeddings").fetchone()[0]
    assert not any("ucl-serve-" in path for path in paths), paths
    assert vectors >= 1  # the upload's vector is cached: the second and third were not embedded


def test_the_cache_is_one_connection_kept_and_no_cache_keeps_none(served, media_dir):
    from ucl_cli.config import cache_path

    image = media_dir / "images" / "concept0.png"
    first = served.search_file(image, SearchRequest()).report
    kept = served._cache
    again = served.search_file(image, SearchRequest()).report
    assert served._cache is kept and again.cached == 1 and again.embedded == 0
    assert [h.score for h in again.results[0].hits] == [h.score for h in first.results[0].hits]

    served.scoring.submit(served._close_cache).result()
    cache_path().unlink()
    served.use_cache = False
    uncached = served.search_file(image, SearchRequest()).report
    assert served._cache is None and uncached.embedded == 1 and not cache_path().exists()
    assert [h.score for h in uncached.results[0].hits] == [h.score for h in first.results[0].hits]


# --- refusals --------------------------------------------------------------------------------


def test_an_unreadable_upload_is_named_with_the_clis_reason(api, media_dir, tmp_path):
    bad = tmp_path / "holiday.png"
    bad.write_text("this is not an image\n")
    response = upload(api, bad)
    assert response.status_code == 422
    error = response.json()
    assert error["error"] == f"holiday.png: {error['reason']}"
    assert str(tmp_path) not in error["error"]  # the upload's name, not where it was stored
    by_cli = CliRunner().invoke(
        cli, ["query", str(bad), "--collection", "sfx", "--bank", "planted", "--device", "cpu"]
    )
    assert by_cli.exit_code != 0 and error["reason"] in by_cli.output


def test_an_upload_over_the_limit_gets_413(served, media_dir):
    image = (media_dir / "images" / "concept0.png").read_bytes()
    with running(create_app(served, max_upload_bytes=2_000)) as url, httpx.Client(
        base_url=url
    ) as client:
        assert client.post("/api/search", files={"file": ("a.png", image)}).status_code == 200
        big = {"file": ("big.png", image + b"\0" * 5_000)}
        response = client.post("/api/search", files=big)
        assert response.status_code == 413
        assert "limit of 0.002 MB" in response.json()["error"]

        def chunks():  # no Content-Length: the body is counted as it arrives
            yield b'--cut\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n'
            yield b"Content-Type: image/png\r\n\r\n" + image
            yield b"\0" * 5_000 + b"\r\n--cut--\r\n"

        form = {"Content-Type": "multipart/form-data; boundary=cut"}
        streamed = client.post("/api/search", content=chunks(), headers=form)
        assert streamed.status_code == 413


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"method": "nearest"}, "unknown method 'nearest'"),
        ({"top": 0}, "top must be between 1 and"),
        ({"explain": -1}, "explain must be between 0 and"),
        ({"collection": "nope"}, "no collection named 'nope'"),
    ],
)
def test_bad_search_fields_are_refused_with_a_reason(api, media_dir, fields, says):
    response = upload(api, media_dir / "images" / "concept0.png", **fields)
    assert 400 <= response.status_code < 500
    assert says in response.json()["error"]


def test_a_page_elsewhere_cannot_rebind_its_name_to_the_server(api):
    """DNS rebinding: a request naming another host is refused by a loopback server."""
    assert api.get("/api/banks", headers={"Host": "attacker.example"}).status_code == 400
    assert api.get("/api/banks", headers={"Host": "localhost:8765"}).status_code == 200


def test_binding_beyond_loopback_is_warned_about():
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert exposure_warning(host) is None
    for host in ("0.0.0.0", "192.168.1.20", "::", "example.org"):
        assert "no authentication" in exposure_warning(host)


# --- media -----------------------------------------------------------------------------------


def test_a_hits_file_streams_with_ranges(api, media_dir):
    row = row_of(api, "sfx", "concept2.wav")
    data = (media_dir / "audio" / "concept2.wav").read_bytes()
    whole = api.get(f"/api/media/sfx/{row}")
    assert whole.status_code == 200 and whole.content == data
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.headers["content-type"].startswith("audio/")
    assert whole.headers["x-content-type-options"] == "nosniff"

    part = api.get(f"/api/media/sfx/{row}", headers={"Range": "bytes=10-19"})
    assert part.status_code == 206 and part.content == data[10:20]
    assert part.headers["content-range"] == f"bytes 10-19/{len(data)}"
    tail = api.get(f"/api/media/sfx/{row}", headers={"Range": "bytes=-8"})
    assert tail.status_code == 206 and tail.content == data[-8:]

    past = api.get(f"/api/media/sfx/{row}", headers={"Range": f"bytes={len(data) + 10}-"})
    assert past.status_code == 416
    assert past.headers["content-range"] == f"bytes */{len(data)}"


def test_media_is_served_only_for_rows_of_served_collections(api, media_dir, tmp_path):
    assert api.get("/api/media/sfx/999").status_code == 404
    assert "no row 999" in api.get("/api/media/sfx/999").json()["error"]
    assert api.get("/api/media/sfx/-1").status_code == 404
    assert api.get("/api/media/nope/0").status_code == 404
    assert api.get("/api/media/planted/0").status_code == 404  # the bridge bank is not served
    for sneaky in ("..%2F..%2Fetc%2Fpasswd/0", "..%2Fsfx/0", "sfx/..%2F..%2Fetc%2Fpasswd"):
        response = api.get(f"/api/media/{sneaky}")
        assert response.status_code in (404, 422), sneaky
        assert "root:" not in response.text


def test_a_file_gone_since_indexing_is_404(api, media_dir):
    row = row_of(api, "sfx", "concept1.wav")
    (media_dir / "audio" / "concept1.wav").unlink()
    response = api.get(f"/api/media/sfx/{row}")
    assert response.status_code == 404 and "gone" in response.json()["error"]


def test_a_sharded_collection_is_served_as_a_whole_one_is(served, media_dir, tmp_path):
    """The same files indexed as shards of 4 rows: the same hits, and each hit's media."""
    from ucl_cli.bank import IndexOptions, collect_file_items, index_items, load_bank
    from ucl_cli.bank.catalog import resolve_bank

    encoder = planted.PlantedEncoder("planted:text-audio", "cpu")
    files = collect_file_items([media_dir / "audio"], "audio")
    path = resolve_bank("shards")
    index_items(path, [encoder], files, IndexOptions(modality="audio", shard_size=4))
    sharded = Served.of(served.encoders, served.bank, [load_bank(path, verify="on_read")])
    image = media_dir / "images" / "concept5.png"
    with running(create_app(sharded)) as url, httpx.Client(base_url=url) as client:
        hits = upload(client, image, top=6).json()["hits"]
        for hit in hits:
            media = client.get(hit["media"])
            assert media.status_code == 200
            assert media.content == Path(hit["candidate"]).read_bytes()
    sharded.scoring.shutdown()
    whole = served.search_file(image, SearchRequest(top=6)).report.results[0].hits
    assert [(Path(h["candidate"]).name, h["score"]) for h in hits] == [
        (h.candidate.name, h.score) for h in whole
    ]


# --- what the server describes ---------------------------------------------------------------


def test_the_listing_names_the_bank_the_collections_and_the_limits(api):
    listing = api.get("/api/banks").json()
    assert listing["bank"]["name"] == "planted" and listing["bank"]["kind"] == "bridge"
    assert listing["bank"]["rows"] == len(BANK_TEXTS)
    assert {(c["name"], c["modality"], c["rows"]) for c in listing["collections"]} == {
        ("sfx", "audio", planted.CONCEPTS),
        ("photos", "image", planted.CONCEPTS),
    }
    assert "lse" in listing["methods"] and "topk" in listing["methods"]
    assert listing["limits"]["max_upload_bytes"] == 64_000_000
    rows = api.get("/api/collections/sfx", params={"offset": 4, "limit": 10}).json()
    assert [item["row"] for item in rows["items"]] == [4, 5]


def test_the_openapi_schema_and_the_page_are_served(api):
    schema = api.get("/openapi.json").json()
    for path in ("/api/search", "/api/search/item", "/api/media/{name}/{row}", "/api/banks"):
        assert path in schema["paths"], path
    page = api.get("/")
    assert page.status_code == 200 and 'name="viewport"' in page.text
    for text in [page.text, *(api.get(f"/static/{n}").text for n in ("app.js", "style.css"))]:
        assert text and "://" not in text  # nothing is loaded from elsewhere


# --- the command -----------------------------------------------------------------------------


def test_serve_needs_a_collection():
    result = CliRunner().invoke(cli, ["serve"])
    assert result.exit_code == 2 and "--collection" in result.output


def test_a_missing_collection_or_a_bridge_bank_is_refused_before_models_load(plugin, tmp_path):
    index_planted(CliRunner(), tmp_path / "corpus.txt", BANK_TEXTS, "planted")
    missing = CliRunner().invoke(cli, ["serve", "-C", "nope", "--bank", "planted"])
    assert missing.exit_code == 1 and "no bank at" in missing.output and "nope" in missing.output
    bridge = CliRunner().invoke(cli, ["serve", "-C", "planted", "--bank", "planted"])
    assert bridge.exit_code == 2 and "bank of texts" in bridge.output
    assert "--bank planted" in bridge.output


def test_without_the_extra_serve_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    result = CliRunner().invoke(cli, ["serve", "-C", "sfx"])
    assert result.exit_code == 1
    assert "needs uvicorn" in result.output and "pip install 'ucl-cli[serve]'" in result.output


def test_ctrl_c_stops_the_server_cleanly(served, plugin):
    """`ucl serve` in its own process: it answers, and SIGINT ends it without a traceback."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(plugin), str(TESTS)])}
    args = ["serve", "-C", "sfx", "--bank", "planted", "--device", "cpu", "--port", str(port)]
    process = subprocess.Popen(
        [sys.executable, "-m", "ucl_cli", *args],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(120, process.kill)  # a hung server fails the test, not the run
    watchdog.start()
    try:
        lines = []
        for line in process.stderr:
            lines.append(line)
            if "Uvicorn running" in line or "Application startup complete" in line:
                break
        assert "serving sfx (6 audio) through bank planted" in "".join(lines), lines
        listing = httpx.get(f"http://127.0.0.1:{port}/api/banks", timeout=30)
        assert listing.status_code == 200
        process.send_signal(signal.SIGINT)
        rest = process.stderr.read()
        assert process.wait(timeout=30) == 0
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
    assert "Traceback" not in rest and "Shutting down" in rest and "ucl: stopped" in rest
    assert json.loads(listing.text)["collections"][0]["name"] == "sfx"
