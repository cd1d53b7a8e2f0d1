"""Where the training images sit: on the kinks of the hidden units, and what that does to the fit.

Gradient descent with weight decay leaves many hidden units with a pre-activation of almost
exactly zero on some training images: the unit's hyperplane passes through the image, where
the ReLU has its kink. The derivative there is not defined (any gate value in [0, 1] is a
subgradient), so the stationarity equation at the true training set holds with some gate
between 0 and 1 on those units, and the exact step function (0 below, 1 above) misses it.

For each trained run directory (``python -m recon reproduce`` or ``python -m recon train``,
read by :func:`recon.rundir.load_run`, shadow models included) this measures

* **the kinks**: per hidden layer, the share of pre-activations within ``eps`` of zero
  (1e-5, 1e-4, 1e-3) on the training images and on as many held-out test images
  (:func:`recon.rundir.held_out`), and per image the share within 1e-4: how many training
  images sit on more first-layer hyperplanes than every test image, and the AUC of that share
  as a score that tells training from test images;
* **the gate**: the share of ``||theta||^2`` that the true training set leaves unexplained
  (:func:`recon.kkt.kkt_diagnostic`, best non-negative multipliers) with the exact step and
  with the soft gate ``sigmoid(alpha z)`` that the reconstruction uses, for several ``alpha``.

Both need the training images: diagnostics of a model, not an attack. About ten seconds per
model at n = 500 on one core.

    python benchmarks/kinks.py runs/mnist-n500 runs/cifar10-n500 runs/mnist-n500-shadow \\
        runs/cifar10-n500-shadow --threads 1 --out results/probes/kinks-n500.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

# the library of this checkout (and its revision in the results), not whichever is installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recon.files import atomic_write_json  # noqa: E402
from recon.kkt import kkt_diagnostic  # noqa: E402
from recon.provenance import provenance  # noqa: E402
from recon.rundir import held_out, load_run  # noqa: E402

EPS = (1e-5, 1e-4, 1e-3)
ALPHAS = (None, 1e5, 1e4, 1e3, 1e2, 30.0)  # None: the exact step


def pre_activations(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The pre-activations of each hidden layer, ``(n, width)`` each."""
    out = []
    with torch.no_grad():
        h = x.flatten(1).to(model.layers[0].weight)
        for layer in model.layers[:-1]:
            z = layer(h)
            out.append(z)
            h = torch.relu(z)
    return out


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return float(greater + 0.5 * ties)


def kinks(model, x_train: torch.Tensor, x_test: torch.Tensor) -> list[dict]:
    rows = []
    for i, (zt, ze) in enumerate(zip(pre_activations(model, x_train),
                                     pre_activations(model, x_test))):
        at, ae = zt.abs(), ze.abs()
        per_t = (at < 1e-4).float().mean(1).cpu().numpy()
        per_e = (ae < 1e-4).float().mean(1).cpu().numpy()
        rows.append({
            "layer": i + 1, "width": int(zt.shape[1]),
            "share_train": {f"{e:g}": float((at < e).float().mean()) for e in EPS},
            "share_test": {f"{e:g}": float((ae < e).float().mean()) for e in EPS},
            "per_image_1e-4": {"train_median": float(np.median(per_t)),
                               "test_median": float(np.median(per_e)),
                               "test_max": float(per_e.max()),
                               "train_above_every_test": int((per_t > per_e.max()).sum()),
                               "auc": auc(per_t, per_e)},
        })
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="trained run directories")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = []
    for path in args.runs:
        run = load_run(path)
        model, task = run.model, run.task
        w = model.layers[0].weight
        x, y = task.x_train.to(w), task.y_train.to(w)
        t0 = time.perf_counter()
        k = kinks(model, x, held_out(task))
        gate = []
        for alpha in ALPHAS:
            d = kkt_diagnostic(model, x, y, alpha=alpha)
            gate.append({"alpha": alpha, "unexplained": d.unexplained})
            print(f"{path.name}: alpha {alpha}: {d.unexplained:.3%} unexplained", flush=True)
        entries.append({"run": path.name, "task": task.name, "n": task.n,
                        "kinks": k, "gate": gate,
                        "wall_time_s": time.perf_counter() - t0})
        for r in k:
            print(f"{path.name}: layer {r['layer']}: |z| < 1e-4 on {r['share_train']['0.0001']:.2%}"
                  f" of training and {r['share_test']['0.0001']:.2%} of test pre-activations; "
                  f"AUC {r['per_image_1e-4']['auc']:.3f}", flush=True)
    atomic_write_json({"format": "recon-kinks/1", "entries": entries,
                       "provenance": provenance("cpu")}, args.out, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
