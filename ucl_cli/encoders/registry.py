"""The one table that knows every model, and `load_encoder`, the thin composer over it.

A model key is `PREFIX:NAME[@PATH]`:
- a key of the table below ("clip:ViT-B-32/laion2b_s34b_b79k", "clap:630k-audioset-best");
- a name a backend resolves itself: any open_clip "clip:ARCH/TAG", or "npy:/path/emb.npy";
- any of these with "@PATH": the weights come from a local file (or directory) instead of the hub
  cache, e.g. "clip:ViT-B-32@/models/my-finetune.safetensors".

Backends register through the entry-point group `ucl.backends`; the built-in ones exactly like a
third-party package would: the entry point names a `register(registry)` function that calls
`registry.add_backend(Backend(...))` and, if it likes, `registry.add_model(ModelSpec(...))`.

`load_encoder` resolves the spec, locates (and verifies) the weights, builds the backend, attaches
the preprocessing and logit scale: each stage a short function below. Nothing here imports a
model library; nothing is built at import time (the registry is filled on first use).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ucl_cli.config import resolve_device
from ucl_cli.encoders.base import Encoder
from ucl_cli.encoders.hub import HubFile, MissingModelFileError, cache_dir, find_cached, locate
from ucl_cli.errors import ModelNotAvailableError, UnknownModelError, UsageError

DEFAULT_IMAGE_TEXT = "clip:ViT-B-32/laion2b_s34b_b79k"
DEFAULT_TEXT_AUDIO = "clap:630k-audioset-best"
DEFAULT_KEYS = (DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO)

ENTRY_POINT_GROUP = "ucl.backends"
# The built-in backends as pyproject.toml declares them. Used only for names that no installed
# distribution provides, i.e. when running from a source checkout that was not pip-installed
# (tests/test_encoders.py checks that this mirrors pyproject.toml).
BUILTIN_ENTRY_POINTS = {
    "open_clip": "ucl_cli.encoders.open_clip_backend:register",
    "laion_clap": "ucl_cli.encoders.clap_backend:register",
    "npy": "ucl_cli.encoders.precomputed:register",
}


@dataclass(frozen=True)
class ModelSpec:
    """Everything known about one model before it is loaded.

    backend: name of the registered backend that builds it ("open_clip", "laion_clap", "npy").
    architecture: the backend's architecture name ("ViT-B-32", "HTSAT-tiny").
    weights: the checkpoint in the model hub; `local_weights` replaces it with a user's file.
    assets: other hub files the backend needs (configs, tokenizers), each with a role.
    preprocessing: how inputs are prepared (JSON-able); becomes `Encoder.preprocessing`.
    options: backend-specific build options (e.g. {"fusion": True}).
    logit_scale: a stated scale; None means "read it from the weights".
    """

    key: str
    backend: str
    architecture: str
    modalities: tuple[str, ...]
    dim: int
    preprocessing: Mapping[str, Any]
    weights: HubFile | None = None
    assets: tuple[HubFile, ...] = ()
    options: Mapping[str, Any] = field(default_factory=dict)
    local_weights: Path | None = None
    logit_scale: float | None = None
    description: str = ""

    @property
    def prefix(self) -> str:
        return self.key.partition(":")[0]

    def hub_files(self) -> tuple[HubFile, ...]:
        """The hub files `load_encoder` will look for (weights first)."""
        weights = () if self.weights is None or self.local_weights is not None else (self.weights,)
        return weights + tuple(a for a in self.assets if self._needs_asset(a))

    def _needs_asset(self, asset: HubFile) -> bool:
        # An asset of the weights' own repository (e.g. open_clip_config.json) describes the hub
        # checkpoint; it does not describe a local file the user substituted for it.
        tied = self.weights is not None and asset.repo == self.weights.repo
        return not (tied and self.local_weights is not None)


@dataclass(frozen=True)
class ModelFiles:
    """Local paths of a spec's files: the weights (a file or a folder) and assets by role."""

    weights: Path | None
    assets: Mapping[str, Path]


BuildFunction = Callable[[ModelSpec, ModelFiles, str], Encoder]
ResolveFunction = Callable[[str], "ModelSpec | None"]


