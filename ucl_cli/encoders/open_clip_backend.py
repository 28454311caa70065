"""open_clip backend: image and text embeddings from an OpenCLIP model (key prefix "clip:").

Weights come from the hub cache (open_clip's hf-hub repositories) or from a local file or folder,
and are read with safetensors or `torch.load(weights_only=True)` (ucl_cli.encoders.checkpoints).
The architecture comes from the repository's `open_clip_config.json` when it is cached (as open_clip
does for hf-hub models), else from open_clip's built-in config of the architecture. The logit
scale is the checkpoint's own, `model.logit_scale.exp()`.

`open_clip` is imported only when a model is built or a key outside the table is resolved.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ucl_cli.encoders.base import Encoder, Modality
from ucl_cli.encoders.checkpoints import IncompatibleWeightsError, load_strict, read_state_dict
from ucl_cli.encoders.registry import (
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    OPEN_CLIP_WEIGHTS_BIN,
    Backend,
    ModelFiles,
    ModelSpec,
    Registry,
    clip_preprocessing,
    open_clip_files,
    unknown_model,
)
from ucl_cli.errors import InputFileError, ModelNotAvailableError

PREFIX = "clip"
# Preferred checkpoint names inside a local folder, then any file with these suffixes.
_FOLDER_WEIGHTS = (
    OPEN_CLIP_WEIGHTS,
    OPEN_CLIP_WEIGHTS_BIN,
    "model.safetensors",
    "pytorch_model.bin",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Texts embedded together, after sorting a batch by length (so that little padding is run).
TEXT_GROUP = 16


def register(registry: Registry) -> None:
    """Entry point of the `ucl.backends` group."""
    registry.add_backend(
        Backend(name="open_clip", prefixes=(PREFIX,), build=build, resolve=resolve)
    )


# --- keys outside the table --------------------------------------------------------------------


def resolve(key: str) -> ModelSpec | None:
    """A spec for any open_clip "clip:ARCH/TAG" (hub weights) or "clip:ARCH" (weights via @PATH)."""
    import open_clip

    name = key.partition(":")[2]
    arch, _, tag = name.partition("/")
    config = open_clip.get_model_config(arch)
    known = [f"{PREFIX}:{a}/{t}" for a, t in open_clip.list_pretrained()]
    if config is None:
        raise unknown_model(key, known + [f"{PREFIX}:{a}" for a in open_clip.list_models()])
    pretrained = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    if tag and not pretrained:
        raise unknown_model(key, known)
    weights = assets = None
    if pretrained:
        weights, model_config = _hub_files(pretrained["hf_hub"])
        assets = (model_config,)
    vision, text = config["vision_cfg"], config["text_cfg"]
    preprocessing = clip_preprocessing(
        image_size=_square(vision.get("image_size", 224)),
        mean=pretrained.get("mean", clip_preprocessing()["mean"]),
        std=pretrained.get("std", clip_preprocessing()["std"]),
        interpolation=pretrained.get("interpolation", "bicubic"),
        resize_mode=pretrained.get("resize_mode", "shortest"),
        context_length=text.get("context_length", 77),
    )
    options = {"quick_gelu": True} if pretrained.get("quick_gelu") else {}
    return ModelSpec(
        key=key,
        backend="open_clip",
        architecture=arch,
        modalities=("image", "text"),
        dim=int(config["embed_dim"]),
        preprocessing=preprocessing,
        weights=weights,
        assets=assets or (),
        options=options,
        description=f"open_clip {arch}" + (f" ({tag})" if tag else " (weights from @PATH)"),
    )


def _hub_files(hf_hub: str):
    parts = hf_hub.strip("/").split("/")
    repo = "/".join(parts[:2])
    filename = parts[2] if len(parts) > 2 and parts[2] else OPEN_CLIP_WEIGHTS_BIN
    if filename == OPEN_CLIP_WEIGHTS_BIN:
        filename = OPEN_CLIP_WEIGHTS  # open_clip, too, prefers the safetensors twin
    return open_clip_files(repo, filename)


def _square(size: Any) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ModelNotAvailableError(f"non-square image size {size} is not supported")
        return int(size[0])
    return int(size)


# --- building ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Source:
    weights: Path
    config: dict[str, Any] | None  # the open_clip_config.json content, when there is one


def _find_source(spec: ModelSpec, files: ModelFiles) -> _Source:
    if files.weights is None:
        raise ModelNotAvailableError(
            f"{spec.key}: no weights are known for this key; give a checkpoint with "
            f"{spec.key}@PATH or --image-text-weights PATH"
        )
    config_path = files.assets.get("model_config")
    weights = files.weights
    if weights.is_dir():
        config_path = weights / OPEN_CLIP_CONFIG if (weights / OPEN_CLIP_CONFIG).is_file() else None
        weights = _weights_in_folder(weights)
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path else None
    return _Source(weights=weights, config=config)


def _weights_in_folder(folder: Path) -> Path:
    for name in _FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    found = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if len(found) != 1:
        reason = "has no" if not found else f"has {len(found)}"
        raise InputFileError(folder, f"{reason} checkpoint files; expected {OPEN_CLIP_WEIGHTS}")
    return found[0]


class _OpenClipLogFilter(logging.Filter):
    """Drops open_clip's log records (it logs through the root logger, e.g. 'initialized randomly'
    before we load the weights), so that nothing reaches stderr from the library."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "open_clip" not in record.pathname


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    root = logging.getLogger()
    log_filter = _OpenClipLogFilter()
    root.addFilter(log_filter)
    try:
        yield
    finally:
        root.removeFilter(log_filter)


