"""Shared model fixtures: small RANDOM-weight stand-ins of the default models in a temporary hub
cache, written once per test session, loaded through the production code (`load_encoder`).

tests/conftest.py registers this module as a pytest plugin, so every test module can ask for
these fixtures by name. The model libraries are imported inside the fixtures, so that registering
them costs a test that never uses them nothing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SAMPLE_RATE = 48_000


def use_hub(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Point every hub lookup at `root` (an HF_HOME-style folder)."""
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(root))


def snapshot(root: Path, repo: str) -> Path:
    """The snapshot folder of `repo` in a stand-in cache."""
    from ucl_cli.testing.standins import hub_folder, snapshot_folder

    return snapshot_folder(hub_folder(root), repo)


@pytest.fixture(scope="session")
def clip_root(tmp_path_factory) -> Path:
    """An HF_HOME holding the small CLIP stand-in (written once per session)."""
    from ucl_cli.testing.standins import write_clip

    root = tmp_path_factory.mktemp("hf_clip")
    write_clip(root, small=True)
    return root


@pytest.fixture(scope="session")
def clap_root(tmp_path_factory) -> Path:
    """An HF_HOME holding the small CLAP stand-in and the roberta-base stand-in files."""
    from ucl_cli.testing.standins import write_clap

    root = tmp_path_factory.mktemp("hf_clap")
    write_clap(root, small=True)
    return root


def _loaded(root: Path, key: str) -> Iterator[Any]:
    from ucl_cli.encoders.registry import load_encoder

    with pytest.MonkeyPatch.context() as patch:
        use_hub(patch, root)
        yield load_encoder(key)


@pytest.fixture(scope="session")
def clip_encoder(clip_root):
    """The default image-text key, loaded from the stand-in cache by `load_encoder`."""
    from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT

    yield from _loaded(clip_root, DEFAULT_IMAGE_TEXT)


@pytest.fixture(scope="session")
def clap_encoder(clap_root):
    """The default text-audio key, loaded from the stand-in cache by `load_encoder`."""
    from ucl_cli.encoders.registry import DEFAULT_TEXT_AUDIO

    yield from _loaded(clap_root, DEFAULT_TEXT_AUDIO)


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


def assert_same_on_cuda(on_cpu: Any, modality: str, items: Sequence[Any]) -> None:
    """`on_cpu`'s model loaded with device "auto" runs on the GPU and embeds `items` (of
    `modality`) and a text as on the CPU, to float tolerance; skipped without CUDA."""
    import torch

    from ucl_cli.encoders.registry import load_encoder

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    on_gpu = load_encoder(on_cpu.key, device="auto")
    assert on_gpu.device == "cuda" and next(on_gpu.model.parameters()).is_cuda
    np.testing.assert_allclose(
        on_gpu.embed(modality, items), on_cpu.embed(modality, items), atol=2e-3
    )
    np.testing.assert_allclose(
        on_gpu.embed("text", ["a dog"]), on_cpu.embed("text", ["a dog"]), atol=2e-3
    )
