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
  (:func:`recon.rundir.held_out_labelled`), and per image the share within 1e-4: how many training
  images sit on more first-layer hyperplanes than every test image, and the AUC of that share
  as a score that tells training from test images;
* **the gate**: the share of ``||theta||^2`` that the true training set leaves unexplained
  (:func:`recon.kkt.kkt_diagnostic`, best non-negative multipliers) with the exact step and
  with the soft gate ``sigmoid(alpha z)`` that the reconstruction uses, for several ``alpha``;
* **free gates** (the Clarke subdifferential): the same share when the first layer's gate of
  every pre-activation within ``eps`` of zero may take any value in [0, 1], as the ReLU's
  subgradient allows there (:func:`free_gate_residual`: non-negative multipliers and bounded
  gates fitted in turn). The control is the same fit with as many held-out test images in
  place of the training set: free gates are extra unknowns, and only a drop far beyond the
  control's says that the training set satisfies the equation with them.

All of it needs the training images: diagnostics of a model, not an attack. About two
minutes per model at n = 500 on one core, nearly all of it the free gates.

With ``--recipe-candidates`` the same free-gate fit is also made for what an attack finds:
the candidates of one run of the model's reconstruction recipe (the card's, or ``--profile``'s
for a ``train`` directory; m = 2n, seed 0, about ten minutes at n = 500). Free gates are extra
unknowns for them too; if the true set then leaves far less of ``||theta||^2`` than the
recipe's candidates do, a loss with free gates would prefer the training set.

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
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from recon.files import atomic_write_json  # noqa: E402
from recon.kkt import kkt_diagnostic  # noqa: E402
from recon.probes import auc, pre_activations  # noqa: E402
from recon.provenance import provenance  # noqa: E402
from recon.rundir import held_out_labelled, load_run  # noqa: E402

EPS = (1e-5, 1e-4, 1e-3)
FREE_EPS = (1e-4, 1e-3)  # the bands in which the first layer's gates are free
ALPHAS = (None, 1e5, 1e4, 1e3, 1e2, 30.0)  # None: the exact step


@torch.no_grad()
def free_gate_residual(model, x: torch.Tensor, y: torch.Tensor, eps: float,
                       rounds: int = 4) -> dict:
    """The share of ``||theta||^2`` left unexplained at ``(x, y)`` when the first layer's gates
    of pre-activations within ``eps`` of zero are free in [0, 1] and the rest are the exact
    step. Non-negative least squares for the multipliers and bounded least squares for the
    gates (one small problem per first-layer unit), in turn, ``rounds`` times; round 0 is the
    exact step, i.e. :func:`recon.kkt.kkt_diagnostic`. A free gate only changes the gradient
    of its own unit's first-layer weights and bias: at the kink the unit's output is zero
    whatever the gate, so the deeper layers' gradients do not depend on it. For the paper's
    network: two hidden layers, one output, a bias in the first layer only."""
    from scipy.optimize import lsq_linear

    from recon.kkt import nnls_multipliers

    layers = model.layers
    if len(layers) != 3 or layers[-1].weight.shape[0] != 1 or any(
            layer.bias is not None for layer in layers[1:]) or layers[0].bias is None:
        raise ValueError("free_gate_residual handles the paper's network: two hidden layers, "
                         "one output, a bias in the first layer only")
    W1, W2, w3 = (layer.weight.double() for layer in layers)
    b1 = layers[0].bias.double()
    X = x.flatten(1).double().cpu()
    yv = y.double().cpu()
    W1, W2, w3, b1 = W1.cpu(), W2.cpu(), w3.cpu()[0], b1.cpu()
    n = len(X)
    z1 = X @ W1.T + b1
    h1 = torch.relu(z1)
    z2 = h1 @ W2.T
    h2 = torch.relu(z2)
    d2 = (z2 > 0).double() * w3  # dPhi/dz2, exact step in the second layer
    u = d2 @ W2  # dPhi/dh1
    gate = (z1 > 0).double()
    free = z1.abs() < eps
    theta2 = model.theta_norm2()
    X1 = torch.cat([X, torch.ones(n, 1, dtype=X.dtype)], 1)  # [x, 1]: W1 and b1 together
    Wb1 = torch.cat([W1, b1[:, None]], 1)
    K_deep = (d2 @ d2.T) * (h1 @ h1.T) + h2 @ h2.T  # the blocks the free gates do not touch
    b_deep = torch.einsum("ij,jk,ik->i", d2, W2, h1) + h2 @ w3
    XX = X1 @ X1.T
    yy = yv[:, None] * yv[None, :]
    history = []
    for r in range(rounds + 1):
        gu = gate * u
        K = yy * ((gu @ gu.T) * XX + K_deep)
        b = yv * (torch.einsum("ik,kj,ij->i", gu, Wb1, X1) + b_deep)
        lam, res2 = nnls_multipliers(K, b, theta2)
        history.append(res2 / theta2)
        if r == rounds:
            break
        c = (lam * yv)[:, None] * u  # unit k's row of grad W1 for sample i: c_ik g_ik [x_i, 1]
        for k in range(W1.shape[0]):
            fk = free[:, k]
            if not bool(fk.any()):
                continue
            target = Wb1[k] - (c[~fk, k] * gate[~fk, k]) @ X1[~fk]
            cols = (c[fk, k][:, None] * X1[fk]).T
            if float(cols.abs().max()) > 0:
                fit = lsq_linear(cols.numpy(), target.numpy(), bounds=(0, 1), method="bvls")
                gate[fk, k] = torch.from_numpy(fit.x)
    return {"eps": eps, "free_pairs": int(free.sum()), "pairs": int(free.numel()),
            "unexplained": history[-1], "history": history}


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
    ap.add_argument("--recipe-candidates", action="store_true",
                    help="also fit free gates at the candidates of one run of the recipe")
    ap.add_argument("--profile", help="the recipe of a train directory (a shadow model)")
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
        x_test, y_test = held_out_labelled(task)
        k = kinks(model, x, x_test)
        gate = []
        for alpha in ALPHAS:
            d = kkt_diagnostic(model, x, y, alpha=alpha)
            gate.append({"alpha": alpha, "unexplained": d.unexplained})
            print(f"{path.name}: alpha {alpha}: {d.unexplained:.3%} unexplained", flush=True)
        free = []
        for eps in FREE_EPS:
            for name, (xs, ys) in (("train", (x, y)), ("test", (x_test, y_test))):
                f = free_gate_residual(model, xs, ys, eps)
                free.append({"set": name, **f})
                print(f"{path.name}: free gates within {eps:g} of zero, {name} images: "
                      f"{f['history'][0]:.3%} -> {f['unexplained']:.3%} unexplained "
                      f"({f['free_pairs']} free)", flush=True)
        if args.recipe_candidates:
            import dataclasses

            from directions import card_recipe

            from recon.reconstruct import reconstruct

            cfg = dataclasses.replace(card_recipe(run, args.profile), seed=0)
            res = reconstruct(model, cfg, mean=task.mean, progress=False)
            for eps in FREE_EPS:
                f = free_gate_residual(model, res.x, res.y, eps)
                free.append({"set": "recipe candidates", "m": len(res.x),
                             "recon_wall_time_s": res.wall_time, **f})
                print(f"{path.name}: free gates within {eps:g} of zero, the recipe's "
                      f"{len(res.x)} candidates: {f['history'][0]:.3%} -> "
                      f"{f['unexplained']:.3%} unexplained ({f['free_pairs']} free)", flush=True)
        entries.append({"run": path.name, "task": task.name, "n": task.n,
                        "kinks": k, "gate": gate, "free_gates": free,
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
