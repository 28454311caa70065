"""Precomputed embeddings: a `.npy` matrix from any model run elsewhere (key "npy:/path/emb.npy").

For models `ucl` cannot run itself (ImageBind, LanguageBind, ...): the user embeds the items once,
saves the rows as `emb.npy` ([N, D], any float dtype) and their ids, row-aligned, next to it:
- `emb.ids.txt` or `emb.txt`: one id per line; or
- `emb.ids.json` or `emb.json`: a list of ids, or {"ids": [...], "modalities": [...],
  "logit_scale": S, "model": "imagebind_huge"}.
"Embedding" an item looks its row up: the item is an id, or a file path whose name or stem is an id
(a PIL image opened from a file counts by its file name). Rows are renormalised (these models return
embeddings multiplied by a scale). The logit scale cannot be read from a matrix: the user states
it (`logit_scale=` / `--logit-scale`, or "logit_scale" in the JSON).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ucl_cli.encoders.base import Encoder, Modality
from ucl_cli.encoders.registry import Backend, ModelFiles, ModelSpec, Registry
from ucl_cli.errors import InputFileError

PREFIX = "npy"
_ID_SUFFIXES = (".ids.txt", ".ids.json", ".txt", ".json")
_ALL_MODALITIES = ("text", "image", "audio")


class MissingEmbeddingError(InputFileError):
    """An item has no row in the precomputed embeddings."""


def register(registry: Registry) -> None:
    """Entry point of the `ucl.backends` group."""
    registry.add_backend(
        Backend(
            name="npy", prefixes=(PREFIX,), build=build, resolve=resolve, weights_path_suffix=False
        )
    )


def ids_file(matrix: Path) -> Path:
    """The id list that belongs to `matrix` (emb.npy -> emb.ids.txt, emb.txt, ...)."""
    stem = matrix.with_suffix("")
    for suffix in _ID_SUFFIXES:
        candidate = Path(f"{stem}{suffix}")
        if candidate.is_file():
            return candidate
    expected = " or ".join(f"{stem.name}{s}" for s in _ID_SUFFIXES)
    raise InputFileError(matrix, f"no id list next to it: expected {expected} (one id per row)")


def read_ids(path: Path) -> tuple[list[str], dict[str, Any]]:
    """The ids (and, for a JSON object, its other fields) of an id list file."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".json":
        return [line.rstrip("\r") for line in text.split("\n") if line.strip()], {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise InputFileError(path, f"not valid JSON ({err})") from None
    meta: dict[str, Any] = {}
    if isinstance(data, dict):
        meta = {k: v for k, v in data.items() if k != "ids"}
        data = data.get("ids")
    if not isinstance(data, list) or not all(isinstance(i, (str, int)) for i in data):
        raise InputFileError(path, 'expected a list of ids or an object {"ids": [...]}')
    return [str(i) for i in data], meta


def _open_matrix(path: Path) -> np.ndarray:
    try:
        matrix = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as err:
        raise InputFileError(path, f"not a readable .npy matrix ({err})") from None
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.floating):
        raise InputFileError(
            path, f"expected a 2-D float matrix [N, D], got {matrix.dtype} {matrix.shape}"
        )
    return matrix


def resolve(key: str) -> ModelSpec:
    path = Path(key.partition(":")[2]).expanduser()
    if not path.is_file():
        raise InputFileError(path, "no such file (precomputed embeddings named by the model key)")
    matrix = _open_matrix(path)
    ids_path = ids_file(path)
    ids, meta = read_ids(ids_path)
    if len(ids) != matrix.shape[0]:
        raise InputFileError(
            ids_path, f"has {len(ids)} ids but {path.name} has {matrix.shape[0]} rows"
        )
    modalities = tuple(meta.get("modalities") or _ALL_MODALITIES)
    unknown = set(modalities) - set(_ALL_MODALITIES)
    if unknown:
        raise InputFileError(ids_path, f"unknown modalities {sorted(unknown)}")
    stat = path.stat()
    scale = meta.get("logit_scale")
    return ModelSpec(
        key=key,
        backend="npy",
        architecture="precomputed",
        modalities=modalities,
        dim=int(matrix.shape[1]),
        preprocessing={
            "source": "precomputed",
            "file": str(path.resolve()),
            "rows": int(matrix.shape[0]),
            "fingerprint": f"{stat.st_size}:{stat.st_mtime_ns}",
            "model": meta.get("model"),
        },
        local_weights=path,
        logit_scale=float(scale) if scale is not None else None,
        description=f"precomputed embeddings {path.name} ({matrix.shape[0]} x {matrix.shape[1]})",
    )


