"""Where things live and which device runs them. Precedence: flags > UCL_* variables > defaults.

Nothing here runs at import time: every function reads the environment when it is called.
"""

from __future__ import annotations

import os
from pathlib import Path


def ucl_home() -> Path:
    """Root of everything `ucl` writes: banks, the embedding cache. `UCL_HOME` overrides."""
    override = os.environ.get("UCL_HOME")
    if override:
        return Path(override).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("ucl"))


def banks_dir() -> Path:
    return ucl_home() / "banks"


def cache_path() -> Path:
    return ucl_home() / "embeddings.sqlite"


def index_bounds_dir() -> Path:
    """Per-row IVF list and centroid distance of each bank index (for `topk`'s certificates),
    one file per index content hash: derived data, safe to delete."""
    return ucl_home() / "index-bounds"


def resolve_device(requested: str | None = None) -> str:
    """`auto` (the default, or `UCL_DEVICE`) picks CUDA when torch sees a GPU, else CPU."""
    choice = (requested or os.environ.get("UCL_DEVICE") or "auto").lower()
    if choice == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            from ucl_cli.errors import UsageError

            raise UsageError(f"device {choice!r} was requested but torch sees no CUDA GPU")
    return choice
