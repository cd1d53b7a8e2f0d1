"""Command line: ``python -m recon train | reconstruct | evaluate | sweep | reproduce``.

Each command reads and writes one run directory::

    RUN/model.pt            trained weights + config + history (recon checkpoint)
    RUN/reconstruction.pt   candidates, multipliers, loss history (resumable)
    RUN/evaluation.json     the paper's protocol under both matchings + the baseline
    RUN/pairs.png           best reconstructions above their matched training images
    RUN/run.json            the run record: task, configs, metrics, wall times, provenance
    RUN/sweep/              `sweep`: optuna.db (Optuna's trial store), NAME/trial-*.pt,
                            NAME/pool.json

Example (about two minutes on two CPU cores)::

    python -m recon train --task mnist --n-per-class 10 --epochs 3000 --lr 0.1 \\
        --weight-decay 0.02 --run runs/mnist-small
    python -m recon reconstruct --run runs/mnist-small --steps 1000
    python -m recon evaluate --run runs/mnist-small

Hyperparameter sweep (its trials kept by Optuna; every process running the same command joins
it; with ``--storage postgresql://user:pass@host/db`` processes on many machines do)::

    python -m recon sweep --run runs/mnist-small --trials 16 --steps 1000

Everything at once, resumable (train, sweep, pool, evaluate; a run card and figures under
``results/reproduce/``)::

    python -m recon reproduce mnist --profile quick
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

from .hardware import default_device

__all__ = ["main"]


def _read_card(run: Path) -> dict:
    from .rundir import read_run_record

    try:
        return read_run_record(run)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e


def _write_card(run: Path, card: dict) -> None:
    from .files import atomic_write_json
    from .provenance import provenance

    card["provenance"] = provenance(card.get("device"))
    atomic_write_json(card, run / "run.json", indent=2)


def _load_run(run: Path):
    """The run directory through :func:`recon.rundir.load_run`: its card, the task as trained
    and the model (its errors reach :func:`main`, which prints them)."""
    from .rundir import load_run

    return load_run(run)


def cmd_train(args) -> None:
    from .data import load_task
    from .kkt import kkt_diagnostic
    from .rundir import task_card
    from .train import TrainConfig, train_task

    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    task = load_task(args.task, args.n_per_class, args.n_test_per_class,
                     skip_per_class=args.skip_per_class)
    config = TrainConfig(
        widths=tuple(int(w) for w in args.widths.split(",")), init_scale=args.init_scale,
        lr=args.lr, weight_decay=args.weight_decay, epochs=args.epochs, dtype=args.dtype,
        seed=args.seed, log_every=args.log_every, matmul=args.matmul,
    )
    res = train_task(task, config, checkpoint=run / "model.pt", device=args.device,
                     checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    diag = kkt_diagnostic(res.model, task.x_train.to(res.model.layers[0].weight),
                          task.y_train.to(res.model.layers[0].weight))
    card = _read_card(run)
    card.update(
        device=args.device,
        task=task_card(task, skip_per_class=args.skip_per_class),
        train={"config": config.to_dict(), "epochs_done": res.epoch, "wall_time_s": res.wall_time,
               "final": res.final()},
        kkt={k: v for k, v in diag.to_dict().items() if k not in ("lam", "margin")},
    )
    _write_card(run, card)
    f = res.final()
    print(f"trained {task.name} n={task.n}: train error {f['train_error']:.3f}, test error "
          f"{f.get('test_error', float('nan')):.3f}, KKT residual unexplained "
          f"{diag.unexplained:.2%} ({res.wall_time:.0f} s) -> {run / 'model.pt'}")


def cmd_reconstruct(args) -> None:
    from .reconstruct import ReconConfig, reconstruct

    run = Path(args.run)
    loaded = _load_run(run)
    card, task, trained = loaded.card, loaded.task, loaded.trained
    base = ReconConfig.paper() if args.preset == "paper" else ReconConfig()
    overrides = {k: v for k, v in {
        "n_candidates": args.candidates or 2 * task.n, "steps": args.steps, "lr_x": args.lr_x,
        "lr_lambda": args.lr_lambda, "init_scale": args.init_scale,
        "lambda_min": args.lambda_min, "alpha": args.alpha, "optimizer": args.optimizer,
        "box": args.box, "seed": args.seed, "dtype": args.dtype, "tv": args.tv,
        "two_tone": args.two_tone, "refine_share": args.refine_share,
        "refine_tol": args.refine_tol,
        "subspace_tol": args.subspace_tol, "matmul": args.matmul,
        "all_classes": args.all_classes or None}.items()
        if v is not None}
    config = ReconConfig(**{**base.to_dict(), **overrides})
    steps = config.steps
    snaps = tuple(sorted({0, steps // 10, steps // 4, steps // 2, steps}))
    res = reconstruct(trained.model, config, mean=task.mean, snapshot_steps=snaps,
                      checkpoint=run / "reconstruction.pt", device=args.device,
                      checkpoint_every=args.checkpoint_every, progress=not args.quiet)
    card["reconstruct"] = {"config": config.to_dict(), "steps_done": res.step,
                           "wall_time_s": res.wall_time, "final": res.final()}
    card.setdefault("device", args.device)
    _write_card(run, card)
    print(f"reconstructed {config.n_candidates} candidates in {res.wall_time:.0f} s; "
          f"stationarity unexplained {res.final()['stat_rel']:.2%} "
          f"-> {run / 'reconstruction.pt'}")


def cmd_evaluate(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from .evaluate import evaluate_both, first_layer_candidates
    from .plots import plot_pairs, set_style
    from .reconstruct import load_reconstruction

    run = Path(args.run)
    loaded = _load_run(run)
    card, task, trained = loaded.card, loaded.task, loaded.trained
    if not (run / "reconstruction.pt").is_file():
        raise SystemExit(f"error: no reconstruction in {run}; run `python -m recon reconstruct "
                         f"--run {run}` first")
    rec, _ = load_reconstruction(run / "reconstruction.pt")
    evs = evaluate_both(rec.x, task.x_train, task.mean)
    w = trained.model.layers[0].weight.detach().float()
    base = evaluate_both(first_layer_candidates(w, task.image_shape,
                                                max_abs=float(task.x_train.abs().max())),
                         task.x_train, task.mean)
    result = {name: ev.to_dict() for name, ev in evs.items()}
    result["baseline_first_layer"] = {name: {"counts": ev.counts()} for name, ev in base.items()}
    (run / "evaluation.json").write_text(json.dumps(result, indent=2) + "\n")
    set_style()
    for name, fname in (("one_to_one", "pairs.png"), ("paper", "pairs_paper_matching.png")):
        ev = evs[name]
        fig = plot_pairs(ev.recon, ev.original, ev.ssim.tolist(), max_pairs=args.max_pairs,
                         title=f"{task.name}: best reconstructions, {name.replace('_', '-')} "
                               f"matching")
        fig.savefig(run / fname)
    card["evaluate"] = {name: {"counts": r["counts"], "mean_ssim_top10": r["mean_ssim_top10"]}
                        for name, r in result.items() if name != "baseline_first_layer"}
    card["evaluate"]["baseline_first_layer"] = result["baseline_first_layer"]
    _write_card(run, card)
    for name, ev in evs.items():
        print(f"{name:>10}: {ev.counts()}")
    print(f"  baseline: {base['one_to_one'].counts()} (first-layer weight rows, one-to-one)")
    print(f"figures: {run / 'pairs.png'}, {run / 'pairs_paper_matching.png'}")


def cmd_sweep(args) -> None:
    from .files import file_lock
    from .reconstruct import ReconConfig
    from .sweep import pool_trials, run_study, search_space

    run = Path(args.run)
    loaded = _load_run(run)
    card, task = loaded.card, loaded.task
    if args.threads:
        torch.set_num_threads(args.threads)
    base = ReconConfig.paper() if args.preset == "paper" else ReconConfig()
    overrides = {k: v for k, v in {
        "n_candidates": args.candidates or 2 * task.n, "steps": args.steps,
        "lr_lambda": args.lr_lambda, "optimizer": args.optimizer, "box": args.box,
        "seed": args.seed, "dtype": args.dtype, "matmul": args.matmul}.items()
        if v is not None}
    base = ReconConfig(**{**base.to_dict(), **overrides})
    storage = args.storage or os.environ.get("RECON_SWEEP_STORAGE") or None
    try:
        summary = run_study(
            run, args.trials, base=base, objective=args.objective,
            space=search_space(args.space), storage=storage, study_name=args.study_name,
            pruner=args.pruner, report_every=args.report_every, sampler=args.sampler,
            sampler_seed=args.sampler_seed, timeout=args.timeout, wait=not args.no_wait,
            heartbeat_interval=args.heartbeat or None, grace_period=args.grace,
            device=args.device, progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted: the running trial is marked failed, finished trials are kept; "
              "run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    pool = None
    if args.pool_top > 0 and summary.get("best"):
        res = pool_trials(run, args.pool_top, study_name=summary["study_name"],
                          storage=storage, task=task)
        pool = {"trials": res.trials, "missing": res.missing, **res.counts(),
                "file": str(run / "sweep" / summary["study_name"] / "pool.json")}
        summary["pool"] = pool
    with file_lock(run / "sweep" / ".run.json.lock"):  # several workers may finish at once
        card = _read_card(run)
        card.setdefault("sweep", {})[summary["study_name"]] = summary
        _write_card(run, card)
    st = summary["states"]
    print(f"study {summary['study_name']}: {st.get('COMPLETE', 0)} complete, "
          f"{st.get('PRUNED', 0)} pruned ({summary['n_diverged']} diverged), "
          f"{st.get('FAIL', 0)} failed, {st.get('RUNNING', 0)} running")
    if summary.get("best"):
        b = summary["best"]
        print(f"best trial {b['number']}: {args.objective} {b['value']:.4g}, params "
              + ", ".join(f"{k}={v:.3g}" for k, v in b["params"].items()))
    if pool:
        for who in ("best_trial", "pool"):
            c = pool[who]
            print(f"{who:>10}: SSIM>0.4 {c['paper']['ssim>0.4']} (paper matching), "
                  f"{c['one_to_one']['ssim>0.4']} (one-to-one); NCC>0.9 "
                  f"{c['one_to_one']['ncc>0.9']} (one-to-one)")
        print(f"pool of trials {pool['trials']} -> {pool['file']}")


def cmd_reproduce(args) -> None:
    import matplotlib

    matplotlib.use("Agg")  # figures go to files; the library leaves the caller's backend alone
    from .reproduce import reproduce

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        reproduce(args.task, args.profile, args.out, n_per_class=args.n_per_class,
                  epochs=args.epochs, weight_decay=args.weight_decay, trials=args.trials,
                  pool=args.pool, keep=args.keep, skip_per_class=args.skip_per_class,
                  candidates_per_image=args.candidates_per_image,
                  steps=args.steps, objective=args.objective, space=args.space,
                  tv=args.tv, matmul=args.matmul, device=args.device,
                  progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted: finished stages and sweep trials are kept; run the same command "
              "again to resume", file=sys.stderr)
        raise SystemExit(130) from None


def cmd_study(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from .study import run_study_spec

    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        rows = run_study_spec(args.spec, args.out, only=args.only, dry_run=args.list,
                              device=args.device, progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted: finished points keep their cards, and the point in progress its "
              "stages; run the same command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    done = sum(r["done"] for r in rows)
    for r in rows:
        print(f"{'done' if r['done'] else 'todo'}  {r['point']}  ({', '.join(r['axes'])})")
    print(f"[study] {done} of {len(rows)} points have a complete card")


def cmd_audit(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from .audit import audit

    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.input_shape.split(",")) if args.input_shape else None
    mean = args.mean
    if mean is not None:
        try:
            mean = float(mean)
        except ValueError:
            pass  # a file
    try:
        report = audit(args.model, out=args.out, train=args.train_data, test=args.test_data,
                       mean=mean, input_shape=shape, budget=args.budget,
                       candidates=args.candidates, max_runs=args.max_runs, steps=args.steps,
                       seed=args.seed, device=args.device, progress=not args.quiet)
    except KeyboardInterrupt:
        print("interrupted: finished runs and the run in progress are kept; run the same "
              "command again to resume", file=sys.stderr)
        raise SystemExit(130) from None
    print(report["verdict"]["headline"])


TASK_CHOICES = ("mnist", "cifar10", "mnist-multiclass", "cifar10-multiclass")

MATMUL_HELP = ("precision of the matrix products: auto (bfloat16 on CPUs with AMX / AVX-512 "
               "BF16 and on Ampere or newer GPUs, else full), full, bfloat16, float16")


class _FMT(argparse.HelpFormatter):
    """Every option's help shows its default, unless it says it already or has none."""

    def _get_help_string(self, action):
        h = action.help or ""
        if ("default" in h or action.default in (None, argparse.SUPPRESS) or action.required
                or action.nargs == 0):
            return h
        return f"{h} (default: %(default)s)"


