"""Distributed indexing (`ucl index --cluster`): shards embedded and written by Ray actors.

The specification: a run on a cluster leaves the bank the single-process `ucl index
--shard-size` leaves (the same items in the same order, the same shards, the same vectors to
float tolerance, the same model records), appending included; a run stopped after some shards
lists only whole shards, and the next run embeds only what no listed shard holds; an actor that
dies mid-shard is restarted and its shard written again, whole. Ray runs as a local cluster on
loopback, started once for this module; the models are deterministic fakes that log every item
they embed to a file (actors are other processes), or the stand-in CLIP and CLAP towers.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import HashEncoder
from PIL import Image
from typer.testing import CliRunner

import ucl_cli.commands._shared as shared
from ucl_cli.bank import IndexOptions, index_items, load_bank, text_item
from ucl_cli.bank.file_items import collect_file_items
from ucl_cli.bank.shards import SHARD_NAME, read_sharded_manifest
from ucl_cli.cli import app
from ucl_cli.config import banks_dir
from ucl_cli.distributed.indexing import PLANS_FOLDER, ClusterIndexOptions, index_on_cluster
from ucl_cli.errors import InputFileError, UsageError

TEXTS = [f"a sound number {i}" for i in range(23)] + ["a sound number 4"]  # one repeat
# Ray Data's own settings warn about themselves when its context is copied to the actors.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray.data.context")


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'ucl-cli[dev]')")
    pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'ray[data]')")
    import fakes

    # Actors unpickle the test encoders; this folder is not on their path.
    for module in (fakes, sys.modules[__name__]):
        ray.cloudpickle.register_pickle_by_value(module)
    ray.init(address="local", num_cpus=2, include_dashboard=False,
             _node_ip_address="127.0.0.1", log_to_driver=False)  # fmt: skip
    yield ray
    ray.shutdown()


class LoggedEncoder(HashEncoder):
    """A HashEncoder that appends what it embeds to a log file (one line an item), and can die
    (the whole actor process) at its `crash_at`-th batch once, marked by a file."""

    def __init__(self, key: str, dim: int, log: str, crash_at: int = 0):
        super().__init__(key=key, dim=dim)
        self.log, self.crash_at = log, crash_at

    def _embed_batch(self, modality, batch):
        if self.crash_at and len(self.calls) + 1 == self.crash_at:
            marker = Path(self.log + ".crashed")
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os._exit(1)
        with open(self.log, "a", encoding="utf-8") as handle:
            handle.writelines(
                f"{item if isinstance(item, str) else modality.value}\n" for item in batch
            )
        return super()._embed_batch(modality, batch)


class Models:
    """The actors' model source: two logged fakes (what `RegistryModels` is for the CLI)."""

    def __init__(self, log: Path, crash_at: int = 0):
        self.log, self.crash_at = str(log), crash_at

    def load(self, device: str) -> list[HashEncoder]:
        return [
            LoggedEncoder("fake:clip", 16, self.log + ".clip", self.crash_at),
            LoggedEncoder("fake:clap", 8, self.log + ".clap"),
        ]


def embedded(log: Path) -> list[str]:
    """What the first model embedded, over every process, in no particular order."""
    path = Path(str(log) + ".clip")
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def on_cluster(bank, items, log, shard_size=5, crash_at=0, **cluster):
    models = Models(log, crash_at)
    options = IndexOptions(shard_size=shard_size, batch_size=3)
    here = Models(log.with_suffix(".driver")).load("cpu")  # records only: never embeds
    return index_on_cluster(
        bank, here, models, items, options, "local", cluster=ClusterIndexOptions(**cluster)
    )


def in_process(bank, items, shard_size=5):
    encoders = [HashEncoder("fake:clip", dim=16), HashEncoder("fake:clap", dim=8)]
    return index_items(bank, encoders, items, IndexOptions(shard_size=shard_size, batch_size=3))


def assert_same_bank(got: Path, want: Path, *, same_order: bool = True) -> None:
    with load_bank(got) as a, load_bank(want) as b:
        assert a.manifest.models == b.manifest.models
        if same_order:
            assert [s.count for s in a.manifest.shards] == [s.count for s in b.manifest.shards]
            assert list(a.items()) == list(b.items())
            for model in ("fake:clip", "fake:clap"):
                np.testing.assert_allclose(a.vectors(model), b.vectors(model), atol=1e-6)
            return
        assert sorted(a.items(), key=lambda i: i.key) == sorted(b.items(), key=lambda i: i.key)
        for model in ("fake:clip", "fake:clap"):
            mine = dict(zip((i.key for i in a.items()), a.vectors(model), strict=True))
            theirs = dict(zip((i.key for i in b.items()), b.vectors(model), strict=True))
            for key, row in theirs.items():
                np.testing.assert_allclose(mine[key], row, atol=1e-6)


