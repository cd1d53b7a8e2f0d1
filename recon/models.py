"""The paper's network: a homogeneous ReLU MLP with one output logit (or one per class).

``MLP(input_shape, widths=(1000, 1000))`` is the D-1000-1000-1 network of Haim et al.
(2022): ReLU activations, a bias in the first layer only, no bias in the hidden or output
layers. The first-layer bias acts as a weight on a constant input, so the network is
positively homogeneous in its parameters, of degree ``depth = len(widths) + 1``:
``Phi(c * theta; x) = c**depth * Phi(theta; x)`` for ``c > 0``. That homogeneity is what
the implicit-bias theory (and so the reconstruction) rests on. ``n_outputs = C > 1`` gives the
multiclass network of Buzaglo et al. (2023), ``D -> widths... -> C``, homogeneous the same way.

The forward pass takes an optional ``alpha``. With ``alpha=None`` the ReLU is exact. With
a number, the forward value is still the exact ReLU but its derivative is
``sigmoid(alpha * z)`` instead of the step function: the reconstruction differentiates the
network's parameter gradient with respect to the input, and the step function's derivative
in ``z`` is zero almost everywhere, so an exact ReLU would give the optimiser no signal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MLP", "relu_soft_backward", "check_supported", "margin_signs", "wrong_classes",
           "UnsupportedModelError"]


class UnsupportedModelError(TypeError):
    """Raised when a model is not an MLP of the form this library supports."""


def relu_soft_backward(z: torch.Tensor, alpha: float | None) -> torch.Tensor:
    """ReLU whose forward is exact and whose derivative is ``sigmoid(alpha * z)``.

    ``softplus(alpha z) / alpha`` has derivative ``sigmoid(alpha z)``; adding it and
    subtracting its detached value leaves the forward value at ``relu(z)`` while autograd
    (including double backward) sees the smooth gate. ``alpha=None`` gives the exact ReLU.

    z: any shape. Returns the same shape.
    """
    if alpha is None:
        return F.relu(z)
    smooth = F.softplus(alpha * z) / alpha
    return (smooth - smooth.detach()) + F.relu(z).detach()


class MLP(nn.Module):
    """Fully connected ReLU network ``D -> widths... -> n_outputs`` with a first-layer bias only.

    Args:
        input_shape: shape of one input, e.g. ``(1, 28, 28)`` or ``(3, 32, 32)`` or ``(2,)``.
        widths: hidden widths; the paper uses ``(1000, 1000)``.
        init_scale: the first layer's weight and bias are drawn ``N(0, 1) * init_scale``
            (paper: 1e-4). Deeper layers keep PyTorch's default initialisation unless
            ``deep_init_scale`` is given, in which case they are ``N(0, 1) * deep_init_scale``.
        first_bias: keep the first layer's bias (the paper does).
        all_biases: a bias in every layer (PyTorch's ``nn.Linear`` default). The network is
            then not homogeneous, and the stationarity equation holds only at a stationary
            point of training with weight decay on every parameter (Buzaglo et al., 2023),
            not at the limit of training without it; ``first_bias`` must stay True.
        frozen: indices of layers that are not trained (see :meth:`freeze`).
        n_outputs: 1 (the paper's binary classifier) or the number of classes ``C >= 2``.

    ``forward(x, alpha=None)``: x ``(m, *input_shape)`` -> logits ``(m,)`` for one output,
    ``(m, C)`` for ``C`` outputs.

    Frozen layers: the network is still homogeneous in the parameters that are trained, of
    degree :attr:`degree` (the number of trained layers), so the implicit-bias theorem and the
    stationarity equation hold for ``theta`` = the trained parameters (:meth:`theta`). Training,
    the KKT diagnostic and the reconstruction all use :meth:`theta`. A frozen wide random first
    layer turns the network into a random-features model (chapter 1).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        widths: Sequence[int] = (1000, 1000),
        init_scale: float | None = 1e-4,
        first_bias: bool = True,
        deep_init_scale: float | None = None,
        frozen: Sequence[int] = (),
        n_outputs: int = 1,
        all_biases: bool = False,
    ) -> None:
        super().__init__()
        if all_biases and not first_bias:
            raise ValueError("all_biases=True puts a bias in every layer, the first included")
        self.all_biases = bool(all_biases)
        if int(n_outputs) != n_outputs or n_outputs < 1:
            raise ValueError(f"n_outputs must be a positive integer, got {n_outputs!r}")
        self.n_outputs = int(n_outputs)
        self.frozen: tuple[int, ...] = ()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.widths = tuple(int(w) for w in widths)
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths!r}")
        if any(s <= 0 for s in self.input_shape):
            raise ValueError(f"input_shape must be positive, got {input_shape!r}")
        self.first_bias = bool(first_bias)
        dims = (math.prod(self.input_shape), *self.widths, self.n_outputs)
        self.layers = nn.ModuleList(
            nn.Linear(d_in, d_out, bias=(i == 0 and self.first_bias) or self.all_biases)
            for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:]))
        )
        with torch.no_grad():
            if init_scale is not None:
                self.layers[0].weight.normal_().mul_(init_scale)
                if self.first_bias:
                    self.layers[0].bias.normal_().mul_(init_scale)
            if deep_init_scale is not None:
                for layer in self.layers[1:]:
                    layer.weight.normal_().mul_(deep_init_scale)
        if frozen:
            self.freeze(frozen)

    def freeze(self, layers: Sequence[int]) -> MLP:
        """Stop training the given layers (weights and bias); returns ``self``.

        At least one layer must stay trainable. Freezing is recorded in :meth:`arch`, so
        checkpoints rebuild the same split.
        """
        idx = sorted({int(i) for i in layers} | set(self.frozen))
        bad = [i for i in idx if not 0 <= i < len(self.layers)]
        if bad:
            raise ValueError(f"layers {bad} do not exist; the network has layers "
                             f"0..{len(self.layers) - 1}")
        if len(idx) == len(self.layers):
            raise ValueError("at least one layer must stay trainable")
        for i in idx:
            for p in self.layers[i].parameters():
                p.requires_grad_(False)
        self.frozen = tuple(idx)
        return self

    def theta(self) -> list[nn.Parameter]:
        """The trained parameters: those of every layer that is not frozen."""
        return [p for i, layer in enumerate(self.layers) if i not in self.frozen
                for p in layer.parameters()]

    @classmethod
    def from_arch(cls, arch: dict) -> MLP:
        """An untrained network of the shape ``arch`` (what :meth:`arch` returns and
        checkpoints store); load its weights with ``load_state_dict``."""
        return cls(arch["input_shape"], arch["widths"], init_scale=None,
                   first_bias=arch["first_bias"], frozen=arch.get("frozen", ()),
                   n_outputs=arch.get("n_outputs", 1), all_biases=arch.get("all_biases", False))

    def theta_norm2(self, dtype: torch.dtype | None = torch.float64) -> float:
        """``||theta||^2`` over the trained parameters, accumulated in ``dtype`` (float64 by
        default; ``None`` keeps the parameters' own dtype)."""
        return float(sum(p.detach().to(dtype or p.dtype).pow(2).sum() for p in self.theta()))

    @property
    def depth(self) -> int:
        """Number of linear layers."""
        return len(self.layers)

    @property
    def degree(self) -> int:
        """Degree of homogeneity in the trained parameters: the number of trained layers
        (equal to :attr:`depth` unless layers are frozen)."""
        return len(self.layers) - len(self.frozen)

    @property
    def input_dim(self) -> int:
        return math.prod(self.input_shape)

    def arch(self) -> dict:
        """JSON-serialisable description, enough to rebuild the module."""
        return {
            "input_shape": list(self.input_shape),
            "widths": list(self.widths),
            "first_bias": self.first_bias,
            "frozen": list(self.frozen),
            "n_outputs": self.n_outputs,
            **({"all_biases": True} if self.all_biases else {}),
        }

    def check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate ``x`` of shape ``(m, *input_shape)`` (or ``(m, D)``); return it flattened."""
        if x.dim() < 2:
            raise ValueError(
                f"expected a batch of inputs of shape (m, {', '.join(map(str, self.input_shape))}),"
                f" got shape {tuple(x.shape)}; add a batch dimension with x.unsqueeze(0)"
            )
        if tuple(x.shape[1:]) != self.input_shape and tuple(x.shape[1:]) != (self.input_dim,):
            raise ValueError(
                f"this model takes inputs of shape (m, {', '.join(map(str, self.input_shape))}),"
                f" got {tuple(x.shape)}"
            )
        return x.reshape(x.shape[0], -1)

    def features(self, x: torch.Tensor, alpha: float | None = None) -> list[torch.Tensor]:
        """Pre-activations of every layer: a list of ``(m, width_l)`` tensors, the last
        ``(m, n_outputs)``."""
        h = self.check_input(x)
        pre = []
        for i, layer in enumerate(self.layers):
            if i > 0:
                h = relu_soft_backward(h, alpha)
            h = layer(h)
            pre.append(h)
        return pre

    def forward(self, x: torch.Tensor, alpha: float | None = None) -> torch.Tensor:
        out = self.features(x, alpha)[-1]
        return out.squeeze(-1) if self.n_outputs == 1 else out

    @property
    def multiclass(self) -> bool:
        """Whether the network has one output per class (``n_outputs > 1``)."""
        return self.n_outputs > 1

    def extra_repr(self) -> str:
        out = f", n_outputs={self.n_outputs}" if self.multiclass else ""
        return f"input_shape={self.input_shape}, widths={self.widths}{out}"

    @classmethod
    def from_sequential(cls, seq: nn.Sequential, input_shape: Sequence[int]) -> MLP:
        """Build an :class:`MLP` holding the weights of ``Flatten? Linear ReLU ... Linear``."""
        mods = [m for m in seq if not isinstance(m, nn.Flatten)]
        linears = mods[0::2]
        acts = mods[1::2]
        if (
            not linears
            or not all(isinstance(m, nn.Linear) for m in linears)
            or not all(isinstance(m, nn.ReLU) for m in acts)
            or len(acts) != len(linears) - 1
        ):
            raise UnsupportedModelError(
                "expected nn.Sequential(Linear, ReLU, Linear, ..., ReLU, Linear); got "
                + ", ".join(type(m).__name__ for m in seq)
            )
        has = [m.bias is not None for m in linears]
        every = all(has)
        if any(has[1:]) and not every:
            raise UnsupportedModelError(
                "some Linear layers after the first have a bias and some do not: the library "
                "supports a bias in the first layer only (a homogeneous network) or in every "
                "layer (under weight decay); biases at layers "
                f"{[i for i, h in enumerate(has) if h]}")
        model = cls(
            input_shape,
            widths=[m.out_features for m in linears[:-1]],
            init_scale=None,
            first_bias=has[0],
            n_outputs=linears[-1].out_features,
            all_biases=every and len(linears) > 1,
        )
        if model.input_dim != linears[0].in_features:
            raise UnsupportedModelError(
                f"input_shape {tuple(input_shape)} has {model.input_dim} values but the first "
                f"Linear takes {linears[0].in_features}"
            )
        model = model.to(linears[0].weight.dtype)  # before loading: no float32 rounding
        model.load_state_dict(
            {f"layers.{i}.{k}": v for i, m in enumerate(linears) for k, v in m.state_dict().items()}
        )
        return model


def margin_signs(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``(m, C)`` rows ``e_{y_j} - e_{c_j}``, ``c_j`` the highest class other than ``y_j`` (the
    first of them on a tie): the margin ``Phi_{y_j} - max_{c != y_j} Phi_c`` of a multiclass
    network is ``rows . Phi``, and its gradient starts its backward pass from them."""
    hot = F.one_hot(y.long(), logits.shape[1]).bool()
    other = logits.detach().masked_fill(hot, float("-inf")).argmax(1)
    sign = hot.to(logits.dtype)
    sign[torch.arange(len(sign), device=sign.device), other] = -1.0
    return sign