def build_parser() -> argparse.ArgumentParser:
    from .hardware import PRECISIONS
    from .reconstruct import ReconConfig
    from .train import TrainConfig

    cpu, paper = ReconConfig(), ReconConfig.paper()

    def preset(field: str, text: str) -> str:
        return (f"{text} (default: the preset's, cpu {getattr(cpu, field)}, "
                f"paper {getattr(paper, field)})")

    p = argparse.ArgumentParser(prog="python -m recon", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", formatter_class=_FMT, help="train the paper's MLP on a binary task")
    t.add_argument("--run", required=True, help="run directory to write")
    t.add_argument("--task", choices=TASK_CHOICES, default="mnist",
                   help="the paper's binary task")
    t.add_argument("--n-per-class", type=int, default=250,
                   help="training images per class (paper: 250, n = 500)")
    t.add_argument("--n-test-per-class", type=int, default=500,
                   help="test images per class")
    t.add_argument("--skip-per-class", type=int, default=0,
                   help="train on the images after the first K of each class: a shadow "
                        "model on images disjoint from the paper's")
    t.add_argument("--widths", default="1000,1000", help="hidden widths, comma separated")
    t.add_argument("--init-scale", type=float, default=1e-4,
                   help="std of the first layer's initial weights")
    t.add_argument("--lr", type=float, default=0.01, help="learning rate")
    t.add_argument("--weight-decay", type=float, default=0.0, help="weight decay (paper: 0)")
    t.add_argument("--epochs", type=int, default=10_000, help="training epochs (paper: 1000000)")
    t.add_argument("--dtype", choices=("float32", "float64"), default="float64",
                   help="parameter dtype")
    t.add_argument("--seed", type=int, default=0, help="initialisation seed")
    t.add_argument("--matmul", choices=PRECISIONS, default=TrainConfig().matmul,
                   help=MATMUL_HELP)
    t.add_argument("--log-every", type=int, default=100, help="epochs between logged metrics")
    t.add_argument("--checkpoint-every", type=int, default=1000,
                   help="epochs between checkpoints (a rerun resumes from the last)")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("reconstruct", formatter_class=_FMT,
                       help="reconstruct training images from the weights")
    r.add_argument("--run", required=True, help="run directory with model.pt")
    r.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                   help="cpu: Adam + valid box (measured to work on a CPU budget); "
                        "paper: SGD momentum, [-1,1] box, 50000 steps")
    r.add_argument("--candidates", type=int, help="number of candidates m (default 2n)")
    r.add_argument("--steps", type=int, help=preset("steps", "optimisation steps"))
    r.add_argument("--lr-x", type=float, help=preset("lr_x", "learning rate of the candidates"))
    r.add_argument("--lr-lambda", type=float,
                   help=preset("lr_lambda", "learning rate of the multipliers"))
    r.add_argument("--init-scale", type=float,
                   help=preset("init_scale", "std of the candidates' random start"))
    r.add_argument("--lambda-min", type=float,
                   help=preset("lambda_min", "floor of the multipliers (1/m convention)"))
    r.add_argument("--alpha", type=float,
                   help=preset("alpha", "steepness of the ReLU's soft backward"))
    r.add_argument("--optimizer", choices=("adam", "sgd"), help=preset("optimizer", "optimiser"))
    r.add_argument("--box", choices=("valid", "paper"),
                   help=preset("box", "pixel box: the valid range, or the paper's [-1, 1]"))
    r.add_argument("--dtype", choices=("float32", "float64"),
                   help=preset("dtype", "dtype of the candidates"))
    r.add_argument("--seed", type=int, help=preset("seed", "seed of the random start"))
    r.add_argument("--tv", type=float, help=preset(
        "tv", "weight of a total-variation image prior, relative to ||theta||^2 (0: off)"))
    r.add_argument("--two-tone", type=float, help=preset(
        "two_tone", "weight of the two-tone prior p(1 - p) on pixel values, relative to "
        "||theta||^2, for ink-on-paper data such as digits (0: off)"))
    r.add_argument("--refine-share", type=float, help=preset(
        "refine_share", "share of the last steps run in the wider row space of "
        "--refine-tol (0: off)"))
    r.add_argument("--refine-tol", type=float, help=preset(
        "refine_tol", "the row space's cut-off during the refinement (below --subspace-tol)"))
    r.add_argument("--subspace-tol", type=float, help=preset(
        "subspace_tol", "keep candidates in the first layer's row space (singular values "
        "above this times the largest; 0: off, needed for a frozen first layer)"))
    r.add_argument("--matmul", choices=PRECISIONS, help=MATMUL_HELP)
    r.add_argument("--all-classes", action="store_true",
                   help="ten-class models: a multiplier for every wrong class of a candidate "
                        "(the exact equation under cross-entropy with weight decay) instead "
                        "of one against its highest wrong class")
    r.add_argument("--checkpoint-every", type=int, default=500,
                   help="steps between checkpoints (a rerun resumes from the last)")
    r.set_defaults(func=cmd_reconstruct)

    e = sub.add_parser("evaluate", formatter_class=_FMT,
                       help="match candidates to the training set, SSIM, figures")
    e.add_argument("--run", required=True, help="run directory with a reconstruction")
    e.add_argument("--max-pairs", type=int, default=40, help="pairs shown in the figures")
    e.set_defaults(func=cmd_evaluate)

    w = sub.add_parser(
        "sweep", formatter_class=_FMT,
        help="hyperparameter sweep of the reconstruction (Optuna), pooled candidates",
        description="Run, join or resume the Optuna study of RUN's model until it holds "
                    "--trials finished trials, then pool the best trials' candidates. Several "
                    "processes running the same command share the study: by default through "
                    "RUN/sweep/optuna.db (one machine), with --storage postgresql://... across "
                    "machines (each with a copy of RUN/model.pt and RUN/run.json).")
    w.add_argument("--run", required=True, help="run directory with model.pt")
    w.add_argument("--trials", type=int, required=True,
                   help="finished trials the study should hold, over all workers (0: only "
                        "summarise and pool)")
    w.add_argument("--storage", help="database URL shared by workers, e.g. "
                                     "postgresql://user:pass@host/db (default: "
                                     "$RECON_SWEEP_STORAGE, else the sqlite file "
                                     "RUN/sweep/optuna.db)")
    w.add_argument("--study-name", help="default: <task>-n<n>-<weights hash>-<objective>")
    w.add_argument("--objective", choices=("kkt", "agreement", "oracle"), default="kkt",
                   help="what ranks the trials. kkt: stationarity residual with the exact "
                        "ReLU; agreement: two seeds' candidates against each other (both read "
                        "the weights alone, as an attacker can); oracle: the paper's score, "
                        "mean of the 10 best one-to-one distances to the training images")
    w.add_argument("--space", choices=("paper", "cpu", "seeds"), default="paper",
                   help="paper: the paper's ranges; cpu: narrower, around the Adam recipe; "
                        "seeds: nothing searched, one seed per trial")
    w.add_argument("--preset", choices=("cpu", "paper"), default="cpu",
                   help="fixed settings of every trial, as in `reconstruct`")
    w.add_argument("--steps", type=int, help=preset("steps", "steps per trial"))
    w.add_argument("--candidates", type=int, help="number of candidates m (default 2n)")
    w.add_argument("--lr-lambda", type=float,
                   help=preset("lr_lambda", "learning rate of the multipliers"))
    w.add_argument("--optimizer", choices=("adam", "sgd"), help=preset("optimizer", "optimiser"))
    w.add_argument("--box", choices=("valid", "paper"), help=preset("box", "pixel box"))
    w.add_argument("--dtype", choices=("float32", "float64"),
                   help=preset("dtype", "dtype of the candidates"))
    w.add_argument("--seed", type=int, help="trial t uses seed + t")
    w.add_argument("--matmul", choices=PRECISIONS, help=MATMUL_HELP)
    w.add_argument("--pruner", choices=("median", "hyperband", "none"), default=None,
                   help="default: median, or none when --space searches nothing (seeds)")
    w.add_argument("--report-every", type=int, help="steps between intermediate values "
                                                    "(default steps/10)")
    w.add_argument("--sampler", choices=("tpe", "random"), default="tpe",
                   help="random: the paper's random search")
    w.add_argument("--sampler-seed", type=int,
                   help="seed of the sampler (one worker: reproducible)")
    w.add_argument("--pool-top", type=int, default=5,
                   help="pool the candidates of the best K trials (0: no pooling)")
    w.add_argument("--timeout", type=float, help="seconds after which this worker starts no "
                                                 "new trial")
    w.add_argument("--no-wait", action="store_true",
                   help="return when the remaining trials run elsewhere, do not wait for them")
    w.add_argument("--heartbeat", type=int, default=10,
                   help="seconds between heartbeats (0: none)")
    w.add_argument("--grace", type=int, default=40,
                   help="a trial without heartbeat for this long is failed and run again")
    w.add_argument("--threads", type=int, help="torch CPU threads of this worker")
    w.set_defaults(func=cmd_sweep)

    rp = sub.add_parser("reproduce", formatter_class=_FMT,
                        help="the paper's experiment end to end: train, sweep, pool, evaluate; "
                             "writes a run card and figures")
    rp.add_argument("task", choices=TASK_CHOICES,
                    help="the paper's binary task, or its ten-class version (-multiclass)")
    rp.add_argument("--profile", choices=("quick", "full", "paper"), default="quick",
                    help="quick: minutes on a laptop CPU; full: n = 500 with the best "
                         "measured recipe (a GPU, or hours of CPU); paper: the paper's own "
                         "recipe (10^6 epochs, 50,000 SGD steps; a GPU)")
    rp.add_argument("--out", help="run directory (default results/reproduce/TASK-PROFILE-nN)")
    rp.add_argument("--n-per-class", type=int, help="override the profile's training-set size")
    rp.add_argument("--epochs", type=int, help="override the profile's training epochs")
    rp.add_argument("--weight-decay", type=float, help="override the profile's weight decay")
    rp.add_argument("--trials", type=int, help="reconstruction runs in the sweep")
    rp.add_argument("--pool", type=int, help="pool the candidates of the best K trials")
    rp.add_argument("--keep", type=float,
                    help="pool only this share of each trial's candidates, those with the "
                         "largest multipliers (default: the profile's; 1 = all)")
    rp.add_argument("--candidates-per-image", type=int, metavar="K",
                    help="candidates of each reconstruction run, m = K n (default: the "
                         "profile's; the paper's is 2)")
    rp.add_argument("--skip-per-class", type=int, default=0,
                    help="a shadow model: train on the images after the first K of each class "
                         "(card under results/shadow/ by default)")
    rp.add_argument("--steps", type=int, help="reconstruction steps per trial")
    rp.add_argument("--tv", type=float, help="override the profile's total-variation prior weight")
    rp.add_argument("--objective", choices=("kkt", "agreement", "oracle"),
                    help="what ranks the sweep's trials (default kkt, from the weights alone; "
                         "the paper profile: oracle, the paper's score, which reads the "
                         "training images)")
    rp.add_argument("--space", choices=("paper", "cpu", "seeds"),
                    help="sweep search space (seeds: the recipe itself, one seed per trial)")
    rp.add_argument("--matmul", choices=PRECISIONS,
                    help=MATMUL_HELP + " (training and reconstruction)")
    rp.add_argument("--threads", type=int, help="torch CPU threads")
    rp.set_defaults(func=cmd_reproduce)

    st = sub.add_parser("study", formatter_class=_FMT,
                        help="a grid of reproduce runs from a JSON spec, one run card per "
                             "point; points with a complete card are skipped")
    st.add_argument("spec", help="study spec (JSON; see recon.study), e.g. studies/leakage.json")
    st.add_argument("--out", default="results/study",
                    help="where the study's folder of cards goes")
    st.add_argument("--only", help="run only the points whose name contains this text")
    st.add_argument("--list", action="store_true",
                    help="list the points and which are done; run nothing")
    st.add_argument("--threads", type=int, help="torch CPU threads")
    st.set_defaults(func=cmd_study)

    au = sub.add_parser(
        "audit", formatter_class=_FMT,
        help="test a model you trained with your own code for this leak: attack it from its "
             "weights alone and write a report (OUT/index.html, OUT/audit.json)")
    au.add_argument("--model", required=True,
                    help="weights file: a state_dict saved with torch.save (.pt, .pth; read "
                         "with weights_only) or a .safetensors file")
    au.add_argument("--out", default="audit", help="report folder (rerun to resume)")
    au.add_argument("--train-data",
                    help="training samples as the model saw them, used only to score the "
                         "attack afterwards: .npz with arrays x and y, a tensor file "
                         "{'x', 'y'}, or a folder of images with one subfolder per class")
    au.add_argument("--test-data", help="held-out samples in the same format: the control")
    au.add_argument("--mean",
                    help="the mean the model's inputs had subtracted (images in [0, 1] "
                         "before it): a file, or 0 for images fed as they are. Without it the "
                         "attack does not know the valid pixel range, and the report says so")
    au.add_argument("--input-shape", help="one input's shape, e.g. 1,28,28 (default: from "
                                          "--train-data, else a flat vector)")
    au.add_argument("--budget", default="5m", help="compute time for the attack: 90s, 5m, 1h")
    au.add_argument("--candidates", type=int,
                    help="number of candidates (default: twice the first layer's rank)")
    au.add_argument("--steps", type=int, help="steps per run (default: 3,000 or what fits)")
    au.add_argument("--max-runs", type=int, default=8, help="most independent runs to pool")
    au.add_argument("--seed", type=int, default=0, help="seed of the first run")
    au.add_argument("--threads", type=int, help="torch CPU threads")
    au.set_defaults(func=cmd_audit)

    for s in (t, r, w, rp, st, au):
        s.add_argument("--device", default=default_device(), help="torch device")
    for s in (t, r, e, w, rp, st, au):
        s.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    from .data import DataUnavailableError
    from .models import UnsupportedModelError
    from .train import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (DataUnavailableError, CheckpointError, UnsupportedModelError, FileNotFoundError,
            ValueError, FloatingPointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
