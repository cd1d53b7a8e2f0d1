"""Tests for recon.train: full-batch GD on the logistic loss, histories, checkpoints."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from recon.models import MLP
from recon.train import (
    CheckpointError,
    TrainConfig,
    TrainResult,
    check_binary_data,
    clipped_gradients,
    load_checkpoint,
    logistic_loss,
    margins,
    save_checkpoint,
    train,
    train_task,
)

HISTORY_KEYS = {"epoch", "loss", "train_error", "min_margin", "normalized_margin", "param_norm2"}


def _blobs(n: int = 16, seed: int = 0, shift: float = 1.0):
    """Two Gaussian blobs in (n, 1, 2, 2), labels -1 (first half) / +1, linearly separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.ones(n, dtype=torch.float64)
    y[: n // 2] = -1
    x = 0.3 * torch.randn(n, 1, 2, 2, generator=g, dtype=torch.float64)
    x[:, 0, 0, 0] += shift * y
    return x, y


def _task(seed: int = 0) -> SimpleNamespace:
    x, y = _blobs(16, seed)
    xt, yt = _blobs(10, seed + 100)
    return SimpleNamespace(x_train=x, y_train=y, x_test=xt, y_test=yt, image_shape=(1, 2, 2))


def _config(**kw) -> TrainConfig:
    base = dict(widths=(8, 6), init_scale=0.1, lr=0.2, epochs=200, log_every=50)
    return TrainConfig(**{**base, **kw})


def _trained(epochs: int = 200) -> TrainResult:
    x, y = _blobs()
    torch.manual_seed(0)
    model = MLP((1, 2, 2), (8, 6), init_scale=0.1).double()
    return train(model, x, y, _config(epochs=epochs), progress=False)


class _NotWeights:
    """An arbitrary Python object: weights_only loading must refuse to unpickle it."""

    def __init__(self):
        self.payload = "code could run here"


# --------------------------------------------------------------------------- training


def test_train_separates_tiny_problem_and_logs_history():
    x, y = _blobs()
    xt, yt = _blobs(10, seed=5)
    torch.manual_seed(0)
    model = MLP((1, 2, 2), (8, 6), init_scale=0.1).double()
    result = train(model, x, y, _config(epochs=300, log_every=100), x_test=xt, y_test=yt,
                   progress=False)
    h = result.history
    assert set(h) == HISTORY_KEYS | {"test_error"}
    # logged at epochs 0, 100, 200 and once more at the end (300)
    assert h["epoch"] == [0, 100, 200, 300]
    assert all(len(v) == 4 for v in h.values())
    assert result.epoch == 300 and result.model is model
    assert h["train_error"][0] > 0 and h["train_error"][-1] == 0.0
    assert h["loss"][-1] < 0.1 * h["loss"][0]
    assert result.final()["loss"] == h["loss"][-1]
    # the final log describes the returned model
    with torch.no_grad():
        assert h["loss"][-1] == pytest.approx(logistic_loss(model, x, y).item())
        assert h["min_margin"][-1] == pytest.approx(margins(model, x, y).min().item())
    norm2 = sum(p.detach().pow(2).sum().item() for p in model.parameters())
    assert h["param_norm2"][-1] == pytest.approx(norm2)
    assert h["normalized_margin"][-1] == pytest.approx(h["min_margin"][-1] / norm2 ** 1.5)
    assert result.wall_time > 0


def test_train_accepts_float32_data_for_float64_model():
    x, y = _blobs()
    torch.manual_seed(0)
    model = MLP((1, 2, 2), (8, 6), init_scale=0.1).double()
    result = train(model, x.float(), y.float(), _config(epochs=50), progress=False)
    assert next(model.parameters()).dtype == torch.float64
    assert math.isfinite(result.final()["loss"])


def test_normalized_margin_increases_late_in_training():
    """Without weight decay, GD on separable data increases the normalised margin
    min_i y_i Phi(x_i) / ||theta||^L once the data are fitted (Lyu & Li, 2019).
    Measured: it rises at every log from 0.176 (epoch 300) to 0.192 (epoch 3000)."""
    x, y = _blobs()
    torch.manual_seed(0)
    model = MLP((1, 2, 2), (16,), init_scale=1e-2).double()
    result = train(model, x, y, _config(widths=(16,), init_scale=1e-2, lr=0.5, epochs=1500,
                                        log_every=100), progress=False)
    h = result.history
    late = [m for e, m, err in zip(h["epoch"], h["normalized_margin"], h["train_error"])
            if e >= 300 and err == 0]
    assert len(late) == 13
    assert all(b > a for a, b in zip(late, late[1:]))
    assert h["param_norm2"][-1] > h["param_norm2"][3]  # the norm keeps growing


def test_weight_decay_bounds_the_norm():
    x, y = _blobs()
    norms = {}
    for wd in (0.0, 0.05):
        torch.manual_seed(0)
        model = MLP((1, 2, 2), (8, 6), init_scale=0.1).double()
        res = train(model, x, y, _config(weight_decay=wd, epochs=600), progress=False)
        norms[wd] = res.final()["param_norm2"]
    assert norms[0.05] < 0.5 * norms[0.0]


def test_diverging_lr_raises_floating_point_error():
    x, y = _blobs()
    torch.manual_seed(0)
    model = MLP((1, 2, 2), (16,), init_scale=1e-2)  # float32: overflows within a few epochs
    with pytest.raises(FloatingPointError, match="lower the lr"):
        train(model, x, y, _config(widths=(16,), lr=1e6, epochs=100, dtype="float32"),
              progress=False)


@pytest.mark.parametrize(
    "kw", [dict(dtype="float16"), dict(lr=0.0), dict(epochs=-1), dict(weight_decay=-1.0),
           dict(log_every=0)]
)
def test_train_config_validation(kw):
    with pytest.raises(ValueError):
        _config(**kw)


# --------------------------------------------------------------------------- data checks


def test_check_binary_data_rejects_zero_one_labels():
    model = MLP((1, 2, 2), (3,))
    x = torch.zeros(4, 1, 2, 2)
    with pytest.raises(ValueError) as info:
        check_binary_data(model, x, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert "-1" in str(info.value) and "+1" in str(info.value)
    with pytest.raises(ValueError, match="-1 or \\+1"):
        train(model, x, torch.tensor([0.0, 1.0, 1.0, 0.0]), _config(epochs=1), progress=False)


def test_check_binary_data_rejects_wrong_length_and_shape():
    model = MLP((1, 2, 2), (3,))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        check_binary_data(model, torch.zeros(4, 1, 2, 2), torch.ones(3))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        check_binary_data(model, torch.zeros(4, 1, 2, 2), torch.ones(4, 1))
    with pytest.raises(ValueError, match=r"\(m, 1, 2, 2\)"):
        check_binary_data(model, torch.zeros(4, 1, 3, 3), torch.ones(4))
    with pytest.raises(ValueError, match="test labels"):
        check_binary_data(model, torch.zeros(4, 4), torch.ones(5), what="test")
    check_binary_data(model, torch.zeros(4, 4), torch.tensor([1, -1, 1, -1]))  # ints are fine


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_round_trip(tmp_path):
    result = _trained()
    path = tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(path, result, extra={"note": "hello"})
    assert path.is_file() and not path.with_name("ckpt.pt.tmp").exists()
    loaded, raw = load_checkpoint(path)
    x = torch.randn(7, 1, 2, 2, dtype=torch.float64)
    assert next(loaded.model.parameters()).dtype == torch.float64
    assert torch.allclose(loaded.model(x), result.model(x), rtol=1e-12, atol=1e-14)
    assert loaded.model.arch() == result.model.arch()
    assert loaded.config == result.config
    assert loaded.history == result.history
    assert loaded.epoch == result.epoch == 200
    assert loaded.wall_time == pytest.approx(result.wall_time)
    assert raw["extra"] == {"note": "hello"}
    assert "torch" in raw["provenance"]
    # the file itself holds the exact float64 weights
    for name, p in result.model.named_parameters():
        assert torch.equal(raw["state_dict"][name], p.detach())


def test_checkpoint_round_trip_is_exact_in_float64(tmp_path):
    result = _trained()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, result)
    loaded, _ = load_checkpoint(path)
    for a, b in zip(result.model.parameters(), loaded.model.parameters()):
        assert torch.equal(a, b)


def test_save_checkpoint_stores_optimizer_state(tmp_path):
    result = _trained(epochs=5)
    opt = torch.optim.SGD(result.model.parameters(), lr=0.1, momentum=0.9)
    result.model(torch.zeros(1, 4, dtype=torch.float64)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", result, optimizer=opt)
    _, raw = load_checkpoint(tmp_path / "c.pt")
    assert raw["optimizer"]["param_groups"][0]["momentum"] == 0.9
    assert len(raw["optimizer"]["state"]) == 4  # one momentum buffer per parameter


@pytest.fixture(scope="module")
def straight_and_resumed(tmp_path_factory):
    """400 epochs straight, and 200 epochs + a train_task resume to 400 from a checkpoint."""
    tmp_path = tmp_path_factory.mktemp("resume")
    task = _task()
    straight = train_task(task, _config(epochs=400), progress=False)
    path = tmp_path / "run.pt"
    first = train_task(task, _config(epochs=200), checkpoint=path, progress=False)
    assert first.epoch == 200
    assert load_checkpoint(path)[0].epoch == 200
    resumed = train_task(task, _config(epochs=400), checkpoint=path, progress=False)
    # control: resuming continued training (it did not return the 200-epoch model)
    assert not torch.allclose(resumed.model(task.x_test), first.model(task.x_test), rtol=1e-3)
    return task, path, straight, resumed


def test_train_task_resume_equals_straight_run(straight_and_resumed):
    task, path, straight, resumed = straight_and_resumed
    assert resumed.epoch == 400
    x = task.x_test
    assert torch.allclose(resumed.model(x), straight.model(x), rtol=1e-9, atol=1e-12)
    assert resumed.history["epoch"][-1] == 400
    assert resumed.history["loss"][-1] == pytest.approx(straight.history["loss"][-1], rel=1e-5)
    # the checkpoint on disk is the finished run
    assert load_checkpoint(path)[0].epoch == 400


def test_train_task_resume_equals_straight_run_exactly(straight_and_resumed):
    _, _, straight, resumed = straight_and_resumed
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_train_task_resume_history_equals_straight_run(straight_and_resumed):
    _, _, straight, resumed = straight_and_resumed
    assert resumed.history["epoch"] == straight.history["epoch"]


def test_train_task_finished_checkpoint_is_returned_unchanged(tmp_path):
    task = _task()
    path = tmp_path / "run.pt"
    done = train_task(task, _config(epochs=100), checkpoint=path, progress=False)
    again = train_task(task, _config(epochs=100), checkpoint=path, progress=False)
    assert again.epoch == 100
    assert torch.allclose(again.model(task.x_test), done.model(task.x_test), rtol=1e-6)


def test_train_task_resume_false_starts_over(tmp_path):
    task = _task()
    path = tmp_path / "run.pt"
    train_task(task, _config(epochs=100), checkpoint=path, progress=False)
    fresh = train_task(task, _config(epochs=50, lr=0.1), checkpoint=path, resume=False,
                       progress=False)
    assert fresh.epoch == 50
    assert load_checkpoint(path)[0].config.lr == 0.1


@pytest.mark.parametrize("change", [dict(lr=0.1), dict(seed=1), dict(widths=(8, 5)),
                                    dict(weight_decay=1e-3)])
def test_train_task_resume_with_other_config_raises(tmp_path, change):
    task = _task()
    path = tmp_path / "run.pt"
    train_task(task, _config(epochs=50), checkpoint=path, progress=False)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="different config"):
        train_task(task, _config(epochs=100, **change), checkpoint=path, progress=False)
    assert path.read_bytes() == before  # not overwritten


def test_load_checkpoint_missing_path(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_load_checkpoint_random_bytes(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                   dtype=torch.uint8).numpy().tobytes())
    with pytest.raises(CheckpointError, match="not a readable recon checkpoint"):
        load_checkpoint(path)


def test_load_checkpoint_truncated_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _trained(epochs=10))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable recon checkpoint"):
        load_checkpoint(path)


