"""The FAISS index of one model's bank vectors, for top-K inner-product search.

Small banks use an exact `Flat` index. Past `FLAT_LIMIT` rows `auto` picks an inverted file
(`IVF<nlist>,Flat`): search then visits `nprobe` lists instead of every row, and the caller's
certified bounds (see `ucl_cli.estimators`) account for what it may miss. Any FAISS
`index_factory` string can be asked for instead; the manifest records the one used.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ucl_cli.bank.files import iter_npy_rows
from ucl_cli.errors import BankError, UsageError

if TYPE_CHECKING:
    import faiss

# Past this many rows `auto` builds an inverted file: `ucl query --method topk` then searches
# a few lists per candidate instead of every row (with a Flat index its search costs as much as
# the exact `lse`), and the lists' geometry certifies the rows it skipped.
FLAT_LIMIT = 100_000
# FAISS wants at least 39 training points per list; a sample of 40 per list bounds the memory
# training takes (about 330 MiB for 4,096 lists of 512-dim vectors) whatever the bank size.
TRAIN_POINTS_PER_LIST = 40
MIN_TRAIN_POINTS = 20_000


def faiss_module() -> Any:
    """FAISS, imported on first use: it is an extra (`ucl-cli[cpu]` or `[gpu]`), not a base need."""
    try:
        import faiss
    except ImportError:
        raise UsageError(
            "FAISS is not installed; install ucl with it: pip install 'ucl-cli[cpu]' (or [gpu])"
        ) from None
    return faiss


def choose_factory(requested: str, count: int) -> str:
    """The index string for a bank of `count` rows (`auto`: Flat, then IVF past FLAT_LIMIT)."""
    if requested.lower() != "auto":
        return requested
    if count <= FLAT_LIMIT:
        return "Flat"
    nlist = 2 ** round(math.log2(4 * math.sqrt(count)))
    return f"IVF{nlist},Flat"


def check_factory(factory: str, dim: int) -> None:
    """Fail early, before any embedding, on an index string FAISS cannot parse."""
    _new_index(factory, dim)


def build_index(vectors_path: Path, dim: int, count: int, factory: str) -> faiss.Index:
    """Build the index from a float32 .npy in chunks (training on a sample first if needed)."""
    index = _new_index(factory, dim)
    if not index.is_trained:
        _train(index, vectors_path, count)
    for chunk in iter_npy_rows(vectors_path, dim):
        index.add(chunk)
    return index


def write_index(index: faiss.Index, path: Path) -> None:
    faiss_module().write_index(index, str(path))


def read_index(path: Path, factory: str, *, name: str | None = None) -> faiss.Index:
    """Flat indexes are memory-mapped (their codes are the bank's vectors again). A file FAISS
    cannot parse is a BankError naming it (`name`: how to call the file, default its path)."""
    faiss = faiss_module()
    flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if factory == "Flat" else 0
    try:
        return faiss.read_index(str(path), flags)
    except (RuntimeError, MemoryError) as err:
        reason = str(err).strip().splitlines()
        detail = next((line for line in reason if "Error" in line), reason[-1] if reason else "")
        raise BankError(
            f"{name or path} is not a readable FAISS index ({detail.strip()[:200]}); rebuild "
            "the bank with `ucl index`"
        ) from None


def search(
    index: faiss.Index, queries: np.ndarray, k: int, *, nprobe: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k inner products: (scores float32 [N, k], rows int64 [N, k]).

    Rows are -1 (and scores -inf-like) where the bank holds fewer than k rows.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != index.d:
        raise UsageError(
            f"queries have shape {tuple(queries.shape)}; the bank index expects [N, {index.d}]"
        )
    if nprobe is not None:
        faiss = faiss_module()
        if isinstance(faiss.downcast_index(index), faiss.IndexIVF):
            params = faiss.SearchParametersIVF()
            params.nprobe = nprobe  # for this call only: the index may be shared by threads
            return index.search(queries, k, params=params)
        with contextlib.suppress(RuntimeError):  # not an inverted file: nprobe does not apply
            faiss.extract_index_ivf(index).nprobe = nprobe  # wrapped (PCA, OPQ): set on it
    return index.search(queries, k)


def _new_index(factory: str, dim: int) -> faiss.Index:
    try:
        faiss = faiss_module()
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        reason = str(err).splitlines()[-1].split(": ")[-1]
        raise UsageError(f"FAISS cannot build index {factory!r}: {reason}") from None


def _train(index: faiss.Index, vectors_path: Path, count: int) -> None:
    lists = _inverted_lists(index)
    if count < max(lists, 1):
        raise BankError(
            f"{count} rows cannot train an index of {lists} lists; "
            "use --faiss-index Flat or fewer lists"
        )
    wanted = min(count, max(TRAIN_POINTS_PER_LIST * lists, MIN_TRAIN_POINTS))
    matrix = np.load(vectors_path, mmap_mode="r")
    rows = np.sort(np.random.default_rng(0).choice(count, size=wanted, replace=False))
    index.train(np.ascontiguousarray(matrix[rows], dtype=np.float32))


def _inverted_lists(index: faiss.Index) -> int:
    """How many lists an inverted-file index has (0 for other kinds)."""
    try:
        return int(faiss_module().extract_index_ivf(index).nlist)
    except RuntimeError:
        return 0
