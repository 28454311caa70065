"""The `ucl` command: a thin Typer shell over the library.

Each module in `ucl_cli.commands` registers its own commands, so this file never grows with them.
The library raises `UclError`; this is the one place that turns it into a line on stderr and an
exit code (1 for runtime errors, 2 for usage errors).
"""

from __future__ import annotations

import importlib
import pkgutil

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from ucl_cli import __version__
from ucl_cli.errors import UclError

stderr = Console(stderr=True)


class UclGroup(TyperGroup):
    """Maps library errors to one clear line and an exit code, without a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except UclError as err:
            stderr.print(
                f"[bold red]ucl: error:[/] {escape(str(err))}", highlight=False, soft_wrap=True
            )
            raise typer.Exit(err.exit_code) from None
        except KeyboardInterrupt:
            stderr.print("ucl: interrupted")
            raise typer.Exit(130) from None


app = typer.Typer(
    cls=UclGroup,
    name="ucl",
    help="Zero-shot search between modalities no model was trained on together.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"ucl {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Rank audio for an image (or images for audio) through a bank of bridge texts."""


def _register_commands() -> None:
    import ucl_cli.commands as commands

    for module_info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):  # shared helpers, not commands
            continue
        module = importlib.import_module(f"{commands.__name__}.{module_info.name}")
        module.register(app)


_register_commands()


def main() -> None:
    app()
