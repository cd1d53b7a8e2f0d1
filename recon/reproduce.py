"""The paper's experiment end to end: train, sweep, pool, evaluate, and write a run card.

:func:`reproduce` runs every stage of the paper's protocol on one task and keeps everything in
one directory, so an interrupted run continues where it stopped (run the same command again):

1. **train** the MLP on the task (``OUT/model.pt``; checkpointed, resumes);
2. **sweep** the reconstruction's hyperparameters with Optuna (``OUT/sweep/``; finished trials
   are kept, the first trial is the profile's recipe, the others are sampled around it);
3. **pool** the candidates of the best trials and evaluate them with the paper's protocol under
   both matchings (:func:`recon.sweep.pool_trials`);
4. **margins**: for every training image, its margin and multiplier against the quality of its
   best reconstruction (the paper's finding: recovered images are margin samples);
5. **card**: ``OUT/card.json`` (configs, seeds, git revision, versions, device, wall time per
   stage, metrics) and figures ``OUT/pairs.png`` (best pairs, one-to-one matching, sorted by
   correlation) and ``OUT/margins.png``.

Sizes come from :data:`recon.pipeline.PROFILES` (``quick``: minutes on a laptop CPU;
``full``: the paper's settings, for a GPU) and can be overridden (``n_per_class``, ``trials``,
``steps``, ...). Heavy files (``model.pt``, ``sweep/``) stay beside the card; commit only the
card and the figures.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import torch

__all__ = ["SWEEP_DEFAULTS", "KEEP_SHARES", "SELECTION", "reproduce", "default_out", "read_card",
           "trained_params", "results_dir", "load_cards", "card_row", "card_selection",
           "summary_table", "SUMMARY_FILE", "write_summary"]

# per profile: trials in the sweep, how many best trials to pool, search space, and the
# objective that ranks them. "kkt" reads the weights alone (what an attacker can do); the
# paper's own search ranked by an oracle that reads the training images ("oracle"), which
# the paper profile keeps so that it stays the paper's protocol, and says so on its card.
SWEEP_DEFAULTS = {
    "quick": {"trials": 4, "pool": 3, "space": "cpu", "objective": "kkt"},
    # n = 500: independent runs of the measured recipe, all pooled (nothing chosen)
    "full": {"trials": 8, "pool": 8, "space": "seeds", "objective": "kkt"},
    "paper": {"trials": 100, "pool": 10, "space": "paper", "objective": "oracle"},
}
CARD_FORMAT = "recon-reproduce/1"
#: what a card says about how its pooled trials were chosen, by sweep objective
SELECTION = {
    "kkt": "weights only (lowest exact-ReLU stationarity residual)",
    "agreement": "weights only (agreement of two independent runs)",
    "oracle": "oracle: the paper's score, which reads the training images",
}


def default_out(task: str, profile: str, n: int, shadow: bool = False) -> Path:
    """``results/reproduce/<task>-<profile>-n<n>`` (relative to the working directory);
    ``results/shadow/...`` for a shadow model (trained on other images of the task, to
    choose settings on), whose cards the book's tables of results leave out."""
    return Path("results") / ("shadow" if shadow else "reproduce") / f"{task}-{profile}-n{n}"


def read_card(path: str | os.PathLike) -> dict:
    """Load a run card (``card.json``) written by :func:`reproduce`, checking its format."""
    path = Path(path)
    if path.is_dir():
        path = path / "card.json"
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"no run card at {path}; run `python -m recon reproduce` "
                                "first") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and rerun") from e
    if card.get("format") != CARD_FORMAT:
        raise ValueError(f"{path} is not a recon run card (format {card.get('format')!r}, "
                         f"expected {CARD_FORMAT!r})")
    return card


