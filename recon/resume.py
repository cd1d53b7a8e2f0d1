"""Continuing a saved run: training, a reconstruction and a sweep's trials resume from their
files when, and only when, the file holds the same run."""

from __future__ import annotations

__all__ = ["same_but_length"]


def same_but_length(saved: dict, current: dict, length: str) -> bool:
    """Whether a run saved with config ``saved`` continues as a run with config ``current``:
    every field equal except the run's length (``length``: ``"epochs"``, ``"steps"``), which
    may grow (resume further) or shrink (the saved run is already past it)."""
    return ({k: v for k, v in saved.items() if k != length}
            == {k: v for k, v in current.items() if k != length})
