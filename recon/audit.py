"""Audit a model trained elsewhere: does its weights file give its training set away?

:func:`audit` (and ``python -m recon audit``) runs the book's reconstruction against a model
that the user trained with their own code, and writes a report a privacy officer can read:

1. **load** the weights: a PyTorch ``state_dict`` (``.pt``/``.pth``, read with
   ``torch.load(weights_only=True)``, which refuses files that hold code), a ``.safetensors``
   file, or an ``nn.Sequential`` / ``nn.Module`` in Python. The MLP is inferred from the weight
   shapes; anything the method does not cover (a convolution, a normalisation layer, an
   activation other than ReLU, biases in some layers but not all) is refused with the layer's
   name;
2. **attack** with the weights alone: the library's reconstruction
   (:func:`recon.reconstruct.reconstruct`), as many independent runs as the compute budget
   allows, each checkpointed (rerun the same command to resume). What the attacker knows is
   explicit: the weights, the number of classes (read from the output layer), and the data
   mean or input box only if the user gives it. The number of candidates comes from the
   weights too: twice the rank of the first layer, which after training is about the number
   of training samples that shaped it;
3. **score**, only if the user gives the training samples (and, for a control, held-out
   samples): images with the book's protocol (:func:`recon.evaluate.evaluate_both`: one-to-one
   matching, NCC and SSIM), feature vectors with cosine similarity; the training data are
   never read before the attack has finished;
4. **report**: ``OUT/audit.json`` and a self-contained ``OUT/index.html`` (verdict, gallery,
   which samples leak, what lowers the risk, how it was made).

The stationarity equation the attack inverts, ``theta = sum_i lambda_i y_i grad Phi(x_i)``,
holds at a stationary point of the logistic (or cross-entropy) loss with weight decay for any
differentiable network, and, without weight decay, at the limit of a homogeneous network
(Haim et al., 2022; Buzaglo et al., 2023). It covers ReLU MLPs with a bias in the first layer
at most (homogeneous) or in every layer (PyTorch's default, under weight decay); the report
says which case a model is in and how far its weights are from the equation.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import html
import io
import json
import math
import os
import pickle
import re
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .models import MLP, UnsupportedModelError
from .probes import KINK_SUMMARY, kink_membership

__all__ = ["audit", "load_model", "load_samples", "Samples", "parse_budget",
           "UntrustedFileError", "AUDIT_FORMAT", "write_report", "vector_evaluation"]

AUDIT_FORMAT = "recon-audit/1"
#: thresholds of the counts: NCC for images (the book's headline criterion), cosine for vectors
THRESHOLDS = (0.8, 0.9)
_NORM_KEYS = ("running_mean", "running_var", "num_batches_tracked")
_ACTIVATION_OK = (nn.ReLU,)
_NEUTRAL = (nn.Flatten, nn.Identity, nn.Dropout)


class UntrustedFileError(ValueError):
    """A file that is not a plain weights file (it holds code or other Python objects)."""


# ---------------------------------------------------------------------------------------------
# Loading a model
# ---------------------------------------------------------------------------------------------
def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: ``.safetensors``, or a PyTorch file holding a
    ``state_dict`` (optionally under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``).

    PyTorch files are read with ``weights_only=True``: a file that pickles code or other
    objects raises :class:`UntrustedFileError` and nothing in it runs."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weights file at {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise ValueError(f"{path} is not a valid .safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights only load failed" in str(e).lower() or "unsupported global" in str(e).lower():
            raise UntrustedFileError(
                f"{path} holds Python objects other than tensors (code, a pickled model class), "
                "and recon never runs code from a weights file. Save the weights alone: "
                "torch.save(model.state_dict(), 'model.pt'), or safetensors' save_file"
            ) from None
        raise ValueError(f"{path} is not a PyTorch weights file ({first})") from None
    except Exception as e:  # garbage makes the unpickler fail in many ways
        raise ValueError(f"{path} is not a PyTorch weights file ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}); pass a state_dict saved "
                         "with torch.save or a .safetensors file") from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj:
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state_dict (a dict of "
                         "named tensors): save model.state_dict()")
    bad = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if bad:
        raise ValueError(f"{path}: entries {bad[:3]} are not tensors; a state_dict maps "
                         "parameter names to tensors")
    return dict(obj)


def _layer_of(key: str) -> str:
    return key.rsplit(".", 1)[0] if "." in key else key


def mlp_from_state_dict(state: dict[str, torch.Tensor], *,
                        input_shape: tuple[int, ...] | None = None) -> MLP:
    """An :class:`MLP` holding the weights of ``state``: its 2-D ``*.weight`` tensors, in the
    order of their names (natural order: ``fc2`` before ``fc10``), chained ``D -> ... -> C``.

    Refuses, naming the layer: convolutions (weights with more than two dimensions),
    normalisation layers (running statistics or 1-D weights), biases in some layers after the
    first but not all, and weights that do not chain. The file does not say which activation
    the network used: the audit assumes ReLU, and the report says so."""
    for key in state:  # running statistics name a batch norm before its 1-D weight does
        if key.endswith(_NORM_KEYS):
            raise UnsupportedModelError(
                f"layer {_layer_of(key)!r} is a normalisation layer (it has "
                f"{key.rsplit('.', 1)[-1]}): the method covers ReLU MLPs only (Linear and ReLU "
                "layers). Fold the normalisation into the next Linear layer, or audit the MLP "
                "head alone")
    for key, t in state.items():
        layer = _layer_of(key)
        if key.endswith("weight") and t.dim() > 2:
            raise UnsupportedModelError(
                f"layer {layer!r} has a {t.dim()}-D weight {tuple(t.shape)}: a convolution. "
                "The reconstruction inverts the stationarity equation of a fully connected "
                "ReLU network only; audit the MLP on top of frozen features instead "
                "(feature vectors as input)")
        if key.endswith("weight") and t.dim() == 1:
            raise UnsupportedModelError(
                f"layer {layer!r} has a 1-D weight: a normalisation or scaling layer, which "
                "the method does not cover (ReLU MLPs only)")
        if not key.endswith(("weight", "bias")):
            raise UnsupportedModelError(
                f"{key!r} is neither a weight nor a bias: the method covers state_dicts of "
                "Linear layers only")
    weights = sorted((k for k in state if k.endswith("weight")), key=_natural)
    if not weights:
        raise UnsupportedModelError("the file holds no 2-D weight: not a Linear network")
    for prev, nxt in zip(weights, weights[1:]):
        if state[nxt].shape[1] != state[prev].shape[0]:
            raise UnsupportedModelError(
                f"{nxt!r} takes {state[nxt].shape[1]} inputs but {prev!r} gives "
                f"{state[prev].shape[0]} outputs: the weights do not chain into one MLP in the "
                "order of their names (convert the model with MLP.from_sequential instead)")
    layers = [_layer_of(k) for k in weights]
    has = [f"{layer}.bias" in state for layer in layers]
    every = all(has) and len(layers) > 1
    if any(has[1:]) and not every:
        first = next(layers[i] for i in range(1, len(layers)) if has[i])
        raise UnsupportedModelError(
            f"layer {first!r} has a bias but not every layer does: the method covers a bias "
            "in the first layer at most (a homogeneous network) or in every layer (trained "
            "with weight decay); retrain with one of the two")
    for i, layer in enumerate(layers):
        bias = state.get(f"{layer}.bias")
        if bias is not None and bias.shape != state[weights[i]].shape[:1]:
            raise UnsupportedModelError(f"{layer}.bias has shape {tuple(bias.shape)}, "
                                        f"expected ({state[weights[i]].shape[0]},)")
    extra = set(state) - set(weights) - {f"{layer}.bias" for layer in layers}
    if extra:
        raise UnsupportedModelError(f"entries {sorted(extra)[:3]} belong to no Linear layer")
    d_in = state[weights[0]].shape[1]
    shape = tuple(input_shape) if input_shape is not None else (d_in,)
    if math.prod(shape) != d_in:
        raise ValueError(f"input shape {shape} has {math.prod(shape)} values but the first "
                         f"layer {layers[0]!r} takes {d_in}")
    model = MLP(shape, widths=[state[k].shape[0] for k in weights[:-1]], init_scale=None,
                first_bias=has[0], n_outputs=state[weights[-1]].shape[0], all_biases=every)
    model = model.to(state[weights[0]].dtype)
    sd = {f"layers.{i}.weight": state[k] for i, k in enumerate(weights)}
    sd.update({f"layers.{i}.bias": state[f"{layer}.bias"] for i, layer in enumerate(layers)
               if has[i]})
    model.load_state_dict(sd)
    return model


def mlp_from_module(module: nn.Module, input_shape: tuple[int, ...] | None = None) -> MLP:
    """An :class:`MLP` from a model object: this library's MLP as it is, or an
    ``nn.Sequential`` (nested ones flattened) of Linear, ReLU, Flatten, Dropout and Identity
    layers. Any other layer is refused with its position and why."""
    if isinstance(module, MLP):
        return module
    if not isinstance(module, nn.Sequential):
        leaves = [m for m in module.modules() if not list(m.children())]
        kinds = {type(m).__name__ for m in leaves}
        raise UnsupportedModelError(
            f"got a {type(module).__name__} (layers: {', '.join(sorted(kinds))}); its forward "
            "pass is code recon cannot check. Pass an nn.Sequential of Linear and ReLU layers, "
            "or its state_dict (the audit infers the MLP from the weight shapes)")

    def flat(seq):
        for m in seq:
            yield from (flat(m) if isinstance(m, nn.Sequential) else [m])

    mods = list(flat(module))
    kept = []
    for i, m in enumerate(mods):
        if isinstance(m, _NEUTRAL):
            continue
        if isinstance(m, (nn.Linear, *_ACTIVATION_OK)):
            kept.append(m)
            continue
        why = ("a convolution: the method covers fully connected networks only"
               if isinstance(m, nn.modules.conv._ConvNd) else
               "a normalisation layer: fold it into the next Linear layer first"
               if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
               else "a softmax inside the network: the method needs the logits; drop it (the "
               "loss applies it)" if isinstance(m, (nn.Softmax, nn.LogSoftmax)) else
               "an activation other than ReLU: the stationarity equation the attack inverts "
               "is that of a (piecewise linear, homogeneous) ReLU network")
        raise UnsupportedModelError(f"layer {i} ({type(m).__name__}) is {why}")
    linears = [m for m in kept if isinstance(m, nn.Linear)]
    if not linears:
        raise UnsupportedModelError("the model has no Linear layer")
    d_in = linears[0].in_features
    return MLP.from_sequential(nn.Sequential(*kept),
                               tuple(input_shape) if input_shape is not None else (d_in,))


def load_model(source, *, input_shape: tuple[int, ...] | None = None) -> MLP:
    """An :class:`MLP` from a weights file path, a ``state_dict`` or a model object."""
    if isinstance(source, (str, os.PathLike)):
        source = load_state_dict(source)
    if isinstance(source, dict):
        return mlp_from_state_dict(source, input_shape=input_shape)
    if isinstance(source, nn.Module):
        model = mlp_from_module(source, input_shape)
        if input_shape is not None and tuple(model.input_shape) != tuple(input_shape):
            model = load_model(dict(model.state_dict()), input_shape=input_shape)
        return model
    raise TypeError(f"expected a weights file, a state_dict or an nn.Module, got "
                    f"{type(source).__name__}")


# ---------------------------------------------------------------------------------------------
# Loading samples (only to score the attack afterwards)
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Samples:
    """Samples as the model saw them: ``x`` ``(n, *input_shape)`` float, ``y`` ``(n,)`` labels
    as given (0/1 or -1/+1 for a binary model, class indices for a multiclass one)."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    source: str = ""


