"""2-D toy problems: see the implicit bias, the KKT conditions and the reconstruction.

Everything here works on points in the plane: a training set ``x`` of shape ``(n, 2)`` with
labels ``y`` in {-1, +1}, a :class:`recon.models.MLP` with ``input_shape=(2,)``, and
reconstruction candidates of shape ``(m, 2)``.

- :func:`alternating_arcs`: points on a circle, cut into arcs that alternate between the two
  classes. The ends of every arc lie next to the other class (they end up on the margin); the
  middles lie far from it.
- :func:`weight_decay_multipliers`: the exact multipliers of a network trained with weight
  decay, ``lambda_i = sigmoid(-margin_i) / (n * weight_decay)``.
- :func:`stationarity_residual`: ``||theta - sum_i lam_i y_i grad Phi_i||^2 / ||theta||^2``
  for given multipliers (the residual :func:`recon.kkt.kkt_diagnostic` minimises).
- :func:`nearest_same_label`, :func:`distinct_neurons`: matching and counting helpers.
- ``plot_*``: decision regions, multipliers, reconstruction candidates.
"""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import ListedColormap

from .kkt import stationarity_residual  # re-exported for chapter 1
from .models import MLP, check_supported
from .train import check_binary_data, margins

__all__ = [
    "CLASS_COLORS",
    "alternating_arcs",
    "weight_decay_multipliers",
    "stationarity_residual",
    "nearest_same_label",
    "distinct_neurons",
    "decision_grid",
    "plot_decision",
    "plot_multipliers",
    "plot_candidates",
]

# y = -1, y = +1 (colour-blind safe pair)
CLASS_COLORS = {-1: "#1f77b4", 1: "#ff7f0e"}
_REGION_COLORS = ["#d6e6f5", "#fde3c8"]


