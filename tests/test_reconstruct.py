"""Tests for recon.reconstruct: the KKT reconstruction loss, optimiser loop and checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from recon.kkt import kkt_diagnostic
from recon.models import MLP
from recon.reconstruct import (
    ReconConfig,
    ReconResult,
    _box,
    _Run,
    balanced_labels,
    first_layer_basis,
    kink_cost,
    kkt_loss_terms,
    load_reconstruction,
    reconstruct,
    stationarity_loss,
    total_variation,
    two_tone_cost,
)
from recon.train import TrainConfig, train

SHAPE = (1, 4, 4)


def _cfg(**kw) -> ReconConfig:
    base = dict(n_candidates=8, steps=20, lr_x=0.01, box="paper", dtype="float64", alpha=20.0,
                log_every=5, init_scale=0.1)
    return ReconConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def trained():
    """MLP (1,4,4)-16-8-1 trained briefly (float64, weight decay) on 8 random +-1 points."""
    g = torch.Generator().manual_seed(0)
    x = (0.5 * torch.randn(8, *SHAPE, generator=g, dtype=torch.float64)).clamp(-1, 1)
    y = balanced_labels(8, torch.float64)
    torch.manual_seed(0)
    model = MLP(SHAPE, (16, 8), init_scale=0.3).double()
    res = train(model, x, y, TrainConfig(widths=(16, 8), init_scale=0.3, lr=0.2, epochs=300,
                                         weight_decay=0.01, log_every=100), progress=False)
    assert res.final()["train_error"] == 0.0
    return model, x, y


def _params(model):
    return [p.detach().clone() for p in model.parameters()]


# --------------------------------------------------------------------------- the loss


def _explicit_stationarity(model, x, lam, y, alpha):
    """||theta - (1/m) sum_j lam_j y_j grad Phi(x_j)||^2 with one autograd call per sample."""
    params = list(model.parameters())
    total = [torch.zeros_like(p) for p in params]
    for j in range(len(x)):
        grads = torch.autograd.grad(model(x[j : j + 1], alpha=alpha).sum(), params)
        for t, gr in zip(total, grads):
            t += lam[j] * y[j] * gr / len(x)
    return sum((p.detach() - t).pow(2).sum() for p, t in zip(params, total))


@pytest.mark.parametrize("alpha", [None, 10.0])
def test_stationarity_loss_matches_explicit_per_sample_loop(alpha):
    torch.manual_seed(0)
    model = MLP((2,), (5, 4), init_scale=1.0).double()
    x = torch.randn(6, 2, dtype=torch.float64)
    lam = torch.rand(6, dtype=torch.float64) * 3
    y = balanced_labels(6, torch.float64)
    got = stationarity_loss(model, x, lam, y, alpha)
    want = _explicit_stationarity(model, x, lam, y, alpha)
    assert got.item() == pytest.approx(want.item(), rel=1e-12)
    # lam = 0 explains nothing: the loss is ||theta||^2
    theta2 = sum(p.detach().pow(2).sum() for p in model.parameters())
    zero = stationarity_loss(model, x, torch.zeros(6, dtype=torch.float64), y, alpha)
    assert zero.item() == pytest.approx(theta2.item(), rel=1e-12)


def test_stationarity_loss_gradients_match_finite_differences():
    """gradcheck in float64. The loss is quadratic in lam at any alpha. In x it is the exact
    derivative with alpha=None (the gate is piecewise constant) and with a very sharp gate;
    at moderate alpha the x-gradient is the documented sigmoid surrogate, not the derivative of
    the loss's value (gradcheck fails there by design)."""
    torch.manual_seed(0)
    model = MLP((2,), (5, 4), init_scale=1.0).double()
    x = torch.randn(6, 2, dtype=torch.float64, requires_grad=True)
    lam = torch.rand(6, dtype=torch.float64, requires_grad=True)
    y = balanced_labels(6, torch.float64)
    for alpha in (None, 10.0, 1e4):
        assert torch.autograd.gradcheck(
            lambda l_, a=alpha: stationarity_loss(model, x.detach(), l_, y, a), (lam,))
    for alpha in (None, 1e4):
        assert torch.autograd.gradcheck(
            lambda x_, a=alpha: stationarity_loss(model, x_, lam.detach(), y, a), (x,),
            eps=1e-6, atol=1e-6, rtol=1e-5)


def test_soft_gate_changes_the_x_gradient():
    """The reason for alpha: with an exact ReLU the loss's dependence on x through the gates
    has zero derivative; with alpha the gates contribute, so the x-gradient changes."""
    torch.manual_seed(0)
    model = MLP((3,), (6, 5), init_scale=1.0).double()
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    lam, y = torch.ones(4, dtype=torch.float64), balanced_labels(4, torch.float64)
    (g_soft,) = torch.autograd.grad(stationarity_loss(model, x, lam, y, 5.0), x)
    (g_exact,) = torch.autograd.grad(stationarity_loss(model, x, lam, y, None), x)
    assert g_soft.abs().sum() > 0 and not torch.allclose(g_soft, g_exact, rtol=1e-3)


