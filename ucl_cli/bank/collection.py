"""A collection's rows follow its files: a moved file keeps its row (only its path changes, nothing
is embedded again), and pruning drops the rows of files that are gone.

A file item's key is a hash of its bytes and its id the file's absolute path, so a row whose path
no longer exists but whose key turns up under another path is the same file, moved.
"""

from __future__ import annotations

from pathlib import Path

from ucl_cli.bank.items import BankItem
from ucl_cli.bank.writer import BankWriter


class GoneFiles:
    """The rows of a writer's bank whose file no longer exists at its path, by content key."""

    def __init__(self, writer: BankWriter):
        self.writer = writer
        self.rows = {
            item.key: row for row, item in writer.iter_rows() if not Path(item.item_id).exists()
        }

    def relocate(self, item: BankItem) -> bool:
        """If `item` is the content of a gone row, point that row at `item`'s path; True if so."""
        row = self.rows.pop(item.key, None)
        if row is None:
            return False
        self.writer.move_row(row, item)
        return True

    def prune(self) -> int:
        """Drop the rows still gone (from the next publish); how many."""
        count = len(self.rows)
        self.writer.drop_rows(self.rows.values())
        self.rows.clear()
        return count
