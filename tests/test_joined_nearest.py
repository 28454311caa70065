"""A sharded bank's certified search: each shard searches its own saved index, and the joined
result certifies every row of every shard, as one index over all of them would."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_collection_query import (
    _bridge,
    _check_certificates,
    _clustered,
    _exact,
    _nearest_for,
    _unit,
)

from ucl_cli.bank import BankItem, ModelRecord, save_bank
from ucl_cli.bank.shards import save_sharded_bank
from ucl_cli.bridge.candidate_sources import collection_source, rank_sources
from ucl_cli.bridge.methods import ScoringSettings, method_named

DIM = 16
MODEL = ModelRecord("c", DIM, 15.0, modalities=("text", "audio"))


def clustered_rows(rng, count: int, spread: float = 0.05) -> np.ndarray:
    """Tight clusters: many near-equal products, where a skipped row is easiest to miss."""
    centres = _unit(rng.standard_normal((12, DIM)))
    return _clustered(rng, count, centres, spread)


def items(count: int):
    paths = [f"/library/clip{i:05d}.wav" for i in range(count)]
    return [BankItem(path, path, f"{i:016x}") for i, path in enumerate(paths)]


@pytest.fixture
def library(tmp_path):
    """4,500 clustered rows as shards of 2,000 (IVF lists: `IVF8,Flat`), 2,000 and 500 (Flat),
    and the same rows as one bank."""
    rng = np.random.default_rng(11)
    rows = clustered_rows(rng, 4500)
    sharded = save_sharded_bank(
        tmp_path / "sharded", items(4500), [rows], [MODEL], shard_size=2000,
        modality="audio", faiss_index="IVF8,Flat",
    )  # fmt: skip
    plain = save_bank(tmp_path / "plain", items(4500), [rows], [MODEL], modality="audio")
    yield sharded, plain, rows, rng
    sharded.close()
    plain.close()


@pytest.mark.parametrize("nprobe", [1, 3, None])
def test_the_joined_ceilings_bound_every_row_no_shard_returned(library, nprobe):
    sharded, _, rows, rng = library
    queries = clustered_rows(rng, 20)
    search = sharded.nearest("c")
    found = search(queries, 25, nprobe)
    exact = queries.astype(np.float64) @ rows.astype(np.float64).T
    groups, count = search.row_groups()
    assert count == search.lists() and len(groups) == len(rows)
    for q in range(len(queries)):
        returned = found.rows[q]
        np.testing.assert_allclose(found.values[q], exact[q, returned], atol=1e-5)
        others = np.setdiff1d(np.arange(len(rows)), returned)
        assert exact[q, others].max() <= found.ceiling[q]
        for g in np.unique(groups[others]):
            members = others[groups[others] == g]
            assert exact[q, members].max() <= found.group_ceiling[q, g]


def test_visiting_every_list_of_every_shard_finds_the_exact_top_rows(library):
    sharded, _, rows, rng = library
    queries = clustered_rows(rng, 10)
    search = sharded.nearest("c")
    found = search(queries, 7, search.lists())
    exact = queries.astype(np.float64) @ rows.astype(np.float64).T
    np.testing.assert_allclose(found.values, -np.sort(-exact, axis=1)[:, :7], atol=1e-5)


@pytest.mark.parametrize("normalize", ["none", "candidates"])
def test_topk_over_a_sharded_collection_certifies_what_the_unsharded_one_does(
    library, normalize
):
    from ucl_cli.calibration import Calibration

    sharded, plain, rows, rng = library
    centres = _unit(rng.standard_normal((12, DIM)))
    bridge = _nearest_for(_bridge(rng, 300, DIM, (100.0, 33.0), centres, 0.3))
    queries = clustered_rows(rng, 4, 0.3)

    settings = ScoringSettings(calibration=Calibration(1.0, 1.0, normalize))
    ranked = {}
    for name, collection in (("sharded", sharded), ("plain", plain)):
        source = collection_source(collection, MODEL)
        ranked[name] = rank_sources(
            method_named("topk"), bridge, queries, [source], settings, 10
        )
    assert torch.equal(ranked["sharded"].row, ranked["plain"].row)
    assert torch.equal(ranked["sharded"].certified, ranked["plain"].certified)
    if normalize == "none":  # the float64 truth of the paper's score (not the normalised one)
        exact = _exact(bridge, queries, rows)
        found = ranked["sharded"]
        assert _check_certificates(found, exact, found.row.numpy(), "shards") == 40


def test_a_sharded_collection_reads_its_rows_without_joining_them(library):
    """Slices, picked rows and single rows come from the shards that hold them; nothing reads
    the whole library into memory."""
    from ucl_cli.bank.shards import JoinedRows

    sharded, _, rows, _ = library
    joined = sharded.vectors("c")
    assert isinstance(joined, JoinedRows)
    assert joined.shape == rows.shape and len(joined) == len(rows)
    for piece in (slice(0, 10), slice(1990, 2010), slice(1500, 4500), slice(4400, None),
                  slice(-3, None), slice(10, 10), slice(0, 4500, 7)):  # fmt: skip
        np.testing.assert_array_equal(joined[piece], rows[piece])
    picked = np.array([4499, 0, 2000, 1999, 2000, 3333, -1])
    np.testing.assert_array_equal(joined[picked], rows[picked])
    np.testing.assert_array_equal(joined[rows[:, 0] > 0.5], rows[rows[:, 0] > 0.5])
    np.testing.assert_array_equal(joined[2000], rows[2000])
    np.testing.assert_array_equal(np.asarray(joined), rows)
    with pytest.raises(IndexError):
        joined[4500]
    with pytest.raises(IndexError):
        joined[np.array([0, 4500])]