@dataclass(frozen=True)
class Backend:
    """A way to build encoders. `prefixes` are the key prefixes it serves ("clip").

    build(spec, files, device) returns an Encoder whose weights are loaded.
    resolve(key), optional, returns a spec for a key outside the table (or None, or raises
    UnknownModelError with suggestions).
    weights_path_suffix: whether "KEY@PATH" means "KEY with weights from PATH" for this backend
      (False for backends whose key already is a path).
    """

    name: str
    prefixes: tuple[str, ...]
    build: BuildFunction
    resolve: ResolveFunction | None = None
    weights_path_suffix: bool = True


class Registry:
    """Backends and model specs. Filled by `register(registry)` hooks of entry points."""

    def __init__(self, models: Iterable[ModelSpec] = ()):
        self.backends: dict[str, Backend] = {}
        self.models: dict[str, ModelSpec] = {}
        self.plugin_errors: dict[str, str] = {}
        for spec in models:
            self.add_model(spec)

    def add_backend(self, backend: Backend) -> None:
        for prefix in backend.prefixes:
            other = self.backend_for_prefix(prefix)
            if other is not None and other.name != backend.name:
                raise UsageError(
                    f"backend {backend.name!r} claims key prefix {prefix!r}, "
                    f"already served by backend {other.name!r}"
                )
        self.backends[backend.name] = backend

    def add_model(self, spec: ModelSpec) -> None:
        if ":" not in spec.key:
            raise UsageError(f"model key {spec.key!r} needs a prefix (e.g. 'clip:')")
        self.models[spec.key] = spec

    def backend_for_prefix(self, prefix: str) -> Backend | None:
        for backend in self.backends.values():
            if prefix in backend.prefixes:
                return backend
        return None

    def backend(self, name: str) -> Backend:
        if name in self.backends:
            return self.backends[name]
        hint = (
            f" (its plugin failed to load: {self.plugin_errors[name]})"
            if name in self.plugin_errors
            else ""
        )
        raise ModelNotAvailableError(
            f"no model backend named {name!r} is registered{hint}; installed backends: "
            f"{', '.join(sorted(self.backends)) or 'none'}"
        )


# --- the table ---------------------------------------------------------------------------------

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_HALF = (0.5, 0.5, 0.5)
OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_WEIGHTS_BIN = "open_clip_pytorch_model.bin"
OPEN_CLIP_CONFIG = "open_clip_config.json"
CLAP_REPO = "lukewys/laion_clap"
ROBERTA_REPO = "roberta-base"
ROBERTA_ALIASES = ("FacebookAI/roberta-base",)
ROBERTA_FILES = {
    "text_config": "config.json",
    "text_vocab": "vocab.json",
    "text_merges": "merges.txt",
}


def clip_preprocessing(
    image_size: int = 224,
    mean: Iterable[float] = _OPENAI_MEAN,
    std: Iterable[float] = _OPENAI_STD,
    interpolation: str = "bicubic",
    resize_mode: str = "shortest",
    context_length: int = 77,
) -> dict[str, Any]:
    return {
        "image_size": image_size,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "interpolation": interpolation,
        "resize_mode": resize_mode,
        "context_length": context_length,
    }


def clap_preprocessing(fusion: bool) -> dict[str, Any]:
    """laion_clap's input pipeline, with its random crop made deterministic (see clap_audio)."""
    return {
        "sample_rate": 48_000,
        "clip_samples": 480_000,
        "quantize": "int16",
        "crop": "fusion-center" if fusion else "center",
        "pad": "repeatpad",
        "fusion": fusion,
        "text_max_length": 77,
    }


def open_clip_files(repo: str, filename: str = OPEN_CLIP_WEIGHTS) -> tuple[HubFile, HubFile]:
    """The weights (safetensors preferred, .bin twin accepted) and optional config of a repo."""
    fallbacks = (OPEN_CLIP_WEIGHTS_BIN,) if filename == OPEN_CLIP_WEIGHTS else ()
    weights = HubFile(repo=repo, filename=filename, fallbacks=fallbacks)
    config = HubFile(repo=repo, filename=OPEN_CLIP_CONFIG, role="model_config", optional=True)
    return weights, config


