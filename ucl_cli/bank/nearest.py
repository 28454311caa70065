"""Nearest bank rows with a certificate: an upper bound on every row the search did not return.

The top-K bounds of `ucl_cli.estimators.topk` are only as sound as the claim "no unlisted bank
row scores above the ceiling". A Flat index searches every row, so its T-th value is that
ceiling. An inverted file (IVF) visits only `nprobe` lists; for the lists it skipped, the
Cauchy-Schwarz inequality bounds every member x of list j with centroid c_j and radius
r_j = max ||x - c_j||:

    <q, x> = <q, c_j> + <q, x - c_j> <= <q, c_j> + ||q|| r_j

so the ceiling is the larger of the T-th returned value and max over skipped lists of that bound.
The same bounds are also returned per list (`Neighbours.group_ceiling`): paired with how much of
a query's mass each list holds, they bound the unknown part of the bridge sum far more tightly
than one ceiling for the whole bank (`ucl_cli.estimators.topk.GroupedRest`), and so are the
products <q, c_j> that, with each row's own distance ||x - c_j||, bound row by row. The list and
distance of every bank row take one pass over the index (the scan); it is made on first use,
kept, and saved to `scan_cache` when one is named (`ucl index` saves it for each IVF bank,
`save_index_scans`, where `Bank.nearest` looks for it: `scan_path`).

Every bound here is about the exact inner products of the stored float32 vectors. FAISS's float32
products are within gamma_d ||q|| ||x|| of them (`dot_rounding_bound`), so each ceiling adds that
much; row distances are computed from the residual x - c (never as ||x||^2 - 2<x, c> + ||c||^2,
which cancels for rows close to their centroid) and rounded up; and no row is assumed to have
unit norm: the largest row norm (`row_norm_bound`) caps what a product can be.

All FAISS knowledge lives in the bank: the query layer only asks it for neighbours
(`Bank.nearest`, `flat_nearest`). FAISS itself is imported on first search (`faiss_module`), so
that code which never searches runs without the extra.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ucl_cli import config
from ucl_cli.bank.norms import largest_row_norm
from ucl_cli.bank.placement import PlacedIndex, place_index
from ucl_cli.bank.search_index import faiss_module
from ucl_cli.estimators.topk import FLOAT32_UNIT_ROUNDOFF, dot_rounding_bound

if TYPE_CHECKING:
    import faiss

    from ucl_cli.bank.store import Bank

# Bumped whenever the saved scan's meaning changes; a scan of another version is made again.
SCAN_VERSION = 2
# IVF lists a `topk` search first visits per candidate (more, 4x at a time, for just the
# candidates whose bounds block the result): enough to cover most candidates' own
# neighbourhood, whose rows the per-row bounds would otherwise overcharge.
DEFAULT_NPROBE = 8


@dataclass(frozen=True)
class Neighbours:
    """The T nearest bank rows of each of R vectors, with certified ceilings on the rest.

    values, rows [R, T]: inner products and bank rows, best first.
    ceiling [R]: no bank row outside `rows` has a larger inner product.
    group_ceiling [R, G]: the same per group of bank rows (`CertifiedNearest.row_groups`): the
      T-th value for the lists the search visited, the Cauchy-Schwarz bound for the others.
    centroid_products [R, G] or None: <q, c_g> for each IVF list, so that with the distance d_m
      of each bank row to its list's centroid, <q, x_m> <= <q, c_g> + ||q|| d_m row by row
      (`CertifiedNearest.row_distances`); None for a Flat index.
    """

    values: np.ndarray
    rows: np.ndarray
    ceiling: np.ndarray
    group_ceiling: np.ndarray
    centroid_products: np.ndarray | None = None

    def with_rows(self, which: np.ndarray, other: Neighbours) -> Neighbours:
        """These results with rows `which` replaced by `other`'s (a wider search of them)."""

        def merged(mine: np.ndarray | None, theirs: np.ndarray | None) -> np.ndarray | None:
            if mine is None or theirs is None:
                return None
            out = mine.copy()
            out[which] = theirs
            return out

        return Neighbours(
            merged(self.values, other.values),
            merged(self.rows, other.rows),
            merged(self.ceiling, other.ceiling),
            merged(self.group_ceiling, other.group_ceiling),
            merged(self.centroid_products, other.centroid_products),
        )


