"""Reconstruct training images from a trained network's weights (Haim et al., 2022).

Given trained parameters ``theta``, look for ``m`` inputs ``x_j`` with fixed balanced labels
``y_j`` and multipliers ``lambda_j`` that satisfy the stationarity condition of the KKT
conditions of margin maximisation. The loss, term by term (Haim et al., 2022, Section 3):

    L_stat  = || theta - (1/m) grad_theta sum_j lambda_j y_j Phi(theta; x_j) ||^2
    L_lam   = 5 sum_j relu(lambda_min - lambda_j)^2
    L_prior = sum relu(x - hi)^2 + relu(lo - x)^2
    L_tv    = tv ||theta||^2 mean_j TV(x_j)        (optional image prior, off by default)
    L_tone  = two_tone ||theta||^2 mean p (1 - p)  (optional two-tone prior, off by default;
                                                    p = x + mean, each pixel's value)
    L       = L_stat + L_lam + L_prior + L_tv + L_tone

``L_stat`` contains a gradient, so minimising it over ``x`` needs the gradient of a gradient.
The ReLU's derivative is a step whose own derivative is zero, so the network is evaluated with
:func:`recon.models.relu_soft_backward`: exact forward, derivative ``sigmoid(alpha z)``.
:func:`stationarity_loss` builds the loss with autograd (double backward), the way the paper's
code does; the optimisation loop uses the same loss and its gradient written out by hand
(:mod:`recon.stationarity`), in the first layer's row-space coordinates and, where the
hardware multiplies bfloat16 fast, with bfloat16 matrix products (``matmul="auto"``): the
same trajectory at several times the speed (the Results chapter has the benchmark).

Two optimiser choices: the paper's (SGD with momentum 0.9 for both ``x`` and ``lambda``) and
Adam, which on a CPU budget is what makes random starts converge to real images (Chapter 3
compares them). Two pixel boxes: the paper's ``[-1, 1]`` in mean-subtracted space, and the valid
image range ``[-mean, 1 - mean]`` (it uses the training mean, which the paper's evaluation
also assumes known).

Two priors beyond the paper's (both measured in the Results chapter): ``subspace_tol`` (on by
default, off in :meth:`ReconConfig.paper`) keeps every candidate in the row space of the first
layer's weights (:func:`first_layer_basis`): gradient descent only ever adds outer products
``g x_i^T`` to ``W1``, so with a small or decayed initialisation the training images lie in
that space, whose dimension is about the number of training images that carry weight; ``tv``
(off by default) adds a total-variation penalty against pixel noise.

A third, ``two_tone`` (off by default), is for data whose pixels are mostly ink or paper
(handwritten digits): ``p (1 - p)`` is zero at both tones and concave, so by Jensen's
inequality a blend of two such images always costs more than the images it blends. A convex
prior (a Gaussian, total variation) can never do that: it prefers blends.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .files import atomic_save
from .hardware import HALF, PRECISIONS, keep_freed_memory, resolve_precision
from .models import MLP, check_supported, wrong_classes
from .provenance import provenance
from .resume import same_but_length
from .stationarity import Stationarity
from .train import output_margins

__all__ = [
    "ReconConfig",
    "ReconResult",
    "kkt_loss_terms",
    "stationarity_loss",
    "total_variation",
    "two_tone_cost",
    "kink_cost",
    "first_layer_basis",
    "balanced_labels",
    "reconstruct",
    "load_reconstruction",
    "theta_fingerprint",
    "ADDED_FIELDS",
    "ReconstructionDiverged",
]

RECON_FORMAT = "recon-reconstruction/1"
# fields added after the format was fixed, with the value that files without them were run
# with (public: the sweep uses it to join studies started before a field existed)
ADDED_FIELDS = {"tv": 0.0, "subspace_tol": 0.0, "matmul": "full", "all_classes": False,
                "free_gates": 0.0, "lr_gate": 0.01, "free_gates_shape": "band",
                "finish_full": 0.0, "two_tone": 0.0, "refine_share": 0.0, "refine_tol": 3e-3,
                "kinks": 0.0, "kink_scale": 1e-3}
# a run whose stationarity residual ends above this many times ||theta||^2 exploded (a random
# start is at about 1; working runs end near 0.01)
EXPLODED_STAT_REL = 10.0


class ReconstructionDiverged(FloatingPointError):
    """The reconstruction blew up: a non-finite loss, or a residual that ends many times larger
    than ``||theta||^2``. The last checkpoint, if any, is kept for inspection."""


@dataclass
class ReconConfig:
    """Hyperparameters of one reconstruction run.

    The four that matter (tuned by random search in the paper): ``lr_x``, ``init_scale``,
    ``lambda_min``, ``alpha``. The defaults are the recipe measured to recover MNIST and
    CIFAR-10 images from random starts on a CPU (Adam, valid-range box, ``lr_lambda=1e-2``,
    candidates kept in the first layer's row space, bfloat16 products where the hardware
    runs them fast); :meth:`paper` gives the paper's optimiser, box, multiplier learning rate
    and step count, without the subspace, in full precision.
    ``subspace_tol`` needs a trained first layer: set it to 0 for a frozen one.
    """

    n_candidates: int = 100
    steps: int = 3000
    lr_x: float = 0.01
    lr_lambda: float = 1e-2
    init_scale: float = 1e-3
    lambda_min: float = 0.45
    alpha: float = 100.0
    optimizer: str = "adam"  # "adam" | "sgd" (paper: SGD, momentum 0.9, for x and lambda)
    box: str = "valid"  # "valid": [-mean, 1 - mean]; "paper": [-1, 1]; "none": no box
    dtype: str = "float32"
    seed: int = 0
    log_every: int = 50
    tv: float = 0.0  # weight of the total-variation prior, relative to ||theta||^2 (0: off)
    # weight of the two-tone prior mean p (1 - p) over pixel values p = x + mean, relative to
    # ||theta||^2 (0: off); for two-tone data (digits), where it penalises blends
    two_tone: float = 0.0
    # > 0: keep candidates in the row space of the first layer's weights (the directions
    # with singular value above subspace_tol times the largest); 0: off (the paper)
    subspace_tol: float = 3e-5
    # precision of the matrix products of each step: "full" (dtype), "bfloat16" / "float16"
    # (residuals, sums and the optimiser's state stay in dtype), or "auto": bfloat16 for
    # float32 runs where the hardware multiplies it fast (AMX / AVX-512 BF16 CPUs, Ampere and
    # newer GPUs), else full
    matmul: str = "auto"
    # the share of the run's last steps taken with full-precision products whatever matmul
    # says: bfloat16 while the candidates move, full precision to settle them (0: every step
    # in matmul's precision)
    finish_full: float = 0.0
    # the share of the run's last steps with the row space's cut-off at refine_tol (0: off):
    # a wide row space and the two-tone prior need candidates that already look like images,
    # which the narrow space of subspace_tol finds first (the Results chapter measures it)
    refine_share: float = 0.0
    refine_tol: float = 3e-3
    # multiclass models only: a multiplier for every (candidate, wrong class) pair, the exact
    # stationarity form of cross-entropy with weight decay; False: one per candidate, against
    # its highest wrong class (Buzaglo et al., 2023)
    all_classes: bool = False
    # > 0: the first layer's gates of pre-activations within this distance of zero are free
    # in [0, 1] (the ReLU's subgradient at its kink), fitted with the candidates by Adam at
    # lr_gate; 0: off. See recon.stationarity.Stationarity
    free_gates: float = 0.0
    lr_gate: float = 0.01
    free_gates_shape: str = "band"  # "band" | "smooth" (see Stationarity's free_shape)
    # weight of the kink prior, relative to ||theta||^2 (0: off): the mean over candidates and
    # first-layer units of 1 - exp(-|pre-activation| / kink_scale), which rewards candidates
    # that sit on the first layer's hyperplanes, as training images do (kink_cost; the
    # Results chapter measures it)
    kinks: float = 0.0
    kink_scale: float = 1e-3

    def __post_init__(self) -> None:
        if self.n_candidates < 2:
            raise ValueError("n_candidates must be at least 2 (half get y=-1, half y=+1)")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.box not in ("valid", "paper", "none"):
            raise ValueError(f"box must be 'valid', 'paper' or 'none', got {self.box!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        for name in ("lr_x", "lr_lambda", "init_scale", "alpha", "lr_gate"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not (0 <= self.subspace_tol < 1):
            raise ValueError(f"subspace_tol must be in [0, 1), got {self.subspace_tol!r}")
        if not (self.tv >= 0 and self.tv < float("inf")):
            raise ValueError(f"tv must be a finite number >= 0, got {self.tv!r}")
        if not (self.two_tone >= 0 and self.two_tone < float("inf")):
            raise ValueError(f"two_tone must be a finite number >= 0, got {self.two_tone!r}")
        if not (self.kinks >= 0 and self.kinks < float("inf")):
            raise ValueError(f"kinks must be a finite number >= 0, got {self.kinks!r}")
        if not self.kink_scale > 0:
            raise ValueError(f"kink_scale must be positive, got {self.kink_scale!r}")
        if not (0 <= self.free_gates < float("inf")):
            raise ValueError(f"free_gates must be a finite number >= 0, got {self.free_gates!r}")
        if self.free_gates_shape not in ("band", "smooth"):
            raise ValueError("free_gates_shape must be 'band' or 'smooth', got "
                             f"{self.free_gates_shape!r}")
        if self.matmul not in PRECISIONS:
            raise ValueError(f"matmul must be one of {PRECISIONS}, got {self.matmul!r}")
        if not (0 <= self.finish_full <= 1):
            raise ValueError(f"finish_full is a share of the steps, in [0, 1]; got "
                             f"{self.finish_full!r}")
        if not (0 <= self.refine_share <= 1):
            raise ValueError(f"refine_share is a share of the steps, in [0, 1]; got "
                             f"{self.refine_share!r}")
        if self.refine_share > 0 and not (0 < self.refine_tol < self.subspace_tol):
            raise ValueError(
                f"refine_tol ({self.refine_tol!r}) must be in (0, subspace_tol = "
                f"{self.subspace_tol!r}): the refinement widens the row space; set "
                "refine_share=0 to keep one cut-off, or subspace_tol above refine_tol")
        if self.steps < 0 or self.log_every <= 0:
            raise ValueError("steps must be >= 0 and log_every > 0")

    @classmethod
    def paper(cls, **overrides) -> ReconConfig:
        """The paper's optimiser and schedule, with hyperparameters from its good runs."""
        base = dict(steps=50_000, optimizer="sgd", box="paper", lr_lambda=1e-4, lr_x=0.1,
                    init_scale=1e-2, lambda_min=0.45, alpha=20.0, subspace_tol=0.0, tv=0.0,
                    matmul="full")
        return cls(**{**base, **overrides})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def switch_step(self, share: float) -> int:
        """The first of the run's last ``share`` of its steps (``finish_full``,
        ``refine_share``)."""
        return self.steps - round(share * self.steps)


