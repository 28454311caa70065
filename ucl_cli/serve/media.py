"""A served collection's file, addressed by collection name and row, never by a path.

The only files the server reads for a client are those a served collection indexed: the path
comes from the collection's own row, so no request can name another file (`../`, absolute
paths and symlink tricks have nothing to act on). Starlette's `FileResponse` answers HTTP range
requests (206 with Content-Range, 416 past the end, Accept-Ranges on every answer), which is
what lets an <audio> element seek. The content type comes from the file's extension and only
ever names an image or audio type (never SVG, which can carry scripts); anything else is sent
as plain bytes, and `nosniff` and a sandbox policy keep a browser from running what it gets.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from ucl_cli.serve.state import NotServedError, Served

# WAV and FLAC are named by their common types where the platform's table lacks them.
_KNOWN = {".wav": "audio/wav", ".flac": "audio/flac", ".oga": "audio/ogg", ".opus": "audio/ogg"}
HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


def media_type(path: Path) -> str:
    """An image or audio type for `path` by its extension, else application/octet-stream."""
    suffix = path.suffix.lower()
    guessed = _KNOWN.get(suffix) or mimetypes.guess_type(path.name)[0] or ""
    if guessed.startswith("audio/") or (guessed.startswith("image/") and "svg" not in guessed):
        return guessed
    return "application/octet-stream"


def media_response(served: Served, collection: str, row: int):
    """The file of `row` in the served `collection`, ranges and all; NotServedError for a
    collection that is not served, a row it does not have, or a file that has since gone."""
    from starlette.responses import FileResponse

    path = served.item_path(collection, row)
    if not path.is_file():
        raise NotServedError(
            f"the file of row {row} of collection {collection} is gone ({path.name})"
        )
    return FileResponse(
        path,
        media_type=media_type(path),
        filename=path.name,
        content_disposition_type="inline",
        headers=HEADERS,
    )
