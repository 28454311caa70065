"""Which models embed a collection: the ones with a tower for its files' modality.

A collection (a bank of image or audio files) is embedded only by the models that can embed
those files: with the default pair, images by the image-text model and audio by the text-audio
model. Not a command itself (modules whose names start with '_' are not registered).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from ucl_cli.encoders.base import Encoder

FLAG = {"image": "--image-text-model", "audio": "--text-audio-model"}


def collection_encoders(
    keys: list[str],
    weights: list[Path | None],
    modality: str,
    device: str,
    console: Console,
) -> list[Encoder]:
    """Load the models among `keys` that embed `modality` and say once which ones they are.

    `weights[i]` is the checkpoint given for `keys[i]`. A model the registry knows cannot embed
    `modality` is not loaded at all; one it does not know is loaded and then asked.
    """
    from ucl_cli.commands._shared import load_encoders
    from ucl_cli.errors import UsageError

    wanted = [n for n, key in enumerate(keys) if _may_embed(key, modality)]
    loaded = load_encoders([keys[n] for n in wanted], device, console, [weights[n] for n in wanted])
    encoders = [encoder for encoder in loaded if modality in encoder.modalities]
    used = {encoder.key for encoder in encoders}
    left_out = [key for key in dict.fromkeys(keys) if key not in used]
    if not encoders:
        raise UsageError(
            f"{_listed(left_out)} cannot embed {modality}, so no model here can index a "
            f"collection of {modality} files; name one that does with {FLAG[modality]}"
        )
    note = f" ({_listed(left_out)} cannot embed {modality})" if left_out else ""
    console.print(
        f"ucl: the {modality} collection is embedded by {_listed([e.key for e in encoders])}"
        + note,
        soft_wrap=True,
    )
    return encoders


def collection_weights(
    held_keys: int, modality: str, image_text: Path | None, text_audio: Path | None
) -> list[Path | None]:
    """The checkpoints given for the keys `model_keys` returned: both flags for two keys; for a
    collection built with one model, the flag of the model that embeds its modality."""
    if held_keys == 2:
        return [image_text, text_audio]
    return [text_audio if modality == "audio" else image_text]


def _may_embed(key: str, modality: str) -> bool:
    """False only when the registry knows `key` and says it has no tower for `modality`."""
    from ucl_cli.encoders.registry import get_spec
    from ucl_cli.errors import UclError

    try:
        spec = get_spec(key)
    except UclError:
        return True  # unknown here: loading it says why, or the model says what it embeds
    return modality in spec.modalities


def _listed(keys: list[str]) -> str:
    quoted = [escape(key) for key in keys]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]