def load_samples(path: str | os.PathLike) -> Samples:
    """Samples from ``.npz`` (arrays ``x`` and optionally ``y``), a tensor file saved with
    ``torch.save({"x": ..., "y": ...})`` (read with ``weights_only``), or a folder of images
    with one subfolder per class (PNG/JPEG, scaled to [0, 1], classes in sorted order).
    Integer images (uint8) are scaled to [0, 1]."""
    path = Path(path)
    if path.is_dir():
        from PIL import Image

        classes = sorted(p for p in path.iterdir() if p.is_dir())
        if not classes:
            raise ValueError(f"{path} has no class subfolders (expected {path}/CLASS/*.png)")
        xs, ys = [], []
        for c, folder in enumerate(classes):
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() not in (".png", ".jpg", ".jpeg", ".bmp"):
                    continue
                a = np.asarray(Image.open(f))
                a = a[:, :, None] if a.ndim == 2 else a[:, :, :3]
                xs.append(torch.from_numpy(a.copy()).permute(2, 0, 1))
                ys.append(c)
        if not xs:
            raise ValueError(f"no images under {path}/*/")
        if len({tuple(x.shape) for x in xs}) > 1:
            raise ValueError(f"the images under {path} differ in size; resize them to the "
                             "model's input size first")
        return Samples(torch.stack(xs).float() / 255.0, torch.tensor(ys), str(path))
    if not path.is_file():
        raise FileNotFoundError(f"no sample file or folder at {path}")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            if "x" not in z:
                raise ValueError(f"{path} has arrays {list(z.keys())}; expected 'x' (and 'y')")
            x, y = z["x"], (z["y"] if "y" in z else None)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise UntrustedFileError(f"{path} holds Python objects other than tensors; save "
                                     "{'x': tensor, 'y': tensor} or an .npz file") from None
        except Exception as e:  # garbage makes the unpickler fail in many ways
            raise ValueError(f"{path} is neither .npz nor a tensor file ({e})") from None
        if torch.is_tensor(obj):
            x, y = obj, None
        elif isinstance(obj, dict) and "x" in obj:
            x, y = obj["x"], obj.get("y")
        elif isinstance(obj, (tuple, list)) and len(obj) == 2:
            x, y = obj
        else:
            raise ValueError(f"{path}: expected a tensor, {{'x', 'y'}} or (x, y)")
    x = torch.as_tensor(np.asarray(x)) if not torch.is_tensor(x) else x
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if y is not None:
        y = torch.as_tensor(np.asarray(y)) if not torch.is_tensor(y) else y
        if len(y) != len(x):
            raise ValueError(f"{path}: {len(x)} samples but {len(y)} labels")
    return Samples(x, y, str(path))