def _model_config(spec: ModelSpec, source: _Source) -> dict[str, Any]:
    """The architecture: the checkpoint's own config if there is one, else open_clip's built-in."""
    import open_clip

    if source.config is not None:
        if "model_cfg" not in source.config:
            raise ModelNotAvailableError(f"{spec.key}: {OPEN_CLIP_CONFIG} has no 'model_cfg'")
        model_cfg = json.loads(json.dumps(source.config["model_cfg"]))
    else:
        model_cfg = open_clip.get_model_config(spec.architecture)
        if model_cfg is None:
            raise ModelNotAvailableError(
                f"{spec.key}: open_clip has no architecture {spec.architecture!r}"
            )
    if spec.options.get("quick_gelu"):
        model_cfg["quick_gelu"] = True
    return model_cfg


def model_from_config(model_cfg: dict[str, Any]) -> torch.nn.Module:
    """An open_clip model from a config dict by open_clip's own factory (no weights, no network).
    Public: the testing kit builds its stand-ins with it, so that they match what `build` loads."""
    import tempfile

    import open_clip

    with tempfile.TemporaryDirectory(prefix="ucl-open-clip-") as folder, _quiet_open_clip():
        Path(folder, OPEN_CLIP_CONFIG).write_text(
            json.dumps({"model_cfg": model_cfg}), encoding="utf-8"
        )
        return open_clip.create_model(
            f"local-dir:{folder}", load_weights=False, pretrained_text=False
        )


def _tokenizer(model_cfg: dict[str, Any], context_length: int) -> Any:
    """open_clip's tokenizer for the config: its BPE (shipped in the package) or a named HF one."""
    from open_clip.tokenizer import HFTokenizer, SimpleTokenizer

    text_cfg = model_cfg.get("text_cfg", {})
    kwargs = dict(text_cfg.get("tokenizer_kwargs", {}))
    if text_cfg.get("hf_tokenizer_name"):
        return HFTokenizer(
            text_cfg["hf_tokenizer_name"],
            context_length=context_length,
            tokenizer_mode=text_cfg.get("tokenizer_mode"),
            **kwargs,
        )
    return SimpleTokenizer(context_length=context_length, **kwargs)