@dataclass
class CertifiedNearest:
    """Callable (vectors [R, d], T) -> Neighbours: FAISS search plus certified ceilings."""

    index: faiss.Index
    vectors: np.ndarray  # the bank rows the index holds, [M, d]
    nprobe: int | None = None
    # Where to keep the one-pass scan (each row's list and centroid distance) between processes;
    # name it by the index's content hash. None: scan on first use in every process.
    scan_cache: Path | None = None
    # The largest norm of any bank row (a bank's manifest records it); None: measured here.
    row_norm_bound: float | None = None
    # The index's copy on a GPU (`placement.place_index`), which answers the searches it can;
    # `index` stays the source of the geometry the bounds use.
    device_copy: faiss.Index | None = None
    _groups: np.ndarray | None = field(default=None, init=False, repr=False)
    _distances: np.ndarray | None = field(default=None, init=False, repr=False)
    _radii: np.ndarray | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        _require_certifiable(self.index)

    def __call__(self, queries: np.ndarray, t: int, nprobe: int | None = None) -> Neighbours:
        """The T nearest rows of each vector, visiting `nprobe` lists (default: the search's)."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        t = min(t, self.index.ntotal)
        # How far FAISS's float32 products of each query may be from the exact ones.
        norm = np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
        gamma = dot_rounding_bound(queries.shape[1])
        slack = gamma * norm[:, 0] * self.row_norm()
        ivf = _ivf(self.index)
        placed = PlacedIndex(self.index, self.device_copy)
        if ivf is None:
            values, rows = placed.search(queries, t)
            ceiling = values[:, -1].astype(np.float64) + slack
            return Neighbours(values, rows, ceiling, ceiling[:, None])
        nprobe = min(nprobe or self.nprobe or ivf.nprobe, ivf.nlist)
        values, rows, probed = _search_lists(ivf, placed, queries, t, nprobe)
        # The visited lists may hold fewer than T rows (FAISS pads with -1): visit more.
        while nprobe < ivf.nlist and (rows < 0).any():
            nprobe = min(2 * nprobe, ivf.nlist)
            values, rows, probed = _search_lists(ivf, placed, queries, t, nprobe)
        ceiling = values[:, -1].astype(np.float64) + slack
        centroids = _centroids(ivf)
        centroid_norms = np.linalg.norm(centroids.astype(np.float64), axis=1)
        products = (queries @ centroids.T).astype(np.float64) + gamma * norm * centroid_norms
        if nprobe >= ivf.nlist:  # every list visited: the T-th value bounds every other row
            groups = np.repeat(ceiling[:, None], ivf.nlist, axis=1)
            return Neighbours(values, rows, ceiling, groups, products)
        # No inner product exceeds ||q|| times the largest row norm.
        cap = norm * self.row_norm()
        groups = np.minimum(products + norm * self.radii()[None, :], cap)
        np.put_along_axis(groups, probed, ceiling[:, None], axis=1)
        ceiling = np.maximum(ceiling, groups.max(axis=1))
        return Neighbours(values, rows, ceiling, groups, products)

    def lists(self) -> int:
        """How many lists a search can visit (1 for a Flat index: it visits everything)."""
        ivf = _ivf(self.index)
        return 1 if ivf is None else ivf.nlist

    def default_nprobe(self) -> int:
        ivf = _ivf(self.index)
        return 1 if ivf is None else min(self.nprobe or ivf.nprobe, ivf.nlist)

    def row_groups(self) -> tuple[np.ndarray, int]:
        """([M] group of each bank row, G): its IVF list, or one group for a Flat index."""
        ivf = _ivf(self.index)
        if ivf is None:
            return np.zeros(len(self.vectors), dtype=np.int64), 1
        self._scan(ivf)
        return self._groups, ivf.nlist

    def row_distances(self) -> np.ndarray | None:
        """[M] float64: each bank row's distance to its IVF list's centroid (None for Flat)."""
        ivf = _ivf(self.index)
        if ivf is None:
            return None
        self._scan(ivf)
        return self._distances

    def radii(self) -> np.ndarray:
        """[nlist] the largest row distance in each list (0 for an empty list)."""
        self._scan(_ivf(self.index))
        return self._radii

    def row_norm(self) -> float:
        """The largest norm of any bank row, rounded up (the stated bound, or measured once)."""
        if self.row_norm_bound is None:
            self.row_norm_bound = largest_row_norm(self.vectors)
        return self.row_norm_bound

    def _scan(self, ivf: faiss.IndexIVF) -> None:
        """One pass over the bank, list by list: each row's list and distance to its centroid."""
        if self._groups is not None:
            return
        if self._load_scan(ivf.nlist):
            return
        faiss = faiss_module()
        centroids = _centroids(ivf)
        groups = np.zeros(len(self.vectors), dtype=np.int64)
        distances = np.zeros(len(self.vectors), dtype=np.float64)
        # An IVFFlat list stores its rows' vectors contiguously: read them there, not by a
        # gather over the (memory-mapped) bank.
        flat = isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFlat)
        lists = ivf.invlists
        for j in range(ivf.nlist):
            size = lists.list_size(j)
            if size == 0:
                continue
            members = faiss.rev_swig_ptr(lists.get_ids(j), size).copy()
            if flat:
                codes = faiss.rev_swig_ptr(lists.get_codes(j), size * ivf.code_size)
                rows = np.frombuffer(codes, dtype=np.float32).reshape(size, ivf.d)
            else:
                order = np.argsort(members)
                members = members[order]
                rows = np.asarray(self.vectors[members], dtype=np.float32)
            groups[members] = j
            distances[members] = _distances_to(rows, centroids[j])
        self._set_scan(groups, distances, ivf.nlist)
        self._save_scan()

    def _set_scan(self, groups: np.ndarray, distances: np.ndarray, nlist: int) -> None:
        radii = np.zeros(nlist, dtype=np.float64)
        np.maximum.at(radii, groups, distances)
        self._groups, self._distances, self._radii = groups, distances, radii

    def _load_scan(self, nlist: int) -> bool:
        """Adopt a saved scan if there is one that fits this index; any problem: rescan."""
        if self.scan_cache is None or not self.scan_cache.exists():
            return False
        try:
            with np.load(self.scan_cache) as saved:
                if int(saved["version"]) != SCAN_VERSION:
                    return False
                groups, distances = saved["groups"].astype(np.int64), saved["distances"]
        except (OSError, ValueError, KeyError, TypeError):
            return False
        rows = len(self.vectors)
        if groups.shape != (rows,) or distances.shape != (rows,) or groups.max(initial=0) >= nlist:
            return False
        self._set_scan(groups, distances.astype(np.float64), nlist)
        return True

    def _save_scan(self) -> None:
        """Write the scan atomically; a cache that cannot be written is simply not kept."""
        if self.scan_cache is None:
            return
        try:
            self.scan_cache.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.scan_cache.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as out:
                np.savez(
                    out,
                    version=np.int32(SCAN_VERSION),
                    groups=self._groups.astype(np.int32),
                    distances=self._distances,
                )
            os.replace(tmp, self.scan_cache)
        except OSError:
            with contextlib.suppress(OSError, UnboundLocalError):
                os.unlink(tmp)


