"""The certificate behind `topk`: no bank row the search skipped may score above the ceiling."""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ucl_cli.bridge.certified_search import CertifiedNearest


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
    values, rows, ceiling = search(queries, 10)
    exact = queries @ bank.T
    for q in range(len(queries)):
        unreturned = np.setdiff1d(np.arange(len(bank)), rows[q])
        assert exact[q, unreturned].max() <= ceiling[q]
        np.testing.assert_allclose(values[q], exact[q, rows[q]], atol=1e-5)


def test_visiting_every_list_gives_the_exact_tth_value():
    bank, queries = clustered_bank()
    search = CertifiedNearest(ivf_index(bank, 16), bank, nprobe=16)
    values, _, ceiling = search(queries, 10)
    true_tenth = np.sort(queries @ bank.T, axis=1)[:, -10]
    np.testing.assert_allclose(values[:, -1], true_tenth, atol=1e-5)
    np.testing.assert_allclose(ceiling, true_tenth, atol=2e-5)


def test_flat_index_ceiling_is_the_tth_value():
    bank, queries = clustered_bank(rows=500)
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    _, rows, ceiling = CertifiedNearest(index, bank)(queries, 7)
    true_seventh = np.sort(queries @ bank.T, axis=1)[:, -7]
    np.testing.assert_allclose(ceiling, true_seventh, atol=2e-5)
    assert rows.shape == (len(queries), 7)
