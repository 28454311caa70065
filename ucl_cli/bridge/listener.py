"""The hooks a library run reports through; the library itself never prints.

One type for `search` (ucl query) and `evaluate` (ucl eval): both skip unreadable files, embed
in stages and advance a count, and the CLI draws them the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ucl_cli.errors import InputFileError


@dataclass
class Listener:
    """Every hook is optional. `evaluate` has no queries of its own to skip: a manifest item
    with an unreadable file goes to `on_skip`."""

    on_skip: Callable[[InputFileError], None] | None = None  # a candidate (or item) left out
    on_query_skip: Callable[[InputFileError], None] | None = None  # a query left out
    on_stage: Callable[[str, int], None] | None = None  # (description, total steps)
    on_advance: Callable[[int], None] | None = None
    on_note: Callable[[str], None] | None = None  # a fact about how the run goes (plain text)

    def stage(self, text: str, total: int) -> None:
        if self.on_stage is not None:
            self.on_stage(text, total)

    def advance(self, steps: int) -> None:
        if self.on_advance is not None:
            self.on_advance(steps)

    def note(self, text: str) -> None:
        if self.on_note is not None:
            self.on_note(text)