def test_kkt_loss_terms_known_values():
    torch.manual_seed(0)
    model = MLP((4,), (3,), init_scale=1.0).double()
    x = torch.tensor([[1.5, -2.0, 0.5, 1.0], [0.0, -1.0, 0.99, -0.5]], dtype=torch.float64)
    lam = torch.tensor([0.1, 0.6], dtype=torch.float64)
    y = balanced_labels(2, torch.float64)
    cfg = _cfg(n_candidates=2, lambda_min=0.45)
    terms = kkt_loss_terms(model, x, lam, y, cfg, -1.0, 1.0)
    assert set(terms) == {"stat", "lam", "prior", "tv", "tone", "kink", "loss"}
    assert terms["tv"].item() == 0.0  # the TV prior is off by default
    assert terms["tone"].item() == 0.0  # so is the two-tone prior
    assert terms["lam"].item() == pytest.approx(5 * 0.35**2)  # only lam_0 < lambda_min
    assert terms["prior"].item() == pytest.approx(0.5**2 + 1.0**2)  # 1.5 > 1 and -2 < -1
    assert terms["stat"].item() == pytest.approx(
        stationarity_loss(model, x, lam, y, cfg.alpha).item())
    total = terms["stat"] + terms["lam"] + terms["prior"]
    assert terms["loss"].item() == pytest.approx(total.item())
    # a per-pixel box (the 'valid' box is [-mean, 1 - mean])
    mean = torch.tensor([[0.5, 0.0, 0.2, 0.9]], dtype=torch.float64)
    valid = kkt_loss_terms(model, x, lam, y, cfg, -mean, 1.0 - mean)
    # box per pixel [-0.5, 0.5], [0, 1], [-0.2, 0.8], [-0.9, 0.1]; outside by
    # row 0: 1.0, 2.0, -, 0.9; row 1: -, 1.0, 0.19, -
    by_hand = 1.0**2 + 2.0**2 + 0.9**2 + 1.0**2 + 0.19**2
    assert valid["prior"].item() == pytest.approx(by_hand)


def test_total_variation_known_values_and_scaling():
    x = torch.zeros(2, 1, 3, 3, dtype=torch.float64)
    x[1, 0, :, 2] = 1.0  # a vertical edge: on the 2x2 grid of forward differences,
    # pixels (0,1) and (1,1) see a step of 1 to their right, the others see nothing
    tv = total_variation(x, eps=0.0)
    assert tv.tolist() == pytest.approx([0.0, 2 / 4])
    noise = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    smooth = torch.linspace(0, 1, 8).expand(1, 3, 8, 8)
    assert total_variation(noise).item() > 10 * total_variation(smooth).item()
    with pytest.raises(ValueError, match="images"):
        total_variation(torch.zeros(4, 10))


def test_tv_prior_term_scales_with_theta_and_reaches_the_loss():
    torch.manual_seed(0)
    model = MLP((1, 4, 4), (5,), init_scale=1.0).double()
    x = torch.randn(4, 1, 4, 4, dtype=torch.float64)
    lam, y = torch.ones(4, dtype=torch.float64), balanced_labels(4, torch.float64)
    cfg = _cfg(n_candidates=4, tv=0.5)
    theta2 = float(sum(p.detach().pow(2).sum() for p in model.theta()))
    terms = kkt_loss_terms(model, x, lam, y, cfg, -10.0, 10.0)
    assert terms["tv"].item() == pytest.approx(0.5 * theta2 * total_variation(x).mean().item())
    total = terms["stat"] + terms["lam"] + terms["prior"] + terms["tv"]
    assert terms["loss"].item() == pytest.approx(total.item())
    with pytest.raises(ValueError, match="tv"):
        _cfg(tv=-1.0)


def test_two_tone_prior_known_values_and_blends_cost_more():
    torch.manual_seed(0)
    model = MLP((4,), (3,), init_scale=1.0).double()
    mean = torch.tensor([[0.5, 0.0, 0.2, 0.9]], dtype=torch.float64)
    # pixel values p = x + mean: row 0 (0.5, 1, 0, 0.9) -> p(1-p) 0.25, 0, 0, 0.09;
    # row 1 (1.2, -0.3, 0.1, 0.4): outside [0, 1] clamps to a tone -> 0, 0, 0.09, 0.24
    p = torch.tensor([[0.5, 1.0, 0.0, 0.9], [1.2, -0.3, 0.1, 0.4]], dtype=torch.float64)
    x, lam, y = p - mean, torch.ones(2, dtype=torch.float64), balanced_labels(2, torch.float64)
    cfg = _cfg(n_candidates=2, two_tone=2.0)
    terms = kkt_loss_terms(model, x, lam, y, cfg, -10.0, 10.0, theta2=3.0, mean=mean)
    assert terms["tone"].item() == pytest.approx(2.0 * 3.0 * (0.25 + 0.09 + 0.09 + 0.24) / 8)
    assert two_tone_cost(p).tolist() == pytest.approx([0.34 / 4, 0.33 / 4])
    total = terms["stat"] + terms["lam"] + terms["prior"] + terms["tv"] + terms["tone"]
    assert terms["loss"].item() == pytest.approx(total.item())
    with pytest.raises(ValueError, match="mean"):
        kkt_loss_terms(model, x, lam, y, cfg, -10.0, 10.0)
    with pytest.raises(ValueError, match="two_tone"):
        _cfg(two_tone=-1.0)
    # two two-tone images cost nothing; any blend of them costs more than both (Jensen)
    a = torch.tensor([[0.0, 1.0, 1.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 1.0, 0.0, 0.0]], dtype=torch.float64)
    one = _cfg(n_candidates=2, two_tone=1.0)
    cost = [kkt_loss_terms(model, v - mean, lam[:1], y[:1], one, -10.0, 10.0, 1.0,
                           mean)["tone"].item() for v in (a, b, 0.7 * a + 0.3 * b)]
    assert cost[0] == cost[1] == 0.0 and cost[2] == pytest.approx(0.21 / 2)


