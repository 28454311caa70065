"""What is installed and usable: package versions, the device, and the model files in the cache.

Read-only and offline; `ucl models` and `ucl doctor` render these reports. Nothing here imports a
model library (versions come from package metadata, CUDA from torch); stand-ins are told by the
mark in their files' headers (`ucl_cli.encoders.standin_marks`).
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from ucl_cli.encoders import hub
from ucl_cli.encoders.registry import (
    DEFAULT_KEYS,
    ModelSpec,
    default_registry,
    file_status,
    get_spec,
    list_models,
)
from ucl_cli.encoders.standin_marks import marked_files

# (label, distribution name) of the packages `ucl doctor` reports.
PACKAGES = (
    ("torch", "torch"),
    ("open_clip", "open_clip_torch"),
    ("laion_clap", "laion_clap"),
    ("transformers", "transformers"),
    ("huggingface_hub", "huggingface_hub"),
    ("faiss", "faiss-cpu"),
    ("faiss (gpu)", "faiss-gpu-cu12"),
    ("numpy", "numpy"),
)


@dataclass(frozen=True)
class ModelStatus:
    spec: ModelSpec
    is_default: bool
    present: list[str]  # "repo/filename" of cached files
    missing: list[str]  # required files that are not cached
    backend_installed: bool
    standin: bool = False  # it would load a random-weight stand-in (scripts/make_test_models.py)

    @property
    def usable(self) -> bool:
        return not self.missing and self.backend_installed

    @property
    def state(self) -> str:
        """'cached' (every required file is local), 'missing' or 'no backend'."""
        if not self.backend_installed:
            return "no backend"
        return "missing" if self.missing else "cached"


@dataclass(frozen=True)
class DeviceStatus:
    cuda_available: bool
    cuda_version: str | None
    devices: list[str]
    default_device: str


def package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for label, distribution in PACKAGES:
        try:
            found[label] = version(distribution)
        except PackageNotFoundError:
            found[label] = None
    if found.get("faiss (gpu)") is None:
        found.pop("faiss (gpu)")
    return found


def device_status() -> DeviceStatus:
    import torch

    from ucl_cli.config import resolve_device

    available = torch.cuda.is_available()
    names = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if available
        else []
    )
    try:
        default = resolve_device()
    except Exception as err:  # e.g. UCL_DEVICE=cuda without a GPU
        default = f"unusable ({err})"
    return DeviceStatus(available, torch.version.cuda, names, default)


def model_status(key: str) -> ModelStatus:
    spec = get_spec(key)
    present, missing, paths = [], [], []
    for status in file_status(spec):
        name = f"{status.file.repo}/{status.file.filename}"
        if status.path is not None:
            present.append(name)
            paths.append(status.path)
        elif not status.file.optional:
            missing.append(name)
    if spec.local_weights is not None:
        target = present if spec.local_weights.exists() else missing
        target.append(str(spec.local_weights))
        if spec.local_weights.exists():
            paths.append(spec.local_weights)
    installed = spec.backend in default_registry().backends
    standin = not missing and bool(marked_files(paths))  # only a model that would load
    return ModelStatus(spec, key in DEFAULT_KEYS, present, missing, installed, standin)


def tower_preprocessing(spec: ModelSpec) -> dict[str, dict[str, Any]]:
    """How each tower of `spec` prepares its inputs, by modality, from the registry alone (no
    weights or model files are read, so listing models stays instant): image size, resize mode
    and normalisation; audio rate, clip length and fusion; text context in tokens. A field the
    spec does not state is left out (a plugin's spec may state little)."""
    pre = dict(spec.preprocessing)
    towers: dict[str, dict[str, Any]] = {}
    for modality in spec.modalities:
        if modality == "image":
            names = ("image_size", "resize_mode", "interpolation", "mean", "std")
            tower = {name: pre.get(name) for name in names}
        elif modality == "audio":
            rate, samples = pre.get("sample_rate"), pre.get("clip_samples")
            tower = {
                "sample_rate": rate,
                "clip_samples": samples,
                "clip_seconds": samples / rate if rate and samples else None,
                "crop": pre.get("crop"),
                "pad": pre.get("pad"),
                "fusion": pre.get("fusion"),
            }
        elif modality == "text":  # open_clip calls it context_length, laion_clap text_max_length
            tower = {"context_length": pre.get("context_length", pre.get("text_max_length"))}
        else:
            continue
        towers[modality] = {name: value for name, value in tower.items() if value is not None}
    return towers


def all_model_status() -> list[ModelStatus]:
    return [model_status(key) for key in list_models()]


def standin_keys(statuses: list[ModelStatus]) -> list[str]:
    """Keys of the models whose cached files are random-weight stand-ins."""
    return [status.spec.key for status in statuses if status.standin]


def hub_cache() -> Path:
    return hub.cache_dir()


def plugin_errors() -> dict[str, str]:
    return dict(default_registry().plugin_errors)