def shard_dirs(bank: Path) -> set[str]:
    return {p.name for p in bank.iterdir() if SHARD_NAME.match(p.name)}


def test_a_cluster_run_leaves_the_bank_one_process_leaves(ray_cluster, tmp_path):
    items = [text_item(text) for text in TEXTS]
    report = on_cluster(tmp_path / "ray", items, tmp_path / "log")
    in_process(tmp_path / "one", items)
    assert (report.added, report.repeated, report.total) == (23, 1, 23)
    assert_same_bank(tmp_path / "ray", tmp_path / "one")
    assert sorted(embedded(tmp_path / "log")) == sorted(set(TEXTS))  # each text once
    manifest = read_sharded_manifest(tmp_path / "ray")
    assert [s.count for s in manifest.shards] == [5, 5, 5, 5, 3]
    assert shard_dirs(tmp_path / "ray") == {s.name for s in manifest.shards}
    assert not (tmp_path / "ray" / PLANS_FOLDER).exists()  # each shard's item list, removed

    # Appending fills the last shard first, as one process does; only the new texts are embedded.
    more = items + [text_item(f"another sound {i}") for i in range(9)]
    (tmp_path / "log.clip").unlink()
    report = on_cluster(tmp_path / "ray", more, tmp_path / "log")
    in_process(tmp_path / "one", more)
    assert (report.added, report.duplicates, report.total) == (9, 24, 32)
    assert sorted(embedded(tmp_path / "log")) == sorted(f"another sound {i}" for i in range(9))
    assert_same_bank(tmp_path / "ray", tmp_path / "one")
    assert [s.count for s in read_sharded_manifest(tmp_path / "ray").shards] == [5] * 6 + [2]
    assert len(shard_dirs(tmp_path / "ray")) == 7  # the shard the fill replaced is gone


@pytest.mark.slow
def test_a_run_stopped_after_two_shards_resumes_without_embedding_them(ray_cluster, tmp_path):
    items = [text_item(f"a long caption {i}") for i in range(40)]
    bank = tmp_path / "ray"
    published = []

    def stop_after_two(record):
        published.append(record.name)
        if len(published) == 2:
            raise RuntimeError("the driver dies")

    with pytest.raises(RuntimeError, match="the driver dies"):
        on_cluster(bank, items, tmp_path / "log", shard_size=4, on_shard=stop_after_two)
    stale = bank / PLANS_FOLDER / "000000.jsonl"  # as a killed driver would leave it
    stale.parent.mkdir()
    stale.write_text("not an item\n")
    left = shard_dirs(bank)
    time.sleep(1.0)
    assert shard_dirs(bank) == left  # the dataset stopped: nothing is written on
    with load_bank(bank, verify="now") as half:  # whole, checked shards only
        assert [shard.name for shard in half.manifest.shards] == sorted(published)
        assert len(half) == 8
        kept = {item.text for item in half.items()}
    first = embedded(tmp_path / "log")
    assert kept <= set(first)

    (tmp_path / "log.clip").unlink()
    report = on_cluster(bank, items, tmp_path / "log", shard_size=4)
    assert (report.added, report.duplicates, report.total) == (32, 8, 40)
    assert sorted(embedded(tmp_path / "log")) == sorted({i.text for i in items} - kept)
    in_process(tmp_path / "one", items, shard_size=4)
    # The shards the first run published come first; the rows are the same.
    assert_same_bank(bank, tmp_path / "one", same_order=False)
    assert shard_dirs(bank) == {s.name for s in read_sharded_manifest(bank).shards}


def test_cluster_needs_a_sharded_bank(tmp_path, monkeypatch):
    monkeypatch.setattr(shared, "load_encoder", lambda key, *, device: HashEncoder(key=key))
    monkeypatch.setattr(shared, "default_model_keys", lambda: ("fake:clip", "fake:clap"))
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("one\ntwo\n")
    runner = CliRunner()
    refused = runner.invoke(app, ["index", str(corpus), "-b", "new", "--cluster", "local"])
    assert refused.exit_code == 2
    assert "--cluster writes sharded banks, and a new bank needs --shard-size N" in " ".join(
        refused.stderr.split()
    )
    monkeypatch.setenv("UCL_CLUSTER", "local")  # the variable alone: indexed in this process
    here = runner.invoke(app, ["index", str(corpus), "-b", "plain"])
    assert here.exit_code == 0, here.output
    assert "UCL_CLUSTER=local not used: a new bank needs --shard-size N" in here.stderr
    assert len(load_bank(banks_dir() / "plain")) == 2


