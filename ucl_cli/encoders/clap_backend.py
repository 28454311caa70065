"""laion_clap backend: audio and text embeddings from a LAION-CLAP model (key prefix "clap:").

What this module does differently from laion_clap's `CLAP_Module`, and why:
- It never runs `import laion_clap`: that package's `__init__` imports `training/data.py`, which
  loads the bert-base-uncased, roberta-base and facebook/bart-base tokenizers from the hub at
  import time (minutes of retries, then a crash, on a machine without internet). The model code
  lives in laion_clap's `clap_module` package, imported here under that same top-level name (as
  laion_clap itself does), without the package `__init__`.
- laion_clap's `CLAP()` constructor calls `RobertaModel.from_pretrained("roberta-base")`, i.e.
  downloads roberta-base's 500 MB of weights only for the checkpoint to overwrite them. We build
  the text tower from roberta-base's `config.json` alone (found in the hub cache), by standing in
  for `RobertaModel` in `clap_module.model` while the model is constructed.
- Checkpoints are read with `torch.load(weights_only=True)` (laion_clap's `load_state_dict`
  unpickles anything), the DDP "module." prefix is stripped, the
  `text_branch.embeddings.position_ids` key (a persistent buffer before transformers 4.31) is
  dropped, and the load is strict: a missing or unexpected key is an error.
- Audio is cropped deterministically (see clap_audio); a batch of one text works; the tokenizer
  comes from the cached roberta-base files, never from a hub name.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

from ucl_cli.encoders.base import Encoder, Modality
from ucl_cli.encoders.checkpoints import IncompatibleWeightsError, load_strict, read_state_dict
from ucl_cli.encoders.clap_audio import AudioSettings, collate, prepare
from ucl_cli.encoders.registry import (
    Backend,
    ModelFiles,
    ModelSpec,
    Registry,
    clap_preprocessing,
    roberta_files,
    unknown_model,
)
from ucl_cli.errors import ModelNotAvailableError

PREFIX = "clap"
TEXT_WIDTH = 768  # clap_module.model.CLAP hard-codes a 768-wide projection for its roberta tower
# Texts embedded together, after sorting a batch by length (so that little padding is run).
TEXT_GROUP = 16
# Keys that old checkpoints hold as buffers and newer transformers no longer save.
_STALE_TEXT_BUFFERS = (
    "text_branch.embeddings.position_ids",
    "text_branch.embeddings.token_type_ids",
)

_import_lock = threading.Lock()
_build_lock = threading.Lock()


def register(registry: Registry) -> None:
    """Entry point of the `ucl.backends` group."""
    registry.add_backend(
        Backend(name="laion_clap", prefixes=(PREFIX,), build=build, resolve=resolve)
    )


# --- laion_clap's model code, without laion_clap/__init__ -------------------------------------


def _laion_clap_dir() -> Path:
    found = importlib.util.find_spec("laion_clap")
    if found is None or not found.submodule_search_locations:
        raise ModelNotAvailableError(
            "the laion_clap package is not installed (pip install laion-clap)"
        )
    return Path(next(iter(found.submodule_search_locations)))


def architectures() -> list[str]:
    """laion_clap's audio architectures (its model_configs), listed without importing it."""
    return sorted(
        p.stem for p in (_laion_clap_dir() / "clap_module" / "model_configs").glob("*.json")
    )


def clap_module() -> ModuleType:
    """laion_clap's `clap_module` package, imported as laion_clap itself names it."""
    with _import_lock:
        if "clap_module" in sys.modules:
            return sys.modules["clap_module"]
        folder = _laion_clap_dir() / "clap_module"
        spec = importlib.util.spec_from_file_location(
            "clap_module", folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        if spec is None or spec.loader is None:
            raise ModelNotAvailableError(f"cannot import laion_clap's model code from {folder}")
        module = importlib.util.module_from_spec(spec)
        sys.modules["clap_module"] = module
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)  # timm.models.layers deprecation
                spec.loader.exec_module(module)
        except BaseException:
            del sys.modules["clap_module"]
            raise
        return module


