"""The certificate behind `topk`: no bank row the search skipped may score above the ceiling."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ucl_cli.bank.nearest import CertifiedNearest


def clustered_bank(rows: int = 4000, dim: int = 16, clusters: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((clusters, dim))
    bank = centers[rng.integers(clusters, size=rows)] + 0.3 * rng.standard_normal((rows, dim))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = rng.standard_normal((12, dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return bank.astype(np.float32), queries.astype(np.float32)


def ivf_index(bank: np.ndarray, nlist: int) -> faiss.Index:
    index = faiss.index_factory(bank.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(bank)
    index.add(bank)
    return index


@pytest.mark.parametrize("nprobe", [1, 2, 5])
def test_ivf_ceiling_bounds_every_row_the_search_did_not_return(nprobe):
    bank, queries = clustered_bank()
    search = CertifiedNearest(ivf_index(bank, 16), bank, nprobe=nprobe)
    found = search(queries, 10)
    values, rows, ceiling = found.values, found.rows, found.ceiling
    exact = queries @ bank.T
    for q in range(len(queries)):
        unreturned = np.setdiff1d(np.arange(len(bank)), rows[q])
        assert exact[q, unreturned].max() <= ceiling[q]
        np.testing.assert_allclose(values[q], exact[q, rows[q]], atol=1e-5)


def test_visiting_every_list_gives_the_exact_tth_value():
    bank, queries = clustered_bank()
    search = CertifiedNearest(ivf_index(bank, 16), bank, nprobe=16)
    found = search(queries, 10)
    values, ceiling = found.values, found.ceiling
    true_tenth = np.sort(queries @ bank.T, axis=1)[:, -10]
    np.testing.assert_allclose(values[:, -1], true_tenth, atol=1e-5)
    np.testing.assert_allclose(ceiling, true_tenth, atol=2e-5)


def test_flat_index_ceiling_is_the_tth_value():
    bank, queries = clustered_bank(rows=500)
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    search = CertifiedNearest(index, bank)
    found = search(queries, 7)
    rows, ceiling = found.rows, found.ceiling
    true_seventh = np.sort(queries @ bank.T, axis=1)[:, -7]
    np.testing.assert_allclose(ceiling, true_seventh, atol=2e-5)
    assert rows.shape == (len(queries), 7)
    groups, count = search.row_groups()
    assert count == 1 and not groups.any()  # one group: the whole bank
    np.testing.assert_allclose(found.group_ceiling[:, 0], ceiling)


@pytest.mark.parametrize("nprobe", [1, 3])
def test_per_list_ceilings_bound_every_unreturned_row_of_their_list(nprobe):
    bank, queries = clustered_bank()
    search = CertifiedNearest(ivf_index(bank, 16), bank, nprobe=nprobe)
    found = search(queries, 10)
    groups, count = search.row_groups()
    assert count == 16 and found.group_ceiling.shape == (len(queries), 16)
    exact = queries @ bank.T
    for q in range(len(queries)):
        unreturned = np.setdiff1d(np.arange(len(bank)), found.rows[q])
        for j in range(count):
            members = unreturned[groups[unreturned] == j]
            if len(members):
                assert exact[q, members].max() <= found.group_ceiling[q, j]
    # The per-list ceilings are what the overall ceiling is the largest of.
    np.testing.assert_allclose(found.group_ceiling.max(axis=1), found.ceiling)


def test_row_groups_are_the_ivf_lists():
    bank, _ = clustered_bank(rows=1000)
    index = ivf_index(bank, 8)
    groups, count = CertifiedNearest(index, bank).row_groups()
    _, assigned = index.quantizer.search(bank, 1)
    assert count == 8
    np.testing.assert_array_equal(groups, assigned[:, 0])


def test_too_few_rows_in_the_visited_lists_visits_more_lists():
    # FAISS pads with row -1 when the visited lists hold fewer than T rows; a -1 would index
    # the last bank row downstream. The search widens until T real rows are found.
    bank, queries = clustered_bank(rows=2000)
    index = ivf_index(bank, 16)
    faiss.extract_index_ivf(index).nprobe = 2
    found = CertifiedNearest(index, bank, nprobe=1)(queries, 1500)
    assert (found.rows >= 0).all()
    assert faiss.extract_index_ivf(index).nprobe == 2  # the index's own setting is untouched


def test_the_scan_is_saved_and_reused_by_the_next_process(tmp_path, monkeypatch):
    import ucl_cli.bank.nearest as certified

    bank, queries = clustered_bank()
    index = ivf_index(bank, 16)
    cache = tmp_path / "scan.npz"
    first = CertifiedNearest(index, bank, nprobe=2, scan_cache=cache)
    expected = first(queries, 10)
    assert cache.exists()

    def no_rescan(*args):
        raise AssertionError("the saved scan should have been used")

    monkeypatch.setattr(certified, "_distances_to", no_rescan)
    again = CertifiedNearest(index, bank, nprobe=2, scan_cache=cache)(queries, 10)
    np.testing.assert_array_equal(again.group_ceiling, expected.group_ceiling)


def test_a_damaged_or_mismatched_saved_scan_is_ignored(tmp_path):
    bank, queries = clustered_bank()
    index = ivf_index(bank, 16)
    reference = CertifiedNearest(index, bank, nprobe=2)(queries, 10)
    cache = tmp_path / "scan.npz"
    for content in (b"not an npz file", None):
        if content is None:  # a scan of another bank: wrong number of rows
            np.savez(cache, groups=np.zeros(5, np.int32), distances=np.zeros(5))
        else:
            cache.write_bytes(content)
        found = CertifiedNearest(index, bank, nprobe=2, scan_cache=cache)(queries, 10)
        np.testing.assert_allclose(found.group_ceiling, reference.group_ceiling)


def test_topk_certifies_the_exact_top10_through_an_ivf_index():
    # Bank items in concepts; the query and 12 of 200 candidates share concept 0. The candidate
    # side is searched through an IVF index from 1 of 64 lists up; the bounds must contain
    # the exact scores and certify the leading ranks, which must be the exact ones.
    import torch

    from ucl_cli.bridge.methods import Bridge, BridgeSide
    from ucl_cli.bridge.scoring import lse_scores, topk_scores

    rng = np.random.default_rng(3)
    rows, dim, concepts = 20_000, 32, 40
    assign = rng.integers(concepts, size=rows)

    def unit(x):
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    centres_a, centres_b = unit(rng.standard_normal((2, concepts, dim)).reshape(-1, dim)).reshape(
        2, concepts, dim
    )
    bank_a = unit(centres_a[assign] + 0.15 * rng.standard_normal((rows, dim)))
    bank_b = unit(centres_b[assign] + 0.15 * rng.standard_normal((rows, dim)))
    query = unit(centres_a[[0]] + 0.2 * rng.standard_normal((1, dim)))
    kinds = np.concatenate([np.zeros(12, int), rng.integers(1, concepts, 188)])
    candidates = unit(centres_b[kinds] + 0.2 * rng.standard_normal((200, dim)))
    search = CertifiedNearest(ivf_index(bank_b, 64), bank_b, nprobe=1)
    bridge = Bridge(BridgeSide(bank_a, 30.0), BridgeSide(bank_b, 30.0, search))

    exact = lse_scores(bridge, query, candidates)
    approx = topk_scores(bridge, query, candidates, top=10, nearest_rows=16)
    assert (approx.lower <= exact.values + 1e-3).all()
    assert (exact.values <= approx.upper + 1e-3).all()
    leading = int(approx.certified.int().cumprod(dim=1).sum())
    assert leading >= 10
    assert torch.equal(approx.order[0, :leading], exact.order[0, :leading])


@pytest.mark.parametrize("factory", ["HNSW16", "IVF4,PQ4"])
def test_an_index_whose_search_cannot_be_certified_is_refused(factory):
    from ucl_cli.errors import UsageError

    bank, _ = clustered_bank(rows=400)
    index = faiss.index_factory(bank.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(bank)
    index.add(bank)
    with pytest.raises(UsageError, match="topk cannot certify a search through"):
        CertifiedNearest(index, bank)


def test_an_ivf_index_behind_a_transform_is_refused():
    # Its lists live in the transformed space, not the bank's: no bound there holds.
    from ucl_cli.errors import UsageError

    bank, _ = clustered_bank(rows=400)
    index = faiss.index_factory(bank.shape[1], "PCA8,IVF4,Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(bank)
    index.add(bank)
    with pytest.raises(UsageError, match="topk cannot certify a search through"):
        CertifiedNearest(index, bank)


def test_concurrent_searches_of_one_index_keep_their_own_certificates():
    """A warm server searches one shared index from many threads, each with its own number of
    lists: no search may visit other lists than its certificate counts."""
    from concurrent.futures import ThreadPoolExecutor

    bank, queries = clustered_bank(rows=6000, clusters=40)
    search = CertifiedNearest(ivf_index(bank, 32), bank)
    exact = queries.astype(np.float64) @ bank.astype(np.float64).T

    def check(nprobe: int) -> bool:
        found = search(queries, 10, nprobe)
        for q in range(len(queries)):
            unreturned = np.setdiff1d(np.arange(len(bank)), found.rows[q])
            if exact[q, unreturned].max() > found.ceiling[q]:
                return False
        return True

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert all(pool.map(check, [1, 32, 2, 16, 1, 4, 32, 1] * 6))
