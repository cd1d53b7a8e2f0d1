"""Multiclass reconstruction (Buzaglo et al., 2023): the C-output network, cross-entropy
training, the multiclass stationarity equation, its KKT diagnostic and the reconstruction."""

from __future__ import annotations

import json

import pytest
import torch

from recon.data import MULTICLASS_TASKS, load_task
from recon.evaluate import ncc_pairs
from recon.kkt import gradient_gram, kkt_diagnostic, stationarity_residual
from recon.models import MLP
from recon.reconstruct import (
    ReconConfig,
    balanced_labels,
    reconstruct,
    stationarity_loss,
)
from recon.stationarity import Stationarity
from recon.train import TrainConfig, check_class_labels, margins, train_task

F64 = torch.float64
C = 4


def _model(widths=(7, 5), seed=0, **kw):
    torch.manual_seed(seed)
    return MLP((12,), widths, init_scale=1.0, n_outputs=C, **kw).double()


def _margin_grad(model, x, y):
    """Reference: the gradient of Phi_y(x) - max_{c != y} Phi_c(x) by one backward per
    sample, written out with the argmax taken explicitly."""
    out = []
    for i in range(len(x)):
        model.zero_grad()
        logits = model(x[i:i + 1])[0]
        others = [c for c in range(C) if c != int(y[i])]
        c = others[int(torch.argmax(logits[others]))]
        (logits[int(y[i])] - logits[c]).backward()
        out.append(torch.cat([p.grad.flatten().clone() for p in model.theta()]))
    model.zero_grad()
    return torch.stack(out)


def test_network_shapes_margins_and_arch_round_trip():
    model = _model()
    x = torch.randn(5, 12, dtype=F64)
    y = torch.tensor([0, 1, 2, 3, 1])
    with torch.no_grad():
        out = model(x)
        m = margins(model, x, y)
    assert out.shape == (5, C) and model.multiclass
    for i in range(5):
        others = torch.cat([out[i, :y[i]], out[i, y[i] + 1:]])
        assert m[i] == pytest.approx(float(out[i, y[i]] - others.max()))
    rebuilt = MLP.from_arch(model.arch())
    assert rebuilt.n_outputs == C and rebuilt.layers[-1].out_features == C


def test_gram_matrix_equals_explicit_margin_gradients():
    model = _model(widths=(6, 5, 4))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 12, generator=g, dtype=F64)
    y = torch.randint(0, C, (7,), generator=g)
    G = _margin_grad(model, x, y)
    K, b, out = gradient_gram(model, x, y)
    theta = torch.cat([p.detach().flatten() for p in model.theta()])
    torch.testing.assert_close(K, G @ G.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b, G @ theta, rtol=1e-10, atol=1e-12)
    assert out.shape == (7, C)


def test_all_classes_gram_matrix_equals_explicit_pair_gradients():
    model = _model(widths=(6, 5))
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 12, generator=g, dtype=F64)
    y = torch.randint(0, C, (5,), generator=g)
    grads = []
    for i in range(5):
        for c in range(C):
            if c == int(y[i]):
                continue
            model.zero_grad()
            logits = model(x[i:i + 1])[0]
            (logits[int(y[i])] - logits[c]).backward()
            grads.append(torch.cat([p.grad.flatten().clone() for p in model.theta()]))
    G = torch.stack(grads)
    K, b, out = gradient_gram(model, x, y, all_classes=True)
    theta = torch.cat([p.detach().flatten() for p in model.theta()])
    torch.testing.assert_close(K, G @ G.T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b, G @ theta, rtol=1e-10, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(out, model(x))
    with pytest.raises(ValueError, match="multiclass model"):
        kkt_diagnostic(MLP((12,), (5,)).double(), x, torch.ones(5, dtype=F64),
                       all_classes=True)


def test_a_hand_built_kkt_point_has_zero_residual_and_its_multipliers():
    """A random-features net (frozen first layer) with two outputs, so that each sample's
    other class is fixed: theta is the output layer W, and the margin gradient of sample i
    is (e_{y_i} - e_{1-y_i}) a_i^T. W = sum_i lam_i (e_{y_i} - e_{1-y_i}) a_i^T is an exact
    KKT point by construction; the diagnostic finds lam and no residual. (The choice of the
    highest other class among more is checked against explicit gradients above.)"""
    torch.manual_seed(3)
    model = MLP((12,), (6,), init_scale=1.0, n_outputs=2, frozen=(0,)).double()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 12, generator=g, dtype=F64)
    y = torch.tensor([0, 1, 1])
    lam = torch.tensor([0.7, 1.3, 0.4], dtype=F64)
    with torch.no_grad():
        a = torch.relu(model.layers[0](x))
        sign = 2 * torch.nn.functional.one_hot(y, 2).double() - 1  # e_y - e_other
        model.layers[1].weight.copy_((lam[:, None] * sign).T @ a)
    d = kkt_diagnostic(model, x, y)
    assert d.unexplained < 1e-12
    torch.testing.assert_close(d.lam, lam, rtol=1e-8, atol=1e-10)
    assert stationarity_residual(model, x, y, lam) < 1e-12
    assert stationarity_residual(model, x, y, lam * 1.1) > 1e-3  # and only these multipliers


