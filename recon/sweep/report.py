"""Reading Optuna studies back: summaries, how an attacker's objective ranks trials against the
oracle, and the pooled candidates of the best trials."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..evaluate import Evaluation, evaluate_both
from ..files import atomic_write_json
from ..rundir import load_run
from .storage import load_study, load_trial, redact, sweep_dir, trial_path


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
        "storage": redact(storage) if storage else None,
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
        out["dir"] = str(sweep_dir(Path(run)) / study.study_name)
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
    keep: float = 1.0  # the share of each trial's candidates pooled (largest multipliers)

    def counts(self) -> dict:
        return {"pool": {m: ev.counts() for m, ev in self.pool.items()},
                "best_trial": {m: ev.counts() for m, ev in self.best.items()}}

    def to_dict(self) -> dict:
        return {
            "study_name": self.study_name, "objective": self.objective,
            "trials": self.trials, "best_trial": self.best_trial, "missing": self.missing,
            "keep": self.keep, "n_candidates": self.pool["paper"].n_candidates,
            "counts": self.counts(),
            "mean_ssim_top10": {
                "pool": {m: float(ev.ssim[:10].mean()) for m, ev in self.pool.items()},
                "best_trial": {m: float(ev.ssim[:10].mean()) for m, ev in self.best.items()}},
            "pool_evaluation": {m: ev.to_dict() for m, ev in self.pool.items()},
            "best_trial_evaluation": {m: ev.to_dict() for m, ev in self.best.items()},
        }


def multiplier_order(lam: torch.Tensor) -> torch.Tensor:
    """The candidates' indices, largest multiplier first (a candidate's total where it has one
    per wrong class; ties keep their order)."""
    weight = lam.sum(1) if lam.dim() == 2 else lam
    return torch.argsort(weight, descending=True, stable=True)


def check_keep(keep: float) -> None:
    """``keep`` must be a share of a trial's candidates, in (0, 1]."""
    if not 0 < keep <= 1:
        raise ValueError(f"keep is the share of each trial's candidates to pool, in (0, 1]; "
                         f"got {keep}")


def top_by_multiplier(x: torch.Tensor, lam: torch.Tensor, keep: float) -> torch.Tensor:
    """The ``ceil(keep * m)`` of the ``m`` candidates ``x`` with the largest multipliers
    ``lam`` (:func:`multiplier_order`), largest first; all of them, in their order, for
    ``keep`` = 1."""
    if keep >= 1:
        return x
    if lam.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} candidates but {lam.shape[0]} multipliers")
    k = max(1, math.ceil(keep * len(x)))
    return x[multiplier_order(lam)[:k]]


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
    keep: float = 1.0,
) -> PoolResult:
    """Pool the candidates of the best ``k`` complete trials and evaluate them (paper protocol,
    both matchings) beside the best single trial. Reads the saved trial artefacts; re-runs
    nothing. Trials whose artefact is on another machine are listed in ``missing`` (copy
    ``RUN/sweep/<study>/`` from every machine to pool them too). Writes
    ``RUN/sweep/<study>/pool.json`` when ``write``.

    ``rank_by``: rank the trials by one of the scores every trial stores (``"paper_score"``,
    the oracle that uses the training set; ``"kkt_residual"``, from the weights alone)
    instead of by the study's objective; lower is better for both.

    ``keep``: pool only this share of each trial's candidates, those with the largest
    multipliers (:func:`top_by_multiplier`; 1 keeps all). A reconstruction's multipliers are
    its own output, so this reads no training image: at n = 500 the candidates that match a
    training image carry much larger multipliers than those that match generic images of the
    classes (the Results chapter).
    """
    run = Path(run)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if study is None:
        study = load_study(run, study_name, storage=storage)
    if task is None:
        task = load_run(run).task
    sdir = sweep_dir(run) / study.study_name
    check_keep(keep)
    if rank_by is not None and rank_by not in ("paper_score", "kkt_residual"):
        raise ValueError(f"rank_by must be 'paper_score' or 'kkt_residual', got {rank_by!r}")
    complete = sorted((t for t in study.get_trials(deepcopy=False)
                       if t.state.name == "COMPLETE"),
                      key=lambda t: t.value if rank_by is None else t.user_attrs[rank_by])
    chosen, missing, xs = [], [], []
    for t in complete:
        if len(chosen) == k:
            break
        path = trial_path(sdir, t.number)
        if not path.is_file():
            missing.append({"trial": t.number, "worker": t.user_attrs.get("worker")})
            continue
        art = load_trial(path)
        chosen.append(t.number)
        xs.append(top_by_multiplier(art["x"], art["lam"], keep))
    if not chosen:
        raise FileNotFoundError(
            f"no trial artefacts in {sdir} for study {study.study_name!r} "
            f"({len(complete)} complete trials{'; missing: ' + str(missing) if missing else ''})"
        )
    pool = evaluate_both(torch.cat(xs), task.x_train, task.mean)
    best = evaluate_both(xs[0], task.x_train, task.mean)
    res = PoolResult(chosen, pool, best, chosen[0], missing, study.study_name,
                     study.user_attrs.get("objective", ""), torch.cat(xs), keep)
    if write and rank_by is None:
        atomic_write_json(res.to_dict(), sdir / "pool.json")
    return res
