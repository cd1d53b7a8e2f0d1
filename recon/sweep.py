"""Hyperparameter sweeps of the reconstruction with Optuna: one study per trained model.

The paper found its reconstructions by a random search over four hyperparameters (``lr_x``,
``init_scale``, ``lambda_min``, ``alpha``; :func:`search_space`) and pooled the candidates of
its best runs. Here each Optuna *trial* is one reconstruction run (:func:`recon.reconstruct.
reconstruct`) with sampled hyperparameters; a *study* holds the trials of one trained model.

Storage and workers:

- By default the study lives in a SQLite file in the run directory (``RUN/sweep/optuna.db``):
  several worker processes on one machine share it, just by running the same command.
- With a database URL (``postgresql://user:password@host/db``) workers on many machines share
  one study. Every worker needs the same ``RUN/model.pt`` (the study stores the weights'
  fingerprint and refuses a different model).
- ``n_trials`` is the number of *finished* trials (complete or pruned) the study should hold,
  counted over all workers: each worker claims a trial only while the study still needs one,
  so the workers together run exactly ``n_trials``. Running the command again resumes: finished
  trials are kept, and trials of a worker that died (killed, machine lost) are marked failed
  once their heartbeat is older than ``grace_period`` seconds, then run again as new trials.

Objectives (all minimised):

- ``"paper"``: the paper's sweep score, the mean of the ``k`` best one-to-one NCC distances
  between candidates and training images (:func:`recon.evaluate.sweep_score`). It uses the
  training set: an oracle for research, not a tool an attacker has.
- ``"kkt"``: the fraction of ``||theta||^2`` the candidates leave unexplained in the
  stationarity equation, evaluated with the *exact* ReLU (so trials with different ``alpha``
  compare fairly). Needs only the weights: what an attacker can compute.
- ``"agreement"``: two independent runs (different seeds) with the same hyperparameters; the
  score is the paper's score of one run's candidates against the other's. Also needs no
  training data, costs two runs per trial, and rewards any reproducible output: two runs that
  collapse to the same class-average blob agree too.

Every trial records the oracle score and the KKT residual as user attributes whatever the
objective (so every worker needs the training data, as ``RUN/run.json`` names it), and
:func:`compare_scores` measures how well an attacker's score finds what the oracle finds.

Pruning: every ``report_every`` steps the trial reports its objective (for ``"kkt"`` the
exact-ReLU residual) to an Optuna pruner, which stops hopeless trials. The run is continued
chunk by chunk from an in-trial checkpoint (``reconstruct`` resumes where it stopped; the
trajectory is the same as one uninterrupted run). A trial that diverges (NaN/inf) is recorded
as pruned with user attribute ``diverged``.

Artefacts: each finished trial saves ``RUN/sweep/<study>/trial-00007.pt`` (candidates ``x``,
multipliers ``lam``, labels ``y``, config, history, scores; ``torch.save``, read with
``weights_only=True``), so :func:`pool_trials` evaluates the pooled candidates of the best
``k`` trials with the paper's protocol (both matchings) without re-running anything. With
workers on several machines each machine holds the artefacts of its own trials: put ``RUN`` on
a shared file system, or copy ``RUN/sweep/<study>/`` together before pooling.

Plots: ``optuna.visualization.matplotlib.plot_optimization_history(load_study(run))`` and the
other Optuna plots work on the study as it is (matplotlib only; no plotly needed).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .evaluate import DivergedError, Evaluation, evaluate_both, sweep_score
from .files import atomic_save, atomic_write_json, file_lock
from .models import MLP
from .provenance import provenance
from .reconstruct import ADDED_FIELDS, ReconConfig, reconstruct, stationarity_loss

__all__ = [
    "OBJECTIVES",
    "SEARCH_SPACES",
    "PoolResult",
    "compare_scores",
    "default_study_name",
    "kkt_residual",
    "load_study",
    "load_trial",
    "make_storage",
    "pool_trials",
    "run_study",
    "search_space",
    "study_summary",
]

TRIAL_FORMAT = "recon-sweep-trial/1"
STUDY_FORMAT = "recon-sweep/1"
OBJECTIVES = ("paper", "kkt", "agreement")

# name -> (low, high, log)
SEARCH_SPACES: dict[str, dict[str, tuple[float, float, bool]]] = {
    # the paper's random search (Haim et al., 2022, Appendix)
    "paper": {
        "lr_x": (1e-5, 1.0, True),
        "init_scale": (1e-6, 0.1, True),
        "lambda_min": (0.01, 0.5, False),
        "alpha": (10.0, 500.0, False),
    },
    # a narrower box around the recipe measured to work with Adam on a CPU (Chapter 3)
    "cpu": {
        "lr_x": (1e-3, 0.1, True),
        "init_scale": (1e-4, 1e-2, True),
        "lambda_min": (0.2, 0.5, False),
        "alpha": (30.0, 300.0, False),
    },
    # nothing searched: every trial is the base recipe with its own seed (seed + trial), so
    # pooling trials pools independent runs, chosen without looking at any data
    "seeds": {},
}
SEARCHABLE = ("lr_x", "init_scale", "lambda_min", "alpha", "lr_lambda")


def _optuna():
    import optuna

    return optuna


def search_space(name: str = "paper", **overrides) -> dict:
    """The search space as ``{param: optuna.distributions.FloatDistribution}``.

    ``name``: ``"paper"`` (lr_x log-uniform 1e-5..1, init_scale log-uniform 1e-6..0.1,
    lambda_min uniform 0.01..0.5, alpha uniform 10..500), ``"cpu"`` (narrower, around the
    Adam recipe) or ``"seeds"`` (nothing: independent runs of the base recipe).
    ``overrides``: ``param=(low, high, log)`` to change or add a range (any of ``lr_x,
    init_scale, lambda_min, alpha, lr_lambda``), or ``param=None`` to drop one (it then keeps
    the base config's value).
    """
    from optuna.distributions import FloatDistribution

    if name not in SEARCH_SPACES:
        raise ValueError(f"search space must be one of {sorted(SEARCH_SPACES)}, got {name!r}")
    ranges = dict(SEARCH_SPACES[name])
    for k, v in overrides.items():
        if k not in SEARCHABLE:
            raise ValueError(f"cannot search over {k!r}; searchable: {', '.join(SEARCHABLE)}")
        if v is None:
            ranges.pop(k, None)
        else:
            ranges[k] = tuple(v)
    return {k: FloatDistribution(float(lo), float(hi), log=bool(log))
            for k, (lo, hi, log) in ranges.items()}


def _space_to_json(space: dict) -> dict:
    return {k: [d.low, d.high, bool(d.log)] for k, d in sorted(space.items())}


def _redact(url: str) -> str:
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


# ---------------------------------------------------------------------------------------------
# Storage
# ---------------------------------------------------------------------------------------------
def _sweep_dir(run: Path) -> Path:
    return Path(run) / "sweep"


def default_storage_url(run: str | os.PathLike) -> str:
    """``sqlite:///RUN/sweep/optuna.db`` (absolute path)."""
    return f"sqlite:///{(_sweep_dir(Path(run)) / 'optuna.db').resolve()}"


def _with_driver(url: str) -> str:
    """``postgresql://...`` names no driver; SQLAlchemy 2.1 then wants psycopg 3, older ones
    psycopg2. Use whichever is installed (psycopg2-binary is a dependency of recon)."""
    if not (url.startswith("postgresql://") or url.startswith("postgres://")):
        return url
    import importlib.util

    rest = url.split("://", 1)[1]
    for module, driver in (("psycopg2", "psycopg2"), ("psycopg", "psycopg")):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{driver}://{rest}"
    raise ImportError("a PostgreSQL storage needs psycopg2 (pip install psycopg2-binary) or "
                      "psycopg 3 (pip install 'psycopg[binary]')")


def make_storage(url: str, *, heartbeat_interval: int | None = 10,
                 grace_period: int | None = 40):
    """An ``optuna.storages.RDBStorage`` for ``url`` with worker heartbeats.

    SQLite files get a long lock timeout so several processes can share them, and are created
    under a file lock (two workers starting together do not race to create the tables).
    ``postgresql://`` URLs use psycopg2 if installed (else psycopg 3).
    ``heartbeat_interval=None`` disables heartbeats (a killed worker's trial then stays
    RUNNING for ever).
    """
    optuna = _optuna()
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
def _load_run(run: Path):
    from .reconstruct import theta_fingerprint
    from .rundir import read_run_card, run_task
    from .train import load_checkpoint

    if not (run / "run.json").is_file() or not (run / "model.pt").is_file():
        raise FileNotFoundError(
            f"{run} holds no trained model (run.json + model.pt); run `python -m recon train "
            f"--run {run}` first"
        )
    task = run_task(read_run_card(run), run)
    trained, _ = load_checkpoint(run / "model.pt")
    return trained.model, task, theta_fingerprint(trained.model)


def default_study_name(task_name: str, n: int, fingerprint: str, objective: str) -> str:
    """``"<task>-n<n>-<first 8 hex of the weights' fingerprint>-<objective>"``."""
    return f"{task_name}-n{n}-{fingerprint[:8]}-{objective}"


def _make_pruner(name: str, startup: int, warmup: int):
    optuna = _optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be 'median', 'hyperband' or 'none', got {name!r}")


def _make_sampler(name: str, seed: int | None):
    optuna = _optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be 'tpe' or 'random', got {name!r}")


def load_study(run: str | os.PathLike | None = None, study_name: str | None = None, *,
               storage=None):
    """Open an existing study (for plots: ``optuna.visualization.matplotlib.*``).

    ``storage`` defaults to the run directory's SQLite file; ``study_name`` may be left out
    when the storage holds exactly one study.
    """
    optuna = _optuna()
    if storage is None:
        if run is None:
            raise ValueError("pass run= or storage=")
        if not (_sweep_dir(Path(run)) / "optuna.db").is_file():
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


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------
def kkt_residual(model: MLP, x: torch.Tensor, lam: torch.Tensor, y: torch.Tensor) -> float:
    """``||theta - (1/m) grad sum_j lam_j y_j Phi(x_j)||^2 / ||theta||^2`` with the exact ReLU.

    The fraction of the weights the candidates leave unexplained; needs no training data.
    """
    p0 = next(model.parameters())
    net = copy.deepcopy(model)
    for p in net.theta():
        p.requires_grad_(True)
    x, lam, y = (t.detach().to(p0.device, p0.dtype) for t in (x, lam, y))
    theta2 = net.theta_norm2(None)
    return float(stationarity_loss(net, x, lam, y, None).detach()) / theta2


def _check_finite(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError("candidates hold NaN/inf")


# ---------------------------------------------------------------------------------------------
# Trials
# ---------------------------------------------------------------------------------------------
class _Surplus(Exception):
    """The study already holds (or is running) enough trials; this one is not needed."""

    def __init__(self, n: int) -> None:
        super().__init__(f"not needed: the study already has {n} trials finished or running "
                         "(another worker claimed the last one first)")


def _unlink(paths) -> None:
    for p in paths:
        p.unlink(missing_ok=True)


_CLAIMING = ("COMPLETE", "PRUNED", "RUNNING")


def _counts(study) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def _trial_path(sdir: Path, number: int) -> Path:
    return sdir / f"trial-{number:05d}.pt"


def load_trial(path: str | os.PathLike) -> dict:
    """Read a trial artefact (``weights_only=True``): ``x``, ``lam``, ``y``, ``config``,
    ``params``, ``value``, ``scores``, ``history``, ``trial``, ``study``."""
    raw = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(raw, dict) or raw.get("format") != TRIAL_FORMAT:
        raise ValueError(f"{path} is not a recon sweep trial file ({TRIAL_FORMAT})")
    return raw


@dataclass
class _Ctx:
    model: MLP
    task: object
    fingerprint: str
    base: ReconConfig
    objective: str
    space: dict
    n_trials: int
    report_every: int
    sdir: Path
    device: str | None
    k: int
    study_name: str
    worker: str


def _score(ctx: _Ctx, runs) -> float:
    if ctx.objective == "paper":
        return sweep_score(runs[0].x, ctx.task.x_train, k=ctx.k)
    if ctx.objective == "kkt":
        return kkt_residual(ctx.model, runs[0].x, runs[0].lam, runs[0].y)
    return sweep_score(runs[0].x, runs[1].x, k=ctx.k)


def _objective(ctx: _Ctx, trial) -> float:
    optuna = _optuna()
    study = trial.study
    claimed = sum(1 for t in study.get_trials(deepcopy=False)
                  if t.number < trial.number and t.state.name in _CLAIMING)
    if claimed >= ctx.n_trials:
        trial.set_user_attr("surplus", True)
        raise _Surplus(ctx.n_trials)
    params = {k: trial.suggest_float(k, d.low, d.high, log=d.log) for k, d in ctx.space.items()}
    seed = ctx.base.seed + trial.number
    config = ReconConfig(**{**ctx.base.to_dict(), **params, "seed": seed})
    trial.set_user_attr("worker", ctx.worker)
    trial.set_user_attr("seed", seed)
    n_runs = 2 if ctx.objective == "agreement" else 1
    seeds = [seed, seed + 1_000_003][:n_runs]
    ckpts = [ctx.sdir / f"trial-{trial.number:05d}.run{i}.ckpt.pt" for i in range(n_runs)]
    _unlink(ckpts)
    steps = config.steps
    bounds = sorted({*range(ctx.report_every, steps, ctx.report_every), steps})
    t0 = time.perf_counter()
    runs = []
    try:
        for b in bounds:
            runs = [reconstruct(ctx.model, dataclasses.replace(config, steps=b, seed=s),
                                mean=ctx.task.mean, checkpoint=c, checkpoint_every=steps + 1,
                                device=ctx.device, progress=False)
                    for s, c in zip(seeds, ckpts)]
            for r in runs:
                _check_finite(r.x)
            value = _score(ctx, runs)
            if not math.isfinite(value):
                raise FloatingPointError(f"objective is {value}")
            trial.report(value, b)
            if b < steps and trial.should_prune():
                trial.set_user_attr("pruned_at", b)
                trial.set_user_attr("wall_time_s", time.perf_counter() - t0)
                _unlink(ckpts)
                raise optuna.TrialPruned(f"pruned at step {b}")
    except (FloatingPointError, DivergedError) as e:
        trial.set_user_attr("diverged", str(e)[:300])
        trial.set_user_attr("wall_time_s", time.perf_counter() - t0)
        _unlink(ckpts)
        raise optuna.TrialPruned(f"diverged: {e}") from None

    x = torch.cat([r.x for r in runs])
    lam = torch.cat([r.lam for r in runs])
    y = torch.cat([r.y for r in runs])
    r0 = runs[0]
    scores = {
        "paper_score": value if ctx.objective == "paper"
        else sweep_score(r0.x, ctx.task.x_train, k=ctx.k),
        "kkt_residual": value if ctx.objective == "kkt"
        else kkt_residual(ctx.model, r0.x, r0.lam, r0.y),
        "stat_rel": float(r0.final()["stat_rel"]),
        "loss": float(r0.final()["loss"]),
    }
    if ctx.objective == "agreement":
        scores["agreement"] = value
    evs = evaluate_both(x, ctx.task.x_train, ctx.task.mean)
    counts = {name: ev.counts() for name, ev in evs.items()}
    wall = time.perf_counter() - t0
    path = _trial_path(ctx.sdir, trial.number)
    atomic_save({
        "format": TRIAL_FORMAT, "study": ctx.study_name, "trial": trial.number,
        "objective": ctx.objective, "value": float(value), "params": params,
        "config": config.to_dict(), "runs": n_runs, "x": x, "lam": lam, "y": y,
        "history": runs[0].history, "scores": scores, "counts": counts,
        "theta_fingerprint": ctx.fingerprint, "wall_time_s": wall, "worker": ctx.worker,
        "provenance": provenance(ctx.device),
    }, path)
    _unlink(ckpts)
    for k, v in scores.items():
        trial.set_user_attr(k, v)
    trial.set_user_attr("counts", counts)
    trial.set_user_attr("wall_time_s", wall)
    trial.set_user_attr("artefact", path.name)
    return value


def _base_meta(base: ReconConfig) -> dict:
    """The base config as stored with a study; options that are off and were added later (TV
    prior, subspace) are left out, so studies started before they existed can be joined."""
    d = base.to_dict()
    for key, off in ADDED_FIELDS.items():
        if d.get(key) == off:
            del d[key]
    return d


def _check_study_meta(study, meta: dict) -> None:
    """Store the study's fixed settings on creation; on joining, refuse other settings."""
    if "format" not in study.user_attrs:
        for attempt in range(5):
            try:  # two workers may create the study at once: the second insert may collide
                for key in sorted(meta, key=lambda k: k == "format"):  # "format" last
                    study.set_user_attr(key, meta[key])
                break
            except Exception:  # noqa: BLE001 - retried, then compared below
                time.sleep(0.2 * (attempt + 1))
    attrs = study.user_attrs
    diff = [key for key, v in meta.items() if json.loads(json.dumps(v)) != attrs.get(key)]
    if diff:
        raise ValueError(
            f"study {study.study_name!r} was started with another {', '.join(diff)} "
            f"(stored: {', '.join(f'{d}={attrs.get(d)!r}' for d in diff)}); every worker must "
            "use the same model and settings, or pass another --study-name"
        )


def _progress_printer(n_trials: int, started: float) -> Callable:
    def cb(study, frozen) -> None:
        if frozen.user_attrs.get("surplus"):
            return
        c = _counts(study)
        done = c.get("COMPLETE", 0) + c.get("PRUNED", 0)
        try:
            best = study.best_trial
            best_s = f"best {best.value:.4g} (trial {best.number})"
        except ValueError:
            best_s = "no complete trial yet"
        v = "" if frozen.value is None else f" value {frozen.value:.4g}"
        why = " (diverged)" if frozen.user_attrs.get("diverged") else ""
        print(f"[sweep] trial {frozen.number} {frozen.state.name.lower()}{why}{v} in "
              f"{frozen.user_attrs.get('wall_time_s', float('nan')):.0f} s | finished "
              f"{done}/{n_trials}, running {c.get('RUNNING', 0)}, {best_s} | worker "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return cb


def run_study(
    run: str | os.PathLike,
    n_trials: int,
    *,
    base: ReconConfig | None = None,
    objective: str = "paper",
    space: dict | str = "paper",
    storage: str | None = None,
    study_name: str | None = None,
    pruner: str | None = None,
    prune_startup: int = 5,
    prune_warmup: int | None = None,
    report_every: int | None = None,
    sampler: str = "tpe",
    sampler_seed: int | None = None,
    k: int = 10,
    timeout: float | None = None,
    wait: bool = True,
    heartbeat_interval: int | None = 10,
    grace_period: int | None = 40,
    poll_interval: float = 2.0,
    device: str | None = None,
    progress: bool = True,
    enqueue: list[dict] | None = None,
) -> dict:
    """Run (or join, or resume) the study of the model in ``run`` until it holds ``n_trials``
    finished trials; return :func:`study_summary`.

    Args:
        run: a run directory with ``model.pt`` and ``run.json`` (``python -m recon train``).
            Artefacts go to ``run/sweep/<study_name>/``.
        n_trials: finished (complete + pruned) trials the study should hold, over all
            workers. A study that already has them runs nothing.
        base: the fixed part of each trial's config (default ``ReconConfig()`` with
            ``n_candidates = 2n``); the searched parameters and the seed (``base.seed +
            trial number``) are overridden per trial. All workers of a study must agree.
        objective: ``"paper"`` (oracle), ``"kkt"`` or ``"agreement"`` (attacker-realistic).
        space: a :func:`search_space` name or dict.
        storage: database URL; default ``sqlite:///run/sweep/optuna.db``.
        study_name: default :func:`default_study_name` (task, n, weights, objective).
        pruner: ``"median"`` (Optuna's MedianPruner, after ``prune_startup`` trials and
            ``prune_warmup`` steps, default ``steps // 5``), ``"hyperband"`` or ``"none"``.
            Default: ``"median"``, or ``"none"`` when the space searches nothing (independent
            runs of one recipe are all pooled, and an early value is too noisy to drop one).
        report_every: steps between intermediate values (default ``steps // 10``).
        sampler: ``"tpe"`` (Optuna's default) or ``"random"`` (the paper's random search).
            ``sampler_seed`` makes a single worker reproducible; give workers different seeds.
        k: the number of best matches the paper's score averages.
        timeout: seconds after which this worker claims no new trial.
        wait: when the remaining trials are running on other workers, wait for them (and take
            over the trials of workers that die) instead of returning at once. Needs
            heartbeats.
        heartbeat_interval, grace_period: a worker records a heartbeat every
            ``heartbeat_interval`` s; a RUNNING trial without one for ``grace_period`` s is
            marked failed and its slot is run again.
        enqueue: parameter dicts (e.g. ``{"lr_x": 0.01, ...}``, keys from ``space``) to run
            first, before the sampler's own proposals; a set already in the study is not
            enqueued twice, so resuming or joining does not repeat it.
    """
    optuna = _optuna()
    run = Path(run)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if n_trials < 0:
        raise ValueError(f"n_trials must be >= 0, got {n_trials}")
    model, task, fingerprint = _load_run(run)
    if device is not None:
        model = model.to(device)
    base = base or ReconConfig(n_candidates=2 * task.n)
    if isinstance(space, str):
        space = search_space(space)
    if pruner is None:
        pruner = "median" if space else "none"
    steps = base.steps
    report_every = max(1, report_every or steps // 10 or 1)
    prune_warmup = steps // 5 if prune_warmup is None else prune_warmup
    url = storage or default_storage_url(run)
    if storage is None:
        _sweep_dir(run).mkdir(parents=True, exist_ok=True)
    store = make_storage(url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    study_name = study_name or default_study_name(task.name, task.n, fingerprint, objective)
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(
            storage=store, study_name=study_name, direction="minimize", load_if_exists=True,
            sampler=_make_sampler(sampler, sampler_seed),
            pruner=_make_pruner(pruner, prune_startup, prune_warmup))
        meta = {"format": STUDY_FORMAT, "theta_fingerprint": fingerprint,
                "objective": objective, "base_config": _base_meta(base),
                "space": _space_to_json(space), "report_every": report_every, "k": k,
                "task": {"name": task.name, "n": task.n}}
        _check_study_meta(study, meta)
        for params in enqueue or ():
            unknown = set(params) - set(space)
            if unknown:
                raise ValueError(f"enqueued parameters {sorted(unknown)} are not in the search "
                                 f"space {sorted(space)}")
            study.enqueue_trial(params, skip_if_exists=True)
        sdir = _sweep_dir(run) / study_name
        sdir.mkdir(parents=True, exist_ok=True)
        ctx = _Ctx(model, task, fingerprint, base, objective, space, n_trials, report_every,
                   sdir, device, k, study_name, f"{socket.gethostname()}:{os.getpid()}")
        started = time.perf_counter()
        callbacks = [_progress_printer(n_trials, started)] if progress else []
        if progress:
            c = _counts(study)
            print(f"[sweep] study {study_name} in {_redact(url)}: objective {objective}, "
                  f"{c.get('COMPLETE', 0) + c.get('PRUNED', 0)}/{n_trials} finished, "
                  f"{c.get('RUNNING', 0)} running", flush=True)
        heartbeat = heartbeat_interval is not None
        while True:
            if heartbeat:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    optuna.storages.fail_stale_trials(study)
            c = _counts(study)
            done = c.get("COMPLETE", 0) + c.get("PRUNED", 0)
            if done >= n_trials:
                break
            if timeout is not None and time.perf_counter() - started > timeout:
                break
            if done + c.get("RUNNING", 0) >= n_trials:
                if not (wait and heartbeat):  # without heartbeats a dead trial never ends
                    break
                time.sleep(poll_interval)
                continue
            try:
                study.optimize(lambda t: _objective(ctx, t), n_trials=1, catch=(_Surplus,),
                               callbacks=callbacks)
            except optuna.exceptions.UpdateFinishedTrialError:
                # our trial was declared dead (no heartbeat within the grace period) while it
                # ran; it has been or will be run again by someone
                continue
        _cleanup(study, sdir)
        return study_summary(study, n_trials=n_trials, storage=url, run=run)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _cleanup(study, sdir: Path) -> None:
    """Remove the in-trial checkpoints of failed trials (dead workers); live ones are kept."""
    failed = {t.number for t in study.get_trials(deepcopy=False) if t.state.name == "FAIL"}
    for f in sdir.glob("trial-*.ckpt.pt"):
        try:
            number = int(f.name.split("-")[1].split(".")[0])
        except (IndexError, ValueError):
            continue
        if number in failed:
            f.unlink(missing_ok=True)


def compare_scores(study, attacker: str = "kkt_residual", oracle: str = "paper_score") -> dict:
    """How well an attacker's score finds what the oracle finds, over the complete trials.

    Both are user attributes every trial records (``"paper_score"``, ``"kkt_residual"``,
    ``"stat_rel"``, ``"loss"``; ``"agreement"`` in agreement studies); lower is better for all.
    Returns the Spearman rank correlation, the number of trials, and the oracle rank (0 =
    best) of the trial the attacker's score would pick.
    """
    from scipy.stats import spearmanr

    rows = [(t.user_attrs[attacker], t.user_attrs[oracle], t.number)
            for t in study.get_trials(deepcopy=False)
            if t.state.name == "COMPLETE" and attacker in t.user_attrs
            and oracle in t.user_attrs]
    if len(rows) < 2:
        return {"n": len(rows), "spearman": float("nan"), "oracle_rank_of_attacker_pick": None}
    a, o, numbers = zip(*rows)
    pick = numbers[min(range(len(rows)), key=lambda i: a[i])]
    order = [n for _, n in sorted(zip(o, numbers))]
    return {"n": len(rows), "spearman": float(spearmanr(a, o).statistic),
            "attacker_pick": pick, "oracle_best": order[0],
            "oracle_rank_of_attacker_pick": order.index(pick)}


def study_summary(study, *, n_trials: int | None = None, storage: str | None = None,
                  run: str | os.PathLike | None = None) -> dict:
    """A JSON-serialisable summary: trial counts by state, the best trial, durations."""
    trials = [t for t in study.get_trials(deepcopy=False) if not t.user_attrs.get("surplus")]
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    out = {
        "study_name": study.study_name,
        "storage": _redact(storage) if storage else None,
        "objective": study.user_attrs.get("objective"),
        "direction": "minimize",
        "n_trials_target": n_trials,
        "states": states,
        "n_diverged": sum(1 for t in trials if t.user_attrs.get("diverged")),
        "workers": sorted({t.user_attrs["worker"] for t in trials if "worker" in t.user_attrs}),
        "trial_wall_time_s": sum(t.user_attrs.get("wall_time_s", 0.0) for t in trials),
        "base_config": study.user_attrs.get("base_config"),
        "space": study.user_attrs.get("space"),
    }
    done = [t for t in trials if t.datetime_start and t.datetime_complete]
    if done:
        span = max(t.datetime_complete for t in done) - min(t.datetime_start for t in done)
        out["study_wall_time_s"] = span.total_seconds()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    if complete:
        b = min(complete, key=lambda t: t.value)
        out["best"] = {"number": b.number, "value": b.value, "params": b.params,
                       **{k: b.user_attrs.get(k) for k in
                          ("paper_score", "kkt_residual", "counts", "artefact", "worker")}}
    attacker = {"kkt": "kkt_residual", "agreement": "agreement"}.get(out["objective"])
    if attacker is not None:  # does the attacker's objective rank trials as the oracle would?
        out["attacker_vs_oracle"] = compare_scores(study, attacker=attacker)
    if run is not None:
        out["dir"] = str(_sweep_dir(Path(run)) / study.study_name)
    return out


# ---------------------------------------------------------------------------------------------
# Pooling
# ---------------------------------------------------------------------------------------------
@dataclass
class PoolResult:
    """The pooled candidates of the best ``k`` trials, evaluated with both matchings, next to
    the best single trial."""

    trials: list[int]
    pool: dict[str, Evaluation]
    best: dict[str, Evaluation]
    best_trial: int
    missing: list[dict] = field(default_factory=list)
    study_name: str = ""
    objective: str = ""
    candidates: torch.Tensor | None = None  # (m_pool, C, H, W) the pooled candidates

    def counts(self) -> dict:
        return {"pool": {m: ev.counts() for m, ev in self.pool.items()},
                "best_trial": {m: ev.counts() for m, ev in self.best.items()}}

    def to_dict(self) -> dict:
        return {
            "study_name": self.study_name, "objective": self.objective,
            "trials": self.trials, "best_trial": self.best_trial, "missing": self.missing,
            "n_candidates": self.pool["paper"].n_candidates,
            "counts": self.counts(),
            "mean_ssim_top10": {
                "pool": {m: float(ev.ssim[:10].mean()) for m, ev in self.pool.items()},
                "best_trial": {m: float(ev.ssim[:10].mean()) for m, ev in self.best.items()}},
            "pool_evaluation": {m: ev.to_dict() for m, ev in self.pool.items()},
            "best_trial_evaluation": {m: ev.to_dict() for m, ev in self.best.items()},
        }


def pool_trials(
    run: str | os.PathLike,
    k: int = 5,
    *,
    study=None,
    study_name: str | None = None,
    storage: str | None = None,
    task=None,
    write: bool = True,
    rank_by: str | None = None,
) -> PoolResult:
    """Pool the candidates of the best ``k`` complete trials and evaluate them (paper protocol,
    both matchings) beside the best single trial. Reads the saved trial artefacts; re-runs
    nothing. Trials whose artefact is on another machine are listed in ``missing`` (copy
    ``RUN/sweep/<study>/`` from every machine to pool them too). Writes
    ``RUN/sweep/<study>/pool.json`` when ``write``.

    ``rank_by``: rank the trials by one of the scores every trial stores (``"paper_score"``,
    the oracle that uses the training set; ``"kkt_residual"``, from the weights alone)
    instead of by the study's objective; lower is better for both.
    """
    run = Path(run)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if study is None:
        study = load_study(run, study_name, storage=storage)
    if task is None:
        _, task, _ = _load_run(run)
    sdir = _sweep_dir(run) / study.study_name
    if rank_by is not None and rank_by not in ("paper_score", "kkt_residual"):
        raise ValueError(f"rank_by must be 'paper_score' or 'kkt_residual', got {rank_by!r}")
    complete = sorted((t for t in study.get_trials(deepcopy=False)
                       if t.state.name == "COMPLETE"),
                      key=lambda t: t.value if rank_by is None else t.user_attrs[rank_by])
    chosen, missing, xs = [], [], []
    for t in complete:
        if len(chosen) == k:
            break
        path = _trial_path(sdir, t.number)
        if not path.is_file():
            missing.append({"trial": t.number, "worker": t.user_attrs.get("worker")})
            continue
        art = load_trial(path)
        chosen.append(t.number)
        xs.append(art["x"])
    if not chosen:
        raise FileNotFoundError(
            f"no trial artefacts in {sdir} for study {study.study_name!r} "
            f"({len(complete)} complete trials{'; missing: ' + str(missing) if missing else ''})"
        )
    pool = evaluate_both(torch.cat(xs), task.x_train, task.mean)
    best = evaluate_both(xs[0], task.x_train, task.mean)
    res = PoolResult(chosen, pool, best, chosen[0], missing, study.study_name,
                     study.user_attrs.get("objective", ""), torch.cat(xs))
    if write and rank_by is None:
        atomic_write_json(res.to_dict(), sdir / "pool.json")
    return res
