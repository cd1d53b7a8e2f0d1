"""A run directory, read in one place.

``python -m recon train`` and ``python -m recon reproduce`` write a *run directory*:

* ``RUN/model.pt``: the trained weights (a :func:`recon.train.save_checkpoint` file);
* ``RUN/run.json``: the *run record*, whose ``task`` entry names the exact task the model was
  trained on (data set, images per class, for a *shadow* model the images skipped per class,
  and the fraction and seed of flipped labels; :func:`task_card` writes it, :func:`run_task`
  reads it back);
* ``RUN/reconstruction.pt``: a reconstruction (``python -m recon reconstruct``), if any;
* ``RUN/card.json``: the *run card*, in a directory of ``python -m recon reproduce``.

:func:`load_run` reads all of it: the model together with the task *as trained* (the shadow
images and the noisy labels included). The command line, the sweep and the benchmark scripts
read runs through this module, so none of them can score against the default images of a
shadow model or the clean labels of a noisy-label one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["Run", "held_out", "load_run", "read_run_record", "run_task", "task_card"]


def read_run_record(run: str | os.PathLike) -> dict:
    """``RUN/run.json`` as a dict; ``{}`` when the directory has none yet. A file that is not
    valid JSON raises ``ValueError`` naming it."""
    path = Path(run) / "run.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); fix or delete it") from e


def task_card(task, *, skip_per_class: int = 0, label_noise: float = 0.0,
              label_noise_seed: int = 0) -> dict:
    """The run record's ``task`` entry for ``task``, built as
    ``flip_labels(load_task(name, n_per_class, n_test_per_class, skip_per_class=...),
    label_noise, label_noise_seed)``: what :func:`run_task` needs to build it again.

    The skip and the label noise are not recoverable from the task itself, so they are passed
    here; they are written only when set (cards of runs without them look as before)."""
    classes = task.n_outputs if task.n_outputs > 1 else 2
    out = {"name": task.name, "n_per_class": task.n // classes,
           "n_test_per_class": task.n_test // classes, "n": task.n,
           "source": task.source_kind}
    if skip_per_class:
        out["skip_per_class"] = int(skip_per_class)
    if label_noise:
        out["label_noise"] = float(label_noise)
        out["label_noise_seed"] = int(label_noise_seed)
    return out


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


def held_out(task) -> torch.Tensor:
    """``n`` test images of ``task`` (none of which the model saw), the same number of each
    class: the first ``n_per_class`` of each class of the task's test set, in stored order
    (fewer when the task holds fewer test images). The benchmarks match their candidates to
    these as a control: what generic images of the classes score."""
    return held_out_labelled(task)[0]


def held_out_labelled(task) -> tuple[torch.Tensor, torch.Tensor]:
    """The images of :func:`held_out` and their labels (``y_test``'s entries for them)."""
    from .data import select_first_per_class

    classes = (-1, 1) if task.n_outputs == 1 else tuple(range(task.n_outputs))
    per_class = min(task.n, task.n_test) // len(classes)
    idx = torch.from_numpy(select_first_per_class(task.y_test.cpu().numpy(), per_class,
                                                  "test split", classes=classes))
    return task.x_test[idx], task.y_test[idx]


@dataclass(frozen=True, eq=False)
class Run:
    """A trained run directory: its card, the task it was trained on and the model.

    ``task`` is the task *as trained*: a shadow model's images (``skip_per_class``) and a
    noisy-label run's flipped labels, exactly as :func:`run_task` rebuilds them.
    ``trained``: the :class:`recon.train.TrainResult` of ``model.pt`` (model, training config,
    history)."""

    path: Path
    card: dict
    task: object
    trained: object

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def model(self):
        return self.trained.model

    def fingerprint(self) -> str:
        """:func:`recon.reconstruct.theta_fingerprint` of the weights (part of the name of the
        sweep's Optuna study)."""
        from .reconstruct import theta_fingerprint

        return theta_fingerprint(self.model)

    def reproduce_card(self) -> dict | None:
        """``RUN/card.json`` in a directory of ``python -m recon reproduce`` (its recipe, e.g.
        ``card["config"]["recon_base"]``); ``None`` in a directory of ``train``."""
        if not (self.path / "card.json").is_file():
            return None
        from .reproduce import read_card

        return read_card(self.path)

    def reconstruction(self):
        """``RUN/reconstruction.pt`` as ``(ReconResult, raw)``
        (:func:`recon.reconstruct.load_reconstruction`)."""
        from .reconstruct import load_reconstruction

        path = self.path / "reconstruction.pt"
        if not path.is_file():
            raise FileNotFoundError(f"no reconstruction in {self.path}; run `python -m recon "
                                    f"reconstruct --run {self.path}` first")
        return load_reconstruction(path)


def load_run(run: str | os.PathLike, map_location: str | torch.device = "cpu") -> Run:
    """Read the run directory ``run``: ``run.json``, the task it names (as trained) and the
    model in ``model.pt``.

    Raises ``FileNotFoundError`` (with the command that makes one) when the directory holds no
    trained model, ``ValueError`` for a corrupt card or a model that does not fit the task,
    :class:`recon.train.CheckpointError` for an unreadable checkpoint."""
    from .train import load_checkpoint

    path = Path(run)
    card = read_run_record(path)
    if "task" not in card or not (path / "model.pt").is_file():
        raise FileNotFoundError(
            f"{path} holds no trained model (run.json + model.pt); run `python -m recon train "
            f"--run {path}` (or `python -m recon reproduce`) first")
    task = run_task(card, path)
    trained, _ = load_checkpoint(path / "model.pt", map_location=map_location)
    model = trained.model
    if model.n_outputs != task.n_outputs:
        raise ValueError(f"{path}: the model has {model.n_outputs} outputs but run.json names "
                         f"the task {task.name} with {task.n_outputs}")
    try:
        model.check_input(task.x_train[:1])
    except ValueError as e:
        raise ValueError(f"{path}: the model does not fit the task run.json names "
                         f"({task.name}): {e}") from e
    return Run(path, card, task, trained)
