#!/usr/bin/env bash
# Set up a fresh virtual environment with the test extras and run the default test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    # Real sample sounds for the media tests (48 kHz speech, .oga effects) and tools to make more.
    dpkg -s alsa-utils sound-theme-freedesktop espeak-ng sox chromium chromium-driver >/dev/null 2>&1 || {
        apt-get update -qq && apt-get install -y -qq alsa-utils sound-theme-freedesktop espeak-ng sox chromium chromium-driver >/dev/null
    }
fi
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
.venv/bin/python -m ruff check ucl_cli tests scripts
.venv/bin/python -m pytest -q "$@"