class _RobertaFromConfig:
    """Takes the place of transformers.RobertaModel in clap_module.model while CLAP() is built:
    `from_pretrained(<any name>)` returns a RobertaModel built from our config, without weights."""

    def __init__(self, config: Any):
        self.config = config

    def from_pretrained(self, *_args: Any, **_kwargs: Any) -> torch.nn.Module:
        from transformers import RobertaModel

        return RobertaModel(self.config)


@contextlib.contextmanager
def _text_tower_from(config: Any) -> Iterator[None]:
    model_module = sys.modules["clap_module.model"]
    original = model_module.RobertaModel
    model_module.RobertaModel = _RobertaFromConfig(config)
    try:
        yield
    finally:
        model_module.RobertaModel = original


def read_text_config(path: Path) -> Any:
    from transformers import RobertaConfig

    try:
        config = RobertaConfig.from_json_file(str(path))
    except (OSError, ValueError, json.JSONDecodeError) as err:
        raise ModelNotAvailableError(f"{path}: not a readable RoBERTa config ({err})") from None
    if config.hidden_size != TEXT_WIDTH:
        raise IncompatibleWeightsError(
            f"{path}: CLAP's text tower needs hidden_size {TEXT_WIDTH}, "
            f"this config has {config.hidden_size}"
        )
    return config


def create_model(architecture: str, fusion: bool, text_config: Any) -> tuple[torch.nn.Module, dict]:
    """An untrained CLAP model (laion_clap's own factory) and its config. No files, no network."""
    if architecture not in architectures():
        raise ModelNotAvailableError(
            f"laion_clap has no audio architecture {architecture!r} "
            f"(it has: {', '.join(architectures())})"
        )
    clap = clap_module()
    with _build_lock, _text_tower_from(text_config), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.meshgrid")  # inside HTSAT, harmless
        model, model_cfg = clap.create_model(
            architecture,
            "roberta",
            precision="fp32",
            device="cpu",
            enable_fusion=fusion,
            fusion_type="aff_2d" if fusion else "None",
        )
    return model.eval(), model_cfg


def fit_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    expected = model.state_dict()
    for key in _STALE_TEXT_BUFFERS:
        if key in state and key not in expected:
            del state[key]
    return state


def load_tokenizer(vocab: Path, merges: Path) -> Any:
    """roberta-base's tokenizer from its cached vocab.json and merges.txt (never by hub name)."""
    import shutil
    import tempfile

    from transformers import RobertaTokenizer

    if vocab.parent == merges.parent:
        return RobertaTokenizer.from_pretrained(str(vocab.parent))
    with tempfile.TemporaryDirectory(prefix="ucl-roberta-") as folder:
        shutil.copy(vocab, Path(folder, "vocab.json"))
        shutil.copy(merges, Path(folder, "merges.txt"))
        return RobertaTokenizer.from_pretrained(folder)


# --- keys outside the table --------------------------------------------------------------------


def resolve(key: str) -> ModelSpec | None:
    """A spec for "clap:ARCH" (a laion_clap architecture) or "clap:ARCH+fusion"; @PATH weights."""
    name = key.partition(":")[2]
    arch, plus, flag = name.partition("+")
    fusion = plus and flag == "fusion"
    if arch not in architectures() or (plus and not fusion):
        names = [f"{PREFIX}:{a}" for a in architectures()]
        from ucl_cli.encoders.registry import default_registry

        raise unknown_model(
            key, [k for k in default_registry().models if k.startswith(f"{PREFIX}:")] + names
        )
    return ModelSpec(
        key=key,
        backend="laion_clap",
        architecture=arch,
        modalities=("audio", "text"),
        dim=512,
        preprocessing=clap_preprocessing(bool(fusion)),
        assets=roberta_files(),
        options={"fusion": bool(fusion)},
        description=f"laion_clap {arch}{' with fusion' if fusion else ''} (weights from @PATH)",
    )


# --- building ----------------------------------------------------------------------------------


