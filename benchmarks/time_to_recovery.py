"""Images recovered against reconstruction time: the book's recipe and the paper's, same models.

For each trained run directory (``python -m recon reproduce``), from the same seeds, two
recipes, each with log-spaced snapshots counted one-to-one against the training images and
against as many held-out test images (the control):

* **book**: the reconstruction recipe of the run's card (``config.recon_base``: Adam, the
  valid-range box, candidates in the first layer's row space, the card's cut-off, steps and
  number of candidates), counted as the card pools it: where the card keeps only a share of
  each run's candidates, those with the largest multipliers (``config.sweep.keep``), every
  snapshot is counted on that share;
* **paper**: the paper's reconstruction (:meth:`recon.reconstruct.ReconConfig.paper`): its loss
  in pixel space, SGD with momentum, the [-1, 1] box, full precision, 50,000 steps, with the
  hyperparameters of its good runs (lr_x 0.1, init_scale 1e-2, lambda_min 0.45, alpha 20, all
  inside the ranges of its random search).

The curve is the wall time of the run so far (its mean time per step times the step; a recipe
whose steps change cost part way, such as the full profile's refinement, is read at its mean)
against
the count at that step; a card's reading is "minutes to reach k images" for each recipe, on
the same trained model and the same CPU. It is :mod:`benchmarks.ablation`'s ``custom``
ablation with these two variants and ``--trajectory``, so an interrupted benchmark resumes.

    python -m recon reproduce mnist --profile quick --out runs/mnist-quick-n50
    python benchmarks/time_to_recovery.py runs/mnist-quick-n50 --seeds 0 1 2 \\
        --out results/benchmarks/time_to_recovery-mnist-n50.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ablation  # noqa: E402

from recon.reconstruct import ReconConfig  # noqa: E402
from recon.rundir import load_run  # noqa: E402

KEEP = ("steps", "lr_x", "lr_lambda", "init_scale", "lambda_min", "alpha", "optimizer", "box",
        "subspace_tol", "matmul", "tv", "two_tone", "refine_share", "refine_tol")


def _spec(name: str, cfg: dict) -> str:
    """An ablation ``--variant`` for the recipe ``cfg`` (every field that decides a run)."""
    return name + ":" + ",".join(f"{k}={cfg[k]}" for k in KEEP)


def variants(run_dir: Path, paper_steps: int) -> list[str]:
    card = load_run(run_dir).reproduce_card()
    if not card:
        raise SystemExit(f"error: {run_dir} is not a reproduce directory (no card.json); make "
                         "one with `python -m recon reproduce TASK --out DIR`")
    return card_variants(card, paper_steps)


def card_variants(card: dict, paper_steps: int) -> list[str]:
    """The ``--variant`` specs of the card's recipe ("book") and the paper's."""
    book = {**ReconConfig().to_dict(), **card["config"]["recon_base"]}
    paper = ReconConfig.paper(steps=paper_steps).to_dict()
    # the card's candidates per training image (the full MNIST profile's 4n); the paper's 2n
    per_n = book["n_candidates"] / card["task"]["n"]
    # and the card's selection: the share of each run's candidates it pools (the full MNIST
    # profile's quarter with the largest multipliers), counted the same way at every snapshot
    keep = card["config"].get("sweep", {}).get("keep", 1.0)
    selection = f",keep={keep:g}" if keep < 1 else ""
    return [_spec("book", book) + f",m_per_n={per_n:g}" + selection,
            _spec("paper", paper) + ",m_per_n=2"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--paper-steps", type=int, default=50_000)
    ap.add_argument("--snapshots", type=int, default=12)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    specs = {s for r in args.runs for s in variants(r, args.paper_steps)}
    if len(specs) != 2:
        raise SystemExit("error: the runs have different book recipes; benchmark them one "
                         "at a time (one --out each)")
    forward = ["custom", *map(str, args.runs), "--seeds", *map(str, args.seeds),
               "--trajectory", str(args.snapshots), "--out", str(args.out)]
    for s in sorted(specs):
        forward += ["--variant", s]
    if args.threads:
        forward += ["--threads", str(args.threads)]
    ablation.main(forward)
    payload = json.loads(args.out.read_text())
    print("\nrun, recipe, seed: minutes, recovered one-to-one NCC > 0.9 (test control)")
    for e in payload["entries"]:
        last = e["trajectory"][-1]
        print(f"{e['run']}, {e['variant']}, {e['seed']}: {last['time_s'] / 60:.1f} min, "
              f"{last['train_ncc>0.9']} ({last['test_ncc>0.9']})")


if __name__ == "__main__":
    main()