def build(spec: ModelSpec, files: ModelFiles, device: str) -> Encoder:
    path = files.weights or spec.local_weights
    if path is None:
        raise InputFileError(spec.key, "no .npy file")
    ids_path = ids_file(path)
    ids, _ = read_ids(ids_path)
    return PrecomputedEncoder(spec, _open_matrix(path), ids, ids_path, device)


class PrecomputedEncoder(Encoder):
    """Looks rows up by id; the base class renormalises them."""

    default_batch_size = 4096

    def __init__(
        self, spec: ModelSpec, matrix: np.ndarray, ids: list[str], ids_path: Path, device: str
    ):
        self.key = spec.key
        self.modalities = frozenset(Modality(m) for m in spec.modalities)
        self.dim = int(matrix.shape[1])
        self.logit_scale = spec.logit_scale  # type: ignore[assignment]  # checked by load_encoder
        self.preprocessing = dict(spec.preprocessing)
        self.device = device
        self.matrix = matrix
        self.ids_path = ids_path
        self.rows = _index(ids, ids_path)
        self._by_name: dict[str, int | None] | None = None
        self._by_stem: dict[str, int | None] | None = None

    def _embed_batch(self, modality: Modality, batch: list[Any]) -> np.ndarray:
        rows = [self.row_of(item) for item in batch]
        vectors = np.asarray(self.matrix[rows], dtype=np.float32)
        bad = ~np.isfinite(vectors).all(axis=1) | (np.linalg.norm(vectors, axis=1) == 0)
        if bad.any():
            item = batch[int(np.argmax(bad))]
            raise InputFileError(
                self.preprocessing["file"], f"row for {item!r} is zero or not finite"
            )
        return vectors

    def row_of(self, item: Any) -> int:
        """The row of an id, or of a file path (or opened image) whose name or stem is an id."""
        name = _item_name(item)
        if name in self.rows:
            return self.rows[name]
        if self._by_name is None:
            self._by_name = _unique(
                {Path(i).name: r for i, r in self.rows.items()}, self.rows, "name"
            )
            self._by_stem = _unique(
                {Path(i).stem: r for i, r in self.rows.items()}, self.rows, "stem"
            )
        for table, part in ((self._by_name, Path(name).name), (self._by_stem, Path(name).stem)):
            if part in table:
                if table[part] is None:
                    raise MissingEmbeddingError(
                        name, f"more than one id of {self.ids_path} matches {part!r}"
                    )
                return table[part]  # type: ignore[return-value]
        raise MissingEmbeddingError(
            name,
            f"no precomputed embedding: neither it nor its file name or stem is an id in "
            f"{self.ids_path} ({len(self.rows)} ids, e.g. {next(iter(self.rows))!r})",
        )


def _item_name(item: Any) -> str:
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    filename = getattr(item, "filename", None)  # PIL images opened from a file
    if isinstance(filename, str) and filename:
        return filename
    raise MissingEmbeddingError(
        type(item).__name__,
        "precomputed embeddings are looked up by id: pass ids or file paths, not decoded data",
    )


def _index(ids: list[str], ids_path: Path) -> dict[str, int]:
    rows: dict[str, int] = {}
    for row, item_id in enumerate(ids):
        if item_id in rows:
            raise InputFileError(
                ids_path, f"id {item_id!r} appears twice (rows {rows[item_id]} and {row})"
            )
        rows[item_id] = row
    return rows


def _unique(mapping: dict[str, int], rows: dict[str, int], what: str) -> dict[str, int | None]:
    """Map each name (or stem) to its row, or to None when several ids share it."""
    counts: dict[str, int] = {}
    for item_id in rows:
        part = Path(item_id).name if what == "name" else Path(item_id).stem
        counts[part] = counts.get(part, 0) + 1
    return {part: (row if counts[part] == 1 else None) for part, row in mapping.items()}
