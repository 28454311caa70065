"""lse over a bank's shards on Ray actors (`--cluster`): the same scores as in one process.

The specification: for any shard layout and any number of actors, the combined partial sums
equal the single-process scores (to float64 rounding, cast to float32); an actor killed mid-query
has its shards moved to the others and the result is still complete and equal; a shard that
cannot be scored fails the whole query, naming the shard (no score over part of the bank).
Ray runs as a local cluster on loopback, started once for this module.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

import numpy as np
import pytest
import torch
from test_query import BANK_TEXTS, index_planted
from test_sharded_bank import MODELS, unit_rows
from typer.testing import CliRunner

from ucl_cli.bank import text_item
from ucl_cli.bank.shards import save_sharded_bank
from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings, method_named
from ucl_cli.calibration import Calibration
from ucl_cli.cli import app
from ucl_cli.distributed.cluster import cluster_spec
from ucl_cli.distributed.placement import place_shards, reassign
from ucl_cli.errors import UsageError


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ucl-cli[dev]')")
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture
def banks(tmp_path):
    """The same 2,000 random rows in 4 shards (600, 600, 600, 200), and query vectors."""
    rng = np.random.default_rng(11)
    items = [text_item(f"text {i}") for i in range(2000)]
    vectors = [unit_rows(rng, 2000, 16), unit_rows(rng, 2000, 12)]
    sharded = save_sharded_bank(tmp_path / "sharded", items, vectors, MODELS, shard_size=600)
    yield sharded, unit_rows(rng, 4, 16), unit_rows(rng, 300, 12)
    sharded.close()


def scores_of(bank, queries, candidates, calibration=Calibration()):
    bridge = Bridge(BridgeSide(bank.vectors("q"), 20.0), BridgeSide(bank.vectors("c"), 15.0))
    settings = ScoringSettings(calibration=calibration)
    return method_named("lse").score(bridge, queries, candidates, settings, 10)


def on_cluster(bank, **options):
    from ucl_cli.distributed.driver import ClusterScorer
    from ucl_cli.distributed.rows import ClusterBank

    return ClusterBank(bank, ClusterScorer(bank, "local", **options))


def assert_same(got, want):
    assert torch.allclose(got.values, want.values, rtol=1e-6, atol=1e-5)
    assert got.values.dtype == want.values.dtype == torch.float32


def test_shards_are_placed_by_rows_and_moved_to_the_least_loaded():
    assert place_shards([600, 600, 600, 200], 2) == [[0, 2], [1, 3]]
    assert place_shards([600, 600, 600, 200], 3) == [[0, 3], [1], [2]]
    assert place_shards([5, 5], 4) == [[0], [1], [], []]
    assert reassign([0, 3], [600, 600, 600, 200], {1: 600, 2: 600}) == {1: [0], 2: [3]}


def test_cluster_names_are_checked_before_anything_starts(monkeypatch):
    monkeypatch.delenv("UCL_CLUSTER", raising=False)
    assert cluster_spec(None) is None
    assert cluster_spec("local") == "local" and cluster_spec("ray://head:10001")
    monkeypatch.setenv("UCL_CLUSTER", "auto")
    assert cluster_spec(None) == "auto"
    with pytest.raises(UsageError, match="UCL_CLUSTER 'http://x'"):
        monkeypatch.setenv("UCL_CLUSTER", "http://x")
        cluster_spec(None)


def test_an_actor_killed_mid_query_leaves_the_result_complete(ray_cluster, banks):
    sharded, queries, candidates = banks
    want = scores_of(sharded, queries, candidates)
    killed = []

    def kill_one(handles):
        if not killed:  # the first round only: its calls are in flight
            killed.append(next(iter(handles)))
            ray_cluster.kill(handles[killed[0]], no_restart=True)

    with on_cluster(sharded, actors=2, on_dispatch=kill_one) as bank:
        got = scores_of(bank, queries, candidates)
        assert_same(got, want)
        scorer = bank.scorer
        assert killed[0] not in scorer.handles  # the dead actor's shards went to the other
        assert sorted(s for held in scorer.held.values() for s in held) == [0, 1, 2, 3]
        again = scores_of(bank, queries, candidates)  # the survivor now holds every shard
        assert_same(again, want)


def test_a_stalled_actor_is_stopped_and_its_shards_answered_elsewhere(ray_cluster, banks):
    """A hung actor (here: its process stopped mid-call, as a lost node's actor would hang
    while Ray waits to restart it) holds its shards' answers back: after the stall limit the
    driver stops it and asks the other actor; the result is complete and equal."""
    sharded, queries, candidates = banks
    want = scores_of(sharded, queries, candidates)
    stopped = []
    with on_cluster(sharded, actors=2, stall_seconds=1.0) as bank:
        scores_of(bank, queries, candidates)  # every actor started and answered once
        scorer = bank.scorer
        pids = {a: ray_cluster.get(handle.pid.remote()) for a, handle in scorer.handles.items()}

        def stop_one(handles):
            if not stopped:  # the first round only: its calls are in flight
                stopped.append(next(iter(handles)))
                os.kill(pids[stopped[0]], signal.SIGSTOP)

        scorer.pool.on_dispatch = stop_one
        try:
            got = scores_of(bank, queries, candidates)
        finally:
            for pid in pids.values():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)
        assert_same(got, want)
        assert scorer.stalled == stopped and stopped[0] not in scorer.handles
        assert sorted(s for held in scorer.held.values() for s in held) == [0, 1, 2, 3]


def test_cli_query_on_a_local_cluster_equals_the_in_process_query(
    ray_cluster, plugin, tmp_path, media_dir
):
    runner = CliRunner()
    index_planted(runner, tmp_path / "corpus.txt", BANK_TEXTS, "sharded", "--shard-size", "2")
    args = ["query", str(media_dir / "images" / "concept3.png"), "-c", str(media_dir / "audio"),
            "--bank", "sharded", "--device", "cpu", "--format", "jsonl", "-n", "0"]  # fmt: skip
    here = runner.invoke(app, args)
    there = runner.invoke(app, [*args, "--cluster", "local"])
    assert here.exit_code == 0 and there.exit_code == 0, there.output
    assert "(on Ray cluster local)" in there.stderr
    assert_same_hits(there.stdout, here.stdout)


def assert_same_hits(far_lines, near_lines):
    near = [json.loads(line) for line in near_lines.splitlines()]
    far = [json.loads(line) for line in far_lines.splitlines()]
    assert far[0]["candidate"] == near[0]["candidate"]  # the others tie exactly (planted)
    by_file = {hit["candidate"]: hit["score"] for hit in near}
    assert {hit["candidate"]: hit["score"] for hit in far} == pytest.approx(by_file, abs=1e-5)
    for got, want in zip(far, near, strict=True):
        # the heaviest row, then the weights (the planted bank's other rows tie exactly)
        got_bridge, want_bridge = got.get("bridge", []), want.get("bridge", [])
        assert [(b["row"], b["text"]) for b in got_bridge[:1]] == [
            (b["row"], b["text"]) for b in want_bridge[:1]
        ]
        assert [b["weight"] for b in got_bridge] == pytest.approx(
            [b["weight"] for b in want_bridge], rel=1e-4, abs=1e-7
        )
        if "effective_sample_size" in want:
            assert got["effective_sample_size"] == pytest.approx(
                want["effective_sample_size"], rel=1e-4
            )
        assert got.get("caption") == want.get("caption")
    return far


@pytest.mark.parametrize("method", ["lse", "topk", "caption"])
def test_every_method_and_explain_run_on_the_actors_and_the_driver_reads_no_bank_row(
    ray_cluster, plugin, tmp_path, media_dir, monkeypatch, method
):
    from ucl_cli.distributed.rows import RemoteRows

    runner = CliRunner()
    index_planted(runner, tmp_path / "corpus.txt", BANK_TEXTS, "sharded", "--shard-size", "3")
    args = ["query", str(media_dir / "images" / "concept2.png"), "-c", str(media_dir / "audio"),
            "--bank", "sharded", "--device", "cpu", "--format", "jsonl", "-n", "3",
            "--explain", "2", "-m", method]  # fmt: skip
    here = runner.invoke(app, args)

    def refuse(self):
        raise AssertionError("the driver read a bank row the cluster holds")

    monkeypatch.setattr(RemoteRows, "local", refuse)
    there = runner.invoke(app, [*args, "--cluster", "local"])
    assert here.exit_code == 0 and there.exit_code == 0, there.output
    assert "in this process" not in there.stderr
    far = assert_same_hits(there.stdout, here.stdout)
    if method != "caption":
        assert far[0]["bridge"][0]["text"] == "concept 2"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("actors", "normalize"), [(1, "candidates"), (2, "none"), (3, "candidates")]
)
def test_any_number_of_actors_gives_the_in_process_scores(ray_cluster, banks, actors, normalize):
    sharded, queries, candidates = banks
    calibration = Calibration(0.5, 0.8, normalize)
    want = scores_of(sharded, queries, candidates, calibration)
    with on_cluster(sharded, actors=actors) as bank:
        assert_same(scores_of(bank, queries, candidates, calibration), want)
        assert len(bank.scorer.handles) == min(actors, 4)


@pytest.mark.slow
def test_a_shard_that_cannot_be_scored_fails_the_query_by_name(ray_cluster, banks):
    from ucl_cli.distributed.driver import ClusterError

    sharded, queries, candidates = banks
    damaged = sharded.manifest.shards[1].name
    # after the driver opened the bank, before any actor opens its shards (actors open theirs
    # as they start, so damage done later may come after they have read it)
    (sharded.path / damaged / "manifest.json").write_text("{}")
    with on_cluster(sharded, actors=2) as bank, pytest.raises(ClusterError, match=damaged):
        scores_of(bank, queries, candidates)


@pytest.mark.slow
def test_cli_eval_on_a_local_cluster_equals_the_in_process_eval(
    ray_cluster, plugin, tmp_path, media_dir
):
    import planted_backend as planted

    runner = CliRunner()
    index_planted(runner, tmp_path / "corpus.txt", BANK_TEXTS, "sharded", "--shard-size", "3")
    pairs = tmp_path / "pairs.csv"
    lines = ["image,audio"] + [
        f"{media_dir}/images/concept{j}.png,{media_dir}/audio/concept{j}.wav"
        for j in range(planted.CONCEPTS)
    ]
    pairs.write_text("\n".join(lines) + "\n")
    reports = []
    for extra in ([], ["--cluster", "local"]):
        out = tmp_path / f"eval{len(extra)}.json"
        result = runner.invoke(app, ["eval", str(pairs), "--bank", "sharded",
                                     "-m", "lse,caption,topk", "--bank-sizes", "4",
                                     "--trials", "5", "--candidates", "3", "--device", "cpu",
                                     "--out", str(out), *extra])  # fmt: skip
        assert result.exit_code == 0, result.output
        reports.append(json.loads(out.read_text())["results"])
    assert reports[0] == reports[1]  # every method at every bank size, on the actors