@dataclass
class ReconResult:
    """Candidates ``x`` ``(m, C, H, W)`` (mean-subtracted space), multipliers ``lam`` ``(m,)``,
    labels ``y`` ``(m,)``, the loss history, snapshots ``{step: x}`` with the multipliers at
    the same steps (``snapshot_lam``, ``{step: lam}``: what a selection by multiplier reads),
    and the run's config."""

    x: torch.Tensor
    lam: torch.Tensor
    y: torch.Tensor
    config: ReconConfig
    history: dict[str, list[float]] = field(default_factory=dict)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)
    snapshot_lam: dict[int, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    wall_time: float = 0.0

    def final(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.history.items() if v}


def balanced_labels(m: int, dtype=torch.float32, device=None, n_classes: int = 2
                    ) -> torch.Tensor:
    """``(m,)`` labels: the first ``m // 2`` are -1, the rest +1. With ``n_classes > 2``,
    class indices (int64) in equal blocks, ``0 ... 0, 1 ... 1, ...`` (as equal as ``m``
    allows), the multiclass follow-up's assignment."""
    if n_classes > 2:
        return torch.arange(m, device=device) * n_classes // m
    y = torch.ones(m, dtype=dtype, device=device)
    y[: m // 2] = -1
    return y


def _box(config: ReconConfig, mean: torch.Tensor | None, like: torch.Tensor):
    if config.box == "paper":
        return -1.0, 1.0
    if config.box == "none":  # inputs of unknown range (feature vectors): no prior at all
        return -float("inf"), float("inf")
    if mean is None:
        raise ValueError(
            "box='valid' keeps pixels in [-mean, 1 - mean] and needs the training mean; pass "
            "mean=task.mean, or use box='paper'"
        )
    mean = mean.to(like.device, like.dtype)
    if mean.dim() != like.dim() or mean.shape[1:] != like.shape[1:]:
        raise ValueError(
            f"mean must have shape (1, {', '.join(map(str, like.shape[1:]))}), got "
            f"{tuple(mean.shape)}"
        )
    return -mean, 1.0 - mean


def stationarity_loss(
    model: MLP, x: torch.Tensor, lam: torch.Tensor, y: torch.Tensor, alpha: float | None
) -> torch.Tensor:
    """``|| theta - (1/m) grad_theta sum_j lam_j y_j Phi(theta; x_j) ||^2`` (theta detached).

    Differentiable in ``x`` and ``lam`` (the inner gradient is built with a graph).
    x: ``(m, *input_shape)``; lam, y: ``(m,)``. The model's parameters must require grad.
    Multiclass models: ``y`` holds class indices and ``y_j Phi(x_j)`` becomes the margin
    ``Phi_{y_j}(x_j) - max_{c != y_j} Phi_c(x_j)`` (Buzaglo et al., 2023).
    """
    params = model.theta()
    out = model(x, alpha=alpha)
    if lam.dim() == 2:  # a multiplier per wrong class: sum_c lam_jc (Phi_y - Phi_c)
        wrong = wrong_classes(y, out.shape[1])
        terms = (out.gather(1, y.long()[:, None]) - out.gather(1, wrong)) * lam
    else:
        terms = output_margins(out, y) * lam
    grads = torch.autograd.grad(terms.sum() / len(x), params, create_graph=True)
    return sum((p.detach() - g).pow(2).sum() for p, g in zip(params, grads))


def total_variation(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Isotropic total variation of each image, averaged over pixels: ``(m,)``.

    ``mean_{c,h,w} sqrt((x[h+1,w] - x[h,w])^2 + (x[h,w+1] - x[h,w])^2 + eps)`` for ``x`` of
    shape ``(m, C, H, W)``. Small for piecewise-smooth images, large for pixel noise.
    """
    if x.dim() != 4 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"total variation needs images (m, C, H, W) with H, W >= 2, got "
                         f"shape {tuple(x.shape)}; set tv=0 for other inputs")
    dh = x[:, :, 1:, :-1] - x[:, :, :-1, :-1]
    dw = x[:, :, :-1, 1:] - x[:, :, :-1, :-1]
    return (dh.pow(2) + dw.pow(2) + eps).sqrt().flatten(1).mean(1)


_BASES: dict[tuple[str, float], torch.Tensor] = {}  # (weights fingerprint, tol) -> basis


def first_layer_basis(model: MLP, tol: float, fingerprint: str | None = None) -> torch.Tensor:
    """Orthonormal basis ``(D, k)`` of the first layer's row space: the right singular vectors
    of ``W1`` (flattened to ``(width, D)``) whose singular value exceeds ``tol`` times the
    largest.

    Gradient descent changes ``W1`` only by sums of outer products ``g_i x_i^T``, so once a
    small initialisation is forgotten (weight decay) or negligible, every training image lies
    in this space, and ``k`` is about the number of training images that carry weight.

    ``fingerprint``: an identifier of the weights (as :func:`reconstruct` computes it); with
    it, the basis is computed once per model and tolerance and reused (a sweep reconstructs
    against the same model hundreds of times; the SVD of a 1000 x 3072 matrix takes a second).
    """
    if 0 in model.frozen:
        raise ValueError("the first layer is frozen (not trained): its rows do not span the "
                         "training images; set subspace_tol=0")
    if not 0 < tol < 1:
        raise ValueError(f"tol must be in (0, 1), got {tol!r}")
    key = (fingerprint, float(tol))
    if fingerprint is not None and key in _BASES:
        return _BASES[key]
    w = model.layers[0].weight.detach().double().cpu()
    _, s, vh = torch.linalg.svd(w, full_matrices=False)
    k = int((s > tol * s[0]).sum())
    basis = vh[:k].T.contiguous()
    if fingerprint is not None:
        if len(_BASES) >= 8:
            _BASES.pop(next(iter(_BASES)))
        _BASES[key] = basis
    return basis


def kkt_loss_terms(
    model: MLP,
    x: torch.Tensor,
    lam: torch.Tensor,
    y: torch.Tensor,
    config: ReconConfig,
    lo,
    hi,
    theta2: float | None = None,
    mean: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The loss terms and their sum: ``{"stat", "lam", "prior", "tv", "tone", "kink", "loss"}``.

    ``theta2`` (``||theta||^2``, computed if not given) scales the optional TV, two-tone and
    kink priors so that their weights (``config.tv``, ``two_tone``, ``kinks``) do not depend on the
    scale of the weights. ``mean``: the training mean, needed for the two-tone prior.
    """
    stat = stationarity_loss(model, x, lam, y, config.alpha)
    lam_pen = 5 * torch.relu(config.lambda_min - lam).pow(2).sum()
    prior = torch.relu(x - hi).pow(2).sum() + torch.relu(lo - x).pow(2).sum()
    if theta2 is None and (config.tv > 0 or config.two_tone > 0 or config.kinks > 0):
        theta2 = model.theta_norm2(None)
    if config.tv > 0:
        tv = config.tv * theta2 * total_variation(x).mean()
    else:
        tv = torch.zeros((), dtype=x.dtype, device=x.device)
    if config.two_tone > 0:
        tone = config.two_tone * theta2 * two_tone_cost(x + _tone_mean(mean, x)).mean()
    else:
        tone = torch.zeros((), dtype=x.dtype, device=x.device)
    if config.kinks > 0:
        kink = config.kinks * theta2 * kink_cost(model, x, config.kink_scale).mean()
    else:
        kink = torch.zeros((), dtype=x.dtype, device=x.device)
    return {"stat": stat, "lam": lam_pen, "prior": prior, "tv": tv, "tone": tone, "kink": kink,
            "loss": stat + lam_pen + prior + tv + tone + kink}


def two_tone_cost(pixels: torch.Tensor) -> torch.Tensor:
    """The two-tone prior of each image, ``mean p (1 - p)`` over its pixel values ``p``
    clamped to ``[0, 1]``: ``(m,)``. Zero for an image of pure ink and paper; concave, so a
    blend ``t a + (1 - t) b`` of two images costs at least ``t`` times ``a``'s cost plus
    ``1 - t`` times ``b``'s, more wherever one has ink and the other paper."""
    q = pixels.clamp(0, 1).flatten(1)
    return (q * (1 - q)).mean(1)


def kink_cost(model: MLP, x: torch.Tensor, scale: float = 1e-3) -> torch.Tensor:
    """The kink prior of each candidate, ``mean_k 1 - exp(-|w_k . x + b_k| / scale)`` over the
    first layer's units ``k``: ``(m,)``, in [0, 1). It falls by about ``1 / width`` for each of
    the first layer's hyperplanes (where the ReLU has its kink) that an input sits on; training
    images of a model trained with weight decay sit on several times more of them than test
    images (``recon.probes.kink_membership``), and a blend ``t a + (1 - t) b`` of two such
    images sits only where both do. Chapter 6 measures it as a prior: the search puts
    candidates on the hyperplanes without making them training images."""
    layer = model.layers[0]
    z = x.flatten(1).to(layer.weight) @ layer.weight.detach().T + layer.bias.detach()
    return (1 - _near_kink(z, scale)).mean(1).to(x.dtype)


def _near_kink(z: torch.Tensor, scale: float) -> torch.Tensor:
    """``exp(-|z| / scale)``, 1 on a kink and 0 far from it: the kink prior's term is one minus
    it, and its gradient ``sign(z)`` times it over ``scale``. The argument is clamped: exp of a
    large negative number is subnormal, and subnormal arithmetic is slow on a CPU."""
    return torch.exp(-(z.abs() / scale).clamp(max=30))


def _tone_mean(mean: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    """The training mean, ready to add to candidates like ``like`` (the two-tone prior needs
    each pixel's value, ``x + mean``)."""
    if mean is None:
        raise ValueError("two_tone penalises pixel values x + mean and needs the training "
                         "mean; pass mean=task.mean, or set two_tone=0")
    mean = mean.to(like.device, like.dtype)
    if mean.numel() * like.shape[0] != like.numel():
        raise ValueError(f"mean has {mean.numel()} values but each candidate has "
                         f"{like[0].numel()}; pass the training mean of this model's data")
    return mean.reshape(1, *like.shape[1:])


def _optimizers(config: ReconConfig, x: torch.Tensor, lam: torch.Tensor):
    if config.optimizer == "sgd":
        return (torch.optim.SGD([x], lr=config.lr_x, momentum=0.9),
                torch.optim.SGD([lam], lr=config.lr_lambda, momentum=0.9))
    # fused: one pass over the candidates' state per step (CPU and CUDA kernels)
    return (torch.optim.Adam([x], lr=config.lr_x, fused=True),
            torch.optim.Adam([lam], lr=config.lr_lambda, fused=True))


def theta_fingerprint(model: MLP) -> str:
    """A short hash of every parameter of ``model`` (in float64): identifies the weights a
    reconstruction, a cached basis or a sweep study belongs to."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().double().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _save(path: Path, res: ReconResult, opts, fingerprint: str, z=None, gates=None) -> None:
    """Write the run; ``z``: the row-space coordinates, the exact state of a run with a basis
    (``x = z B^T`` is rounded, and resuming from it would not continue the same run);
    ``gates``: the free gates of a run with ``free_gates > 0``."""
    payload = {
        "format": RECON_FORMAT,
        "config": res.config.to_dict(),
        "theta_fingerprint": fingerprint,
        "x": res.x.detach().cpu(),
        "lam": res.lam.detach().cpu(),
        "y": res.y.cpu(),
        "history": res.history,
        "snapshots": {int(k): v.cpu() for k, v in res.snapshots.items()},
        "snapshot_lam": {int(k): v.cpu() for k, v in res.snapshot_lam.items()},
        "step": res.step,
        "wall_time": res.wall_time,
        "optimizers": [o.state_dict() for o in opts] if opts else [],
        "provenance": provenance(res.x.device),
    }
    if z is not None:
        payload["z"] = z.detach().cpu()
    if gates is not None:
        payload["gates"] = gates.detach().cpu()
    atomic_save(payload, path)


def load_reconstruction(path: str | os.PathLike) -> tuple[ReconResult, dict]:
    """Read a reconstruction file (``weights_only=True``); returns ``(result, raw)``.

    Files from earlier revisions are read as the current format: config fields added since
    take the value those runs had (:data:`ADDED_FIELDS`), and a missing prior's history is zeros.
    """
    path = Path(path)
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:
        raise ValueError(f"{path} is not a readable reconstruction file: {e}") from e
    if not isinstance(raw, dict) or raw.get("format") != RECON_FORMAT:
        raise ValueError(f"{path} is not a recon reconstruction file ({RECON_FORMAT})")
    try:
        res = ReconResult(
            x=raw["x"], lam=raw["lam"], y=raw["y"],
            config=ReconConfig(**{**ADDED_FIELDS, **raw["config"]}),
            history=raw["history"], snapshots={int(k): v for k, v in raw["snapshots"].items()},
            # files from before multipliers were kept with the snapshots have none
            snapshot_lam={int(k): v for k, v in raw.get("snapshot_lam", {}).items()},
            step=raw["step"], wall_time=raw["wall_time"],
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is an incomplete reconstruction file: {e!r}") from e
    for key in ("tv", "tone", "kink"):  # written before the TV, two-tone or kink prior existed
        if key not in res.history:
            res.history[key] = [0.0] * len(res.history.get("step", []))
    return res, raw


def _start(config: ReconConfig, shape, dtype, x_init, lam_init, y, n_classes: int = 1):
    """The starting candidates (CPU), multipliers and labels, validated."""
    m = config.n_candidates
    if config.all_classes and n_classes < 2:
        raise ValueError("all_classes needs a multiclass model (n_outputs > 1)")
    lam_shape = (m, n_classes - 1) if config.all_classes else (m,)
    gen = torch.Generator().manual_seed(config.seed)
    if x_init is None:
        x0 = torch.randn(shape, generator=gen, dtype=dtype) * config.init_scale
    else:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init must have shape {shape} (n_candidates={m}), got "
                             f"{tuple(x_init.shape)}")
        x0 = x_init.detach().to(dtype).cpu().clone()
    lam0 = (torch.rand(m, generator=gen, dtype=dtype) if lam_init is None
            else lam_init.detach())
    if config.all_classes and lam_init is None:  # the same total, spread over the classes
        lam0 = lam0[:, None] * torch.full(lam_shape, 1.0 / (n_classes - 1), dtype=dtype)
    y = balanced_labels(m, dtype, n_classes=n_classes) if y is None else y.detach()
    if tuple(lam0.shape) != lam_shape or tuple(y.shape) != (m,):
        raise ValueError(f"lam_init must have shape {lam_shape} and y ({m},)")
    if n_classes > 1:
        if m < n_classes:
            raise ValueError(f"n_candidates = {m} is fewer than the model's {n_classes} "
                             "classes; use at least one candidate per class")
        if y.is_floating_point() or int(y.min()) < 0 or int(y.max()) >= n_classes:
            raise ValueError(f"y must hold class indices 0..{n_classes - 1} (int64) for a "
                             f"model with {n_classes} outputs")
    elif not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("y must hold only -1 and +1")
    return x0, lam0, y


class _Run:
    """One reconstruction in progress on a device: the network, the row-space basis, the
    state (coordinates ``z``, multipliers, labels), the optimisers and the result so far.

    The state is ``z``: the candidates' coordinates in the basis, or without a basis the
    flattened candidates themselves. The optimiser's parameter ``px`` lives in pixel space:
    without a basis it is the candidates (``z`` is a view of it); with one, a zero buffer
    that receives each step's update (the updates of Adam and of SGD with momentum do not
    depend on the parameter's value), which is then projected onto the basis.
    """

    def __init__(self, model: MLP, config: ReconConfig, mean, x_init, lam_init, y, device):
        check_supported(model)
        self.config = config
        self.dtype = dtype = torch.float64 if config.dtype == "float64" else torch.float32
        self.device = device = (torch.device(device) if device is not None
                                else next(model.parameters()).device)
        net = copy.deepcopy(model).to(device, dtype)
        self.fingerprint = theta_fingerprint(net)
        m = config.n_candidates
        self.shape = shape = (m, *net.input_shape)
        x0, lam0, y = _start(config, shape, dtype, x_init, lam_init, y,
                             net.n_outputs if net.multiclass else 1)
        self.basis = basis = None
        self.refined = False
        if config.subspace_tol > 0:
            self.basis = basis = first_layer_basis(
                net, config.subspace_tol, self.fingerprint).to(device, dtype)
        self.half = half = HALF.get(resolve_precision(config.matmul, device, dtype))
        if device.type == "cpu":
            keep_freed_memory()
        self.net = net
        self.stat_fn = self._stationarity()
        self.theta2 = self.stat_fn.theta2
        self.basis_h = None if basis is None or half is None else basis.to(half)

        x0 = x0.to(device)
        if basis is None:
            self.px = x0.clone()
            self.z = self.px.view(m, -1)
        else:
            self.px = torch.zeros(shape, dtype=dtype, device=device)
            self.z = self.to_coords(x0.flatten(1), exact=True)
            if x_init is None:  # a random start in the span, with the same expected norm
                self.z = self.z * (x0[0].numel() / basis.shape[1]) ** 0.5
        self.px.requires_grad_(True)
        self.lam = lam0.to(device, dtype).clone().requires_grad_(True)
        self.ydt = torch.long if net.multiclass else dtype
        self.y = y.to(device, self.ydt)
        self.tone_mean = (_tone_mean(mean, x0.to(device, dtype)).flatten(1)
                          if config.two_tone > 0 else None)
        lo, hi = _box(config, mean, x0)
        self.lo, self.hi = (
            v.flatten(1) if torch.is_tensor(v) else torch.tensor(v, dtype=dtype, device=device)
            for v in (lo, hi))
        self.opts = _optimizers(config, self.px, self.lam)
        self.gates = None
        if config.free_gates > 0:  # the first layer's free gates, one per candidate and unit
            width = net.layers[0].weight.shape[0]
            self.gates = torch.full((m, width), 0.5, dtype=dtype, device=device)
            self.gates.requires_grad_(True)
            self.opts = (*self.opts, torch.optim.Adam([self.gates], lr=config.lr_gate))
        keys = ("step", "loss", "stat", "stat_rel", "lam_pen", "prior", "tv", "tone", "kink")
        self.res = ReconResult(x0.cpu(), self.lam, y.cpu(), config, {k: [] for k in keys})

    def _stationarity(self) -> Stationarity:
        c = self.config
        return Stationarity(self.net, self.basis, alpha=c.alpha, dtype=self.dtype,
                            matmul=self.half, device=self.device, free_band=c.free_gates,
                            free_shape=c.free_gates_shape)

    def refine(self) -> None:
        """From now on, the row space at the cut-off ``refine_tol`` (``refine_share``): the
        candidates keep their pixels (the narrow space lies inside the wide one) and the
        optimiser its state, which lives in pixel space."""
        x = self.to_pixels(self.z.detach(), exact=True)
        self.basis = first_layer_basis(self.net, self.config.refine_tol,
                                       self.fingerprint).to(self.device, self.dtype)
        self.basis_h = None if self.half is None else self.basis.to(self.half)
        self.stat_fn = self._stationarity()
        self.z = self.to_coords(x, exact=True)
        self.refined = True

    def to_coords(self, v: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """(m, D) pixels -> (m, k) coordinates (identity without a basis); ``exact=False``
        multiplies in the run's product precision."""
        if self.basis is None:
            return v
        if exact or self.half is None:
            return v @ self.basis
        return (v.to(self.half) @ self.basis_h).to(self.dtype)

    def to_pixels(self, z: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """(m, k) coordinates -> (m, D) pixels, the candidates ``x = z B^T``."""
        if self.basis is None:
            return z
        if exact or self.half is None:
            return z @ self.basis.T
        return (z.to(self.half) @ self.basis_h.T).to(self.dtype)

    def full_precision(self) -> None:
        """From now on, every product in the working precision (``finish_full``)."""
        self.half = self.basis_h = None
        self.stat_fn.full_precision()

    def current_x(self) -> torch.Tensor:
        """The candidates now, ``(m, *input_shape)`` on the CPU."""
        return self.to_pixels(self.z.detach(), exact=True).view(self.shape).cpu().clone()

    def snapshot(self) -> None:
        """Keep the candidates and their multipliers at the current step."""
        self.res.snapshots[self.res.step] = self.current_x()
        self.res.snapshot_lam[self.res.step] = self.lam.detach().cpu().clone()

    def save(self, path: Path) -> None:
        self.res.x, self.res.lam = self.current_x(), self.lam.detach().cpu()
        _save(path, self.res, self.opts, self.fingerprint,
              self.z if self.basis is not None else None, self.gates)

    def resume(self, path: Path) -> None:
        """Continue the run saved at ``path``: it must be this config's run on these weights
        (its length aside)."""
        prev, raw = load_reconstruction(path)
        if (not same_but_length(prev.config.to_dict(), self.config.to_dict(), "steps")
                or raw["theta_fingerprint"] != self.fingerprint):
            raise ValueError(
                f"{path} holds a run with another config or other weights; pass another "
                "checkpoint path, or delete the file to start over"
            )
        if (self.config.refine_share > 0 and not self.refined
                and prev.step >= self.config.switch_step(self.config.refine_share)):
            self.refine()
        with torch.no_grad():
            saved_z = raw.get("z")
            if self.basis is not None and saved_z is not None and saved_z.shape == self.z.shape:
                self.z.copy_(saved_z)
            else:
                self.z.copy_(self.to_coords(prev.x.to(self.device, self.dtype).flatten(1),
                                            exact=True))
            self.lam.copy_(prev.lam)
            if self.gates is not None and raw.get("gates") is not None:
                self.gates.copy_(raw["gates"])
        self.y = prev.y.to(self.device, self.ydt)
        for opt, state in zip(self.opts, raw["optimizers"]):
            opt.load_state_dict(state)
        res = self.res
        res.y, res.history, res.snapshots = prev.y, prev.history, prev.snapshots
        res.snapshot_lam = prev.snapshot_lam
        res.step, res.wall_time = prev.step, prev.wall_time

    def step(self) -> dict[str, torch.Tensor]:
        """One optimisation step; returns the loss terms at the point it started from."""
        config, shape = self.config, self.shape
        with torch.no_grad():
            x = self.to_pixels(self.z).to(self.dtype)
            out = x - x.clamp(self.lo, self.hi)  # how far each pixel lies outside the box
            prior = torch.dot(out.view(-1), out.view(-1))
            g_pix = 2 * out  # gradient of the box prior
            if self.gates is None:
                stat, g_z, g_lam = self.stat_fn(self.z, self.lam, self.y)
            else:
                stat, g_z, g_lam, g_gate = self.stat_fn(self.z, self.lam, self.y,
                                                        self.gates.detach())
            # the floor applies to each candidate's total multiplier
            total = self.lam.sum(1) if self.lam.dim() == 2 else self.lam
            short = torch.relu(config.lambda_min - total)
            lam_pen = 5 * short.pow(2).sum()
            g_lam = g_lam - 10 * (short[:, None] if self.lam.dim() == 2 else short)
        if config.tv > 0:
            xt = x.detach().view(shape).requires_grad_(True)
            tv = config.tv * self.theta2 * total_variation(xt).mean()
            (g_tv,) = torch.autograd.grad(tv, xt)
            g_pix = g_pix + g_tv.flatten(1)
            tv = tv.detach()
        else:
            tv = torch.zeros((), dtype=self.dtype, device=self.device)
        if config.two_tone > 0:  # w mean q (1 - q), q the pixel values clamped to [0, 1]
            with torch.no_grad():
                p = x + self.tone_mean
                q = p.clamp(0, 1)
                w = config.two_tone * self.theta2 / q.numel()
                tone = w * (q * (1 - q)).sum()
                g_pix = g_pix + w * (1 - 2 * q) * ((p > 0) & (p < 1))
        else:
            tone = torch.zeros((), dtype=self.dtype, device=self.device)
        if config.kinks > 0:  # w mean 1 - exp(-|z| / s), z the first layer's pre-activations
            with torch.no_grad():
                layer = self.net.layers[0]
                z = x @ layer.weight.T + layer.bias
                e = _near_kink(z, config.kink_scale)
                w = config.kinks * self.theta2 / z.numel()
                kink = w * (1 - e).sum()
                g_pix = g_pix + (w / config.kink_scale) * (torch.sign(z) * e) @ layer.weight
        else:
            kink = torch.zeros((), dtype=self.dtype, device=self.device)
        terms = {"loss": stat + lam_pen + prior + tv + tone + kink, "stat": stat,
                 "lam_pen": lam_pen, "prior": prior, "tv": tv, "tone": tone, "kink": kink}
        if not torch.isfinite(terms["loss"]):
            return terms  # the caller raises; nothing is updated
        with torch.no_grad():
            if self.basis is None:
                self.px.grad = (g_z + g_pix).view(shape)
            else:  # the pixel gradient of L(z B^T), projected: (dL/dz + g_pix B) B^T
                g = self.to_pixels(g_z + self.to_coords(g_pix))
                self.px.grad = g.to(self.dtype).view(shape)
            self.lam.grad = g_lam
            if self.gates is not None:
                self.gates.grad = g_gate
            for opt in self.opts:
                opt.step()
            if self.gates is not None:
                self.gates.clamp_(0, 1)
            if self.basis is not None:
                self.z += self.to_coords(self.px.view(shape[0], -1))
                self.px.zero_()
        return terms

    def log(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        h = self.res.history
        h["step"].append(step)
        for key, value in terms.items():
            h[key].append(value.item())
        h["stat_rel"].append(h["stat"][-1] / self.theta2)


def reconstruct(
    model: MLP,
    config: ReconConfig,
    *,
    mean: torch.Tensor | None = None,
    x_init: torch.Tensor | None = None,
    lam_init: torch.Tensor | None = None,
    y: torch.Tensor | None = None,
    snapshot_steps: tuple[int, ...] = (),
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 500,
    device: str | torch.device | None = None,
    progress: bool = True,
    stop_at: int | None = None,
) -> ReconResult:
    """Run the KKT reconstruction against ``model``'s parameters.

    Args:
        model: a trained :class:`recon.models.MLP` (left unchanged; a copy is used).
        config: hyperparameters (:class:`ReconConfig`).
        mean: ``(1, C, H, W)`` training mean, needed for ``box="valid"``.
        x_init, lam_init, y: optional starting candidates ``(m, *input_shape)``, multipliers
            ``(m,)`` and labels ``(m,)`` in {-1, +1} (e.g. the true training set, as a positive
            control); by default ``x ~ N(0, 1) * init_scale``, ``lam ~ U(0, 1)``, balanced y.
            With ``config.subspace_tol > 0`` every start, ``x_init`` included, is projected onto
            the first layer's row space (use ``subspace_tol=0`` for an unconstrained control).
        snapshot_steps: steps at which to keep a copy of ``x`` and of ``lam`` (step 0 is the
            start).
        checkpoint: file to save the run to every ``checkpoint_every`` steps and at the end;
            if it exists (same config and same weights) the run resumes from it, and
            ``x_init``/``lam_init``/``y`` are ignored in favour of the saved state.
        device: where to run (default: the model's device).
        stop_at: stop after this many steps of the run (saving the checkpoint), to go on later
            by calling again with the same config and checkpoint. The run's schedule
            (``finish_full``, ``refine_share``) stays a share of ``config.steps``, so a run in
            such chunks is the run in one go; shortening ``config.steps`` per chunk instead
            would move the switches into every chunk.

    Returns a :class:`ReconResult` on the CPU. ``history["stat_rel"]`` is the stationarity
    loss divided by ``||theta||^2``: the fraction of the weights the candidates fail to explain.
    Raises :class:`ReconstructionDiverged` for a non-finite loss or a residual that ends above
    ``EXPLODED_STAT_REL`` times ``||theta||^2`` (the checkpoint, if any, is kept).

    How a step is computed. With the row space on, each candidate is held as its coordinates
    ``z`` in the basis ``B`` of :func:`first_layer_basis` (``x = z B^T``), and the
    stationarity loss and its gradient come from :class:`recon.stationarity.Stationarity`,
    where the first layer works on ``k`` coordinates instead of ``D`` pixels. The optimiser
    still sees the pixel-space gradient ``(dL/dz) B^T`` and proposes a pixel-space update,
    which is projected back (``z += update B``): the same trajectory as optimising ``x`` and
    projecting it onto the span after every step, at a fraction of the cost.
    """
    if stop_at is not None and stop_at < 0:
        raise ValueError(f"stop_at is a step of the run, >= 0; got {stop_at}")
    run = _Run(model, config, mean, x_init, lam_init, y, device)
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.is_file():
        run.resume(path)
    end = config.steps if stop_at is None else min(stop_at, config.steps)
    _loop(run, snapshot_steps, path, checkpoint_every, progress, end)
    return run.res


def _loop(run: _Run, snapshot_steps, path: Path | None, checkpoint_every: int,
          progress: bool, end: int) -> None:
    """Step ``run`` to step ``end`` (at most ``config.steps``), logging, snapshotting and
    checkpointing on the way."""
    config, res = run.config, run.res
    t0 = time.perf_counter() - res.wall_time
    if 0 in snapshot_steps and res.step == 0:
        run.snapshot()
    bar = tqdm(range(res.step, end), desc="reconstruct", disable=not progress,
               initial=res.step, total=config.steps)
    # the steps from which the products run in full precision (config.finish_full) and the
    # row space widens (config.refine_share)
    switch = config.switch_step(config.finish_full)
    widen = config.switch_step(config.refine_share) if config.refine_share > 0 else None
    for step in bar:
        if step >= switch and run.half is not None:
            run.full_precision()
        if widen is not None and step >= widen and not run.refined:
            run.refine()
        terms = run.step()
        if not torch.isfinite(terms["loss"]):
            raise ReconstructionDiverged(
                f"reconstruction diverged at step {step} (loss {terms['loss'].item()}); lower "
                "lr_x or lr_lambda, or rescale the model's weights"
                + (f" (last checkpoint kept: {path})" if path is not None else "")
            )
        res.step = step + 1
        if step % config.log_every == 0 or res.step == config.steps:
            run.log(step, terms)
            bar.set_postfix(stat_rel=f"{res.history['stat_rel'][-1]:.3g}")
        if res.step in snapshot_steps:
            run.snapshot()
        if path is not None and res.step % checkpoint_every == 0:
            res.wall_time = time.perf_counter() - t0
            run.save(path)
    res.wall_time = time.perf_counter() - t0
    if path is not None:
        run.save(path)
    res.x, res.lam = run.current_x(), run.lam.detach().cpu()
    final = res.history["stat_rel"][-1] if res.history["stat_rel"] else 0.0
    if final > EXPLODED_STAT_REL:
        raise ReconstructionDiverged(
            f"reconstruction exploded: the stationarity residual ends at {final:.3g} x "
            f"||theta||^2 after {res.step} steps (a random start is at about 1); lower lr_x or "
            "lr_lambda" + (f" (the run is saved for inspection: {path})" if path else ""))
