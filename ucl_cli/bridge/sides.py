"""Which model serves which side, and each model's view of the bank (whole or a sub-bank).

The query model embeds the query modality and the bank's texts, the candidate model the bank's
texts and the candidate modality (image->audio: CLIP then CLAP; audio->image: CLAP then CLIP),
each with its own trained logit scale, as `ucl query` does.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ucl_cli import config
from ucl_cli.bank import Bank
from ucl_cli.bridge.certified_search import (
    DEFAULT_NPROBE,
    CertifiedNearest,
    LazyNearest,
    is_inverted_flat,
)
from ucl_cli.bridge.methods import BridgeSide
from ucl_cli.encoders.base import Encoder


def bank_side(bank: Bank, encoder: Encoder, rows: np.ndarray | None) -> BridgeSide:
    """The whole bank (memory-mapped, searched by its own FAISS index) when `rows` is None;
    otherwise those rows copied into memory with an exact inner-product index of their own.
    Either search certifies the rows it did not return, as `topk` needs. The index is opened
    (or built) on first search only: the other methods never read it."""
    max_norm = bank.row_norm(encoder.key)  # what the manifest records: no pass over the rows
    if rows is None:
        vectors = bank.vectors(encoder.key)
        scan_cache = _scan_path(bank, encoder.key)

        def search() -> CertifiedNearest:
            index = bank.index(encoder.key)
            return CertifiedNearest(index, vectors, DEFAULT_NPROBE, scan_cache, max_norm)

        return BridgeSide(vectors, encoder.logit_scale, LazyNearest(search), max_norm)
    matrix = np.ascontiguousarray(bank.vectors(encoder.key)[rows], dtype=np.float32)
    search = LazyNearest(lambda: _flat_search(matrix, max_norm))
    return BridgeSide(matrix, encoder.logit_scale, search, max_norm)


def save_index_scans(bank: Bank) -> int:
    """Scan each model's IVF index now and save it where `bank_side` looks, so that the first
    `topk` query does not pay for it (about a second per million rows). Returns how many."""
    saved = 0
    for record in bank.models:
        path = _scan_path(bank, record.key)
        if path is not None and not path.exists():
            saved += _save_scan(bank, record.key, path)
    return saved


def _save_scan(bank: Bank, key: str, path: Path) -> bool:
    """One index in memory at a time: it is read here, not kept by the bank, and freed on return.
    A bank whose index is not an inverted file is not read at all."""
    if not bank.manifest.faiss_index.upper().startswith("IVF"):
        return False
    index = bank.index(key, keep=False)
    if not is_inverted_flat(index):
        return False
    CertifiedNearest(index, bank.vectors(key), scan_cache=path).row_groups()
    return True


def _scan_path(bank: Bank, key: str) -> Path | None:
    digest = bank.index_sha256(key)
    return None if digest is None else config.index_bounds_dir() / f"{digest}.npz"


def _flat_search(matrix: np.ndarray, max_norm: float) -> CertifiedNearest:
    import faiss

    index = faiss.IndexFlatIP(matrix.shape[1])
    index.add(matrix)
    return CertifiedNearest(index, matrix, row_norm_bound=max_norm)