@pytest.mark.parametrize("widths,alpha,frozen", [((7, 5), 10.0, ()), ((9,), None, ()),
                                                 ((7, 5, 4), 5.0, ()), ((7, 5), 8.0, (0,))])
@pytest.mark.parametrize("every_class", [False, True], ids=["highest", "every"])
def test_hand_written_gradient_equals_double_backward(widths, alpha, frozen, every_class):
    """Value and both gradients; ``every_class``: one multiplier per wrong class,
    lam (m, C - 1), instead of one per candidate against its highest wrong class."""
    model = _model(widths=widths, frozen=frozen)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 12, generator=g, dtype=F64)
    lam = torch.rand(*((8, C - 1) if every_class else (8,)), generator=g, dtype=F64) * 3
    y = balanced_labels(8, n_classes=C)
    for p in model.theta():
        p.requires_grad_(True)
    xr, lr = x.clone().requires_grad_(True), lam.clone().requires_grad_(True)
    want = stationarity_loss(model, xr, lr, y, alpha)
    gx, gl = torch.autograd.grad(want, [xr, lr])
    got, gz, gl2 = Stationarity(model, None, alpha=alpha, dtype=F64)(x, lam, y)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(gz, gx, rtol=1e-7, atol=1e-9 * gx.abs().max().item())
    assert gl2.shape == lam.shape
    torch.testing.assert_close(gl2, gl, rtol=1e-7, atol=1e-9 * gl.abs().max().item())


def test_balanced_labels_for_ten_classes():
    y = balanced_labels(25, n_classes=10)
    assert y.dtype == torch.int64 and y.tolist()[:5] == [0, 0, 0, 1, 1]
    assert torch.bincount(y, minlength=10).tolist() == [3, 2, 3, 2, 3, 2, 3, 2, 3, 2]


def test_bad_input_says_what_is_wrong():
    model = _model()
    x = torch.randn(4, 12, dtype=F64)
    with pytest.raises(ValueError, match="class indices 0..3"):
        check_class_labels(model, x, torch.tensor([0, 1, 4, 2]))
    with pytest.raises(ValueError, match="class indices 0..3"):
        check_class_labels(model, x, torch.tensor([0, -1, 2, 2]))
    with pytest.raises(ValueError, match="class indices"):
        reconstruct(model, ReconConfig(n_candidates=4, steps=1, subspace_tol=0, box="paper"),
                    y=torch.tensor([0, 1, 2, 7]), progress=False)
    with pytest.raises(ValueError, match="fewer than the model's 4 classes"):
        reconstruct(model, ReconConfig(n_candidates=3, steps=1, subspace_tol=0, box="paper"),
                    progress=False)
    with pytest.raises(ValueError, match="n_outputs must be a positive integer"):
        MLP((12,), (5,), n_outputs=0)
    with pytest.raises(ValueError, match="unknown task"):
        load_task("svhn-multiclass", 2)


