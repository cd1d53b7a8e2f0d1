"""Helpers for running the book's chapters anywhere: in the Jupyter Book build, in Jupyter, or
on Colab, where the book's build tools are not installed."""

from __future__ import annotations

from typing import Any

__all__ = ["glue", "have_myst_nb"]


def have_myst_nb() -> bool:
    """Whether myst-nb (the book build's notebook parser) can be imported here."""
    import importlib.util

    return importlib.util.find_spec("myst_nb") is not None


def glue(name: str, value: Any, display: bool = True) -> None:
    """Store ``value`` under ``name`` for the chapter's text (``{glue:text}`name```).

    With myst-nb installed this is :func:`myst_nb.glue`. Without it (a notebook opened on Colab
    or in a plain Jupyter), the text cannot be filled in anyway, so the value is only shown
    when ``display`` is true, as myst-nb would show it.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"glue: the name must be a non-empty string, got {name!r}")
    if have_myst_nb():
        from myst_nb import glue as _glue

        _glue(name, value, display=display)
    elif display:
        from IPython.display import display as _display

        _display(value)
