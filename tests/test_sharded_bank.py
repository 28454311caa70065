"""Sharded banks: one bank stored as shards, each a complete bank, under one top-level manifest.

The specification: `ucl index --shard-size N` writes shards of at most N rows that `load_bank`
reads back as one bank with `Bank`'s interface; every query and eval over it gives the results
of the same rows stored unsharded (lse, direct, topk; planted models and random vectors); new
rows fill the last shard and then new ones; a listed shard is never modified, and a killed
writer leaves nothing half-written visible; a damaged shard is refused by name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import planted_backend as planted
import pytest
import torch
from test_query import BANK_TEXTS, IMAGE_TEXT, TEXT_AUDIO, expected_score, index_planted

from ucl_cli.bank import ModelRecord, load_bank, save_bank, text_item
from ucl_cli.bank.catalog import resolve_bank
from ucl_cli.bank.shards import ShardedBank, is_sharded, read_sharded_manifest, save_sharded_bank
from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings, method_named
from ucl_cli.cli import app
from ucl_cli.errors import BankError

MODELS = [
    ModelRecord("q", 16, 20.0, modalities=("image", "text")),
    ModelRecord("c", 12, 15.0, modalities=("text", "audio")),
]


def unit_rows(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture
def random_banks(tmp_path):
    """The same 1,000 random rows as one bank and as 4 shards (300, 300, 300, 100)."""
    rng = np.random.default_rng(7)
    items = [text_item(f"text {i}") for i in range(1000)]
    vectors = [unit_rows(rng, 1000, 16), unit_rows(rng, 1000, 12)]
    plain = save_bank(tmp_path / "plain", items, vectors, MODELS)
    sharded = save_sharded_bank(tmp_path / "sharded", items, vectors, MODELS, shard_size=300)
    yield plain, sharded, rng
    plain.close()
    sharded.close()


def bridge_of(bank) -> Bridge:
    return Bridge(
        BridgeSide(bank.vectors("q"), 20.0, bank.nearest("q"), bank.row_norm("q")),
        BridgeSide(bank.vectors("c"), 15.0, bank.nearest("c"), bank.row_norm("c")),
    )


def test_a_sharded_bank_reads_as_the_unsharded_bank(random_banks):
    plain, sharded, _ = random_banks
    assert isinstance(sharded, ShardedBank)
    assert [len(shard) for shard in sharded.shards] == [300, 300, 300, 100]
    assert len(sharded) == len(plain) == 1000
    for key in ("q", "c"):
        assert np.array_equal(sharded.vectors(key), plain.vectors(key))
        assert not sharded.vectors(key).flags.writeable
        assert sharded.row_norm(key) == plain.row_norm(key)
    for row in (0, 299, 300, 650, 999):
        assert sharded.item(row) == plain.item(row)
    assert list(sharded.items()) == list(plain.items())
    assert sharded.texts([5, 905]) == ["text 5", "text 905"]
    scores, rows = sharded.search("c", plain.vectors("c")[[3, 777]], 4)
    expected_scores, expected_rows = plain.search("c", plain.vectors("c")[[3, 777]], 4)
    assert np.array_equal(rows, expected_rows) and np.allclose(scores, expected_scores)
    with pytest.raises(IndexError):
        sharded.item(1000)
    # every shard is a complete bank on its own
    for record in sharded.manifest.shards:
        with load_bank(sharded.path / record.name) as shard:
            assert len(shard) == record.count


@pytest.mark.parametrize(
    ("method", "normalize"),
    [("lse", "none"), ("lse", "candidates"), ("topk", "none"), ("topk", "candidates"),
     ("direct", "none")],
)  # fmt: skip
def test_every_method_scores_a_sharded_bank_as_the_unsharded_one(random_banks, method, normalize):
    from ucl_cli.calibration import Calibration

    plain, sharded, rng = random_banks
    queries, candidates = unit_rows(rng, 3, 16), unit_rows(rng, 40, 12)
    if method == "direct":
        candidates = unit_rows(rng, 40, 16)
    calibration = Calibration(0.5, 0.7, normalize) if method != "direct" else Calibration()
    settings = ScoringSettings(force_direct=True, calibration=calibration)
    chosen = method_named(method)
    want = chosen.score(bridge_of(plain), queries, candidates, settings, 5)
    got = chosen.score(bridge_of(sharded), queries, candidates, settings, 5)
    assert torch.equal(got.values, want.values)
    assert torch.equal(got.order, want.order)
    if method == "topk":
        assert torch.equal(got.certified, want.certified)
        assert torch.equal(got.lower, want.lower) and torch.equal(got.upper, want.upper)


def index_sharded(runner, tmp_path, texts, bank, size, name="corpus.txt"):
    index_planted(runner, tmp_path / name, texts, bank, "--shard-size", str(size))


def query(runner, *args) -> list[dict]:
    result = runner.invoke(app, ["query", "--device", "cpu", "--format", "jsonl", *map(str, args)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.parametrize("method", ["lse", "topk"])
def test_queries_through_a_sharded_bank_match_the_unsharded_bank(
    plugin, runner, tmp_path, media_dir, method
):
    index_planted(runner, tmp_path / "plain.txt", BANK_TEXTS, "plain")
    index_sharded(runner, tmp_path, BANK_TEXTS, "sharded", 3)
    manifest = read_sharded_manifest(resolve_bank("sharded"))
    assert [shard.count for shard in manifest.shards] == [3, 3, 1]
    image = media_dir / "images" / "concept4.png"
    common = [image, "--candidates", media_dir / "audio", "-m", method, "-n", "0"]
    plain = query(runner, *common, "--bank", "plain", "--explain", "2")
    sharded = query(runner, *common, "--bank", "sharded", "--explain", "2")
    assert Path(sharded[0]["candidate"]).name == "concept4.wav"
    strip = ("bank",)
    assert [{k: v for k, v in h.items() if k not in strip} for h in sharded] == [
        {k: v for k, v in h.items() if k not in strip} for h in plain
    ]
    if method == "lse":
        for hit in sharded:
            same = Path(hit["candidate"]).name == "concept4.wav"
            assert hit["score"] == pytest.approx(expected_score(same), abs=1e-4)


def test_direct_through_a_sharded_bank(plugin, runner, tmp_path, media_dir):
    joint = ["--image-text-model", "planted:joint", "--text-audio-model", "planted:joint"]
    index_planted(runner, tmp_path / "c.txt", BANK_TEXTS, "sharded", "--shard-size", "2", *joint)
    hits = query(runner, media_dir / "images" / "concept2.png", "-c", media_dir / "audio",
                 "--bank", "sharded", "-m", "direct", "-n", "1")  # fmt: skip
    assert Path(hits[0]["candidate"]).name == "concept2.wav"
    assert hits[0]["score"] == pytest.approx(1.0)


def test_eval_over_a_sharded_bank_matches_the_unsharded_bank(plugin, runner, tmp_path, media_dir):
    index_planted(runner, tmp_path / "plain.txt", BANK_TEXTS, "plain")
    index_sharded(runner, tmp_path, BANK_TEXTS, "sharded", 2)
    pairs = tmp_path / "pairs.csv"
    rows = ["image,audio"] + [
        f"{media_dir}/images/concept{j}.png,{media_dir}/audio/concept{j}.wav"
        for j in range(planted.CONCEPTS)
    ]
    pairs.write_text("\n".join(rows) + "\n")
    reports = {}
    for bank in ("plain", "sharded"):
        out = tmp_path / f"{bank}.json"
        result = runner.invoke(app, ["eval", str(pairs), "--bank", bank, "--trials", "5",
                                     "--candidates", "3", "-m", "lse,topk", "--device", "cpu",
                                     "--out", str(out)])  # fmt: skip
        assert result.exit_code == 0, result.output
        reports[bank] = json.loads(out.read_text())["results"]
    assert reports["sharded"] == reports["plain"]


def test_new_rows_fill_the_last_shard_then_new_ones(plugin, runner, tmp_path, media_dir):
    index_sharded(runner, tmp_path, BANK_TEXTS[:4], "grown", 3, "a.txt")
    first = read_sharded_manifest(resolve_bank("grown"))
    assert [s.count for s in first.shards] == [3, 1]
    kept = first.shards[0]
    index_sharded(runner, tmp_path, BANK_TEXTS, "grown", 3, "b.txt")  # 3 new rows (4 repeats)
    grown = read_sharded_manifest(resolve_bank("grown"))
    assert [s.count for s in grown.shards] == [3, 3, 1]
    assert grown.shards[0] == kept  # a full shard is never rewritten
    assert grown.generation > first.generation
    on_disk = sorted(p.name for p in resolve_bank("grown").iterdir() if p.name.startswith("shard-"))
    assert on_disk == [s.name for s in grown.shards]  # the superseded last shard is gone
    with load_bank(resolve_bank("grown")) as bank:
        assert [item.text for item in bank.items()] == BANK_TEXTS
    hits = query(runner, media_dir / "images" / "concept5.png", "-c", media_dir / "audio",
                 "--bank", "grown", "-n", "1")  # fmt: skip
    assert hits[0]["score"] == pytest.approx(expected_score(True), abs=1e-4)


def test_banks_lists_the_shards(plugin, runner, tmp_path):
    index_sharded(runner, tmp_path, BANK_TEXTS, "sharded", 3)
    index_planted(runner, tmp_path / "plain.txt", BANK_TEXTS, "plain")
    result = runner.invoke(app, ["banks", "--format", "jsonl", "--verify"])
    assert result.exit_code == 0, result.output
    listed = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert listed["sharded"]["shards"] == 3 and listed["plain"]["shards"] is None
    assert listed["sharded"]["items"] == len(BANK_TEXTS)
    assert listed["sharded"]["verified"] == "checksums ok"
    table = runner.invoke(app, ["banks", "--format", "table"])
    assert "3 shards of up to 3 rows" in table.stdout


def test_an_unsharded_bank_is_not_sharded_by_accident(plugin, runner, tmp_path):
    index_planted(runner, tmp_path / "plain.txt", BANK_TEXTS, "plain")
    result = runner.invoke(app, ["index", str(tmp_path / "plain.txt"), "--bank", "plain",
                                 "--shard-size", "2", "--image-text-model", IMAGE_TEXT,
                                 "--text-audio-model", TEXT_AUDIO, "--device", "cpu"])  # fmt: skip
    assert result.exit_code == 1
    assert "not sharded" in result.output
    assert not is_sharded(resolve_bank("plain"))


def test_a_damaged_shard_is_refused_by_name(random_banks):
    _, sharded, _ = random_banks
    path, name = sharded.path, sharded.manifest.shards[2].name
    shard_manifest = path / name / "manifest.json"
    value = json.loads(shard_manifest.read_text())
    value["updated"] = "2000-01-01T00:00:00Z"  # any change to a listed shard
    shard_manifest.write_text(json.dumps(value))
    with pytest.raises(BankError, match=f"{name}/manifest.json has SHA-256"):
        load_bank(path)
    shard_manifest.unlink()
    with pytest.raises(BankError, match=name):
        load_bank(path)


WRITER = """
import os, sys, numpy as np
from ucl_cli.bank import ModelRecord, text_item
from ucl_cli.bank.shards import ShardedWriter
from ucl_cli.bank.writer import WriterOptions
models = [ModelRecord("q", 16, 20.0), ModelRecord("c", 12, 15.0)]
rng = np.random.default_rng(int(sys.argv[2]))
def rows(n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)
with ShardedWriter(sys.argv[1], models, WriterOptions(commit_seconds=0), 50) as writer:
    for start in range(int(sys.argv[2]), 10**6, 10):
        writer.add([text_item(f"t{start + i}") for i in range(10)], [rows(10, 16), rows(10, 12)])
        if writer.rows >= int(sys.argv[3]):
            print("staged", flush=True)
            os.kill(os.getpid(), 9)  # killed mid-shard: nothing half-written may show
