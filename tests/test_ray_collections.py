"""A collection's certified top N over its shards on Ray actors (`--cluster` with `topk`): each
actor searches its shards through their own indexes, and the driver's merge is the result of
one process over the whole collection, certified the same way.

Ray runs as a local cluster on loopback, started once for this module.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_collection_query import _bridge, _check_certificates, _clustered, _exact, _unit
from test_joined_nearest import MODEL, items
from test_query import BANK_TEXTS, IMAGE_TEXT, TEXT_AUDIO, index_planted
from test_ray_query import ray_cluster  # noqa: F401 (the module's local Ray cluster)
from typer.testing import CliRunner

from ucl_cli.bank.shards import save_sharded_bank
from ucl_cli.bridge.candidate_sources import collection_source, rank_sources
from ucl_cli.bridge.methods import ScoringSettings, method_named
from ucl_cli.cli import app

DIM = MODEL.dim


@pytest.fixture
def library(tmp_path):
    """6,000 clustered rows as 3 shards of 2,000 (each with its own `IVF8,Flat` index)."""
    rng = np.random.default_rng(5)
    centres = _unit(rng.standard_normal((12, DIM)))
    rows = _clustered(rng, 6000, centres, 0.05)
    collection = save_sharded_bank(
        tmp_path / "sfx", items(6000), [rows], [MODEL], shard_size=2000,
        modality="audio", faiss_index="IVF8,Flat",
    )  # fmt: skip
    bridge = _bridge(rng, 300, DIM, (100.0, 33.0), centres, 0.3)
    yield collection, rows, bridge, _clustered(rng, 5, centres, 0.3)
    collection.close()


def on_cluster(collection, **options):
    from ucl_cli.distributed.driver import ClusterScorer
    from ucl_cli.distributed.rows import ClusterBank

    return ClusterBank(collection, ClusterScorer(collection, "local", **options))


def top10(collection, bridge, queries):
    source = collection_source(collection, MODEL)
    return rank_sources(method_named("topk"), bridge, queries, [source], ScoringSettings(), 10)


@pytest.mark.parametrize("actors", [1, 2])
def test_actors_find_and_certify_the_top_of_one_process(ray_cluster, library, actors):  # noqa: F811
    collection, rows, bridge, queries = library
    here = top10(collection, bridge, queries)
    with on_cluster(collection, actors=actors) as held:
        there = top10(held, bridge, queries)
    assert torch.equal(there.row, here.row)
    assert torch.equal(there.certified, here.certified)
    assert _check_certificates(there, _exact(bridge, queries, rows), there.row.numpy(), "ray") == 50


def test_an_actor_killed_mid_search_still_gives_the_whole_certified_top(
    ray_cluster,  # noqa: F811
    library,
):
    collection, _, bridge, queries = library
    killed = []

    def kill_one(handles):
        if not killed:
            killed.append(next(iter(handles)))
            ray_cluster.kill(handles[killed[0]], no_restart=True)

    here = top10(collection, bridge, queries)
    with on_cluster(collection, actors=2, on_dispatch=kill_one) as held:
        there = top10(held, bridge, queries)
        assert held.scorer.reassigned, "the dead actor's shards were searched elsewhere"
    assert torch.equal(there.row, here.row) and bool(there.certified.all())


def test_cli_topk_over_a_collection_on_a_local_cluster_equals_the_in_process_query(
    ray_cluster,  # noqa: F811
    plugin,
    tmp_path,
    media_dir,
):
    runner = CliRunner()
    index_planted(runner, tmp_path / "corpus.txt", BANK_TEXTS, "planted")
    indexed = runner.invoke(
        app,
        ["index", "--modality", "audio", str(media_dir / "audio"), "--bank", "sfx",
         "--shard-size", "2", "--image-text-model", IMAGE_TEXT, "--text-audio-model", TEXT_AUDIO,
         "--device", "cpu"],
    )  # fmt: skip
    assert indexed.exit_code == 0, indexed.output
    image = str(media_dir / "images" / "concept4.png")
    args = ["query", image, "--collection", "sfx", "--bank", "planted", "-m", "topk",
            "--format", "jsonl", "--device", "cpu"]  # fmt: skip
    here = runner.invoke(app, args)
    there = runner.invoke(app, [*args, "--cluster", "local"])
    assert here.exit_code == 0 and there.exit_code == 0, there.output
    remote = [json.loads(line) for line in there.stdout.splitlines()]
    local = [json.loads(line) for line in here.stdout.splitlines()]
    # the leader is proven; the other concepts tie exactly, uncertified, in either order
    assert remote[0] == local[0] and remote[0]["certified"]
    assert remote[0]["candidate"].endswith("concept4.wav")
    assert not any(hit["certified"] for hit in remote[1:])
    assert sorted(hit["candidate"] for hit in remote) == sorted(hit["candidate"] for hit in local)
    assert [hit["score"] for hit in remote] == pytest.approx([hit["score"] for hit in local])
    assert "run in this process" not in " ".join(there.stderr.split())
