"""Full-batch gradient descent on the logistic loss, as in the paper, with checkpoints.

The paper trains the D-1000-1000-1 MLP with full-batch gradient descent (lr 0.01, no
momentum, no weight decay) on the binary logistic loss in float64 for 10^6 epochs. All of
that is configurable here (:class:`TrainConfig`), plus optional weight decay: at a stationary
point of ``loss + wd/2 ||theta||^2`` the stationarity equation of the KKT conditions holds
exactly (Buzaglo et al., 2023), which makes a model far easier to reconstruct on a small
budget.

Three training-time defenses can be switched on, for the leakage chapter's experiments:
``input_noise`` (fresh Gaussian noise on the training images every epoch), per-sample gradient
clipping ``clip`` with Gaussian ``grad_noise`` (the mechanism of DP-SGD, applied to full-batch
gradient descent; no privacy accounting is done, so it carries no formal guarantee), and
``stop_when_fit`` (early stopping at the first epoch with zero training error).

Checkpoints are plain dictionaries of tensors and numbers, written with ``torch.save`` and read
with ``torch.load(weights_only=True)``: loading one never runs code from the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .files import atomic_save
from .hardware import HALF, PRECISIONS, keep_freed_memory, resolve_precision
from .models import MLP, check_supported, margin_signs
from .provenance import provenance
from .resume import same_but_length

__all__ = [
    "TrainConfig",
    "TrainResult",
    "train",
    "train_task",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    "logistic_loss",
    "clipped_gradients",
    "margins",
    "check_binary_data",
    "check_class_labels",
    "check_data",
    "output_margins",
    "sample_losses",
]

CHECKPOINT_FORMAT = "recon-mlp/1"
# fields added after the format was fixed, with the value older checkpoints were trained with
_ADDED_FIELDS = {"matmul": "full", "input_noise": 0.0, "clip": 0.0, "grad_noise": 0.0,
                 "stop_when_fit": False}
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, untrusted or does not fit the model."""


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in every checkpoint).

    Paper recipe: ``widths=(1000, 1000), init_scale=1e-4, lr=0.01, weight_decay=0,
    dtype="float64", epochs=10**6``.
    """

    widths: tuple[int, ...] = (1000, 1000)
    init_scale: float = 1e-4
    deep_init_scale: float | None = None
    lr: float = 0.01
    weight_decay: float = 0.0
    epochs: int = 10_000
    dtype: str = "float64"
    seed: int = 0
    log_every: int = 100
    # precision of the matrix products of each epoch: "full" (dtype), "bfloat16" / "float16"
    # (torch.autocast; weights, loss and updates stay in dtype), or "auto": bfloat16 where the
    # hardware multiplies it fast, else full
    matmul: str = "full"
    # defenses (all off by default): std of Gaussian noise added to the (mean-subtracted)
    # training images, drawn afresh every epoch; per-sample gradient clipping at this norm
    # (0: off) and Gaussian noise of std grad_noise * clip added to the clipped sum (DP-SGD's
    # mechanism, without privacy accounting); stop at the first epoch with zero training error
    input_noise: float = 0.0
    clip: float = 0.0
    grad_noise: float = 0.0
    stop_when_fit: bool = False

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)
        if self.input_noise < 0 or self.clip < 0 or self.grad_noise < 0:
            raise ValueError("input_noise, clip and grad_noise must be >= 0")
        if self.grad_noise > 0 and self.clip == 0:
            raise ValueError("grad_noise is relative to the clipping norm: set clip > 0 too")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.matmul not in PRECISIONS:
            raise ValueError(f"matmul must be one of {PRECISIONS}, got {self.matmul!r}")
        if self.lr <= 0 or self.epochs < 0 or self.weight_decay < 0:
            raise ValueError("lr must be > 0, epochs >= 0 and weight_decay >= 0")
        if self.log_every <= 0:
            raise ValueError("log_every must be a positive number of epochs")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d


@dataclass
class TrainResult:
    model: MLP
    config: TrainConfig
    history: dict[str, list[float]] = field(default_factory=dict)
    epoch: int = 0
    wall_time: float = 0.0

    def final(self) -> dict[str, float]:
        """The last logged value of every history series."""
        return {k: v[-1] for k, v in self.history.items() if v}


def check_binary_data(
    model: MLP, x: torch.Tensor, y: torch.Tensor, what: str = "training"
) -> None:
    """Raise ``ValueError`` unless ``x`` fits the model and ``y`` is a ``(n,)`` vector of +-1."""
    model.check_input(x)
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{what} labels must have shape ({x.shape[0]},) to match x; got {tuple(y.shape)}"
        )
    bad = ~((y == 1) | (y == -1))
    if bool(bad.any()):
        vals = torch.unique(y).tolist()[:10]
        raise ValueError(
            f"{what} labels must be binary, -1 or +1 (got values {vals}); map a two-class "
            "problem with y = 2 * (label == positive_class) - 1"
        )


def check_class_labels(
    model: MLP, x: torch.Tensor, y: torch.Tensor, what: str = "training"
) -> None:
    """Raise ``ValueError`` unless ``x`` fits the multiclass model and ``y`` is a ``(n,)``
    vector of class indices ``0 .. C-1``."""
    model.check_input(x)
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(
            f"{what} labels must have shape ({x.shape[0]},) to match x; got {tuple(y.shape)}"
        )
    C = model.n_outputs
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError(f"{what} labels must be class indices 0..{C - 1}, got fractions")
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= C):
        raise ValueError(f"{what} labels must be class indices 0..{C - 1} for a model with "
                         f"{C} outputs; got values from {int(y.min())} to {int(y.max())}")


def check_data(model: MLP, x: torch.Tensor, y: torch.Tensor, what: str = "training") -> None:
    """:func:`check_binary_data` for a one-output model, :func:`check_class_labels` for a
    multiclass one."""
    (check_class_labels if model.multiclass else check_binary_data)(model, x, y, what)


def output_margins(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Margins from logits: ``y_i out_i`` for one output ``(n,)``; for ``(n, C)`` logits and
    class indices, ``out_{i, y_i} - max_{c != y_i} out_{i, c}``."""
    if out.dim() == 1:
        return y * out
    # (e_y - e_c) . out: the gradient flows to the true class and the one highest other
    # class, as in the KKT diagnostic and the reconstruction
    return (margin_signs(out, y) * out).sum(1)