@pytest.mark.slow
def test_an_actor_that_dies_mid_shard_is_restarted_and_its_shard_written_whole(
    ray_cluster, tmp_path
):
    items = [text_item(text) for text in TEXTS]
    report = on_cluster(tmp_path / "ray", items, tmp_path / "log", crash_at=2)
    assert (tmp_path / "log.clip.crashed").exists()  # an actor did die, in its second batch
    assert report.added == 23
    in_process(tmp_path / "one", items)
    assert_same_bank(tmp_path / "ray", tmp_path / "one")
    assert shard_dirs(tmp_path / "ray") == {
        s.name for s in read_sharded_manifest(tmp_path / "ray").shards
    }


@pytest.mark.slow
def test_a_collection_of_images_on_the_cluster(ray_cluster, tmp_path, media_dir):
    folder = media_dir / "images"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "gone.png")
    items = list(collect_file_items([str(folder)], "image"))
    (folder / "gone.png").unlink()  # collected, then gone: unreadable on its actor, skipped
    models = Models(tmp_path / "log")
    options = IndexOptions(modality="image", shard_size=2, batch_size=2)
    report = index_on_cluster(
        tmp_path / "ray", models.load("cpu"), models, items, options, "local"
    )
    assert (report.added, report.skipped) == (len(items) - 1, 1)
    encoders = [HashEncoder("fake:clip", dim=16), HashEncoder("fake:clap", dim=8)]
    index_items(tmp_path / "one", encoders, items, options)
    assert_same_bank(tmp_path / "ray", tmp_path / "one", same_order=False)  # one shard short

    strict = IndexOptions(modality="image", shard_size=2, strict=True)
    with pytest.raises(InputFileError, match=r"gone\.png"):  # raised on the actor, as itself
        index_on_cluster(tmp_path / "strict", models.load("cpu"), models, items, strict, "local")


class Missing(Models):
    def load(self, device: str) -> list[HashEncoder]:
        raise UsageError("this worker has no such model")


@pytest.mark.slow
def test_actors_that_cannot_load_the_models_fail_the_run_saying_why(ray_cluster, tmp_path):
    items = [text_item(text) for text in TEXTS]
    here = Models(tmp_path / "log").load("cpu")
    options = IndexOptions(shard_size=5)
    with pytest.raises(UsageError, match="this worker has no such model"):
        index_on_cluster(tmp_path / "ray", here, Missing(tmp_path / "log"), items, options, "local")
    assert not (tmp_path / "ray" / "manifest.json").exists()


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    from ucl_cli.testing.standins import write_defaults

    root = tmp_path_factory.mktemp("standins")
    write_defaults(root, small=True)
    return root


@pytest.mark.slow
def test_cli_index_on_a_local_cluster_with_the_stand_in_towers(
    ray_cluster, standins, tmp_path, monkeypatch
):
    from model_fixtures import use_hub

    use_hub(monkeypatch, standins)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"{text}\n" for text in TEXTS))
    runner = CliRunner()
    args = ["index", str(corpus), "--shard-size", "7", "--batch-size", "4", "--device", "cpu"]
    here = runner.invoke(app, [*args, "-b", "here"])
    there = runner.invoke(app, [*args, "-b", "there", "--cluster", "local"])
    assert here.exit_code == 0 and there.exit_code == 0, there.output
    assert "embedded on Ray cluster local: 4 shards written by 2 CPU actors" in there.stderr
    with load_bank(banks_dir() / "here") as a, load_bank(banks_dir() / "there") as b:
        assert a.manifest.models == b.manifest.models
        assert [s.count for s in a.manifest.shards] == [s.count for s in b.manifest.shards]
        assert list(a.items()) == list(b.items())
        for model in a.manifest.model_keys():
            np.testing.assert_allclose(a.vectors(model), b.vectors(model), atol=1e-5)


def test_a_failed_cluster_run_says_what_the_bank_holds(tmp_path):
    import io

    from rich.console import Console

    from ucl_cli.commands.index import _say_resumable

    in_process(tmp_path / "captions", [text_item(text) for text in TEXTS])
    out = io.StringIO()
    _say_resumable(tmp_path / "captions", Console(file=out, width=200))
    assert out.getvalue().strip() == (
        "ucl: bank captions holds 23 items in whole shards; run the same command again to "
        "embed the rest"
    )
