"""A collection's rows follow its files: a moved file keeps its row (only its path changes, nothing
is embedded again), a file overwritten with other content gets a new row in place of its old
one, and pruning drops the rows of files that are gone.

A file item's key is a hash of its bytes and its id the file's absolute path, so a row whose path
no longer exists but whose key turns up under another path is the same file, moved. A row whose
path now holds other bytes (seen when the run reads that path) no longer describes any file
there: a hit on it would name a file it does not match. Its content may still turn up under
another path in the same run (a copy, then the original overwritten): it is moved there;
otherwise it is dropped at the end of the run, with or without `--prune`.
"""

from __future__ import annotations

from pathlib import Path

from ucl_cli.bank.items import BankItem
from ucl_cli.bank.writer import BankWriter


class GoneFiles:
    """The rows of a writer's bank whose file no longer exists at its path, by content key."""

    def __init__(self, writer: BankWriter):
        self.writer = writer
        self.rows: dict[str, int] = {}  # key -> row, for rows whose file is gone
        self.held: dict[str, tuple[int, str]] = {}  # path -> (row, key), for the others
        for row, item in writer.iter_rows():
            if Path(item.item_id).exists():
                self.held[item.item_id] = (row, item.key)
            else:
                self.rows[item.key] = row
        self.replaced: dict[str, int] = {}  # key -> row, for rows whose file was overwritten
        self.seen: dict[str, BankItem] = {}  # key -> where this run found it, for held keys

    def observe(self, item: BankItem) -> None:
        """Note a file this run read: if its path's row holds other content, the file was
        overwritten and that row is stale (moved to a copy of its content, if this run found
        one; else dropped by `drop_replaced`)."""
        held = self.held.get(item.item_id)
        if held is not None and held[1] != item.key:
            row, key = self.held.pop(item.item_id)
            copy = self.seen.get(key)
            if copy is not None and copy.item_id != item.item_id:
                self.writer.move_row(row, copy)
            else:
                self.replaced[key] = row
        elif held is not None:
            return
        self.seen.setdefault(item.key, item)

    def relocate(self, item: BankItem) -> bool:
        """If `item` is the content of a gone (or overwritten) row, point that row at `item`'s
        path; True if so."""
        row = self.rows.pop(item.key, None)
        if row is None:
            row = self.replaced.pop(item.key, None)
        if row is None:
            return False
        self.writer.move_row(row, item)
        return True

    def drop_replaced(self) -> int:
        """Drop the rows of overwritten files whose content turned up nowhere; how many."""
        count = len(self.replaced)
        if count:
            self.writer.drop_rows(self.replaced.values())
            self.replaced.clear()
        return count

    def prune(self) -> int:
        """Drop the rows still gone (from the next publish); how many."""
        count = len(self.rows)
        self.writer.drop_rows(self.rows.values())
        self.rows.clear()
        return count
