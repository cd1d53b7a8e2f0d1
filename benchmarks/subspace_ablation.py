"""Does keeping the candidates in the first layer's row space help? An ablation.

For each trained model (the ``model.pt`` of a ``python -m recon reproduce`` run), run the
library's default reconstruction (``ReconConfig()``, m = 2n) with the subspace on
(``subspace_tol`` = the default) and off (``subspace_tol=0``), from the same seeds, and count
the training images recovered under the paper's protocol and one-to-one matching. Everything
else is identical, so the difference is the subspace alone.

    python benchmarks/subspace_ablation.py results/reproduce/mnist-quick-n50 \\
        results/reproduce/cifar10-quick-n20 --seeds 0 1 2 --out results/ablation/subspace.json

Finished (run, variant, seed) entries are kept in the output file and skipped when the command
is run again, so an interrupted ablation resumes. Needs the runs' ``model.pt`` (git-ignored:
run ``python -m recon reproduce`` first, or point at your own runs).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

from recon.data import load_task
from recon.evaluate import evaluate_both
from recon.provenance import provenance
from recon.reconstruct import ReconConfig, first_layer_basis, reconstruct
from recon.reproduce import read_card
from recon.train import load_checkpoint

VARIANTS = {"subspace": {}, "no subspace": {"subspace_tol": 0.0}}


def _save(out: Path, payload: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1))
    os.replace(tmp, out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="reproduce run directories (card.json + model.pt)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, help="reconstruction steps (default: the card's)")
    ap.add_argument("--out", default="results/ablation/subspace.json")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    out = Path(args.out)
    payload = json.loads(out.read_text()) if out.is_file() else {
        "format": "recon-ablation/1", "what": "subspace on vs off, same seeds", "entries": []}
    done = {(e["run"], e["variant"], e["seed"]) for e in payload["entries"]}
    for run in map(Path, args.runs):
        card = read_card(run)
        if not (run / "model.pt").is_file():
            raise FileNotFoundError(f"{run / 'model.pt'} is missing: run `python -m recon "
                                    f"reproduce` for this run first")
        trained, _ = load_checkpoint(run / "model.pt")
        model = trained.model
        t = card["task"]
        task = load_task(t["name"], t["n_per_class"], 5)
        steps = args.steps or card["config"]["recon_base"]["steps"]
        rank = first_layer_basis(model, ReconConfig().subspace_tol).shape[1]
        for variant, over in VARIANTS.items():
            for seed in args.seeds:
                key = (run.name, variant, seed)
                if key in done:
                    continue
                cfg = ReconConfig(**{"n_candidates": 2 * task.n, "steps": steps, "seed": seed,
                                     **over})
                t0 = time.perf_counter()
                res = reconstruct(model, cfg, mean=task.mean, progress=False)
                wall = time.perf_counter() - t0
                ev = evaluate_both(res.x, task.x_train, task.mean)
                entry = {"run": run.name, "task": t["name"], "n": task.n, "variant": variant,
                         "seed": seed, "steps": steps, "rank": rank if over == {} else None,
                         "stat_rel": res.history["stat_rel"][-1], "wall_time_s": wall,
                         "counts": {m: e.counts() for m, e in ev.items()}}
                payload["entries"].append(entry)
                payload["provenance"] = provenance(torch.device("cpu"))
                _save(out, payload)
                c = entry["counts"]["one_to_one"]
                print(f"{run.name:24s} {variant:12s} seed {seed}: NCC>0.9 {c['ncc>0.9']:3d}  "
                      f"NCC>0.8 {c['ncc>0.8']:3d}  SSIM>0.4 {c['ssim>0.4']:3d}  "
                      f"({wall:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
