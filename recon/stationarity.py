"""The stationarity loss and its gradient in closed form, in row-space coordinates.

The reconstruction minimises, over candidates ``x_j`` and multipliers ``lambda_j``,

    L_stat = || theta - sum_j c_j grad_theta Phi(theta; x_j) ||^2,     c_j = lambda_j y_j / m.

:func:`recon.reconstruct.stationarity_loss` builds it with autograd and differentiates it
again (double backward): simple, and the reference this module is tested against. Here the
same loss and its gradient are written out by hand, layer by layer, which buys three things:

* **arithmetic**: 12 matrix products per step for the paper's two-hidden-layer net, about half
  of what double backward records, and no autograd graph;
* **row-space coordinates**: a candidate ``x = B z`` in the first layer's row space (``B``:
  ``(D, k)`` orthonormal) enters the first layer only through ``W1 B`` ``(width, k)``, so the
  first layer works on ``k`` numbers instead of ``D``. Its part of the residual splits exactly,
  ``||W1 - G B^T||^2 = ||W1 B - G||^2 + ||W1 (I - B B^T)||^2``, and the last term is a
  constant;
* **precision where it matters**: products may run in bfloat16 (the CPU's matrix units, or a
  GPU's tensor cores) while the residual ``theta - G`` and every sum that meets it stay in the
  working precision.

The gradient. Write ``h_l`` for the pre-activations, ``a_l`` for the layer inputs
(``a_0 = x``), ``s_l = sigmoid(alpha h_l)`` for the soft ReLU derivative and
``s'_l = alpha s_l (1 - s_l)`` for its derivative; ``delta_l`` is the back-propagated signal
(``delta_L = 1``, ``delta_l = (W_{l+1}^T delta_{l+1}) * s_l``), so that the parameter gradient
of layer ``l`` is ``G_l = sum_j c_j delta_l a_{l-1}^T`` and its residual ``R_l = W_l - G_l``.
Per candidate, with ``e_l = R_l a_{l-1}`` (plus the bias residual for a layer with a bias) and
``f_l = R_l^T delta_l``,

    dL/dlambda_j = -2 (y_j / m) sum_l delta_l . e_l
    dL/dx_j      = -2 c_j (f_1 + W_1^T g_1)

where two short recursions carry the chain rule through the network's backward pass
(``eps``: how a change of ``delta_l`` moves the loss) and its forward pass (``g``):

    eps_1 = e_1,    eps_{l+1} = e_{l+1} + W_{l+1} (s_l * eps_l)
    g_L = 0,        g_l = (W_{l+1}^T delta_{l+1}) * s'_l * eps_l
                          + s_l * (f_{l+1} + W_{l+1}^T g_{l+1})

Multiclass networks (``C`` outputs, Buzaglo et al., 2023) replace ``y_j Phi(x_j)`` by the
margin ``Phi_{y_j}(x_j) - Phi_{c_j}(x_j)``, ``c_j`` the candidate's highest other class: the
backward pass starts from ``delta_L = e_{y_j} - e_{c_j}`` instead of 1 (with ``c_j = lambda_j /
m``), and the formulas above hold as written, ``e_L`` and ``delta_L`` now ``C``-vectors.

Free gates (the ReLU's subgradient at its kink). The ReLU has no derivative at zero; any gate
value in [0, 1] is a subgradient there (Clarke), and the training images sit on many
first-layer kinks (chapter 6). With ``free_band = eps > 0`` and a gate tensor ``G`` ``(m,
width)`` passed in, every first-layer pre-activation with ``|h_1| < eps`` takes its gate from
``G`` (clamped to [0, 1]) instead of the step or soft gate, and its derivative in ``h_1`` is
zero there. The gate enters only ``delta_1 = u_1 * s_1``, hence only the first layer's
gradient, so

    dL/dG_jk = -2 (lambda_j y_j / m) u_1,jk e_1,jk        (zero outside the band)

and the loss minimised over the gates is the stationarity residual with the ReLU's Clarke
subdifferential on the band. A hard band gives a candidate no reason to move onto a kink;
``free_shape="smooth"`` frees each gate with weight ``w = exp(-(h_1 / eps)^2)`` (gate ``s +
w (G - s)``), so that ``dL/dh_1`` gains ``w' (G - s)`` times the gate's adjoint, and
``dL/dG`` above is multiplied by ``w``.

Chapter 3 derives the loss; the tests check this gradient against autograd's double backward.
"""

