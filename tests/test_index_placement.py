"""Indexes on a GPU (`--device cuda`): a device copy answers searches, and the certificates stay
those of the CPU index.

No GPU here: the device copy is stood in for by a CPU clone, which runs the same calls a
`GpuIndexIVFFlat` gets (FAISS's low-level `search_preassigned`). The GPU test at the end runs
where CUDA and a GPU build of FAISS are present (`scripts/device_check.sh`).
"""

from __future__ import annotations

import faiss
import numpy as np
import pytest

from ucl_cli.bank import placement
from ucl_cli.bank.nearest import CertifiedNearest
from ucl_cli.bank.placement import GPU_MAX_SELECTION, PlacedIndex, gpu_unavailable, place_index


def clustered(rows: int = 6000, dim: int = 24, clusters: int = 30, spread: float = 0.05, seed=0):
    """Tight clusters: many near-equal products, where a skipped row is easiest to miss."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    bank = centres[rng.integers(clusters, size=rows)] + spread * rng.standard_normal((rows, dim))
    bank /= np.linalg.norm(bank, axis=1, keepdims=True)
    queries = centres[rng.integers(clusters, size=16)] + spread * rng.standard_normal((16, dim))
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return bank.astype(np.float32), queries.astype(np.float32)


def ivf(bank: np.ndarray, nlist: int = 32) -> faiss.Index:
    index = faiss.index_factory(bank.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(bank)
    index.add(bank)
    return index


def assert_certified(found, bank: np.ndarray, queries: np.ndarray) -> None:
    """Against float64: every returned value is its row's product within rounding, and no row
    outside the returned ones exceeds the ceiling."""
    exact = queries.astype(np.float64) @ bank.astype(np.float64).T
    for q in range(len(queries)):
        returned = found.rows[q][found.rows[q] >= 0]
        np.testing.assert_allclose(found.values[q][: len(returned)], exact[q, returned], atol=1e-5)
        others = np.setdiff1d(np.arange(len(bank)), returned)
        assert exact[q, others].max() <= found.ceiling[q]


class CountingCopy:
    """A stand-in device copy: a CPU clone that counts the searches it answers."""

    def __init__(self, index: faiss.Index):
        self.index = faiss.clone_index(index)
        self.calls = 0

    def search(self, queries, k):
        self.calls += 1
        return self.index.search(queries, k)

    def search_preassigned_c(self, *args):
        self.calls += 1
        return faiss.extract_index_ivf(self.index).search_preassigned_c(*args)


def test_without_a_gpu_the_reason_is_said_and_the_index_stays():
    assert gpu_unavailable("cpu") is None
    reason = gpu_unavailable("cuda")
    if not hasattr(faiss, "StandardGpuResources"):
        assert "CPU build" in reason and "ucl-cli[gpu]" in reason
    index = faiss.IndexFlatIP(4)
    assert not place_index(index, "cpu").on_gpu
    if reason is not None:
        assert not place_index(index, "cuda").on_gpu


@pytest.mark.parametrize("nprobe", [1, 4, 32])
def test_a_device_copy_answers_ivf_searches_with_the_cpu_certificate(nprobe):
    bank, queries = clustered()
    index = ivf(bank)
    copy = CountingCopy(index)
    on_device = CertifiedNearest(index, bank, nprobe=nprobe, device_copy=copy)(queries, 10)
    on_cpu = CertifiedNearest(index, bank, nprobe=nprobe)(queries, 10)
    assert copy.calls >= 1
    assert_certified(on_device, bank, queries)
    np.testing.assert_array_equal(on_device.rows, on_cpu.rows)
    np.testing.assert_array_equal(on_device.ceiling, on_cpu.ceiling)


def test_the_device_copy_is_told_its_lists_so_its_own_coarse_search_does_not_matter():
    """A GPU's coarse search may pick other lists at a near tie than the CPU quantizer that the
    certificate trusts. Here the copy's quantizer is scrambled outright: were it asked to choose
    its lists, it would visit the wrong ones and the ceiling of the skipped lists would lie."""
    bank, queries = clustered(seed=3)
    index = ivf(bank)
    copy = CountingCopy(index)
    quantizer = faiss.downcast_index(faiss.extract_index_ivf(copy.index).quantizer)
    centroids = faiss.rev_swig_ptr(quantizer.get_xb(), quantizer.ntotal * quantizer.d)
    centroids[:] = np.random.default_rng(0).standard_normal(centroids.shape).astype(np.float32)
    found = CertifiedNearest(index, bank, nprobe=2, device_copy=copy)(queries, 10)
    assert copy.calls >= 1
    assert_certified(found, bank, queries)


def test_a_flat_copy_answers_flat_searches():
    bank, queries = clustered(rows=3000)
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    copy = CountingCopy(index)
    found = CertifiedNearest(index, bank, device_copy=copy)(queries, 7)
    assert copy.calls == 1
    assert_certified(found, bank, queries)


def test_searches_past_the_gpu_selection_limit_run_on_the_cpu_index():
    bank, queries = clustered(rows=GPU_MAX_SELECTION + 1000)
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    copy = CountingCopy(index)
    found = CertifiedNearest(index, bank, device_copy=copy)(queries[:2], GPU_MAX_SELECTION + 1)
    assert copy.calls == 0
    assert_certified(found, bank, queries[:2])
    ivf_index = ivf(bank)
    ivf_copy = CountingCopy(ivf_index)
    placed = PlacedIndex(ivf_index, ivf_copy)
    _, lists = faiss.extract_index_ivf(ivf_index).quantizer.search(queries[:2], 4)
    products = np.zeros(lists.shape, dtype=np.float32)
    placed.search_lists(queries[:2], GPU_MAX_SELECTION + 1, lists, products)
    assert ivf_copy.calls == 0


def test_a_failed_copy_is_a_warning_and_the_index_stays_on_the_cpu(monkeypatch):
    """Out of GPU memory, say: the query goes on, on the CPU, and says so."""

    class FakeGpuFaiss:
        StandardGpuResources = object
        GpuClonerOptions = type("GpuClonerOptions", (), {})

        @staticmethod
        def get_num_gpus():
            return 1

        @staticmethod
        def index_cpu_to_gpu(*args):
            raise RuntimeError("Error in allocMemory: cudaMalloc error out of memory [2]")

    monkeypatch.setattr(placement, "faiss_module", lambda: FakeGpuFaiss)
    monkeypatch.setattr(placement, "_RESOURCES", [])
    index = faiss.IndexFlatIP(4)
    with pytest.warns(placement.PlacementWarning, match="out of memory"):
        placed = place_index(index, "cuda")
    assert not placed.on_gpu and placed.cpu is index


def test_a_gpu_that_faiss_does_not_see_is_named(monkeypatch):
    class NoGpus:
        StandardGpuResources = object

        @staticmethod
        def get_num_gpus():
            return 1

    monkeypatch.setattr(placement, "faiss_module", lambda: NoGpus)
    assert gpu_unavailable("cuda:0") is None
    assert "cuda:1" in gpu_unavailable("cuda:1")


@pytest.mark.gpu
@pytest.mark.skipif(
    not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0,
    reason="needs a GPU build of FAISS and a GPU",
)
@pytest.mark.parametrize("factory", ["Flat", "IVF32,Flat"])
def test_on_a_gpu_the_certificates_hold_against_float64(factory):
    bank, queries = clustered()
    index = faiss.index_factory(bank.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(bank)
    index.add(bank)
    placed = place_index(index, "cuda")
    assert placed.on_gpu
    for nprobe in (1, 4, 32):
        found = CertifiedNearest(index, bank, nprobe=nprobe, device_copy=placed.gpu)(queries, 10)
        assert_certified(found, bank, queries)
