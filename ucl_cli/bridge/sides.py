"""Which model serves which side, and each model's view of the bank (whole or a sub-bank).

The query model embeds the query modality and the bank's texts, the candidate model the bank's
texts and the candidate modality (image->audio: CLIP then CLAP; audio->image: CLAP then CLIP),
each with its own trained logit scale, as `ucl query` does.
"""

from __future__ import annotations

import numpy as np

from ucl_cli.bank import Bank
from ucl_cli.bank.nearest import flat_nearest
from ucl_cli.bridge.methods import BridgeSide
from ucl_cli.distributed.rows import RemoteRows
from ucl_cli.encoders.base import Encoder


def bank_side(
    bank: Bank, encoder: Encoder, rows: np.ndarray | None, device: str = "cpu"
) -> BridgeSide:
    """The whole bank (memory-mapped, searched by its own FAISS index) when `rows` is None;
    otherwise those rows copied into memory with an exact inner-product index of their own.
    Either search certifies the rows it did not return, as `topk` needs, runs on `device` when
    FAISS can, and is made on first search only: the other methods never read an index.
    A bank a cluster holds (`--cluster`) stays there: its side is a handle on the actors' rows
    (`RemoteRows`), whole or a subset, with no search of its own (the actors search theirs)."""
    max_norm = bank.row_norm(encoder.key)  # what the manifest records: no pass over the rows
    matrix = bank.vectors(encoder.key)
    if isinstance(matrix, RemoteRows):  # held by a cluster's actors: they search it
        held = matrix if rows is None else matrix.subset(rows)
        return BridgeSide(held, encoder.logit_scale, None, max_norm)
    if rows is None:
        nearest = bank.nearest(encoder.key, device)
        return BridgeSide(matrix, encoder.logit_scale, nearest, max_norm)
    matrix = np.ascontiguousarray(matrix[rows], dtype=np.float32)
    nearest = flat_nearest(matrix, max_norm, device)
    return BridgeSide(matrix, encoder.logit_scale, nearest, max_norm)
