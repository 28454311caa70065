"""The modalities `ucl` knows. Torch-free, so that media and cache code import it cheaply."""

from __future__ import annotations

from enum import Enum


class Modality(str, Enum):
    TEXT = "text"
    IMAGE = "image"
    AUDIO = "audio"
