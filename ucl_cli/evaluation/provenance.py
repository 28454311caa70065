"""Where an evaluation's numbers come from, for the report: the models (keys, dimensions,
logit scales, weights), the bank (name, rows, SHA-256 of its manifest) and the software."""

from __future__ import annotations

import hashlib
import platform
from importlib.metadata import PackageNotFoundError, version

import numpy as np

from ucl_cli.bank import Bank
from ucl_cli.bank.manifest import MANIFEST_NAME
from ucl_cli.encoders.base import Encoder
from ucl_cli.errors import InputFileError, UclError
from ucl_cli.evaluation.report import BankInfo, ModelInfo

# Packages whose versions change the numbers, when installed.
PACKAGES = ("open_clip_torch", "laion-clap", "faiss-cpu", "faiss-gpu-cu12")


def model_info(role: str, encoder: Encoder) -> ModelInfo:
    described = encoder.describe()
    return ModelInfo(
        role=role,
        key=encoder.key,
        dim=encoder.dim,
        logit_scale=float(encoder.logit_scale),
        modalities=tuple(described.get("modalities", ())),
        preprocessing=dict(described.get("preprocessing", {})),
        weights=_weights(encoder.key),
    )


def _weights(key: str) -> dict | None:
    """Where the registry says the weights come from, for the report (None if unknown)."""
    from ucl_cli.encoders.registry import get_spec

    try:
        spec = get_spec(key)
    except UclError:
        return None
    if spec.local_weights is not None:
        return {"local": str(spec.local_weights)}
    if spec.weights is None:
        return None
    hub = spec.weights
    return {"repo": hub.repo, "file": hub.filename, "revision": hub.revision, "sha256": hub.sha256}


def bank_info(bank: Bank) -> BankInfo:
    manifest_file = bank.path / MANIFEST_NAME
    try:
        digest = hashlib.sha256(manifest_file.read_bytes()).hexdigest()
    except OSError as err:
        raise InputFileError(manifest_file, f"cannot read: {err.strerror or err}") from None
    return BankInfo(
        name=bank.name,
        path=bank.path,
        rows=len(bank),
        modality=bank.modality,
        generation=bank.manifest.generation,
        manifest_sha256=digest,
        ucl_version=bank.manifest.ucl_version,
    )


def software_versions() -> dict[str, str]:
    import torch

    from ucl_cli import __version__

    found = {"ucl": __version__, "torch": torch.__version__, "numpy": np.__version__}
    found["python"] = platform.python_version()
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