def wrong_classes(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(m, C - 1)``: each sample's classes other than ``y``, in increasing order."""
    cls = torch.arange(n_classes, device=y.device).expand(len(y), n_classes)
    return cls[cls != y.long()[:, None]].view(len(y), n_classes - 1)


def check_supported(model: nn.Module) -> MLP:
    """Return ``model`` if the reconstruction supports it, else raise a clear error.

    Supported: this library's :class:`MLP` (homogeneous ReLU network, one logit or one per
    class, bias in the first layer at most). A plain ``nn.Sequential`` of Linear/ReLU layers
    with the same structure can be converted with :func:`MLP.from_sequential`.
    """
    if isinstance(model, MLP):
        for i, layer in enumerate(model.layers):
            if i > 0 and layer.bias is not None and not model.all_biases:
                raise UnsupportedModelError(
                    f"layer {i} has a bias: the method needs a homogeneous network "
                    "(bias in the first layer only)"
                )
        if model.layers[-1].out_features != model.n_outputs:
            raise UnsupportedModelError(
                f"the output layer has {model.layers[-1].out_features} outputs but the model "
                f"declares n_outputs = {model.n_outputs}; build it with MLP(..., n_outputs=C)")
        return model
    if isinstance(model, nn.Sequential):
        raise UnsupportedModelError(
            "got an nn.Sequential; convert it with recon.models.MLP.from_sequential(model, "
            "input_shape) (Linear/ReLU layers only, bias in the first Linear only)"
        )
    raise UnsupportedModelError(
        f"got a {type(model).__name__}; the reconstruction supports recon.models.MLP: a ReLU "
        "MLP with a bias in the first layer only (a homogeneous network)"
    )
