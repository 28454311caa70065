"""RANDOM-WEIGHT stand-ins of the default models, written into a hub-cache layout.

They have the architectures and file names of the real models (or, with `small=True`, much smaller
configs of the same families) so that every command runs offline, through the production loading
code, in tests, benchmarks and demos. Their embeddings are meaningless: never use them for results.

The layout is the Hugging Face hub cache's (`HF_HOME=ROOT` or `HF_HUB_CACHE=ROOT/hub`):
    ROOT/hub/models--ORG--NAME/{blobs/SHA256, refs/main, snapshots/COMMIT/FILE -> blob}
The commit id of every stand-in is STANDIN_COMMIT (all zeros), which no real commit has.

Every stand-in's weights and configs carry the mark of `ucl_cli.encoders.standin_marks`, which
the product reads to warn "random weights: rankings are meaningless".

Files written (as the real repositories name them):
- laion/CLIP-ViT-B-32-laion2B-s34B-b79K: open_clip_model.safetensors, open_clip_config.json
  (open_clip's BPE vocabulary ships inside the open_clip package, so no tokenizer file is needed)
- lukewys/laion_clap: 630k-audioset-best.pt (a {"epoch", "state_dict"} dict with DDP "module."
  prefixes and the old `text_branch.embeddings.position_ids` buffer, like the real checkpoint)
- roberta-base: config.json (roberta-base's dimensions, or a 1-layer one when small),
  vocab.json and merges.txt of a tiny byte-level BPE trained on a few lines of text: a stand-in
  for roberta-base's tokenizer (same special tokens and ids for <s> <pad> </s> <unk>, far smaller
  vocabulary).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ucl_cli.encoders.registry import (
    CLAP_REPO,
    DEFAULT_IMAGE_TEXT,
    DEFAULT_TEXT_AUDIO,
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    ROBERTA_FILES,
    ROBERTA_REPO,
    get_spec,
)
from ucl_cli.encoders.standin_marks import STANDIN_KEY, STANDIN_NOTE
from ucl_cli.files import sha256_file

STANDIN_COMMIT = "0" * 40
# Logit scales stored in the stand-ins (the real models' are read from their own weights).
CLIP_LOGIT_SCALE = 100.0
CLAP_LOGIT_SCALE = 33.0

_SMALL_CLIP = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 1, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}
# roberta-base's published dimensions.
_ROBERTA_BASE = {
    "architectures": ["RobertaForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514,
    "model_type": "roberta",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "pad_token_id": 1,
    "type_vocab_size": 1,
    "vocab_size": 50265,
}
_SMALL_ROBERTA = {"num_hidden_layers": 1, "intermediate_size": 256}
_TOKENIZER_TEXT = [
    "a dog barks in the distance while cars pass by",
    "rain falling on a tin roof, thunder rumbling",
    "a man speaks, then a woman laughs; music plays in the background",
    "birds chirp and sing near a flowing stream",
    "an engine starts, revs up and idles; a door slams",
    "Piano, guitar, drums and bass: a jazz band performs live!",
    "Water splashing, children shouting, a whistle blows at 3 o'clock.",
]
_SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


@dataclass(frozen=True)
class Written:
    repo: str
    filename: str
    path: Path


def hub_folder(root: Path) -> Path:
    """Where the hub cache lives under an HF_HOME-style root."""
    return Path(root) / "hub"


def snapshot_folder(hub: Path, repo: str) -> Path:
    """Where a stand-in's files of `repo` appear in the hub folder `hub` (ROOT/hub)."""
    return hub / f"models--{repo.replace('/', '--')}" / "snapshots" / STANDIN_COMMIT


def write_hub_file(hub: Path, repo: str, filename: str, write: Callable[[Path], None]) -> Written:
    """Store one file in the hub-cache layout: blob named by sha256, snapshot link, refs/main."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    blobs = folder / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=blobs) as scratch:
        staged = Path(scratch) / Path(filename).name
        write(staged)
        digest = sha256_file(staged)
        blob = blobs / digest
        os.replace(staged, blob)
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(STANDIN_COMMIT)
    link = snapshot_folder(hub, repo) / filename
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    try:
        link.symlink_to(os.path.relpath(blob, link.parent))
    except OSError:  # no symlinks on this file system: a copy, as huggingface_hub does then
        link.write_bytes(blob.read_bytes())
    return Written(repo, filename, link)


def _write_json(data: dict) -> Callable[[Path], None]:
    return lambda path: path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# --- CLIP --------------------------------------------------------------------------------------


def write_clip(
    root: Path, *, small: bool = False, key: str = DEFAULT_IMAGE_TEXT, seed: int = 0
) -> list[Written]:
    """An open_clip model of the key's architecture (or a 1-layer one) with random weights."""
    import open_clip
    from safetensors.torch import save_file

    from ucl_cli.encoders.open_clip_backend import model_from_config

    spec = get_spec(key)
    model_cfg = json.loads(
        json.dumps(_SMALL_CLIP if small else open_clip.get_model_config(spec.architecture))
    )
    torch.manual_seed(seed)
    model = model_from_config(model_cfg)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(CLIP_LOGIT_SCALE))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    pre = spec.preprocessing
    config = {
        "model_cfg": model_cfg,
        "preprocess_cfg": {
            "mean": pre["mean"],
            "std": pre["std"],
            "interpolation": pre["interpolation"],
            "resize_mode": pre["resize_mode"],
        },
        STANDIN_KEY: STANDIN_NOTE,
    }
    hub = hub_folder(root)
    repo = spec.weights.repo
    return [
        write_hub_file(
            hub,
            repo,
            OPEN_CLIP_WEIGHTS,
            lambda p: save_file(state, str(p), metadata={STANDIN_KEY: STANDIN_NOTE}),
        ),
        write_hub_file(hub, repo, OPEN_CLIP_CONFIG, _write_json(config)),
    ]


