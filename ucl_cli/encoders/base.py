"""The one interface every model backend implements (cf. llm's `EmbeddingModel.embed_batch`).

A backend implements `_embed_batch` for the modalities it declares; the base class checks the
modality, batches, normalises once at the source and returns float32 [N, dim] unit-norm rows.

Items by modality:
- text: `str`
- image: `PIL.Image.Image` in RGB (see `ucl_cli.media`)
- audio: 1-D `numpy.ndarray` float32, mono, at `preprocessing["sample_rate"]`
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ucl_cli.errors import UsageError
from ucl_cli.modality import Modality

__all__ = ["Encoder", "Modality", "ProgressCallback"]


# Called after each batch with the number of items just embedded (drives progress bars).
ProgressCallback = Callable[[int], None]


class Encoder(ABC):
    """A loaded model that embeds some modalities into one space.

    Attributes every backend sets:
      key: the registry key it was loaded from (e.g. "clip:ViT-B-32/laion2b_s34b_b79k").
      modalities: what it can embed.
      dim: embedding size.
      logit_scale: the trained scale s (already exponentiated), so s * cos is the critic.
      preprocessing: JSON-able description of how inputs are prepared (image size, mean/std,
        sample rate, crop); part of every cache key and bank manifest.
      weights_id (optional, set by `load_encoder`): the content identity of the weight files
        ("sha256:..."), so that vectors are keyed by the weights that made them.
      device: where the model runs.
    """

    key: str
    modalities: frozenset[Modality]
    dim: int
    logit_scale: float
    preprocessing: dict[str, Any]
    device: str
    default_batch_size: int = 32

    def embed(
        self,
        modality: Modality | str,
        items: Sequence[Any],
        *,
        batch_size: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> np.ndarray:
        """Embed `items` of one modality: float32 [len(items), dim], each row unit norm."""
        modality = Modality(modality)
        if modality not in self.modalities:
            supported = ", ".join(sorted(m.value for m in self.modalities))
            raise UsageError(f"{self.key} cannot embed {modality.value} (it embeds: {supported})")
        size = batch_size or self.default_batch_size
        out = np.empty((len(items), self.dim), dtype=np.float32)
        for start in range(0, len(items), size):
            batch = list(items[start : start + size])
            with torch.inference_mode():
                vectors = self._embed_batch(modality, batch)
            vectors = torch.as_tensor(vectors).detach().float()
            vectors = torch.nn.functional.normalize(vectors, dim=-1)
            out[start : start + len(batch)] = vectors.cpu().numpy()
            if progress is not None:
                progress(len(batch))
        return out

    @abstractmethod
    def _embed_batch(self, modality: Modality, batch: list[Any]) -> torch.Tensor | np.ndarray:
        """Raw (not necessarily normalised) embeddings [len(batch), dim] of one batch."""

    def describe(self) -> dict[str, Any]:
        """What a bank manifest or cache key records about this encoder."""
        return {
            "key": self.key,
            "dim": self.dim,
            "logit_scale": self.logit_scale,
            "modalities": sorted(m.value for m in self.modalities),
            "preprocessing": self.preprocessing,
            "weights": getattr(self, "weights_id", None),
        }