@pytest.fixture(scope="module")
def ten_class_mnist():
    """A small ten-class MNIST model: 3 digits per class, 784-400-400-10, weight decay."""
    task = load_task("mnist-multiclass", 3, 20)
    cfg = TrainConfig(widths=(400, 400), lr=0.1, weight_decay=2e-2, epochs=1500,
                      dtype="float32", log_every=100)
    return task, train_task(task, cfg, progress=False)


def test_multiclass_task_and_training(ten_class_mnist):
    task, res = ten_class_mnist
    assert task.name in MULTICLASS_TASKS and task.n == 30 and task.n_outputs == 10
    assert torch.bincount(task.y_train).tolist() == [3] * 10
    assert res.model.n_outputs == 10 and res.final()["train_error"] == 0
    assert res.final()["test_error"] < 0.6  # ten classes from 30 digits: far above chance
    # the max-class stationarity equation explains the weights far better at the training
    # digits than at as many test digits (it does not hold exactly: with cross-entropy and
    # weight decay every other class carries a multiplier, not only the highest)
    model = res.model.double()
    d = kkt_diagnostic(model, task.x_train.double(), task.y_train)
    control = kkt_diagnostic(model, task.x_test[:task.n].double(), task.y_test[:task.n])
    res.model.float()
    assert (d.lam >= 0).all() and d.unexplained < control.unexplained - 0.3
    # with a multiplier for every wrong class the equation explains far more: at a stationary
    # point of cross-entropy + (wd/2)||theta||^2 it holds exactly, lam_ic = p_ic / (n wd)
    pairs = kkt_diagnostic(model, task.x_train.double(), task.y_train, all_classes=True)
    assert pairs.lam_pairs.shape == (task.n, 9)
    assert pairs.unexplained < d.unexplained / 2


def test_positive_control_stays_at_an_exact_kkt_point():
    """Started at the samples and multipliers of an exact multiclass KKT point, the
    reconstruction (hand-written gradient, Adam) stays there."""
    torch.manual_seed(3)
    model = MLP((12,), (6,), init_scale=1.0, n_outputs=2, frozen=(0,)).double()
    g = torch.Generator().manual_seed(2)
    x = 0.3 * torch.randn(4, 12, generator=g, dtype=F64)  # inside the paper's box [-1, 1]
    y = torch.tensor([0, 1, 1, 0])
    lam = torch.tensor([0.7, 1.3, 0.4, 0.9], dtype=F64)
    with torch.no_grad():
        a = torch.relu(model.layers[0](x))
        sign = 2 * torch.nn.functional.one_hot(y, 2).double() - 1
        model.layers[1].weight.copy_((lam[:, None] * sign).T @ a)
    cfg = ReconConfig(n_candidates=4, steps=200, dtype="float64", subspace_tol=0, box="paper",
                      lambda_min=0.0, lr_x=1e-3, lr_lambda=1e-3)
    rec = reconstruct(model, cfg, x_init=x, y=y, lam_init=lam * 4, progress=False)
    assert rec.history["stat_rel"][0] < 1e-20
    assert torch.allclose(rec.x, x, atol=1e-6) and torch.allclose(rec.lam, lam * 4, atol=1e-6)