def alternating_arcs(
    n_arcs: int = 6,
    per_arc: int = 5,
    radius: float = 0.8,
    jitter: float = 0.5,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_arcs * per_arc`` points on a circle, in arcs that alternate between the classes.

    Point ``k`` sits at angle ``2 pi k / n + 0.3`` (plus a uniform jitter of up to
    ``jitter / 2`` of the spacing either way); arc ``a`` (points ``a*per_arc ...``) has label
    ``+1`` for even ``a`` and ``-1`` for odd ``a``.

    Returns ``x`` ``(n, 2)`` inside ``[-radius, radius]^2`` and ``y`` ``(n,)`` in {-1, +1}.
    """
    if n_arcs < 2 or n_arcs % 2:
        raise ValueError(f"n_arcs must be an even number >= 2 (classes alternate), got {n_arcs}")
    if per_arc < 1:
        raise ValueError(f"per_arc must be >= 1, got {per_arc}")
    if not 0 < radius <= 1:
        raise ValueError(f"radius must be in (0, 1] so the points lie in [-1, 1]^2, got {radius}")
    if not 0 <= jitter < 1:
        raise ValueError(f"jitter must be in [0, 1) (a fraction of the spacing), got {jitter}")
    n = n_arcs * per_arc
    gen = torch.Generator().manual_seed(seed)
    step = 2 * math.pi / n
    noise = (torch.rand(n, generator=gen, dtype=torch.float64) - 0.5) * jitter * step
    angle = torch.arange(n, dtype=torch.float64) * step + 0.3 + noise
    x = radius * torch.stack([torch.cos(angle), torch.sin(angle)], 1)
    arc = torch.arange(n) // per_arc
    y = torch.where(arc % 2 == 0, 1.0, -1.0).to(torch.float64)
    return x.to(dtype), y.to(dtype)


def weight_decay_multipliers(
    model: MLP, x: torch.Tensor, y: torch.Tensor, weight_decay: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multipliers of a stationary point of ``mean_i log(1 + exp(-m_i)) + wd/2 ||theta||^2``.

    Setting the gradient to zero gives
    ``theta = sum_i lam_i y_i grad Phi_i`` with ``lam_i = sigmoid(-m_i) / (n * wd)``, where
    ``m_i = y_i Phi(theta; x_i)``. Returns ``(lam, margin)``, both ``(n,)`` float64, in the
    convention of :func:`recon.kkt.kkt_diagnostic` (multiply by ``m`` for the 1/m convention
    of the reconstruction loss).
    """
    if not weight_decay > 0:
        raise ValueError(f"weight_decay must be > 0, got {weight_decay!r}")
    check_supported(model)
    check_binary_data(model, x, y)
    p = next(model.parameters())
    with torch.no_grad():
        m = margins(model, x.to(p), y.to(p)).double().cpu()
    return torch.sigmoid(-m) / (len(x) * weight_decay), m


def nearest_same_label(
    x: torch.Tensor, y: torch.Tensor, cand: torch.Tensor, cand_y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For every point ``x_i``, its nearest candidate with the same label.

    x: ``(n, d)``, y: ``(n,)``, cand: ``(m, d)``, cand_y: ``(m,)``. Returns ``(dist, idx)``,
    both ``(n,)``; ``dist`` is ``inf`` (and ``idx`` -1) where no candidate has that label.
    Several points may share one candidate.
    """
    x, cand = torch.as_tensor(x), torch.as_tensor(cand)
    if x.dim() != 2 or cand.dim() != 2 or x.shape[1] != cand.shape[1]:
        raise ValueError(
            f"x and cand must be (n, d) and (m, d) with the same d, got {tuple(x.shape)} and "
            f"{tuple(cand.shape)}"
        )
    if y.shape != (len(x),) or cand_y.shape != (len(cand),):
        raise ValueError("y must be (n,) and cand_y (m,), matching x and cand")
    d = torch.cdist(x.double(), cand.double())
    d = d.masked_fill(y.reshape(-1, 1) != cand_y.reshape(1, -1), float("inf"))
    dist, idx = d.min(1) if len(cand) else (torch.full((len(x),), float("inf")),
                                           torch.full((len(x),), -1))
    idx = torch.where(torch.isfinite(dist), idx, torch.full_like(idx, -1))
    return dist, idx


def distinct_neurons(model: MLP, rel_norm: float = 1e-2, min_cos: float = 0.999) -> int:
    """Number of distinct first-layer neurons among the live ones.

    A neuron is live when the norm of its incoming weights and bias ``(w_k, b_k)`` is at least
    ``rel_norm`` times the largest; two live neurons count as one when their ``(w_k, b_k)``
    point the same way (cosine above ``min_cos``): they then have the same kink line and are
    active on the same inputs, so the network behaves as if it had one neuron there.
    """
    check_supported(model)
    first = model.layers[0]
    w = first.weight.detach().double()
    if first.bias is not None:
        w = torch.cat([w, first.bias.detach().double().unsqueeze(1)], 1)
    norm = w.norm(dim=1)
    if float(norm.max()) == 0:
        return 0
    u = w[norm >= rel_norm * norm.max()]
    u = u / u.norm(dim=1, keepdim=True)
    reps: list[torch.Tensor] = []
    for row in u:
        if not any(float(row @ r) > min_cos for r in reps):
            reps.append(row)
    return len(reps)


def decision_grid(
    model: MLP, lim: float = 1.1, steps: int = 241
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``Phi(theta; x)`` on a ``steps x steps`` grid over ``[-lim, lim]^2``.

    Returns ``(g1, g2, values)``, three ``(steps, steps)`` arrays.
    """
    check_supported(model)
    if tuple(model.input_shape) != (2,):
        raise ValueError(f"decision_grid needs a model with input_shape (2,), got "
                         f"{model.input_shape}")
    g = torch.linspace(-lim, lim, steps, dtype=torch.float64)
    g1, g2 = torch.meshgrid(g, g, indexing="xy")
    pts = torch.stack([g1.reshape(-1), g2.reshape(-1)], 1)
    p = next(model.parameters())
    with torch.no_grad():
        z = model(pts.to(p)).double().cpu().reshape(g1.shape)
    return g1.numpy(), g2.numpy(), z.numpy()


def _axes(ax, lim, title=None):
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    if title:
        ax.set_title(title)


def _regions(ax, model, lim):
    g1, g2, z = decision_grid(model, lim)
    ax.contourf(g1, g2, (z > 0).astype(float), levels=[-0.5, 0.5, 1.5],
                cmap=ListedColormap(_REGION_COLORS))
    ax.contour(g1, g2, z, levels=[0.0], colors="k", linewidths=1.0)


def _new_ax(ax, size=4.2):
    if ax is None:
        fig, ax = plt.subplots(figsize=(size, size))
    return ax.figure, ax


def plot_decision(model: MLP, x: torch.Tensor, y: torch.Tensor, ax=None, lim: float = 1.1,
                  title: str | None = None):
    """Training points over the network's decision regions (``Phi > 0`` shaded orange)."""
    fig, ax = _new_ax(ax)
    _regions(ax, model, lim)
    for lab, marker in ((-1, "s"), (1, "o")):
        sel = (y == lab).cpu()
        ax.scatter(x[sel, 0], x[sel, 1], s=28, marker=marker, c=CLASS_COLORS[lab],
                   edgecolors="k", linewidths=0.5, label=f"y = {lab:+d}", zorder=3)
    ax.legend(loc="upper right", fontsize=8, framealpha=0.8, frameon=True)
    _axes(ax, lim, title)
    return fig


def plot_multipliers(model: MLP, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor,
                     margin: torch.Tensor, ax=None, lim: float = 1.1, title: str | None = None):
    """Each training point drawn with area proportional to its multiplier ``lam_i`` and coloured
    by its margin ``y_i Phi(x_i)`` (marker shape = class), over the decision regions."""
    fig, ax = _new_ax(ax, 4.8)
    _regions(ax, model, lim)
    lam = torch.as_tensor(lam, dtype=torch.float64).cpu()
    margin = torch.as_tensor(margin, dtype=torch.float64).cpu()
    size = 15 + 400 * (lam / lam.max().clamp_min(1e-300)).numpy()
    sc = None
    for lab, marker in ((-1, "s"), (1, "o")):
        sel = (y == lab).cpu().numpy()
        sc = ax.scatter(x[sel, 0], x[sel, 1], s=size[sel], c=margin[sel], cmap="viridis",
                        vmin=float(margin.min()), vmax=float(margin.max()), marker=marker,
                        edgecolors="k", linewidths=0.5, zorder=3)
    cb = fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04)
    cb.set_label(r"margin $y_i\,\Phi(\theta; x_i)$")
    _axes(ax, lim, title)
    return fig


def plot_candidates(model: MLP, x: torch.Tensor, y: torch.Tensor, cand: torch.Tensor,
                    cand_y: torch.Tensor, cand_lam: torch.Tensor, highlight=None, ax=None,
                    lim: float = 1.1, title: str | None = None):
    """Reconstruction candidates (crosses, area proportional to their ``lambda_j``) over the
    training points (circles/squares), with a line from every highlighted training point (e.g.
    the margin samples) to its nearest same-label candidate."""
    fig, ax = _new_ax(ax, 4.8)
    _regions(ax, model, lim)
    cand_lam = torch.as_tensor(cand_lam, dtype=torch.float64).cpu()
    highlight = (torch.ones(len(x), dtype=torch.bool) if highlight is None
                 else torch.as_tensor(highlight, dtype=torch.bool))
    dist, idx = nearest_same_label(x, y, cand, cand_y)
    for i in torch.nonzero(highlight).flatten().tolist():
        if idx[i] >= 0:
            j = int(idx[i])
            ax.plot([x[i, 0], cand[j, 0]], [x[i, 1], cand[j, 1]], color="k", lw=0.8, zorder=2)
    for lab, marker in ((-1, "s"), (1, "o")):
        sel = (y == lab).cpu()
        face = [CLASS_COLORS[lab] if h else "white" for h in highlight[sel].tolist()]
        ax.scatter(x[sel, 0], x[sel, 1], s=40, marker=marker, c=face,
                   edgecolors=CLASS_COLORS[lab], linewidths=1.2, zorder=3)
        csel = (cand_y == lab).cpu()
        size = 10 + 120 * (cand_lam[csel] / cand_lam.max().clamp_min(1e-300)).numpy()
        ax.scatter(cand[csel, 0], cand[csel, 1], s=size, marker="x", c=CLASS_COLORS[lab],
                   linewidths=1.3, zorder=4)
    _axes(ax, lim, title)
    return fig