def roberta_files() -> tuple[HubFile, ...]:
    return tuple(
        HubFile(repo=ROBERTA_REPO, filename=name, role=role, aliases=ROBERTA_ALIASES)
        for role, name in ROBERTA_FILES.items()
    )


def _clip(arch: str, tag: str, repo: str, dim: int, description: str, **pre: Any) -> ModelSpec:
    weights, config = open_clip_files(repo)
    options = {"quick_gelu": pre.pop("quick_gelu")} if "quick_gelu" in pre else {}
    return ModelSpec(
        key=f"clip:{arch}/{tag}",
        backend="open_clip",
        architecture=arch,
        modalities=("image", "text"),
        dim=dim,
        preprocessing=clip_preprocessing(**pre),
        weights=weights,
        assets=(config,),
        options=options,
        description=description,
    )


def _clap(name: str, arch: str, dim: int, fusion: bool, description: str) -> ModelSpec:
    return ModelSpec(
        key=f"clap:{name}",
        backend="laion_clap",
        architecture=arch,
        modalities=("audio", "text"),
        dim=dim,
        preprocessing=clap_preprocessing(fusion),
        weights=HubFile(repo=CLAP_REPO, filename=f"{name}.pt"),
        assets=roberta_files(),
        options={"fusion": fusion, "fusion_type": "aff_2d" if fusion else None},
        description=description,
    )


# Checksums are left None: none could be verified from here. Revisions track "main".
BUILTIN_MODELS: tuple[ModelSpec, ...] = (
    _clip(
        "ViT-B-32",
        "laion2b_s34b_b79k",
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",
        512,
        "OpenCLIP ViT-B/32 on LAION-2B (the paper's image-text model)",
    ),
    _clip(
        "ViT-B-32",
        "datacomp_xl_s13b_b90k",
        "laion/CLIP-ViT-B-32-DataComp.XL-s13B-b90K",
        512,
        "OpenCLIP ViT-B/32 on DataComp-XL",
    ),
    _clip(
        "ViT-B-32",
        "openai",
        "timm/vit_base_patch32_clip_224.openai",
        512,
        "OpenAI CLIP ViT-B/32 (QuickGELU)",
        quick_gelu=True,
    ),
    _clip(
        "ViT-B-16",
        "laion2b_s34b_b88k",
        "laion/CLIP-ViT-B-16-laion2B-s34B-b88K",
        512,
        "OpenCLIP ViT-B/16 on LAION-2B",
    ),
    _clip(
        "ViT-L-14",
        "laion2b_s32b_b82k",
        "laion/CLIP-ViT-L-14-laion2B-s32B-b82K",
        768,
        "OpenCLIP ViT-L/14 on LAION-2B",
        mean=_HALF,
        std=_HALF,
    ),
    _clap(
        "630k-audioset-best",
        "HTSAT-tiny",
        512,
        False,
        "LAION-CLAP HTSAT-tiny on LAION-Audio-630K + AudioSet, non-fusion (the paper's)",
    ),
    _clap("630k-best", "HTSAT-tiny", 512, False, "LAION-CLAP HTSAT-tiny on LAION-Audio-630K"),
    _clap(
        "630k-audioset-fusion-best",
        "HTSAT-tiny",
        512,
        True,
        "LAION-CLAP HTSAT-tiny with feature fusion for long clips, 630K + AudioSet",
    ),
    _clap(
        "630k-fusion-best",
        "HTSAT-tiny",
        512,
        True,
        "LAION-CLAP HTSAT-tiny with feature fusion, LAION-Audio-630K",
    ),
    _clap(
        "music_audioset_epoch_15_esc_90.14",
        "HTSAT-base",
        512,
        False,
        "LAION-CLAP HTSAT-base for music (music + AudioSet)",
    ),
    _clap(
        "music_speech_audioset_epoch_15_esc_89.98",
        "HTSAT-base",
        512,
        False,
        "LAION-CLAP HTSAT-base for music, speech and general audio",
    ),
)


# --- the registry, filled on first use ---------------------------------------------------------

_lock = threading.RLock()
_registry: Registry | None = None


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    found = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    names = {ep.name for ep in found}
    for name, value in BUILTIN_ENTRY_POINTS.items():
        if name not in names:
            found.append(importlib.metadata.EntryPoint(name, value, ENTRY_POINT_GROUP))
    return found