def test_kink_prior_known_values_and_blends_cost_more():
    """The kink prior of an input on k of the first layer's hyperplanes, and of a blend of two
    inputs on different hyperplanes, which sits on neither's."""
    model = MLP((2,), (2,), init_scale=1.0).double()
    with torch.no_grad():  # unit 0: the plane x0 = 0; unit 1: the plane x1 = 1
        model.layers[0].weight.copy_(torch.eye(2, dtype=torch.float64))
        model.layers[0].bias.copy_(torch.tensor([0.0, -1.0], dtype=torch.float64))
    a = torch.tensor([[0.0, 3.0]], dtype=torch.float64)  # on plane 0 only
    b = torch.tensor([[2.0, 1.0]], dtype=torch.float64)  # on plane 1 only
    s = 0.5
    cost = kink_cost(model, torch.cat([a, b, 0.5 * a + 0.5 * b]), scale=s)
    e = torch.exp(-torch.tensor([2.0 / s, 2.0 / s, 1.0 / s, 1.0 / s], dtype=torch.float64))
    expect = [(1 - e[0]) / 2, (1 - e[1]) / 2, ((1 - e[2]) + (1 - e[3])) / 2]
    assert cost.tolist() == pytest.approx([v.item() for v in expect])
    assert cost[2] > max(cost[0], cost[1])  # the blend sits on neither plane
    lam, y = torch.ones(1, dtype=torch.float64), balanced_labels(2, torch.float64)[:1]
    terms = kkt_loss_terms(model, a, lam, y, _cfg(n_candidates=2, kinks=2.0, kink_scale=s),
                           -10.0, 10.0, theta2=3.0)
    assert terms["kink"].item() == pytest.approx(2.0 * 3.0 * cost[0].item())
    for bad in ({"kinks": -1.0}, {"kinks": float("nan")}, {"kink_scale": 0.0}):
        with pytest.raises(ValueError, match="kink"):
            _cfg(**bad)


def test_kink_step_follows_the_prior_gradient(trained):
    """The optimisation loop's step adds exactly the autograd gradient of the kink term
    (SGD's first step moves x by -lr times the gradient)."""
    model, _, _ = trained
    x0 = 0.4 * torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(2),
                           dtype=torch.float64)
    moved = {}
    for w in (0.0, 0.5):
        cfg = _cfg(steps=1, optimizer="sgd", lr_x=0.1, kinks=w, kink_scale=0.05, box="none",
                   subspace_tol=0.0)
        res = reconstruct(model, cfg, x_init=x0, progress=False)
        moved[w] = res.x - x0
        assert (res.history["kink"][0] > 0) == (w > 0)
    xt = x0.clone().requires_grad_(True)
    theta2 = float(sum(p.detach().pow(2).sum() for p in model.theta()))
    kink = kkt_loss_terms(model, xt, torch.ones(8, dtype=torch.float64),
                          balanced_labels(8, torch.float64), _cfg(kinks=0.5, kink_scale=0.05),
                          -10.0, 10.0, theta2)["kink"]
    (g,) = torch.autograd.grad(kink, xt)
    assert g.abs().max() > 0
    torch.testing.assert_close(moved[0.5] - moved[0.0], -0.1 * g)


def test_two_tone_step_follows_the_prior_gradient(trained):
    """The optimisation loop's step adds exactly the autograd gradient of the two-tone term
    (SGD's first step moves x by -lr times the gradient), and fails clearly without a mean."""
    model, _, _ = trained
    mean = torch.full((1, *SHAPE), 0.3, dtype=torch.float64)
    x0 = 0.4 * torch.randn(8, *SHAPE, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64)
    moved = {}
    for w in (0.0, 0.5):
        cfg = _cfg(steps=1, optimizer="sgd", lr_x=0.1, two_tone=w, box="valid",
                   subspace_tol=0.0)
        res = reconstruct(model, cfg, mean=mean, x_init=x0, progress=False)
        moved[w] = res.x - x0
        assert (res.history["tone"][0] > 0) == (w > 0)
    xt = x0.clone().requires_grad_(True)
    theta2 = float(sum(p.detach().pow(2).sum() for p in model.theta()))
    tone = kkt_loss_terms(model, xt, torch.ones(8, dtype=torch.float64),
                          balanced_labels(8, torch.float64), _cfg(two_tone=0.5), -10.0, 10.0,
                          theta2, mean)["tone"]
    (g,) = torch.autograd.grad(tone, xt)
    assert g.abs().max() > 0
    torch.testing.assert_close(moved[0.5] - moved[0.0], -0.1 * g)
    with pytest.raises(ValueError, match="mean"):
        reconstruct(model, _cfg(steps=1, two_tone=0.5), progress=False)


