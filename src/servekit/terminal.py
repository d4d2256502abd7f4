"""The CLI's terminal contract, shared by every command: one clear line on stderr and
a non-zero exit for errors, never a traceback; messages are never read as markup."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.panel import Panel

console = Console()
err_console = Console(stderr=True)


def print_error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str) -> NoReturn:
    print_error(message)
    raise typer.Exit(2)


def alarm(message: str) -> None:
    """A warning that must not be missed: in a red frame on stderr."""
    err_console.print(
        Panel(escape(message), title="[bold red]WARNING[/]", border_style="bold red"),
        highlight=False,
    )


def warn(message: str) -> None:
    err_console.print(
        f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True
    )
