"""How close is a trained network to a KKT point of margin maximisation?

For a homogeneous network trained on separable data with the logistic loss, the parameters
converge in direction to a KKT point of ``min 1/2 ||theta||^2 s.t. y_i Phi(theta; x_i) >= 1``
(Lyu & Li, 2019; Ji & Telgarsky, 2020). The stationarity condition reads

    theta = sum_i lambda_i y_i grad_theta Phi(theta; x_i),    lambda_i >= 0,

with ``lambda_i = 0`` for samples off the margin at an exact KKT point of margin
maximisation. Trained with weight decay ``wd`` (as the book's profiles are), a stationary
point of the regularised loss satisfies the same equation with
``lambda_i = sigmoid(-y_i Phi(theta; x_i)) / (n wd)``: every sample has a positive
multiplier, larger the smaller its margin. :func:`kkt_diagnostic` solves for the
multipliers that best satisfy the equation at the TRUE training set (a non-negative
least-squares problem) and reports the part of ``theta`` they cannot explain. A small
residual says the weights are close to a combination of training gradients; the samples
with large ``lambda_i`` are the ones a reconstruction can hope to find. The residual is an
upper bound on the best reconstruction loss (the true images are one feasible point), not a
floor: other candidates can fit the weights better.

Per-sample gradients of a 3072-1000-1000-1 MLP hold 4 million numbers each; for 500 samples
that is 16 GB in float64. We never form them: for a linear layer the gradient of sample ``i``
is the outer product ``delta_i a_i^T`` of the back-propagated signal and the layer's input,
so the inner product of two samples' gradients factorises,
``<delta_i a_i^T, delta_j a_j^T> = (delta_i . delta_j) (a_i . a_j)``, and the ``n x n`` Gram
matrix costs two small matrix products per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import nnls

from .models import MLP, check_supported, margin_signs, wrong_classes
from .train import check_data, output_margins

__all__ = ["KKTDiagnostic", "kkt_diagnostic", "gradient_gram", "stationarity_residual",
           "block_residuals"]


@dataclass
class KKTDiagnostic:
    """Result of :func:`kkt_diagnostic` (all per-sample tensors ``(n,)``, float64, CPU).

    lam: best non-negative multipliers, in the convention ``theta = sum_i lam_i y_i grad Phi_i``
        (the reconstruction's loss divides its sum by ``m``: there, ``lambda_j = m * lam_i``).
    margin: ``y_i Phi(theta; x_i)``.
    margin_ratio: ``margin / min(margin)``; 1 means on the margin.
    relative_residual: ``||theta - sum_i lam_i y_i grad Phi_i|| / ||theta||``.
    unexplained: the squared version, the unexplained fraction of ``||theta||^2``.
    """

    lam: torch.Tensor
    margin: torch.Tensor
    margin_ratio: torch.Tensor
    relative_residual: float
    unexplained: float
    theta_norm2: float
    lam_pairs: torch.Tensor | None = None  # (n, C - 1) with all_classes=True

    @property
    def support(self) -> torch.Tensor:
        """Indices of the samples with a positive multiplier, largest first."""
        idx = torch.nonzero(self.lam > 0).squeeze(1)
        return idx[torch.argsort(self.lam[idx], descending=True)]

    def to_dict(self) -> dict:
        return {
            "relative_residual": self.relative_residual,
            "unexplained": self.unexplained,
            "theta_norm2": self.theta_norm2,
            "n_support": int((self.lam > 0).sum()),
            "lam": self.lam.tolist(),
            "margin": self.margin.tolist(),
        }


def _gate(h: torch.Tensor, alpha: float | None) -> torch.Tensor:
    return (h > 0).to(h.dtype) if alpha is None else torch.sigmoid(alpha * h)


@torch.no_grad()
def gradient_gram(
    model: MLP, x: torch.Tensor, y: torch.Tensor, alpha: float | None = None,
    all_classes: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gram matrix of the label-signed per-sample parameter gradients, without forming them.

    With ``g_i = y_i grad_theta Phi(theta; x_i)``, returns ``(K, b, out)``:
    ``K[i, j] = <g_i, g_j>`` ``(n, n)``, ``b[i] = <theta, g_i>`` ``(n,)`` and the outputs
    ``Phi(theta; x_i)`` ``(n,)``, all float64. ``alpha`` replaces the ReLU's step derivative by
    ``sigmoid(alpha h)`` (the same gate the reconstruction uses); ``None`` is exact.

    Multiclass (``C`` outputs, ``y`` class indices): ``g_i`` is the gradient of the margin
    ``Phi_{y_i}(x_i) - Phi_{c_i}(x_i)``, ``c_i`` the highest other class (Buzaglo et al.,
    2023); the backward pass starts from the signed one-hot ``e_{y_i} - e_{c_i}`` instead of
    1, and ``out`` is the ``(n, C)`` logits. ``all_classes=True``: one row per sample and
    wrong class, ``g_{ic}`` the gradient of ``Phi_{y_i} - Phi_c`` for every ``c != y_i``
    (``n (C - 1)`` rows, sample-major): the exact stationarity condition of cross-entropy with
    weight decay has a multiplier for each of them.
    """
    model = check_supported(model)
    xf = model.check_input(x).double()
    y = y.double() if not model.multiclass else y
    rows = None
    if model.multiclass and all_classes:
        n, C = len(xf), model.n_outputs
        wrong = wrong_classes(y, C).flatten()  # (n (C - 1),) each sample's wrong classes
        rows = torch.arange(n, device=xf.device).repeat_interleave(C - 1)
        xf = xf[rows]
    weights = [layer.weight.double() for layer in model.layers]
    biases = [layer.bias for layer in model.layers]
    # forward: inputs of each layer a_{l-1} and pre-activations h_l
    inputs, pre = [xf], []
    h = xf @ weights[0].T + (biases[0].double() if biases[0] is not None else 0)
    pre.append(h)
    for w, bias in zip(weights[1:], biases[1:]):
        inputs.append(torch.relu(h))
        h = inputs[-1] @ w.T + (bias.double() if bias is not None else 0)
        pre.append(h)
    if rows is not None:  # start from e_y - e_c for every wrong class c
        delta = torch.zeros_like(h)
        idx = torch.arange(len(h), device=h.device)
        delta[idx, y.long()[rows]] = 1.0
        delta[idx, wrong] = -1.0
        out = h[:: model.n_outputs - 1]
    elif model.multiclass:  # start from e_y - e_c, c the highest other class
        delta = margin_signs(h, y)
        out = h
    else:
        out = h.squeeze(1)
        delta = torch.ones_like(h)  # backward: delta_l = dPhi/dh_l per sample
    K = torch.zeros(len(xf), len(xf), dtype=torch.float64, device=xf.device)
    b = torch.zeros(len(xf), dtype=torch.float64, device=xf.device)
    for layer in reversed(range(len(weights))):
        if layer not in model.frozen:  # theta holds the trained layers only
            a = inputs[layer]
            aa = a @ a.T
            if biases[layer] is not None:
                aa = aa + 1.0  # the bias is a weight on a constant input 1
            K += (delta @ delta.T) * aa
            # <W_l, delta a^T> (+ <b_l, delta> for a layer with a bias) = delta . h_l
            b += (delta * pre[layer]).sum(1)
        if layer > 0:
            delta = (delta @ weights[layer]) * _gate(pre[layer - 1], alpha)
    if not model.multiclass:
        K = K * torch.outer(y, y)
        b = b * y
    return K, b, out


def _residual2(theta2: float, K: torch.Tensor, b: torch.Tensor, lam: torch.Tensor) -> float:
    """``||theta - G^T lam||^2 = ||theta||^2 - 2 b.lam + lam^T K lam`` (clipped at 0 against
    rounding), from the Gram matrix ``K = G G^T`` and ``b = G theta``."""
    return max(theta2 - 2 * float(b @ lam) + float(lam @ K @ lam), 0.0)


def nnls_multipliers(K: torch.Tensor, b: torch.Tensor, theta2: float
                     ) -> tuple[torch.Tensor, float]:
    """The best ``lam >= 0`` for ``min ||theta - G^T lam||^2``, from the Gram matrix ``K = G G^T``
    and ``b = G theta`` (float64), and that minimum: ``(lam, residual^2)``, on the CPU."""
    K, b = K.cpu(), b.cpu()
    # ||theta - G^T lam||^2 = theta2 - 2 b.lam + lam^T K lam. Write K = A^T A (A = S^1/2 U^T)
    # and b = A^T t, so the problem is the standard NNLS  min ||A lam - t||.
    s, u = torch.linalg.eigh(K)
    keep = s > s.max() * 1e-13
    A = (u[:, keep] * s[keep].sqrt()).T
    t = (u[:, keep].T @ b) / s[keep].sqrt()
    lam_np, _ = nnls(A.numpy(), t.numpy(), maxiter=50 * len(b))
    lam = torch.from_numpy(np.asarray(lam_np, dtype=np.float64))
    return lam, _residual2(theta2, K, b, lam)


def kkt_diagnostic(
    model: MLP, x: torch.Tensor, y: torch.Tensor, alpha: float | None = None,
    all_classes: bool = False,
) -> KKTDiagnostic:
    """Best multipliers ``lam >= 0`` for the stationarity equation at the given samples.

    Solves ``min_{lam >= 0} ||theta - sum_i lam_i y_i grad Phi_i||^2`` exactly (NNLS on the
    factorised Gram matrix). x: ``(n, *input_shape)``; y: ``(n,)`` in {-1, +1}, or class
    indices for a multiclass model (the margin against the highest other class). With
    ``all_classes=True`` (multiclass only) every wrong class of every sample gets its own
    multiplier (``lam_pairs`` ``(n, C - 1)``; ``lam`` is their sum per sample): the form in
    which cross-entropy with weight decay satisfies the equation exactly.
    """
    model = check_supported(model)
    check_data(model, x, y)
    if all_classes and not model.multiclass:
        raise ValueError("all_classes needs a multiclass model (n_outputs > 1)")
    K, b, out = gradient_gram(model, x, y, alpha, all_classes)
    theta2 = model.theta_norm2()
    lam, res2 = nnls_multipliers(K, b, theta2)
    pairs = None
    if all_classes:
        pairs = lam.view(len(x), model.n_outputs - 1)
        lam = pairs.sum(1)
    margin = output_margins(out.cpu(), y.double().cpu() if not model.multiclass else y.cpu())
    return KKTDiagnostic(
        lam=lam,
        margin=margin,
        margin_ratio=margin / margin.min(),
        relative_residual=(res2 / theta2) ** 0.5,
        unexplained=res2 / theta2,
        theta_norm2=theta2,
        lam_pairs=pairs,
    )


def stationarity_residual(
    model: MLP, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, alpha: float | None = None
) -> float:
    """``||theta - sum_i lam_i y_i grad_theta Phi(theta; x_i)||^2 / ||theta||^2``.

    x: ``(k, *input_shape)``; y, lam: ``(k,)``, multipliers without a ``1/m``. ``alpha``
    replaces the ReLU's step derivative by ``sigmoid(alpha z)`` as in the reconstruction;
    ``None`` is exact. Uses the Gram matrix of :func:`gradient_gram`, so it works for any
    number of points.
    """
    check_supported(model)
    check_data(model, x, y)
    lam = torch.as_tensor(lam, dtype=torch.float64).cpu()
    if lam.shape != (len(x),):
        raise ValueError(f"lam must have shape ({len(x)},), got {tuple(lam.shape)}")
    K, b, _ = gradient_gram(model, x, y, alpha)
    theta2 = model.theta_norm2()
    return _residual2(theta2, K.cpu(), b.cpu(), lam) / theta2


@torch.no_grad()
def block_residuals(
    model: MLP, x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, alpha: float | None = None
) -> list[float]:
    """The stationarity residual split by parameter block: for each layer ``l``,
    ``||W_l - G_l||^2 (+ ||b_l - g_l||^2) / ||theta||^2``, where ``G_l`` is that layer's part
    of ``sum_i lam_i y_i grad_theta Phi(theta; x_i)`` (0 for a frozen layer, which is not in
    ``theta``). The blocks add up to :func:`stationarity_residual`.

    x: ``(n, *input_shape)``; y: ``(n,)`` in {-1, +1} or class indices (the margin against the
    highest other class); lam: ``(n,)`` in the convention of :func:`kkt_diagnostic`.
    """
    model = check_supported(model)
    check_data(model, x, y)
    xf = model.check_input(x).double()
    lam = torch.as_tensor(lam, dtype=torch.float64, device=xf.device).flatten()
    if lam.shape != (len(xf),):
        raise ValueError(f"lam must have shape ({len(xf)},), got {tuple(lam.shape)}")
    ws = [layer.weight.double() for layer in model.layers]
    bs = [None if layer.bias is None else layer.bias.double() for layer in model.layers]
    inputs, pre, h = [xf], [], xf
    for i, (w, b) in enumerate(zip(ws, bs)):
        if i:
            inputs.append(torch.relu(h))
        h = inputs[-1] @ w.T + (b if b is not None else 0)
        pre.append(h)
    if model.multiclass:
        delta = margin_signs(h, y) * lam[:, None]
    else:
        delta = (lam * y.double())[:, None]  # each sample's lam_i y_i dPhi/dh_L
    theta2 = model.theta_norm2()
    out = [0.0] * len(ws)
    for i in reversed(range(len(ws))):
        if i not in model.frozen:
            r = (ws[i] - delta.T @ inputs[i]).pow(2).sum()
            if bs[i] is not None:
                r = r + (bs[i] - delta.sum(0)).pow(2).sum()
            out[i] = float(r) / theta2
        if i:
            delta = (delta @ ws[i]) * _gate(pre[i - 1], alpha)
    return out