def test_tv_prior_smooths_candidates():
    """Same model, same start: the TV prior leaves candidates with lower total variation."""
    torch.manual_seed(0)
    model = MLP((1, 6, 6), (8,), init_scale=1.0)
    runs = {}
    for tv in (0.0, 0.05):
        cfg = _cfg(n_candidates=4, steps=60, tv=tv, init_scale=0.5, box="paper")
        runs[tv] = reconstruct(model, cfg, progress=False)
    assert "tv" in runs[0.05].history and runs[0.0].history["tv"][-1] == 0.0
    assert total_variation(runs[0.05].x).mean() < 0.8 * total_variation(runs[0.0].x).mean()


def _model_with_rows_in_span(n: int = 3, seed: int = 0):
    """A (1, 5, 5)-input MLP whose first-layer rows are combinations of n known images."""
    g = torch.Generator().manual_seed(seed)
    model = MLP((1, 5, 5), (12, 6), init_scale=1.0).double()
    images = torch.randn(n, 1, 5, 5, generator=g, dtype=torch.float64)
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.randn(12, n, generator=g, dtype=torch.float64)
                                     @ images.flatten(1))
    return model, images


def test_first_layer_basis_finds_the_span_of_the_images():
    model, images = _model_with_rows_in_span(n=3)
    basis = first_layer_basis(model, 1e-8)
    assert basis.shape == (25, 3)
    torch.testing.assert_close(basis.T @ basis, torch.eye(3, dtype=torch.float64))
    flat = images.flatten(1)
    torch.testing.assert_close((flat @ basis) @ basis.T, flat)  # images lie in the span
    with torch.no_grad():  # a generic first layer has full row rank
        model.layers[0].weight.normal_()
    assert first_layer_basis(model, 1e-8).shape == (25, 12)
    model.freeze([0])
    with pytest.raises(ValueError, match="frozen"):
        first_layer_basis(model, 1e-8)


def test_subspace_reconstruction_keeps_candidates_in_the_span():
    model, images = _model_with_rows_in_span(n=3, seed=1)
    basis = first_layer_basis(model, 1e-6)
    res = reconstruct(model, _cfg(n_candidates=4, steps=30, subspace_tol=1e-6, box="paper"),
                      snapshot_steps=(0, 30), progress=False)
    flat = res.x.double().flatten(1)
    torch.testing.assert_close((flat @ basis) @ basis.T, flat)
    torch.testing.assert_close(res.snapshots[0].double().flatten(1) @ basis @ basis.T,
                               res.snapshots[0].double().flatten(1))
    assert not torch.allclose(res.snapshots[0], res.x)  # it moved, inside the span
    free = reconstruct(model, _cfg(n_candidates=4, steps=30, box="paper", subspace_tol=0.0),
                       progress=False)
    off = free.x.double().flatten(1) - (free.x.double().flatten(1) @ basis) @ basis.T
    assert off.norm() > 1e-3  # without the option, candidates leave the span
    with pytest.raises(ValueError, match="subspace_tol"):
        _cfg(subspace_tol=1.5)


def test_balanced_labels():
    assert balanced_labels(4).tolist() == [-1.0, -1.0, 1.0, 1.0]
    assert balanced_labels(5).tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y = balanced_labels(100, torch.float64)
    assert y.dtype == torch.float64 and y.shape == (100,) and y.sum().item() == 0


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "kw",
    [dict(optimizer="rmsprop"), dict(box="nowhere"), dict(dtype="float16"), dict(n_candidates=1),
     dict(lr_x=0.0), dict(alpha=-1.0), dict(init_scale=0.0), dict(lr_lambda=0.0),
     dict(steps=-1), dict(log_every=0)],
)
def test_recon_config_validation(kw):
    with pytest.raises(ValueError):
        ReconConfig(**kw)


def test_recon_config_paper():
    cfg = ReconConfig.paper()
    assert (cfg.optimizer, cfg.box, cfg.lr_lambda, cfg.steps) == ("sgd", "paper", 1e-4, 50_000)
    # the paper's good runs: lambda_min 0.42-0.50, alpha ~20, lr_x 0.03-0.55, init 1e-3..3.5e-2
    assert 0.42 <= cfg.lambda_min <= 0.5 and cfg.alpha == 20.0
    assert 0.03 <= cfg.lr_x <= 0.55 and 1e-3 <= cfg.init_scale <= 3.5e-2
    assert ReconConfig.paper(lr_x=0.3, steps=10).lr_x == 0.3
    assert ReconConfig.paper(steps=10).optimizer == "sgd"
    with pytest.raises(ValueError):
        ReconConfig.paper(box="bad")


# --------------------------------------------------------------------------- reconstruct()


