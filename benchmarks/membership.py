"""Membership from the first layer's kinks: the AUC of :func:`recon.probes.kink_membership`
for several quantiles, on trained run directories (training images against as many held-out
test images, :func:`recon.rundir.held_out`).

The quantile sets the threshold: the share of the held-out images' first-layer
pre-activations that lie within it of zero. The library's default is chosen on the shadow
models and shown on the victims (and on chapter 9's model, trained with plain PyTorch):

    python benchmarks/membership.py runs/mnist-n500-shadow runs/cifar10-n500-shadow \\
        runs/mnist-n500 runs/cifar10-n500 --threads 1 --out results/probes/membership-n500.json

Seconds per model.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from recon.files import atomic_write_json  # noqa: E402
from recon.probes import KINK_SUMMARY, kink_membership  # noqa: E402
from recon.provenance import provenance  # noqa: E402
from recon.rundir import held_out, load_run  # noqa: E402

QUANTILES = (0.001, 0.003, 0.01, 0.03)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path, help="trained run directories")
    ap.add_argument("--quantiles", type=float, nargs="+", default=list(QUANTILES))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    entries = []
    for path in args.runs:
        run = load_run(path)
        others = held_out(run.task)
        rows = []
        for q in args.quantiles:
            k = kink_membership(run.model, run.task.x_train, others, quantile=q)
            rows.append({key: k[key] for key in KINK_SUMMARY})
            print(f"{path.name}: quantile {q:g}: {k['share_members']:.2%} of training against "
                  f"{k['share_others']:.2%} of test pre-activations, AUC {k['auc']:.3f}",
                  flush=True)
        entries.append({"run": path.name, "task": run.task.name, "n": run.task.n,
                        "skip_per_class": run.card.get("task", {}).get("skip_per_class", 0),
                        "rows": rows})
    atomic_write_json({"format": "recon-membership/1", "entries": entries,
                       "provenance": provenance("cpu")}, args.out, indent=1)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
