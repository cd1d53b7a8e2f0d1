"""Ablations of the reconstruction on trained models: one setting changed, the same seeds.

For each trained model (a run directory of ``python -m recon reproduce`` or ``python -m recon
train``, read by :func:`recon.rundir.load_run`: the model and the task it was trained on, a
shadow model's images and a noisy-label run's labels included), run the library's default
reconstruction (``ReconConfig()``, m = 2n) under each variant of an ablation, from the same
seeds, and count the training images recovered under the paper's protocol and one-to-one
matching. Everything else is identical, so a difference is the variant's alone.

Ablations (the first argument):

* ``subspace``: candidates kept in the first layer's row space (the default) or not
  (``subspace_tol=0``);
* ``precision``: the matrix products of every step in the working precision (``matmul="full"``)
  or in bfloat16, or bfloat16 for the first three quarters of the steps and full precision for
  the last quarter (``finish_full=0.25``). With ``--control`` it also runs the positive
  control in each precision: started at the true training images with their KKT multipliers
  (m = n), how many stay recovered (one-to-one NCC > 0.9), and where the residual ends;
* ``custom``: variants given on the command line, ``--variant NAME:key=value,key=value``
  (fields of ``ReconConfig``; ``m_per_n=4`` sets ``n_candidates = 4n``; ``keep=0.25`` counts
  only the quarter of each run's candidates with the largest multipliers, as a card's pool
  does (``config.sweep.keep``), at the end and at every snapshot; ``first_layer=1``
  runs no reconstruction and evaluates the paper's baseline instead, the rows of the first
  layer's weights as candidates, both signs, :func:`recon.evaluate.first_layer_candidates`).

    python benchmarks/ablation.py subspace results/reproduce/mnist-quick-n50 \\
        results/reproduce/cifar10-quick-n20 --seeds 0 1 2
    python benchmarks/ablation.py precision RUN... --seeds 0 1 2 --control
    python benchmarks/ablation.py custom RUN --variant "10k steps:steps=10000" \
        --variant "m=4n:m_per_n=4" --out results/ablation/mnist-n500.json

Results go to ``results/ablation/ABLATION.json``. Finished (run, variant, seed) entries are
kept and skipped when the command is run again, so an interrupted ablation resumes. Each entry
records ``rank``: the dimension of the first layer's row space that its own variant keeps
(``subspace_tol``; ``None`` without a subspace).

With ``--trajectory K`` each run also keeps ``K`` snapshots (log-spaced steps) and records, at
each, the wall time so far (the run's time per step times the step) and the one-to-one NCC
counts against the training and the held-out images: images recovered against reconstruction
time, the curve of ``benchmarks/time_to_recovery.py``.

The held-out control matches the same candidates one-to-one to n test images of the task, the
first n/2 of each class (:func:`recon.rundir.held_out`).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

# the library of this checkout (and its revision in the results), not whichever is installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from recon.evaluate import evaluate, evaluate_both, first_layer_candidates
from recon.kkt import kkt_diagnostic
from recon.provenance import provenance
from recon.reconstruct import ADDED_FIELDS, ReconConfig, first_layer_basis, reconstruct
from recon.rundir import held_out, load_run
from recon.stationarity import Stationarity
from recon.sweep import check_keep, top_by_multiplier

ABLATIONS = {
    "custom": {},
    "subspace": {"subspace": {}, "no subspace": {"subspace_tol": 0.0}},
    "precision": {"full": {"matmul": "full"}, "bfloat16": {"matmul": "bfloat16"},
                  "bfloat16, full to finish": {"matmul": "bfloat16", "finish_full": 0.25}},
}


def _save(out: Path, payload: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out)


def recipe_steps(run) -> int | None:
    """The reconstruction steps of the run's recipe (a ``reproduce`` directory's card), or
    ``None`` (a ``train`` directory)."""
    card = run.reproduce_card()
    return (card or {}).get("config", {}).get("recon_base", {}).get("steps")


def rank_kept(model, tol: float) -> int | None:
    """The dimension of the first layer's row space kept at cut-off ``tol`` (as the
    reconstruction keeps it); ``None`` when ``tol`` is 0 (no subspace)."""
    return first_layer_basis(model, tol).shape[1] if tol > 0 else None


def parse_overrides(items) -> dict:
    """``["key=value", ...]`` as ``{key: value}``, each value an int, else a float, else the
    text (fields of :class:`recon.reconstruct.ReconConfig`); empty items are skipped."""
    over = {}
    for item in filter(None, items):
        key, _, value = item.partition("=")
        for cast in (int, float):
            try:
                value = cast(value)
                break
            except ValueError:
                pass
        over[key.strip()] = value
    return over


def _parse_variants(specs: list[str]) -> dict[str, dict]:
    if not specs:
        raise SystemExit("error: the custom ablation needs at least one --variant NAME:key=value")
    out = {}
    for spec in specs:
        name, _, body = spec.partition(":")
        out[name] = parse_overrides(body.split(","))
    return out


def _config(task, steps: int, seed: int, over: dict) -> ReconConfig:
    over = dict(over)
    over.pop("keep", None)  # a selection after the run, not a field of the run
    m = int(over.pop("m_per_n", 2) * task.n)
    return ReconConfig(**{"n_candidates": m, "steps": steps, "seed": seed, **over})


def _counts(x, task) -> dict:
    """Counts under both matchings, and the held-out control: the same candidates matched
    one-to-one to n test images of the task, which the model never saw."""
    out = {m: e.counts() for m, e in evaluate_both(x, task.x_train, task.mean).items()}
    out["test_control"] = evaluate(x, held_out(task), task.mean,
                                   matching="one_to_one").counts()
    return out


def _stat_rel_f64(model, res) -> float:
    """The run's final stationarity fraction recomputed in float64 (a bfloat16 run logs the
    value its own products give)."""
    st = Stationarity(copy.deepcopy(model).double(), None, alpha=res.config.alpha,
                      dtype=torch.float64)
    stat, _, _ = st(res.x.double().flatten(1), res.lam.double(), res.y.double())
    return stat.item() / st.theta2


def snapshot_steps(steps: int, k: int) -> tuple[int, ...]:
    """``k`` log-spaced steps from 10 to ``steps`` (``steps`` included), none twice."""
    if k <= 0 or steps <= 0:
        return ()
    lo = min(10, steps)
    grid = torch.logspace(torch.log10(torch.tensor(float(lo))),
                          torch.log10(torch.tensor(float(steps))), k)
    return tuple(sorted({int(round(float(v))) for v in grid} | {steps}))


def _check_same(entry: dict, cfg: ReconConfig, keep: float, out: Path) -> None:
    """A finished entry is kept on resuming only if it ran the recipe asked for now: the same
    variant name with another recipe (a card's changed profile, an edited ``--variant``) would
    otherwise be skipped, and the file would report the old recipe under the new name."""
    before = {**ADDED_FIELDS, **entry.get("config", {})}
    now = cfg.to_dict()
    changed = sorted(k for k in now if k != "log_every" and before.get(k) != now[k])
    if entry.get("keep", 1.0) != keep:
        changed.append("keep")
    if changed:
        raise SystemExit(
            f"error: {out} already holds {entry['run']}, {entry['variant']!r}, seed "
            f"{entry['seed']}, run with another recipe (it differs in {', '.join(changed)}); "
            "write to another --out, or delete that file to run it again")


def trajectory(res, task, keep: float = 1.0) -> list[dict]:
    """One-to-one NCC counts of every snapshot of ``res`` against the training images and the
    held-out control, with the wall time at that step (steady state: time per step x step);
    with ``keep`` < 1, of the share of the snapshot's candidates with the largest multipliers
    at that step."""
    per_step = res.wall_time / max(res.step, 1)
    test = held_out(task)
    out = []
    for step, x in sorted(res.snapshots.items()):
        x = top_by_multiplier(x, res.snapshot_lam[step], keep)
        tr = evaluate(x, task.x_train, task.mean, matching="one_to_one")
        te = evaluate(x, test, task.mean, matching="one_to_one")
        out.append({"step": step, "time_s": per_step * step,
                    "train_ncc>0.9": tr.count(ncc_above=0.9),
                    "train_ncc>0.8": tr.count(ncc_above=0.8),
                    "test_ncc>0.9": te.count(ncc_above=0.9),
                    "test_ncc>0.8": te.count(ncc_above=0.8)})
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ablation", choices=sorted(ABLATIONS))
    ap.add_argument("runs", nargs="+", type=Path, help="trained run directories")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, help="reconstruction steps (default: the card's, "
                                              "else the library's default)")
    ap.add_argument("--variant", action="append", default=[],
                    help="custom ablation: NAME:key=value,key=value (repeatable)")
    ap.add_argument("--control", action="store_true",
                    help="also run the positive control (start at the training set)")
    ap.add_argument("--out", help="default results/ablation/ABLATION.json")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--trajectory", type=int, default=0, metavar="K",
                    help="keep K log-spaced snapshots per run and count at each")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out or f"results/ablation/{args.ablation}.json")
    variants = (ABLATIONS[args.ablation] if args.ablation != "custom"
                else _parse_variants(args.variant))
    payload = json.loads(out.read_text()) if out.is_file() else {
        "format": "recon-ablation/1", "what": f"{args.ablation}: {' vs '.join(variants)}, "
                                              "same seeds", "entries": []}
    done = {(e["run"], e["variant"], e["seed"]): e for e in payload["entries"]}

    def record(entry: dict) -> None:
        payload["entries"].append(entry)
        payload["provenance"] = provenance(torch.device("cpu"))
        _save(out, payload)
        c = entry["counts"]["one_to_one"]
        print(f"{entry['run']:24s} {entry['variant']:18s} seed {entry['seed']}: NCC>0.9 "
              f"{c['ncc>0.9']:3d}  NCC>0.8 {c['ncc>0.8']:3d}  SSIM>0.4 {c['ssim>0.4']:3d}  "
              f"stat_rel {entry['stat_rel'] or float('nan'):.2e} "
              f"({entry['wall_time_s']:.0f} s)", flush=True)

    for run_dir in args.runs:
        run = load_run(run_dir)
        task, model = run.task, run.model
        steps = args.steps or recipe_steps(run) or ReconConfig().steps
        card = run.reproduce_card() or {}
        common = {"run": run.name, "task": task.name, "n": task.n, "steps": steps,
                  "train_matmul": run.trained.config.matmul,
                  # the share of ||theta||^2 the true training set leaves unexplained
                  "kkt_unexplained": card.get("train", {}).get("kkt_unexplained")}
        for variant, over in variants.items():
            if over.get("first_layer"):  # the baseline: W1's rows, no search, no seed
                if (run.name, variant, 0) not in done:
                    t0 = time.perf_counter()
                    x = first_layer_candidates(model.layers[0].weight.float().cpu(),
                                               task.x_train.shape[1:],
                                               max_abs=task.x_train.abs().max(),
                                               both_signs=True)
                    record({**common, "rank": None, "variant": variant, "seed": 0,
                            "config": {"first_layer": True, "both_signs": True},
                            "stat_rel": None, "stat_rel_f64": None,
                            "wall_time_s": time.perf_counter() - t0,
                            "counts": _counts(x, task)})
                continue
            for seed in args.seeds:
                cfg = _config(task, steps, seed, over)
                keep = float(over.get("keep", 1.0))
                check_keep(keep)  # before the run, not after it
                if (run.name, variant, seed) in done:
                    _check_same(done[run.name, variant, seed], cfg, keep, out)
                    continue
                t0 = time.perf_counter()
                res = reconstruct(model, cfg, mean=task.mean, progress=False,
                                  snapshot_steps=snapshot_steps(cfg.steps, args.trajectory))
                extra = {"trajectory": trajectory(res, task, keep)} if args.trajectory else {}
                record({**common, **extra, "rank": rank_kept(model, cfg.subspace_tol),
                        "variant": variant, "seed": seed, "config": cfg.to_dict(),
                        "keep": keep,
                        "stat_rel": res.history["stat_rel"][-1],
                        "stat_rel_f64": _stat_rel_f64(model, res),
                        "wall_time_s": time.perf_counter() - t0,
                        "counts": _counts(top_by_multiplier(res.x, res.lam, keep), task)})
            if not args.control or (run.name, f"control {variant}", 0) in done:
                continue
            # positive control: the true images with their KKT multipliers (m = n)
            x, y = task.x_train.to(model.layers[0].weight), task.y_train
            diag = kkt_diagnostic(model, x, y.to(x))
            cfg = _config(task, steps, 0, {**over, "m_per_n": 1})
            t0 = time.perf_counter()
            res = reconstruct(model, cfg, mean=task.mean, x_init=task.x_train,
                              lam_init=task.n * diag.lam, y=y, progress=False)
            record({**common, "rank": rank_kept(model, cfg.subspace_tol),
                    "variant": f"control {variant}", "seed": 0,
                    "config": cfg.to_dict(), "stat_rel_start": res.history["stat_rel"][0],
                    "stat_rel": res.history["stat_rel"][-1],
                    "stat_rel_f64": _stat_rel_f64(model, res), "kkt_unexplained": diag.unexplained,
                    "wall_time_s": time.perf_counter() - t0, "counts": _counts(res.x, task)})


if __name__ == "__main__":
    main()
