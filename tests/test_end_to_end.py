"""A real run on MNIST odd/even: train, check the KKT regime, reconstruct, evaluate.

Small settings (n = 20, the paper's 784-1000-1000-1 network, weight decay, the CPU recipe of
``ReconConfig()``) so it finishes in about a minute on two cores. The thresholds sit well
below what an honest run reaches (measured: 12 of 20 training digits recovered with NCC > 0.9
under one-to-one matching, 16 with SSIM > 0.4), so seed and platform noise does not flip them,
while a broken loss, matching or optimiser would.
"""

import pytest
import torch

from recon.data import load_task
from recon.evaluate import evaluate_both
from recon.kkt import kkt_diagnostic
from recon.reconstruct import ReconConfig, reconstruct
from recon.train import TrainConfig, train_task

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(data_dir):
    task = load_task("mnist", n_per_class=10, data_dir=data_dir)
    config = TrainConfig(lr=0.1, weight_decay=2e-2, epochs=3000, dtype="float32", log_every=500)
    return task, train_task(task, config, progress=False)


def test_training_separates_and_generalises(trained):
    task, res = trained
    final = res.final()
    assert final["train_error"] == 0.0
    assert final["test_error"] < 0.40  # chance is 0.5; measured 0.27 with 20 training digits
    assert res.history["min_margin"][-1] > 0


def test_trained_net_is_near_a_kkt_point(trained):
    task, res = trained
    diag = kkt_diagnostic(res.model, task.x_train, task.y_train)
    assert diag.unexplained < 0.05  # measured 0.9%
    # With weight decay the multipliers are predicted: lambda_i = sigmoid(-margin_i) / (n wd).
    predicted = torch.sigmoid(-diag.margin) / (task.n * 2e-2)
    assert torch.corrcoef(torch.stack([diag.lam, predicted]))[0, 1] > 0.9


def test_positive_control_stays_on_the_training_images(trained):
    """Started at the true images with the diagnostic's multipliers, the run stays there.

    alpha = 1000 keeps the soft ReLU gate close to the exact step the network was trained
    with; at the random-start default alpha = 100 the true set is no longer a fixed point
    (measured: 5.6% unexplained at the start instead of 0.9%, and candidates drift).
    """
    task, res = trained
    diag = kkt_diagnostic(res.model, task.x_train, task.y_train)
    m = task.n
    config = ReconConfig(n_candidates=m, steps=300, alpha=1000.0, lambda_min=0.1, log_every=10,
                         subspace_tol=0.0)  # the unconstrained problem's fixed point
    out = reconstruct(res.model, config, mean=task.mean, x_init=task.x_train,
                      lam_init=diag.lam * m, y=task.y_train, progress=False)
    assert out.history["stat_rel"][-1] < 0.02  # measured 0.35%
    ev = evaluate_both(out.x, task.x_train, task.mean)["one_to_one"]
    assert torch.equal(ev.train_index, ev.candidate_index)  # each stays on its own image
    assert float(ev.ncc.min()) > 0.9  # measured 0.975
    assert float(ev.ssim.min()) > 0.6  # measured 0.72


def test_stationarity_loss_agrees_with_the_kkt_diagnostic(trained):
    """Two independent computations of the same residual: the reconstruction's autograd
    double-backward loss at the true images, and the diagnostic's Gram-matrix NNLS."""
    task, res = trained
    diag = kkt_diagnostic(res.model, task.x_train, task.y_train)
    m = task.n
    config = ReconConfig(n_candidates=m, steps=1, alpha=1e4, dtype="float64")
    out = reconstruct(res.model, config, mean=task.mean, x_init=task.x_train,
                      lam_init=diag.lam * m, y=task.y_train, progress=False)
    assert out.history["stat_rel"][0] == pytest.approx(diag.unexplained, rel=0.5)


def test_random_starts_recover_real_digits(trained):
    task, res = trained
    config = ReconConfig(n_candidates=2 * task.n, steps=1000, seed=0)
    out = reconstruct(res.model, config, mean=task.mean, progress=False)
    stat = out.history["stat_rel"]
    assert stat[-1] < 0.2 * stat[0]  # measured: 1.0 -> 0.046
    one = evaluate_both(out.x, task.x_train, task.mean)["one_to_one"]
    assert one.count(ncc_above=0.9) >= 6  # measured 12 of 20
    assert one.count(ssim_above=0.4) >= 8  # measured 16 of 20