def test_reconstruct_runs_and_decreases_loss(trained):
    model, _, _ = trained
    before = _params(model)
    grads_before = [None if p.grad is None else p.grad.clone() for p in model.parameters()]
    cfg = _cfg(steps=60, optimizer="adam", lr_x=0.01)
    res = reconstruct(model, cfg, snapshot_steps=(0, 30, 60), progress=False)
    assert isinstance(res, ReconResult)
    h = res.history
    assert set(h) == {"step", "loss", "stat", "stat_rel", "lam_pen", "prior", "tv", "tone",
                      "kink"}
    assert h["step"] == list(range(0, 60, 5)) + [59]
    assert all(len(v) == len(h["step"]) for v in h.values())
    # measured: 44.2 -> 24.9, falling at every log
    assert h["loss"][-1] < 0.7 * h["loss"][0]
    assert sum(b < a for a, b in zip(h["loss"], h["loss"][1:])) >= len(h["loss"]) - 2
    theta2 = sum(p.pow(2).sum().item() for p in before)
    assert h["stat_rel"][0] == pytest.approx(h["stat"][0] / theta2)
    assert h["loss"][0] == pytest.approx(h["stat"][0] + h["lam_pen"][0] + h["prior"][0])
    # snapshots at the requested steps, step 0 = the start
    assert sorted(res.snapshots) == [0, 30, 60]
    for snap in res.snapshots.values():
        assert snap.shape == (8, *SHAPE) and snap.device.type == "cpu"
    assert torch.equal(res.snapshots[60], res.x)
    assert not torch.equal(res.snapshots[0], res.x)
    # the multipliers at the same steps: what a selection by multiplier reads at a snapshot
    assert sorted(res.snapshot_lam) == [0, 30, 60]
    assert torch.equal(res.snapshot_lam[60], res.lam)
    assert not torch.equal(res.snapshot_lam[0], res.lam)  # a copy, not the live tensor
    assert res.snapshots[0].std().item() == pytest.approx(0.1, rel=0.3)  # init_scale
    # result layout
    assert res.x.shape == (8, *SHAPE) and res.x.dtype == torch.float64
    assert res.lam.shape == (8,) and res.y.tolist() == balanced_labels(8).tolist()
    assert not res.x.requires_grad and not res.lam.requires_grad
    assert res.step == 60 and res.config == cfg
    # the model is left alone
    for a, b, g in zip(before, model.parameters(), grads_before):
        assert torch.equal(a, b)
        assert (b.grad is None) if g is None else torch.equal(b.grad, g)


def test_reconstruct_is_deterministic_given_seed(trained):
    model, _, _ = trained
    a = reconstruct(model, _cfg(steps=5), progress=False)
    b = reconstruct(model, _cfg(steps=5), progress=False)
    c = reconstruct(model, _cfg(steps=5, seed=1), progress=False)
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)
    assert not torch.allclose(a.x, c.x)


def test_reconstruct_float32(trained):
    model, _, _ = trained
    res = reconstruct(model, _cfg(steps=3, dtype="float32"), progress=False)
    assert res.x.dtype == torch.float32 and res.lam.dtype == torch.float32
    assert next(model.parameters()).dtype == torch.float64  # model not cast in place


def test_reconstruct_steps_zero_returns_start(trained):
    model, _, _ = trained
    x0 = torch.full((8, *SHAPE), 0.25, dtype=torch.float64)
    # (with the subspace on, a start outside the first layer's row space would be projected)
    res = reconstruct(model, _cfg(steps=0, subspace_tol=0.0), x_init=x0, snapshot_steps=(0,),
                      progress=False)
    assert torch.equal(res.x, x0) and torch.equal(res.snapshots[0], x0)
    assert res.history["step"] == []


def test_reconstruct_input_validation(trained):
    model, _, _ = trained
    with pytest.raises(ValueError, match=r"x_init must have shape \(8, 1, 4, 4\)"):
        reconstruct(model, _cfg(), x_init=torch.zeros(8, 16), progress=False)
    with pytest.raises(ValueError, match="x_init"):
        reconstruct(model, _cfg(), x_init=torch.zeros(7, *SHAPE), progress=False)
    with pytest.raises(ValueError, match="mean"):
        reconstruct(model, _cfg(box="valid"), progress=False)
    with pytest.raises(ValueError, match=r"mean must have shape \(1, 1, 4, 4\)"):
        reconstruct(model, _cfg(box="valid"), mean=torch.zeros(1, 16), progress=False)
    with pytest.raises(ValueError, match="lam_init"):
        reconstruct(model, _cfg(), lam_init=torch.ones(7), progress=False)
    with pytest.raises(ValueError, match="-1 and \\+1"):
        reconstruct(model, _cfg(), y=torch.arange(8.0), progress=False)
    with pytest.raises(TypeError, match="from_sequential"):
        reconstruct(torch.nn.Sequential(torch.nn.Linear(16, 1)), _cfg(), progress=False)


@pytest.mark.parametrize("box", ["paper", "valid"])
def test_reconstruct_box_prior(trained, box):
    """The prior logged at step 0 is the box penalty of x_init: [-1, 1] or [-mean, 1 - mean]."""
    model, _, _ = trained
    x0 = torch.zeros(8, *SHAPE, dtype=torch.float64)
    x0[0, 0, 0, 0], x0[1, 0, 1, 1], x0[2, 0, 3, 3] = 1.5, -1.2, 0.7
    mean = torch.zeros(1, *SHAPE, dtype=torch.float64)
    mean[0, 0, 3, 3] = 0.6  # valid box for that pixel: [-0.6, 0.4]
    res = reconstruct(model, _cfg(steps=1, box=box), x_init=x0, mean=mean, progress=False)
    expected = 0.5**2 + 0.2**2 if box == "paper" else 0.5**2 + 1.2**2 + 0.3**2
    assert res.history["prior"][0] == pytest.approx(expected)


def test_reconstruct_diverging_lr_raises(trained):
    model, _, _ = trained
    with pytest.raises(FloatingPointError, match="lower lr_x"):
        reconstruct(model, _cfg(steps=100, optimizer="sgd", lr_x=1.0), progress=False)


