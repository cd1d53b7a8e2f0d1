"""Helpers for running the book's chapters anywhere: in the Jupyter Book build, in Jupyter, or
on Colab, where the book's build tools are not installed."""

from __future__ import annotations

from typing import Any

__all__ = ["format_duration", "glue", "glue_runtime", "have_myst_nb", "markdown_table", "runtimes"]


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


def format_duration(seconds: float) -> str:
    """A wall time for the reader: seconds below 90 s, minutes above."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 600 else f"{seconds / 60:.0f} min"


def runtimes(chapter: str) -> dict[str, dict[str, float]]:
    """The measured execution times of ``chapter`` (e.g. ``"02_training"``), per profile, from
    the committed ``results/benchmarks/chapter_times-<profile>.json`` (written by
    ``benchmarks/chapter_times.py``): ``{profile: {"first_run_s": ..., "cached_s": ...}}``.
    Profiles without a timing file, or without this chapter, are left out."""
    import json

    from .reproduce import results_dir

    out = {}
    for path in sorted((results_dir() / "benchmarks").glob("chapter_times-*.json")):
        data = json.loads(path.read_text())
        row = data.get("chapters", {}).get(chapter)
        if row:
            out[data["profile"]] = row
    return out


def glue_runtime(chapter: str) -> dict[str, dict[str, float]]:
    """Glue the chapter's measured runtimes for its runtime line, as text: for the quick and
    full profiles, ``runtime_<profile>`` gives the time from an empty cache and once cached in
    one phrase, or "not timed yet" with the script that times it where no measurement is
    committed."""
    times = runtimes(chapter)
    for profile in ("quick", "full"):
        row = times.get(profile, {})
        if {"first_run_s", "cached_s"} <= set(row):
            line = (f"{format_duration(row['first_run_s'])} from an empty cache and "
                    f"{format_duration(row['cached_s'])} once cached")
        else:
            line = "not timed yet (benchmarks/chapter_times.py measures it)"
        glue(f"runtime_{profile}", line, display=False)
    return times


def markdown_table(rows: list[dict], fmt: dict[str, str] | None = None) -> str:
    """A list of dicts (one per row, the first one's keys as columns) as a Markdown table;
    ``fmt``: column -> format spec. ``None`` and NaN show as an en dash."""
    import math

    if not rows:
        raise ValueError("no rows to show")
    fmt = fmt or {}
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append("–")
            elif c in fmt:
                cells.append(format(v, fmt[c]))
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)

