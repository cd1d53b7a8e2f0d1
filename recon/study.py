"""Controlled experiments: a grid of ``reproduce`` runs, one run card per point.

A study is described by a JSON file (``python -m recon study SPEC``)::

    {"name": "leakage", "profile": "quick",
     "defaults": {"trials": 2, "pool": 2, "space": "seeds", "objective": "kkt"},
     "tasks": {"mnist": {}, "cifar10": {"n_per_class": 10}},
     "axes": [
       {"name": "n", "tasks": ["mnist"], "key": "n_per_class", "values": [5, 25, 100]},
       {"name": "defenses", "tasks": ["mnist"], "points": [{"label_noise": 0.1}]}
     ]}

Every axis varies one setting (``key`` over ``values``) or lists whole points, each on top of
the task's base (``tasks``) and the study's ``defaults``. A point is the set of settings that
differ from the profile; points shared by several axes (the base point is on all of them) run
once. Settings: the arguments of :func:`recon.reproduce.reproduce` (``n_per_class``,
``epochs``, ``weight_decay``, ``trials``, ``pool``, ``steps``, ``space``, ``objective``,
``tv``, ``label_noise``, ``all_classes``) and any :class:`recon.train.TrainConfig` field
(``widths``, ``init_scale``, ``input_noise``, ``clip``, ``grad_noise``, ``stop_when_fit``,
...).

Each point writes ``OUT/<study>/<point>/card.json`` (``OUT``: ``results/study``) with the
study's record added under ``"study"``. A point whose card is complete is skipped, so a study
that is stopped resumes where it was, and adding values to an axis runs only the new points.
Several processes running the same command on one machine share the work: each claims a
point with a lock file beside its card (``.study.lock``) and skips the points another
process holds (run one per core, each with one thread: ``OMP_NUM_THREADS=1``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StudyPoint", "load_spec", "study_points", "run_study_spec", "load_study_cards",
           "leakage_row", "profile_value", "REPRODUCE_KEYS"]

STUDY_FORMAT = "recon-study/1"
LOCK = ".study.lock"  # beside a point's card: the process running the point holds it
#: settings passed to reproduce() by name; every other key must be a TrainConfig field
REPRODUCE_KEYS = ("n_per_class", "epochs", "weight_decay", "trials", "pool", "steps", "space",
                  "objective", "tv", "label_noise", "all_classes")


@dataclass(frozen=True)
class StudyPoint:
    """One run of a study: its task, every setting it runs with (sorted), those that differ
    from the task's base (they name it), and the axes it lies on."""

    task: str
    settings: tuple[tuple[str, object], ...]
    changes: tuple[tuple[str, object], ...]
    axes: tuple[str, ...]

    @property
    def id(self) -> str:
        """The point's folder name, e.g. ``mnist-n_per_class=5`` or ``mnist-base``."""
        parts = [f"{k}={_text(v)}" for k, v in self.changes]
        return f"{self.task}-" + ("_".join(parts) if parts else "base")

    def kwargs(self) -> dict:
        """Arguments of :func:`recon.reproduce.reproduce` for this point."""
        s = dict(self.settings)
        out = {k: s.pop(k) for k in list(s) if k in REPRODUCE_KEYS}
        if s:
            out["train_overrides"] = {k: tuple(v) if isinstance(v, list) else v
                                      for k, v in s.items()}
        return out


def _text(v) -> str:
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v))
    return format(v, "g") if isinstance(v, float) else str(v).lower()


def _same(a, b) -> bool:
    return json.dumps(a) == json.dumps(b)  # tuples and lists alike


def profile_value(task: str, profile: str, key: str):
    """The value a setting has in the profile when a study does not set it."""
    from .pipeline import settings
    from .reproduce import SWEEP_DEFAULTS

    s = settings(task, profile)
    if key == "n_per_class":
        return s["n_per_class"]
    if key == "label_noise":
        return 0.0
    if key == "all_classes":
        return False
    if key in SWEEP_DEFAULTS[profile]:
        return SWEEP_DEFAULTS[profile][key]
    if key in ("steps", "tv"):
        return getattr(s["recon"], key)
    return getattr(s["train"], key)


