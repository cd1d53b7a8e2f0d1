"""Evaluation of reconstructed training images (the protocol of Haim et al., NeurIPS 2022).

All images are ``(k, C, H, W)`` float tensors in the *mean-subtracted* space the network was
trained in; ``mean`` is the ``(1, C, H, W)`` training mean that was subtracted.

Protocol (``matching="paper"``):

1. Matching distance: every image is standardised per channel (zero mean, unit L2 norm), then
   the squared L2 distance between flattened standardised images is taken (NCC distance).
   For 3-channel data (CIFAR) candidates and training images are first downsampled to half
   resolution with bicubic interpolation. Matching happens in the mean-subtracted space.
2. Every training image gets its nearest candidate (many training images may share one).
3. The training mean is added back to both; each matched reconstruction is min-max scaled per
   image to [0, 1] (over all its pixels and channels); the training image is used as is (it is
   expected in [0, 1] once the mean is added).
4. SSIM with a 3x3 Gaussian window (sigma 1.5, data range 1; ``kornia.metrics.ssim``),
   averaged over channels and pixels, scores each pair. Pairs are sorted by SSIM, descending.

Caveat: in step 2 one blurry, average-looking candidate can be the nearest neighbour of many
training images and inflate the counts. ``matching="one_to_one"`` therefore assigns each
candidate to at most one training image (minimum total distance, Hungarian algorithm);
``evaluate_both`` reports both. Besides SSIM, each pair carries the full-resolution
correlation (``ncc``) between reconstruction and original, a criterion that does not depend on
min-max scaling.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import kornia
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = [
    "DivergedError",
    "Evaluation",
    "evaluate",
    "evaluate_both",
    "first_layer_candidates",
    "match_distances",
    "match_nearest",
    "match_one_to_one",
    "minmax_scale",
    "ncc_distance",
    "ncc_pairs",
    "ncc_similarity",
    "ssim_pairs",
    "standardize",
    "sweep_score",
]

SSIM_THRESHOLDS = (0.3, 0.4, 0.5, 0.6)
NCC_THRESHOLDS = (0.8, 0.9)
_EPS = 1e-12


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------

class DivergedError(ValueError):
    """Candidates (or their distances) hold NaN/inf: the reconstruction diverged."""


def _check_4d(x: Tensor, name: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{name} must be 4-D (k, C, H, W), got shape {tuple(x.shape)} ({x.dim()}-D)"
        )
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")


def _check_pair(a: Tensor, b: Tensor, name_a: str = "a", name_b: str = "b") -> None:
    _check_4d(a, name_a)
    _check_4d(b, name_b)
    if a.shape[1:] != b.shape[1:]:
        raise ValueError(
            f"{name_a} and {name_b} must have the same (C, H, W); got {name_a} "
            f"{tuple(a.shape)} and {name_b} {tuple(b.shape)}"
        )


def _check_candidates(candidates: Tensor) -> None:
    if candidates.shape[0] == 0:
        raise ValueError(
            f"empty candidate set: candidates has shape {tuple(candidates.shape)}; "
            "need at least one candidate image"
        )
    if not torch.isfinite(candidates).all():
        n_bad = int((~torch.isfinite(candidates)).flatten(1).any(1).sum())
        raise DivergedError(
            f"{n_bad} of {candidates.shape[0]} candidates contain NaN/inf: "
            "the reconstruction diverged (lower the learning rate or check the loss)"
        )


def _check_inputs(candidates: Tensor, x_train: Tensor, mean: Tensor | None = None) -> None:
    _check_pair(candidates, x_train, "candidates", "x_train")
    if x_train.shape[0] == 0:
        raise ValueError(f"x_train is empty: shape {tuple(x_train.shape)}")
    if mean is not None:
        _check_4d(mean, "mean")
        expected = (1, *x_train.shape[1:])
        if tuple(mean.shape) != expected:
            raise ValueError(
                f"mean must have shape {expected} (1, C, H, W of x_train), "
                f"got {tuple(mean.shape)}"
            )
    _check_candidates(candidates)


def _common(*xs: Tensor, device: torch.device) -> list[Tensor]:
    dtype = xs[0].dtype
    for x in xs[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return [x.detach().to(device=device, dtype=dtype) for x in xs]


# ---------------------------------------------------------------------------------------------
# Normalised cross-correlation
# ---------------------------------------------------------------------------------------------
def standardize(x: Tensor) -> Tensor:
    """Per-image, per-channel zero mean and unit L2 norm.

    Args:
        x: ``(k, C, H, W)``.
    Returns:
        ``(k, C, H, W)``; each ``[i, c]`` plane has mean 0 and L2 norm 1. A constant plane
        (up to floating-point rounding) becomes all zeros (correlation 0 with anything),
        never NaN.

    The official code divides by the standard deviation instead of the norm; that only scales
    every distance by the same constant (``H*W - 1``), so the matching is identical.
    """
    _check_4d(x, "x")
    centred = x - x.mean(dim=(2, 3), keepdim=True)
    norm = centred.flatten(2).norm(dim=2)[..., None, None]
    # A constant plane leaves only rounding error after centring (~ eps * |x| * sqrt(H*W));
    # treat a norm within a few times that as zero instead of blowing the error up to norm 1.
    n_pix = x.shape[2] * x.shape[3]
    peak = x.abs().amax(dim=(2, 3), keepdim=True)
    tol = 16 * torch.finfo(x.dtype).eps * math.sqrt(n_pix) * peak
    flat = norm <= tol.clamp_min(torch.finfo(x.dtype).tiny)
    return torch.where(flat, torch.zeros_like(centred), centred / norm.clamp_min(_EPS))


def ncc_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Mean-over-channels Pearson correlation between every image of ``a`` and of ``b``.

    Args:
        a: ``(n, C, H, W)``; b: ``(m, C, H, W)``.
    Returns:
        ``(n, m)`` matrix in ``[-1, 1]``: ``S[i, j] = mean_c corr(a[i, c], b[j, c])``.
    """
    _check_pair(a, b)
    a, b = _common(a, b, device=a.device)
    c = a.shape[1]
    sa, sb = standardize(a).flatten(1), standardize(b).flatten(1)
    return (sa @ sb.T) / c


