"""Image or audio files as bank items, for banks that bridge through images or audio.

Such a bank's rows are files, each embedded by every model's tower for that modality. A file's
key is a hash of its bytes, so a copy or a renamed file is not embedded twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ucl_cli.bank.items import BankItem, file_key
from ucl_cli.errors import InputFileError


@dataclass(frozen=True)
class FileItems:
    """The checked media files to index, in order; iterate for their bank items."""

    paths: list[Path]
    skipped: int

    def __len__(self) -> int:
        return len(self.paths)

    def __iter__(self) -> Iterator[BankItem]:
        for path in self.paths:
            absolute = path.resolve()
            yield BankItem(item_id=str(absolute), text=str(path), key=file_key(absolute))


def collect_file_items(
    paths: Iterable[str | Path],
    modality: str,
    *,
    strict: bool = False,
    on_skip: Callable[[InputFileError], None] | None = None,
) -> FileItems:
    """Expand files and folders (recursively) into the media files of `modality`.

    Files that are not readable media of that modality are reported to `on_skip` and left out
    (or raised at once with `strict`); see `ucl_cli.media.collect_media`.
    """
    from ucl_cli.media import collect_media

    collection = collect_media(list(paths), modality, strict=strict, on_skip=on_skip)
    return FileItems(paths=collection.paths, skipped=len(collection.skipped))
