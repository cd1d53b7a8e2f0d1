"""Why a reconstruction fails at a given size: the basin and the fair comparison on a trained model.

For a trained run directory (``python -m recon reproduce`` or ``python -m recon train``, read by
:func:`recon.rundir.load_run`), with the reconstruction recipe of its card (the ``full``
profile's, for a ``reproduce --profile full`` directory) unless overridden:

* **the count**: parameters per training value, ``p / (d n)``: how many equations the weights
  give per unknown pixel of the training set;
* **the truth**: the share of ``||theta||^2`` the true training set leaves unexplained with the
  exact ReLU (:func:`recon.kkt.kkt_diagnostic`), and how many samples carry a positive
  multiplier;
* **the basin** (:func:`recon.probes.basin`): starts at blends of the training images with noise
  (NCC 0.8, 0.6, 0.4 with their image), m = n, true labels and multipliers; how many come back;
* **the fair comparison** (:func:`recon.probes.fair_comparison`): the truth plus n random
  candidates against 2n random candidates, same steps and precision; which residual ends lower,
  how many truth slots stay, and what the random run recovers against its test-image control.

    python benchmarks/probes.py results/reproduce/mnist-full-n500 \\
        --out results/probes/mnist-n500.json
    python benchmarks/probes.py runs/mnist-n500-shadow --profile full --set alpha=1000 \\
        --targets 0.8 --skip-fair --out results/probes/mnist-n500-shadow-alpha1000.json

Sections already in ``--out`` with the same settings are kept and skipped, so an interrupted
run resumes. Every section records its wall time; the file records the command, revision and
CPU (:func:`recon.provenance.provenance`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

# the library of this checkout (and its revision in the results), not whichever is installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from ablation import parse_overrides  # noqa: E402

from recon.files import atomic_write_json  # noqa: E402
from recon.hardware import resolve_precision  # noqa: E402
from recon.kkt import kkt_diagnostic  # noqa: E402
from recon.probes import basin, fair_comparison  # noqa: E402
from recon.provenance import provenance  # noqa: E402
from recon.reconstruct import ReconConfig  # noqa: E402
from recon.rundir import load_run  # noqa: E402


def recipe(run, profile: str | None, overrides: list[str]) -> ReconConfig:
    """The run card's reconstruction recipe (or, for a ``train`` directory such as a shadow
    model, ``profile``'s from :data:`recon.pipeline.PROFILES`; else the library's default),
    with ``KEY=VALUE`` overrides of :class:`ReconConfig` fields."""
    from recon.pipeline import PROFILES

    card = run.reproduce_card() or {}
    base = dict(card.get("config", {}).get("recon_base", {}))
    if base:
        cfg = ReconConfig(**base)
    elif profile:
        cfg = PROFILES[profile][run.task.name]["recon"]
    else:
        cfg = ReconConfig()
    return dataclasses.replace(cfg, **parse_overrides(overrides))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a trained run directory")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--profile", help="the recipe of a train directory (a shadow model)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a field of the recipe, e.g. --set alpha=1000 (repeatable)")
    ap.add_argument("--skip-fair", action="store_true", help="the basin only")
    ap.add_argument("--skip-basin", action="store_true", help="the fair comparison only")
    ap.add_argument("--basin-steps", type=int, default=1000)
    ap.add_argument("--fair-steps", type=int, default=2000)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.8, 0.6, 0.4])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    run = load_run(args.run)
    task, model = run.task, run.model
    cfg = recipe(run, args.profile, args.set)
    settings = {"run": run.name, "task": task.name, "n": task.n, "seed": args.seed,
                "recipe": cfg.to_dict(),
                "precision": resolve_precision(cfg.matmul, "cpu", cfg.dtype)}
    payload = json.loads(args.out.read_text()) if args.out.is_file() else {}
    if payload.get("settings") != settings:
        payload = {"format": "recon-probes/1", "settings": settings}

    def done(section: str, value) -> None:
        payload[section] = value
        payload["provenance"] = provenance(torch.device("cpu"))
        atomic_write_json(payload, args.out)
        print(f"{section}: {json.dumps(value)}", flush=True)

    if "count" not in payload:
        p = sum(t.numel() for t in model.parameters())
        d = task.x_train[0].numel()
        done("count", {"params": p, "input_dim": d, "n": task.n,
                       "params_per_training_value": p / (d * task.n)})
    if "truth" not in payload:
        w = model.layers[0].weight
        diag = kkt_diagnostic(model, task.x_train.to(w), task.y_train.to(w))
        done("truth", {"kkt_unexplained": diag.unexplained,
                       "n_positive_multipliers": int((diag.lam > 0).sum())})
    key = f"basin-{args.basin_steps}"
    if key not in payload and not args.skip_basin:
        t0 = time.perf_counter()
        rows = basin(model, task, dataclasses.replace(cfg, steps=args.basin_steps),
                     targets=tuple(args.targets), seed=args.seed)
        done(key, {"steps": args.basin_steps, "rows": rows,
                   "wall_time_s": time.perf_counter() - t0})
    key = f"fair-{args.fair_steps}"
    if key not in payload and not args.skip_fair:
        done(key, fair_comparison(model, task, dataclasses.replace(cfg, steps=args.fair_steps),
                                  seed=args.seed))


if __name__ == "__main__":
    main()