def _train_fields() -> set[str]:
    from .train import TrainConfig

    return {f.name for f in dataclasses.fields(TrainConfig)}


def load_spec(path: str | os.PathLike) -> dict:
    """Read and check a study spec (see the module's documentation)."""
    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no study spec at {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(spec, dict) or not spec.get("name") or not spec.get("axes"):
        raise ValueError(f"{path}: a study spec needs a 'name' and a list of 'axes'")
    known = set(REPRODUCE_KEYS) | _train_fields()
    tasks = spec.get("tasks") or {}
    for a in spec["axes"]:
        if "name" not in a or not a.get("tasks"):
            raise ValueError(f"{path}: every axis needs a 'name' and its 'tasks': {a}")
        unknown_tasks = set(a["tasks"]) - set(tasks) if tasks else set()
        if unknown_tasks:
            raise ValueError(f"{path}: axis {a['name']!r} names tasks without a base in "
                             f"'tasks': {sorted(unknown_tasks)}")
        if ("key" in a) == ("points" in a):
            raise ValueError(f"{path}: axis {a['name']!r} needs either 'key' and 'values' or "
                             "'points'")
        keys = {a["key"]} if "key" in a else {k for p in a["points"] for k in p}
        bad = keys - known
        if bad:
            raise ValueError(f"{path}: axis {a['name']!r} sets unknown settings {sorted(bad)}; "
                             f"known: {sorted(known)}")
    bad = set(spec.get("defaults", {})) - known
    if bad:
        raise ValueError(f"{path}: unknown defaults {sorted(bad)}")
    return spec


def study_points(spec: dict) -> list[StudyPoint]:
    """The study's distinct points in the order of its axes (a point on several axes once).

    A value equal to the task's base (or, where the base does not set it, the profile's) is
    no change: the base point is one point, whichever axes list it."""
    profile = spec.get("profile", "quick")
    points: dict[tuple, StudyPoint] = {}
    for a in spec["axes"]:
        variants = ([{a["key"]: v} for v in a["values"]] if "key" in a else a["points"])
        for task in a["tasks"]:
            base = {**spec.get("defaults", {}), **(spec.get("tasks") or {}).get(task, {})}
            for v in variants:
                changes = {k: x for k, x in v.items() if not _same(
                    x, base[k] if k in base else profile_value(task, profile, k))}
                settings = {**base, **changes}
                key = (task, json.dumps(sorted(settings.items())))
                old = points.get(key)
                axes = old.axes if old else ()
                points[key] = StudyPoint(task, tuple(sorted(settings.items())),
                                         tuple(sorted(changes.items())),
                                         axes + (() if a["name"] in axes else (a["name"],)))
    return list(points.values())


def _done(card_path: Path, point: StudyPoint) -> bool:
    if not card_path.is_file():
        return False
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError:
        return False
    return bool(card.get("complete")) and card.get("study", {}).get("settings") == dict(
        point.settings)


def _cost(point: StudyPoint, profile: str) -> float:
    """A rough relative cost of a point: training-set size x parameters x epochs."""
    from .reproduce import trained_params

    s = dict(point.settings)

    def get(k):
        return s[k] if k in s else profile_value(point.task, profile, k)

    d = 784 if point.task.startswith("mnist") else 3072
    return get("n_per_class") * trained_params(d, get("widths")) * (get("epochs") + 3000)


def run_study_spec(spec_path: str | os.PathLike, out: str | os.PathLike = "results/study", *,
                   only: str | None = None, dry_run: bool = False, device: str | None = None,
                   progress: bool = False) -> list[dict]:
    """Run every point of the spec that has no complete card yet.

    ``only``: run just the points whose id contains this text. ``dry_run``: list the points
    and whether each is done, run nothing. Returns one status row per point.
    """
    from .files import atomic_write_json, try_lock
    from .reproduce import reproduce

    spec = load_spec(spec_path)
    profile = spec.get("profile", "quick")
    root = Path(out) / spec["name"]
    rows = []
    # cheapest first: a study stopped early has its small points, not one large one
    for point in sorted(study_points(spec), key=lambda pt: _cost(pt, profile)):
        if only and only not in point.id:
            continue
        card_path = root / point.id / "card.json"
        done = _done(card_path, point)
        row = {"point": point.id, "axes": list(point.axes), "done": done}
        rows.append(row)
        if done or dry_run:
            continue
        with try_lock(root / point.id / LOCK) as mine:
            if not mine:  # another process runs this point
                print(f"[study] {point.id}: running in another process, skipped", flush=True)
                row["elsewhere"] = True
                continue
            if _done(card_path, point):  # finished by another process meanwhile
                row["done"] = True
                continue
            print(f"[study] {point.id} (axes: {', '.join(point.axes)})", flush=True)
            t0 = time.perf_counter()
            card = reproduce(point.task, profile, root / point.id, device=device,
                             progress=progress, **point.kwargs())
            card["study"] = {"format": STUDY_FORMAT, "name": spec["name"],
                             "axes": list(point.axes), "settings": dict(point.settings),
                             "point": point.id}
            atomic_write_json(card, card_path)
            row.update(done=True, seconds=time.perf_counter() - t0)
    return rows


def load_study_cards(name: str, root: str | os.PathLike | None = None) -> list[dict]:
    """The complete cards of study ``name`` (from ``RESULTS/study/<name>``), each with its
    folder as ``_dir``."""
    from .reproduce import read_card, results_dir

    base = Path(root) if root is not None else results_dir()
    folder = base / "study" / name
    cards = []
    for path in sorted(folder.glob("*/card.json")):
        card = read_card(path)
        if card.get("complete") and "study" in card:
            card["_dir"] = str(path.parent)
            cards.append(card)
    if not cards:
        raise FileNotFoundError(f"no complete cards of study {name!r} in {folder} (run "
                                f"`python -m recon study SPEC` to make them)")
    return cards


def leakage_row(card: dict) -> dict:
    """What the leakage chapter plots for one card: the settings, the parameter count ``p``,
    the input dimension ``d``, ``p / (d n)``, the recovered fraction (one-to-one NCC > 0.9 and
    SSIM > 0.4), the same count against test images, test accuracy and the KKT residual."""
    from .reproduce import trained_params

    t, tr = card["task"], card["config"]["train"]
    d = card.get("model", {}).get("input_dim") or (784 if t["name"] == "mnist" else 3072)
    p = card.get("model", {}).get("params") or trained_params(d, tr["widths"])
    classes = card.get("model", {}).get("n_outputs", 1)
    c = card["pool"]["counts"]["pool"]["one_to_one"]
    n = t["n"]
    return {
        "task": t["name"], "classes": 2 if classes == 1 else classes, "n": n,
        "width": tr["widths"][0], "depth": len(tr["widths"]),
        "weight decay": tr["weight_decay"], "init scale": tr["init_scale"],
        "epochs": card["train"]["epochs_done"], "label noise": t.get("label_noise", 0.0),
        "input noise": tr.get("input_noise", 0.0), "clip": tr.get("clip", 0.0),
        "grad noise": tr.get("grad_noise", 0.0), "p": p, "d": d, "p/(dn)": p / (d * n),
        "recovered": c["ncc>0.9"] / n, "recovered (SSIM>0.4)": c["ssim>0.4"] / n,
        "test-image control": card["pool"].get("test_control", {}).get("ncc>0.9", 0) / n,
        "test accuracy": card["train"]["test_accuracy"],
        "train error": card["train"]["train_error"],
        "KKT unexplained": card["train"].get("kkt_unexplained"),
        "axes": card.get("study", {}).get("axes", []), "point": card.get("study", {}).get(
            "point", Path(card.get("_dir", "?")).name),
    }
