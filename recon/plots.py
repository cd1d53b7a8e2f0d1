"""Static figures: one style for the whole book, image grids, training and loss curves.

Every ``plot_*`` function draws into a new (or given) matplotlib figure and returns it;
widgets in :mod:`recon.widgets` wrap the same drawing code.
"""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

__all__ = [
    "set_style",
    "to_display",
    "image_grid",
    "plot_images",
    "plot_pairs",
    "plot_history",
    "plot_snapshots",
    "show_image",
    "show_card_figure",
]


def set_style() -> None:
    """The book's figure style (call once at the top of a chapter)."""
    mpl.rcParams.update({
        "figure.dpi": 110,
        "savefig.dpi": 110,
        "savefig.bbox": "tight",
        "font.size": 10,
        "axes.titlesize": 10,
        "axes.labelsize": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.alpha": 0.3,
        "legend.frameon": False,
        "image.cmap": "gray",
    })


def to_display(x: torch.Tensor, mean: torch.Tensor | None = None,
               minmax: bool = True) -> torch.Tensor:
    """Images ``(k, C, H, W)`` -> displayable ``[0, 1]``: add ``mean``, then min-max per image."""
    x = x.detach().cpu().float()
    if mean is not None:
        x = x + mean.detach().cpu().float()
    if minmax:
        from .evaluate import minmax_scale

        x = minmax_scale(x)  # the same scaling the evaluation protocol applies
    return x.clamp(0, 1)


def image_grid(
    images: torch.Tensor, ncols: int, pad: int = 1, pad_value: float = 1.0
) -> np.ndarray:
    """``(k, C, H, W)`` in [0, 1] -> one ``(rows*H', cols*W', C)`` array (C = 1 squeezed)."""
    k, c, h, w = images.shape
    rows = max(1, -(-k // ncols))
    grid = np.full((rows * (h + pad) + pad, ncols * (w + pad) + pad, c), pad_value,
                   dtype=np.float32)
    arr = images.detach().cpu().float().permute(0, 2, 3, 1).numpy()
    for i in range(k):
        r, col = divmod(i, ncols)
        y0, x0 = pad + r * (h + pad), pad + col * (w + pad)
        grid[y0:y0 + h, x0:x0 + w] = arr[i]
    return grid[..., 0] if c == 1 else grid


def show_image(ax, img: torch.Tensor) -> None:
    """Draw one ``(C, H, W)`` image in [0, 1] into ``ax``: no ticks, no frame (labels still
    show, so a row can carry a ``set_ylabel``)."""
    arr = img.detach().cpu().float().permute(1, 2, 0).numpy()
    ax.imshow(arr[..., 0] if arr.shape[-1] == 1 else arr, cmap="gray", vmin=0, vmax=1,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def plot_images(images: torch.Tensor, ncols: int = 10, title: str | None = None,
                ax=None, scale: float = 0.6):
    """Show ``(k, C, H, W)`` images in [0, 1] as one grid."""
    grid = image_grid(images, ncols)
    if ax is None:
        fig, ax = plt.subplots(figsize=(scale * ncols, scale * max(1, -(-len(images) // ncols))))
    else:
        fig = ax.figure
    ax.imshow(grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    return fig


def plot_pairs(recon: torch.Tensor, original: torch.Tensor, scores: Sequence[float] | None = None,
               ncols: int = 10, max_pairs: int = 40, title: str | None = None,
               score_name: str = "SSIM"):
    """The paper's figure: each reconstruction directly above its matched training image.

    recon, original: ``(k, C, H, W)`` in [0, 1] (e.g. ``Evaluation.recon``/``.original``),
    in the order to show (best first). ``scores``: a number printed above each pair.
    """
    k = min(len(recon), max_pairs)
    if k == 0:
        raise ValueError("no pairs to plot")
    ncols = min(ncols, k)
    nrows = -(-k // ncols)
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(0.9 * ncols, 2.0 * nrows + 0.4),
                             squeeze=False, gridspec_kw={"hspace": 0.05, "wspace": 0.05})
    for ax in axes.flat:
        ax.set_axis_off()
    for i in range(k):
        r, c = divmod(i, ncols)
        for j, img in enumerate((recon[i], original[i])):
            show_image(axes[2 * r + j, c], img)
        if scores is not None:
            axes[2 * r, c].set_title(f"{float(scores[i]):.2f}", fontsize=7, pad=2)
    axes[0, 0].text(-0.15, 0.5, "recon.", transform=axes[0, 0].transAxes, rotation=90,
                    va="center", ha="right", fontsize=8)
    axes[1, 0].text(-0.15, 0.5, "train", transform=axes[1, 0].transAxes, rotation=90,
                    va="center", ha="right", fontsize=8)
    if title:
        fig.suptitle(title + (f"  ({score_name} above each pair)" if scores is not None else ""),
                     fontsize=10)
    return fig


def plot_history(history: dict, keys: Sequence[str], x: str = "epoch", logy: Sequence[str] = (),
                 labels: dict | None = None, axes=None):
    """One panel per key of a history dictionary (training or reconstruction)."""
    labels = labels or {}
    if axes is None:
        fig, axes = plt.subplots(1, len(keys), figsize=(3.3 * len(keys), 2.8), squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    for ax, key in zip(axes, keys):
        ax.plot(history[x], history[key])
        ax.set_xlabel(labels.get(x, x))
        ax.set_ylabel(labels.get(key, key))
        if key in logy:
            ax.set_yscale("log")
    fig.tight_layout()
    return fig


def plot_snapshots(snapshots: dict[int, torch.Tensor], mean: torch.Tensor | None = None,
                   indices: Sequence[int] = tuple(range(8))):
    """Candidates over the course of a run: one row per snapshot step, one column per candidate."""
    steps = sorted(snapshots)
    idx = list(indices)
    fig, axes = plt.subplots(len(steps), len(idx), figsize=(0.8 * len(idx), 0.85 * len(steps)),
                             squeeze=False, gridspec_kw={"hspace": 0.08, "wspace": 0.05})
    for r, s in enumerate(steps):
        imgs = to_display(snapshots[s][idx], mean)
        for c in range(len(idx)):
            show_image(axes[r, c], imgs[c])
        axes[r, 0].set_ylabel(f"step {s}", rotation=0, ha="right", va="center", fontsize=8)
    return fig


def show_card_figure(card: dict, name: str = "pairs.png"):
    """A figure a run card's folder holds (``load_cards`` adds the folder as ``_dir``), shown at
    its own size; returns the matplotlib figure."""
    img = plt.imread(f"{card['_dir']}/{name}")
    fig, ax = plt.subplots(figsize=(img.shape[1] / 90, img.shape[0] / 90))
    ax.imshow(img)
    ax.set_axis_off()
    return fig