def build(spec: ModelSpec, files: ModelFiles, device: str) -> Encoder:
    if files.weights is None or files.weights.is_dir():
        raise ModelNotAvailableError(
            f"{spec.key}: needs a checkpoint file; give one with {spec.key}@PATH or "
            "--text-audio-weights PATH"
        )
    fusion = bool(spec.options.get("fusion"))
    state = read_state_dict(files.weights)  # first: an unreadable or unsafe file fails fast
    model, model_cfg = create_model(
        spec.architecture, fusion, read_text_config(files.assets["text_config"])
    )
    state = fit_state_dict(model, state)
    load_strict(
        model,
        state,
        files.weights,
        f"laion_clap {spec.architecture}{' (fusion)' if fusion else ''}",
    )
    settings = AudioSettings.from_audio_cfg(model_cfg["audio_cfg"], fusion)
    _check_preprocessing(spec, settings)
    tokenizer = load_tokenizer(files.assets["text_vocab"], files.assets["text_merges"])
    return ClapEncoder(spec, model.to(device).eval(), tokenizer, settings, device, files.weights)


def _check_preprocessing(spec: ModelSpec, settings: AudioSettings) -> None:
    for name in ("sample_rate", "clip_samples"):
        stated, actual = spec.preprocessing.get(name), getattr(settings, name)
        if stated is not None and stated != actual:
            raise IncompatibleWeightsError(
                f"{spec.key}: the model's {name} is {actual}, the registry says {stated}"
            )


class ClapEncoder(Encoder):
    """Audio and text embeddings of a loaded laion_clap model."""

    default_batch_size = 16

    def __init__(
        self,
        spec: ModelSpec,
        model: torch.nn.Module,
        tokenizer: Any,
        settings: AudioSettings,
        device: str,
        weights_path: Path,
    ):
        self.key = spec.key
        self.modalities = frozenset({Modality.AUDIO, Modality.TEXT})
        self.dim = int(model.audio_projection[-1].out_features)
        self.preprocessing = dict(spec.preprocessing)
        self.device = device
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.weights_path = weights_path
        self.text_max_length = int(spec.preprocessing.get("text_max_length", 77))
        self.text_context = self.text_max_length  # tokens, <s> and </s> included
        self.logit_scale = float(model.logit_scale_a.detach().exp().item())

    def _embed_batch(self, modality: Modality, batch: list[Any]) -> torch.Tensor:
        if modality is Modality.TEXT:
            return self._embed_text([str(text) for text in batch])
        return self._embed_audio(batch)

    def text_token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text takes, <s> and </s> included: past `text_context` the tokenizer cuts
        the text (so that a bank can say which of its texts were cut, and where)."""
        ids = self.tokenizer([str(t) for t in texts], truncation=False, verbose=False)
        return [len(row) for row in ids["input_ids"]]

    def _embed_text(self, texts: list[str]) -> torch.Tensor:
        # laion_clap pads every text to text_max_length (77); here each group of TEXT_GROUP
        # texts of similar length is padded to its longest: the attention mask hides padding
        # from every real token and RoBERTa numbers positions from the real tokens, so the
        # vectors are the same, and a short text costs its own few tokens, not 77.
        tokens = self.tokenizer(
            texts,
            padding="longest",
            truncation=True,
            max_length=self.text_max_length,
            return_tensors="pt",
        )
        ids, mask = tokens["input_ids"], tokens["attention_mask"]
        lengths = mask.sum(dim=1)
        order = torch.argsort(lengths, stable=True)
        parts = []
        for group in order.split(TEXT_GROUP):
            width = int(lengths[group].max())
            inputs = {
                "input_ids": ids[group, :width].to(self.device),
                "attention_mask": mask[group, :width].to(self.device),
            }
            parts.append(self.model.encode_text(inputs, device=self.device))
        vectors = torch.cat(parts)
        return vectors[torch.argsort(order)]

    def _embed_audio(self, clips: list[Any]) -> torch.Tensor:
        inputs = collate([prepare(clip, self.settings) for clip in clips])
        inputs = {name: value.to(self.device) for name, value in inputs.items()}
        features = self.model.encode_audio(inputs, device=self.device)["embedding"]
        return self.model.audio_projection(features)
