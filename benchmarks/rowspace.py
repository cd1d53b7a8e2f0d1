"""How much of each image lives in the first layer's top singular directions?

Gradient descent adds to the first layer ``W1`` only outer products ``g x_i^T``, so its row
space is spanned by the training images. At n = 500 the span has hundreds of dimensions and
no sharp cut-off. This script measures, for each trained model and each cut-off ``tol``
(keep the right singular vectors of ``W1`` whose singular value exceeds ``tol`` times the
largest, as ``ReconConfig.subspace_tol`` does):

* ``rank``: the dimension kept;
* ``w1_energy_left_out``: the fraction of ``||W1||^2`` in the directions dropped (what the
  stationarity equation can no longer explain);
* ``train_ncc>0.9`` / ``test_ncc>0.9``: how many training images, and as many test images of
  the same task (the first n/2 of each class, :func:`recon.rundir.held_out`), correlate above
  0.9 with their own projection onto the kept directions (the best a reconstruction in that
  space can do, and the same for images the model never saw).

Each run directory is read by :func:`recon.rundir.load_run`: the training images are the ones
the model was trained on (a shadow model's, ``train --skip-per-class``).

    python benchmarks/rowspace.py runs/mnist-n500 runs/cifar10-n500 \\
        --out results/ablation/rowspace-n500.json
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from recon.evaluate import ncc_pairs
from recon.provenance import provenance
from recon.rundir import held_out, load_run

TOLS = (3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 5e-3, 1e-2, 2e-2, 3e-2, 1e-1)


def analyse(run_dir: Path, tols=TOLS) -> dict:
    """The row-space analysis of one run directory, at each cut-off in ``tols``."""
    run = load_run(run_dir)
    task = run.task
    w = run.model.layers[0].weight.detach().double()
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    rel = s / s[0]
    energy = (s**2).cumsum(0) / (s**2).sum()
    rows = []
    for tol in tols:
        k = int((rel > tol).sum())
        basis = vh[:k].T
        row = {"tol": tol, "rank": k, "w1_energy_left_out": float(1 - energy[k - 1])}
        for split, x in (("train", task.x_train), ("test", held_out(task))):
            flat = x.flatten(1).double()
            proj = (flat @ basis) @ basis.T
            ncc = ncc_pairs((proj.view_as(x) + task.mean).float(), (x + task.mean).float())
            row[f"{split}_ncc>0.9"] = int((ncc > 0.9).sum())
            row[f"{split}_ncc>0.8"] = int((ncc > 0.8).sum())
        rows.append(row)
    return {"run": run.name, "task": task.name, "n": task.n,
            "singular_values": rel.tolist(), "cutoffs": rows}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="trained run directories")
    ap.add_argument("--out", default="results/ablation/rowspace-n500.json")
    args = ap.parse_args(argv)
    payload = {"format": "recon-rowspace/1", "models": [analyse(r) for r in args.runs],
               "provenance": provenance(torch.device("cpu"))}
    for m in payload["models"]:
        print(f"{m['run']} ({m['task']}, n = {m['n']})")
        for r in m["cutoffs"]:
            print(f"  tol {r['tol']:.0e}: rank {r['rank']:4d}, W1 left out "
                  f"{r['w1_energy_left_out']:.1e}, own projection NCC>0.9: train "
                  f"{r['train_ncc>0.9']:3d}, test {r['test_ncc>0.9']:3d}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    os.replace(tmp, out)


if __name__ == "__main__":
    main()
