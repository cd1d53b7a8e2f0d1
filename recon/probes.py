"""Probes that say why a reconstruction fails: the search, the objective, or the precision.

Two measurements on a trained model whose training set is known (a shadow model, or the
victim when the point is to understand, not to attack):

* :func:`basin` starts the reconstruction at *blends* of the true training images with noise
  (at a chosen correlation with the truth), with the true labels and the diagnostic's
  multipliers, and counts how many come back above NCC 0.9 to their own image. It measures
  how wide the training set's basin is in the loss: a basin that only the truth itself stays
  in cannot be found from random starts, whatever the search.
* :func:`fair_comparison` runs the same recipe, same steps and precision, from the truth plus
  ``n`` random candidates and from ``2n`` random candidates. If the random run ends *lower*
  than the truth-seeded one, the objective prefers something other than the training set; if
  it ends higher, the search did not find the better point the truth shows exists; and what
  happens to the truth slots says whether the truth is even a stable point of this recipe.

Both use :func:`recon.reconstruct.reconstruct` unchanged, so they measure exactly the
library's recipe (its row space, box, soft gate and precision).

A third needs no reconstruction at all: :func:`kink_membership` asks how many of the first
layer's hyperplanes pass (almost) through each sample. Training with weight decay leaves the
training images on many of them, where the ReLU has its kink (chapter 6), so the share is a
membership score that reads only the weights and the samples.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from .evaluate import evaluate, ncc_pairs
from .kkt import kkt_diagnostic
from .reconstruct import ReconConfig, reconstruct
from .sweep.objectives import kkt_residual

__all__ = ["blend", "basin", "fair_comparison", "pre_activations", "auc", "kink_membership",
           "KINK_SUMMARY"]

#: the entries of :func:`kink_membership`'s result that summarise it (without the per-sample
#: scores): what the audit report and ``benchmarks/membership.py`` keep
KINK_SUMMARY = ("quantile", "threshold", "share_members", "share_others", "auc",
                "members_above_every_other")


def blend(x: torch.Tensor, mean: torch.Tensor, target: float, seed: int = 0) -> torch.Tensor:
    """``x`` (mean-subtracted images) plus white noise scaled so that each blend, with the
    mean added back, correlates with its image at about ``target`` (NCC):
    ``x + s * std(x + mean) * noise`` with ``s = sqrt(1 / target^2 - 1)``."""
    if not 0 < target <= 1:
        raise ValueError(f"target must be in (0, 1], got {target!r}")
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(x.shape, generator=g, dtype=x.dtype)
    full = (x + mean).flatten(1)
    scale = (1 / target**2 - 1) ** 0.5 * full.std(1)
    return x + scale.view(-1, *[1] * (x.dim() - 1)) * noise


def _true_start(model, task):
    """The training set's labels and the diagnostic's multipliers (per sample, without the
    reconstruction's ``1/m``)."""
    p = next(model.parameters())
    d = kkt_diagnostic(model, task.x_train.to(p), task.y_train.to(p))
    return task.y_train.double(), d.lam


def basin(model, task, config: ReconConfig, targets=(0.8, 0.6, 0.4), *, seed: int = 0,
          progress: bool = False) -> list[dict]:
    """For each target correlation: start at blends of the truth (``m = n`` candidates, true
    labels and multipliers), run ``config`` and count the candidates that end above NCC 0.9
    with their own training image (and above 0.8), with the NCC at the start (after the
    recipe's projection) and the exact-ReLU residual at the end. Binary tasks."""
    n, mean = len(task.x_train), task.mean
    y, lam = _true_start(model, task)
    cfg = dataclasses.replace(config, n_candidates=n, seed=seed)
    rows = []
    for r in targets:
        x0 = blend(task.x_train.double(), mean.double(), r, seed=seed).float()
        res = reconstruct(model, cfg, mean=mean, x_init=x0, lam_init=lam.float() * n,
                          y=y.float(), snapshot_steps=(0,), progress=progress)
        start = ncc_pairs(res.snapshots[0] + mean, task.x_train + mean)
        end = ncc_pairs(res.x + mean, task.x_train + mean)
        rows.append({"target_ncc": r, "start_ncc_median": float(start.median()),
                     "steps": res.step, "back_ncc>0.9": int((end > 0.9).sum()),
                     "back_ncc>0.8": int((end > 0.8).sum()), "n": n,
                     "residual_exact": kkt_residual(model, res.x, res.lam, res.y)})
    return rows


def fair_comparison(model, task, config: ReconConfig, *, seed: int = 0,
                    progress: bool = False) -> dict:
    """The truth plus ``n`` random candidates against ``2n`` random candidates, same recipe,
    steps, precision and seed. Returns each run's exact-ReLU residual and its own loss at the
    end, how many truth slots are still above NCC 0.9 with their own image, how many training
    images the random run recovered (one-to-one, NCC > 0.9 and > 0.8) and, as its control,
    how many of ``n`` held-out test images the same candidates match as well
    (:func:`recon.rundir.held_out`). Binary tasks."""
    from .rundir import held_out

    n, mean = len(task.x_train), task.mean
    y, lam = _true_start(model, task)
    cfg = dataclasses.replace(config, n_candidates=2 * n, seed=seed)
    g = torch.Generator().manual_seed(seed)
    rand_x = torch.randn((n, *task.x_train.shape[1:]), generator=g) * cfg.init_scale
    rand_y = torch.where(torch.arange(n) % 2 == 0, -1.0, 1.0)
    x0 = torch.cat([task.x_train, rand_x])
    lam0 = torch.cat([lam.float() * 2 * n, torch.rand(n, generator=g)])
    seeded = reconstruct(model, cfg, mean=mean, x_init=x0, lam_init=lam0,
                         y=torch.cat([y.float(), rand_y]), progress=progress)
    random = reconstruct(model, cfg, mean=mean, progress=progress)
    stay = ncc_pairs(seeded.x[:n] + mean, task.x_train + mean)
    found = evaluate(random.x, task.x_train, mean, matching="one_to_one")
    control = evaluate(random.x, held_out(task), mean, matching="one_to_one")
    return {
        "n": n, "steps": cfg.steps,
        "seeded_residual": kkt_residual(model, seeded.x, seeded.lam, seeded.y),
        "random_residual": kkt_residual(model, random.x, random.lam, random.y),
        # the same comparison in the run's own loss (its gate: soft, sharp or free)
        "seeded_loss": seeded.final().get("stat_rel"),
        "random_loss": random.final().get("stat_rel"),
        "truth_slots_ncc>0.9": int((stay > 0.9).sum()),
        "truth_slots_ncc>0.8": int((stay > 0.8).sum()),
        "random_recovered_ncc>0.9": found.count(ncc_above=0.9),
        "random_recovered_ncc>0.8": found.count(ncc_above=0.8),
        "random_test_control_ncc>0.9": control.count(ncc_above=0.9),
        "random_test_control_ncc>0.8": control.count(ncc_above=0.8),
        "wall_time_s": seeded.wall_time + random.wall_time,
    }


@torch.no_grad()
def pre_activations(model, x: torch.Tensor) -> list[torch.Tensor]:
    """The pre-activations of each hidden layer of ``model`` at ``x``, ``(n, width)`` each."""
    out = []
    h = x.flatten(1).to(model.layers[0].weight)
    for layer in model.layers[:-1]:
        z = layer(h)
        out.append(z)
        h = torch.relu(z)
    return out


def auc(pos, neg) -> float:
    """P(score of a positive > score of a negative), ties counted half (Mann-Whitney)."""
    pos, neg = torch.as_tensor(pos).double(), torch.as_tensor(neg).double()
    greater = (pos[:, None] > neg[None, :]).double().mean()
    ties = (pos[:, None] == neg[None, :]).double().mean()
    return float(greater + 0.5 * ties)


def kink_membership(model, members: torch.Tensor, others: torch.Tensor, *,
                    quantile: float = 0.003) -> dict:
    """How much closer the first layer's hyperplanes pass to ``members`` (e.g. the training
    samples) than to ``others`` (held-out samples of the same kind).

    The threshold ``t`` is the ``quantile`` of ``|z|`` over the others' first-layer
    pre-activations, so that by construction that share of theirs lies within ``t`` of zero,
    whatever the scale of the inputs and weights. Each sample's score is the share of its
    own pre-activations within ``t``; returned: ``t``, the mean share of each group, every
    sample's score, the AUC of the score as a test of membership (0.5: no signal) and how
    many members score above every other sample. The default quantile was chosen on the two
    n = 500 shadow models (AUC 0.817 MNIST, 0.807 CIFAR-10; 0.791 and 0.771 at 0.01) and
    gives 0.782 and 0.824 on the victims (``results/probes/membership-n500.json``)."""
    if not 0 < quantile < 1:
        raise ValueError(f"quantile must be in (0, 1), got {quantile!r}")
    if len(members) == 0 or len(others) == 0:
        raise ValueError("kink_membership needs at least one member and one other sample")
    zm, zo = pre_activations(model, members)[0].abs(), pre_activations(model, others)[0].abs()
    t = float(np.quantile(zo.double().flatten().cpu().numpy(), quantile))
    sm, so = (zm < t).double().mean(1), (zo < t).double().mean(1)
    return {"quantile": quantile, "threshold": t,
            "share_members": float(sm.mean()), "share_others": float(so.mean()),
            "score_members": sm.tolist(), "score_others": so.tolist(),
            "auc": auc(sm, so), "members_above_every_other": int((sm > so.max()).sum())}
