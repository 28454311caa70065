"""A node lost mid-query (`--cluster`): its actors' shards are answered on the node left.

The specification: on a cluster of two nodes (started here with `ray start`, on loopback),
each holding one actor, killing the whole second node (its raylet, object store and workers)
while a query's calls are in flight leaves the result complete and equal to one process's:
Ray cannot restart the lost actor (no CPU is free on the node left), so its call stalls, and
the driver stops it and moves its shards to the living actor.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from test_ray_query import assert_same, on_cluster, scores_of
from test_sharded_bank import MODELS, unit_rows

from ucl_cli.bank import text_item
from ucl_cli.bank.shards import save_sharded_bank

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_node(*options: str, temp: Path) -> subprocess.Popen:
    """`ray start --block` in a session of its own: killing the session kills the node."""
    command = [str(Path(sys.executable).with_name("ray")), "start", "--block",
               "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
               *options]  # fmt: skip
    log = (temp / f"node{len(list(temp.iterdir()))}.log").open("w")
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}  # a test cluster, on this machine only
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def kill_node(node: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    node.wait(timeout=30)


@pytest.fixture
def two_nodes(tmp_path, monkeypatch):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ucl-cli[dev]')")
    if ray.is_initialized():
        ray.shutdown()
    logs = tmp_path / "logs"
    logs.mkdir()
    port = free_port()
    # Its own Ray directory (short: Ray's socket paths must fit), so that the address this
    # cluster leaves behind when it is killed is never found by a later `ray.init`.
    sessions = Path(tempfile.mkdtemp(prefix="ucl-ray-"))
    head = ray_node("--head", "--port", str(port), "--include-dashboard", "false",
                    "--temp-dir", str(sessions), temp=logs)  # fmt: skip
    second = None
    try:
        address = f"127.0.0.1:{port}"
        monkeypatch.setenv("RAY_ADDRESS", address)
        monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
        time.sleep(3)  # the head's GCS up before the second node joins
        second = ray_node("--address", address, temp=logs)
        ray.init(address=address, log_to_driver=False)
        deadline = time.monotonic() + 60
        while ray.cluster_resources().get("CPU", 0) < 2:
            assert time.monotonic() < deadline, "the second node did not join"
            time.sleep(0.5)
        yield ray, second
    finally:
        ray.shutdown()
        for node in (second, head):
            if node is not None:
                kill_node(node)
        shutil.rmtree(sessions, ignore_errors=True)


def test_a_node_lost_mid_query_leaves_the_result_complete(two_nodes, tmp_path):
    ray, second = two_nodes
    rng = np.random.default_rng(13)
    items = [text_item(f"text {i}") for i in range(2000)]
    vectors = [unit_rows(rng, 2000, 16), unit_rows(rng, 2000, 12)]
    sharded = save_sharded_bank(tmp_path / "sharded", items, vectors, MODELS, shard_size=500)
    queries, candidates = unit_rows(rng, 4, 16), unit_rows(rng, 300, 12)
    want = scores_of(sharded, queries, candidates)
    lost = []

    def lose_the_second_node(handles):
        if not lost:
            lost.append(True)
            kill_node(second)

    with on_cluster(sharded, actors=2, stall_seconds=2.0) as bank:
        scorer = bank.scorer
        assert_same(scores_of(bank, queries, candidates), want)  # one actor on each node
        nodes = {ray.get(handle.pid.remote()) for handle in scorer.handles.values()}
        assert len(nodes) == 2
        scorer.pool.on_dispatch = lose_the_second_node
        assert_same(scores_of(bank, queries, candidates), want)
        assert len(scorer.handles) == 1  # the lost node's actor is gone, its shards moved
        assert sorted(s for held in scorer.held.values() for s in held) == [0, 1, 2, 3]
    sharded.close()