"""


def test_a_killed_writer_leaves_only_published_shards_and_is_resumed(tmp_path):
    bank_dir = tmp_path / "killed"
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    run = subprocess.run([sys.executable, str(script), str(bank_dir), "0", "120"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert run.returncode == -signal.SIGKILL and "staged" in run.stdout
    with load_bank(bank_dir) as bank:  # the two full shards, published as they filled
        assert [len(shard) for shard in bank.shards] == [50, 50]
        assert len(bank) == 100
    pending = json.loads((bank_dir / "pending.json").read_text())
    assert pending["shard"] not in {s.name for s in read_sharded_manifest(bank_dir).shards}
    # the next writer resumes the killed one's pending shard, then publishes it
    from ucl_cli.bank.shards import ShardedWriter
    from ucl_cli.bank.writer import WriterOptions

    with ShardedWriter(bank_dir, MODELS, WriterOptions(), None) as writer:
        assert writer.recovered_rows == 20
        writer.publish()
    with load_bank(bank_dir) as bank:
        assert [len(shard) for shard in bank.shards] == [50, 50, 20]
        assert [item.text for item in bank.items()] == [f"t{i}" for i in range(120)]
    assert not (bank_dir / "pending.json").exists()
    assert sorted(p for p in os.listdir(bank_dir) if p.startswith("shard-")) == [
        s.name for s in read_sharded_manifest(bank_dir).shards
    ]