from __future__ import annotations

import torch

from .models import MLP, margin_signs, wrong_classes

__all__ = ["Stationarity"]


class Stationarity:
    """``L_stat`` and its gradient for one trained model, optionally in row-space coordinates.

    Args:
        model: the trained :class:`recon.models.MLP` (its weights are copied, detached).
        basis: ``(D, k)`` orthonormal columns (:func:`recon.reconstruct.first_layer_basis`);
            candidates are then given as coordinates ``z`` ``(m, k)`` with ``x = z B^T``.
            ``None``: ``z`` is the flattened input ``(m, D)``.
        alpha: the soft ReLU derivative ``sigmoid(alpha h)``; ``None``: exact step (its own
            derivative is then zero).
        free_band: > 0: the first layer's gates of pre-activations within this distance of
            zero are free (taken from the ``gates`` argument of a call); 0: off.
        free_shape: ``"band"``: free within ``free_band`` of zero, the step or soft gate
            elsewhere; ``"smooth"``: free with weight ``exp(-(h / free_band)^2)``, whose slope
            in ``h`` moves candidates towards kinks where a free gate fits the weights better.
        dtype: working precision of weights, residuals and gradients (float32 or float64).
        matmul: precision of the matrix products: ``dtype`` itself (default), or
            ``torch.bfloat16`` / ``torch.float16``. Every product's result is brought back to
            ``dtype``, where the residuals ``W_l - G_l``, the sums and the gradients are formed.

    Call ``stat(z, lam, y)`` -> ``(L_stat, dL/dz (m, k), dL/dlam (m,))``, all in ``dtype``;
    with ``free_band > 0``, ``stat(z, lam, y, gates)`` -> the same and ``dL/dgates`` ``(m,
    width)`` (zero outside the band); the entries of ``gates`` outside the band are set, in
    place, to the gate used there, so that an entry that enters the band starts from it;
    ``y``: labels -1/+1, or for a multiclass model class indices (int64). A multiclass
    ``lam`` of shape ``(m, C - 1)`` gives every wrong class its own multiplier (the exact
    stationarity form of cross-entropy with weight decay); ``dL/dlam`` has its shape.
    ``L_stat`` includes the constant ``||W1 (I - B B^T)||^2``, so it equals the loss of the
    candidates ``x = z B^T`` in pixel space.
    """

    def __init__(
        self,
        model: MLP,
        basis: torch.Tensor | None = None,
        *,
        alpha: float | None,
        free_band: float = 0.0,
        free_shape: str = "band",
        dtype: torch.dtype = torch.float32,
        matmul: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        device = torch.device(device) if device is not None else model.layers[0].weight.device
        ws = [layer.weight.detach().to(device, dtype) for layer in model.layers]
        self.multiclass = model.multiclass
        self.trained = [i not in model.frozen for i in range(len(ws))]
        self.const = 0.0
        if basis is not None:
            if not self.trained[0]:
                raise ValueError("row-space coordinates need a trained first layer")
            basis = basis.to(device, dtype)
            w1b = ws[0] @ basis
            # ||W1||^2 = ||W1 B||^2 + ||W1 (I - B B^T)||^2
            self.const = float(ws[0].double().pow(2).sum() - w1b.double().pow(2).sum())
            ws[0] = w1b
        # biases: the first layer's (the paper's network), or every layer's (all_biases)
        self.biases = [layer.bias.detach().to(device, dtype) if layer.bias is not None
                       else None for layer in model.layers]
        self.weights = ws
        self.alpha = alpha
        if not free_band >= 0:
            raise ValueError(f"free_band must be >= 0, got {free_band!r}")
        if free_band > 0 and not self.trained[0]:
            raise ValueError("free gates act on the first layer's gradient; its weights are "
                             "frozen in this model (use free_band=0)")
        if free_shape not in ("band", "smooth"):
            raise ValueError(f"free_shape must be 'band' or 'smooth', got {free_shape!r}")
        self.free_band, self.free_shape = free_band, free_shape
        self.dtype = dtype
        self.matmul = matmul or dtype
        self._half = [self._cast(w) for w in ws]
        self.theta2 = float(sum(p.detach().double().pow(2).sum()
                                for layer, t in zip(model.layers, self.trained) if t
                                for p in layer.parameters()))

    def full_precision(self) -> None:
        """Multiply in the working precision from now on (a run's ``finish_full``)."""
        self.matmul = self.dtype
        self._half = list(self.weights)

    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        return t if t.dtype == self.matmul else t.to(self.matmul)

    def _mm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``a @ b`` in the product precision, returned in the working precision. (The explicit
        conversion is faster than letting the next elementwise operation promote a half
        operand: 10x, measured on the CPU.)"""
        if self.matmul == self.dtype:
            return a.to(self.dtype) @ b.to(self.dtype)
        return (self._cast(a) @ self._cast(b)).to(self.dtype)

    def _gates(self, h: torch.Tensor):
        if self.alpha is None:
            return (h > 0).to(h.dtype), None
        s = torch.sigmoid(self.alpha * h)
        return s, self.alpha * s * (1 - s)

    @staticmethod
    def _norm2(t: torch.Tensor) -> torch.Tensor:
        flat = t.reshape(-1)
        return torch.dot(flat, flat).double()

    def __call__(self, z: torch.Tensor, lam: torch.Tensor, y: torch.Tensor,
                 gates: torch.Tensor | None = None):
        if (gates is not None) != (self.free_band > 0):
            raise ValueError("pass gates exactly when free_band > 0")
        W, Wh, L = self.weights, self._half, len(self.weights)
        dt, m = self.dtype, z.shape[0]
        # forward: a[l] is layer l's input (ah: its copy in the product precision), h[l] its
        # pre-activation, s[l] and sp[l] the soft gate and its derivative
        a, ah, s, sp = [z.to(dt)], [self._cast(z)], [], []
        for i in range(L - 1):
            hi = self._mm(ah[i], Wh[i].T)
            if self.biases[i] is not None:
                hi = hi + self.biases[i]
            hi = hi.to(dt)
            a.append(torch.relu(hi))
            ah.append(self._cast(a[-1]))
            si, spi = self._gates(hi)
            if i == 0 and gates is not None:
                # how free each gate is: w = 1 on the band, 0 off it ("band"), or
                # exp(-(h/eps)^2) ("smooth", whose slope pulls a candidate onto a kink when
                # the free gate fits better); the gate is s + w (G - s)
                if self.free_shape == "band":
                    w, wp = (hi.abs() < self.free_band).to(dt), None
                else:
                    w = torch.exp(-(hi / self.free_band) ** 2)
                    wp = -2 * hi / self.free_band ** 2 * w
                # gates with w < 1e-2 are not free: reset to the gate used there, so that an
                # entry that comes close to its kink starts from it
                w = w.masked_fill(w < 1e-2, 0)
                gates.copy_(torch.where(w > 0, gates.clamp(0, 1), si))
                diff = gates.to(dt) - si
                spi = None if spi is None else spi * (1 - w)
                if wp is not None:
                    spi = wp * diff if spi is None else spi + wp * diff
                si = si + w * diff
            s.append(si)
            sp.append(spi)
        # backward: delta[l] = dPhi/dh_l, u[l] = W_{l+1}^T delta_{l+1} (as rows)
        delta: list = [None] * L
        u: list = [None] * (L - 1)
        pairs = self.multiclass and lam.dim() == 2
        if pairs:  # a multiplier per wrong class: start from sum_c lam_jc (e_y - e_c)
            C = W[L - 1].shape[0]
            wrong = wrong_classes(y, C)
            start = torch.zeros(m, C, dtype=dt, device=z.device)
            start.scatter_(1, wrong, -lam.to(dt))
            start[torch.arange(m, device=z.device), y.long()] = lam.to(dt).sum(1)
            delta[L - 1] = start
            ly = torch.ones(m, 1, dtype=dt, device=z.device)
        elif self.multiclass:  # the margin's gradient: start from e_y - e_c
            logits = self._mm(ah[L - 1], Wh[L - 1].T)
            if self.biases[L - 1] is not None:
                logits = logits + self.biases[L - 1]
            delta[L - 1] = margin_signs(logits, y)
            ly = lam.to(dt)[:, None]
        else:
            delta[L - 1] = torch.ones(m, 1, dtype=dt, device=z.device)
            ly = (lam * y).to(dt)[:, None]
        for i in range(L - 2, -1, -1):
            first = i == L - 2 and not self.multiclass
            u[i] = W[i + 1].expand(m, -1) if first else self._mm(delta[i + 1], Wh[i + 1])
            delta[i] = u[i] * s[i]
        # residuals R_l = W_l - (1/m) sum_j lam_j y_j delta_l a_l^T (trained layers only); the
        # 1/m comes after the product, which keeps float16 inputs away from underflow
        stat = torch.tensor(self.const, dtype=torch.float64, device=z.device)
        e: list = [None] * L
        f: list = [None] * L
        bracket = torch.zeros(m, dtype=dt, device=z.device)
        for i in range(L):
            if not self.trained[i]:
                continue
            ld = ly * delta[i]
            R = W[i] - self._mm(ld.T, ah[i]) / m
            stat = stat + self._norm2(R)
            Rh = self._cast(R)
            e[i] = self._mm(ah[i], Rh.T)
            if self.biases[i] is not None:  # the bias: a weight on a constant input 1
                Rb = self.biases[i] - ld.sum(0) / m
                stat = stat + self._norm2(Rb)
                e[i] = e[i] + Rb
            last = i == L - 1 and not self.multiclass
            f[i] = R.expand(m, -1) if last else self._mm(delta[i], Rh)
            bracket = bracket + (delta[i] * e[i]).sum(1)
        grad_lam = -2 * (bracket / m if self.multiclass else (y / m).to(dt) * bracket)
        # eps[l]: adjoint of delta_l (how the loss moves with the backward pass)
        eps: list = [None] * L
        for i in range(L if pairs else L - 1):
            parts = [] if e[i] is None else [e[i]]
            if i > 0 and eps[i - 1] is not None:
                parts.append(self._mm(s[i - 1] * eps[i - 1], Wh[i].T))
            eps[i] = sum(parts) if parts else None
        # g: adjoint of h_l, from the output back to the input
        g = None
        for i in range(L - 2, -1, -1):
            up = [] if f[i + 1] is None else [f[i + 1]]
            if g is not None:
                up.append(self._mm(g, Wh[i + 1]))
            gi = s[i] * sum(up) if up else torch.zeros_like(s[i])
            if eps[i] is not None and sp[i] is not None:
                gi = gi + u[i] * sp[i] * eps[i]
            g = gi
        gx = self._mm(g, Wh[0]).to(dt)
        if f[0] is not None:
            gx = gx + f[0]
        grad_z = -2 * (ly / m) * gx
        if pairs:  # dL/d(start) = -2/m eps_L; lam_jc moves start[y_j] up and start[c] down
            d_start = -2 * eps[L - 1] / m
            grad_lam = d_start.gather(1, y.long()[:, None]) - d_start.gather(1, wrong)
        if gates is None:
            return stat, grad_z, grad_lam
        grad_gates = -2 * (ly / m) * u[0] * e[0] * w
        return stat, grad_z, grad_lam, grad_gates
