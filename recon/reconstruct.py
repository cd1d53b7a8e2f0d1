"""Reconstruct training images from a trained network's weights (Haim et al., 2022).

Given trained parameters ``theta``, look for ``m`` inputs ``x_j`` with fixed balanced labels
``y_j`` and multipliers ``lambda_j`` that satisfy the stationarity condition of the KKT
conditions of margin maximisation. The loss, term by term (Haim et al., 2022, Section 3):

    L_stat  = || theta - (1/m) grad_theta sum_j lambda_j y_j Phi(theta; x_j) ||^2
    L_lam   = 5 sum_j relu(lambda_min - lambda_j)^2
    L_prior = sum relu(x - hi)^2 + relu(lo - x)^2
    L_tv    = tv ||theta||^2 mean_j TV(x_j)        (optional image prior, off by default)
    L       = L_stat + L_lam + L_prior + L_tv

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
from .models import MLP, check_supported
from .provenance import provenance
from .stationarity import Stationarity

__all__ = [
    "ReconConfig",
    "ReconResult",
    "kkt_loss_terms",
    "stationarity_loss",
    "total_variation",
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
ADDED_FIELDS = {"tv": 0.0, "subspace_tol": 0.0, "matmul": "full"}
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
    box: str = "valid"  # "valid": [-mean, 1 - mean]; "paper": [-1, 1]
    dtype: str = "float32"
    seed: int = 0
    log_every: int = 50
    tv: float = 0.0  # weight of the total-variation prior, relative to ||theta||^2 (0: off)
    # > 0: keep candidates in the row space of the first layer's weights (the directions
    # with singular value above subspace_tol times the largest); 0: off (the paper)
    subspace_tol: float = 3e-5
    # precision of the matrix products of each step: "full" (dtype), "bfloat16" / "float16"
    # (residuals, sums and the optimiser's state stay in dtype), or "auto": bfloat16 for
    # float32 runs where the hardware multiplies it fast (AMX / AVX-512 BF16 CPUs, Ampere and
    # newer GPUs), else full
    matmul: str = "auto"

    def __post_init__(self) -> None:
        if self.n_candidates < 2:
            raise ValueError("n_candidates must be at least 2 (half get y=-1, half y=+1)")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")
        if self.box not in ("valid", "paper"):
            raise ValueError(f"box must be 'valid' or 'paper', got {self.box!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        for name in ("lr_x", "lr_lambda", "init_scale", "alpha"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not (0 <= self.subspace_tol < 1):
            raise ValueError(f"subspace_tol must be in [0, 1), got {self.subspace_tol!r}")
        if not (self.tv >= 0 and self.tv < float("inf")):
            raise ValueError(f"tv must be a finite number >= 0, got {self.tv!r}")
        if self.matmul not in PRECISIONS:
            raise ValueError(f"matmul must be one of {PRECISIONS}, got {self.matmul!r}")
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


@dataclass
class ReconResult:
    """Candidates ``x`` ``(m, C, H, W)`` (mean-subtracted space), multipliers ``lam`` ``(m,)``,
    labels ``y`` ``(m,)``, the loss history, snapshots ``{step: x}`` and the run's config."""

    x: torch.Tensor
    lam: torch.Tensor
    y: torch.Tensor
    config: ReconConfig
    history: dict[str, list[float]] = field(default_factory=dict)
    snapshots: dict[int, torch.Tensor] = field(default_factory=dict)
    step: int = 0
    wall_time: float = 0.0

    def final(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.history.items() if v}


