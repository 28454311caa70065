"""The manifest: the one small file that says what a bank holds and which files make it up.

Publishing a bank is replacing `manifest.json`; every other file it names is immutable once
named (data files carry a generation number), so the manifest alone decides the bank's state.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ucl_cli.errors import BankError

if TYPE_CHECKING:
    from ucl_cli.encoders.base import Encoder

FORMAT_NAME = "ucl-bank"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# What a bank is for: a bridge (texts every model embeds, the route between modalities) or a
# collection (image or audio files embedded by the models of their modality: candidates).
BRIDGE, COLLECTION = "bridge", "collection"
KINDS = (BRIDGE, COLLECTION)


def kind_for(modality: str) -> str:
    """The kind a bank of `modality` rows is: texts bridge, files are collections."""
    return BRIDGE if modality == "text" else COLLECTION


@dataclass(frozen=True)
class ModelRecord:
    """What a bank must know about a model to tell whether a query's encoder matches its vectors."""

    key: str
    dim: int
    logit_scale: float
    preprocessing: dict[str, Any] = field(default_factory=dict)
    modalities: tuple[str, ...] = ()
    # The identity of the weights that made the vectors ("sha256:..."); None: not recorded.
    weights: str | None = None

    @classmethod
    def from_encoder(cls, encoder: Encoder) -> ModelRecord:
        return cls.from_json(encoder.describe())

    @classmethod
    def of(cls, model: Encoder | ModelRecord) -> ModelRecord:
        """The record of an encoder, or the record itself (what banks and queries compare)."""
        return model if isinstance(model, ModelRecord) else cls.from_encoder(model)

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> ModelRecord:
        return cls(
            key=str(value["key"]),
            dim=int(value["dim"]),
            logit_scale=float(value["logit_scale"]),
            preprocessing=dict(value.get("preprocessing") or {}),
            modalities=tuple(value.get("modalities") or ()),
            weights=None if value.get("weights") is None else str(value["weights"]),
        )

    def to_json(self) -> dict[str, Any]:
        value = {
            "key": self.key,
            "dim": self.dim,
            "logit_scale": self.logit_scale,
            "modalities": list(self.modalities),
            "preprocessing": self.preprocessing,
        }
        if self.weights is not None:
            value["weights"] = self.weights
        return value

    def same_vectors_as(self, other: ModelRecord) -> bool:
        """True when both would embed an item to the same vector (the logit scale may differ),
        as far as the records tell: weights are compared where both record them."""
        return (self.key, self.dim, _canonical(self.preprocessing)) == (
            other.key,
            other.dim,
            _canonical(other.preprocessing),
        ) and not self.other_weights_than(other)

    def other_weights_than(self, other: ModelRecord) -> bool:
        """Both records name their weights, and they differ."""
        return None not in (self.weights, other.weights) and self.weights != other.weights


@dataclass(frozen=True)
class FileRecord:
    sha256: str
    size: int


@dataclass(frozen=True)
class Manifest:
    """A published state of a bank. Files are named relative to the bank directory."""

    modality: str
    count: int
    generation: int
    models: tuple[ModelRecord, ...]
    faiss_index: str  # the index_factory string used
    faiss_request: str  # what was asked for ("auto" re-chooses as the bank grows)
    items_file: str
    vector_files: tuple[str, ...]
    index_files: tuple[str, ...]
    files: dict[str, FileRecord]
    created: str
    updated: str
    ucl_version: str
    format_version: int = FORMAT_VERSION
    # Per model: the largest norm of its rows, rounded up (None: not recorded, older banks).
    max_norms: tuple[float | None, ...] = ()
    kind: str = ""  # "bridge" or "collection"; "" reads as the kind of its modality

    def __post_init__(self) -> None:
        if not self.max_norms:
            object.__setattr__(self, "max_norms", (None,) * len(self.models))
        if not self.kind:
            object.__setattr__(self, "kind", kind_for(self.modality))
        if self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} (expected {' or '.join(KINDS)})")
        for name in (self.items_file, *self.vector_files, *self.index_files, *self.files):
            _check_file_name(name)

    def model_keys(self) -> list[str]:
        return [model.key for model in self.models]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "ucl_version": self.ucl_version,
            "modality": self.modality,
            "kind": self.kind,
            "count": self.count,
            "generation": self.generation,
            "created": self.created,
            "updated": self.updated,
            "faiss_index": self.faiss_index,
            "faiss_request": self.faiss_request,
            "items": self.items_file,
            "models": [
                {
                    **model.to_json(),
                    "vectors": vectors,
                    "index": index,
                    **({} if max_norm is None else {"max_norm": max_norm}),
                }
                for model, vectors, index, max_norm in zip(
                    self.models, self.vector_files, self.index_files, self.max_norms, strict=True
                )
            ],
            "files": {
                name: {"sha256": record.sha256, "bytes": record.size}
                for name, record in sorted(self.files.items())
            },
        }

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> Manifest:
        models = value["models"]
        return cls(
            format_version=int(value["format_version"]),
            ucl_version=str(value.get("ucl_version", "unknown")),
            modality=str(value["modality"]),
            kind=str(value.get("kind") or ""),
            count=int(value["count"]),
            generation=int(value["generation"]),
            created=str(value["created"]),
            updated=str(value["updated"]),
            faiss_index=str(value["faiss_index"]),
            faiss_request=str(value.get("faiss_request", value["faiss_index"])),
            items_file=str(value["items"]),
            models=tuple(ModelRecord.from_json(model) for model in models),
            vector_files=tuple(str(model["vectors"]) for model in models),
            index_files=tuple(str(model["index"]) for model in models),
            max_norms=tuple(
                None if model.get("max_norm") is None else float(model["max_norm"])
                for model in models
            ),
            files={
                name: FileRecord(sha256=str(record["sha256"]), size=int(record["bytes"]))
                for name, record in value["files"].items()
            },
        )


