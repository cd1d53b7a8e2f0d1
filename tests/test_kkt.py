"""Tests for recon.kkt: the factorised gradient Gram matrix and the KKT diagnostic."""

from __future__ import annotations

import pytest
import torch

from recon.kkt import KKTDiagnostic, gradient_gram, kkt_diagnostic
from recon.models import MLP
from recon.train import TrainConfig, logistic_loss, train


def _per_sample_gradients(model: MLP, x: torch.Tensor, alpha=None) -> torch.Tensor:
    """``(n, P)``: row i is grad_theta Phi(theta; x_i), by one autograd call per sample."""
    params = list(model.parameters())
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(model(x[i : i + 1], alpha=alpha).sum(), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def _theta(model: MLP) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


# --------------------------------------------------------------------------- gradient_gram


@pytest.mark.parametrize("first_bias", [True, False])
@pytest.mark.parametrize("widths", [(7,), (7, 5), (6, 5, 4)])
def test_gradient_gram_matches_explicit_per_sample_gradients(widths, first_bias):
    torch.manual_seed(0)
    model = MLP((2, 3), widths=widths, init_scale=1.0, first_bias=first_bias).double()
    x = torch.randn(9, 2, 3, dtype=torch.float64)
    y = torch.tensor([1, -1, 1, 1, -1, -1, 1, -1, 1], dtype=torch.float64)
    K, b, out = gradient_gram(model, x, y)
    G = _per_sample_gradients(model, x)
    Gy = y[:, None] * G
    assert K.dtype == b.dtype == out.dtype == torch.float64
    assert K.shape == (9, 9) and b.shape == (9,) and out.shape == (9,)
    assert torch.allclose(K, Gy @ Gy.T, rtol=1e-10, atol=1e-12)
    assert torch.allclose(b, Gy @ _theta(model), rtol=1e-10, atol=1e-12)
    assert torch.allclose(out, model(x).detach(), rtol=1e-12, atol=1e-14)
    # Euler's theorem for a degree-L homogeneous function: <theta, grad Phi> = L * Phi
    assert torch.allclose(b, model.depth * y * out, rtol=1e-10, atol=1e-12)


def test_gradient_gram_soft_gate_matches_soft_backward_autograd():
    """With alpha, the Gram matrix is that of the gradients the reconstruction differentiates."""
    torch.manual_seed(1)
    model = MLP((5,), widths=(8, 6), init_scale=1.0).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    y = torch.tensor([1, 1, -1, 1, -1, -1, 1], dtype=torch.float64)
    K, b, out = gradient_gram(model, x, y, alpha=3.0)
    Gy = y[:, None] * _per_sample_gradients(model, x, alpha=3.0)
    # atol 1e-9: beyond alpha * z = 20 softplus turns linear, so autograd's gate is exactly 1
    # where gradient_gram uses sigmoid(alpha z) = 1 - O(1e-9) (measured difference 6e-11)
    assert torch.allclose(K, Gy @ Gy.T, rtol=1e-8, atol=1e-9)
    assert torch.allclose(b, Gy @ _theta(model), rtol=1e-8, atol=1e-9)
    K_exact, _, _ = gradient_gram(model, x, y)
    assert not torch.allclose(K, K_exact, rtol=1e-3)  # a soft gate really is different


def test_gradient_gram_float32_model_gives_float64():
    torch.manual_seed(2)
    model = MLP((1, 2, 2), widths=(5,), init_scale=1.0)
    x, y = torch.randn(4, 1, 2, 2), torch.tensor([1.0, -1.0, 1.0, -1.0])
    K, b, out = gradient_gram(model, x, y)
    ref = model.double()
    Gy = y.double()[:, None] * _per_sample_gradients(ref, x.double())
    assert K.dtype == torch.float64
    assert torch.allclose(K, Gy @ Gy.T, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- a hand-made KKT point


def _hand_kkt_point() -> tuple[MLP, torch.Tensor, torch.Tensor]:
    """A 2-2-1 net without bias at an exact KKT point of margin maximisation.

    Phi(x) = relu(x_1) - relu(-x_1). For x = +e1 (y=+1) and x = -e1 (y=-1) the margins are 1
    and theta = g_1 + g_2 (lambda = 1, 1). A third sample (2, 1), y=+1, has margin 2 and
    its gradient points off theta (its second coordinate), so its multiplier must be 0.
    """
    model = MLP((2,), widths=(2,), init_scale=None, first_bias=False).double()
    with torch.no_grad():
        model.layers[0].weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
        model.layers[1].weight.copy_(torch.tensor([[1.0, -1.0]]))
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [2.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([1.0, -1.0, 1.0], dtype=torch.float64)
    return model, x, y


def test_kkt_diagnostic_at_hand_constructed_kkt_point():
    model, x, y = _hand_kkt_point()
    d = kkt_diagnostic(model, x, y)
    assert isinstance(d, KKTDiagnostic)
    assert torch.allclose(d.lam, torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64), atol=1e-10)
    assert d.unexplained < 1e-20 and d.relative_residual < 1e-10
    assert d.theta_norm2 == pytest.approx(4.0)
    assert torch.allclose(d.margin, torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(d.margin_ratio, torch.tensor([1.0, 1.0, 2.0], dtype=torch.float64))
    assert sorted(d.support.tolist()) == [0, 1]
    summary = d.to_dict()
    assert summary["n_support"] == 2
    assert summary["unexplained"] == d.unexplained and len(summary["lam"]) == 3


def test_kkt_diagnostic_off_kkt_point_reports_residual():
    """Moving the weights off the KKT point leaves a part of theta no multipliers explain."""
    model, x, y = _hand_kkt_point()
    with torch.no_grad():
        model.layers[0].weight[0, 1] = 0.5  # a direction no sample's gradient has here
    d = kkt_diagnostic(model, x, y)
    # lam = (1, 1, 0) leaves exactly the 0.5 in W[0,1] unexplained; NNLS can only do better,
    # but not explain everything (measured: 0.0065 of ||theta||^2 = 4.25)
    assert 1e-3 < d.unexplained <= 0.25 / d.theta_norm2 + 1e-12
    assert d.relative_residual == pytest.approx(d.unexplained**0.5)
    assert torch.all(d.lam >= 0)


def test_kkt_diagnostic_lam_convention_reproduces_theta():
    """theta - sum_i lam_i y_i grad Phi_i has the reported norm (explicit gradients)."""
    torch.manual_seed(3)
    model = MLP((4,), widths=(6, 5), init_scale=1.0).double()
    x = torch.randn(8, 4, dtype=torch.float64)
    y = torch.tensor([1, -1] * 4, dtype=torch.float64)
    d = kkt_diagnostic(model, x, y)
    G = _per_sample_gradients(model, x)
    theta = _theta(model)
    res = theta - (d.lam * y) @ G
    assert res.pow(2).sum().item() / theta.pow(2).sum().item() == pytest.approx(
        d.unexplained, rel=1e-6, abs=1e-12)
    # NNLS optimality: no single multiplier change lowers the residual (KKT of the NNLS)
    grad = -2 * (y[:, None] * G) @ res  # d/dlam ||theta - G^T diag(y) lam||^2
    assert torch.all(grad[d.lam > 0].abs() < 1e-8 * theta.pow(2).sum())
    assert torch.all(grad[d.lam == 0] > -1e-8 * theta.pow(2).sum())


def test_kkt_diagnostic_rejects_bad_labels():
    model, x, _ = _hand_kkt_point()
    with pytest.raises(ValueError, match="-1 or \\+1"):
        kkt_diagnostic(model, x, torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64))


# --------------------------------------------------------------------------- trained networks


def _separable(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = torch.where(x[:, 0] > 0, 1.0, -1.0).double()
    x[:, 0] += 0.5 * y
    return x, y


def test_weight_decay_stationary_point_has_predicted_multipliers():
    """At a stationary point of mean logistic loss + wd/2 ||theta||^2,
    theta = sum_i sigmoid(-margin_i) / (n wd) * y_i grad Phi_i exactly.

    8 points in 8 dimensions (so the n x n Gram matrix is full rank and the multipliers are
    unique). Measured after 1500 epochs: gradient norm 1.2e-7, unexplained 1.1e-12,
    max |lam - prediction| / max prediction 8.9e-9 (predictions 0.026-0.222). Some other seeds
    end with a ReLU kink on a training point where plain GD stalls (gradient norm ~2e-2,
    unexplained ~1e-2): the first assertions check the near-stationarity precondition.
    """
    n, wd = 8, 0.05
    x, y = _separable(n, 8, seed=0)
    torch.manual_seed(0)
    model = MLP((8,), widths=(20,), init_scale=0.5).double()
    config = TrainConfig(widths=(20,), init_scale=0.5, lr=0.2, weight_decay=wd, epochs=1500,
                         log_every=500)
    result = train(model, x, y, config, progress=False)
    assert result.final()["train_error"] == 0.0
    objective = logistic_loss(model, x, y) + wd / 2 * sum(p.pow(2).sum()
                                                          for p in model.parameters())
    grads = torch.autograd.grad(objective, list(model.parameters()))
    assert torch.sqrt(sum(g.pow(2).sum() for g in grads)).item() < 1e-5  # near-stationary

    d = kkt_diagnostic(model, x, y)
    with torch.no_grad():
        margin = y * model(x)
    predicted = torch.sigmoid(-margin) / (n * wd)
    assert torch.allclose(d.margin, margin)
    assert d.unexplained < 1e-8
    assert (d.lam - predicted).abs().max().item() < 1e-4 * predicted.max().item()


def test_no_weight_decay_long_training_reaches_margin_kkt_point():
    """Without weight decay the direction of theta approaches a KKT point of margin
    maximisation: the multipliers concentrate on the samples nearest the margin.

    Data: 12 points in 16-D; 4 of them at distance 1 from the hyperplane x_0 = 0, 8 at
    distance 3-4, other coordinates small noise. Plain GD at a fixed learning rate approaches
    the KKT direction only logarithmically (10^6 epochs in the paper); GD with the step size
    c / loss (normalised GD, the same limit direction; Nacson et al. 2019) gets there in ~500
    steps, until the loss nears float64 underflow. Measured for this seed (548 steps):
    unexplained 6.5e-6, near samples lam / max lam >= 0.52 with margin ratio <= 1.019, far
    samples lam / max lam <= 0.009 with margin ratio >= 1.86 (seeds 0-4: unexplained
    <= 1.2e-4, far lam / max lam <= 0.035, near ratio <= 1.02).
    """
    n, dim, n_near = 12, 16, 4
    g = torch.Generator().manual_seed(0)
    x = 0.2 * torch.randn(n, dim, generator=g, dtype=torch.float64)
    y = torch.ones(n, dtype=torch.float64)
    y[::2] = -1
    dist = 3.0 + torch.rand(n, generator=g, dtype=torch.float64)
    dist[:n_near] = 1.0
    x[:, 0] = y * dist
    torch.manual_seed(0)
    model = MLP((dim,), widths=(20,), init_scale=1e-3).double()
    params = list(model.parameters())
    for _ in range(5000):
        loss = logistic_loss(model, x, y)
        if loss.item() < 1e-200:
            break
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, gr in zip(params, grads):
                p -= 0.01 / loss.item() * gr
    assert loss.item() < 1e-200  # trained far into the separable regime

    d = kkt_diagnostic(model, x, y)
    rel = d.lam / d.lam.max()
    assert d.unexplained < 1e-4
    assert torch.all(rel[:n_near] > 0.2)
    assert torch.all(d.margin_ratio[:n_near] < 1.05)
    assert torch.all(rel[n_near:] < 0.05)
    assert torch.all(d.margin_ratio[n_near:] > 1.5)
    # every sample that carries weight sits on the margin
    assert torch.all(d.margin_ratio[rel > 0.1] < 1.05)


def test_untrained_network_is_far_from_kkt():
    """Control for the two tests above: at initialisation the residual is large."""
    x, y = _separable(8, 8, seed=0)
    torch.manual_seed(0)
    model = MLP((8,), widths=(20,), init_scale=0.5).double()
    assert kkt_diagnostic(model, x, y).unexplained > 0.1


# --------------------------------------------------------------------------- frozen layers


@pytest.mark.parametrize("frozen", [(0,), (1,), (0, 2)])
def test_gradient_gram_with_frozen_layers_uses_the_trained_parameters_only(frozen):
    torch.manual_seed(1)
    model = MLP((4,), widths=(6, 5), init_scale=1.0, frozen=frozen).double()
    x = torch.randn(7, 4, dtype=torch.float64)
    y = torch.tensor([1, -1, 1, 1, -1, -1, 1], dtype=torch.float64)
    K, b, out = gradient_gram(model, x, y)
    rows = []
    for i in range(len(x)):
        grads = torch.autograd.grad(model(x[i : i + 1]).sum(), model.theta())
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    Gy = y[:, None] * torch.stack(rows)
    theta = torch.cat([p.detach().reshape(-1) for p in model.theta()])
    assert torch.allclose(K, Gy @ Gy.T, rtol=1e-10, atol=1e-12)
    assert torch.allclose(b, Gy @ theta, rtol=1e-10, atol=1e-12)
    # Euler's theorem in the trained parameters: degree = number of trained layers
    assert model.degree == 3 - len(frozen)
    assert torch.allclose(b, model.degree * y * out, rtol=1e-10, atol=1e-12)


def test_random_features_trained_with_weight_decay_meet_the_stationarity_equation():
    """A frozen random first layer: training moves the output layer only, and at the
    stationary point the trained parameters are sum_i sigmoid(-q_i)/(n wd) y_i grad Phi_i."""
    n, wd = 10, 1e-2
    x, y = _separable(n, 2, seed=3)
    torch.manual_seed(0)
    model = MLP((2,), widths=(200,), init_scale=1.0, deep_init_scale=0.0, frozen=(0,)).double()
    first = model.layers[0].weight.detach().clone()
    config = TrainConfig(widths=(200,), init_scale=1.0, lr=0.02, weight_decay=wd, epochs=20000,
                         log_every=5000)
    train(model, x, y, config, progress=False)
    assert torch.equal(model.layers[0].weight, first)  # frozen layer untouched
    d = kkt_diagnostic(model, x, y)
    predicted = torch.sigmoid(-d.margin) / (n * wd)
    assert d.unexplained < 1e-6
    assert d.theta_norm2 == pytest.approx(float(model.layers[1].weight.pow(2).sum()))
    # with 200 features and 10 points the multipliers are unique: they must be the prediction
    # (measured: within 0.6% of the largest after 20,000 epochs, still converging)
    assert (d.lam - predicted).abs().max().item() < 2e-2 * predicted.max().item()
    assert d.lam.argmax() == predicted.argmax()


def test_freeze_rejects_bad_layers():
    model = MLP((2,), widths=(3,))
    with pytest.raises(ValueError, match="do not exist"):
        model.freeze([5])
    with pytest.raises(ValueError, match="at least one layer"):
        model.freeze([0, 1])
    assert model.arch()["frozen"] == []
    assert MLP((2,), widths=(3,), frozen=[0]).arch()["frozen"] == [0]


# ------------------------------------------------------------- a bias in every layer


@pytest.mark.parametrize("widths", [(7,), (6, 5)])
def test_gradient_gram_with_a_bias_in_every_layer(widths):
    torch.manual_seed(0)
    model = MLP((5,), widths=widths, init_scale=1.0, all_biases=True).double()
    assert all(layer.bias is not None for layer in model.layers)
    x = torch.randn(8, 5, dtype=torch.float64)
    y = torch.tensor([1, -1, 1, 1, -1, -1, 1, -1], dtype=torch.float64)
    K, b, out = gradient_gram(model, x, y)
    Gy = y[:, None] * _per_sample_gradients(model, x)
    assert torch.allclose(K, Gy @ Gy.T, rtol=1e-10, atol=1e-12)
    assert torch.allclose(b, Gy @ _theta(model), rtol=1e-10, atol=1e-12)
    assert torch.allclose(out, model(x).detach(), rtol=1e-12, atol=1e-14)


def test_weight_decay_stationary_point_with_a_bias_in_every_layer():
    """The network is no longer homogeneous, but a stationary point of the logistic loss with
    weight decay on every parameter still satisfies the equation, with the same multipliers
    (Buzaglo et al., 2023). The precondition (a small gradient) is asserted first."""
    n, wd = 8, 0.05
    x, y = _separable(n, 8, seed=0)
    torch.manual_seed(0)
    model = MLP((8,), widths=(20,), init_scale=0.5, all_biases=True).double()
    config = TrainConfig(widths=(20,), init_scale=0.5, lr=0.2, weight_decay=wd, epochs=1500,
                         log_every=500)
    train(model, x, y, config, progress=False)
    objective = logistic_loss(model, x, y) + wd / 2 * sum(p.pow(2).sum()
                                                          for p in model.parameters())
    grads = torch.autograd.grad(objective, list(model.parameters()))
    assert torch.sqrt(sum(g.pow(2).sum() for g in grads)).item() < 1e-5
    d = kkt_diagnostic(model, x, y)
    with torch.no_grad():
        predicted = torch.sigmoid(-y * model(x)) / (n * wd)
    assert d.unexplained < 1e-8
    assert (d.lam - predicted).abs().max().item() < 1e-4 * predicted.max().item()


@pytest.mark.parametrize("kw", [{}, {"all_biases": True}, {"frozen": (1,)}, {"n_outputs": 3}])
def test_block_residuals_add_up_and_match_explicit_gradients(kw):
    from recon.kkt import block_residuals, stationarity_residual

    torch.manual_seed(0)
    model = MLP((5,), widths=(6, 4), init_scale=1.0, **kw).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    y = (torch.tensor([0, 1, 2, 0, 1, 2, 0]) if model.multiclass
         else torch.tensor([1, -1, 1, 1, -1, -1, 1], dtype=torch.float64))
    lam = torch.rand(7, dtype=torch.float64)
    blocks = block_residuals(model, x, y, lam)
    # by hand: sum_i lam_i * grad of y_i Phi(x_i) (or of the margin), one autograd call
    params = model.theta()
    out = model(x)
    if model.multiclass:
        other = out.detach().masked_fill(torch.nn.functional.one_hot(y, 3).bool(),
                                         float("-inf")).argmax(1)
        terms = out.gather(1, y[:, None]).squeeze(1) - out.gather(1, other[:, None]).squeeze(1)
    else:
        terms = y * out
    grads = torch.autograd.grad((lam * terms).sum(), params)
    theta2 = sum(p.detach().pow(2).sum() for p in params)
    want, k = [], 0
    for i, layer in enumerate(model.layers):
        if i in model.frozen:
            want.append(0.0)
            continue
        n_p = len(list(layer.parameters()))
        want.append(float(sum((p.detach() - g).pow(2).sum()
                              for p, g in zip(params[k:k + n_p], grads[k:k + n_p])) / theta2))
        k += n_p
    assert blocks == pytest.approx(want, rel=1e-10)
    if not model.multiclass:
        assert sum(blocks) == pytest.approx(stationarity_residual(model, x, y, lam), rel=1e-9)
