"""Help pages that read on their own: plain metavars (`QUERY...`, `PATH`, `N`) where Typer would
print `{queries}...`, `<list[str]>` or `<bool>`, and a few examples at the end, as git and llm
show them. Commands opt in with `app.command(..., cls=UclCommand, epilog=examples(...))`."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from typer.core import TyperArgument, TyperCommand, TyperOption


class UclCommand(TyperCommand):
    """A Typer command whose help names values the way users type them."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self.help:  # Rich keeps a docstring's line breaks: rejoin each paragraph
            self.help = "\n\n".join(" ".join(part.split()) for part in self.help.split("\n\n"))
        for param in self.params:
            if isinstance(param, TyperArgument):
                _plain_argument(param)
            elif isinstance(param, TyperOption):
                _plain_option(param)

    def get_help_option(self, ctx: Any) -> Any:
        option = super().get_help_option(ctx)
        if isinstance(option, TyperOption):
            _plain_option(option)
        return option

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        """`[OPTIONS] QUERY...` rather than Typer's `[OPTIONS] {queries}...`."""
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar or param.name.upper()
                pieces.append(name if param.required else f"[{name}]")
        return pieces


def examples(*lines: tuple[str, str]) -> str:
    """An epilog of (command line, what it does) pairs."""
    width = max(len(command) for command, _ in lines)
    body = "\n".join(
        f"  {escape(command)}{' ' * (width - len(command))}  [dim]# {escape(what)}[/]"
        for command, what in lines
    )
    return f"[bold]Examples[/]\n\n{body}"


def _plain_argument(param: TyperArgument) -> None:
    if param.metavar is None:
        param.metavar = (param.name or "value").upper() + ("..." if param.nargs != 1 else "")
    # The name already says what to give; Typer's type column would add `<list[str]>`.
    param.display_type_rich = _no_type  # type: ignore[method-assign]


def _plain_option(param: TyperOption) -> None:
    if param.metavar is not None:
        return
    if param.is_flag:
        param.metavar = ""  # a flag takes no value: nothing to show
        return
    kind = getattr(param.type, "name", "")
    choices = getattr(param.type, "choices", None)
    if choices:
        param.metavar = "|".join(str(getattr(c, "value", c)) for c in choices)
    elif kind.startswith("integer"):
        param.metavar = "N"
    elif kind.startswith("float"):
        param.metavar = "X"
    elif kind in ("path", "file", "filename"):
        param.metavar = "PATH"
    else:
        param.metavar = "TEXT"


def _no_type(ctx: Any = None) -> None:
    return None
