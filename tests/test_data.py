"""Tests for recon.data: the paper's binary MNIST / CIFAR-10 subsets on real images."""

from __future__ import annotations

import os
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from recon import data
from recon.data import DataUnavailableError, binary_labels, flip_labels, load_raw, load_task

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MNIST_FIRST_TRAIN = [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
CIFAR_FIRST_TRAIN = [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]
CIFAR_FIRST_TEST = [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
EXPECTED_SHAPE = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}


@pytest.fixture(scope="module", autouse=True)
def _data_dir_env():
    """Point RECON_DATA_DIR at the offline copies in shared/data unless already set."""
    with pytest.MonkeyPatch.context() as mp:
        if not os.environ.get("RECON_DATA_DIR") and SHARED_DATA.is_dir():
            mp.setenv("RECON_DATA_DIR", str(SHARED_DATA))
        yield


@pytest.fixture(scope="module")
def tasks(_data_dir_env) -> dict[str, data.BinaryTask]:
    try:
        return {name: load_task(name) for name in data.TASKS}
    except DataUnavailableError as err:  # no local copy and no internet
        pytest.fail(f"real data unavailable: {err} (set RECON_DATA_DIR; see README, 'Data')")


@pytest.fixture(scope="module")
def raw(_data_dir_env) -> dict[str, tuple]:
    """The stored splits, read with NumPy alone (independent of recon.data)."""
    out = {}
    for name in data.TASKS:
        path = Path(os.environ.get("RECON_DATA_DIR", SHARED_DATA)) / f"{name}.npz"
        if not path.is_file():
            pytest.fail(f"{path} not found: set RECON_DATA_DIR to a directory holding the "
                        "offline data sets (see README, 'Data')")
        with np.load(path) as d:
            out[name] = tuple(d[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    return out


def first_per_class_reference(labels: np.ndarray, positive: set[int], k: int) -> list[int]:
    """Plain-loop reference: indices of the first k images of each binary class."""
    taken = {True: 0, False: 0}
    chosen = []
    for i, label in enumerate(labels.tolist()):
        cls = label in positive
        if taken[cls] < k:
            taken[cls] += 1
            chosen.append(i)
        if taken[True] == taken[False] == k:
            break
    return chosen


POSITIVE = {"mnist": {1, 3, 5, 7, 9}, "cifar10": {2, 3, 4, 5, 6, 7}}


# ------------------------------------------------------------------ the paper's subset


@pytest.mark.parametrize("name", data.TASKS)
def test_paper_subset_shapes_and_balance(tasks, name):
    t = tasks[name]
    c, h, w = EXPECTED_SHAPE[name]
    assert t.x_train.shape == (500, c, h, w) and t.x_train.dtype == torch.float32
    assert t.x_test.shape == (1000, c, h, w) and t.x_test.dtype == torch.float32
    assert t.mean.shape == (1, c, h, w) and t.mean.dtype == torch.float32
    assert t.n == 500 and t.n_test == 1000
    assert t.image_shape == (c, h, w) and t.input_dim == c * h * w
    assert t.y_train.dtype == torch.float32 and t.labels_train.dtype == torch.int64
    assert set(t.y_train.tolist()) == {-1.0, 1.0}
    assert (t.y_train == 1).sum() == 250 and (t.y_train == -1).sum() == 250
    assert (t.y_test == 1).sum() == 500 and (t.y_test == -1).sum() == 500
    # stored order, no repeats
    assert torch.all(t.index_train[1:] > t.index_train[:-1])
    assert torch.all(t.index_test[1:] > t.index_test[:-1])
    assert t.source.startswith(("npz:", "torchvision:"))


def test_mnist_first_images_are_the_official_first_ones(tasks):
    t = tasks["mnist"]
    assert t.labels_train[:10].tolist() == MNIST_FIRST_TRAIN
    assert t.index_train[:10].tolist() == list(range(10))
    assert t.labels_test[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_cifar_first_labels(tasks):
    t = tasks["cifar10"]
    assert t.labels_train[:10].tolist() == CIFAR_FIRST_TRAIN
    assert t.index_train[:10].tolist() == list(range(10))
    assert t.labels_test[:10].tolist() == CIFAR_FIRST_TEST
    assert t.index_test[:10].tolist() == list(range(10))


@pytest.mark.parametrize("name", data.TASKS)
def test_selection_matches_independent_reference(tasks, raw, name):
    t = tasks[name]
    x_tr, y_tr, _, y_te = raw[name]
    ref_tr = first_per_class_reference(y_tr, POSITIVE[name], 250)
    ref_te = first_per_class_reference(y_te, POSITIVE[name], 500)
    assert t.index_train.tolist() == ref_tr
    assert t.index_test.tolist() == ref_te
    assert t.labels_train.tolist() == y_tr[ref_tr].tolist()
    assert t.labels_test.tolist() == y_te[ref_te].tolist()
    # the pixels are those images, in NCHW layout
    img = x_tr[ref_tr[3]].astype(np.float64) / 255
    img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)
    np.testing.assert_allclose(t.unnormalize(t.x_train[3]).numpy(), img, atol=1e-6)


@pytest.mark.parametrize("name", data.TASKS)
def test_mean_subtraction(tasks, raw, name):
    t = tasks[name]
    x_tr = raw[name][0]
    assert t.x_train.mean(0).abs().max() < 1e-6
    for x in (t.unnormalize(t.x_train), t.unnormalize(t.x_test)):
        assert x.min() >= -1e-6 and x.max() <= 1 + 1e-6
    selected = x_tr[t.index_train.numpy()].astype(np.float64) / 255
    mean = selected.mean(0)
    mean = mean[None] if mean.ndim == 2 else mean.transpose(2, 0, 1)
    np.testing.assert_allclose(t.mean[0].numpy(), mean, atol=1e-6)
    # the test set uses the training mean, not its own
    assert t.x_test.mean(0).abs().max() > 1e-3


def test_label_convention(tasks):
    m, c = tasks["mnist"], tasks["cifar10"]
    assert m.class_names == ("even", "odd") and c.class_names == ("vehicle", "animal")
    for t in (m, c):
        pos = torch.tensor(sorted(POSITIVE[t.name]))
        expected = torch.where(torch.isin(t.labels_train, pos), 1.0, -1.0)
        assert torch.equal(t.y_train, expected)
    assert m.y_train[0] == 1  # digit 5 is odd
    assert m.y_train[1] == -1  # digit 0 is even
    assert c.y_train[0] == 1  # frog is an animal
    assert c.y_train[1] == -1  # truck is a vehicle
    assert binary_labels("cifar10", np.array([0, 1, 2, 7, 8, 9])).tolist() == [-1, -1, 1, 1, -1, -1]


def test_small_subset_is_prefix_consistent(tasks):
    big = tasks["mnist"]
    small = load_task("mnist", n_per_class=10, n_test_per_class=5)
    assert small.n == 20 and small.n_test == 10
    assert (small.y_train == 1).sum() == 10
    assert set(small.index_train.tolist()) <= set(big.index_train.tolist())
    for cls in (-1, 1):  # each class's first 10 of the big set
        assert torch.equal(
            small.index_train[small.y_train == cls], big.index_train[big.y_train == cls][:10]
        )


def test_to_and_unnormalize(tasks):
    t = tasks["mnist"]
    t64 = t.to(dtype=torch.float64)
    assert t64.x_train.dtype == t64.mean.dtype == t64.y_train.dtype == torch.float64
    assert t64.labels_train.dtype == torch.int64 and t.x_train.dtype == torch.float32
    flat = t64.x_train[:4].reshape(4, -1)
    np.testing.assert_allclose(
        t64.unnormalize(flat).reshape(4, 1, 28, 28).numpy(),
        t.unnormalize(t.x_train[:4]).numpy(),
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="unnormalize"):
        t.unnormalize(torch.zeros(3, 5))
    assert "mnist" in repr(t) and "n=500" in repr(t)


def test_load_raw_layout(raw):
    x_tr, y_tr, x_te, _, source = load_raw("cifar10")
    assert x_te.shape == (10000, 32, 32, 3)
    assert x_tr.shape[1:] == (32, 32, 3) and x_tr.dtype == np.uint8
    assert y_tr.dtype == np.int64 and y_tr[:10].tolist() == CIFAR_FIRST_TRAIN
    assert source.startswith("npz:")


# ------------------------------------------------------------------ errors


def test_unknown_task_name():
    with pytest.raises(ValueError, match="mnist.*cifar10"):
        load_task("svhn")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_counts(bad):
    with pytest.raises(ValueError, match="n_per_class"):
        load_task("mnist", n_per_class=bad)


def test_empty_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RECON_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError) as info:
        load_task("mnist")
    msg = str(info.value)
    assert str(tmp_path) in msg and "RECON_DATA_DIR" in msg and "mnist.npz" in msg


def test_corrupt_npz(tmp_path, monkeypatch):
    (tmp_path / "mnist.npz").write_bytes(b"this is not a zip archive" * 10)
    monkeypatch.setenv("RECON_DATA_DIR", str(tmp_path))
    with pytest.raises(ValueError, match="cannot read mnist data") as info:
        load_task("mnist")
    assert str(tmp_path / "mnist.npz") in str(info.value)
    assert "x_train" in str(info.value)  # says what is expected


def test_npz_with_wrong_shapes(tmp_path):
    np.savez(
        tmp_path / "cifar10.npz",
        x_train=np.zeros((4, 3, 32, 32), np.uint8),  # CHW instead of HWC
        y_train=np.zeros(4, np.uint8),
        x_test=np.zeros((4, 32, 32, 3), np.uint8),
        y_test=np.zeros(4, np.uint8),
    )
    with pytest.raises(ValueError, match=r"x_train must be uint8 of shape \(N, 32, 32, 3\)"):
        load_raw("cifar10", data_dir=tmp_path)


def test_too_few_images_per_class(tasks):
    with pytest.raises(ValueError, match=r"training split has only \d+ images of class y=-1"):
        load_task("cifar10", n_per_class=10**6)
    with pytest.raises(ValueError, match="test split has only"):
        load_task("mnist", n_test_per_class=10**6)


def test_offline_without_data_dir_real_torchvision(tmp_path, monkeypatch):
    """No RECON_DATA_DIR, empty cache and download=False: torchvision finds nothing."""
    monkeypatch.delenv("RECON_DATA_DIR", raising=False)
    with pytest.raises(DataUnavailableError) as info:
        load_task("mnist", cache_dir=tmp_path, download=False)
    msg = str(info.value)
    assert "RECON_DATA_DIR" in msg and "mnist.npz" in msg and str(tmp_path) in msg


def test_offline_download_failure(tmp_path, monkeypatch):
    """download=True but no network (simulated, so the test never hangs or downloads)."""
    import torchvision.datasets as datasets
    calls = []

    def no_network(root, train=True, download=False, **kwargs):
        calls.append((root, train, download))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(datasets, "CIFAR10", no_network)
    monkeypatch.delenv("RECON_DATA_DIR", raising=False)
    with pytest.raises(DataUnavailableError) as info:
        load_task("cifar10", cache_dir=tmp_path, download=True)
    msg = str(info.value)
    assert "could not be downloaded" in msg and "RECON_DATA_DIR" in msg
    assert "cifar10.npz" in msg and "name resolution" in msg
    assert isinstance(info.value.__cause__, urllib.error.URLError)
    assert calls == [(str(tmp_path), True, True)]


def test_torchvision_path(tmp_path, monkeypatch, raw):
    """The torchvision route reads `.data` / `.targets` (MNIST: tensors, CIFAR: arrays)."""
    import torchvision.datasets as datasets
    x_tr, y_tr, x_te, y_te = raw["mnist"]

    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            assert root == str(tmp_path) and download
            self.data = torch.from_numpy(x_tr[:2000] if train else x_te[:2000])
            self.targets = torch.from_numpy((y_tr[:2000] if train else y_te[:2000]).astype(int))

    monkeypatch.setattr(datasets, "MNIST", FakeMNIST)
    monkeypatch.delenv("RECON_DATA_DIR", raising=False)
    monkeypatch.setenv("RECON_CACHE_DIR", str(tmp_path))
    t = load_task("mnist", n_per_class=20, n_test_per_class=20)
    assert t.source == f"torchvision:{tmp_path}"
    assert t.labels_train[:10].tolist() == MNIST_FIRST_TRAIN
    assert t.x_train.shape == (40, 1, 28, 28)


def test_skip_per_class_gives_a_disjoint_shadow_task(data_dir):
    """skip_per_class=K selects the next images of each class in stored order: a shadow task
    disjoint from the paper's, with its own training mean."""
    first = load_task("mnist", 6, 3, data_dir=data_dir)
    both = load_task("mnist", 12, 3, data_dir=data_dir)
    shadow = load_task("mnist", 6, 3, data_dir=data_dir, skip_per_class=6)
    assert not set(first.index_train.tolist()) & set(shadow.index_train.tolist())
    assert sorted(first.index_train.tolist() + shadow.index_train.tolist()) == \
        both.index_train.tolist()
    assert not torch.equal(first.mean, shadow.mean)
    with pytest.raises(ValueError, match="skip_per_class"):
        load_task("mnist", 6, 3, data_dir=data_dir, skip_per_class=-1)


def test_source_kind_names_no_machine_path(data_dir):
    from recon.data import load_task

    task = load_task("mnist", 2, 2)
    assert task.source.startswith("npz:/") and task.source.endswith("/mnist.npz")
    assert task.source_kind == "npz:mnist.npz"


def test_flip_labels_flips_a_fixed_share_and_nothing_else(tasks):
    task = tasks["mnist"]
    noisy = flip_labels(task, 0.1, seed=3)
    flipped = noisy.y_train != task.y_train
    assert int(flipped.sum()) == round(0.1 * task.n)
    assert torch.equal(noisy.y_train[flipped], -task.y_train[flipped])
    assert torch.equal(noisy.x_train, task.x_train) and torch.equal(noisy.y_test, task.y_test)
    assert torch.equal(flip_labels(task, 0.1, seed=3).y_train, noisy.y_train)  # seeded
    assert not torch.equal(flip_labels(task, 0.1, seed=4).y_train, noisy.y_train)
    assert flip_labels(task, 0.0) is task
    with pytest.raises(ValueError, match="fraction"):
        flip_labels(task, 1.5)
