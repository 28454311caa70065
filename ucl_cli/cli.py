"""The `ucl` command: a thin Typer shell over the library.

Each module in `ucl_cli.commands` registers its own commands, so this file never grows with them.
The library raises `UclError`; this is the one place that turns it into a line on stderr and an
exit code (1 for runtime errors, 2 for usage errors). It is also the one place that treats a
closed stdout (`ucl query ... | head -1`) as the normal end it is: exit 0, nothing said.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import os
import pkgutil
import sys
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup, TyperOption

from ucl_cli import __version__
from ucl_cli.errors import UclError

stderr = Console(stderr=True)


class UclGroup(TyperGroup):
    """Maps library errors to one clear line and an exit code, without a traceback."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        _plain_flags(self)

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
        except OSError as err:  # BrokenPipeError from a plain write or flush
            if err.errno != errno.EPIPE:
                raise
            _silence_stdout()
            raise typer.Exit(0) from None
        except SystemExit as exit_:
            # Rich answers a broken pipe with SystemExit(1) raised while handling it.
            if not isinstance(exit_.__context__, BrokenPipeError):
                raise
            _silence_stdout()
            raise typer.Exit(0) from None


def _silence_stdout() -> None:
    """The reader has gone: send what is still buffered to /dev/null, so that no later flush
    (the interpreter's own, at exit) fails again."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _plain_flags(group: click.Command) -> None:
    """Flags of groups (`--help`, `--version`) take no value, so their help shows none, rather
    than Typer's `<bool>`; the commands' own pages do the same through `UclCommand`."""
    # `--help` is made on first use and kept: make it now, with the group's own settings.
    help_option = group.get_help_option(click.Context(group, **group.context_settings))
    for param in [*group.params, help_option]:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    for command in getattr(group, "commands", {}).values():
        if isinstance(command, TyperGroup):
            _plain_flags(command)


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
    try:
        app()
    finally:  # output still buffered at exit meets a closed pipe here, not in the interpreter
        try:
            sys.stdout.flush()
        except OSError:
            _silence_stdout()
