"""Shared test kit: offline environment, a private UCL_HOME per test, deterministic fakes."""

from __future__ import annotations

import os

# Before anything imports transformers or laion_clap: never reach for the network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest

# The stand-in model fixtures (clip_root, clap_encoder, empty_hub, ...), for every test module.
pytest_plugins = ("model_fixtures",)


@pytest.fixture(autouse=True)
def ucl_home(tmp_path_factory, monkeypatch):
    """Every test writes banks and caches into its own temporary UCL_HOME."""
    home = tmp_path_factory.mktemp("ucl_home")
    monkeypatch.setenv("UCL_HOME", str(home))
    return home


def install_planted_plugin(site):
    """A distribution on sys.path whose entry point registers tests/planted_backend.py."""
    dist = site / "ucl_planted-1.0.dist-info"
    dist.mkdir(parents=True, exist_ok=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ucl_planted\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[ucl.backends]\nplanted = planted_backend:register\n")


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """The planted test backend, installed through a real `ucl.backends` entry point."""
    from ucl_cli.encoders import registry

    site = tmp_path / "site"
    install_planted_plugin(site)
    monkeypatch.syspath_prepend(str(site))
    registry.reset_registry()
    yield site
    registry.reset_registry()


@pytest.fixture
def runner():
    """The CLI, invoked in this process (Typer's test runner: stdout and stderr apart)."""
    from typer.testing import CliRunner

    return CliRunner()


@pytest.fixture
def media_dir(tmp_path):
    """An image and an audio clip of each planted concept (files named by concept), for CLI
    tests with the planted backend (tests/planted_backend.py)."""
    import planted_backend as planted

    return planted.write_media(tmp_path / "media")
