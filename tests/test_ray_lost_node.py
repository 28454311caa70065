"""A node lost mid-query (`--cluster`): its actors' shards are answered on the node left.

The specification: on a cluster of two nodes (started here with `ray start`, on this machine),
each holding one actor, killing the whole second node (its raylet, object store and workers)
while a query's calls are in flight leaves the result complete and equal to one process's:
Ray cannot restart the lost actor (no CPU is free on the node left), so its call stalls, and
the driver stops it and moves its shards to the living actor.

The cluster and its driver run in processes of their own (this file run as a script), so that
nothing of their Ray settings (authentication, temporary folder) stays in the test process.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROWS, SHARD_SIZE = 2000, 500


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def ray_node(*options: str, logs: Path, env: dict[str, str]) -> subprocess.Popen:
    """`ray start --block` in a session of its own: killing the session kills the node."""
    command = [str(Path(sys.executable).with_name("ray")), "start", "--block",
               "--node-ip-address", "127.0.0.1", "--num-cpus", "1", "--disable-usage-stats",
               *options]  # fmt: skip
    log = (logs / f"node{len(list(logs.iterdir()))}.log").open("w")
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def kill_node(node: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(node.pid, signal.SIGKILL)
    node.wait(timeout=30)


def test_a_node_lost_mid_query_leaves_the_result_complete(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed (pip install 'ucl-cli[dev]')")
    logs = tmp_path / "logs"
    logs.mkdir()
    # A test cluster on this machine only, with a Ray folder of its own (short: Ray's socket
    # paths must fit), so that the address it leaves behind when killed is never found later.
    sessions = Path(tempfile.mkdtemp(prefix="ucl-ray-"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    port = free_port()
    address = f"127.0.0.1:{port}"
    head = ray_node("--head", "--port", str(port), "--include-dashboard", "false",
                    "--temp-dir", str(sessions), logs=logs, env=env)  # fmt: skip
    second = None
    try:
        time.sleep(3)  # the head's GCS up before the second node joins
        second = ray_node("--address", address, logs=logs, env=env)
        driver = subprocess.run(
            [sys.executable, __file__, address, str(tmp_path), str(second.pid)],
            env={**env, "RAY_ADDRESS": address},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert driver.returncode == 0, driver.stdout + driver.stderr
        result = json.loads(driver.stdout.strip().splitlines()[-1])
    finally:
        for node in (second, head):
            if node is not None:
                kill_node(node)
        subprocess.run(["rm", "-rf", str(sessions)], check=False)
    assert result["nodes_before"] == 2
    assert result["equal_before"] and result["equal_after"]
    assert result["actors_after"] == 1  # the lost node's actor is gone, its shards moved
    assert result["shards_held_after"] == [0, 1, 2, 3]


def drive(address: str, workdir: Path, second_node: int) -> dict:
    """The driver's side (run as a script): the same query in one process and on the two
    nodes, before and while the second node is lost."""
    import ray
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from test_ray_query import on_cluster, scores_of
    from test_sharded_bank import MODELS, unit_rows

    from ucl_cli.bank import text_item
    from ucl_cli.bank.shards import save_sharded_bank

    rng = np.random.default_rng(13)
    items = [text_item(f"text {i}") for i in range(ROWS)]
    vectors = [unit_rows(rng, ROWS, 16), unit_rows(rng, ROWS, 12)]
    bank = save_sharded_bank(workdir / "sharded", items, vectors, MODELS, shard_size=SHARD_SIZE)
    queries, candidates = unit_rows(rng, 4, 16), unit_rows(rng, 300, 12)
    want = scores_of(bank, queries, candidates).values
    ray.init(address=address, log_to_driver=False)
    deadline = time.monotonic() + 60
    while ray.cluster_resources().get("CPU", 0) < 2:
        assert time.monotonic() < deadline, "the second node did not join"
        time.sleep(0.5)
    lost: list[bool] = []

    def lose_the_second_node(handles):
        if not lost:
            lost.append(True)
            os.killpg(second_node, signal.SIGKILL)

    def equal(scores) -> bool:
        return bool(torch.allclose(scores.values, want, rtol=1e-6, atol=1e-5))

    with on_cluster(bank, actors=2, stall_seconds=2.0) as held:
        scorer = held.scorer
        before = equal(scores_of(held, queries, candidates))
        # two nodes of one CPU each, two actors of one CPU each: one actor on each node
        nodes = [node for node in ray.nodes() if node["Alive"]]
        assert len(scorer.handles) == 2
        scorer.pool.on_dispatch = lose_the_second_node
        after = equal(scores_of(held, queries, candidates))
        result = {
            "nodes_before": len(nodes),
            "equal_before": before,
            "equal_after": after,
            "actors_after": len(scorer.handles),
            "shards_held_after": sorted(s for shards in scorer.held.values() for s in shards),
        }
    ray.shutdown()
    bank.close()
    return result


if __name__ == "__main__":
    print(json.dumps(drive(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))