def balanced_labels(m: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(m,)`` labels: the first ``m // 2`` are -1, the rest +1."""
    y = torch.ones(m, dtype=dtype, device=device)
    y[: m // 2] = -1
    return y


def _box(config: ReconConfig, mean: torch.Tensor | None, like: torch.Tensor):
    if config.box == "paper":
        return -1.0, 1.0
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
    """
    params = model.theta()
    out = model(x, alpha=alpha)
    grads = torch.autograd.grad((out * lam * y).sum() / len(x), params, create_graph=True)
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
) -> dict[str, torch.Tensor]:
    """The loss terms and their sum: ``{"stat", "lam", "prior", "tv", "loss"}``.

    ``theta2`` (``||theta||^2``, computed if not given) scales the optional TV prior so that
    its weight ``config.tv`` does not depend on the scale of the weights.
    """
    stat = stationarity_loss(model, x, lam, y, config.alpha)
    lam_pen = 5 * torch.relu(config.lambda_min - lam).pow(2).sum()
    prior = torch.relu(x - hi).pow(2).sum() + torch.relu(lo - x).pow(2).sum()
    if config.tv > 0:
        if theta2 is None:
            theta2 = model.theta_norm2(None)
        tv = config.tv * theta2 * total_variation(x).mean()
    else:
        tv = torch.zeros((), dtype=x.dtype, device=x.device)
    return {"stat": stat, "lam": lam_pen, "prior": prior, "tv": tv,
            "loss": stat + lam_pen + prior + tv}


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


def _save(path: Path, res: ReconResult, opts, fingerprint: str, z=None) -> None:
    """Write the run; ``z``: the row-space coordinates, the exact state of a run with a basis
    (``x = z B^T`` is rounded, and resuming from it would not continue the same run)."""
    payload = {
        "format": RECON_FORMAT,
        "config": res.config.to_dict(),
        "theta_fingerprint": fingerprint,
        "x": res.x.detach().cpu(),
        "lam": res.lam.detach().cpu(),
        "y": res.y.cpu(),
        "history": res.history,
        "snapshots": {int(k): v.cpu() for k, v in res.snapshots.items()},
        "step": res.step,
        "wall_time": res.wall_time,
        "optimizers": [o.state_dict() for o in opts] if opts else [],
        "provenance": provenance(res.x.device),
    }
    if z is not None:
        payload["z"] = z.detach().cpu()
    atomic_save(payload, path)


def load_reconstruction(path: str | os.PathLike) -> tuple[ReconResult, dict]:
    """Read a reconstruction file (``weights_only=True``); returns ``(result, raw)``."""
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
            step=raw["step"], wall_time=raw["wall_time"],
        )
    except (KeyError, TypeError) as e:
        raise ValueError(f"{path} is an incomplete reconstruction file: {e!r}") from e
    return res, raw


def _start(config: ReconConfig, shape, dtype, x_init, lam_init, y):
    """The starting candidates (CPU), multipliers and labels, validated."""
    m = config.n_candidates
    gen = torch.Generator().manual_seed(config.seed)
    if x_init is None:
        x0 = torch.randn(shape, generator=gen, dtype=dtype) * config.init_scale
    else:
        if tuple(x_init.shape) != shape:
            raise ValueError(f"x_init must have shape {shape} (n_candidates={m}), got "
                             f"{tuple(x_init.shape)}")
        x0 = x_init.detach().to(dtype).cpu().clone()
    lam0 = torch.rand(m, generator=gen, dtype=dtype) if lam_init is None else lam_init.detach()
    y = balanced_labels(m, dtype) if y is None else y.detach()
    if tuple(lam0.shape) != (m,) or tuple(y.shape) != (m,):
        raise ValueError(f"lam_init and y must have shape ({m},)")
    if not bool(((y == 1) | (y == -1)).all()):
        raise ValueError("y must hold only -1 and +1")
    return x0, lam0, y


def _resume(path: Path, config: ReconConfig, fingerprint: str):
    """The saved run at ``path`` if it is this config's run on these weights, else an error."""
    prev, raw = load_reconstruction(path)
    saved = {**ADDED_FIELDS, **raw["config"]}  # files from before a field existed
    same = {k: v for k, v in saved.items() if k != "steps"} == {
        k: v for k, v in config.to_dict().items() if k != "steps"}
    if not same or raw["theta_fingerprint"] != fingerprint:
        raise ValueError(
            f"{path} holds a run with another config or other weights; pass another "
            "checkpoint path, or delete the file to start over"
        )
    if "tv" not in prev.history:  # written before the TV prior existed
        prev.history["tv"] = [0.0] * len(prev.history.get("step", []))
    return prev, raw


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
        snapshot_steps: steps at which to keep a copy of ``x`` (step 0 is the start).
        checkpoint: file to save the run to every ``checkpoint_every`` steps and at the end;
            if it exists (same config and same weights) the run resumes from it, and
            ``x_init``/``lam_init``/``y`` are ignored in favour of the saved state.
        device: where to run (default: the model's device).

    Returns a :class:`ReconResult` on the CPU. ``history["stat_rel"]`` is the stationarity
    loss divided by ``||theta||^2``: the fraction of the weights the candidates fail to explain.

    How a step is computed. With the row space on, each candidate is held as its coordinates
    ``z`` in the basis ``B`` of :func:`first_layer_basis` (``x = z B^T``), and the
    stationarity loss and its gradient come from :class:`recon.stationarity.Stationarity`,
    where the first layer works on ``k`` coordinates instead of ``D`` pixels. The optimiser
    still sees the pixel-space gradient ``(dL/dz) B^T`` and proposes a pixel-space update,
    which is projected back (``z += update B``): the same trajectory as optimising ``x`` and
    projecting it onto the span after every step, at a fraction of the cost.
    """
    check_supported(model)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    device = torch.device(device) if device is not None else next(model.parameters()).device
    net = copy.deepcopy(model).to(device, dtype)
    fingerprint = theta_fingerprint(net)
    m = config.n_candidates
    shape = (m, *net.input_shape)
    x0, lam0, y = _start(config, shape, dtype, x_init, lam_init, y)
    basis = None
    if config.subspace_tol > 0:
        basis = first_layer_basis(net, config.subspace_tol, fingerprint).to(device, dtype)
    half = HALF.get(resolve_precision(config.matmul, device, dtype))
    if device.type == "cpu":
        keep_freed_memory()
    stat_fn = Stationarity(net, basis, alpha=config.alpha, dtype=dtype, matmul=half,
                           device=device)
    theta2 = stat_fn.theta2

    def cast(t):
        return t if half is None else t.to(half)

    basis_h = None if basis is None else cast(basis)

    def to_coords(v: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """(m, D) pixels -> (m, k) coordinates (identity without a basis)."""
        if basis is None:
            return v
        return v @ basis if exact else (cast(v) @ basis_h).to(dtype)

    def to_pixels(z: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """(m, k) coordinates -> (m, D) pixels, the candidates ``x = z B^T``."""
        if basis is None:
            return z
        return z @ basis.T if exact else (cast(z) @ basis_h.T).to(dtype)

    # The state is z: the coordinates, or without a basis the flattened candidates. The
    # optimiser's parameter px lives in pixel space: without a basis it is the candidates
    # (z is a view of it); with one, a zero buffer that receives each step's update (the
    # updates of Adam and of SGD with momentum do not depend on the parameter's value).
    x0 = x0.to(device)
    if basis is None:
        px = x0.clone()
        z = px.view(m, -1)
    else:
        px = torch.zeros(shape, dtype=dtype, device=device)
        z = to_coords(x0.flatten(1), exact=True)
        if x_init is None:  # a random start in the span, with the same expected norm
            z = z * (x0[0].numel() / basis.shape[1]) ** 0.5
    px.requires_grad_(True)
    lam = lam0.to(device, dtype).clone()
    y = y.to(device, dtype)
    lo, hi = _box(config, mean, x0)
    lo, hi = (v.flatten(1) if torch.is_tensor(v) else torch.tensor(v, dtype=dtype, device=device)
              for v in (lo, hi))
    lam.requires_grad_(True)
    opt_x, opt_l = _optimizers(config, px, lam)

    keys = ("step", "loss", "stat", "stat_rel", "lam_pen", "prior", "tv")
    res = ReconResult(x0.cpu(), lam, y.cpu(), config, {k: [] for k in keys})
    path = Path(checkpoint) if checkpoint else None
    if path is not None and path.is_file():
        prev, raw = _resume(path, config, fingerprint)
        with torch.no_grad():
            saved_z = raw.get("z")
            if basis is not None and saved_z is not None and saved_z.shape == z.shape:
                z.copy_(saved_z)
            else:
                z.copy_(to_coords(prev.x.to(device, dtype).flatten(1), exact=True))
            lam.copy_(prev.lam)
        y = prev.y.to(device, dtype)
        res.y = prev.y
        opt_x.load_state_dict(raw["optimizers"][0])
        opt_l.load_state_dict(raw["optimizers"][1])
        res.history, res.snapshots = prev.history, prev.snapshots
        res.step, res.wall_time = prev.step, prev.wall_time

    def current_x() -> torch.Tensor:
        return to_pixels(z.detach(), exact=True).view(shape).cpu().clone()

    def save() -> None:
        res.x, res.lam = current_x(), lam.detach().cpu()
        _save(path, res, (opt_x, opt_l), fingerprint, z if basis is not None else None)

    t0 = time.perf_counter() - res.wall_time
    if 0 in snapshot_steps and res.step == 0:
        res.snapshots[0] = current_x()
    bar = tqdm(range(res.step, config.steps), desc="reconstruct", disable=not progress,
               initial=res.step, total=config.steps)
    for step in bar:
        with torch.no_grad():
            x = to_pixels(z).to(dtype)
            out = x - x.clamp(lo, hi)  # how far each pixel lies outside the box
            prior = torch.dot(out.view(-1), out.view(-1))
            g_pix = 2 * out  # gradient of the box prior
            stat, g_z, g_lam = stat_fn(z, lam, y)
            short = torch.relu(config.lambda_min - lam)
            lam_pen = 5 * short.pow(2).sum()
            g_lam = g_lam - 10 * short
        if config.tv > 0:
            xt = x.detach().view(shape).requires_grad_(True)
            tv = config.tv * theta2 * total_variation(xt).mean()
            (g_tv,) = torch.autograd.grad(tv, xt)
            g_pix = g_pix + g_tv.flatten(1)
            tv = tv.detach()
        else:
            tv = torch.zeros((), dtype=dtype, device=device)
        loss = stat + lam_pen + prior + tv
        if not torch.isfinite(loss):
            raise ReconstructionDiverged(
                f"reconstruction diverged at step {step} (loss {loss.item()}); lower lr_x or "
                "lr_lambda, or rescale the model's weights"
                + (f" (last checkpoint kept: {path})" if path is not None else "")
            )
        with torch.no_grad():
            if basis is None:
                px.grad = (g_z + g_pix).view(shape)
            else:  # the pixel gradient of L(z B^T), projected: (dL/dz + g_pix B) B^T
                px.grad = to_pixels(g_z + to_coords(g_pix)).to(dtype).view(shape)
            lam.grad = g_lam
            opt_x.step()
            opt_l.step()
            if basis is not None:
                z += to_coords(px.view(m, -1))
                px.zero_()
        res.step = step + 1
        if step % config.log_every == 0 or res.step == config.steps:
            h = res.history
            h["step"].append(step)
            h["loss"].append(loss.item())
            h["stat"].append(stat.item())
            h["stat_rel"].append(stat.item() / theta2)
            h["lam_pen"].append(lam_pen.item())
            h["prior"].append(prior.item())
            h["tv"].append(tv.item())
            bar.set_postfix(stat_rel=f"{h['stat_rel'][-1]:.3g}")
        if res.step in snapshot_steps:
            res.snapshots[res.step] = current_x()
        if path is not None and res.step % checkpoint_every == 0:
            res.wall_time = time.perf_counter() - t0
            save()
    res.wall_time = time.perf_counter() - t0
    if path is not None:
        save()
    res.x = current_x()
    res.lam = lam.detach().cpu()
    final = res.history["stat_rel"][-1] if res.history["stat_rel"] else 0.0
    if final > EXPLODED_STAT_REL:
        raise ReconstructionDiverged(
            f"reconstruction exploded: the stationarity residual ends at {final:.3g} x "
            f"||theta||^2 after {res.step} steps (a random start is at about 1); lower lr_x or "
            "lr_lambda" + (f" (the run is saved for inspection: {path})" if path else ""))
    return res