def _fit_state_dict(
    model: torch.nn.Module, state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """open_clip's own compatibility steps for older checkpoints (as its load_checkpoint does)."""
    from open_clip.convert import convert_state_dict
    from open_clip.model import resize_pos_embed, resize_text_pos_embed

    state = convert_state_dict(model, state)
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    if getattr(model, "logit_bias", None) is not None and "logit_bias" not in state:
        state["logit_bias"] = torch.zeros_like(model.logit_bias)
    state.pop("text.transformer.embeddings.position_ids", None)
    for resize in (resize_pos_embed, resize_text_pos_embed):
        # Interpolates position embeddings of another length; on a real mismatch (another width)
        # open_clip asserts, and load_strict below reports the mismatch properly instead.
        with contextlib.suppress(AssertionError, RuntimeError, ValueError):
            resize(state, model)
    return state


def _check_preprocessing(spec: ModelSpec, model: torch.nn.Module) -> None:
    size = _square(getattr(model.visual, "image_size", spec.preprocessing["image_size"]))
    if size != spec.preprocessing["image_size"]:
        raise IncompatibleWeightsError(
            f"{spec.key}: the model takes {size}px images, the registry says "
            f"{spec.preprocessing['image_size']}px"
        )


def build(spec: ModelSpec, files: ModelFiles, device: str) -> Encoder:
    source = _find_source(spec, files)
    state = read_state_dict(source.weights)  # first: an unreadable or unsafe file fails fast
    model_cfg = _model_config(spec, source)
    model = model_from_config(model_cfg)
    state = _fit_state_dict(model, state)
    load_strict(model, state, source.weights, f"open_clip {spec.architecture}")
    _check_preprocessing(spec, model)
    model = model.to(device).eval()
    tokenizer = _tokenizer(model_cfg, spec.preprocessing["context_length"])
    return OpenClipEncoder(
        spec, model, tokenizer, int(model_cfg["embed_dim"]), device, source.weights
    )


# --- the encoder -------------------------------------------------------------------------------


class OpenClipEncoder(Encoder):
    """Image and text embeddings of a loaded open_clip model."""

    default_batch_size = 64

    def __init__(
        self,
        spec: ModelSpec,
        model: torch.nn.Module,
        tokenizer: Any,
        dim: int,
        device: str,
        weights_path: Path,
    ):
        import open_clip

        pre = spec.preprocessing
        self.key = spec.key
        self.modalities = frozenset({Modality.IMAGE, Modality.TEXT})
        self.dim = dim
        self.preprocessing = dict(pre)
        self.device = device
        self.model = model
        self.tokenizer = tokenizer
        self.text_context = int(pre["context_length"])  # tokens, start and end included
        self.weights_path = weights_path
        self.logit_scale = float(model.logit_scale.detach().exp().item())
        self.transform = open_clip.image_transform(
            pre["image_size"],
            is_train=False,
            mean=tuple(pre["mean"]),
            std=tuple(pre["std"]),
            resize_mode=pre["resize_mode"],
            interpolation=pre["interpolation"],
        )

    def text_token_counts(self, texts: list[str]) -> list[int]:
        """Tokens each text takes, start and end included: past `text_context` the tokenizer
        cuts the text (so that a bank can say which of its texts were cut, and where)."""
        from open_clip.tokenizer import SimpleTokenizer

        if isinstance(self.tokenizer, SimpleTokenizer):
            return [len(self.tokenizer.encode(str(text))) + 2 for text in texts]
        inner = self.tokenizer.tokenizer  # open_clip's HFTokenizer wraps a transformers one
        return [len(ids) for ids in inner([str(t) for t in texts], verbose=False)["input_ids"]]

    def _embed_batch(self, modality: Modality, batch: list[Any]) -> torch.Tensor:
        if modality is Modality.TEXT:
            return self._embed_text([str(text) for text in batch])
        pixels = torch.stack([self.transform(image) for image in batch]).to(self.device)
        return self.model.encode_image(pixels)

    def _embed_text(self, texts: list[str]) -> torch.Tensor:
        """Groups of TEXT_GROUP texts of similar length, each without padding past its longest
        (see `encode_text_unpadded`), back in the given order."""
        tokens = self.tokenizer(texts).to(self.device)
        order = torch.argsort(tokens.argmax(dim=-1), stable=True)  # end-of-text position
        vectors = torch.cat(
            [encode_text_unpadded(self.model, tokens[group]) for group in order.split(TEXT_GROUP)]
        )
        return vectors[torch.argsort(order)]


def encode_text_unpadded(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`model.encode_text(tokens)` without the padding after the batch's last end-of-text token.

    open_clip pads every text to the full context (77 tokens) although most captions and labels
    take a few; the padding is most of the text tower's time (AudioSet's labels: 6 on average).
    Under the causal mask no position attends to a later one, so the pooled end-of-text token
    (the highest id in each row) is the same when the tokens after it are left out: this
    computes open_clip's `CLIP.encode_text` on the first L positions, with the positional
    embedding and mask cut to L. Models of another shape (no causal mask, another pooling, a
    separate text tower) get `model.encode_text` itself.
    """
    mask = getattr(model, "attn_mask", None)
    if (
        getattr(model, "text_pool_type", None) != "argmax"
        or getattr(model, "positional_embedding", None) is None
        or not isinstance(mask, torch.Tensor)
        or tokens.ndim != 2
        or tokens.shape[1] != mask.shape[0]
    ):
        return model.encode_text(tokens)
    length = int(tokens.argmax(dim=-1).max().item()) + 1
    tokens = tokens[:, :length]
    cast_dtype = model.transformer.get_cast_dtype()
    x = model.token_embedding(tokens).to(cast_dtype)
    x = x + model.positional_embedding[:length].to(cast_dtype)
    x = model.transformer(x, attn_mask=mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
    projection = model.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection
