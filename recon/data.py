"""The paper's two binary image tasks, loaded from real MNIST / CIFAR-10.

Tasks (Haim et al. 2022):

- ``"mnist"``: odd vs even digits; ``y = +1`` for odd, ``y = -1`` for even.
- ``"cifar10"``: animals (classes 2-7) vs vehicles (0 airplane, 1 automobile, 8 ship,
  9 truck); ``y = +1`` for animals, ``y = -1`` for vehicles.

Protocol (Haim et al., 2022, the paper's data protocol):

1. Training set: scan the training split in its stored order (no shuffling) and keep the
   first ``n_per_class`` images of each binary class; the kept images stay in stored
   order. The paper uses ``n_per_class = 250``, i.e. 500 balanced images.
2. Test set: the first ``n_test_per_class`` images of each binary class of the test
   split, selected the same way (paper: 500, i.e. 1000 images).
3. Pixels are scaled to ``[0, 1]`` (no per-channel standardisation) and laid out as
   ``(N, C, H, W)`` (``C = 1`` for MNIST). The per-pixel mean of the selected training
   images is subtracted from train and test images; ``BinaryTask.unnormalize`` adds it
   back.

Where the images come from, in order:

1. ``data_dir`` (or the environment variable ``RECON_DATA_DIR``): a directory holding
   ``mnist.npz`` / ``cifar10.npz`` with uint8 arrays ``x_train``, ``y_train``,
   ``x_test``, ``y_test`` (MNIST images ``(N, 28, 28)``, CIFAR-10 ``(N, 32, 32, 3)``).
   If such a directory is given, it is used or a clear error is raised; there is no
   silent fallback.
2. Otherwise torchvision's ``MNIST`` / ``CIFAR10`` data sets, stored under ``cache_dir``
   (or ``RECON_CACHE_DIR``, or ``~/.cache/recon``) and downloaded when ``download=True``.
3. If that fails too, :class:`DataUnavailableError` is raised. Synthetic data is never
   substituted.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "BINARY_CLASS_NAMES",
    "CLASS_NAMES",
    "POSITIVE_LABELS",
    "TASKS",
    "BinaryTask",
    "MulticlassTask",
    "MULTICLASS_TASKS",
    "DataUnavailableError",
    "binary_labels",
    "flip_labels",
    "load_raw",
    "load_task",
    "select_first_per_class",
]

TASKS: tuple[str, ...] = ("mnist", "cifar10")
#: the ten-class tasks on the same images (:class:`MulticlassTask`)
MULTICLASS_SUFFIX = "-multiclass"
MULTICLASS_TASKS: tuple[str, ...] = tuple(t + MULTICLASS_SUFFIX for t in TASKS)

#: Original class names, indexed by class label 0..9.
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": tuple(str(d) for d in range(10)),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer")
    + ("dog", "frog", "horse", "ship", "truck"),
}

#: Original classes that get ``y = +1``; all others get ``y = -1``.
POSITIVE_LABELS: dict[str, frozenset[int]] = {
    "mnist": frozenset({1, 3, 5, 7, 9}),  # odd digits
    "cifar10": frozenset({2, 3, 4, 5, 6, 7}),  # animals
}

#: Names of the ``y = -1`` and ``y = +1`` classes.
BINARY_CLASS_NAMES: dict[str, tuple[str, str]] = {
    "mnist": ("even", "odd"),
    "cifar10": ("vehicle", "animal"),
}

#: Shape of one stored uint8 image (without the batch axis), as in the npz files.
_RAW_IMAGE_SHAPE: dict[str, tuple[int, ...]] = {
    "mnist": (28, 28),
    "cifar10": (32, 32, 3),
}

_TORCHVISION_CLASS = {"mnist": "MNIST", "cifar10": "CIFAR10"}
_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_ENV_DATA_DIR = "RECON_DATA_DIR"
_ENV_CACHE_DIR = "RECON_CACHE_DIR"

RawData = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]


class DataUnavailableError(RuntimeError):
    """The real data set could neither be found locally nor downloaded."""


@dataclass(frozen=True, eq=False, repr=False)
class BinaryTask:
    """A balanced binary classification task in mean-subtracted pixel space.

    ``n = 2 * n_per_class`` training and ``n_test = 2 * n_test_per_class`` test images,
    each set in the stored order of its source split.

    ``index_train`` / ``index_test`` are positions in the source's arrays. For MNIST and
    torchvision sources these are the official indices. The offline ``cifar10.npz`` keeps
    only the first 1000 training images of each class, so its positions equal the
    official indices only below 9639 (the paper's subset uses positions 0..578).
    """

    name: str
    x_train: torch.Tensor  #: (n, C, H, W) float, pixels in [0, 1] minus ``mean``
    y_train: torch.Tensor  #: (n,) float in {-1, +1}
    labels_train: torch.Tensor  #: (n,) int64 original class 0..9
    index_train: torch.Tensor  #: (n,) int64 position in the source's training split
    x_test: torch.Tensor  #: (n_test, C, H, W) float, minus the same ``mean``
    y_test: torch.Tensor  #: (n_test,) float in {-1, +1}
    labels_test: torch.Tensor  #: (n_test,) int64 original class 0..9
    mean: torch.Tensor  #: (1, C, H, W) per-pixel mean of the selected raw train images
    class_names: tuple[str, str]  #: names of the y = -1 and y = +1 classes
    source: str  #: e.g. "npz:/path/mnist.npz" or "torchvision:/cache/dir"
    index_test: torch.Tensor  #: (n_test,) int64 position in the source's test split

    @property
    def source_kind(self) -> str:
        """``source`` without the machine's path (``"npz:mnist.npz"``, ``"torchvision"``):
        what run cards record, so that a committed card names no local folder."""
        kind, _, where = self.source.partition(":")
        return f"{kind}:{os.path.basename(where)}" if kind == "npz" else kind

    @property
    def n_outputs(self) -> int:
        """Outputs of the network that fits the task: 1 (one logit for two classes)."""
        return 1

    @property
    def n(self) -> int:
        """Number of training images."""
        return int(self.x_train.shape[0])

    @property
    def n_test(self) -> int:
        """Number of test images."""
        return int(self.x_test.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        c, h, w = self.x_train.shape[1:]
        return int(c), int(h), int(w)

    @property
    def input_dim(self) -> int:
        """``C * H * W``, the input size of an MLP on flattened images."""
        c, h, w = self.image_shape
        return c * h * w

    def to(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> BinaryTask:
        """Copy with all tensors on ``device``; float tensors also cast to ``dtype``.

        Integer tensors (``labels_*``, ``index_*``) keep dtype int64.
        """
        changes = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, torch.Tensor):
                continue
            cast = dtype if value.is_floating_point() else None
            changes[field.name] = value.to(device=device, dtype=cast, copy=True)
        return dataclasses.replace(self, **changes)

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Add the training mean back: mean-subtracted images -> pixels in ``[0, 1]``.

        ``x`` is ``(..., C, H, W)`` or flattened ``(..., C*H*W)``; returns the same shape,
        on ``x``'s device and dtype.
        """
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        if tuple(x.shape[-3:]) == self.image_shape:
            return x + mean[0]
        if x.shape[-1] == self.input_dim:
            return x + mean.reshape(-1)
        raise ValueError(
            f"cannot unnormalize a tensor of shape {tuple(x.shape)}: expected "
            f"(..., {', '.join(map(str, self.image_shape))}) or (..., {self.input_dim})"
        )

    def __repr__(self) -> str:
        return (
            f"BinaryTask(name={self.name!r}, n={self.n}, n_test={self.n_test}, "
            f"image_shape={self.image_shape}, class_names={self.class_names}, "
            f"dtype={self.x_train.dtype}, device={self.x_train.device}, "
            f"source={self.source!r})"
        )


# --------------------------------------------------------------------------- helpers


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name.lower() not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {TASKS}")
    return name.lower()


def _check_count(value: int, arg: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{arg} must be a positive integer, got {value!r}")
    return int(value)


def binary_labels(name: str, labels: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Map original class labels 0..9 to ``{-1, +1}`` (odd digit / animal -> +1).

    Returns a float32 tensor for a tensor input (same device), else a float32 array.
    """
    positive = sorted(POSITIVE_LABELS[_check_name(name)])
    if isinstance(labels, torch.Tensor):
        pos = torch.isin(labels, torch.tensor(positive, device=labels.device))
        return torch.where(pos, 1.0, -1.0).to(torch.float32)
    return np.where(np.isin(np.asarray(labels), positive), 1.0, -1.0).astype(np.float32)


def select_first_per_class(y: np.ndarray, n_per_class: int, split: str = "split",
                           skip_per_class: int = 0, classes=(-1, 1)) -> np.ndarray:
    """Indices of the first ``n_per_class`` entries of each class (``y == -1`` and
    ``y == +1`` by default, or the values in ``classes``), after skipping the first
    ``skip_per_class`` of each.

    ``y`` is ``(N,)``, in stored order. Returns ``(len(classes) * n_per_class,)`` int64
    indices in increasing (stored) order. Raises ``ValueError`` if a class is too small.
    """
    chosen = []
    for value in classes:
        label = f"y={value:+d}" if tuple(classes) == (-1, 1) else str(value)
        where = np.flatnonzero(y == value)
        if where.size < skip_per_class + n_per_class:
            raise ValueError(
                f"the {split} has only {where.size} images of class {label}, "
                f"but {n_per_class} per class were requested after skipping {skip_per_class}"
                if skip_per_class else
                f"the {split} has only {where.size} images of class {label}, "
                f"but {n_per_class} per class were requested"
            )
        chosen.append(where[skip_per_class:skip_per_class + n_per_class])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def _validate_raw(name: str, arrays: dict[str, np.ndarray], origin: str) -> None:
    """Check shapes and dtypes of the four raw arrays; raise ``ValueError`` naming origin."""
    image_shape = _RAW_IMAGE_SHAPE[name]
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        problems = []
        if x.dtype != np.uint8 or x.ndim != 1 + len(image_shape) or x.shape[1:] != image_shape:
            problems.append(
                f"x_{split} must be uint8 of shape (N, {', '.join(map(str, image_shape))}), "
                f"got {x.dtype} {x.shape}"
            )
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or y.shape != x.shape[:1]:
            problems.append(
                f"y_{split} must be an integer vector with one label per image of x_{split} "
                f"{x.shape}, got {y.dtype} {y.shape}"
            )
        elif y.size and (y.min() < 0 or y.max() > 9):
            problems.append(f"y_{split} must hold class labels 0..9, got {y.min()}..{y.max()}")
        if problems:
            raise ValueError(f"invalid {name} data from {origin}: " + "; ".join(problems))


def _npz_format(name: str) -> str:
    shape = ", ".join(map(str, _RAW_IMAGE_SHAPE[name]))
    return (
        f"a NumPy .npz archive with uint8 arrays x_train (N, {shape}), y_train (N,), "
        f"x_test (M, {shape}), y_test (M,) holding the official splits in stored order "
        f"(labels 0-9, as in the official releases)"
    )


# --------------------------------------------------------------------------- sources


@functools.lru_cache(maxsize=4)
def _read_npz(path: str, mtime_ns: int, size: int) -> dict[str, np.ndarray]:
    """Read the four arrays of an npz file (cached by path and file stamp); read-only."""
    with np.load(path, allow_pickle=False) as archive:
        missing = [k for k in _NPZ_KEYS if k not in archive.files]
        if missing:
            raise KeyError(f"missing arrays {missing}; found {sorted(archive.files)}")
        arrays = {k: np.asarray(archive[k]) for k in _NPZ_KEYS}
    for value in arrays.values():
        value.setflags(write=False)
    return arrays


def _load_npz(name: str, data_dir: Path, origin: str) -> RawData:
    path = (data_dir / f"{name}.npz").resolve()
    hint = f"expected {_npz_format(name)}; {origin}"
    if not path.is_file():
        raise FileNotFoundError(f"no {name} data: {path} does not exist; {hint}")
    stat = path.stat()
    try:
        arrays = _read_npz(str(path), stat.st_mtime_ns, stat.st_size)
    except Exception as err:  # zipfile.BadZipFile, OSError, ValueError, KeyError, ...
        raise ValueError(
            f"cannot read {name} data from {path} ({type(err).__name__}: {err}); {hint}"
        ) from err
    _validate_raw(name, arrays, str(path))
    x_tr, y_tr, x_te, y_te = (arrays[k] for k in _NPZ_KEYS)
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), f"npz:{path}"


@functools.lru_cache(maxsize=4)
def _read_torchvision(name: str, root: str, download: bool) -> dict[str, np.ndarray]:
    from torchvision import datasets  # lazy: only needed on this path

    cls = getattr(datasets, _TORCHVISION_CLASS[name])
    arrays = {}
    for split, train in (("train", True), ("test", False)):
        ds = cls(root=root, train=train, download=download)
        data, targets = ds.data, ds.targets
        x = data.numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
        y = targets.numpy() if isinstance(targets, torch.Tensor) else np.asarray(targets)
        arrays[f"x_{split}"], arrays[f"y_{split}"] = x, y
    for value in arrays.values():
        value.setflags(write=False)
    return arrays


def _load_torchvision(name: str, root: Path, download: bool) -> RawData:
    try:
        arrays = _read_torchvision(name, str(root), bool(download))
    except Exception as err:  # ImportError, URLError, OSError, RuntimeError, ...
        how = "downloaded" if download else "found (download=False)"
        raise DataUnavailableError(
            f"the {name} data set could not be {how} via torchvision into {root} "
            f"({type(err).__name__}: {err}). Set {_ENV_DATA_DIR} (or pass data_dir=) to a "
            f"directory holding {name}.npz, {_npz_format(name)}; or run once with internet "
            f"access and download=True to fill the cache."
        ) from err
    _validate_raw(name, arrays, f"torchvision:{root}")
    x_tr, y_tr, x_te, y_te = (arrays[k] for k in _NPZ_KEYS)
    return x_tr, y_tr.astype(np.int64), x_te, y_te.astype(np.int64), f"torchvision:{root}"


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> tuple[Path | None, str]:
    """The npz directory to use (or None) and a sentence saying where it came from."""
    if data_dir is not None:
        return Path(data_dir).expanduser(), (
            f"data_dir={str(data_dir)!r} was passed explicitly (it takes precedence over "
            f"{_ENV_DATA_DIR}); pass data_dir=None and leave {_ENV_DATA_DIR} unset to use "
            f"torchvision instead"
        )
    env = os.environ.get(_ENV_DATA_DIR, "").strip()
    if env:
        return Path(env).expanduser(), (
            f"the directory comes from the environment variable {_ENV_DATA_DIR}={env!r}; "
            f"fix or unset it to use torchvision instead"
        )
    return None, ""


def _resolve_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(_ENV_CACHE_DIR, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "recon"


def load_raw(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> RawData:
    """Load the full stored splits of ``name`` without any processing.

    Returns ``(x_train, y_train, x_test, y_test, source)``: images are uint8 NumPy arrays,
    ``(N, 28, 28)`` for MNIST and ``(N, 32, 32, 3)`` (HWC) for CIFAR-10; labels are int64
    ``(N,)`` with classes 0..9; ``source`` says where the data came from. The image arrays
    are cached and read-only; copy them before modifying.

    Raises ``FileNotFoundError`` / ``ValueError`` for a missing or bad npz file in the data
    directory, and :class:`DataUnavailableError` if torchvision cannot provide the data.
    """
    name = _check_name(name)
    directory, origin = _resolve_data_dir(data_dir)
    if directory is not None:
        return _load_npz(name, directory, origin)
    return _load_torchvision(name, _resolve_cache_dir(cache_dir), download)


def _to_nchw01(x: np.ndarray) -> np.ndarray:
    """uint8 ``(N, H, W)`` or ``(N, H, W, C)`` -> float64 ``(N, C, H, W)`` in [0, 1]."""
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x.astype(np.float64) / 255.0


def load_task(
    name: str,
    n_per_class: int = 250,
    n_test_per_class: int = 500,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = True,
    cache_dir: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    skip_per_class: int = 0,
) -> BinaryTask:
    """Build the paper's balanced binary task (see the module docstring for the protocol).

    Args:
        name: ``"mnist"`` (odd = +1 vs even = -1) or ``"cifar10"`` (animal = +1 vs
            vehicle = -1); ``"mnist-multiclass"`` or ``"cifar10-multiclass"`` for the
            ten-class task (a :class:`MulticlassTask`, ``n_per_class`` of each digit or class).
        n_per_class: training images per binary class (paper: 250 -> n = 500).
        n_test_per_class: test images per binary class (paper: 500 -> 1000).
        data_dir, download, cache_dir: where to get the images, see :func:`load_raw`.
        dtype: floating dtype of the image, label and mean tensors (mean subtraction is
            done in float64 before the cast).
        skip_per_class: leave out the first images of each class of the training split: a
            *shadow* task on images disjoint from the paper's (e.g. ``skip_per_class=250``),
            on which an attacker can tune a reconstruction with their own data.

    Returns:
        A :class:`BinaryTask` on the CPU with ``x_train`` ``(2 * n_per_class, C, H, W)``,
        ``x_test`` ``(2 * n_test_per_class, C, H, W)`` and ``mean`` ``(1, C, H, W)``.

    Raises:
        ValueError: unknown name, non-positive counts, or a split with too few images.
    """
    n_per_class = _check_count(n_per_class, "n_per_class")
    n_test_per_class = _check_count(n_test_per_class, "n_test_per_class")
    if skip_per_class < 0:
        raise ValueError(f"skip_per_class must be >= 0, got {skip_per_class!r}")
    if isinstance(name, str) and name.lower() in MULTICLASS_TASKS:
        return _load_multiclass(name.lower(), n_per_class, n_test_per_class, lambda base: load_raw(
            base, data_dir=data_dir, download=download, cache_dir=cache_dir), dtype,
            skip_per_class)
    name = _check_name(name)
    x_tr, lab_tr, x_te, lab_te, source = load_raw(
        name, data_dir=data_dir, download=download, cache_dir=cache_dir
    )
    idx_tr = select_first_per_class(binary_labels(name, lab_tr), n_per_class, "training split",
                                    skip_per_class)
    idx_te = select_first_per_class(binary_labels(name, lab_te), n_test_per_class, "test split")

    train01, test01 = _to_nchw01(x_tr[idx_tr]), _to_nchw01(x_te[idx_te])
    mean = train01.mean(axis=0, keepdims=True)

    def tensor(a: np.ndarray, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dt)

    return BinaryTask(
        name=name,
        x_train=tensor(train01 - mean),
        y_train=tensor(binary_labels(name, lab_tr[idx_tr])),
        labels_train=tensor(lab_tr[idx_tr], torch.int64),
        index_train=tensor(idx_tr, torch.int64),
        x_test=tensor(test01 - mean),
        y_test=tensor(binary_labels(name, lab_te[idx_te])),
        labels_test=tensor(lab_te[idx_te], torch.int64),
        mean=tensor(mean),
        class_names=BINARY_CLASS_NAMES[name],
        source=source,
        index_test=tensor(idx_te, torch.int64),
    )


@dataclass(frozen=True)
class MulticlassTask(BinaryTask):
    """The ten-class task on the same images (Buzaglo et al., 2023): the first
    ``n_per_class`` images of *each* class in stored order, labels ``y`` the class indices
    0..9 (int64), ``class_names`` all ten names. Everything else as :class:`BinaryTask`."""

    @property
    def n_outputs(self) -> int:
        return len(self.class_names)


def _load_multiclass(name: str, n_per_class: int, n_test_per_class: int, load, dtype,
                     skip_per_class: int) -> MulticlassTask:
    base = name.removesuffix(MULTICLASS_SUFFIX)
    x_tr, lab_tr, x_te, lab_te, source = load(base)
    classes = range(len(CLASS_NAMES[base]))
    idx_tr = select_first_per_class(lab_tr, n_per_class, "training split", skip_per_class,
                                    classes)
    idx_te = select_first_per_class(lab_te, n_test_per_class, "test split", 0, classes)
    train01, test01 = _to_nchw01(x_tr[idx_tr]), _to_nchw01(x_te[idx_te])
    mean = train01.mean(axis=0, keepdims=True)

    def tensor(a: np.ndarray, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(dt)

    return MulticlassTask(
        name=name, x_train=tensor(train01 - mean),
        y_train=tensor(lab_tr[idx_tr], torch.int64),
        labels_train=tensor(lab_tr[idx_tr], torch.int64), index_train=tensor(idx_tr, torch.int64),
        x_test=tensor(test01 - mean), y_test=tensor(lab_te[idx_te], torch.int64),
        labels_test=tensor(lab_te[idx_te], torch.int64), mean=tensor(mean),
        class_names=CLASS_NAMES[base], source=source, index_test=tensor(idx_te, torch.int64),
    )


def flip_labels(task: BinaryTask, fraction: float, seed: int = 0) -> BinaryTask:
    """The task with ``round(fraction * n)`` training labels flipped (a random subset, drawn
    with ``seed``): label noise, which the network must then memorise. Images, test set and
    original class labels are unchanged; ``fraction = 0`` returns ``task`` itself."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    k = round(fraction * task.n)
    if k == 0:
        return task
    if task.n_outputs > 1:
        raise ValueError("label noise is defined here for the binary tasks only")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(task.n, generator=gen)[:k]
    y = task.y_train.clone()
    y[idx] = -y[idx]
    return dataclasses.replace(task, y_train=y)

