"""Changes to rows a bank already holds, waiting for the writer's next publish.

A collection's files move and disappear: a moved file keeps its row and vectors under its new
path, a deleted one's row can be dropped. Both are noted here by row number (as
`BankWriter.iter_rows` numbers the rows) and applied while the publish streams the rows into the
next generation, so a bank still changes in one way only: one atomic publish.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ucl_cli.bank.items import BankItem
from ucl_cli.errors import BankError


class RowChanges:
    """Rows to drop and rows whose item changes (same content, new path)."""

    def __init__(self) -> None:
        self.dropped: set[int] = set()
        self.moved: dict[int, BankItem] = {}

    def __len__(self) -> int:
        return len(self.dropped) + len(self.moved)

    def item_lines(self, lines: Iterable[bytes]) -> Iterator[bytes]:
        """The items file's lines (every row, in order) with the changes applied."""
        for row, line in enumerate(lines):
            if row in self.dropped:
                continue
            moved = self.moved.get(row)
            if moved is None:
                yield line
                continue
            held = BankItem.from_line(line)
            if moved.key != held.key:  # other content would not match the row's vectors
                raise BankError(
                    f"cannot move row {row} ({held.item_id}) to {moved.item_id}: "
                    "its content differs"
                )
            yield moved.to_line()

    def kept_rows(self, chunks: Iterable[np.ndarray]) -> Iterator[np.ndarray]:
        """Chunks of consecutive vector rows (from row 0), less the dropped rows."""
        if not self.dropped:
            yield from chunks
            return
        dropped = np.fromiter(self.dropped, dtype=np.int64, count=len(self.dropped))
        start = 0
        for chunk in chunks:
            rows = np.arange(start, start + len(chunk))
            start += len(chunk)
            yield chunk[~np.isin(rows, dropped)]