@dataclass
class LazyNearest:
    """A CertifiedNearest made on first use, so that methods that never search (lse, caption)
    never read a FAISS index (gigabytes for a large Flat bank)."""

    make: Callable[[], CertifiedNearest]
    _nearest: CertifiedNearest | None = field(default=None, init=False, repr=False)

    def __call__(self, queries: np.ndarray, t: int, nprobe: int | None = None) -> Neighbours:
        return self.made()(queries, t, nprobe)

    def lists(self) -> int:
        return self.made().lists()

    def default_nprobe(self) -> int:
        return self.made().default_nprobe()

    def row_groups(self) -> tuple[np.ndarray, int]:
        return self.made().row_groups()

    def row_distances(self) -> np.ndarray | None:
        return self.made().row_distances()

    def made(self) -> CertifiedNearest:
        if self._nearest is None:
            self._nearest = self.make()
        return self._nearest


def flat_nearest(matrix: np.ndarray, max_norm: float, device: str = "cpu") -> LazyNearest:
    """Exact search over rows held in memory (a sub-bank), through a Flat index of their own
    built on first search (on `device` when FAISS can): it visits every row, so its T-th value
    certifies the rest."""

    def make() -> CertifiedNearest:
        index = faiss_module().IndexFlatIP(matrix.shape[1])
        index.add(matrix)
        placed = place_index(index, device)
        return CertifiedNearest(index, matrix, row_norm_bound=max_norm, device_copy=placed.gpu)

    return LazyNearest(make)


def scan_path(bank: Bank, key: str) -> Path | None:
    """Where the scan of one model's index is kept: named by the index's content hash, so a
    rebuilt index never meets a stale scan (None: the manifest records no hash)."""
    digest = bank.index_sha256(key)
    return None if digest is None else config.index_bounds_dir() / f"{digest}.npz"


