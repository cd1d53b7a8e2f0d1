"""Running an Optuna study: each trial one reconstruction, resumed chunk by chunk so the
pruner can stop it; claiming trials across workers, samplers and pruners, progress. The run
directory is read by :func:`recon.rundir.load_run` (the model and the task as trained)."""

from __future__ import annotations

import dataclasses
import math
import os
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from ..evaluate import DivergedError, evaluate_both, sweep_score
from ..files import atomic_save
from ..provenance import provenance
from ..reconstruct import ReconConfig, reconstruct
from ..rundir import load_run
from .meta import STUDY_FORMAT, base_meta, check_study_meta
from .objectives import TrialContext, check_finite, kkt_residual, objective_name, score_trial
from .report import study_summary
from .space import search_space, space_to_json
from .storage import (
    TRIAL_FORMAT,
    default_storage_url,
    default_study_name,
    import_optuna,
    make_storage,
    redact,
    sweep_dir,
    trial_path,
)


def _make_pruner(name: str, startup: int, warmup: int):
    optuna = import_optuna()
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=startup, n_warmup_steps=warmup)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be 'median', 'hyperband' or 'none', got {name!r}")


def _make_sampler(name: str, seed: int | None):
    optuna = import_optuna()
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be 'tpe' or 'random', got {name!r}")


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


def _objective(ctx: TrialContext, trial) -> float:
    optuna = import_optuna()
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
            # stop_at, not a shorter config: the run's schedule is a share of all its steps
            runs = [reconstruct(ctx.model, dataclasses.replace(config, seed=s), stop_at=b,
                                mean=ctx.task.mean, checkpoint=c, checkpoint_every=steps + 1,
                                device=ctx.device, progress=False)
                    for s, c in zip(seeds, ckpts)]
            for r in runs:
                check_finite(r.x)
            value = score_trial(ctx, runs)
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
        "paper_score": value if ctx.objective == "oracle"
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
    path = trial_path(ctx.sdir, trial.number)
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
    objective: str = "kkt",
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
        objective: ``"kkt"`` (default) or ``"agreement"``, from the weights alone, or
            ``"oracle"``, the paper's score, which reads the training images (``"paper"``
            is read as ``"oracle"``).
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
    optuna = import_optuna()
    run = Path(run)
    objective = objective_name(objective)
    if n_trials < 0:
        raise ValueError(f"n_trials must be >= 0, got {n_trials}")
    loaded = load_run(run)
    model, task, fingerprint = loaded.model, loaded.task, loaded.fingerprint()
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
        sweep_dir(run).mkdir(parents=True, exist_ok=True)
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
                "objective": objective, "base_config": base_meta(base),
                "space": space_to_json(space), "report_every": report_every, "k": k,
                "task": {"name": task.name, "n": task.n}}
        check_study_meta(study, meta)
        for params in enqueue or ():
            unknown = set(params) - set(space)
            if unknown:
                raise ValueError(f"enqueued parameters {sorted(unknown)} are not in the search "
                                 f"space {sorted(space)}")
            study.enqueue_trial(params, skip_if_exists=True)
        sdir = sweep_dir(run) / study_name
        sdir.mkdir(parents=True, exist_ok=True)
        ctx = TrialContext(model, task, fingerprint, base, objective, space, n_trials, report_every,
                   sdir, device, k, study_name, f"{socket.gethostname()}:{os.getpid()}")
        started = time.perf_counter()
        callbacks = [_progress_printer(n_trials, started)] if progress else []
        if progress:
            c = _counts(study)
            print(f"[sweep] study {study_name} in {redact(url)}: objective {objective}, "
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
