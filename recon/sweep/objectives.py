"""What a trial minimises: the exact-ReLU KKT residual or the agreement of two runs (both read
the weights alone, as an attacker can), or the paper's score, an oracle that reads the
training images."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch

from ..evaluate import sweep_score
from ..models import MLP
from ..reconstruct import ReconConfig, stationarity_loss

OBJECTIVES = ("kkt", "agreement", "oracle")
#: weights-only objectives: choosing by them reads no training image
ATTACKER_OBJECTIVES = ("kkt", "agreement")


def objective_name(name: str) -> str:
    """``name`` checked against :data:`OBJECTIVES`; ``"paper"``, the oracle's name on cards
    and studies written before it was called so, reads as ``"oracle"``."""
    name = "oracle" if name == "paper" else name
    if name not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")
    return name


# ---------------------------------------------------------------------------------------------
# Scores
# ---------------------------------------------------------------------------------------------
def kkt_residual(model: MLP, x: torch.Tensor, lam: torch.Tensor, y: torch.Tensor) -> float:
    """``||theta - (1/m) grad sum_j lam_j y_j Phi(x_j)||^2 / ||theta||^2`` with the exact ReLU.

    The fraction of the weights the candidates leave unexplained; needs no training data.
    """
    p0 = next(model.parameters())
    net = copy.deepcopy(model)
    for p in net.theta():
        p.requires_grad_(True)
    x, lam, y = (t.detach().to(p0.device, p0.dtype) for t in (x, lam, y))
    theta2 = net.theta_norm2(None)
    return float(stationarity_loss(net, x, lam, y, None).detach()) / theta2


def check_finite(x: torch.Tensor) -> None:
    if not torch.isfinite(x).all():
        raise FloatingPointError("candidates hold NaN/inf")


@dataclass
class TrialContext:
    model: MLP
    task: object
    fingerprint: str
    base: ReconConfig
    objective: str
    space: dict
    n_trials: int
    report_every: int
    sdir: Path
    device: str | None
    k: int
    study_name: str
    worker: str


def score_trial(ctx: TrialContext, runs) -> float:
    if ctx.objective == "oracle":
        return sweep_score(runs[0].x, ctx.task.x_train, k=ctx.k)
    if ctx.objective == "kkt":
        return kkt_residual(ctx.model, runs[0].x, runs[0].lam, runs[0].y)
    return sweep_score(runs[0].x, runs[1].x, k=ctx.k)