def _fit_shape(s: Samples, model: MLP, name: str) -> Samples:
    d = model.input_dim
    if s.x[0].numel() != d:
        raise ValueError(f"--{name} samples have {s.x[0].numel()} values each, the model "
                         f"takes {d}: pass the inputs as the model saw them")
    return Samples(s.x.reshape(len(s.x), *model.input_shape), s.y, s.source)


# ---------------------------------------------------------------------------------------------
# Budget, scoring
# ---------------------------------------------------------------------------------------------
def parse_budget(budget) -> float:
    """Seconds from ``300``, ``"300"``, ``"90s"``, ``"5m"``, ``"1.5h"``."""
    if isinstance(budget, (int, float)):
        seconds = float(budget)
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(budget))
        if not m:
            raise ValueError(f"budget {budget!r}: write seconds, or a number with s, m or h "
                             "(e.g. 90s, 5m, 1h)")
        seconds = float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]
    if not seconds > 0:
        raise ValueError(f"budget must be positive, got {budget!r}")
    return seconds


def is_image_shape(shape) -> bool:
    """``(C, H, W)`` with 1 or 3 channels and both sides at least 8: scored as images."""
    return len(shape) == 3 and shape[0] in (1, 3) and min(shape[1:]) >= 8


@dataclasses.dataclass
class VectorEvaluation:
    """One-to-one matching of feature vectors by cosine similarity (the image protocol's
    counterpart): per pair the training index, candidate index and cosine (as ``ncc``, so
    :func:`recon.margins.margin_analysis` reads it), sorted by similarity."""

    train_index: torch.Tensor
    candidate_index: torch.Tensor
    ncc: torch.Tensor
    ssim: torch.Tensor
    n_train: int
    n_candidates: int

    def counts(self) -> dict[str, int]:
        return {f"cos>{t}": int((self.ncc > t).sum()) for t in THRESHOLDS}


