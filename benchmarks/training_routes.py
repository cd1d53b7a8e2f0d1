"""How fast does training reach the KKT regime? The KKT residual against epochs, per route.

For each training route (a :class:`recon.train.TrainConfig`) this trains the paper's MLP on a
real task and, at roughly log-spaced epochs, solves for the best non-negative multipliers at
the TRUE training set (:func:`recon.kkt.kkt_diagnostic`). The unexplained fraction of
``||theta||^2`` is the part of the weights that the stationarity equation cannot account for,
even with the training images given: the floor under any reconstruction.

Routes (``--routes``, default all):

* ``paper``: the paper's recipe (first-layer init 1e-4, PyTorch's default init in the deeper
  layers, lr 0.01, no weight decay), in float32 (the paper trains in float64, about 2.5x slower
  here; float32 keeps a long run feasible on a CPU).
* ``paper_lr0.1``: the same with a 10x larger learning rate.
* ``weight_decay``: lr 0.1, weight decay 2e-2: the quick profile's route.
* ``small_init``: no weight decay, but the deeper layers start at scale 1e-3 instead of
  PyTorch's default (whose 1000x1000 layer alone has ``||W2||^2 ~ 333``), lr 0.1.
* ``wd_1e-2``, ``wd_5e-3``: lr 0.1 with weight decay 1e-2 or 5e-3, for n = 500 (where 2e-2
  is too strong to fit every training image).

Every route checkpoints to ``OUT/<route>/model.pt`` and resumes; a longer ``--epochs`` extends
a finished run. ``OUT/<route>/`` is a run directory like one of ``python -m recon train``
(``model.pt`` and ``run.json``, whose task entry :func:`recon.rundir.task_card` writes), so
:func:`recon.rundir.load_run`, the sweep and the ablation scripts read it as any other.
Results: ``OUT/<route>.json`` (config, history with ``kkt_epoch`` / ``kkt_unexplained``, wall
time, provenance) and ``OUT/training_routes.png``.

Usage::

    python benchmarks/training_routes.py --task mnist --n-per-class 25 \\
        --out results/training_routes/mnist-n50 --epochs paper=150000,weight_decay=3000
    # the full profile's route (wd_1e-2) trained on to 24,000 epochs on a shadow's images,
    # the residual logged at the profile's 6,000 epochs too
    python benchmarks/training_routes.py --task cifar10 --n-per-class 250 \\
        --skip-per-class 250 --routes wd_1e-2 --epochs wd_1e-2=24000 --kkt-at 6000,12000 \\
        --out results/training_routes/cifar10-n500-shadow
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROUTES = {
    "paper": dict(lr=0.01, weight_decay=0.0, init_scale=1e-4),
    "paper_lr0.1": dict(lr=0.1, weight_decay=0.0, init_scale=1e-4),
    "weight_decay": dict(lr=0.1, weight_decay=2e-2, init_scale=1e-4),
    "small_init": dict(lr=0.1, weight_decay=0.0, init_scale=1e-4, deep_init_scale=1e-3),
    # the n = 500 routes: half the quick profile's weight decay fits all 500 images
    "wd_1e-2": dict(lr=0.1, weight_decay=1e-2, init_scale=1e-4),
    "wd_5e-3": dict(lr=0.1, weight_decay=5e-3, init_scale=1e-4),
}
DEFAULT_EPOCHS = {"paper": 150_000, "paper_lr0.1": 50_000, "weight_decay": 3000,
                  "small_init": 20_000, "wd_1e-2": 20_000, "wd_5e-3": 40_000}


def kkt_epochs(total: int) -> list[int]:
    """Roughly log-spaced epochs (1-2-5 per decade) up to ``total``, plus ``total``."""
    out, base = [], 10
    while base <= total:
        out += [e for e in (base, 2 * base, 5 * base) if e <= total]
        base *= 10
    return sorted(set(out + [total]))


def run_route(name: str, epochs: int, task, out: Path, dtype: str, log_every: int,
              skip_per_class: int = 0, kkt_at: tuple[int, ...] = ()) -> dict:
    from recon.files import atomic_write_json
    from recon.kkt import kkt_diagnostic
    from recon.provenance import provenance
    from recon.rundir import task_card
    from recon.train import TrainConfig, train_task

    cfg = TrainConfig(**ROUTES[name], epochs=epochs, dtype=dtype, log_every=log_every)
    marks = {e for e in kkt_epochs(epochs) + list(kkt_at)
             if e % log_every == 0 and e <= epochs} | {epochs}
    x, y = task.x_train, task.y_train

    def callback(epoch, model):
        if epoch in marks:
            d = kkt_diagnostic(model, x.to(model.layers[0].weight), y.to(x.device))
            print(f"  {name}: epoch {epoch:>7d}  KKT unexplained {d.unexplained:.3%}", flush=True)
            return {"kkt_epoch": epoch, "kkt_unexplained": d.unexplained}
        return None

    (out / name).mkdir(parents=True, exist_ok=True)
    res = train_task(task, cfg, checkpoint=out / name / "model.pt", progress=False,
                     callback=callback, checkpoint_every=max(log_every, 5000))
    # the route's folder as a run directory (the card `python -m recon train` writes)
    atomic_write_json({"task": task_card(task, skip_per_class=skip_per_class), "train": {
        "config": cfg.to_dict(), "epochs_done": res.epoch, "wall_time_s": res.wall_time,
        "final": res.final()}, "provenance": provenance("cpu")}, out / name / "run.json",
        indent=2)
    card = {"route": name, "task": task.name, "n": task.n, "skip_per_class": skip_per_class,
            "config": cfg.to_dict(),
            "epochs_done": res.epoch, "wall_time_s": res.wall_time,
            "final": res.final(), "history": res.history, "provenance": provenance("cpu")}
    (out / f"{name}.json").write_text(json.dumps(card) + "\n")
    return card


def plot(cards: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for c in cards:
        h = c["history"]
        label = f"{c['route']} ({c['wall_time_s'] / 60:.1f} min)"
        axes[0].loglog(h["kkt_epoch"], h["kkt_unexplained"], "o-", ms=3, label=label)
        axes[1].loglog(h["epoch"][1:], h["param_norm2"][1:], label=c["route"])
    axes[0].set_ylabel(r"KKT residual: unexplained fraction of $\|\theta\|^2$")
    axes[1].set_ylabel(r"$\|\theta\|^2$")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[0].legend(fontsize=8)
    c0 = cards[0]
    fig.suptitle(f"{c0['task']}, n = {c0['n']}: training routes to the KKT regime")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=("mnist", "cifar10"), default="mnist")
    p.add_argument("--n-per-class", type=int, default=25)
    p.add_argument("--skip-per-class", type=int, default=0,
                   help="train on the images after the first K of each class (a shadow "
                        "model's training set, as `python -m recon train --skip-per-class`)")
    p.add_argument("--kkt-at", default="",
                   help="more epochs at which to log the KKT residual, e.g. 6000,12000 "
                        "(besides the 1-2-5 marks)")
    p.add_argument("--out", default="results/training_routes/mnist-n50")
    p.add_argument("--routes", default=",".join(ROUTES))
    p.add_argument("--epochs", default="",
                   help="per-route epochs, e.g. paper=150000,weight_decay=3000")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from recon.data import load_task

    epochs = dict(DEFAULT_EPOCHS)
    for item in filter(None, args.epochs.split(",")):
        k, v = item.split("=")
        epochs[k] = int(float(v))
    names = args.routes.split(",")
    unknown = [n for n in names if n not in ROUTES]
    if unknown:
        p.error(f"unknown routes {unknown}; choose from {sorted(ROUTES)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    task = load_task(args.task, args.n_per_class, skip_per_class=args.skip_per_class)
    kkt_at = tuple(int(float(e)) for e in filter(None, args.kkt_at.split(",")))
    for name in names:
        print(f"route {name}: {epochs[name]} epochs", flush=True)
        run_route(name, epochs[name], task, out, args.dtype, args.log_every,
                  args.skip_per_class, kkt_at)
    cards = [json.loads((out / f"{n}.json").read_text()) for n in ROUTES
             if (out / f"{n}.json").is_file()]
    plot(cards, out / "training_routes.png")
    for c in cards:
        f = c["final"]
        print(f"{c['route']:>13}: {c['epochs_done']:>7d} epochs in {c['wall_time_s']:.0f} s, "
              f"train error {f['train_error']:.3f}, test error "
              f"{f.get('test_error', float('nan')):.3f}, KKT unexplained "
              f"{f['kkt_unexplained']:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
