"""Where a FAISS index searches: on the GPU with `--device cuda` when FAISS can, else on the CPU.

The CPU index stays the source of the geometry a certificate uses (IVF centroids, list
members, radii); a GPU copy only answers searches. Two things keep its answers certifiable:

- Products: FAISS's GPU resources forbid reduced-precision reductions in cuBLAS (no TF32, no
  float16 storage, which the cloner options below also refuse), so a GPU product is a float32
  dot product in some summation order, within the same gamma_d bound as the CPU's.
- Lists visited: the certificate counts on knowing which IVF lists a search visited. The GPU's
  own coarse search could, at a near tie between centroids, choose other lists than the CPU
  quantizer that names them, so a GPU search is always told its lists (`search_preassigned`).

A search the GPU cannot make (k or nprobe past FAISS's GPU selection limit) runs on the CPU copy,
with the same bounds. When FAISS has no GPU support, or the copy fails (out of memory), the index
stays on the CPU and `gpu_unavailable` (or, for a failed copy, a `PlacementWarning`) says why.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ucl_cli.bank.search_index import faiss_module

if TYPE_CHECKING:
    import faiss

# FAISS's GPU k-selection handles at most this many results (and lists visited) per query.
GPU_MAX_SELECTION = 2048


class PlacementWarning(UserWarning):
    """An index that was asked onto the GPU searches on the CPU (the message says why)."""


def gpu_unavailable(device: str) -> str | None:
    """Why FAISS cannot search on `device` (None: it can, or `device` is not a GPU). Cheap: reads
    no index, so a query can say it before searching."""
    if not device.startswith("cuda"):
        return None
    faiss = faiss_module()
    if not hasattr(faiss, "StandardGpuResources"):
        return (
            "the installed FAISS is a CPU build (install ucl with its GPU extra instead: "
            "pip install 'ucl-cli[gpu]', after uninstalling faiss-cpu)"
        )
    if faiss.get_num_gpus() <= _gpu_id(device):
        return f"FAISS sees {faiss.get_num_gpus()} GPU(s), so not {device}"
    return None


@dataclass
class PlacedIndex:
    """An index and, when it was moved to a GPU, its copy there; every search goes to the copy
    that can make it."""

    cpu: faiss.Index
    gpu: faiss.Index | None = None

    @property
    def on_gpu(self) -> bool:
        return self.gpu is not None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products, (values, rows); a Flat index's search visits every row."""
        index = self.gpu if self.gpu is not None and k <= GPU_MAX_SELECTION else self.cpu
        return index.search(queries, k)

    def search_lists(
        self, queries: np.ndarray, k: int, lists: np.ndarray, list_products: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k inner products within the named IVF lists only (`lists` [N, nprobe], int64;
        `list_products` [N, nprobe]: each query's product with those lists' centroids)."""
        use_gpu = self.gpu is not None and max(k, lists.shape[1]) <= GPU_MAX_SELECTION
        index = self.gpu if use_gpu else faiss_module().extract_index_ivf(self.cpu)
        return search_preassigned(index, queries, k, lists, list_products)


def place_index(index: faiss.Index, device: str) -> PlacedIndex:
    """`index` with a GPU copy when `device` is a CUDA device FAISS can use; otherwise as is (ask
    `gpu_unavailable` why; a copy that fails, e.g. out of GPU memory, is a `PlacementWarning`)."""
    if gpu_unavailable(device) is not None or not device.startswith("cuda"):
        return PlacedIndex(index)
    faiss = faiss_module()
    options = faiss.GpuClonerOptions()
    options.useFloat16 = False  # float32 codes: the rounding bounds assume them
    with contextlib.suppress(AttributeError):  # older FAISS: no such option, nothing to refuse
        options.useFloat16CoarseQuantizer = False
    try:
        copy = faiss.index_cpu_to_gpu(_resources(), _gpu_id(device), index, options)
    except (RuntimeError, MemoryError) as err:
        detail = str(err).strip().splitlines()[-1][:200] if str(err).strip() else type(err)
        warnings.warn(
            f"FAISS searches run on the CPU: the index could not be copied to {device} "
            f"({detail})",
            PlacementWarning,
            stacklevel=2,
        )
        return PlacedIndex(index)
    return PlacedIndex(index, copy)


def search_preassigned(
    index: faiss.Index, queries: np.ndarray, k: int, lists: np.ndarray, list_products: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's search of the given lists, through its low-level call (the same on CPU and GPU
    inverted files; the Python convenience wrapper exists only for the CPU class)."""
    faiss = faiss_module()
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    lists = np.ascontiguousarray(lists, dtype=np.int64)
    list_products = np.ascontiguousarray(list_products, dtype=np.float32)
    n = queries.shape[0]
    values = np.empty((n, k), dtype=np.float32)
    rows = np.empty((n, k), dtype=np.int64)
    params = faiss.SearchParametersIVF()
    params.nprobe = lists.shape[1]
    call = getattr(index, "search_preassigned_c", None) or index.search_preassigned
    call(
        n,
        faiss.swig_ptr(queries),
        k,
        faiss.swig_ptr(lists),
        faiss.swig_ptr(list_products),
        faiss.swig_ptr(values),
        faiss.swig_ptr(rows),
        False,  # store_pairs: return bank rows, not (list, offset) pairs
        params,
    )
    return values, rows


_RESOURCES: list = []


def _resources():
    """One set of GPU resources (streams, cuBLAS handle, scratch memory) for the process."""
    if not _RESOURCES:
        _RESOURCES.append(faiss_module().StandardGpuResources())
    return _RESOURCES[0]


def _gpu_id(device: str) -> int:
    _, _, number = device.partition(":")
    return int(number) if number else 0