def vector_evaluation(candidates: torch.Tensor, x: torch.Tensor) -> VectorEvaluation:
    """Cosine similarity of every candidate with every sample, one-to-one matching."""
    from .evaluate import match_one_to_one

    a = torch.nn.functional.normalize(candidates.flatten(1).double(), dim=1)
    b = torch.nn.functional.normalize(x.flatten(1).double(), dim=1)
    cos = b @ a.T  # (n, m)
    match = match_one_to_one(1 - cos)
    rows = torch.nonzero(match >= 0).squeeze(1)
    sims = cos[rows, match[rows]]
    order = torch.argsort(sims, descending=True)
    rows, sims = rows[order], sims[order]
    return VectorEvaluation(rows, match[rows], sims.float(),
                            torch.full((len(rows),), float("nan")), len(x), len(candidates))


def _png(img: torch.Tensor, scale: int) -> str:
    from PIL import Image

    a = (img.clamp(0, 1) * 255).round().byte()
    a = a[0] if a.shape[0] == 1 else a.permute(1, 2, 0)
    im = Image.fromarray(a.numpy())
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _sha256(path: Path | None, model: MLP) -> str:
    h = hashlib.sha256()
    if path is not None and Path(path).is_file():
        h.update(Path(path).read_bytes())
    else:
        for k, v in model.state_dict().items():
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _labels(y, model: MLP) -> torch.Tensor | None:
    """Labels as the library uses them: -1/+1 for one output, class indices otherwise."""
    if y is None:
        return None
    y = torch.as_tensor(y)
    if model.multiclass:
        return y.long()
    vals = set(torch.unique(y).tolist())
    if vals <= {0, 1}:
        return y.double() * 2 - 1
    if vals <= {-1, 1}:
        return y.double()
    raise ValueError(f"a binary model's labels must be 0/1 or -1/+1, got values {sorted(vals)}")


def _risk_levers() -> list[dict]:
    """What the leakage chapter measured: the share of training images recovered (one-to-one
    NCC > 0.9) by each training change against the same recipe, from the committed study
    cards (binary MNIST)."""
    from .reproduce import results_dir

    root = results_dir() / "study" / "leakage"
    cards = {}
    for p in sorted(root.glob("mnist-*/card.json")) if root.is_dir() else []:
        if "multiclass" in p.parent.name:
            continue
        c = json.loads(p.read_text())
        if not c.get("complete"):
            continue
        counts = c["pool"]["counts"]["pool"]["one_to_one"]
        cards[p.parent.name.removeprefix("mnist-")] = {
            "share": counts["ncc>0.9"] / c["task"]["n"], "n": c["task"]["n"],
            "test": c["pool"].get("test_control", {}).get("ncc>0.9")}
    base = cards.pop("base", None)
    if base is None:
        return []
    rows = [{"change": k.replace("_", " "), **v} for k, v in cards.items()]
    # the most protective change first; the recipe itself on top, as the reference
    return [{"change": "none (the book's quick recipe)", **base}] + sorted(
        rows, key=lambda r: (r["share"], r["change"]))


# ---------------------------------------------------------------------------------------------
# The audit
# ---------------------------------------------------------------------------------------------
def first_layer_rank(model: MLP, min_drop: float = 10.0, min_rank: int = 8
                     ) -> tuple[int, bool]:
    """How many training samples shaped the first layer, read from its singular values.

    Training adds to ``W1`` one outer product ``g_i x_i^T`` per sample, so once the
    initialisation is small or forgotten, ``W1`` has about ``n`` strong singular values and
    then a cliff (chapter 3; 17x on the book's quick MNIST model, after 49 values for
    n = 50 centred images). Returns ``(k, True)`` at the last drop of at least ``min_drop``
    between consecutive singular values (``k`` values before it, ``k >= min_rank``: a drop
    after a handful of values marks a few dominant directions, not the training set; values
    at rounding level are ignored); without such a cliff (an initialisation that is still
    there, or more samples than the layer has rows), ``(number of values above 3e-5 of the
    largest, False)``."""
    sv = torch.linalg.svdvals(model.layers[0].weight.detach().double().cpu())
    sv = sv[sv > sv[0] * 1e-10]
    drops = sv[:-1] / sv[1:]
    cliffs = [k + 1 for k in range(min_rank - 1, len(drops)) if float(drops[k]) >= min_drop]
    if cliffs:
        return cliffs[-1], True
    return int((sv > 3e-5 * sv[0]).sum()), False


