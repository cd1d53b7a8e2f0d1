"""Which training images come back? Per training image: its margin ``y_i Phi(theta; x_i)``,
its KKT multiplier ``lambda_i`` at the true training set, and the scores of its matched
reconstruction; the rank correlations between them and a plot.

The paper's qualitative finding is that the recovered images are the margin samples (small
margin, large multiplier); Chapter 4 tests it on a live run and Chapter 6 on the run cards,
which store the output of :func:`margin_analysis` under ``"margins"``.
"""

from __future__ import annotations

import math

import torch

__all__ = ["per_image_scores", "margin_analysis", "model_margin_analysis", "plot_margin_scatter",
           "MARGIN_AXES"]

# the quantities a scatter can put on its axes, with their labels
MARGIN_AXES = {
    "margin": r"margin $y_i\,\Phi(\theta;x_i)$",
    "ratio": r"margin ratio $y_i\Phi(\theta;x_i)\,/\,\min_j y_j\Phi(\theta;x_j)$",
    "lam": r"multiplier $\lambda_i$ (KKT fit at the training set)",
    "ncc": "NCC of matched reconstruction",
    "ssim": "SSIM of matched reconstruction",
}


def per_image_scores(evaluation, n: int) -> dict[str, torch.Tensor]:
    """The SSIM and NCC of each training image's matched candidate, ``(n,)`` float64 indexed
    by training image, NaN for images left without a candidate."""
    idx = evaluation.train_index.long()
    if idx.numel() and (int(idx.max()) >= n or int(idx.min()) < 0):
        raise ValueError(f"the evaluation matches training images up to index "
                         f"{int(idx.max())}, but n = {n}")
    out = {}
    for key in ("ssim", "ncc"):
        v = torch.full((n,), float("nan"), dtype=torch.float64)
        v[idx] = getattr(evaluation, key).double()
        out[key] = v
    return out


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    from scipy.stats import spearmanr

    ok = ~(torch.isnan(a) | torch.isnan(b))
    if int(ok.sum()) <= 2:
        return float("nan")
    return float(spearmanr(a[ok].numpy(), b[ok].numpy()).statistic)


def margin_analysis(margin, lam, evaluation, labels=None, *, recovered_at: float = 0.9,
                    kkt_unexplained: float | None = None) -> dict:
    """Margins, multipliers and matched scores per training image, and what relates them.

    ``margin``, ``lam``: ``(n,)`` per training image (e.g. from
    :func:`recon.kkt.kkt_diagnostic`); ``evaluation``: a one-to-one
    :class:`recon.evaluate.Evaluation` of candidates against the same training set.
    Returns a JSON-ready dict: the per-image lists (``margin``, ``lam``, ``ssim``, ``ncc``,
    ``labels``), Spearman rank correlations of margin and multiplier with NCC and SSIM
    (``spearman``; ``spearman_margin_ncc`` at the top level as the cards have it), and the
    share of recovered images (NCC > ``recovered_at``) among the smallest-margin fifth
    against the other four fifths.
    """
    margin = torch.as_tensor(margin, dtype=torch.float64).flatten()
    lam = torch.as_tensor(lam, dtype=torch.float64).flatten()
    n = margin.numel()
    if lam.numel() != n:
        raise ValueError(f"margin and lam must have one value per training image: got "
                         f"{n} and {lam.numel()}")
    scores = per_image_scores(evaluation, n)
    ssim, ncc = scores["ssim"], scores["ncc"]
    rho = {f"{a}_{b}": _spearman(x, s) for a, x in (("margin", margin), ("lam", lam))
           for b, s in (("ncc", ncc), ("ssim", ssim))}
    low = margin <= torch.quantile(margin, 0.2)
    rec = ncc > recovered_at  # NaN (unmatched) compares False
    return {
        "margin": margin.tolist(), "lam": lam.tolist(), "ssim": ssim.tolist(),
        "ncc": ncc.tolist(),
        "labels": None if labels is None else torch.as_tensor(labels).tolist(),
        "kkt_unexplained": kkt_unexplained,
        "spearman_margin_ncc": rho["margin_ncc"],
        "spearman": rho,
        "recovered_at": recovered_at,
        "recovered_share_low_margin": float(rec[low].double().mean()),
        "recovered_share_rest": float(rec[~low].double().mean()) if (~low).any() else math.nan,
        "n_low_margin": int(low.sum()),
        "n_support": int((lam > 0).sum()),
    }


def model_margin_analysis(model, task, evaluation, **kw) -> dict:
    """:func:`margin_analysis` for a trained model and its task: fits the multipliers at the
    true training set (:func:`recon.kkt.kkt_diagnostic`) first."""
    from .kkt import kkt_diagnostic

    p = next(model.parameters())
    diag = kkt_diagnostic(model, task.x_train.to(p), task.y_train.to(p))
    return margin_analysis(diag.margin, diag.lam, evaluation, task.y_train,
                           kkt_unexplained=diag.unexplained, **kw)


def plot_margin_scatter(ax, analysis: dict, x: str = "margin", y: str = "ncc",
                        title: str | None = None):
    """One scatter of a :func:`margin_analysis` result: ``x`` in ``margin``, ``ratio``
    (margin over the smallest margin) or ``lam`` against ``y`` in ``ncc`` or ``ssim``, one
    point per matched training image, recovered images (NCC above the analysis' threshold)
    in a second colour, with Spearman's rho in the title. Returns ``ax``."""
    if x not in ("margin", "ratio", "lam") or y not in ("ncc", "ssim"):
        raise ValueError(f"x must be margin, ratio or lam and y ncc or ssim; got {x!r}, {y!r}")
    margin = torch.tensor(analysis["margin"], dtype=torch.float64)
    xv = margin / margin.min() if x == "ratio" else torch.tensor(analysis[x], dtype=torch.float64)
    yv = torch.tensor(analysis[y], dtype=torch.float64)
    ncc = torch.tensor(analysis["ncc"], dtype=torch.float64)
    at = analysis.get("recovered_at", 0.9)
    ok = ~torch.isnan(yv)
    found = ok & (ncc > at)
    ax.scatter(xv[ok & ~found], yv[ok & ~found], s=12, alpha=0.7, label=f"NCC ≤ {at:g}")
    ax.scatter(xv[found], yv[found], s=12, alpha=0.8, label=f"NCC > {at:g}")
    if y == "ncc":
        ax.axhline(at, color="k", lw=0.7, ls=":")
    if x == "lam" and (xv > 0).any():
        ax.set_xscale("symlog", linthresh=max(float(xv[xv > 0].min()), 1e-6))
    ax.set_xlabel(MARGIN_AXES[x])
    ax.set_ylabel(MARGIN_AXES[y])
    rho = _spearman(xv, yv)
    ax.set_title(f"{title + ': ' if title else ''}Spearman ρ = {rho:.2f}", fontsize=9)
    return ax
