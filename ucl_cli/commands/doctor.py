"""`ucl doctor`: versions, the device, which model files are present, what is missing and how.

The report goes to stdout; the warning that cached models are random-weight stand-ins, to stderr.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from ucl_cli.commands._help import UclCommand, examples

EXAMPLES = examples(
    ("ucl doctor", "versions, device, which models are cached"),
    ("HF_HOME=/mnt/models ucl doctor", "check a copied model cache"),
    ("UCL_DEVICE=cpu ucl doctor", "the device with UCL_DEVICE set"),
)


def doctor() -> None:
    """Report package versions, the device, the hub cache, and the state of every model.

    A model is `ok` when its files are in the cache, `stand-in` when they are random-weight
    stand-ins (rankings with them are meaningless), `missing` otherwise, with the files and the
    command that fetches them."""
    from ucl_cli.encoders import hub
    from ucl_cli.encoders.standin_marks import standin_warning
    from ucl_cli.encoders.status import (
        all_model_status,
        device_status,
        package_versions,
        plugin_errors,
        standin_keys,
    )

    out = Console(highlight=False)
    out.print("[bold]packages[/]")
    for name, found in package_versions().items():
        out.print(f"  {name:<16} {found or '[red]not installed[/]'}")

    device = device_status()
    out.print("[bold]device[/]")
    if device.cuda_available:
        out.print(f"  CUDA {device.cuda_version}: {', '.join(device.devices)}")
    else:
        out.print(
            f"  no CUDA GPU visible to torch (torch built for CUDA {device.cuda_version or 'none'})"
        )
    out.print(
        f"  models run on: {escape(device.default_device)} (UCL_DEVICE or --device to change)"
    )

    out.print("[bold]model hub cache[/]")
    out.print(f"  {escape(str(hub.cache_dir()))} (HF_HOME / HF_HUB_CACHE to change)")
    out.print(f"  offline mode (HF_HUB_OFFLINE): {'on' if hub.offline() else 'off'}")

    for name, error in plugin_errors().items():
        out.print(f"[red]backend plugin {escape(name)} failed to load:[/] {escape(error)}")

    out.print("[bold]models[/]")
    labels = {
        "cached": "[green]ok      [/]",
        "stand-in": "[yellow]stand-in[/]",
        "missing": "[red]missing [/]",
    }
    statuses = all_model_status()
    for status in statuses:
        key = escape(status.spec.key)
        if status.state == "no backend":
            out.print(f"  [red]backend {escape(status.spec.backend)} not installed[/] {key}")
            continue
        default = " (default)" if status.is_default else ""
        label = labels["stand-in" if status.standin else status.state]
        out.print(f"  {label} {key}{default}")
        if status.missing and status.is_default:
            out.print(f"           missing: {escape(', '.join(status.missing))}")
            out.print(f"           get them: `ucl models fetch {key}` on a machine with internet")
    out.print(
        "Models marked missing load once `ucl models fetch KEY` has put their files in the cache."
    )
    standins = standin_keys(statuses)
    if standins:
        Console(stderr=True, highlight=False).print(
            f"[yellow]ucl:[/] {escape(standin_warning(standins))}", soft_wrap=True
        )


def register(app: typer.Typer) -> None:
    app.command("doctor", cls=UclCommand, epilog=EXAMPLES)(doctor)
