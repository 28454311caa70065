"""Reading and checking inputs, with one precise error (path and reason) per bad file.

- `images`: every format Pillow reads -> upright 8-bit RGB, with a decompression-bomb guard.
- `audio`: what libsndfile reads (wav, flac, ogg/oga vorbis or opus, mp3, ...) -> float32 mono
  at the model's rate, resampled with soxr.
- `collect`: paths and folders -> an ordered list of checked media files, bad ones skipped with
  their reason (or raised at once with `strict`).
- `files`: shared file checks and the content descriptions that make the messages precise.

Nothing here prints or draws random numbers; problems are raised as `InputFileError` or handed
to a callback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ucl_cli.errors import UsageError
from ucl_cli.media.audio import AudioInfo, load_audio, probe_audio, resample
from ucl_cli.media.collect import (
    MediaCollection,
    MediaFile,
    SkipCallback,
    collect_media,
    detect_modality,
    media_extensions,
)
from ucl_cli.media.images import ImageInfo, load_image, max_pixels_limit, probe_image
from ucl_cli.modality import Modality

# Part of every embedding-cache key: bump it whenever load_image or load_audio would return
# different pixels or samples for the same file, so that cached embeddings are recomputed.
LOADER_VERSION = 1

__all__ = [
    "LOADER_VERSION",
    "AudioInfo",
    "ImageInfo",
    "MediaCollection",
    "MediaFile",
    "SkipCallback",
    "collect_media",
    "detect_modality",
    "load_audio",
    "load_image",
    "loader_for",
    "max_pixels_limit",
    "media_extensions",
    "probe_audio",
    "probe_image",
    "resample",
]


def loader_for(modality: Modality | str, preprocessing: Mapping[str, Any]) -> Callable[[Path], Any]:
    """The function that turns a file into the item an encoder embeds for `modality`."""
    modality = Modality(modality)
    if modality is Modality.IMAGE:
        return load_image
    if modality is Modality.AUDIO:
        if "sample_rate" not in preprocessing:
            raise UsageError("the encoder's preprocessing names no sample_rate for audio")
        rate = int(preprocessing["sample_rate"])
        return lambda path: load_audio(path, rate)
    raise UsageError(f"files are read as images or audio, not as {modality.value}")
