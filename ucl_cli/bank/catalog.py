"""Where banks live: names under the banks directory, or any directory the user names; and which
bank a command uses when none is named."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from ucl_cli.bank.manifest import MANIFEST_NAME, Manifest
from ucl_cli.bank.shards import ShardedManifest, read_any_manifest
from ucl_cli.bank.shards import staged_rows as sharded_staged_rows
from ucl_cli.bank.staging import STAGING_DIR, Staging
from ucl_cli.config import banks_dir
from ucl_cli.errors import BankError, UsageError

DEFAULT_BANK = "default"
BUILTIN_BANK = "builtin"  # `--bank builtin`: the built-in AudioSet bank, even past a default one
BANK_VARIABLE = "UCL_BANK"
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
class BankChoice:
    """The bank a command uses and why, so that it can say so in one line.

    path: the bank's directory; None for the built-in AudioSet bank (which lives under a name
      derived from the models, known only once they are loaded).
    reason: "--bank", "UCL_BANK", "default" (the bank `ucl index` writes without --bank), or
      "no default bank" (the built-in bank, because there is no `default` yet).
    """

    path: Path | None
    name: str
    reason: str

    @property
    def builtin(self) -> bool:
        return self.path is None


def choose_bank(flag: str | None, *, writing: bool = False) -> BankChoice:
    """The one rule for which bank `ucl index`, `query` and `eval` use: `--bank` > the UCL_BANK
    variable > the bank named `default` when it exists (what `ucl index` writes without --bank)
    > the built-in AudioSet bank. Writing, the rule stops at `default`, existing or not.

    A bank named by --bank or UCL_BANK must exist for reading (BankError saying how to build
    it); `builtin` names the built-in bank and cannot be written (UsageError).
    """
    variable = os.environ.get(BANK_VARIABLE, "").strip() or None
    spec, reason = (flag, "--bank") if flag else (variable, BANK_VARIABLE)
    if spec is None:
        spec, reason = DEFAULT_BANK, "default"
    if spec == BUILTIN_BANK:
        if writing:
            raise UsageError(
                f"{BUILTIN_BANK!r} names the built-in AudioSet bank, which is not written by "
                "`ucl index`; choose another name"
            )
        return BankChoice(None, BUILTIN_BANK, reason)
    path = resolve_bank(spec)
    if writing or (path / MANIFEST_NAME).exists():
        return BankChoice(path, path.name, reason)
    if reason == "default":
        return BankChoice(None, BUILTIN_BANK, "no default bank")
    named_by = "--bank" if reason == "--bank" else f"{BANK_VARIABLE}={spec}"
    raise BankError(
        f"no bank at {path} (named by {named_by}): build one with "
        f"`ucl index --bank {spec} corpus.txt`, or name another bank"
        + ("" if reason == "--bank" else f" (or unset {BANK_VARIABLE})")
    )


@dataclass(frozen=True)
class BankSummary:
    """One bank as `ucl banks` lists it; `problem` says why it cannot be opened, if it cannot."""

    name: str
    path: Path
    manifest: Manifest | ShardedManifest | None
    size_bytes: int
    staged_rows: int = 0
    problem: str | None = None

    @property
    def kind(self) -> str | None:
        """Bridge or collection (the manifest says); None when it cannot be read."""
        return None if self.manifest is None else self.manifest.kind

    @property
    def shards(self) -> int | None:
        """How many shards a sharded bank is stored as; None for an unsharded one."""
        return len(self.manifest.shards) if isinstance(self.manifest, ShardedManifest) else None


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
            manifest = read_any_manifest(path)  # sharded or not
        except BankError as err:
            problem = str(err)
    staged = 0
    if isinstance(manifest, ShardedManifest):  # rows an interrupted run left in its pending shard
        staged = sharded_staged_rows(path, manifest)
    elif state is not None and (manifest is None or state.base_generation == manifest.generation):
        staged = state.rows
    return BankSummary(path.name, path, manifest, size, staged, problem)
