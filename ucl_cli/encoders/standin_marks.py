"""Telling a random-weight stand-in from the real model, at run time and offline.

The testing kit (`ucl_cli.testing.standins`, used by scripts/make_test_models.py) writes stand-ins
with the real models' file names; a user may copy such a cache anywhere. So that no ranking made
with them is mistaken for a result, every stand-in file carries a mark, `ucl_standin` in the JSON
configs and the safetensors metadata, and STANDIN_NOTE inside the CLAP checkpoint's pickle, and
this module finds it by reading headers only: `load_encoder`, `ucl doctor` and `ucl models` warn
without loading a model. It lives in the product, apart from the writers, because the product
needs it and must not depend on the testing kit.
"""

from __future__ import annotations

import json
import struct
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path

STANDIN_NOTE = (
    "RANDOM WEIGHTS: a stand-in written by ucl (scripts/make_test_models.py), not the real model"
)
STANDIN_KEY = "ucl_standin"  # the mark in JSON configs and safetensors metadata
# Headers larger than this are not a stand-in's (and are not read): real configs are kilobytes,
# a safetensors header or a checkpoint's pickle at most a few megabytes.
_HEADER_LIMIT = 64 << 20


def marked_files(paths: Iterable[Path]) -> list[Path]:
    """Those of `paths` (files, or folders of weights) that carry the stand-in mark."""
    found = []
    for path in paths:
        members = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
        if any(_is_marked(member) for member in members):
            found.append(path)
    return found


def standin_warning(keys: Sequence[str]) -> str:
    """The one line every command prints when it meets stand-ins (the CLI adds `ucl: `)."""
    names = " and ".join(keys)
    verb = "is a stand-in" if len(keys) == 1 else "are stand-ins"
    return (
        f"random weights: rankings are meaningless ({names} {verb} written by "
        "make_test_models.py; `ucl models fetch` gets the real weights)"
    )


def _is_marked(path: Path) -> bool:
    """Read only what holds the mark: a JSON file, a safetensors header, a checkpoint's pickle."""
    try:
        if path.suffix == ".json":
            return path.stat().st_size < _HEADER_LIMIT and STANDIN_KEY in _json_object(
                path.read_bytes()
            )
        if path.suffix == ".safetensors":
            return STANDIN_KEY in _safetensors_metadata(path)
        if zipfile.is_zipfile(path):  # torch.save's format since torch 1.6
            return _pickle_holds(path, STANDIN_NOTE.encode("utf-8"))
    except (OSError, ValueError, struct.error, zipfile.BadZipFile):  # not a stand-in's file
        return False
    return False


def _json_object(data: bytes) -> dict:
    value = json.loads(data)
    return value if isinstance(value, dict) else {}


def _safetensors_metadata(path: Path) -> dict:
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        if size > _HEADER_LIMIT:
            return {}
        metadata = _json_object(handle.read(size)).get("__metadata__")
    return metadata if isinstance(metadata, dict) else {}


def _pickle_holds(path: Path, needle: bytes) -> bool:
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if info.filename.endswith("data.pkl") and info.file_size < _HEADER_LIMIT:
                return needle in archive.read(info)
    return False
