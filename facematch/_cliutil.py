"""Helpers shared by the typer sub-apps (gallery, eval, export)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer

from .errors import FacematchError


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a :class:`FacematchError` into one ``error [code]: message`` line on stderr and exit 1."""
    try:
        yield
    except FacematchError as exc:
        typer.echo(f"error [{exc.code}]: {exc.message}", err=True)
        raise typer.Exit(1) from None
