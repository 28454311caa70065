"""Deterministic stand-in encoders for tests: no weights, known vectors.

`HashEncoder` maps every item to a pseudo-random unit vector seeded by its content, and lets a test
plant exact vectors for chosen items so that the correct ranking is known in advance.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from ucl_cli.encoders.base import Encoder, Modality


def content_bytes(item: Any) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, np.ndarray):
        return np.ascontiguousarray(item).tobytes()
    if hasattr(item, "tobytes"):  # PIL images
        return item.tobytes()
    raise TypeError(f"cannot hash {type(item).__name__}")


class HashEncoder(Encoder):
    def __init__(
        self,
        key: str = "fake:hash",
        modalities: Iterable[Modality | str] = ("text", "image", "audio"),
        dim: int = 16,
        logit_scale: float = 10.0,
        sample_rate: int = 16_000,
        planted: dict[bytes, np.ndarray] | None = None,
    ):
        self.key = key
        self.modalities = frozenset(Modality(m) for m in modalities)
        self.dim = dim
        self.logit_scale = logit_scale
        self.preprocessing = {"sample_rate": sample_rate, "image_size": 8}
        self.device = "cpu"
        self.planted = dict(planted or {})
        self.calls: list[tuple[Modality, int]] = []

    def plant(self, item: Any, vector: np.ndarray) -> None:
        self.planted[content_bytes(item)] = np.asarray(vector, dtype=np.float32)

    def _embed_batch(self, modality: Modality, batch: list[Any]) -> np.ndarray:
        self.calls.append((modality, len(batch)))
        rows = []
        for item in batch:
            raw = content_bytes(item)
            if raw in self.planted:
                rows.append(self.planted[raw])
                continue
            digest = hashlib.sha256(modality.value.encode() + raw).digest()
            seed = int.from_bytes(digest[:8], "little")
            rows.append(np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32))
        return np.stack(rows)
