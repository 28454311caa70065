"""Shared model fixtures: small RANDOM-weight stand-ins of the default models in a temporary hub
cache, written once per test session, loaded through the production code (`load_encoder`).

Import the fixtures a test module needs from here (`from tests.model_fixtures import ...`).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO, load_encoder
from ucl_cli.encoders.standins import STANDIN_COMMIT, write_clap, write_clip

SAMPLE_RATE = 48_000


def use_hub(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Point every hub lookup at `root` (an HF_HOME-style folder)."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(root))


def snapshot(root: Path, repo: str) -> Path:
    """The snapshot folder of `repo` in a stand-in cache."""
    return root / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / STANDIN_COMMIT


@pytest.fixture(scope="session")
def clip_root(tmp_path_factory) -> Path:
    """An HF_HOME holding the small CLIP stand-in (written once per session)."""
    root = tmp_path_factory.mktemp("hf_clip")
    write_clip(root, small=True)
    return root


@pytest.fixture(scope="session")
def clap_root(tmp_path_factory) -> Path:
    """An HF_HOME holding the small CLAP stand-in and the roberta-base stand-in files."""
    root = tmp_path_factory.mktemp("hf_clap")
    write_clap(root, small=True)
    return root


@pytest.fixture(scope="session")
def clip_encoder(clip_root):
    """The default image-text key, loaded from the stand-in cache by `load_encoder`."""
    with pytest.MonkeyPatch.context() as patch:
        use_hub(patch, clip_root)
        yield load_encoder(DEFAULT_IMAGE_TEXT)


@pytest.fixture(scope="session")
def clap_encoder(clap_root):
    """The default text-audio key, loaded from the stand-in cache by `load_encoder`."""
    with pytest.MonkeyPatch.context() as patch:
        use_hub(patch, clap_root)
        yield load_encoder(DEFAULT_TEXT_AUDIO)


@pytest.fixture
def clip_hub(clip_root, monkeypatch) -> Path:
    use_hub(monkeypatch, clip_root)
    return clip_root


@pytest.fixture
def clap_hub(clap_root, monkeypatch) -> Path:
    use_hub(monkeypatch, clap_root)
    return clap_root


@pytest.fixture
def empty_hub(tmp_path, monkeypatch) -> Iterator[Path]:
    """An HF_HOME with an empty cache."""
    root = tmp_path / "empty_hf_home"
    root.mkdir()
    use_hub(monkeypatch, root)
    yield root
    shutil.rmtree(root, ignore_errors=True)


def tone(seconds: float, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A test clip: a sine with a little seeded noise, float32 mono at 48 kHz."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(seed).standard_normal(t.size)
    return (0.5 * np.sin(2 * np.pi * freq * t) + 0.05 * noise).astype(np.float32)