def test_load_checkpoint_foreign_torch_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"a": 1}, path)
    with pytest.raises(CheckpointError, match="not a recon checkpoint"):
        load_checkpoint(path)
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a recon checkpoint"):
        load_checkpoint(path)


def test_load_checkpoint_refuses_pickled_objects(tmp_path):
    path = tmp_path / "object.pt"
    torch.save({"format": "recon-mlp/1", "obj": _NotWeights()}, path)
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(path)


def _tamper(path, fn):
    raw = torch.load(path, weights_only=True)
    fn(raw)
    torch.save(raw, path)


def test_load_checkpoint_weights_do_not_fit_arch(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _trained(epochs=10))

    def widen(raw):
        raw["arch"]["widths"] = [9, 6]

    _tamper(path, widen)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_load_checkpoint_missing_arch(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _trained(epochs=10))
    _tamper(path, lambda raw: raw.pop("arch"))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_load_checkpoint_nan_weights(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, _trained(epochs=10))

    def poison(raw):
        raw["state_dict"]["layers.1.weight"][0, 0] = float("nan")

    _tamper(path, poison)
    with pytest.raises(CheckpointError, match="layers.1.weight holds NaN"):
        load_checkpoint(path)


def test_checkpoint_error_is_a_value_error():
    assert issubclass(CheckpointError, ValueError)


# --------------------------------------------------------------------------- precision


def test_bfloat16_products_train_like_full_precision():
    """matmul="bfloat16" (autocast) separates the data and lands near the float32 run; the
    weights stay float32."""
    x, y = _blobs()
    runs = {}
    for mm in ("full", "bfloat16"):
        torch.manual_seed(0)
        model = MLP((1, 2, 2), (8, 6), init_scale=0.1)
        runs[mm] = train(model, x.float(), y.float(),
                         _config(dtype="float32", matmul=mm, epochs=150), progress=False)
    half, full = runs["bfloat16"], runs["full"]
    assert half.final()["train_error"] == 0.0
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    assert half.final()["loss"] == pytest.approx(full.final()["loss"], rel=0.05)
    assert half.final()["loss"] != full.final()["loss"]  # the products did change
    loss_half = logistic_loss(half.model, x.float(), y.float(), torch.bfloat16)
    assert loss_half.dtype == torch.float32


def test_train_config_matmul_validation_and_old_checkpoints(tmp_path):
    with pytest.raises(ValueError, match="matmul must be one of"):
        TrainConfig(matmul="bf16")
    # a checkpoint written before the option existed resumes as full precision
    task = _task()
    path = tmp_path / "run.pt"
    train_task(task, _config(epochs=20), checkpoint=path, progress=False)
    _tamper(path, lambda raw: raw["config"].pop("matmul"))
    assert load_checkpoint(path)[0].config.matmul == "full"
    assert train_task(task, _config(epochs=40), checkpoint=path, progress=False).epoch == 40
    with pytest.raises(CheckpointError, match="different config"):
        train_task(task, _config(epochs=60, matmul="bfloat16"), checkpoint=path,
                   progress=False)


# --------------------------------------------------------------------------- defenses


def _per_sample_grads(model, x, y):
    """Reference: each sample's logistic-loss gradient by its own backward pass."""
    out = []
    for i in range(len(x)):
        model.zero_grad()
        logistic_loss(model, x[i:i + 1], y[i:i + 1]).backward()
        out.append(torch.cat([p.grad.flatten().clone() for p in model.theta()]))
    model.zero_grad()
    return torch.stack(out)


@pytest.mark.parametrize("widths", [(8,), (8, 6), (5, 4, 3)])
def test_clipped_gradients_equal_explicit_per_sample_clipping(widths):
    x, y = _blobs(12, seed=3)
    torch.manual_seed(1)
    model = MLP((1, 2, 2), widths, init_scale=0.5).double()
    ref = _per_sample_grads(model, x, y)
    norms_ref = ref.norm(dim=1)
    clip = float(norms_ref.median())  # about half the samples are clipped
    loss, norms = clipped_gradients(model, x, y, clip)
    assert torch.allclose(norms, norms_ref, rtol=1e-10)
    got = torch.cat([p.grad.flatten() for p in model.theta()])
    want = (ref * (clip / norms_ref).clamp(max=1).unsqueeze(1)).mean(0)
    assert torch.allclose(got, want, rtol=1e-10, atol=1e-14)
    assert loss == pytest.approx(float(logistic_loss(model, x, y).detach()))
    # a bound above every norm clips nothing: the ordinary gradient
    model.zero_grad()
    clipped_gradients(model, x, y, float(norms_ref.max()) * 2)
    assert torch.allclose(torch.cat([p.grad.flatten() for p in model.theta()]), ref.mean(0),
                          rtol=1e-10, atol=1e-14)


