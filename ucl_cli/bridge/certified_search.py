"""Nearest bank rows with a certificate: an upper bound on every row the search did not return.

The top-K bounds of `ucl_cli.estimators.topk` are only as sound as the claim "no unlisted bank
row scores above the ceiling". A Flat index searches every row, so its T-th value is that
ceiling. An inverted file (IVF) visits only `nprobe` lists; for the lists it skipped, the
Cauchy-Schwarz inequality bounds every member x of list j with centroid c_j and radius
r_j = max ||x - c_j||:

    <q, x> = <q, c_j> + <q, x - c_j> <= <q, c_j> + ||q|| r_j

so the ceiling is the larger of the T-th returned value and max over skipped lists of that bound.
The radii take one pass over the bank; they are computed on first use and kept per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import faiss
import numpy as np

# Slack for float32 rounding in FAISS's inner products (unit vectors: |error| << 1e-5).
ROUNDING_SLACK = 1e-5


@dataclass
class CertifiedNearest:
    """Callable (vectors [R, d], T) -> (values [R, T], rows [R, T], ceiling [R])."""

    index: faiss.Index
    vectors: np.ndarray  # the bank rows the index holds, [M, d]
    nprobe: int | None = None
    _radii: np.ndarray | None = field(default=None, init=False, repr=False)

    def __call__(self, queries: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        ivf = _ivf(self.index)
        if ivf is not None and self.nprobe is not None:
            ivf.nprobe = min(self.nprobe, ivf.nlist)
        t = min(t, self.index.ntotal)
        values, rows = self.index.search(queries, t)
        ceiling = values[:, -1].astype(np.float64) + ROUNDING_SLACK
        if ivf is not None and ivf.nprobe < ivf.nlist:
            skipped = self._skipped_lists_bound(ivf, queries)
            # Bank rows are unit norm, so no inner product exceeds ||q||.
            skipped = np.minimum(skipped, np.linalg.norm(queries, axis=1) + ROUNDING_SLACK)
            ceiling = np.maximum(ceiling, skipped)
        return values, rows, ceiling

    def _skipped_lists_bound(self, ivf: faiss.IndexIVF, queries: np.ndarray) -> np.ndarray:
        """max over the lists the search skipped of <q, c_j> + ||q|| r_j, per query."""
        centroids = ivf.quantizer.reconstruct_n(0, ivf.nlist)
        _, probed = ivf.quantizer.search(queries, ivf.nprobe)
        bound = (
            queries @ centroids.T
            + np.linalg.norm(queries, axis=1, keepdims=True) * (self.radii(ivf, centroids)[None, :])
        )
        np.put_along_axis(bound, probed, -np.inf, axis=1)
        return bound.max(axis=1).astype(np.float64) + ROUNDING_SLACK

    def radii(self, ivf: faiss.IndexIVF, centroids: np.ndarray) -> np.ndarray:
        """[nlist] max distance from each list's centroid to its members (0 for empty lists)."""
        if self._radii is None:
            radii = np.zeros(ivf.nlist, dtype=np.float64)
            lists = ivf.invlists
            for j in range(ivf.nlist):
                size = lists.list_size(j)
                if size == 0:
                    continue
                ids = faiss.rev_swig_ptr(lists.get_ids(j), size).copy()
                members = np.asarray(self.vectors[np.sort(ids)], dtype=np.float32)
                radii[j] = np.linalg.norm(members - centroids[j], axis=1).max()
            self._radii = radii
        return self._radii


def _ivf(index: faiss.Index) -> faiss.IndexIVF | None:
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None