def audit(
    model,
    *,
    out: str | os.PathLike,
    train=None,
    test=None,
    mean=None,
    input_shape: tuple[int, ...] | None = None,
    budget="5m",
    candidates: int | None = None,
    max_runs: int = 8,
    steps: int | None = None,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict:
    """Attack ``model`` from its weights alone, score the attack on ``train`` (and ``test``) if
    given, and write ``out/audit.json`` and ``out/index.html``. Returns the report (a dict).

    Args:
        model: a weights file (``.pt``/``.pth`` state_dict or ``.safetensors``), a state_dict,
            or an ``nn.Sequential`` of Linear and ReLU layers.
        train, test: samples as the model saw them (a path for :func:`load_samples`, a
            :class:`Samples`, or a tensor / ``(x, y)`` pair). Used only after the attack, to
            score it: matching, NCC and SSIM for images, cosine similarity for vectors.
        mean: the data mean the model's inputs had subtracted, images in [0, 1] before it
            (a tensor, a path, or 0 for images fed as they are). An attacker who knows it
            keeps candidates in the valid box; without it, images get the paper's [-1, 1] box
            and vectors no box, and the report says so.
        input_shape: e.g. ``(1, 28, 28)``; default: that of ``train`` if given as images, else
            a flat vector.
        budget: compute time for the attack (``"5m"``, seconds); runs are added while they fit.
        candidates: number of candidates ``m``; default twice the first layer's rank.
        steps: steps per run (default: the library's recipe, 3,000, or fewer to fit the
            budget).
    Rerunning with the same ``out`` and settings resumes: finished runs are kept, an
    interrupted one continues from its checkpoint, and the budget counts all sessions.
    """
    from .evaluate import evaluate, evaluate_both
    from .files import atomic_save, atomic_write_json
    from .hardware import default_device, resolve_precision
    from .kkt import kkt_diagnostic
    from .margins import margin_analysis
    from .provenance import provenance
    from .reconstruct import ReconConfig, ReconstructionDiverged, load_reconstruction
    from .reconstruct import reconstruct as run_reconstruction
    from .sweep.objectives import kkt_residual

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model_path = Path(model) if isinstance(model, (str, os.PathLike)) else None
    seconds = parse_budget(budget)

    def as_samples(s, name):
        if s is None or isinstance(s, Samples):
            return s
        if isinstance(s, (str, os.PathLike)):
            return load_samples(s)
        if isinstance(s, (tuple, list)):
            return Samples(torch.as_tensor(s[0]).float(), torch.as_tensor(s[1]), name)
        return Samples(torch.as_tensor(s).float(), None, name)

    train, test = as_samples(train, "train"), as_samples(test, "test")
    if input_shape is None and train is not None and train.x.dim() == 4:
        input_shape = tuple(train.x.shape[1:])
    net = load_model(model, input_shape=input_shape).double().eval()
    images = is_image_shape(net.input_shape)
    if isinstance(mean, (str, os.PathLike)):
        mean = load_samples(mean).x
    if mean is not None:
        mean = torch.as_tensor(mean, dtype=torch.float64)
        mean = (mean.expand(net.input_shape) if mean.dim() == 0 else
                mean.reshape(net.input_shape)).reshape(1, *net.input_shape).clone()
    train = _fit_shape(train, net, "train-data") if train is not None else None
    test = _fit_shape(test, net, "test-data") if test is not None else None

    dev = device or default_device()
    fp = _sha256(model_path, net)
    rank, cliff = first_layer_rank(net)
    m = int(candidates or min(max(4, 2 * rank), 2000))
    m += m % 2 if not net.multiclass else 0
    box = "valid" if mean is not None else ("paper" if images else "none")
    # the full profile's cut-off where the first layer's rank says n is large (Results
    # chapter, chosen on a shadow model); the quick recipe's otherwise
    tol = 1e-2 if rank >= 200 and cliff else 3e-5
    base = ReconConfig(n_candidates=m, box=box, subspace_tol=tol, log_every=50,
                       steps=steps or 3000)
    settings = {"candidates": m, "first_layer_rank": rank, "rank_cliff": cliff, "box": box,
                "subspace_tol": tol,
                "budget_s": seconds, "seed": seed, "max_runs": max_runs, "model_sha256": fp}
    state_path = out / "state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if state and state.get("settings", {}).get("model_sha256") != fp:
        raise ValueError(f"{out} holds an audit of another model; choose another --out")
    if state.get("settings") and state["settings"] != settings:
        raise ValueError(f"{out} holds an audit with other settings ({state['settings']}); "
                         "rerun with the same ones to resume, or choose another --out")
    state.setdefault("settings", settings)
    state.setdefault("runs", [])
    state.setdefault("elapsed_s", 0.0)

    def save_state():
        atomic_write_json(state, state_path)

    def say(msg):
        if progress:
            print(f"[audit] {msg}", flush=True)

    say(f"model: {net}; {'images' if images else 'vectors'} of shape {net.input_shape}; "
        f"first-layer rank {rank} -> {m} candidates; box {box}; budget {seconds:.0f} s")
    # calibrate: the time of a step decides the steps per run, once per audit
    if "steps" not in state:
        took = []
        for n_cal in (5, 30):  # the difference leaves out the set-up (row space, copies)
            t0 = time.perf_counter()
            run_reconstruction(net, dataclasses.replace(base, steps=n_cal, log_every=5),
                               mean=mean, device=dev, progress=False)
            took.append(time.perf_counter() - t0)
        per_step = max((took[1] - took[0]) / 25, took[1] / 60)
        state["elapsed_s"] += sum(took)
        n_steps = steps or int(min(3000, 0.9 * (seconds - state["elapsed_s"]) / per_step))
        if n_steps < 100:
            raise ValueError(
                f"a step takes {per_step:.2f} s here, so a budget of {seconds:.0f} s leaves "
                f"fewer than 100 steps; give at least --budget {math.ceil(120 * per_step)}s")
        state["steps"], state["step_s"] = n_steps, per_step
        save_state()
    cfg = dataclasses.replace(base, steps=state["steps"])
    run_dir = out / "runs"
    run_dir.mkdir(exist_ok=True)
    for k in range(max_runs):
        done = next((r for r in state["runs"] if r["seed"] == seed + k), None)
        if done is not None and done.get("finished"):
            continue
        left = seconds - state["elapsed_s"]
        if k > 0 and left < state["step_s"] * state["steps"]:
            break  # another whole run does not fit
        if left <= 0:
            break
        ckpt = run_dir / f"seed-{seed + k}.pt"
        say(f"run {k + 1}: {state['steps']} steps, seed {seed + k} -> {ckpt}")
        rcfg = dataclasses.replace(cfg, seed=seed + k)
        cur = load_reconstruction(ckpt)[0].step if ckpt.is_file() else 0
        bar = _bar(progress, state["steps"], f"run {k + 1}", cur)
        entry = {"seed": seed + k, "finished": False}
        try:
            # in chunks, resuming from the checkpoint, so that the budget is kept to a chunk
            while cur < state["steps"]:
                t0 = time.perf_counter()
                res = run_reconstruction(net, rcfg, stop_at=cur + 250, mean=mean,
                                         checkpoint=ckpt, device=dev, progress=False)
                state["elapsed_s"] += time.perf_counter() - t0
                bar.update(res.step - cur)
                cur = res.step
                entry = {"seed": seed + k, "finished": False, "steps": cur}
                state["runs"] = [r for r in state["runs"] if r["seed"] != seed + k] + [entry]
                save_state()
                if state["elapsed_s"] >= seconds:
                    break
            entry = {"seed": seed + k, "finished": True, "steps": res.step,
                     "stopped_by_budget": res.step < state["steps"],
                     "residual_soft": res.final().get("stat_rel"),
                     "residual_exact": kkt_residual(net, res.x.double(), res.lam.double(),
                                                    res.y)}
        except ReconstructionDiverged as e:
            entry = {"seed": seed + k, "finished": True, "diverged": str(e)}
        finally:
            bar.close()
        state["runs"] = [r for r in state["runs"] if r["seed"] != seed + k] + [entry]
        save_state()
    runs = [r for r in state["runs"] if r.get("finished") and not r.get("diverged")]
    if not runs:
        raise FloatingPointError(f"every reconstruction run diverged ({state['runs']}); try "
                                 "another --seed")
    xs, lams, ys = [], [], []
    for r in runs:
        res, _ = load_reconstruction(run_dir / f"seed-{r['seed']}.pt")
        xs.append(res.x)
        lams.append(res.lam)
        ys.append(res.y)
    pool = torch.cat(xs).double()
    atomic_save({"x": pool, "lam": torch.cat(lams), "y": torch.cat(ys)}, out / "candidates.pt")
    best = min(runs, key=lambda r: r["residual_exact"])
    report = {
        "format": AUDIT_FORMAT,
        "model": {"source": str(model_path) if model_path else type(model).__name__,
                  "sha256": fp, "architecture": net.arch(),
                  "params": int(sum(p.numel() for p in net.theta())),
                  "n_classes": net.n_outputs if net.multiclass else 2,
                  "input": "images" if images else "vectors",
                  "input_shape": list(net.input_shape),
                  "case": ("ReLU MLP with a bias in every layer: not homogeneous, so the "
                           "stationarity equation holds only at a stationary point of training "
                           "with weight decay on every parameter; the residuals below say how "
                           "far the weights are from it") if net.all_biases else
                          ("homogeneous ReLU MLP (a bias in the first layer at most): the "
                           "stationarity equation holds at the limit of training without "
                           "weight decay and at a stationary point with it"),
                  "activation": "assumed ReLU (a weights file does not record it)"
                  if model_path or isinstance(model, dict) else "ReLU"},
        "attacker_knows": {"weights": True, "n_classes": True,
                           "mean": mean is not None,
                           "box": {"valid": "valid pixel range (the data mean was given)",
                                   "paper": "[-1, 1] (no data mean given)",
                                   "none": "none (feature vectors of unknown range)"}[box]},
        "settings": {**settings, "steps_per_run": state["steps"],
                     "precision": resolve_precision(cfg.matmul, dev, cfg.dtype),
                     "recipe": cfg.to_dict()},
        "attack": {"runs": state["runs"], "n_candidates_pooled": len(pool),
                   "compute_s": state["elapsed_s"],
                   "weights_residual": best["residual_exact"]},
        "provenance": provenance(dev),
    }
    samples_y = None
    if train is not None:
        xt = train.x.double()
        samples_y = _labels(train.y, net)
        mean0 = mean if mean is not None else torch.zeros(1, *net.input_shape,
                                                          dtype=torch.float64)
        if images:
            ev = evaluate_both(pool.float(), xt.float(), mean0.float())
            one = ev["one_to_one"]
            counts = {f"ncc>{t}": one.count(ncc_above=t) for t in THRESHOLDS}
            counts["ssim>0.4"] = one.count(ssim_above=0.4)
            scored = {"matching": "one-to-one", "counts": counts,
                      "paper_matching": {"ssim>0.4": ev["paper"].count(ssim_above=0.4)}}
        else:
            one = vector_evaluation(pool, xt)
            counts = one.counts()
            scored = {"matching": "one-to-one (cosine)", "counts": counts}
        scored["n_train"] = len(xt)
        if test is not None:
            xs_test = test.x.double()
            if images:
                ctl = evaluate(pool.float(), xs_test.float(), mean0.float(),
                               matching="one_to_one")
                scored["test_control"] = {**{f"ncc>{t}": ctl.count(ncc_above=t)
                                             for t in THRESHOLDS},
                                          "ssim>0.4": ctl.count(ssim_above=0.4)}
            else:
                scored["test_control"] = vector_evaluation(pool, xs_test).counts()
            scored["n_test"] = len(xs_test)
            km = kink_membership(net, xt, xs_test)
            scored["kinks"] = {k: km[k] for k in KINK_SUMMARY}
        if samples_y is not None:
            diag = kkt_diagnostic(net, xt, samples_y)
            report["model"]["residual_at_training_set"] = diag.unexplained
            ma = margin_analysis(diag.margin, diag.lam, one, samples_y)
            order = torch.argsort(torch.tensor(ma["margin"]))
            scored["margins"] = {
                "spearman_margin_similarity": ma["spearman_margin_ncc"],
                "recovered_share_low_margin": ma["recovered_share_low_margin"],
                "recovered_share_rest": ma["recovered_share_rest"],
                "smallest_margins": [{"index": int(i), "margin": ma["margin"][i],
                                      "lam": ma["lam"][i], "similarity": ma["ncc"][i]}
                                     for i in order[:10].tolist()]}
        pairs = []
        for t_idx, c_idx, sim in list(zip(one.train_index.tolist(),
                                          one.candidate_index.tolist(),
                                          one.ncc.tolist()))[:24]:
            pairs.append({"train_index": t_idx, "candidate_index": c_idx, "similarity": sim})
        scored["top_pairs"] = pairs
        report["scored"] = scored
        gallery = _gallery(pool, xt, mean0, pairs, images)
    else:
        gallery = []
    report["risk_levers"] = _risk_levers()
    report["verdict"] = _verdict(report)
    atomic_write_json(report, out / "audit.json")
    write_report(report, out / "index.html", gallery)
    say(f"{report['verdict']['headline']} -> {out / 'index.html'}")
    return report


def _bar(progress: bool, total: int, desc: str, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not progress,
                leave=False)


def _gallery(pool, xt, mean0, pairs, images) -> list[dict]:
    from .evaluate import minmax_scale

    items = []
    for p in pairs:
        c, t = pool[p["candidate_index"]], xt[p["train_index"]]
        item = dict(p)
        if images:
            scale = max(1, 96 // max(c.shape[1:]))
            item["candidate_png"] = _png(minmax_scale((c + mean0[0])[None].float())[0], scale)
            item["train_png"] = _png((t + mean0[0]).float().clamp(0, 1), scale)
        else:
            item["candidate_head"] = [round(float(v), 3) for v in c.flatten()[:8]]
            item["train_head"] = [round(float(v), 3) for v in t.flatten()[:8]]
        items.append(item)
    return items


def _verdict(report: dict) -> dict:
    res = report["attack"]["weights_residual"]
    sc = report.get("scored")
    if sc is None:
        return {"headline": (f"attack run from the weights alone; the best run leaves "
                             f"{res:.2%} of ||theta||^2 unexplained. Give --train-data to "
                             "count what came back"),
                "leaks": None}
    key = "ncc>0.9" if "ncc>0.9" in sc["counts"] else "cos>0.9"
    found, n = sc["counts"][key], sc["n_train"]
    ctl = sc.get("test_control", {}).get(key)
    # a leak: more training samples above the threshold than held-out ones (the control)
    leaks = found > (ctl or 0) and found > 0
    what = "NCC" if key.startswith("ncc") else "cosine similarity"
    head = (f"{found} of {n} training samples came back with {what} above 0.9 "
            f"(one-to-one)" + (f", against {ctl} of {sc['n_test']} held-out samples"
                               if ctl is not None else ", no held-out control given"))
    return {"headline": head, "leaks": bool(leaks), "count": found, "n_train": n,
            "control": ctl, "criterion": f"{what} > 0.9, one-to-one"}


# ---------------------------------------------------------------------------------------------
# The HTML page
# ---------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:62rem;margin:2rem auto;
padding:0 1rem;color:#1d1d1f;line-height:1.45}
h1{font-size:1.6rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #ddd}
.verdict{padding:1rem 1.2rem;border-radius:8px;font-size:1.1rem}
.leak{background:#fde8e8;border:1px solid #e0a0a0}.noleak{background:#e8f5e9;border:1px solid
#9c9}.unknown{background:#f3f3f3;border:1px solid #ccc}
table{border-collapse:collapse;margin:.6rem 0}td,th{border:1px solid #ddd;padding:.25rem .5rem;
text-align:left;font-size:.9rem}th{background:#f6f6f6}
.gallery{display:flex;flex-wrap:wrap;gap:.6rem}.pair{text-align:center;font-size:.8rem}
.pair img{display:block;image-rendering:pixelated;border:1px solid #ccc;margin:1px auto}
code{background:#f3f3f3;padding:0 .2rem}
"""


def _table(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)

    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}"
        return html.escape(str(v))

    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def write_report(report: dict, path: str | os.PathLike, gallery: list[dict] = ()) -> Path:
    """The self-contained HTML page of an audit: no script, no external request; images are
    embedded as data URIs."""
    v, sc, mdl = report["verdict"], report.get("scored"), report["model"]
    cls = "unknown" if v["leaks"] is None else ("leak" if v["leaks"] else "noleak")
    word = {"unknown": "Not scored", "leak": "Training data leak",
            "noleak": "No leak found by this attack"}[cls]
    parts = ["<h1>Reconstruction audit</h1>",
             f"<div class='verdict {cls}' id='verdict'><b>{word}.</b> "
             f"{html.escape(v['headline'])}.</div>"]
    rows = [{"measure": "unexplained part of \u2016\u03b8\u2016\u00b2, best attack run "
                        "(weights only)",
             "value": f"{report['attack']['weights_residual']:.2%}"}]
    if "residual_at_training_set" in mdl:
        rows.append({"measure": "unexplained at the true training set (an upper bound on the "
                                "best possible fit)",
                     "value": f"{mdl['residual_at_training_set']:.2%}"})
    if sc is not None:
        for k, val in sc["counts"].items():
            rows.append({"measure": f"training samples, {k} (one-to-one)", "value": val})
        for k, val in sc.get("test_control", {}).items():
            rows.append({"measure": f"held-out samples, {k} (the control)", "value": val})
    parts.append("<h2>Verdict</h2>" + _table(rows) +
                 "<p>A count above the held-out control means the weights give particular "
                 "training samples away, not only what samples of a class look like. A low "
                 "unexplained part says the weights are close to the stationarity equation the "
                 "attack inverts; it is not proof that the training set was found.</p>")
    if sc is not None and "kinks" in sc:
        k = sc["kinks"]
        parts.append(
            "<h2 id='kinks'>Membership without reconstruction: the first layer's kinks</h2>"
            + _table([
                {"measure": "first-layer pre-activations within the threshold, held-out "
                            "samples (the threshold is set to make this share)",
                 "value": f"{k['share_others']:.2%}"},
                {"measure": "the same, training samples", "value": f"{k['share_members']:.2%}"},
                {"measure": "AUC of each sample's share as a membership test (0.5: none)",
                 "value": f"{k['auc']:.2f}"},
                {"measure": "training samples above every held-out sample",
                 "value": k["members_above_every_other"]}])
            + "<p>Training with weight decay leaves many first-layer units with a "
              "pre-activation of almost exactly zero on training samples: the unit's "
              "hyperplane passes through them. Counting, per sample, how many pre-activations "
              f"lie within {k['threshold']:.2g} of zero (the {k['quantile']:.1%} quantile on "
              "the held-out samples) tells members from non-members with the weights alone, "
              "no reconstruction needed. An AUC well above 0.5 says a white-box membership "
              "test works on this model even where the reconstruction finds nothing.</p>")
    if gallery:
        cards = []
        for g in gallery:
            if "candidate_png" in g:
                cards.append(
                    f"<div class='pair'><img alt='reconstruction {g['candidate_index']}' "
                    f"src='{g['candidate_png']}'><img alt='training sample "
                    f"{g['train_index']}' src='{g['train_png']}'>{g['similarity']:.2f}</div>")
        if cards:
            parts.append("<h2>What came back</h2><p>Each reconstruction (top) above the "
                         "training sample it was matched to one-to-one (bottom), with their "
                         "correlation (NCC), best first.</p><div class='gallery'>"
                         + "".join(cards) + "</div>")
        else:
            parts.append("<h2>What came back</h2><p>The nearest training rows, one-to-one, "
                         "by cosine similarity (first values of each vector shown).</p>"
                         + _table([{"training row": g["train_index"],
                                    "cosine": g["similarity"],
                                    "reconstruction (first values)": g["candidate_head"],
                                    "training row (first values)": g["train_head"]}
                                   for g in gallery[:12]]))
    if sc is not None and "margins" in sc:
        mg = sc["margins"]
        parts.append(
            "<h2>Which samples leak</h2><p>Samples close to the decision boundary (small "
            "margin, large multiplier) carry the most weight in the equation and come back "
            f"most often: among the fifth of training samples with the smallest margins, "
            f"{mg['recovered_share_low_margin']:.0%} came back above 0.9, against "
            f"{mg['recovered_share_rest']:.0%} of the others (Spearman correlation of margin "
            f"and similarity {mg['spearman_margin_similarity']:.2f}). The ten smallest "
            "margins:</p>" + _table(mg["smallest_margins"]))
    levers = report.get("risk_levers") or []
    if levers:
        parts.append(
            "<h2>What lowers the risk</h2><p>Measured by the book's leakage chapter on a "
            "binary MNIST model (50 training images, the book's quick recipe), each row one "
            "change of training, the most protective first: the share of training images "
            "recovered above NCC 0.9, and how many held-out images the same candidates match "
            "(the control). Noise on the clipped gradients (clip, grad noise) is the "
            "mechanism of differentially private training, here without its privacy "
            "accounting.</p>"
            + _table([{"change": r["change"], "recovered": f"{r['share']:.0%}",
                       "n": r["n"], "held-out control": r["test"]} for r in levers]))
    st = report["settings"]
    made = [{"item": "model file sha256", "value": mdl["sha256"]},
            {"item": "architecture", "value": json.dumps(mdl["architecture"])},
            {"item": "activation", "value": mdl["activation"]},
            {"item": "case", "value": mdl["case"]},
            {"item": "attacker knows", "value": json.dumps(report["attacker_knows"])},
            {"item": "candidates, steps per run, runs",
             "value": f"{st['candidates']}, {st['steps_per_run']}, "
                      f"{len(report['attack']['runs'])}"},
            {"item": "row-space cut-off, box, precision",
             "value": f"{st['subspace_tol']:g}, {st['box']}, {st['precision']}"},
            {"item": "compute", "value": f"{report['attack']['compute_s']:.0f} s"},
            {"item": "command", "value": report["provenance"].get("command")},
            {"item": "versions", "value": f"recon {report['provenance'].get('git_revision')}, "
                                          f"torch {report['provenance']['torch']}"},
            {"item": "device", "value": report["provenance"]["device"]},
            {"item": "date", "value": report["provenance"]["date"]}]
    parts.append("<h2>How this was made</h2>" + _table(made) +
                 "<p>The attack read the weights only; training and held-out samples were "
                 "read afterwards, to score it. <code>audit.json</code> beside this page holds "
                 "every number.</p>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<title>Reconstruction audit</title><style>" + _CSS + "</style></head><body>"
            + "".join(parts) + "</body></html>")
    path = Path(path)
    path.write_text(page)
    return path