def margins(model: MLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The margin of each sample, ``(n,)``; positive means correctly classified.

    Binary: ``y_i Phi(theta; x_i)``. Multiclass: ``Phi_{y_i}(x_i) - max_{c != y_i} Phi_c(x_i)``.
    """
    return output_margins(model(x), y)


def sample_losses(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample loss from logits: ``log(1 + exp(-y out))`` for one output, cross-entropy
    for ``C`` outputs."""
    if out.dim() == 1:
        return F.softplus(-y * out)
    return F.cross_entropy(out, y.long(), reduction="none")


def logistic_loss(model: MLP, x: torch.Tensor, y: torch.Tensor, autocast=None) -> torch.Tensor:
    """Mean logistic loss: binary ``mean log(1 + exp(-y Phi(x)))``, or for a multiclass model
    the cross-entropy (the multinomial logistic loss).

    ``autocast``: a half dtype for the network's matrix products (``torch.autocast``); the
    logits are brought back to the working precision before the loss.
    """
    if autocast is None:
        return sample_losses(model(x), y).mean()
    with torch.autocast(x.device.type, dtype=autocast):
        out = model(x)
    return sample_losses(out.to(x.dtype), y).mean()


def clipped_gradients(model: MLP, x: torch.Tensor, y: torch.Tensor, clip: float,
                      noise: float = 0.0, generator: torch.Generator | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Set ``p.grad`` of the trained parameters to the mean logistic-loss gradient with each
    sample's gradient clipped to norm ``clip``, plus Gaussian noise of std ``noise * clip / n``
    (DP-SGD's mechanism on the full batch). Returns ``(mean loss, per-sample gradient norms)``.

    The per-sample norms need no per-sample gradients: a linear layer's gradient for sample
    ``i`` is the outer product ``g_i a_i^T`` of the loss gradient at its output and its input
    (plus ``g_i`` for a bias), whose squared norm is ``|g_i|^2 (|a_i|^2 + 1)``. The clipped sum
    is then the gradient of ``sum_i c_i loss_i`` with ``c_i = min(1, clip / norm_i)``.
    """
    pre = model.features(x)
    losses = sample_losses(pre[-1].squeeze(-1) if not model.multiclass else pre[-1], y)
    grads = torch.autograd.grad(losses.sum(), pre, retain_graph=True)
    inputs = [x.flatten(1), *(torch.relu(h) for h in pre[:-1])]
    norm2 = torch.zeros(len(x), dtype=losses.dtype, device=x.device)
    for i, (g, a) in enumerate(zip(grads, inputs)):
        if i in model.frozen:
            continue
        bias = 1.0 if model.layers[i].bias is not None else 0.0
        norm2 = norm2 + g.detach().pow(2).sum(1) * (a.detach().pow(2).sum(1) + bias)
    norms = norm2.sqrt()
    scale = (clip / norms.clamp_min(1e-30)).clamp(max=1.0)
    (losses * scale).sum().div(len(x)).backward()
    if noise > 0:
        for p in model.theta():
            p.grad.add_(torch.randn(p.shape, generator=generator, dtype=p.dtype,
                                    device=p.device), alpha=noise * clip / len(x))
    return losses.detach().mean(), norms


def _epoch_generator(config: TrainConfig, epoch: int, device) -> torch.Generator:
    """The noise of one epoch, from the seed and the epoch alone: a resumed run draws the
    same noise as an uninterrupted one."""
    return torch.Generator(device=device).manual_seed(config.seed * 1_000_003 + epoch + 1)


def _log(model, x, y, x_test, y_test, history, epoch, loss, callback=None) -> None:
    if history.get("epoch") and history["epoch"][-1] == epoch:
        return  # already logged (a resumed or re-run finished training)
    if callback is not None:
        for k, v in (callback(epoch, model) or {}).items():
            history.setdefault(k, []).append(float(v))
    with torch.no_grad():
        marg = margins(model, x, y)
        norm2 = model.theta_norm2(None)
        history["epoch"].append(epoch)
        history["loss"].append(float(loss))
        history["train_error"].append(float((marg <= 0).double().mean()))
        history["min_margin"].append(float(marg.min()))
        # Normalised margin min_i y_i Phi(x_i) / ||theta||^L: what gradient flow maximises.
        history["normalized_margin"].append(
            float(marg.min()) / norm2 ** (model.degree / 2) if norm2 > 0 else float("nan"))
        history["param_norm2"].append(norm2)
        if x_test is not None:
            test_margin = margins(model, x_test, y_test)
            history["test_error"].append(float((test_margin <= 0).double().mean()))


def save_checkpoint(
    path: str | os.PathLike, result: TrainResult, optimizer=None, extra=None
) -> None:
    """Write weights, config, history, provenance (and optimizer state) atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "arch": result.model.arch(),
        "dtype": result.config.dtype,
        "state_dict": {k: v.detach().cpu() for k, v in result.model.state_dict().items()},
        "config": result.config.to_dict(),
        "history": {k: list(v) for k, v in result.history.items()},
        "epoch": result.epoch,
        "wall_time": result.wall_time,
        "provenance": provenance(),
        "extra": extra or {},
    }
    if optimizer is not None:
        payload["optimizer"] = optimizer.state_dict()
    atomic_save(payload, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> tuple[TrainResult, dict]:
    """Load a checkpoint written by :func:`save_checkpoint`; validate it; rebuild the model.

    Returns ``(result, raw)`` where ``raw`` is the whole dictionary (optimizer state, extra).
    Raises :class:`CheckpointError` for a missing, corrupt, foreign or inconsistent file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        raw = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle errors, truncated zip files, unsafe globals
        raise CheckpointError(
            f"{path} is not a readable recon checkpoint (corrupt, truncated, or it holds "
            f"objects that weights_only loading refuses): {type(e).__name__}: {e}"
        ) from e
    if not isinstance(raw, dict) or raw.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            f"{path} is not a recon checkpoint (expected format {CHECKPOINT_FORMAT!r}); "
            "to reconstruct from your own weights build a recon.models.MLP and load_state_dict"
        )
    arch = raw.get("arch", {})
    try:
        model = MLP.from_arch(arch)
        # cast before loading so float64 weights are not rounded through float32
        model = model.to(DTYPES.get(raw.get("dtype"), torch.float32))
        model.load_state_dict(raw["state_dict"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(
            f"{path}: weights do not fit the stored architecture {arch}: {e}"
        ) from e
    check_supported(model)
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise CheckpointError(f"{path}: parameter {name} holds NaN or inf")
    cfg = raw.get("config", {})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{**_ADDED_FIELDS, **{k: v for k, v in cfg.items() if k in known}})
    result = TrainResult(model, config, {k: list(v) for k, v in raw.get("history", {}).items()},
                         int(raw.get("epoch", 0)), float(raw.get("wall_time", 0.0)))
    return result, raw


def train(
    model: MLP,
    x: torch.Tensor,
    y: torch.Tensor,
    config: TrainConfig,
    *,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1000,
    progress: bool = True,
    start: TrainResult | None = None,
    optimizer_state: dict | None = None,
    callback=None,
) -> TrainResult:
    """Full-batch gradient descent on the logistic loss.

    x: ``(n, *input_shape)``, y: ``(n,)`` in {-1, +1}; moved to the model's device and dtype.
    ``checkpoint``: a file to save to every ``checkpoint_every`` epochs and at the end.
    ``start``/``optimizer_state``: continue an earlier run (see :func:`train_task`).
    ``callback(epoch, model) -> dict``: extra metrics logged into the history with the rest
    (e.g. the KKT residual of :func:`recon.kkt.kkt_diagnostic`).
    History (every ``config.log_every`` epochs): loss, train/test error, minimum margin,
    normalised margin ``min_i y_i Phi(x_i) / ||theta||^L`` and ``||theta||^2``.
    """
    check_supported(model)
    check_data(model, x, y)
    if x_test is not None:
        check_data(model, x_test, y_test, "test")
    p0 = next(model.parameters())
    dev, dt = p0.device, p0.dtype
    ydt = torch.long if model.multiclass else dt  # class indices, or -1/+1 in the net's dtype
    x, y = x.to(dev, dt), y.to(dev, ydt)
    if x_test is not None:
        x_test, y_test = x_test.to(dev, dt), y_test.to(dev, ydt)
    # float64 training slows ~10x once activations become denormal; flushing them to zero is
    # harmless here. Note: this is a process-wide PyTorch setting and stays on afterwards.
    torch.set_flush_denormal(True)
    half = HALF.get(resolve_precision(config.matmul, dev, dt))
    if dev.type == "cpu":
        keep_freed_memory()

    opt = torch.optim.SGD(model.theta(), lr=config.lr, weight_decay=config.weight_decay)
    if optimizer_state:
        opt.load_state_dict(optimizer_state)
    keys = ["epoch", "loss", "train_error", "min_margin", "normalized_margin", "param_norm2"]
    keys += ["test_error"] if x_test is not None else []
    result = start or TrainResult(model, config, {k: [] for k in keys})
    result.model, result.config = model, config
    for k in keys:
        result.history.setdefault(k, [])
    if start is not None and result.epoch >= config.epochs:
        return result  # a finished run: nothing to train, log or save again
    h = result.history
    if (start is not None and config.stop_when_fit and h["train_error"]
            and h["train_error"][-1] == 0 and h["epoch"][-1] == result.epoch):
        return result  # it stopped early, at zero training error
    noisy = config.input_noise > 0 or config.grad_noise > 0
    t0 = time.perf_counter() - result.wall_time

    bar = tqdm(range(result.epoch, config.epochs), desc="train", disable=not progress,
               initial=result.epoch, total=config.epochs)
    for epoch in bar:
        if config.stop_when_fit:
            with torch.no_grad():
                if bool((margins(model, x, y) > 0).all()):
                    break  # the first epoch with zero training error: stop here
        gen = _epoch_generator(config, epoch, dev) if noisy else None
        xb = x
        if config.input_noise > 0:
            xb = x + config.input_noise * torch.randn(x.shape, generator=gen, dtype=dt,
                                                      device=dev)
        if config.clip > 0:  # per-sample clipping: full precision, gradients set here
            loss, _ = clipped_gradients(model, xb, y, config.clip, config.grad_noise, gen)
        else:
            loss = logistic_loss(model, xb, y, half)
        if epoch % config.log_every == 0:
            _log(model, x, y, x_test, y_test, result.history, epoch, loss.item(), callback)
            bar.set_postfix(loss=f"{loss.item():.3g}", err=result.history["train_error"][-1])
        if not math.isfinite(loss.item()):
            raise FloatingPointError(
                f"training diverged at epoch {epoch} (loss {loss.item()}); lower the lr"
            )
        if config.clip == 0:
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        result.epoch = epoch + 1
        if checkpoint and result.epoch % checkpoint_every == 0:
            result.wall_time = time.perf_counter() - t0
            save_checkpoint(checkpoint, result, opt)
    with torch.no_grad():
        _log(model, x, y, x_test, y_test, result.history, result.epoch,
             logistic_loss(model, x, y).item(), callback)
    result.wall_time = time.perf_counter() - t0
    if checkpoint:
        save_checkpoint(checkpoint, result, opt)
    return result


def train_task(
    task,
    config: TrainConfig,
    *,
    checkpoint: str | os.PathLike | None = None,
    resume: bool = True,
    device: str | torch.device | None = None,
    **kw,
) -> TrainResult:
    """Build the MLP for a :class:`recon.data.BinaryTask`, train it, return the result.

    With ``checkpoint`` set and ``resume=True``, an existing checkpoint of the same config is
    continued where it stopped (a finished one is returned as it is). A checkpoint written with
    a different config raises :class:`CheckpointError` instead of being overwritten.
    """
    dtype = DTYPES[config.dtype]
    if checkpoint and resume and Path(checkpoint).is_file():
        prev, raw = load_checkpoint(checkpoint)
        theirs = prev.config.to_dict()  # fields added since: the value it was trained with
        if not same_but_length(theirs, config.to_dict(), "epochs"):
            raise CheckpointError(
                f"{checkpoint} was written with a different config ({theirs}); "
                "pass another path or resume=False to start over"
            )
        model = prev.model.to(device or "cpu", dtype)
        return train(model, task.x_train, task.y_train, config, x_test=task.x_test,
                     y_test=task.y_test, checkpoint=checkpoint, start=prev,
                     optimizer_state=raw.get("optimizer"), **kw)
    torch.manual_seed(config.seed)
    model = MLP(task.image_shape, config.widths, init_scale=config.init_scale,
                deep_init_scale=config.deep_init_scale,
                n_outputs=getattr(task, "n_outputs", 1)).to(device or "cpu", dtype)
    return train(model, task.x_train, task.y_train, config, x_test=task.x_test,
                 y_test=task.y_test, checkpoint=checkpoint, **kw)