def test_gradient_noise_has_the_stated_scale():
    x, y = _blobs(16)
    torch.manual_seed(0)
    model = MLP((1, 2, 2), (64, 64), init_scale=0.5).double()
    clipped_gradients(model, x, y, 0.5)
    clean = torch.cat([p.grad.flatten().clone() for p in model.theta()])
    model.zero_grad()
    clipped_gradients(model, x, y, 0.5, noise=2.0, generator=torch.Generator().manual_seed(0))
    noisy = torch.cat([p.grad.flatten() for p in model.theta()])
    # std noise * clip / n = 2 * 0.5 / 16, over ~4,500 parameters
    assert float((noisy - clean).std()) == pytest.approx(2.0 * 0.5 / 16, rel=0.05)


def test_dp_style_training_resumes_exactly_and_input_noise_changes_the_run(tmp_path):
    task = _task()
    cfg = dict(clip=0.5, grad_noise=0.3, input_noise=0.1)
    straight = train_task(task, _config(epochs=120, **cfg), progress=False)
    path = tmp_path / "dp.pt"
    train_task(task, _config(epochs=60, **cfg), checkpoint=path, progress=False)
    resumed = train_task(task, _config(epochs=120, **cfg), checkpoint=path, progress=False)
    for a, b in zip(resumed.model.parameters(), straight.model.parameters()):
        assert torch.equal(a, b)  # the noise depends on the seed and the epoch only
    plain = train_task(task, _config(epochs=120), progress=False)
    assert not torch.allclose(plain.model(task.x_test), straight.model(task.x_test))


def test_stop_when_fit_stops_at_the_first_epoch_with_zero_training_error(tmp_path):
    task = _task()
    full = train_task(task, _config(epochs=300, log_every=1), progress=False)
    first_fit = next(e for e, err in zip(full.history["epoch"], full.history["train_error"])
                     if err == 0)
    path = tmp_path / "early.pt"
    early = train_task(task, _config(epochs=300, log_every=1, stop_when_fit=True),
                       checkpoint=path, progress=False)
    assert early.epoch == first_fit > 0
    assert early.history["train_error"][-1] == 0 and early.history["train_error"][-2] > 0
    again = train_task(task, _config(epochs=300, log_every=1, stop_when_fit=True),
                       checkpoint=path, progress=False)  # a stopped run is finished
    assert again.epoch == first_fit


def test_defense_config_validation():
    with pytest.raises(ValueError, match="set clip > 0"):
        TrainConfig(grad_noise=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        TrainConfig(input_noise=-0.1)