def save_index_scans(bank: Bank) -> int:
    """Scan each model's IVF index now and save it where `Bank.nearest` looks, so that the first
    `topk` query does not pay for it (about a second per million rows). Returns how many."""
    saved = 0
    for record in bank.models:
        path = scan_path(bank, record.key)
        if path is not None and not path.exists():
            saved += _save_index_scan(bank, record.key, path)
    return saved


def _save_index_scan(bank: Bank, key: str, path: Path) -> bool:
    """One index in memory at a time: it is read here, not kept by the bank, and freed on return.
    A bank whose index is not an inverted file is not read at all."""
    if not bank.manifest.faiss_index.upper().startswith("IVF"):
        return False
    index = bank.index(key, keep=False)
    if not is_inverted_flat(index):
        return False
    CertifiedNearest(index, bank.vectors(key), scan_cache=path).row_groups()
    return True


def _distances_to(rows: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """||x - c|| per row, never below the exact distance of the stored vectors. The residual is
    formed first (each float32 difference is within u of the exact one, relatively), so the
    sum of squares has no cancellation and is within gamma_d of the sum of the computed squares
    (any summation order): rounding the result up by that relative amount bounds the exact
    distance from above at float32 speed. (Not sqrt(||x||^2 - 2<x, c> + ||c||^2): for rows
    within 1e-4 of their centroid that cancels to errors of several 1e-4, above the distance.)"""
    residual = rows - centre.astype(np.float32)
    squares = np.einsum("ij,ij->i", residual, residual).astype(np.float64)
    # |r_i| <= |fl(r_i)| / (1 - u); sum of squares within gamma_d; sqrt and casts: a few u more.
    unit = FLOAT32_UNIT_ROUNDOFF
    grow = (1 + dot_rounding_bound(rows.shape[1])) / (1 - unit) ** 2
    return np.sqrt(squares * grow) * (1 + 4 * unit)


def _centroids(ivf: faiss.IndexIVF) -> np.ndarray:
    return ivf.quantizer.reconstruct_n(0, ivf.nlist)


def _search_lists(
    ivf: faiss.IndexIVF,
    placed: PlacedIndex,
    queries: np.ndarray,
    t: int,
    nprobe: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Search visiting `nprobe` lists: (values, rows, visited lists [R, nprobe]). The count goes
    with the call, never into the shared index (a server's concurrent searches would change it
    under each other's certificates). On a GPU the lists are named to the search (`placement`):
    its own coarse search could choose others at a near tie."""
    if placed.on_gpu:
        products, probed = ivf.quantizer.search(queries, nprobe)
        values, rows = placed.search_lists(queries, t, probed, products)
        return values, rows, probed
    params = faiss_module().SearchParametersIVF()
    params.nprobe = nprobe
    values, rows = placed.cpu.search(queries, t, params=params)
    # The lists FAISS visited are the quantizer's nprobe nearest (FAISS's own search_preassigned
    # with our assignment measured 1.6x slower than this second, small quantizer search).
    _, probed = ivf.quantizer.search(queries, nprobe)
    return values, rows, probed


def is_inverted_flat(index: faiss.Index) -> bool:
    """An IVF index with Flat lists, searched as is: the kind whose skipped lists
    `CertifiedNearest` bounds. One wrapped in a transform (PCA, OPQ) is not: its lists live in
    another space than the bank's vectors."""
    faiss = faiss_module()
    return isinstance(faiss.downcast_index(index), faiss.IndexIVFFlat)


def _require_certifiable(index: faiss.Index) -> None:
    """Only searches that return exact inner products, and skip rows only by whole IVF lists,
    can be certified: Flat, or IVF with Flat lists. HNSW or PQ may miss rows, or misstate them,
    with no bound."""
    faiss = faiss_module()
    if isinstance(faiss.downcast_index(index), faiss.IndexFlat) or is_inverted_flat(index):
        return
    from ucl_cli.errors import UsageError

    raise UsageError(
        f"topk cannot certify a search through a {type(faiss.downcast_index(index)).__name__} "
        "index (it may miss or misstate rows with no bound); use --method lse, or build a bank "
        "with a Flat or IVF<n>,Flat index (ucl index --faiss-index auto, the default)"
    )


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss_module().extract_index_ivf(index)
    except RuntimeError:
        return None