def results_dir() -> Path:
    """The project's ``results/`` folder: ``$RECON_RESULTS_DIR`` if set, else the nearest
    ``results/`` with run cards in the working directory or a parent (the book runs from
    ``book/``), else the copy shipped inside the installed package (``recon.results``: a
    chapter opened alone, e.g. on Colab, reads the committed cards from there)."""
    env = os.environ.get("RECON_RESULTS_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    for d in (here, *here.parents):
        if (d / "results" / "reproduce").is_dir():
            return d / "results"
    checkout = Path(__file__).resolve().parents[1] / "results"
    if checkout.is_dir():
        return checkout
    return Path(__file__).resolve().parent / "results"


def load_cards(root: str | os.PathLike | None = None, *, complete: bool = True) -> list[dict]:
    """Every run card under ``root/reproduce/*/card.json`` (default :func:`results_dir`),
    each with its folder added as ``_dir``, sorted by task and size. With ``complete`` (the
    default) cards of runs still in progress (no evaluation yet) are left out, with a
    warning."""
    import warnings

    root = Path(root) if root is not None else results_dir()
    if not (root / "reproduce").is_dir():
        raise FileNotFoundError(
            f"no run cards: {root / 'reproduce'} does not exist. Install recon from its "
            "repository (the package ships the committed cards), run the book from a clone, "
            "or set RECON_RESULTS_DIR to a results/ folder with reproduce/*/card.json "
            "(`python -m recon reproduce TASK` writes one)")
    cards = []
    for path in sorted((root / "reproduce").glob("*/card.json")):
        card = read_card(path)
        if complete and not card.get("complete"):
            warnings.warn(f"{path}: run not finished (rerun `python -m recon reproduce` to "
                          "complete it); left out", stacklevel=2)
            continue
        card["_dir"] = str(path.parent)
        cards.append(card)
    return sorted(cards, key=lambda c: (c["task"]["name"], c["task"]["n"], c["profile"]))


def trained_params(input_dim: int, widths, n_outputs: int = 1) -> int:
    """The number of trained parameters ``p`` of the paper's MLP: every weight of the
    ``input_dim - widths... - n_outputs`` layers plus the first layer's bias."""
    dims = [int(input_dim), *map(int, widths), int(n_outputs)]
    return sum(a * b for a, b in zip(dims, dims[1:])) + dims[1]


def card_selection(card: dict) -> str:
    """How the card's pooled trials were chosen (:data:`SELECTION`), also for cards written
    before cards said so: ``"none (every trial pooled)"``, a weights-only objective, or the
    oracle, which reads the training images and must be named wherever its counts are shown.
    """
    if "selection" in card:
        return card["selection"]
    sw = card["config"]["sweep"]
    if len(card["pool"]["trials"]) >= sw["trials"]:
        return "none (every trial pooled)"
    return SELECTION["oracle" if sw["objective"] == "paper" else sw["objective"]]


def card_row(card: dict) -> dict:
    """One table row of a run card: size, training, counts under both matchings, margins."""
    c = card["pool"]["counts"]["pool"]
    t, tr, m = card["task"], card["train"], card["margins"]
    return {
        "task": t["name"], "n": t["n"], "profile": card["profile"],
        "device": card["provenance"]["device"],
        "epochs": tr["epochs_done"], "weight decay": card["config"]["train"]["weight_decay"],
        "train error": tr["train_error"], "test accuracy": tr["test_accuracy"],
        "KKT unexplained": tr.get("kkt_unexplained"),
        "trials pooled": len(card["pool"]["trials"]),
        "trials chosen by": card_selection(card),
        "steps": card["config"]["recon_base"]["steps"],
        # the row-space cut-off; cards written before the option existed ran without it
        "subspace": format(tol, "g") if (tol := card["config"]["recon_base"].get(
            "subspace_tol", 0.0)) > 0 else "off",
        "SSIM>0.4 (paper)": c["paper"]["ssim>0.4"],
        "SSIM>0.4 (1-1)": c["one_to_one"]["ssim>0.4"],
        "NCC>0.8 (1-1)": c["one_to_one"]["ncc>0.8"],
        "NCC>0.9 (1-1)": c["one_to_one"]["ncc>0.9"],
        # the stricter controls, on cards that have them (None otherwise)
        "NCC>0.9, mean-subtracted": c["one_to_one"].get("ncc0>0.9"),
        "NCC>0.9 vs test images": card["pool"].get("test_control", {}).get("ncc>0.9"),
        "NCC>0.8 vs test images": card["pool"].get("test_control", {}).get("ncc>0.8"),
        "SSIM>0.4 vs test images": card["pool"].get("test_control", {}).get("ssim>0.4"),
        "rho(margin, NCC)": m["spearman_margin_ncc"],
        "minutes": card["wall_time_s"].get("total", float("nan")) / 60,
    }


#: the table of every committed run card that the book's introduction includes, under results/
SUMMARY_FILE = "summary.md"


def summary_table(cards: list[dict]) -> str:
    """Every run card as one row of a Markdown table: what was attacked, how the pooled runs
    were chosen, the count one-to-one above NCC 0.9 and above SSIM 0.4, each beside its
    test-image control, the CPU and the revision. ``results/summary.md`` holds this table for
    the committed cards (the introduction includes it; a test keeps it equal to the cards)."""
    lines = ["| task | n | profile | runs pooled | NCC > 0.9 | test images | SSIM > 0.4 "
             "| test images | CPU | revision |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in cards:
        r = card_row(c)
        sel = r["trials chosen by"]
        sel = ("all" if sel.startswith("none") else "best by the weights"
               if sel.startswith("weights") else "best by the oracle")
        if (keep := c["pool"].get("keep", 1.0)) < 1:
            sel += f"; {keep:g} of each by multiplier"
        cpu = (c["provenance"].get("cpu") or {}).get("model", "not recorded")
        rev = c["provenance"].get("git_revision") or ""
        rev = ("uncommitted changes (not yet remade)" if rev.endswith("-dirty") or not rev
               else f"`{rev[:7]}`")
        cells = [r["task"], r["n"], r["profile"], f"{r['trials pooled']}, {sel}",
                 r["NCC>0.9 (1-1)"], r["NCC>0.9 vs test images"], r["SSIM>0.4 (1-1)"],
                 r["SSIM>0.4 vs test images"], cpu, rev]
        lines.append("| " + " | ".join("–" if v is None else str(v) for v in cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(root: str | os.PathLike | None = None) -> Path:
    """Write :func:`summary_table` of the cards under ``root`` (default :func:`results_dir`)
    to ``root/summary.md`` (``make summary``)."""
    root = Path(root) if root is not None else results_dir()
    path = root / SUMMARY_FILE
    path.write_text(summary_table(load_cards(root)))
    return path


#: the shares of each trial's candidates (largest multipliers first) a card's pool is also
#: counted at, so that a shadow model's card shows the choice of ``keep``
KEEP_SHARES = (0.125, 0.25, 0.5, 1.0)


def _keep_note(keep: float) -> str:
    """What a card's selection adds where each trial pools only part of its candidates."""
    if keep >= 1:
        return ""
    return (f"; of each, the {keep:g} of its candidates with the largest multipliers "
            "(weights only)")


def _pool_counts(out: Path, k: int, study_name: str, data, keep: float) -> dict:
    """The size and one-to-one counts above NCC 0.9 (training set and test control) of the
    pool of the best ``k`` trials, each trial's share ``keep``."""
    from .evaluate import evaluate
    from .sweep import pool_trials

    p = pool_trials(out, k, study_name=study_name, task=data, keep=keep, write=False)
    te = evaluate(p.candidates, data.x_test[:data.n], data.mean, matching="one_to_one")
    return {"n_candidates": int(len(p.candidates)),
            "ncc>0.9": p.pool["one_to_one"].count(ncc_above=0.9),
            "test_ncc>0.9": te.count(ncc_above=0.9)}


def _by_keep(out: Path, k: int, study_name: str, data) -> list[dict]:
    """:func:`_pool_counts` of the best ``k`` trials, keeping each share of
    :data:`KEEP_SHARES` of every trial's candidates."""
    return [{"keep": share, **_pool_counts(out, k, study_name, data, share)}
            for share in KEEP_SHARES]


def _by_runs(out: Path, k: int, study_name: str, data, keep: float) -> list[dict]:
    """One-to-one counts above NCC 0.9 (training set and test control) of the pool of the best
    ``j`` trials, for ``j`` = 1 .. ``k``, each trial's share ``keep``: how the pool grows with
    runs, which says whether more runs of the recipe would find more."""
    rows = []
    for j in range(1, k + 1):
        c = _pool_counts(out, j, study_name, data, keep)
        rows.append({"runs": j, "ncc>0.9": c["ncc>0.9"], "test_ncc>0.9": c["test_ncc>0.9"]})
    return rows


def _plot(card: dict, pool_eval, out: Path, max_pairs: int) -> None:
    import matplotlib.pyplot as plt

    from .margins import plot_margin_scatter
    from .plots import plot_pairs, set_style

    set_style()
    order = torch.argsort(pool_eval.ncc, descending=True)[:max_pairs]
    t = card["task"]
    # a shadow model's figures say so: its images are not the paper's training set
    who = (f"{t['name']} shadow (images after the first {t['skip_per_class']} of each class)"
           if t.get("skip_per_class") else t["name"])
    fig = plot_pairs(pool_eval.recon[order], pool_eval.original[order],
                     pool_eval.ncc[order].tolist(), max_pairs=max_pairs, score_name="NCC",
                     title=f"{who}, n = {t['n']} ({card['profile']}): best pooled "
                           "reconstructions, one-to-one")
    fig.savefig(out / "pairs.png", dpi=90)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    plot_margin_scatter(axes[0], card["margins"], "margin", "ncc")
    plot_margin_scatter(axes[1], card["margins"], "lam", "ncc")
    fig.suptitle(f"{who}, n = {t['n']}: which training images come back?", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "margins.png", dpi=90)
    plt.close(fig)


def reproduce(
    task: str,
    profile: str = "quick",
    out: str | os.PathLike | None = None,
    *,
    n_per_class: int | None = None,
    epochs: int | None = None,
    weight_decay: float | None = None,
    trials: int | None = None,
    pool: int | None = None,
    keep: float | None = None,
    candidates_per_image: int | None = None,
    steps: int | None = None,
    objective: str | None = None,
    space: str | None = None,
    tv: float | None = None,
    matmul: str | None = None,
    train_overrides: dict | None = None,
    label_noise: float = 0.0,
    all_classes: bool | None = None,
    device: str | None = None,
    progress: bool = True,
    max_pairs: int = 40,
    skip_per_class: int = 0,
) -> dict:
    """Train, sweep, pool and evaluate one task; write ``OUT/card.json`` and figures.

    Every stage resumes from what ``OUT`` already holds. Returns the run card (a dict).
    Overrides change the profile's settings (and so the directory name when ``out`` is None):
    ``train_overrides`` sets any :class:`recon.train.TrainConfig` field (widths, init scale,
    the defenses), ``label_noise`` flips that fraction of the training labels
    (:func:`recon.data.flip_labels`), ``all_classes`` reconstructs a ten-class model from the
    equation with a multiplier per wrong class (:class:`recon.reconstruct.ReconConfig`).
    ``keep`` pools only that share of each trial's candidates, those with the largest
    multipliers (:func:`recon.sweep.pool_trials`; default: the profile's, 1 = all);
    the card also counts the pool at the other shares of :data:`KEEP_SHARES`.
    ``candidates_per_image`` sets the number of candidates of each run, ``m = K n`` (default:
    the profile's, 2, as in the paper).
    ``skip_per_class`` trains a *shadow* model on the images after the first
    ``skip_per_class`` of each class (as ``python -m recon train --skip-per-class``): a model
    of the same kind on other images, on which an attacker may look at the training set to
    choose settings; its card goes to ``results/shadow/`` by default.
    """
    from .data import flip_labels, load_task
    from .evaluate import evaluate
    from .files import atomic_write_json
    from .hardware import default_device, resolve_precision
    from .margins import model_margin_analysis
    from .pipeline import settings
    from .provenance import provenance
    from .reconstruct import ReconConfig
    from .rundir import task_card
    from .sweep import check_keep, objective_name, pool_trials, run_study, search_space
    from .train import train_task

    if profile not in SWEEP_DEFAULTS:
        raise ValueError(f"profile must be one of {sorted(SWEEP_DEFAULTS)}, got {profile!r}")
    s = settings(task, profile)
    sw = dict(SWEEP_DEFAULTS[profile])
    sw["keep"] = s.get("keep", 1.0)
    sw.update({k: v for k, v in {"trials": trials, "pool": pool, "objective": objective,
                                 "space": space, "keep": keep}.items() if v is not None})
    sw["objective"] = objective_name(sw["objective"])
    if sw["trials"] < 1 or sw["pool"] < 1:
        raise ValueError("trials and pool must be >= 1")
    check_keep(sw["keep"])  # before training, not after the sweep
    per_image = (candidates_per_image if candidates_per_image is not None
                 else s.get("candidates_per_image", 2))
    if isinstance(per_image, bool) or not isinstance(per_image, int) or per_image < 1:
        raise ValueError(f"candidates_per_image must be an integer >= 1 (m = K n candidates "
                         f"per run; the paper's is 2), got {per_image!r}")
    if skip_per_class < 0:
        raise ValueError(f"skip_per_class must be >= 0, got {skip_per_class}")
    npc = n_per_class or s["n_per_class"]
    tcfg = dataclasses.replace(s["train"], **{k: v for k, v in {
        "epochs": epochs, "weight_decay": weight_decay, "matmul": matmul}.items()
        if v is not None}, **(train_overrides or {}))
    data = flip_labels(load_task(task, npc, skip_per_class=skip_per_class), label_noise,
                       seed=tcfg.seed)
    rcfg = ReconConfig(**{**s["recon"].to_dict(), "n_candidates": per_image * data.n,
                          **({"steps": steps} if steps else {}),
                          **({"tv": tv} if tv is not None else {}),
                          **({"all_classes": all_classes} if all_classes is not None else {}),
                          **({"matmul": matmul} if matmul is not None else {})})
    dev = device or default_device()
    out = (Path(out) if out is not None
           else default_out(task, profile, data.n, shadow=skip_per_class > 0))
    out.mkdir(parents=True, exist_ok=True)
    card_path = out / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if card and card.get("format") != CARD_FORMAT:
        raise ValueError(f"{card_path} is not a recon run card; choose another directory")
    wall = card.get("wall_time_s", {})

    def say(msg):
        print(f"[reproduce] {msg}", flush=True)

    def save():
        card["wall_time_s"] = wall
        card["provenance"] = provenance(dev)
        atomic_write_json(card, card_path)

    card.update(format=CARD_FORMAT, profile=profile, device=dev, complete=False,
                task={"name": data.name, "n_per_class": npc, "n": data.n,
                      "n_test": int(len(data.y_test)), "source": data.source_kind,
                      **({"label_noise": label_noise} if label_noise else {}),
                      **({"skip_per_class": skip_per_class} if skip_per_class else {})},
                model={"input_dim": int(data.x_train[0].numel()),
                       "params": trained_params(data.x_train[0].numel(), tcfg.widths,
                                                data.n_outputs),
                       "n_outputs": data.n_outputs},
                config={"train": tcfg.to_dict(), "recon_base": rcfg.to_dict(), "sweep": sw},
                # what "auto" became on this machine: bfloat16 products or full precision
                precision={"train": resolve_precision(tcfg.matmul, dev, tcfg.dtype),
                           "recon": resolve_precision(rcfg.matmul, dev, rcfg.dtype)},
                # who chose the pooled trials: the weights alone, or the training images
                selection=(SELECTION[sw["objective"]] if sw["pool"] < sw["trials"] else
                           "none (every trial pooled)") + _keep_note(sw["keep"]))

    # 1. train ------------------------------------------------------------------------------
    say(f"1/4 train {data.name} n={data.n} for {tcfg.epochs} epochs -> {out / 'model.pt'}")
    res = train_task(data, tcfg, checkpoint=out / "model.pt", device=dev, progress=progress)
    f = res.final()
    card["train"] = {"epochs_done": res.epoch, "train_error": f["train_error"],
                     "test_error": f.get("test_error"), "test_accuracy":
                     1 - f["test_error"] if "test_error" in f else None,
                     "min_margin": f["min_margin"], "param_norm2": f["param_norm2"],
                     "wall_time_s": res.wall_time}
    wall["train"] = res.wall_time
    # run.json lets the sweep find the task (the format `python -m recon train` writes)
    run_json = {"task": task_card(data, skip_per_class=skip_per_class, label_noise=label_noise,
                                  label_noise_seed=tcfg.seed),
                "device": dev}
    atomic_write_json(run_json, out / "run.json")
    save()

    # 2. sweep ------------------------------------------------------------------------------
    say(f"2/4 sweep: {sw['trials']} trials of {rcfg.steps} steps, objective {sw['objective']}")
    t0 = time.perf_counter()
    first = {k: getattr(rcfg, k) for k in search_space(sw["space"])}
    summary = run_study(out, sw["trials"], base=rcfg, objective=sw["objective"],
                        space=sw["space"], device=dev, progress=progress,
                        enqueue=[first], sampler_seed=rcfg.seed)
    wall["sweep_this_session"] = time.perf_counter() - t0
    wall["sweep_trials_total"] = summary.get("trial_wall_time_s")
    card["sweep"] = {k: summary.get(k) for k in ("study_name", "objective", "states",
                                                 "n_diverged", "best", "trial_wall_time_s")}
    save()

    # 3. pool ------------------------------------------------------------------------------
    kept = "" if sw["keep"] >= 1 else f", {sw['keep']:g} of each by multiplier"
    say(f"3/4 pool the best {sw['pool']} trials{kept} and evaluate (paper protocol, both "
        "matchings)")
    t0 = time.perf_counter()
    pooled = pool_trials(out, sw["pool"], study_name=summary["study_name"], task=data,
                         keep=sw["keep"])
    # control: the same candidates matched one-to-one to as many TEST images of the task,
    # which the model never saw; a count there is what generic images of the classes score
    control = evaluate(pooled.candidates, data.x_test[:data.n], data.mean,
                       matching="one_to_one")
    card["pool"] = {"trials": pooled.trials, "best_trial": pooled.best_trial,
                    "keep": sw["keep"], "n_candidates": pooled.pool["paper"].n_candidates,
                    "counts": pooled.counts(), "test_control": control.counts(),
                    "by_keep": _by_keep(out, sw["pool"], summary["study_name"], data),
                    "by_runs": _by_runs(out, sw["pool"], summary["study_name"], data,
                                        sw["keep"])}
    card.pop("pool_oracle", None)  # a resumed card's, from another pool size
    if sw["objective"] != "oracle" and sw["pool"] < sw["trials"]:
        # the attacker's choice, and the oracle's beside it (where there was a choice)
        oracle = pool_trials(out, sw["pool"], study_name=summary["study_name"], task=data,
                             rank_by="paper_score", keep=sw["keep"])
        card["pool_oracle"] = {"trials": oracle.trials, "best_trial": oracle.best_trial,
                               "counts": oracle.counts()}
    wall["pool"] = time.perf_counter() - t0

    # 4. margins, figures -------------------------------------------------------------------
    say("4/4 margins and figures")
    card["margins"] = model_margin_analysis(res.model.cpu(), data, pooled.pool["one_to_one"])
    card["train"]["kkt_unexplained"] = card["margins"]["kkt_unexplained"]
    _plot(card, pooled.pool["one_to_one"], out, max_pairs)
    card["figures"] = ["pairs.png", "margins.png"]
    card["complete"] = True
    wall["total"] = sum(v for k, v in wall.items()
                        if k in ("train", "sweep_trials_total", "pool") and v)
    save()
    c = card["pool"]["counts"]["pool"]
    say(f"done: pooled one-to-one NCC>0.9 {c['one_to_one']['ncc>0.9']}/{data.n}, SSIM>0.4 "
        f"{c['one_to_one']['ssim>0.4']} (one-to-one) / {c['paper']['ssim>0.4']} (paper "
        f"matching); test accuracy {card['train']['test_accuracy']:.1%} -> {card_path}")
    return card
