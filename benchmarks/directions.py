"""Directions for the paper's scale, each under the same step budget as the recipe it changes.

For a trained run directory (``python -m recon reproduce``; a shadow model's directory, made
with ``python -m recon train --skip-per-class K``, to choose, and the victim's to report), run
the card's reconstruction recipe and the variants below from the same seeds, with the same
total number of steps, and count one-to-one against the training images and against as many
held-out test images (the control):

* ``recipe``: the card's recipe as it is (m = 2n, ``lambda_min`` 0.45: every candidate is held
  to carry weight);
* ``free-mass``: ``lambda_min`` 0.05, so that a candidate can let its multiplier fall to zero
  (at the truth, m = 2n candidates would need only the training set's support vectors);
* ``birth-death``: ``free-mass`` in rounds; after each round the candidates whose multiplier
  fell under a tenth of the median are reborn at a fresh random start (the sparse-spikes
  idea: mass that the residual does not need is moved to where it may be needed). The
  optimiser's state restarts with each round;
* ``stages:FIELDS@SHARE;...;FIELDS``: the recipe in stages, each with its own fields
  (``KEY=VALUE+KEY=VALUE``, empty for the recipe as it is), carried over as the schedule below
  (``stages:@0.67;alpha=1000``: two thirds of the budget with the recipe's soft gate, the rest
  with a sharper one, which fits the true set better but from random starts searches worse);
* ``schedule:TOL@SHARE,...,TOL``: coarse to fine in the row space's cut-off: the first stage
  runs at cut-off ``TOL`` for ``SHARE`` of the budget, each later stage likewise, the last for
  what is left (``schedule:1e-2@0.67,3e-5``: two thirds at the full profile's 1e-2, where random
  starts find images, the rest at 3e-5, where the truth's basin is wide). Candidates and
  multipliers carry over; the optimiser's state restarts with each stage. Other fields of the
  recipe after a bar: ``schedule:1e-2@0.67,3e-5|lambda_min=0.05``.

Each entry also counts, one-to-one, only the candidates with the largest multipliers (the
quarter, half, all of ``n``, and all ``2n``): a ranking that reads nothing but the
reconstruction's own output, so it can choose what to keep without the training set. And it
records ``on_kinks``: the share of the candidates' first-layer pre-activations within 1e-3 of
zero, beside the training images' and the control's (the file's ``on_kinks``), which says
whether a direction such as the kink prior (``'kinks 0.01:kinks=0.01'``) put the candidates
where training images sit.

Nothing here reads a training image until the counts at the end; a direction is kept only if
it beats ``recipe`` on the shadow model and then it is reported on the victim with its control.

    python benchmarks/directions.py runs/mnist-n500-shadow --profile full \\
        --directions recipe birth-death --seeds 0 --out results/directions/mnist-n500-shadow.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from ablation import parse_overrides  # noqa: E402

from recon.evaluate import evaluate  # noqa: E402
from recon.files import atomic_write_json  # noqa: E402
from recon.hardware import resolve_precision  # noqa: E402
from recon.probes import pre_activations  # noqa: E402
from recon.provenance import provenance  # noqa: E402
from recon.reconstruct import ReconConfig, reconstruct  # noqa: E402
from recon.rundir import held_out, load_run  # noqa: E402
from recon.sweep import multiplier_order  # noqa: E402
from recon.sweep.objectives import kkt_residual  # noqa: E402


def card_recipe(run, profile: str | None) -> ReconConfig:
    """The reconstruction recipe of the run's card, or of ``profile`` (``recon.pipeline``)
    for a ``train`` directory (a shadow model); m = 2n."""
    from recon.pipeline import PROFILES

    card = run.reproduce_card() or {}
    base = card.get("config", {}).get("recon_base")
    if base:
        cfg = ReconConfig(**base)
    elif profile:
        cfg = PROFILES[profile][run.task.name]["recon"]
    else:
        raise SystemExit(f"error: {run.path} has no reproduce card; name the recipe with "
                         "--profile (e.g. full)")
    return dataclasses.replace(cfg, n_candidates=2 * run.task.n)


def run_recipe(model, task, cfg):
    res = reconstruct(model, cfg, mean=task.mean, progress=False)
    return res.x, res.lam, res.y, res.wall_time, {}


def run_birth_death(model, task, cfg, rounds: int = 6, dead_share: float = 0.1):
    per = cfg.steps // rounds
    x = lam = y = None
    wall, reborn = 0.0, []
    g = torch.Generator().manual_seed(10_000 + cfg.seed)
    for r in range(rounds):
        steps = per if r < rounds - 1 else cfg.steps - per * (rounds - 1)
        res = reconstruct(model, dataclasses.replace(cfg, steps=steps, seed=cfg.seed + 97 * r),
                          mean=task.mean, x_init=x, lam_init=lam, y=y, progress=False)
        x, lam, y, wall = res.x, res.lam, res.y, wall + res.wall_time
        if r == rounds - 1:
            break
        dead = lam < dead_share * lam.median()
        k = int(dead.sum())
        reborn.append(k)
        if k:
            x = x.clone()
            lam = lam.clone()
            x[dead] = torch.randn((k, *x.shape[1:]), generator=g) * cfg.init_scale
            lam[dead] = lam.median()
    return x, lam, y, wall, {"rounds": rounds, "dead_share": dead_share, "reborn": reborn}


def _parse_parts(body: str, sep: str, parse, form: str, example: str) -> list:
    """``SPEC@SHARE<sep>...<sep>SPEC`` as ``[(parse(SPEC), share), ..., (parse(SPEC), None)]``,
    checked: every part but the last has a share, and the shares sum under 1. ``form`` (e.g.
    ``TOL@SHARE or TOL``) and ``example`` (a whole direction) go into the error messages."""
    stages: list = []
    parts = [p.strip() for p in body.split(sep)]
    for i, part in enumerate(parts):
        spec, at, share = part.partition("@")
        try:
            stage = (parse(spec), float(share) if at else None)
        except ValueError:
            raise SystemExit(f"error: stage {part!r} is not {form}") from None
        if (stage[1] is None) != (i == len(parts) - 1):
            raise SystemExit("error: every stage but the last needs @SHARE (a fraction of the "
                             f"budget), e.g. {example}; got {body!r}")
        stages.append(stage)
    shares = sum(s for _, s in stages[:-1])
    if len(stages) < 2 or not 0 < shares < 1:
        raise SystemExit(f"error: {example.partition(':')[0]} needs two or more stages whose "
                         f"shares sum under 1, got {body!r}")
    return stages


def parse_schedule(body: str) -> list[tuple[float, float | None]]:
    """``TOL@SHARE,...,TOL`` as ``[(tol, share), ..., (tol, None)]``, checked."""
    body = ",".join(p for p in body.split(",") if p.strip())
    return _parse_parts(body, ",", float, "TOL@SHARE or TOL", "schedule:1e-2@0.67,3e-5")


def parse_stages(body: str) -> list[tuple[dict, float | None]]:
    """``FIELDS@SHARE;...;FIELDS`` as ``[(overrides, share), ..., (overrides, None)]``:
    ``FIELDS`` is ``KEY=VALUE+KEY=VALUE`` (fields of ``ReconConfig``, empty for the recipe)."""
    return _parse_parts(body, ";", lambda fields: parse_overrides(
        [f for f in fields.split("+") if f.strip()]), "FIELDS@SHARE or FIELDS",
        "stages:@0.67;alpha=1000")


def run_stages(stages, key: str = "stages", describe=None):
    """The recipe in stages, each with its overrides (``[(overrides, share), ...]``):
    candidates, labels and multipliers carry over; each stage restarts the optimiser with its
    own seed. The entry records ``key``: ``describe(overrides, steps)`` per stage."""
    describe = describe or (lambda over, steps: {"fields": over, "steps": steps})

    def go(model, task, cfg):
        x = lam = y = None
        wall, done, steps_per = 0.0, 0, []
        for i, (over, share) in enumerate(stages):
            steps = round(share * cfg.steps) if share is not None else cfg.steps - done
            res = reconstruct(model, dataclasses.replace(cfg, steps=steps, seed=cfg.seed + 97 * i,
                                                         **over),
                              mean=task.mean, x_init=x, lam_init=lam, y=y, progress=False)
            x, lam, y, wall = res.x, res.lam, res.y, wall + res.wall_time
            done += steps
            steps_per.append(steps)
        return x, lam, y, wall, {key: [describe(o, k) for (o, _), k in zip(stages, steps_per)]}
    return go


def run_schedule(stages):
    """Coarse to fine in the cut-off: :func:`run_stages` with ``subspace_tol`` per stage."""
    return run_stages([({"subspace_tol": tol}, share) for tol, share in stages], "schedule",
                      lambda over, steps: {"subspace_tol": over["subspace_tol"], "steps": steps})


#: how near a kink counts as on it, for :func:`on_kinks`
KINK_BAND = 1e-3


def on_kinks(model, x: torch.Tensor) -> float:
    """The share of the first layer's pre-activations at ``x`` within :data:`KINK_BAND` of
    zero: how many of its hyperplanes the inputs sit on, on average (training images of a
    weight-decay model sit on several times more than test images; chapter 6)."""
    with torch.no_grad():
        return float((pre_activations(model, x)[0].abs() < KINK_BAND).double().mean())


def by_multiplier(x, lam, task, control, sizes) -> list[dict]:
    """One-to-one counts (NCC > 0.9, against the training set and the test control) of the
    ``k`` candidates with the largest multipliers, for each ``k`` in ``sizes`` (a candidate's
    total multiplier where it has one per wrong class)."""
    order = multiplier_order(lam)
    rows = []
    for k in sizes:
        keep = x[order[:k]]
        tr = evaluate(keep, task.x_train, task.mean, matching="one_to_one")
        te = evaluate(keep, control, task.mean, matching="one_to_one")
        rows.append({"kept": int(k), "ncc>0.9": tr.count(ncc_above=0.9),
                     "test_ncc>0.9": te.count(ncc_above=0.9)})
    return rows


DIRECTIONS = {
    "recipe": (lambda cfg: cfg, run_recipe),
    "free-mass": (lambda cfg: dataclasses.replace(cfg, lambda_min=0.05), run_recipe),
    "birth-death": (lambda cfg: dataclasses.replace(cfg, lambda_min=0.05), run_birth_death),
}


def direction(spec: str):
    """A built-in direction, or ``NAME:KEY=VALUE,...``: the recipe with those fields."""
    if spec in DIRECTIONS:
        return DIRECTIONS[spec]
    name, sep, body = spec.partition(":")
    if name == "stages" and sep:
        return (lambda cfg: cfg), run_stages(parse_stages(body))
    if name == "schedule" and sep:
        stages, _, fields = body.partition("|")
        over = parse_overrides(fields.split(",")) if fields else {}
        return (lambda cfg: dataclasses.replace(cfg, **over)), run_schedule(parse_schedule(stages))
    if not sep:
        raise SystemExit(f"error: unknown direction {spec!r}; built in: "
                         f"{', '.join(sorted(DIRECTIONS))}, schedule:TOL@SHARE,...,TOL, or "
                         "NAME:KEY=VALUE,...")
    over = parse_overrides(body.split(","))
    return (lambda cfg: dataclasses.replace(cfg, **over)), run_recipe


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path)
    ap.add_argument("--directions", nargs="+", required=True,
                    help=f"built in: {', '.join(sorted(DIRECTIONS))}; schedule:TOL@SHARE,...,TOL "
                         "(coarse to fine in the cut-off); stages:FIELDS@SHARE;...;FIELDS "
                         "(fields per stage, KEY=VALUE+KEY=VALUE); or NAME:KEY=VALUE,... "
                         "(the recipe with fields of ReconConfig changed, e.g. "
                         "'alpha 1000:alpha=1000')")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--steps", type=int, help="the budget (default: the card's steps)")
    ap.add_argument("--profile", help="the recipe of a train directory (a shadow model)")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run = load_run(args.run)
    task, model = run.task, run.model
    base = card_recipe(run, args.profile)
    if args.steps:
        base = dataclasses.replace(base, steps=args.steps)
    payload = json.loads(args.out.read_text()) if args.out.is_file() else {
        "format": "recon-directions/1", "entries": []}
    done = {(e["run"], e["direction"], e["seed"]) for e in payload["entries"]}
    control = held_out(task)
    payload["on_kinks"] = {"band": KINK_BAND, "train": on_kinks(model, task.x_train),
                           "test_control": on_kinks(model, control)}
    for name in args.directions:
        for seed in args.seeds:
            if (run.name, name, seed) in done:
                continue
            make, go = direction(name)
            cfg = make(dataclasses.replace(base, seed=seed))
            t0 = time.perf_counter()
            x, lam, y, wall, extra = go(model, task, cfg)
            tr = evaluate(x, task.x_train, task.mean, matching="one_to_one")
            te = evaluate(x, control, task.mean, matching="one_to_one")
            entry = {"run": run.name, "task": task.name, "n": task.n, "direction": name,
                     "seed": seed, "config": cfg.to_dict(), **extra,
                     "precision": resolve_precision(cfg.matmul, "cpu", cfg.dtype),
                     "residual_exact": kkt_residual(model, x, lam, y),
                     "on_kinks": on_kinks(model, x),
                     "wall_time_s": wall, "total_time_s": time.perf_counter() - t0,
                     "counts": {"one_to_one": tr.counts(), "test_control": te.counts()},
                     "by_multiplier": by_multiplier(
                         x, lam, task, control,
                         sorted({task.n // 4, task.n // 2, task.n, len(x)}))}
            payload["entries"].append(entry)
            payload["provenance"] = provenance(torch.device("cpu"))
            atomic_write_json(payload, args.out)
            print(f"{run.name} {name} seed {seed}: NCC>0.9 {tr.count(ncc_above=0.9)} "
                  f"(test {te.count(ncc_above=0.9)}), NCC>0.8 {tr.count(ncc_above=0.8)} "
                  f"(test {te.count(ncc_above=0.8)}), residual {entry['residual_exact']:.4f}, "
                  f"{wall:.0f} s", flush=True)


if __name__ == "__main__":
    main()
