"""Running the application under uvicorn, and what the bind address means for safety.

The server binds to 127.0.0.1 unless told otherwise; bound elsewhere it says on stderr that
anyone who can reach the address can search and play the served files (there is no login).
Ctrl-C is uvicorn's to handle: it stops accepting, lets running requests finish (at most
`GRACE_S`), and returns.
"""

from __future__ import annotations

import contextlib
import ipaddress
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
GRACE_S = 10


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: whatever it resolves to, it may not be loopback


def exposure_warning(host: str) -> str | None:
    """The warning for a bind address beyond this machine, None for loopback."""
    if is_loopback(host):
        return None
    return (
        f"serving on {host}: anyone who can reach this address can run searches and play every "
        "file of the served collections (there is no authentication); bind to 127.0.0.1 "
        "(the default) to keep it to this machine"
    )


def run(app: Any, host: str, port: int) -> None:
    """Serve `app` until Ctrl-C (or SIGTERM): the normal end of a server, so it returns."""
    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="info",
        timeout_graceful_shutdown=GRACE_S,
    )
    # uvicorn shuts down on the signal, then raises it again for whoever called it.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run()
