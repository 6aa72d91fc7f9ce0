"""What every command shares: one-line errors and the stderr console."""

import functools
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from difflens.errors import DifflensWarning, InputError

err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def friendly_errors(fn: F) -> F:
    """Turn user errors into one readable line on stderr and exit code 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DifflensWarning)
            try:
                return fn(*args, **kwargs)
            except InputError as exc:
                err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
                err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            finally:
                for w in caught:
                    if issubclass(w.category, DifflensWarning):
                        err.print(f"[yellow]warning:[/] {w.message}", highlight=False)

    return wrapper  # type: ignore[return-value]
