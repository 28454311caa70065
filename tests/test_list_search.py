"""The per-list table behind `topk` over an IVF collection: no row of a list may have a larger
inner product with a bank row than the table says, and a table is only ever reused for the very
bank and collection it was made from. (The search's certificates are tested against float64 in
test_collection_query.py, for this search and the heavy-row one.)"""

from __future__ import annotations

import json

import faiss
import numpy as np
import planted_backend as planted
import pytest
import torch
from test_collection_query import (
    _bridge,
    _check_certificates,
    _clustered,
    _exact,
    _global_ids,
    _unit,
    bank,  # noqa: F401 (fixture)
    query,
)

from ucl_cli import config
from ucl_cli.bank import IndexOptions, collect_file_items, index_items
from ucl_cli.bank.catalog import resolve_bank
from ucl_cli.bank.nearest import CertifiedNearest
from ucl_cli.bank.norms import largest_row_norm
from ucl_cli.bridge import list_search
from ucl_cli.bridge.candidate_sources import CandidateSource, rank_sources
from ucl_cli.bridge.list_search import list_table
from ucl_cli.bridge.methods import ScoringSettings, method_named
from ucl_cli.cli import app

TEXT_AUDIO = "planted:text-audio"


def ivf_groups(vectors: np.ndarray, nlist: int) -> np.ndarray:
    index = faiss.index_factory(vectors.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    groups, lists = CertifiedNearest(index, vectors).row_groups()
    assert lists == nlist
    return groups


@pytest.mark.parametrize(
    ("label", "row_scale", "spread"),
    [("unit rows", 1.0, 0.3), ("tight clusters", 1.0, 1e-3), ("huge rows", 1e3, 0.3),
     ("tiny rows", 1e-3, 0.3)],
)
def test_no_row_of_a_list_exceeds_the_table(label, row_scale, spread):
    rng = np.random.default_rng(0)
    d = 32
    centres = _unit(rng.standard_normal((10, d)))
    collection = (_clustered(rng, 3000, centres, spread) * row_scale).astype(np.float32)
    rows = _clustered(rng, 200, centres, 0.3)
    groups = ivf_groups(collection, 16)
    table = list_table(rows, collection, groups, 16, largest_row_norm(collection))
    exact = rows.astype(np.float64) @ collection.astype(np.float64).T
    for g in range(16):
        members = groups == g
        if members.any():
            assert (exact[:, members].max(axis=1) <= table.maxima[:, g].numpy()).all(), label
            rows, lists = table.rows_of(np.array([g]))
            assert set(rows.tolist()) == set(np.flatnonzero(members).tolist())
            assert (lists == g).all()
        else:
            assert torch.isinf(table.maxima[:, g]).all()


def test_a_table_is_saved_and_read_back_for_the_same_bank_and_collection(monkeypatch):
    rng = np.random.default_rng(1)
    collection, rows = _unit(rng.standard_normal((500, 8))), _unit(rng.standard_normal((40, 8)))
    groups = ivf_groups(collection, 4)
    first = list_table(rows, collection, groups, 4, 1.0, identity="lib:v1")
    assert len(list(config.index_bounds_dir().glob("lists-*.npy"))) == 1

    def no_pass(*args):
        raise AssertionError("the saved table should have been read")

    monkeypatch.setattr(list_search, "_maxima", no_pass)
    assert list_table(rows, collection, groups, 4, 1.0, identity="lib:v1") is first  # held
    monkeypatch.setattr(list_search, "_HELD", {})  # a new process reads the file
    again = list_table(rows, collection, groups, 4, 1.0, identity="lib:v1")
    torch.testing.assert_close(again.maxima, first.maxima)


def test_another_bank_or_another_collection_never_meets_a_saved_table():
    rng = np.random.default_rng(2)
    collection, rows = _unit(rng.standard_normal((500, 8))), _unit(rng.standard_normal((40, 8)))
    groups = ivf_groups(collection, 4)
    list_table(rows, collection, groups, 4, 1.0, identity="lib:v1")
    other_rows = rows.copy()
    other_rows[0] = -other_rows[0]
    list_table(other_rows, collection, groups, 4, 1.0, identity="lib:v1")
    list_table(rows, collection, groups, 4, 1.0, identity="lib:v2")  # the collection changed
    assert len(list(config.index_bounds_dir().glob("lists-*.npy"))) == 3


def test_a_damaged_saved_table_is_made_again(monkeypatch):
    rng = np.random.default_rng(3)
    collection, rows = _unit(rng.standard_normal((500, 8))), _unit(rng.standard_normal((40, 8)))
    groups = ivf_groups(collection, 4)
    made = list_table(rows, collection, groups, 4, 1.0, identity="lib:v1")
    (path,) = config.index_bounds_dir().glob("lists-*.npy")
    path.write_bytes(b"not a table")
    monkeypatch.setattr(list_search, "_HELD", {})  # as a new process finds it
    again = list_table(rows, collection, groups, 4, 1.0, identity="lib:v1")
    torch.testing.assert_close(again.maxima, made.maxima)
    np.save(path, np.zeros((3, 3), dtype=np.float32))  # a table of another shape
    monkeypatch.setattr(list_search, "_HELD", {})
    torch.testing.assert_close(
        list_table(rows, collection, groups, 4, 1.0, identity="lib:v1").maxima, made.maxima
    )


def test_a_float32_near_tie_is_never_certified_by_the_list_walk():
    """A row and its twin one float32 step up: their order is not provable, in any lists."""
    rng = np.random.default_rng(5)
    d = 16
    centres = _unit(rng.standard_normal((8, d)))
    bridge = _bridge(rng, 200, d, (100.0, 33.0), centres, 0.2)
    queries = _clustered(rng, 1, centres, 0.2)
    collection = _clustered(rng, 2000, centres, 0.2)
    best = int(_exact(bridge, queries, collection)[0].argmax())
    twin = collection[best] * np.float32(1 + 2**-23)  # the next float32 up: a tie in float32
    collection = np.concatenate([collection, twin[None]], axis=0)
    index = faiss.index_factory(d, "IVF16,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(collection)
    index.add(collection)
    nearest = CertifiedNearest(index, collection, nprobe=2)
    source = CandidateSource(collection, str, "lib", nearest, largest_row_norm(collection))
    ranked = rank_sources(method_named("topk"), bridge, queries, [source], ScoringSettings(), 3)
    exact = _exact(bridge, queries, collection)
    _check_certificates(ranked, exact, _global_ids(ranked, [source]), "twins in two lists")
    assert set(ranked.row[0, :2].tolist()) == {best, 2000}


def test_topk_over_an_ivf_collection_through_the_cli_equals_lse_and_saves_its_table(
    bank,  # noqa: F811
    runner,
    media_dir,
):
    encoder = planted.PlantedEncoder(TEXT_AUDIO, "cpu")
    files = collect_file_items([media_dir / "audio"], "audio")
    index_items(
        resolve_bank("sfx"),
        [encoder],
        files,
        IndexOptions(modality="audio", faiss_index="IVF2,Flat"),
    )
    image = media_dir / "images" / "concept3.png"
    args = ["query", "--device", "cpu", "--format", "jsonl", str(image), "--collection", "sfx"]
    first = runner.invoke(app, [*args, "--bank", bank, "--method", "topk"])
    assert first.exit_code == 0, first.output
    assert "bounding the collection's lists for this bank" in " ".join(first.stderr.split())
    certified = [json.loads(line) for line in first.stdout.splitlines()]
    exact = query(runner, image, "--collection", "sfx", "--bank", bank, "--method", "lse")
    assert [hit["candidate"] for hit in certified] == [hit["candidate"] for hit in exact]
    assert certified[0]["candidate"].endswith("concept3.wav")
    assert certified[0]["certified"], "the other concepts tie exactly: only the leader is proven"
    assert len(list(config.index_bounds_dir().glob("lists-*.npy"))) == 1
    again = runner.invoke(app, [*args, "--bank", bank, "--method", "topk"])
    assert "bounding" not in again.stderr  # read back, not made again
    assert [json.loads(line) for line in again.stdout.splitlines()] == certified
    cleared = runner.invoke(app, ["cache", "clear"])
    assert "1 collection list table" in " ".join(cleared.stderr.split())
    assert not list(config.index_bounds_dir().glob("lists-*.npy"))
