"""A third-party-style backend whose embeddings are decided by content, so rankings are known.

Registered in tests through a real entry point (see `install_planted_plugin` in test_query.py).
Concept j (0 <= j < CONCEPTS) is the unit vector e_j:
- text "concept j" -> e_j (any other text -> the neutral vector e_{dim-1});
- an image whose pixels all have grey level 10*j -> e_j;
- audio whose samples all equal (j+1)/20 -> e_j.
An image query of concept j should therefore rank audio of concept j first, through the bank
text "concept j", and the exact score is known in closed form.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ucl_cli.encoders.base import Encoder
from ucl_cli.encoders.registry import Backend, ModelSpec
from ucl_cli.modality import Modality

CONCEPTS = 6
DIM = 8
SAMPLE_RATE = 16_000
SCALES = {"planted:image-text": 20.0, "planted:text-audio": 15.0, "planted:joint": 10.0}
MODALITIES = {
    "planted:image-text": ("image", "text"),
    "planted:text-audio": ("text", "audio"),
    "planted:joint": ("image", "text", "audio"),
}


def concept_of(modality: Modality, item) -> int | None:
    if modality is Modality.TEXT:
        words = str(item).split()
        if len(words) == 2 and words[0] == "concept" and words[1].isdigit():
            return int(words[1])
        return None
    if modality is Modality.IMAGE:
        return round(float(np.asarray(item).mean()) / 10)
    return round(float(np.mean(item)) * 20) - 1


def write_media(root: Path, *, audio_suffix: str = ".wav", subtype: str = "FLOAT") -> Path:
    """An image and an audio clip of each concept, named by concept (root/images/concept{j}.png,
    root/audio/concept{j}{audio_suffix}): files whose rankings the planted backend knows."""
    import soundfile
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "audio").mkdir()
    for j in range(CONCEPTS):
        Image.new("RGB", (16, 16), (10 * j,) * 3).save(root / "images" / f"concept{j}.png")
        samples = np.full(SAMPLE_RATE // 4, (j + 1) / 20, dtype=np.float32)
        path = root / "audio" / f"concept{j}{audio_suffix}"
        soundfile.write(path, samples, SAMPLE_RATE, subtype=subtype)
    return root


class PlantedEncoder(Encoder):
    def __init__(self, key: str, device: str):
        self.key = key
        self.modalities = frozenset(Modality(m) for m in MODALITIES[key])
        self.dim = DIM
        self.logit_scale = SCALES[key]
        self.preprocessing = {"sample_rate": SAMPLE_RATE, "planted": 1}
        self.device = device
        # Which "weights" these are (tests of vectors keyed by weights set it; default: none).
        self.weights_id = os.environ.get("UCL_TEST_PLANTED_WEIGHTS") or None

    def _embed_batch(self, modality: Modality, batch: list) -> np.ndarray:
        out = np.zeros((len(batch), DIM), dtype=np.float32)
        for row, item in enumerate(batch):
            concept = concept_of(modality, item)
            out[row, DIM - 1 if concept is None else concept] = 1.0
        return out


def build(spec: ModelSpec, files, device: str) -> Encoder:
    return PlantedEncoder(spec.key, device)


def register(registry) -> None:
    registry.add_backend(Backend(name="planted", prefixes=("planted",), build=build))
    for key, modalities in MODALITIES.items():
        registry.add_model(
            ModelSpec(
                key=key,
                backend="planted",
                architecture="planted",
                modalities=modalities,
                dim=DIM,
                preprocessing={"sample_rate": SAMPLE_RATE, "planted": 1},
                description="test backend with planted embeddings",
            )
        )