# --------------------------------------------------------------------------- checkpoints


def test_checkpoint_resume_equals_straight_run(trained, tmp_path):
    model, _, _ = trained
    snaps = (0, 5, 15)
    straight = reconstruct(model, _cfg(steps=20), snapshot_steps=snaps, progress=False)
    path = tmp_path / "recon.pt"
    half = reconstruct(model, _cfg(steps=10), snapshot_steps=snaps, checkpoint=path,
                       progress=False)
    assert half.step == 10 and path.is_file()
    saved, raw = load_reconstruction(path)
    assert saved.step == 10 and torch.equal(saved.x, half.x) and saved.config == _cfg(steps=10)
    resumed = reconstruct(model, _cfg(steps=20), snapshot_steps=snaps, checkpoint=path,
                          progress=False)
    assert resumed.step == 20
    assert torch.allclose(resumed.x, straight.x, rtol=1e-12, atol=1e-14)
    assert torch.allclose(resumed.lam, straight.lam, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(resumed.x, half.x)  # it did continue
    # history continues: increasing steps, and the straight run's logs are all there
    steps = resumed.history["step"]
    assert all(b > a for a, b in zip(steps, steps[1:])) and steps[-1] == 19
    logged = dict(zip(steps, resumed.history["loss"]))
    for s, loss in zip(straight.history["step"], straight.history["loss"]):
        assert logged[s] == pytest.approx(loss, rel=1e-12)
    assert sorted(resumed.snapshots) == [0, 5, 15]
    for k in snaps:
        assert torch.allclose(resumed.snapshots[k], straight.snapshots[k], rtol=1e-12)
        # the multipliers of the snapshots before the checkpoint come back from the file
        assert torch.allclose(resumed.snapshot_lam[k], straight.snapshot_lam[k], rtol=1e-12)
    again = load_reconstruction(path)[0]
    assert again.step == 20 and sorted(again.snapshot_lam) == [0, 5, 15]
    # a file written before multipliers were kept with the snapshots reads with none
    del raw["snapshot_lam"]
    torch.save(raw, tmp_path / "old.pt")
    assert load_reconstruction(tmp_path / "old.pt")[0].snapshot_lam == {}


def test_checkpoint_resume_is_exact_in_bfloat16_with_a_basis(trained, tmp_path):
    """The row-space coordinates are the run's state and are saved with it: a float32 run with
    bfloat16 products resumes bit for bit."""
    model, _, _ = trained
    cfg = dict(dtype="float32", matmul="bfloat16", optimizer="adam", subspace_tol=1e-6)
    straight = reconstruct(model, _cfg(steps=20, **cfg), progress=False)
    path = tmp_path / "recon.pt"
    reconstruct(model, _cfg(steps=10, **cfg), checkpoint=path, progress=False)
    assert "z" in torch.load(path, weights_only=True)
    resumed = reconstruct(model, _cfg(steps=20, **cfg), checkpoint=path, progress=False)
    assert torch.equal(resumed.x, straight.x) and torch.equal(resumed.lam, straight.lam)


def _interrupt_after(n_steps, monkeypatch, model, config, path):
    """Run ``config`` with a checkpoint at ``path`` after every step and stop it (as a
    KeyboardInterrupt would) after ``n_steps`` steps."""
    real_step, calls = _Run.step, []

    def stop(self):
        if len(calls) == n_steps:
            raise KeyboardInterrupt
        calls.append(1)
        return real_step(self)

    monkeypatch.setattr(_Run, "step", stop)
    with pytest.raises(KeyboardInterrupt):
        reconstruct(model, config, checkpoint=path, checkpoint_every=1, progress=False)
    monkeypatch.setattr(_Run, "step", real_step)


def test_finish_full_takes_the_last_steps_in_full_precision(trained, tmp_path, monkeypatch):
    """``finish_full``: bfloat16 products until the switch, the working precision after it."""
    model, _, _ = trained
    cfg = dict(dtype="float32", optimizer="adam", subspace_tol=1e-6, log_every=1, steps=20)
    bf = reconstruct(model, _cfg(matmul="bfloat16", **cfg), progress=False)
    full = reconstruct(model, _cfg(matmul="full", **cfg), progress=False)
    assert torch.equal(reconstruct(model, _cfg(matmul="bfloat16", finish_full=1.0, **cfg),
                                   progress=False).x, full.x)
    assert torch.equal(reconstruct(model, _cfg(matmul="bfloat16", finish_full=0.0, **cfg),
                                   progress=False).x, bf.x)
    mixed = reconstruct(model, _cfg(matmul="bfloat16", finish_full=0.25, **cfg), progress=False)
    # steps 0-14 are the bfloat16 run's; step 15 starts from the same point but multiplies in
    # float32, so its loss (of that same point) differs from the bfloat16 run's
    assert mixed.history["loss"][:15] == bf.history["loss"][:15]
    assert mixed.history["loss"][15] != bf.history["loss"][15]
    assert not torch.equal(mixed.x, bf.x) and not torch.equal(mixed.x, full.x)
    # interrupted after the switch, the run resumes in full precision, bit for bit
    path = tmp_path / "recon.pt"
    _interrupt_after(17, monkeypatch, model, _cfg(matmul="bfloat16", finish_full=0.25, **cfg),
                     path)
    assert load_reconstruction(path)[0].step == 17
    resumed = reconstruct(model, _cfg(matmul="bfloat16", finish_full=0.25, **cfg),
                          checkpoint=path, progress=False)
    assert torch.equal(resumed.x, mixed.x) and torch.equal(resumed.lam, mixed.lam)
    with pytest.raises(ValueError, match="finish_full is a share of the steps"):
        ReconConfig(finish_full=1.5)


def test_refine_widens_the_row_space_for_the_last_steps(trained, tmp_path, monkeypatch):
    """``refine_share``: the candidates stay in the narrow row space until the switch, then
    move in the wide one from the same pixels with the optimiser's state kept; a run
    interrupted after the switch resumes bit for bit."""
    model, _, _ = trained
    narrow, wide = first_layer_basis(model, 0.3), first_layer_basis(model, 1e-6)
    assert narrow.shape[1] < wide.shape[1]

    def off(x, basis):  # how far the candidates lie outside a basis's span
        v = x.double().flatten(1)
        return (v - (v @ basis) @ basis.T).norm().item()

    cfg = dict(optimizer="adam", subspace_tol=0.3, log_every=1, steps=20)
    plain = reconstruct(model, _cfg(**cfg), snapshot_steps=(15,), progress=False)
    refined = reconstruct(model, _cfg(refine_share=0.25, refine_tol=1e-6, **cfg),
                          snapshot_steps=(15,), progress=False)
    # the first 15 steps are the narrow run's, to the bit; then the candidates leave its span
    assert refined.history["loss"][:15] == plain.history["loss"][:15]
    assert torch.equal(refined.snapshots[15], plain.snapshots[15])
    assert off(plain.x, narrow) < 1e-10 and off(refined.x, narrow) > 1e-4
    assert off(refined.x, wide) < 1e-10
    # widening does not blow up the step: the last five steps move the candidates about as
    # far as the narrow run's last five (measured: 1.1 times; 1.3 with Adam restarted)
    jump = (refined.x - refined.snapshots[15]).norm() / 5
    assert jump < 3 * (plain.x - plain.snapshots[15]).norm() / 5
    path = tmp_path / "recon.pt"
    _interrupt_after(17, monkeypatch, model, _cfg(refine_share=0.25, refine_tol=1e-6, **cfg),
                     path)
    resumed = reconstruct(model, _cfg(refine_share=0.25, refine_tol=1e-6, **cfg),
                          checkpoint=path, progress=False)
    assert torch.equal(resumed.x, refined.x) and torch.equal(resumed.lam, refined.lam)
    # one Adam trajectory, not a restart at the switch: the candidates' optimiser has taken
    # all 20 steps (a restart would have counted 5)
    adam_x = torch.load(path, weights_only=True)["optimizers"][0]["state"][0]
    assert int(adam_x["step"]) == 20
    with pytest.raises(ValueError, match="refine_tol"):
        ReconConfig(subspace_tol=1e-3, refine_share=0.5, refine_tol=1e-2)
    with pytest.raises(ValueError, match="refine_share"):
        ReconConfig(refine_share=2.0)
    with pytest.raises(ValueError, match="subspace_tol above refine_tol"):
        ReconConfig(subspace_tol=0.0, refine_share=0.5)  # no row space to widen


def test_stop_at_runs_in_chunks_with_the_schedule_of_the_whole_run(trained, tmp_path):
    """``stop_at``: a run in chunks, each resumed from the checkpoint, is the run in one go,
    schedule included (the switches are shares of ``config.steps``). Shortening
    ``config.steps`` per chunk instead moves them into every chunk: a different run."""
    model, _, _ = trained
    cfg = _cfg(optimizer="adam", subspace_tol=0.3, log_every=1, steps=20, matmul="bfloat16",
               dtype="float32", refine_share=0.5, refine_tol=1e-6, finish_full=0.25)
    one = reconstruct(model, cfg, progress=False)
    path = tmp_path / "chunks.pt"
    for b in (4, 8, 12, 16, 20):
        res = reconstruct(model, cfg, stop_at=b, checkpoint=path, progress=False)
        assert res.step == b and load_reconstruction(path)[0].step == b
    assert torch.equal(res.x, one.x) and torch.equal(res.lam, one.lam)
    assert res.history["loss"] == one.history["loss"]
    # the same chunks made by shortening the config: each chunk refines early
    path2 = tmp_path / "shortened.pt"
    for b in (4, 8, 12, 16, 20):
        short = reconstruct(model, dataclasses.replace(cfg, steps=b), checkpoint=path2,
                            progress=False)
    assert not torch.equal(short.x, one.x)
    # past the end, stop_at is the end
    assert reconstruct(model, cfg, stop_at=99, checkpoint=path, progress=False).step == 20
    with pytest.raises(ValueError, match="stop_at"):
        reconstruct(model, cfg, stop_at=-1, progress=False)


def test_checkpoint_resume_refuses_other_config_or_weights(trained, tmp_path):
    model, _, _ = trained
    path = tmp_path / "recon.pt"
    reconstruct(model, _cfg(steps=4), checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="another config or other weights"):
        reconstruct(model, _cfg(steps=8, lr_x=0.02), checkpoint=path, progress=False)
    other = MLP(SHAPE, (16, 8), init_scale=None).double()
    other.load_state_dict(model.state_dict())
    with torch.no_grad():
        other.layers[1].weight[0, 0] += 1e-6
    with pytest.raises(ValueError, match="another config or other weights"):
        reconstruct(other, _cfg(steps=8), checkpoint=path, progress=False)
    # same config and weights: fine
    assert reconstruct(model, _cfg(steps=8), checkpoint=path, progress=False).step == 8


def test_load_reconstruction_rejects_garbage(trained, tmp_path):
    model, _, _ = trained
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a torch file" * 50)
    with pytest.raises(ValueError, match="not a readable reconstruction file"):
        load_reconstruction(garbage)
    with pytest.raises(ValueError):
        reconstruct(model, _cfg(steps=2), checkpoint=garbage, progress=False)
    foreign = tmp_path / "foreign.pt"
    torch.save({"a": 1}, foreign)
    with pytest.raises(ValueError, match="not a recon reconstruction file"):
        load_reconstruction(foreign)
    with pytest.raises(FileNotFoundError):
        load_reconstruction(tmp_path / "missing.pt")


# --------------------------------------------------------------------------- positive controls


def test_stat_rel_at_true_points_equals_kkt_unexplained(trained):
    """Cross-check of the two modules' conventions: starting at the training set with
    lambda = m * lam (kkt_diagnostic, same alpha), the logged stationarity fraction is the
    diagnostic's unexplained fraction."""
    model, x, y = trained
    cfg = _cfg(steps=1, lambda_min=0.0)
    d = kkt_diagnostic(model, x, y, alpha=cfg.alpha)
    res = reconstruct(model, cfg, x_init=x, lam_init=len(x) * d.lam, y=y, progress=False)
    assert res.history["stat_rel"][0] == pytest.approx(d.unexplained, rel=1e-8, abs=1e-14)
    # and the true set explains theta better than a random start does (measured: 0.32 vs 0.93;
    # this briefly trained net is far from a KKT point)
    rand = reconstruct(model, cfg, progress=False)
    assert d.unexplained < 0.5 * rand.history["stat_rel"][0]


def _hand_kkt_point(n: int = 6, r: float = 0.9, c: float = 0.2):
    """A bias-free n-n-1 MLP at an exact KKT point of margin maximisation, data in [-1, 1].

    x_j = r (e_j - c 1) (pairwise obtuse). Neuron j has weights w x_j / |x_j| (active on x_j
    only) and output weight y_j w; with w^2 |x_j| = 1 every margin is 1 and
    theta = sum_j lam_j y_j grad Phi(x_j) with lam_j = 1 / |x_j|.
    """
    x = r * (torch.eye(n, dtype=torch.float64) - c)
    y = balanced_labels(n, torch.float64)
    norm = x.norm(dim=1)
    w = 1 / norm[0].sqrt()
    model = MLP((n,), (n,), init_scale=None, first_bias=False).double()
    with torch.no_grad():
        model.layers[0].weight.copy_(w * x / norm[:, None])
        model.layers[1].weight.copy_((y * w)[None, :])
    return model, x, y


def test_positive_control_true_set_is_a_fixed_point():
    model, x, y = _hand_kkt_point()
    d = kkt_diagnostic(model, x, y)
    assert d.unexplained < 1e-14
    assert torch.allclose(d.margin, torch.ones(6, dtype=torch.float64))
    m = len(x)
    cfg = ReconConfig.paper(n_candidates=m, steps=100, lambda_min=0.01, alpha=200.0,
                            dtype="float64", log_every=10)
    res = reconstruct(model, cfg, x_init=x, lam_init=m * d.lam, y=y, progress=False)
    assert max(res.history["stat_rel"]) < 1e-12
    assert (res.x - x).abs().max().item() < 1e-10
    assert torch.allclose(res.lam, m * d.lam, rtol=1e-10)


def test_positive_control_recovers_true_set_from_perturbed_start():
    """Starting 0.3 (L2) away from the training set, the reconstruction walks back to it.
    Measured (SGD, lr_x 0.1, 300 steps): stat_rel 1.3e-2 -> 2e-16, ||x - x_true|| 0.30 ->
    1.5e-4, lambda stays at m / |x_j|."""
    model, x, y = _hand_kkt_point()
    m = len(x)
    lam_true = m * kkt_diagnostic(model, x, y).lam
    g = torch.Generator().manual_seed(0)
    x_start = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    cfg = ReconConfig(n_candidates=m, steps=300, lr_x=0.1, lr_lambda=1e-3, optimizer="sgd",
                      box="paper", lambda_min=0.01, alpha=200.0, dtype="float64", log_every=30)
    res = reconstruct(model, cfg, x_init=x_start, lam_init=lam_true, y=y, progress=False)
    h = res.history["stat_rel"]
    assert h[0] > 1e-3 and h[-1] < 1e-10
    assert (res.x - x).norm().item() < 0.01 * (x_start - x).norm().item()
    assert torch.allclose(res.lam, lam_true, rtol=1e-2)


def test_box_none_leaves_the_candidates_unconstrained():
    cfg = ReconConfig(box="none")
    lo, hi = _box(cfg, None, torch.zeros(2, 3))
    assert lo == -float("inf") and hi == float("inf")