def read_manifest(bank_dir: Path) -> Manifest:
    """Parse `manifest.json`, stating in one sentence why a directory is not a readable bank."""
    path = bank_dir / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BankError(
            f"no bank at {bank_dir} ({MANIFEST_NAME} is missing); build one with `ucl index`"
        ) from None
    except (OSError, UnicodeDecodeError) as err:
        raise BankError(f"cannot read {path}: {err}") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise BankError(f"{path} is corrupt: not valid JSON ({err})") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT_NAME:
        raise BankError(f'{path} is not a ucl bank manifest (no "format": "{FORMAT_NAME}")')
    version = value.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise BankError(
            f"bank {bank_dir} uses format version {version}; this ucl reads versions up to "
            f"{FORMAT_VERSION} (upgrade ucl)"
        )
    try:
        return Manifest.from_json(value)
    except UnsafeFileNameError as err:
        raise BankError(f"{path} is refused: {err}") from None
    except (KeyError, TypeError, ValueError) as err:
        raise BankError(f"{path} is corrupt: missing or malformed field {err}") from None


class UnsafeFileNameError(ValueError):
    """A manifest names a file outside its bank directory."""


def _check_file_name(name: str) -> None:
    """Bank files are plain names inside the bank directory: a manifest naming `../x`, an
    absolute path or a hidden file would make a reader open (or a writer delete) another file."""
    if (
        not isinstance(name, str)
        or not name
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\0" in name
    ):
        raise UnsafeFileNameError(f"it names the file {name!r}, which is not inside the bank")


def describe_models(models: Sequence[ModelRecord]) -> str:
    """'a (dim 512) and b (dim 512)': how messages name a bank's or a query's models."""
    names = [f"{model.key} (dim {model.dim})" for model in models]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def model_mismatch(
    held: Sequence[ModelRecord],
    wanted: Sequence[ModelRecord],
    *,
    bank: str,
    user: str,
    exact: bool = False,
    weights: bool = True,
) -> str | None:
    """One sentence saying why vectors made by `held` cannot serve `wanted`, or None if they can.

    `bank` names the bank ("bank captions"), `user` what wants it ("the query", "this run");
    `exact`: `wanted` must be all of `held` (a writer), not just some of it (a query);
    `weights`: refuse vectors made by other weights of the same model (where both are known).
    """
    by_key = {model.key: model for model in held}
    missing = exact and {m.key for m in held} != {m.key for m in wanted}
    for model in wanted:
        mine = by_key.get(model.key)
        if mine is None or missing:
            return (
                f"{bank} was built with {describe_models(held)}; "
                f"{user} uses {describe_models(wanted)}"
            )
        if mine.dim != model.dim:
            return (
                f"{bank} was built with {mine.key} (dim {mine.dim}); {user}'s encoder "
                f"{model.key} has dim {model.dim}"
            )
        if mine.other_weights_than(model):
            if not weights:
                continue
            return (
                f"{bank} was built with {mine.key} weights {_short(mine.weights)}; {user}'s "
                f"encoder has weights {_short(model.weights)} (other weights give other "
                "vectors: rebuild the bank, or pass --allow-other-weights to use it anyway)"
            )
        if not mine.same_vectors_as(model):
            return (
                f"{bank} embedded {mine.key} with preprocessing {_canonical(mine.preprocessing)}; "
                f"{user}'s encoder uses {_canonical(model.preprocessing)}"
            )
    return None


def _short(weights: str | None) -> str:
    """'sha256:0123456789ab…': enough of a weights identity to tell two apart."""
    if weights is None:
        return "(unknown)"
    return weights if len(weights) <= 19 else weights[:19] + "…"


def now_iso() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
