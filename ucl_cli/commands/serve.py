"""`ucl serve`: the models kept warm behind a local HTTP API and a one-page UI.

This file parses options and checks that the `serve` extra is installed (FastAPI is imported
only here, on use, so `ucl --help` stays fast); `ucl_cli.serve` holds the server.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from ucl_cli.commands._help import UclCommand, examples
from ucl_cli.commands._shared import (
    ALLOW_OTHER_WEIGHTS,
    BANK,
    DEVICE,
    IMAGE_TEXT_MODEL,
    IMAGE_TEXT_WEIGHTS,
    NO_CACHE,
    TEXT_AUDIO_MODEL,
    TEXT_AUDIO_WEIGHTS,
)
from ucl_cli.errors import UclError
from ucl_cli.serve import INSTALL_HINT
from ucl_cli.serve.server import DEFAULT_HOST, DEFAULT_PORT, exposure_warning, is_loopback

EXAMPLES = examples(
    ("ucl serve --collection sfx", "search sfx at http://127.0.0.1:8765/"),
    ("ucl serve -C sfx -C photos --bank captions", "both directions, through bank captions"),
    ("ucl serve -C sfx --port 9000 --max-upload-mb 16", "another port, smaller uploads"),
)
# What the `serve` extra brings, by import names (python-multipart's older name second).
REQUIRED = (("fastapi",), ("uvicorn",), ("python_multipart", "multipart"))


def register(app: typer.Typer) -> None:
    app.command("serve", cls=UclCommand, epilog=EXAMPLES)(serve)


def serve(
    collections: list[str] | None = typer.Option(
        None,
        "--collection",
        "-C",
        help="A collection to serve (a bank of audio or image files built by `ucl index "
        "--modality audio|image`). Repeatable; at least one.",
        metavar="NAME",
        show_default=False,
    ),
    bank: str | None = BANK,
    host: str = typer.Option(
        DEFAULT_HOST,
        "--host",
        metavar="ADDRESS",
        help="Address to bind; anything but loopback lets other machines search and play the "
        "collections' files (no authentication).",
    ),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=1, max=65535, metavar="N"),
    max_upload_mb: float = typer.Option(
        64,
        "--max-upload-mb",
        min=0.001,
        metavar="MB",
        help="Largest upload accepted (larger ones get 413).",
    ),
    no_calibration: bool = typer.Option(
        False,
        "--no-calibration",
        help="Ignore the calibration ucl calibrate stored in the bank: the paper's estimator.",
    ),
    image_text_model: str | None = IMAGE_TEXT_MODEL,
    text_audio_model: str | None = TEXT_AUDIO_MODEL,
    image_text_weights: Path | None = IMAGE_TEXT_WEIGHTS,
    text_audio_weights: Path | None = TEXT_AUDIO_WEIGHTS,
    device: str = DEVICE,
    no_cache: bool = NO_CACHE,
    allow_other_weights: bool = ALLOW_OTHER_WEIGHTS,
) -> None:
    """Serve searches over collections: a JSON API and a page for dropping an image or a sound.

    The models load once and stay warm; every request is scored as `ucl query --collection`
    would score it. Results stream their files (seekable audio) only by collection and row.
    Ctrl-C stops the server.
    """
    require_extra()
    console = Console(stderr=True, highlight=False)
    warning = exposure_warning(host)
    if warning is not None:
        console.print(f"[yellow]ucl: warning:[/] {escape(warning)}", soft_wrap=True)

    from ucl_cli.serve.app import LOOPBACK_HOSTS, create_app
    from ucl_cli.serve.server import run
    from ucl_cli.serve.state import load_served

    served = load_served(
        bank,
        collections or [],
        image_text_model=image_text_model,
        text_audio_model=text_audio_model,
        weights=[image_text_weights, text_audio_weights],
        device=device,
        allow_other_weights=allow_other_weights,
        no_calibration=no_calibration,
        use_cache=not no_cache,
        console=console,
    )
    try:
        app = create_app(
            served,
            max_upload_bytes=int(max_upload_mb * 1_000_000),
            allowed_hosts=LOOPBACK_HOSTS if is_loopback(host) else None,
        )
        named = ", ".join(
            f"{c.name} ({len(c):,} {c.modality})" for c in served.collections.values()
        )
        shown = f"[{host}]" if ":" in host else host
        console.print(
            f"ucl: serving {escape(named)} through bank {escape(served.bank.name)} at "
            f"http://{escape(shown)}:{port}/ (Ctrl-C to stop)",
            soft_wrap=True,
        )
        run(app, host, port)
    finally:
        served.close()
    console.print("ucl: stopped")


def require_extra() -> None:
    """Fail with the install command when the `serve` extra is missing."""
    import importlib.util

    missing = [
        names[0]
        for names in REQUIRED
        if all(importlib.util.find_spec(name) is None for name in names)
    ]
    if missing:
        raise UclError(
            f"ucl serve needs {', '.join(missing)} (the serve extra): {INSTALL_HINT}"
        )
