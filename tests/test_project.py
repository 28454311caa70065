"""The project's promises about itself: the README's commands, CI, the CLI's basics."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

import ucl_cli
from ucl_cli.cli import app

ROOT = Path(__file__).resolve().parent.parent


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "    bash scripts/test.sh\n" in readme
    assert re.search(r"^bash scripts/test\.sh$", ci, re.MULTILINE)
    assert "    bash scripts/demo.sh\n" in readme


def test_version_and_help():
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.stdout.strip() == f"ucl {ucl_cli.__version__}"
    helptext = runner.invoke(app, ["--help"])
    assert helptext.exit_code == 0
    for command in ("query", "index", "banks", "eval", "synth", "models", "cache", "doctor"):
        assert command in helptext.stdout


def test_python_api_is_reachable_from_the_package():
    from ucl_cli.bridge import search

    assert ucl_cli.search is search
    assert ucl_cli.QueryOptions().method == "lse"


def test_module_entry_point_runs():
    completed = subprocess.run(
        [sys.executable, "-m", "ucl_cli", "--version"], capture_output=True, text=True, check=True
    )
    assert completed.stdout.startswith("ucl ")
