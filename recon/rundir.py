"""A run directory as ``python -m recon train`` writes it (``RUN/model.pt`` and the run card
``RUN/run.json``): one reader for the command line, the sweep and ``reproduce``."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["read_run_card", "run_task"]


def read_run_card(run: str | os.PathLike) -> dict:
    """``RUN/run.json`` as a dict; ``{}`` when the directory has none yet. A file that is not
    valid JSON raises ``ValueError`` naming it."""
    path = Path(run) / "run.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or delete it") from e


def run_task(card: dict, run: str | os.PathLike):
    """The :class:`recon.data.BinaryTask` the run was trained on, as its card records it
    (size, test size, for shadow models the images skipped per class, and label noise)."""
    from .data import flip_labels, load_task

    if "task" not in card:
        raise FileNotFoundError(f"{run} has no trained model (no task in run.json); run "
                                f"`python -m recon train --run {run}` first")
    t = card["task"]
    task = load_task(t["name"], t["n_per_class"], t.get("n_test_per_class", 500),
                     skip_per_class=t.get("skip_per_class", 0))
    return flip_labels(task, t.get("label_noise", 0.0), t.get("label_noise_seed", 0))
