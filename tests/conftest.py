"""Shared test kit: offline environment, a private UCL_HOME per test, deterministic fakes."""

from __future__ import annotations

import os

# Before anything imports transformers or laion_clap: never reach for the network in tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest


@pytest.fixture(autouse=True)
def ucl_home(tmp_path_factory, monkeypatch):
    """Every test writes banks and caches into its own temporary UCL_HOME."""
    home = tmp_path_factory.mktemp("ucl_home")
    monkeypatch.setenv("UCL_HOME", str(home))
    return home