def ncc_pairs(a: Tensor, b: Tensor) -> Tensor:
    """Mean-over-channels correlation of pairs: ``(k,)`` for ``a, b`` of shape ``(k,C,H,W)``."""
    _check_pair(a, b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"need the same number of images, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    a, b = _common(a, b, device=a.device)
    return (standardize(a) * standardize(b)).flatten(1).sum(1) / a.shape[1]


def ncc_distance(a: Tensor, b: Tensor) -> Tensor:
    """Squared L2 distance between standardised images (the matching distance).

    Args:
        a: ``(n, C, H, W)``; b: ``(m, C, H, W)``.
    Returns:
        ``(n, m)``, ``D[i, j] = ||standardize(a[i]) - standardize(b[j])||^2``.

    Exact relation, when no channel plane is constant:
    ``ncc_distance = 2 * C * (1 - ncc_similarity)``, so it lies in ``[0, 4C]`` and is
    monotone decreasing in the similarity. (A constant plane standardises to zeros and adds
    1 instead of ``2 - 2 corr`` for each non-constant partner plane.) Computed with one matmul.
    """
    _check_pair(a, b)
    a, b = _common(a, b, device=a.device)
    sa, sb = standardize(a).flatten(1), standardize(b).flatten(1)
    sq_a = (sa * sa).sum(1, keepdim=True)
    sq_b = (sb * sb).sum(1, keepdim=True)
    return (sq_a + sq_b.T - 2.0 * (sa @ sb.T)).clamp_min(0.0)


def _half(x: Tensor) -> Tensor:
    if min(x.shape[2:]) < 2:
        raise ValueError(f"half resolution needs H, W >= 2, got shape {tuple(x.shape)}")
    return F.interpolate(x, scale_factor=0.5, mode="bicubic")


def _default_half(x: Tensor, half_resolution: bool | None) -> bool:
    return x.shape[1] == 3 if half_resolution is None else bool(half_resolution)


def match_distances(candidates: Tensor, train: Tensor, *, half_resolution: bool) -> Tensor:
    """Distance matrix used for matching, rows are training images.

    Args:
        candidates: ``(m, C, H, W)`` mean-subtracted reconstructions.
        train: ``(n_train, C, H, W)`` mean-subtracted training images.
        half_resolution: downsample both to half resolution first with
            ``F.interpolate(x, scale_factor=0.5, mode="bicubic")`` (the paper does so for
            CIFAR).
    Returns:
        ``(n_train, m)`` NCC distances (see :func:`ncc_distance`).
    """
    _check_pair(candidates, train, "candidates", "train")
    candidates, train = _common(candidates, train, device=candidates.device)
    if half_resolution:
        candidates, train = _half(candidates), _half(train)
    return ncc_distance(train, candidates)


def match_nearest(dist: Tensor) -> Tensor:
    """Paper protocol: nearest candidate per training image. ``(n_train, m)`` -> ``(n_train,)``."""
    if dist.dim() != 2 or dist.shape[1] == 0:
        raise ValueError(f"dist must be (n_train, m) with m >= 1, got {tuple(dist.shape)}")
    return dist.argmin(dim=1)


def match_one_to_one(dist: Tensor) -> Tensor:
    """Each candidate matched to at most one training image, minimum total distance.

    Uses ``scipy.optimize.linear_sum_assignment`` on the CPU.

    Args:
        dist: ``(n_train, m)``.
    Returns:
        ``(n_train,)`` long tensor of distinct candidate indices; when ``m < n_train`` the
        training images left without a candidate get ``-1``. On ``dist``'s device.
    """
    if dist.dim() != 2 or dist.shape[1] == 0:
        raise ValueError(f"dist must be (n_train, m) with m >= 1, got {tuple(dist.shape)}")
    d = dist.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(d).all():
        raise DivergedError("dist contains NaN/inf: the reconstruction diverged")
    rows, cols = linear_sum_assignment(d)
    out = torch.full((dist.shape[0],), -1, dtype=torch.long)
    out[torch.as_tensor(rows, dtype=torch.long)] = torch.as_tensor(cols, dtype=torch.long)
    return out.to(dist.device)


# ---------------------------------------------------------------------------------------------
# Display scaling and SSIM
# ---------------------------------------------------------------------------------------------
def minmax_scale(x: Tensor) -> Tensor:
    """Per-image min-max scaling to [0, 1] over all pixels and channels together.

    ``(k, C, H, W)`` -> ``(k, C, H, W)``; a constant image becomes zeros (no NaN).
    """
    _check_4d(x, "x")
    flat = x.flatten(1)
    lo = flat.min(1).values[:, None, None, None]
    hi = flat.max(1).values[:, None, None, None]
    rng = hi - lo
    return torch.where(rng > _EPS, (x - lo) / rng.clamp_min(_EPS), torch.zeros_like(x))


def ssim_pairs(x: Tensor, y: Tensor) -> Tensor:
    """SSIM of corresponding pairs, inputs already in [0, 1].

    ``kornia.metrics.ssim(x, y, window_size=3)`` (Gaussian window, sigma 1.5, ``max_val=1``,
    ``C1 = 0.01**2``, ``C2 = 0.03**2``, 'same' padding), then the SSIM map averaged over
    channels and pixels.

    Args:
        x, y: ``(k, C, H, W)``.
    Returns:
        ``(k,)``.
    """
    _check_pair(x, y, "x", "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"need the same number of images, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[0] == 0:
        return x.new_zeros(0)
    x, y = _common(x, y, device=x.device)
    return kornia.metrics.ssim(x, y, window_size=3).mean(dim=(1, 2, 3))


# ---------------------------------------------------------------------------------------------
# Result container
# ---------------------------------------------------------------------------------------------
@dataclass
class Evaluation:
    """Matched pairs after the protocol, sorted by SSIM descending (all tensors on CPU).

    With ``matching="one_to_one"`` and fewer candidates than training images, training images
    left without a candidate are dropped, so ``k <= n_train``.
    """

    matching: str  # "paper" | "one_to_one"
    train_index: Tensor  # (k,) training image index
    candidate_index: Tensor  # (k,) matched candidate index
    ssim: Tensor  # (k,) SSIM after the protocol, descending
    ncc: Tensor  # (k,) correlation, mean added, full resolution
    recon: Tensor  # (k, C, H, W) display images in [0, 1]
    original: Tensor  # (k, C, H, W) training images with the mean added
    half_resolution: bool = False  # whether matching used half resolution
    n_train: int = 0
    n_candidates: int = 0
    distance: Tensor | None = None  # (k,) matching distance of each pair
    # (k,) correlation of the mean-subtracted images (stricter: the training mean alone
    # correlates with every image once added back)
    ncc0: Tensor | None = None

    def __len__(self) -> int:
        return int(self.ssim.numel())

    def count(self, ssim_above: float | None = None, ncc_above: float | None = None,
              ncc0_above: float | None = None) -> int:
        """Number of pairs with SSIM > ``ssim_above``, NCC > ``ncc_above`` and mean-subtracted
        NCC > ``ncc0_above`` (strict; a criterion left as None is not applied; all None
        counts all pairs)."""
        keep = torch.ones_like(self.ssim, dtype=torch.bool)
        if ssim_above is not None:
            keep &= self.ssim > ssim_above
        if ncc_above is not None:
            keep &= self.ncc > ncc_above
        if ncc0_above is not None:
            keep &= self.ncc0 > ncc0_above
        return int(keep.sum())

    def counts(self) -> dict[str, int]:
        """Counts at the usual thresholds, e.g. ``{"ssim>0.4": 12, ..., "ncc>0.9": 7,
        "ncc0>0.9": 5}`` (``ncc0``: correlation of the mean-subtracted images)."""
        out = {f"ssim>{t}": self.count(ssim_above=t) for t in SSIM_THRESHOLDS}
        out.update({f"ncc>{t}": self.count(ncc_above=t) for t in NCC_THRESHOLDS})
        if self.ncc0 is not None:
            out.update({f"ncc0>{t}": self.count(ncc0_above=t) for t in NCC_THRESHOLDS})
        return out

    def to_dict(self) -> dict:
        """JSON-serialisable summary: counts, mean SSIM of the top 10, per-pair lists.

        Images are left out."""
        top = self.ssim[:10]
        return {
            "matching": self.matching,
            "half_resolution": bool(self.half_resolution),
            "n_train": int(self.n_train),
            "n_candidates": int(self.n_candidates),
            "n_pairs": len(self),
            "n_distinct_candidates": int(torch.unique(self.candidate_index).numel()),
            "counts": self.counts(),
            "mean_ssim_top10": float(top.mean()) if top.numel() else float("nan"),
            "mean_ssim": float(self.ssim.mean()) if len(self) else float("nan"),
            "train_index": [int(i) for i in self.train_index],
            "candidate_index": [int(i) for i in self.candidate_index],
            "ssim": [float(s) for s in self.ssim],
            "ncc": [float(s) for s in self.ncc],
            **({"ncc0": [float(s) for s in self.ncc0]} if self.ncc0 is not None else {}),
        }


# ---------------------------------------------------------------------------------------------
# Full protocol
# ---------------------------------------------------------------------------------------------
_MATCHERS = {"paper": match_nearest, "one_to_one": match_one_to_one}


def _from_distances(
    dist: Tensor,
    candidates: Tensor,
    x_train: Tensor,
    mean: Tensor,
    matching: str,
    half_resolution: bool,
) -> Evaluation:
    if matching not in _MATCHERS:
        raise ValueError(f"matching must be one of {sorted(_MATCHERS)}, got {matching!r}")
    cand_idx = _MATCHERS[matching](dist)
    train_idx = torch.arange(x_train.shape[0], device=cand_idx.device)
    ok = cand_idx >= 0
    train_idx, cand_idx = train_idx[ok], cand_idx[ok]
    pair_dist = dist[train_idx, cand_idx]

    recon_full = candidates[cand_idx] + mean  # mean added back
    original = x_train[train_idx] + mean
    recon = minmax_scale(recon_full)
    ssim = ssim_pairs(recon, original)
    ncc = ncc_pairs(recon_full, original)
    ncc0 = ncc_pairs(candidates[cand_idx], x_train[train_idx])

    order = torch.argsort(ssim, descending=True, stable=True)

    def cpu(t: Tensor) -> Tensor:
        return t[order].cpu()

    return Evaluation(
        matching=matching,
        train_index=cpu(train_idx),
        candidate_index=cpu(cand_idx),
        ssim=cpu(ssim),
        ncc=cpu(ncc),
        recon=cpu(recon),
        original=cpu(original),
        half_resolution=half_resolution,
        n_train=int(x_train.shape[0]),
        n_candidates=int(candidates.shape[0]),
        distance=cpu(pair_dist),
        ncc0=cpu(ncc0),
    )


def _prepare(candidates, x_train, mean, half_resolution):
    _check_inputs(candidates, x_train, mean)
    candidates, x_train, mean = _common(candidates, x_train, mean, device=candidates.device)
    original = x_train + mean
    if original.min() < -1e-3 or original.max() > 1 + 1e-3:
        warnings.warn(
            f"training images with the mean added span [{float(original.min()):.3g}, "
            f"{float(original.max()):.3g}], not [0, 1]: SSIM assumes data range 1",
            stacklevel=3,
        )
    half = _default_half(x_train, half_resolution)
    dist = match_distances(candidates, x_train, half_resolution=half)
    return candidates, x_train, mean, half, dist


def evaluate(
    candidates: Tensor,
    x_train: Tensor,
    mean: Tensor,
    *,
    matching: str = "paper",
    half_resolution: bool | None = None,
) -> Evaluation:
    """Run the evaluation protocol.

    Args:
        candidates: ``(m, C, H, W)`` reconstructions, mean-subtracted space (pooled runs).
        x_train: ``(n_train, C, H, W)`` training images, mean-subtracted.
        mean: ``(1, C, H, W)`` training mean; ``x_train + mean`` should lie in [0, 1].
        matching: ``"paper"`` (nearest candidate per training image) or ``"one_to_one"``.
        half_resolution: match at half resolution (bicubic). ``None`` means True for
            3-channel images (CIFAR, as in the paper) and False otherwise (MNIST).
    Returns:
        :class:`Evaluation`, pairs sorted by SSIM descending.
    Raises:
        ValueError: non-4-D inputs, mismatching ``(C, H, W)``, wrong ``mean`` shape, empty
            candidate set, NaN/inf candidates (diverged reconstruction).
    """
    candidates, x_train, mean, half, dist = _prepare(candidates, x_train, mean, half_resolution)
    return _from_distances(dist, candidates, x_train, mean, matching, half)


def evaluate_both(candidates: Tensor, x_train: Tensor, mean: Tensor, **kw) -> dict[str, Evaluation]:
    """``{"paper": ..., "one_to_one": ...}``, sharing one distance matrix.

    Keyword arguments as :func:`evaluate` (except ``matching``).
    """
    if "matching" in kw:
        raise TypeError("evaluate_both runs both matchings; do not pass matching=")
    candidates, x_train, mean, half, dist = _prepare(
        candidates, x_train, mean, kw.pop("half_resolution", None)
    )
    if kw:
        raise TypeError(f"unexpected keyword arguments: {sorted(kw)}")
    return {
        m: _from_distances(dist, candidates, x_train, mean, m, half)
        for m in ("paper", "one_to_one")
    }


# ---------------------------------------------------------------------------------------------
# Baseline and sweep objective
# ---------------------------------------------------------------------------------------------
def first_layer_candidates(
    weight: Tensor,
    image_shape: tuple[int, int, int],
    *,
    max_abs: float | Tensor = 1.0,
    both_signs: bool = False,
) -> Tensor:
    """The paper's baseline: rows of the first-layer weight matrix reshaped as images.

    Args:
        weight: ``(rows, C*H*W)`` (e.g. ``nn.Linear(C*H*W, rows).weight``).
        image_shape: ``(C, H, W)``.
        max_abs: each row is rescaled so its largest absolute entry equals ``max_abs``
            (default 1.0; pass ``x_train.abs().max()`` to match the data exactly). This keeps
            the rows on the scale of mean-subtracted images, so adding the mean back before
            min-max scaling does not drown them. NCC matching is scale invariant anyway. An
            all-zero row stays zero.
        both_signs: also append the negated rows (a weight row may correlate with an image
            with either sign; the paper uses the rows as they are).
    Returns:
        ``(rows, C, H, W)`` (``(2*rows, C, H, W)`` with ``both_signs``), detached.
    """
    c, h, w = (int(s) for s in image_shape)
    if weight.dim() != 2 or weight.shape[1] != c * h * w:
        raise ValueError(
            f"weight must be (rows, C*H*W) = (rows, {c * h * w}) for image_shape "
            f"{(c, h, w)}, got {tuple(weight.shape)}"
        )
    wt = weight.detach()
    peak = wt.abs().amax(1, keepdim=True)
    scaled = torch.where(peak > 0, wt / peak.clamp_min(_EPS) * max_abs, torch.zeros_like(wt))
    out = scaled.reshape(-1, c, h, w)
    return torch.cat([out, -out]) if both_signs else out


def sweep_score(
    candidates: Tensor,
    x_train: Tensor,
    *,
    half_resolution: bool | None = None,
    k: int = 10,
) -> float:
    """Hyper-parameter sweep objective (lower is better).

    The one-to-one assignment (:func:`match_one_to_one`) of candidates to training images is
    computed on the matching distances (:func:`match_distances`, NCC distance, half resolution
    for 3 channels by default); the score is the mean of the ``k`` smallest distances among the
    assigned pairs (fewer if fewer pairs exist). With ``C`` channels the NCC distance is
    ``2C(1 - correlation)``: 0 is a perfect match, ``2C`` is no correlation.

    Raises ValueError on NaN/inf candidates (a diverged run), like :func:`evaluate`.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _check_inputs(candidates, x_train)
    dist = match_distances(
        candidates, x_train, half_resolution=_default_half(x_train, half_resolution)
    )
    idx = match_one_to_one(dist)
    ok = idx >= 0
    d = dist[torch.arange(dist.shape[0], device=dist.device)[ok], idx[ok]]
    best = torch.sort(d).values[:k]
    return float(best.mean()) if best.numel() else math.inf
