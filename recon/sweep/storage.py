"""Where Optuna studies and their artefacts live: SQLite or PostgreSQL storage (driver, locks,
retries, heartbeats, redacted URLs), study names, the run directory a study belongs to (read by
:mod:`recon.rundir`) and the files each finished trial leaves."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import torch

from ..files import file_lock

TRIAL_FORMAT = "recon-sweep-trial/1"


def import_optuna():
    import optuna

    return optuna


def redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------
def sweep_dir(run: Path) -> Path:
    return Path(run) / "sweep"


def default_storage_url(run: str | os.PathLike) -> str:
    """``sqlite:///RUN/sweep/optuna.db`` (absolute path)."""
    return f"sqlite:///{(sweep_dir(Path(run)) / 'optuna.db').resolve()}"


def _with_driver(url: str) -> str:
    """``postgresql://...`` names no driver; SQLAlchemy 2.1 then wants psycopg 3, older ones
    psycopg2. Use whichever is installed (the package's ``postgres`` extra,
    ``pip install -e '.[postgres]'`` in a clone, installs psycopg2-binary; SQLite studies need
    neither)."""
    if not (url.startswith("postgresql://") or url.startswith("postgres://")):
        return url
    import importlib.util

    rest = url.split("://", 1)[1]
    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise ImportError("a PostgreSQL storage needs a driver: pip install psycopg2-binary (the "
                      "recon-book package's `postgres` extra: pip install -e '.[postgres]' in "
                      "a clone), or psycopg 3 (pip install 'psycopg[binary]'); a SQLite study "
                      "(the default) needs none")


def make_storage(url: str, *, heartbeat_interval: int | None = 10,
                 grace_period: int | None = 40):
    """An ``optuna.storages.RDBStorage`` for ``url`` with worker heartbeats.

    SQLite files get a long lock timeout so several processes can share them, and are created
    under a file lock (two workers starting together do not race to create the tables).
    ``postgresql://`` URLs use psycopg2 if installed (else psycopg 3).
    ``heartbeat_interval=None`` disables heartbeats (a killed worker's trial then stays
    RUNNING for ever).
    """
    optuna = import_optuna()
    url = _with_driver(url)
    kw = dict(heartbeat_interval=heartbeat_interval,
              grace_period=grace_period if heartbeat_interval else None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///"):])
            with file_lock(path.with_name(path.name + ".lock")):
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"connect_args": {"timeout": 120}}, **kw)
        last = None
        for attempt in range(5):  # several machines may create the tables at once
            try:
                return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True},
                                                  **kw)
            except Exception as e:  # noqa: BLE001 - retried, then re-raised
                last = e
                time.sleep(0.5 + attempt)
        raise last


# ---------------------------------------------------------------------------------------------
# Model, task, study
# ---------------------------------------------------------------------------------------------
def load_run(run: Path):
    """``(model, task, fingerprint)`` of a run directory, read by :func:`recon.rundir.load_run`
    (the task as trained: a shadow model's images, a noisy-label run's labels)."""
    from ..rundir import load_run as read_run

    r = read_run(run)
    return r.model, r.task, r.fingerprint()


def default_study_name(task_name: str, n: int, fingerprint: str, objective: str) -> str:
    """``"<task>-n<n>-<first 8 hex of the weights' fingerprint>-<objective>"``."""
    return f"{task_name}-n{n}-{fingerprint[:8]}-{objective}"


def load_study(run: str | os.PathLike | None = None, study_name: str | None = None, *,
               storage=None):
    """Open an existing study (for plots: ``optuna.visualization.matplotlib.*``).

    ``storage`` defaults to the run directory's SQLite file; ``study_name`` may be left out
    when the storage holds exactly one study.
    """
    optuna = import_optuna()
    if storage is None:
        if run is None:
            raise ValueError("pass run= or storage=")
        if not (sweep_dir(Path(run)) / "optuna.db").is_file():
            raise FileNotFoundError(f"no sweep in {run}; run `python -m recon sweep` first")
        storage = default_storage_url(run)
    if isinstance(storage, str):
        storage = make_storage(storage, heartbeat_interval=None)
    if study_name is None:
        names = [s.study_name for s in optuna.study.get_all_study_summaries(storage)]
        if len(names) != 1:
            raise ValueError(f"the storage holds {len(names)} studies ({names}); pass "
                             "study_name=")
        study_name = names[0]
    return optuna.load_study(study_name=study_name, storage=storage)


def trial_path(sdir: Path, number: int) -> Path:
    return sdir / f"trial-{number:05d}.pt"


def load_trial(path: str | os.PathLike) -> dict:
    """Read a trial artefact (``weights_only=True``): ``x``, ``lam``, ``y``, ``config``,
    ``params``, ``value``, ``scores``, ``history``, ``trial``, ``study``."""
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or raw.get("format") != TRIAL_FORMAT:
        raise ValueError(f"{path} is not a recon sweep trial file ({TRIAL_FORMAT})")
    return raw