# --- CLAP --------------------------------------------------------------------------------------


def train_tokenizer(folder: Path) -> int:
    """A tiny byte-level BPE with roberta's special tokens; writes vocab.json and merges.txt."""
    from tokenizers import ByteLevelBPETokenizer

    tokenizer = ByteLevelBPETokenizer()
    tokenizer.train_from_iterator(
        _TOKENIZER_TEXT,
        vocab_size=400,
        min_frequency=1,
        special_tokens=_SPECIAL_TOKENS,
        show_progress=False,
    )
    tokenizer.save_model(str(folder))
    return tokenizer.get_vocab_size()


def roberta_config(vocab_size: int, small: bool) -> dict:
    config = dict(_ROBERTA_BASE)
    if small:
        config.update(_SMALL_ROBERTA, vocab_size=vocab_size)
    config[STANDIN_KEY] = STANDIN_NOTE
    return config


def write_roberta(root: Path, *, small: bool = False) -> tuple[list[Written], dict]:
    hub = hub_folder(root)
    with tempfile.TemporaryDirectory() as scratch:
        vocab_size = train_tokenizer(Path(scratch))
        written = [
            write_hub_file(
                hub,
                ROBERTA_REPO,
                name,
                lambda p, n=name: p.write_bytes(Path(scratch, n).read_bytes()),
            )
            for name in (ROBERTA_FILES["text_vocab"], ROBERTA_FILES["text_merges"])
        ]
    config = roberta_config(vocab_size, small)
    written.append(
        write_hub_file(hub, ROBERTA_REPO, ROBERTA_FILES["text_config"], _write_json(config))
    )
    return written, config


def write_clap(
    root: Path, *, small: bool = False, key: str = DEFAULT_TEXT_AUDIO, seed: int = 0
) -> list[Written]:
    """A laion_clap model of the key's architecture with random weights, plus its roberta files."""
    from transformers import RobertaConfig

    from ucl_cli.encoders.clap_backend import create_model

    spec = get_spec(key)
    written, text_config = write_roberta(root, small=small)
    torch.manual_seed(seed)
    model, _ = create_model(
        spec.architecture, bool(spec.options.get("fusion")), RobertaConfig(**text_config)
    )
    with torch.no_grad():
        model.logit_scale_a.fill_(math.log(CLAP_LOGIT_SCALE))
        model.logit_scale_t.fill_(math.log(CLAP_LOGIT_SCALE))
    state = {f"module.{k}": v.detach().clone() for k, v in model.state_dict().items()}
    positions = int(text_config["max_position_embeddings"])
    state["module.text_branch.embeddings.position_ids"] = torch.arange(positions).unsqueeze(0)
    checkpoint = {"epoch": 45, "name": STANDIN_NOTE, "state_dict": state}
    written.append(
        write_hub_file(
            hub_folder(root), CLAP_REPO, spec.weights.filename, lambda p: torch.save(checkpoint, p)
        )
    )
    return written


def write_defaults(
    root: Path, *, small: bool = False, keys: tuple[str, ...] | None = None
) -> list[Written]:
    """Stand-ins of the default models (or of `keys`: clip and clap keys of the table)."""
    written: list[Written] = []
    for key in keys or (DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO):
        backend = get_spec(key).backend
        if backend == "open_clip":
            written += write_clip(root, small=small, key=key)
        elif backend == "laion_clap":
            written += write_clap(root, small=small, key=key)
        else:
            raise ValueError(f"no stand-in writer for {key} (backend {backend})")
    (Path(root) / "STANDIN-MODELS.txt").write_text(
        STANDIN_NOTE + "\n" + "".join(f"{w.repo}/{w.filename}\n" for w in written), encoding="utf-8"
    )
    return written
