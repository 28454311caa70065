"""The cap on a request's body: an upload larger than `limit` bytes is answered 413 with a JSON
error before it is stored anywhere.

A declared Content-Length over the cap is refused before a byte of the body is read. A body
without one (chunked) is counted as it arrives: past the cap, this middleware answers 413
itself and tells the application the client has gone, and whatever the application then tries
to send is dropped, so no partial upload is ever scored.
"""

from __future__ import annotations

import json
from typing import Any

Message = dict[str, Any]


class BodyLimit:
    """Pure ASGI middleware (it sees the body's chunks, which a routed handler does not)."""

    def __init__(self, app: Any, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            await self._refuse(send)
            return
        received, refused, started = 0, False, False

        async def counted_receive() -> Message:
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    if not started:
                        await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # our 413 has been sent (or the answer had begun): drop the rest
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, counted_receive, guarded_send)

    async def _refuse(self, send: Any) -> None:
        megabytes = self.limit / 1_000_000
        body = json.dumps(
            {
                "error": f"the upload is larger than this server's limit of {megabytes:g} MB "
                "(ucl serve --max-upload-mb)",
                "limit_bytes": self.limit,
            }
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Message) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