def build_registry() -> Registry:
    """A registry with the table and every `ucl.backends` entry point's `register` hook applied."""
    registry = Registry(BUILTIN_MODELS)
    for entry_point in _entry_points():
        try:
            entry_point.load()(registry)
        except Exception as err:  # a broken plugin must not take the other backends down
            registry.plugin_errors[entry_point.name] = f"{type(err).__name__}: {err}"
    return registry


def default_registry() -> Registry:
    """The process-wide registry (built on first call)."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = build_registry()
        return _registry


def reset_registry() -> None:
    """Forget the registry so that the next call reloads the entry points (tests, plugins)."""
    global _registry
    with _lock:
        _registry = None


def list_models() -> list[str]:
    """Keys of every model in the table (and those plugins added), sorted by prefix and name."""
    return sorted(default_registry().models)


def closest_keys(key: str, candidates: Iterable[str], n: int = 3) -> list[str]:
    """Up to n candidates that look like `key` (ignoring case), with or without its prefix."""
    by_lower = {c.lower(): c for c in candidates}
    by_bare = {c.partition(":")[2]: c for c in by_lower}
    wanted = key.lower()
    found = difflib.get_close_matches(wanted, list(by_lower), n=n, cutoff=0.5)
    bare = wanted.partition(":")[2] or wanted
    found += [by_bare[m] for m in difflib.get_close_matches(bare, list(by_bare), n=n, cutoff=0.5)]
    return [by_lower[m] for m in dict.fromkeys(found)][:n]


def unknown_model(key: str, candidates: Iterable[str]) -> UnknownModelError:
    close = closest_keys(key, candidates)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return UnknownModelError(f"unknown model {key!r}{hint} (`ucl models` lists the known ones)")


def get_spec(key: str) -> ModelSpec:
    """The spec of `key`; UnknownModelError offering the closest names when there is none."""
    reg = default_registry()
    key = key.strip()
    if key in reg.models:
        return reg.models[key]
    prefix = key.partition(":")[0] if ":" in key else ""
    backend = reg.backend_for_prefix(prefix)
    name, at, path = key.partition("@")
    if at and (backend is None or backend.weights_path_suffix):
        if not path:
            raise UsageError(f"model key {key!r}: nothing after '@' (expected a path to weights)")
        return replace(get_spec(name), key=key, local_weights=Path(path).expanduser())
    spec = backend.resolve(key) if backend is not None and backend.resolve is not None else None
    if spec is None:
        raise unknown_model(key, reg.models)
    return spec


# --- the composer ------------------------------------------------------------------------------


def load_encoder(
    key: str,
    *,
    device: str = "cpu",
    weights: str | Path | None = None,
    logit_scale: float | None = None,
) -> Encoder:
    """Load the model `key` as an Encoder: spec -> files -> backend -> preprocessing.

    device: "cpu", "cuda", "cuda:1" or "auto" (CUDA when torch sees a GPU).
    weights: a local checkpoint file (or folder) used instead of the hub cache.
    logit_scale: replaces the scale read from the weights (required for precomputed embeddings).
    Raises UnknownModelError, ModelNotAvailableError (files missing, unsafe or not matching).
    """
    spec = resolve_spec(key, weights)
    files = locate_files(spec)
    encoder = build_encoder(spec, files, resolve_device(device))
    # The weight files' identity; a backend without files may state its own.
    encoder.weights_id = weights_id(files) or getattr(encoder, "weights_id", None)  # type: ignore[attr-defined]
    # Random-weight stand-ins (scripts/make_test_models.py) say so, so commands can warn.
    encoder.standin = bool(standin_files(files))  # type: ignore[attr-defined]
    return attach(encoder, spec, logit_scale)


def standin_files(files: ModelFiles) -> list[Path]:
    """The files of a model that carry the stand-in mark (headers only are read)."""
    from ucl_cli.encoders.standin_marks import marked_files

    return marked_files(p for p in (files.weights, *files.assets.values()) if p is not None)


def resolve_spec(key: str, weights: str | Path | None = None) -> ModelSpec:
    spec = get_spec(key)
    if weights is not None:
        spec = replace(spec, local_weights=Path(weights).expanduser())
    return spec


def locate_files(spec: ModelSpec) -> ModelFiles:
    """Local paths of the spec's files. Offline; names every missing file at once."""
    weights: Path | None = None
    if spec.local_weights is not None:
        if not spec.local_weights.exists():
            raise ModelNotAvailableError(
                f"{spec.local_weights}: no such weights file or folder (given for {spec.key})"
            )
        weights = spec.local_weights
    missing: list[HubFile] = []
    assets: dict[str, Path] = {}
    for hub_file in spec.hub_files():
        path = locate(hub_file)
        if path is None:
            if not hub_file.optional:
                missing.append(hub_file)
        elif hub_file is spec.weights:
            weights = path
        else:
            assets[hub_file.role] = path
    if missing:
        raise MissingModelFileError(spec.key, missing, cache_dir(), weights=spec.weights)
    return ModelFiles(weights=weights, assets=assets)


