"""Where banks live: names under the banks directory, or any directory the user names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ucl_cli.bank.manifest import MANIFEST_NAME, Manifest, read_manifest
from ucl_cli.bank.staging import STAGING_DIR, Staging
from ucl_cli.config import banks_dir
from ucl_cli.errors import BankError, UsageError

DEFAULT_BANK = "default"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def resolve_bank(spec: str | Path | None) -> Path:
    """`captions` -> <banks dir>/captions; `./captions`, `/data/b`, `~/b` are directories."""
    if spec is None or str(spec) == "":
        spec = DEFAULT_BANK
    if isinstance(spec, Path) or "/" in spec or spec.startswith(("~", ".")):
        return Path(spec).expanduser()
    if not NAME.match(spec):
        raise UsageError(
            f"bank name {spec!r} may hold only letters, digits, '.', '_' and '-' "
            "(give a path with a '/' for a directory elsewhere)"
        )
    return banks_dir() / spec


@dataclass(frozen=True)
class BankSummary:
    """One bank as `ucl banks` lists it; `problem` says why it cannot be opened, if it cannot."""

    name: str
    path: Path
    manifest: Manifest | None
    size_bytes: int
    staged_rows: int = 0
    problem: str | None = None


def list_banks(root: Path | None = None) -> list[BankSummary]:
    """Every bank (or interrupted first run) directly under `root` (the banks directory)."""
    root = root or banks_dir()
    if not root.is_dir():
        return []
    found = []
    for path in sorted(root.iterdir()):
        if path.is_dir() and ((path / MANIFEST_NAME).exists() or (path / STAGING_DIR).exists()):
            found.append(summarize(path))
    return found


def summarize(path: Path) -> BankSummary:
    """Read a bank's manifest (not its data): cheap enough to list hundreds."""
    size = sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())
    state = Staging.read_state(path)
    manifest, problem = None, None
    if (path / MANIFEST_NAME).exists() or state is None:
        try:
            manifest = read_manifest(path)
        except BankError as err:
            problem = str(err)
    staged = 0
    if state is not None and (manifest is None or state.base_generation == manifest.generation):
        staged = state.rows
    return BankSummary(path.name, path, manifest, size, staged, problem)