def test_positive_control_with_a_multiplier_per_wrong_class_stays(ten_class_mnist):
    """The trained ten-class model satisfies the all-classes equation (its KKT diagnostic
    explains nearly everything): started at the true digits with those multipliers, the
    reconstruction inverting that equation stays on them."""
    task, res = ten_class_mnist
    model = res.model
    d = kkt_diagnostic(model.double(), task.x_train.double(), task.y_train, all_classes=True)
    model.float()
    cfg = ReconConfig(n_candidates=task.n, steps=300, matmul="full", all_classes=True,
                      lambda_min=0.0)
    rec = reconstruct(model, cfg, mean=task.mean, x_init=task.x_train, y=task.y_train,
                      lam_init=(d.lam_pairs * task.n).float(), progress=False)
    drift = (rec.x - task.x_train).flatten(1).norm(dim=1) / task.x_train.flatten(1).norm(dim=1)
    ncc = ncc_pairs(rec.x + task.mean, task.x_train + task.mean)
    # the same control inverting the max-class equation, which the model does not satisfy
    d1 = kkt_diagnostic(model.double(), task.x_train.double(), task.y_train)
    model.float()
    cfg1 = ReconConfig(n_candidates=task.n, steps=300, matmul="full", lambda_min=0.0)
    rec1 = reconstruct(model, cfg1, mean=task.mean, x_init=task.x_train, y=task.y_train,
                       lam_init=(d1.lam * task.n).float(), progress=False)
    drift1 = (rec1.x - task.x_train).flatten(1).norm(dim=1) / task.x_train.flatten(1).norm(dim=1)
    print(f"positive control, all classes: drift {float(drift.max()):.3f}, NCC min "
          f"{float(ncc.min()):.3f}, residual {rec.history['stat_rel'][-1]:.4f}; max class: drift "
          f"{float(drift1.max()):.3f}, residual {rec1.history['stat_rel'][-1]:.4f}")
    assert float(ncc.min()) > 0.95 and float(drift.max()) < float(drift1.max()) / 2
    assert rec.history["stat_rel"][-1] < rec1.history["stat_rel"][-1] / 5


@pytest.mark.slow
def test_random_starts_recover_real_ten_class_digits(ten_class_mnist):
    """The honest end-to-end check: from random starts, with balanced class assignments and
    nothing taken from the training set, candidates match training digits one-to-one at high
    correlation, and many more than they match held-out test digits."""
    from recon.evaluate import evaluate

    task, res = ten_class_mnist
    cfg = ReconConfig(n_candidates=2 * task.n, steps=1500)
    rec = reconstruct(res.model, cfg, mean=task.mean, progress=False)
    train_ev = evaluate(rec.x, task.x_train, task.mean, matching="one_to_one")
    test_ev = evaluate(rec.x, task.x_test[:task.n], task.mean, matching="one_to_one")
    found, control = int((train_ev.ncc > 0.9).sum()), int((test_ev.ncc > 0.9).sum())
    print(f"ten-class MNIST, n = 30: {found} training digits at NCC > 0.9, {control} test")
    assert found >= 5 and found >= control + 5, (found, control)
    # the equation the model satisfies (a multiplier per wrong class) gives nearly all back
    cfg = ReconConfig(n_candidates=2 * task.n, steps=1500, all_classes=True)
    rec = reconstruct(res.model, cfg, mean=task.mean, progress=False)
    train_ev = evaluate(rec.x, task.x_train, task.mean, matching="one_to_one")
    test_ev = evaluate(rec.x, task.x_test[:task.n], task.mean, matching="one_to_one")
    every, control = int((train_ev.ncc > 0.9).sum()), int((test_ev.ncc > 0.9).sum())
    print(f"all wrong classes: {every} training digits at NCC > 0.9, {control} test")
    assert every >= 25 and every > found and control <= 2, (every, found, control)


def test_the_command_line_takes_the_ten_class_task(tmp_path, data_dir, monkeypatch, capsys):
    from recon.cli import main

    monkeypatch.setenv("RECON_DATA_DIR", str(data_dir))
    run = tmp_path / "run"
    assert main(["train", "--task", "mnist-multiclass", "--n-per-class", "2",
                 "--n-test-per-class", "10", "--epochs", "100", "--lr", "0.1",
                 "--weight-decay", "0.02", "--dtype", "float32", "--widths", "32,32",
                 "--run", str(run), "--quiet"]) == 0
    assert main(["reconstruct", "--run", str(run), "--steps", "20", "--quiet"]) == 0
    assert main(["evaluate", "--run", str(run)]) == 0
    out = capsys.readouterr().out
    assert "trained mnist-multiclass n=20" in out and "one_to_one" in out
    card = json.loads((run / "run.json").read_text())
    assert card["task"]["name"] == "mnist-multiclass"
    rec = torch.load(run / "reconstruction.pt", weights_only=True)
    assert rec["y"].dtype == torch.int64 and torch.bincount(rec["y"]).tolist() == [4] * 10