def weights_id(files: ModelFiles) -> str | None:
    """Which bytes the weights are, as "sha256:<hex>": vectors and banks are keyed by it, so two
    checkpoints under one registry key (stand-ins then real weights, a fine-tuned file) never
    share them. A hub blob is named by its SHA-256 already; any other file is read once and its
    digest memoised by path and stat (`ucl_cli.digests`); a folder's files are combined."""
    path = files.weights
    if path is None:
        return None
    members = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    digests = [_file_sha256(member) for member in members]
    if len(digests) == 1:
        return f"sha256:{digests[0]}"
    listing = "".join(f"{m.name}\0{d}\n" for m, d in zip(members, digests, strict=True))
    return "sha256:" + hashlib.sha256(listing.encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    from ucl_cli.digests import memoised_sha256

    real = path.resolve()
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name  # the hub names large files' blobs by their SHA-256
    return memoised_sha256(real)


def build_encoder(spec: ModelSpec, files: ModelFiles, device: str) -> Encoder:
    return default_registry().backend(spec.backend).build(spec, files, device)


def attach(encoder: Encoder, spec: ModelSpec, logit_scale: float | None) -> Encoder:
    """Set key and preprocessing from the spec; apply a stated logit scale; check the dimension."""
    encoder.key = spec.key
    encoder.preprocessing = {
        **dict(spec.preprocessing),
        **dict(getattr(encoder, "preprocessing", {}) or {}),
    }
    if encoder.dim != spec.dim:
        raise ModelNotAvailableError(
            f"{spec.key}: the weights give {encoder.dim}-dimensional embeddings, the registry "
            f"says {spec.dim}"
        )
    if logit_scale is not None:
        if not math.isfinite(logit_scale) or logit_scale <= 0:
            raise UsageError(f"logit scale must be a positive number, got {logit_scale}")
        encoder.logit_scale = float(logit_scale)
    if getattr(encoder, "logit_scale", None) is None:
        raise UsageError(
            f"{spec.key}: its logit scale is unknown; state it (logit_scale=S, or --logit-scale S "
            "on the command line), e.g. the value the model was trained with"
        )
    return encoder


# --- what is installed -------------------------------------------------------------------------


@dataclass(frozen=True)
class FileStatus:
    file: HubFile
    path: Path | None

    @property
    def present(self) -> bool:
        return self.path is not None


def file_status(spec: ModelSpec) -> list[FileStatus]:
    """For each hub file of `spec`: where it is in the cache, or None. Never goes online."""
    return [FileStatus(f, find_cached(f)) for f in spec.hub_files()]


def is_available(spec: ModelSpec) -> bool:
    """True when every required file of `spec` is local."""
    if spec.local_weights is not None and not spec.local_weights.exists():
        return False
    return all(s.present or s.file.optional for s in file_status(spec))


def fetch_model(key: str) -> list[Path]:
    """Download every hub file of `key` into the hub cache (needs the network); return the paths."""
    from ucl_cli.encoders.hub import download

    spec = get_spec(key)
    paths = []
    for hub_file in spec.hub_files():
        path = download(hub_file)
        if path is not None:
            paths.append(path)
    return paths
