"""Tests for recon.stationarity (the hand-derived loss and gradient) and recon.hardware, and for
the reconstruction loop that uses them: same trajectory as the projected pixel-space path."""

from __future__ import annotations

import pytest
import torch

from recon.hardware import PRECISIONS, bf16_fast, keep_freed_memory, resolve_precision
from recon.models import MLP
from recon.reconstruct import (
    ReconConfig,
    _box,
    balanced_labels,
    first_layer_basis,
    kkt_loss_terms,
    reconstruct,
    stationarity_loss,
)
from recon.stationarity import Stationarity

F64 = torch.float64


def _low_rank_model(d=12, widths=(7, 5), rank=4, seed=0, **kw):
    """An MLP whose first layer has rank ``rank`` (as after training with weight decay)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = MLP((d,), widths, init_scale=1.0, **kw).double()
    with torch.no_grad():
        w = torch.randn(widths[0], rank, generator=g, dtype=F64)
        model.layers[0].weight.copy_(w @ torch.randn(rank, d, generator=g, dtype=F64) / 2)
    return model


def _autograd(model, x, lam, y, alpha):
    """L_stat and its gradients by double backward (the library's reference)."""
    for p in model.theta():
        p.requires_grad_(True)
    x = x.clone().requires_grad_(True)
    lam = lam.clone().requires_grad_(True)
    loss = stationarity_loss(model, x, lam, y, alpha)
    gx, gl = torch.autograd.grad(loss, [x, lam])
    return loss.detach(), gx, gl


CASES = [
    # widths, frozen, alpha, first_bias
    ((7, 5), (), 10.0, True),
    ((7, 5), (), None, True),
    ((9,), (), 3.0, True),
    ((7, 5, 4), (), 7.0, True),
    ((7, 5), (), 10.0, False),
    ((7, 5), (0,), 10.0, True),
    ((7, 5), (1,), 10.0, True),
    ((7, 5, 4), (0, 2), 4.0, True),
]


@pytest.mark.parametrize("widths,frozen,alpha,bias", CASES)
def test_value_and_gradients_equal_double_backward(widths, frozen, alpha, bias):
    model = _low_rank_model(widths=widths, frozen=frozen, first_bias=bias)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 12, generator=g, dtype=F64)
    lam = torch.rand(6, generator=g, dtype=F64) * 3
    y = balanced_labels(6, F64)
    want, gx, gl = _autograd(model, x, lam, y, alpha)
    got, gz, gl2 = Stationarity(model, None, alpha=alpha, dtype=F64)(x, lam, y)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(gz, gx, rtol=1e-7, atol=1e-9 * gx.abs().max().item())
    torch.testing.assert_close(gl2, gl, rtol=1e-7, atol=1e-9 * gl.abs().max().item())


@pytest.mark.parametrize("n_outputs", [1, 3])
@pytest.mark.parametrize("alpha", [None, 10.0])
def test_a_bias_in_every_layer_equals_double_backward(alpha, n_outputs):
    model = _low_rank_model(widths=(7, 5), all_biases=True, n_outputs=n_outputs)
    with torch.no_grad():
        for layer in model.layers:
            layer.bias.normal_()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 12, generator=g, dtype=F64)
    lam = torch.rand(6, generator=g, dtype=F64) * 3
    y = balanced_labels(6, F64) if n_outputs == 1 else torch.tensor([0, 1, 2, 0, 1, 2])
    want, gx, gl = _autograd(model, x, lam, y, alpha)
    got, gz, gl2 = Stationarity(model, None, alpha=alpha, dtype=F64)(x, lam, y)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(gz, gx, rtol=1e-7, atol=1e-9 * gx.abs().max().item())
    torch.testing.assert_close(gl2, gl, rtol=1e-7, atol=1e-9 * gl.abs().max().item())


@pytest.mark.parametrize("alpha", [None, 20.0])
def test_row_space_coordinates_equal_the_pixel_loss(alpha):
    """For x = z B^T in the row space of W1: the loss (with the constant ||W1 (I - B B^T)||^2)
    is the pixel-space loss, and dL/dz = (dL/dx) B."""
    model = _low_rank_model()
    basis = first_layer_basis(model, 1e-8)
    assert basis.shape == (12, 4)
    g = torch.Generator().manual_seed(2)
    z = torch.randn(8, 4, generator=g, dtype=F64)
    lam = torch.rand(8, generator=g, dtype=F64) * 2
    y = balanced_labels(8, F64)
    want, gx, gl = _autograd(model, z @ basis.T, lam, y, alpha)
    st = Stationarity(model, basis, alpha=alpha, dtype=F64)
    assert st.weights[0].shape == (7, 4)  # the first layer works on k coordinates
    got, gz, gl2 = st(z, lam, y)
    assert st.const > 0
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    torch.testing.assert_close(gz, gx @ basis, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(gl2, gl, rtol=1e-9, atol=1e-12)
    # lam = 0 explains nothing: the loss is ||theta||^2
    zero, _, _ = st(z, torch.zeros(8, dtype=F64), y)
    assert zero.item() == pytest.approx(st.theta2, rel=1e-12)


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_products_stay_close(half):
    """Products in bfloat16 / float16 with the residual in float32: within half precision of
    the float64 values on a paper-shaped (narrower) network."""
    torch.manual_seed(0)
    model = MLP((3, 8, 8), (64, 64), init_scale=0.05)
    x = torch.rand(40, 3, 8, 8) - 0.5
    lam = torch.rand(40) + 0.5
    y = balanced_labels(40)
    want, gz, gl = Stationarity(model.double(), None, alpha=50.0, dtype=F64)(
        x.double().flatten(1), lam.double(), y.double())
    got, hz, hl = Stationarity(model.float(), None, alpha=50.0, dtype=torch.float32,
                               matmul=half)(x.flatten(1), lam, y)
    assert got.item() == pytest.approx(want.item(), rel=1e-2)
    assert (hz.double() - gz).norm() / gz.norm() < 3e-2
    assert (hl.double() - gl).norm() / gl.norm() < 3e-2
    # and the products really ran in half precision: not equal to the float32 result
    f32, _, _ = Stationarity(model, None, alpha=50.0, dtype=torch.float32)(x.flatten(1), lam, y)
    assert got.item() != f32.item()


def _projected_reference(model, config, mean, steps):
    """The reconstruction as it was written before row-space coordinates: x in pixel space,
    the loss at the projection of x by double backward, the optimiser on x, and x projected
    onto the row space after every step."""
    net = model.double()
    for p in net.theta():
        p.requires_grad_(True)
    basis = first_layer_basis(net, config.subspace_tol)
    gen = torch.Generator().manual_seed(config.seed)
    m, shape = config.n_candidates, (config.n_candidates, *net.input_shape)
    x = torch.randn(shape, generator=gen, dtype=F64) * config.init_scale
    lam = torch.rand(m, generator=gen, dtype=F64).requires_grad_(True)
    y = balanced_labels(m, F64)

    def project(u):
        return ((u.flatten(1) @ basis) @ basis.T).view_as(u)

    x = (project(x) * (x[0].numel() / basis.shape[1]) ** 0.5).requires_grad_(True)
    lo, hi = _box(config, mean, x)
    if config.optimizer == "adam":
        opts = torch.optim.Adam([x], lr=config.lr_x), torch.optim.Adam([lam], lr=config.lr_lambda)
    else:
        opts = (torch.optim.SGD([x], lr=config.lr_x, momentum=0.9),
                torch.optim.SGD([lam], lr=config.lr_lambda, momentum=0.9))
    losses = []
    for _ in range(steps):
        loss = kkt_loss_terms(net, project(x), lam, y, config, lo, hi)["loss"]
        x.grad, lam.grad = torch.autograd.grad(loss, [x, lam])
        for o in opts:
            o.step()
        with torch.no_grad():
            x.copy_(project(x))
        losses.append(loss.item())
    return x.detach(), lam.detach(), losses


@pytest.mark.parametrize("optimizer,box", [("adam", "valid"), ("sgd", "paper")])
def test_coordinates_follow_the_projected_pixel_trajectory(optimizer, box):
    """In float64, optimising the coordinates z (x = z B^T) with the optimiser's update taken
    in pixel space gives the same trajectory as the earlier projected path."""
    model = _low_rank_model(d=16, widths=(10, 6), rank=5)
    mean = torch.full((1, 16), 0.3, dtype=F64)
    cfg = ReconConfig(n_candidates=8, steps=40, lr_x=0.02, lr_lambda=1e-2, init_scale=0.2,
                      alpha=30.0, optimizer=optimizer, box=box, dtype="float64",
                      subspace_tol=1e-6, log_every=1)
    x_ref, lam_ref, losses = _projected_reference(_low_rank_model(d=16, widths=(10, 6), rank=5),
                                                  cfg, mean, cfg.steps)
    res = reconstruct(model, cfg, mean=mean, progress=False)
    assert max(abs(a - b) / b for a, b in zip(res.history["loss"], losses)) < 1e-9
    # Adam divides each pixel's step by its gradient's size, so rounding differences in
    # near-zero components grow to ~1e-9 over 40 steps (measured); a different path would
    # differ by the step size, 1e-2
    torch.testing.assert_close(res.x, x_ref, rtol=0, atol=1e-7)
    torch.testing.assert_close(res.lam, lam_ref, rtol=0, atol=1e-7)
    assert (res.x - res.x.flatten(1) @ first_layer_basis(model, 1e-6) @ first_layer_basis(
        model, 1e-6).T).abs().max() < 1e-12  # still in the span


def test_bfloat16_reconstruction_tracks_float32():
    """The same run with bfloat16 products ends close to the float32 one."""
    model = _low_rank_model(d=16, widths=(32, 16), rank=6).float()
    mean = torch.full((1, 16), 0.3)
    base = dict(n_candidates=8, steps=60, lr_x=0.01, init_scale=0.2, alpha=30.0,
                subspace_tol=1e-6, log_every=10)
    full = reconstruct(model, ReconConfig(**base, matmul="full"), mean=mean, progress=False)
    half = reconstruct(model, ReconConfig(**base, matmul="bfloat16"), mean=mean,
                       progress=False)
    assert not torch.equal(full.x, half.x)
    assert (full.x - half.x).norm() / full.x.norm() < 0.05
    assert half.history["stat_rel"][-1] == pytest.approx(full.history["stat_rel"][-1],
                                                         rel=0.05)


def test_basis_is_computed_once_per_model():
    model = _low_rank_model()
    a = first_layer_basis(model, 1e-8, fingerprint="m1")
    assert first_layer_basis(model, 1e-8, fingerprint="m1") is a
    assert first_layer_basis(model, 1e-6, fingerprint="m1") is not a
    assert first_layer_basis(model, 1e-8) is not a  # no fingerprint: no cache


def test_precision_choice():
    for p in ("full", "bfloat16", "float16"):
        assert resolve_precision(p, "cpu") == p
    assert resolve_precision("auto", "cpu") == ("bfloat16" if bf16_fast("cpu") else "full")
    assert resolve_precision("auto", "cpu", torch.float64) == "full"  # float64 asks for it
    assert resolve_precision("auto", "cpu", "float64") == "full"
    assert set(PRECISIONS) >= {"auto", "full", "bfloat16"}
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="matmul must be one of"):
        ReconConfig(matmul="half")
    assert isinstance(keep_freed_memory(), bool)
    assert keep_freed_memory() == keep_freed_memory()  # idempotent


# --------------------------------------------------------------------------- free gates


def _free_gate_reference(model, x, lam, y, alpha, band_eps, gates, shape="band"):
    """L_stat with the first layer's gates free on the band (or with the smooth weight),
    written out per layer with autograd (an independent check of the closed form): the
    paper's network, one output."""
    W1, W2, w3 = (layer.weight for layer in model.layers)
    b1 = model.layers[0].bias
    x = x.clone().requires_grad_(True)
    lam = lam.clone().requires_grad_(True)
    G = gates.clone().requires_grad_(True)

    def surrogate(h, g):  # forward: relu(h); derivative in h: the gate g
        return torch.relu(h).detach() + g * (h - h.detach())

    h1 = x @ W1.T + b1
    soft = torch.sigmoid(alpha * h1)
    w = ((h1.abs() < band_eps).to(h1) if shape == "band"
         else torch.exp(-(h1 / band_eps) ** 2))  # autograd differentiates the smooth weight
    w = w.masked_fill(w.detach() < 1e-2, 0)  # a gate with weight under 1e-2 is not free
    band = w.detach() > 0
    g1 = soft + w * (torch.where(band, G, soft.detach()) - soft)  # G: in [0, 1] already
    a1 = surrogate(h1, g1)
    h2 = a1 @ W2.T
    g2 = torch.sigmoid(alpha * h2)
    a2 = surrogate(h2, g2)
    d2 = g2 * w3  # dPhi/dh2, per candidate
    d1 = (d2 @ W2) * g1  # dPhi/dh1
    c = (lam * y / len(x))[:, None]
    loss = ((w3 - (c * a2).sum(0)).pow(2).sum() + (W2 - (c * d2).T @ a1).pow(2).sum()
            + (W1 - (c * d1).T @ x).pow(2).sum() + (b1 - (c * d1).sum(0)).pow(2).sum())
    gx, gl, gg = torch.autograd.grad(loss, [x, lam, G])
    return loss.detach(), gx, gl, gg, band


@pytest.mark.parametrize("shape", ["band", "smooth"])
def test_free_gates_equal_the_reference_and_leave_other_entries_alone(shape):
    model = _low_rank_model()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(6, 12, generator=g, dtype=F64)
    lam = torch.rand(6, generator=g, dtype=F64) * 3
    y = balanced_labels(6, F64)
    eps = 0.4  # wide, so that a good share of the (6, 7) first-layer entries is in the band
    gates = torch.rand(6, 7, generator=g, dtype=F64) * 1.4 - 0.2  # some outside [0, 1]
    # the reference at the clamped gates: the library clamps them in place, and its gradient
    # is the one at the clamped value (a projected step)
    want, gx, gl, gg, band = _free_gate_reference(model, x, lam, y, 10.0, eps,
                                                  gates.clamp(0, 1), shape)
    assert 5 <= int(band.sum()) <= 37  # both kinds of entry are tested
    mine = gates.clone()
    got, gz, gl2, gg2 = Stationarity(model, None, alpha=10.0, free_band=eps, dtype=F64,
                                     free_shape=shape)(x, lam, y, mine)
    assert got.item() == pytest.approx(want.item(), rel=1e-10)
    for a, b in ((gz, gx), (gl2, gl), (gg2, gg)):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9 * b.abs().max().item())
    # in the band the gates are clamped into [0, 1]; outside, set to the soft gate used there
    h1 = x @ model.layers[0].weight.T + model.layers[0].bias
    torch.testing.assert_close(mine[band], gates[band].clamp(0, 1))
    torch.testing.assert_close(mine[~band], torch.sigmoid(10.0 * h1)[~band])
    # an empty band is the plain loss
    plain = Stationarity(model, None, alpha=10.0, dtype=F64)(x, lam, y)
    tiny = Stationarity(model, None, alpha=10.0, free_band=1e-12, dtype=F64)(
        x, lam, y, gates.clone())
    for a, b in zip(plain, tiny):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not tiny[3].any()
    with pytest.raises(ValueError, match="gates exactly"):
        Stationarity(model, None, alpha=10.0, free_band=eps, dtype=F64)(x, lam, y)
    with pytest.raises(ValueError, match="frozen"):
        Stationarity(_low_rank_model(frozen=(0,)), None, alpha=10.0, free_band=eps)


def test_free_gates_reach_the_bounded_least_squares_fit_at_the_truth_and_resume(
        tmp_path, load_benchmark):
    """Started at a trained model's training set with the exact step and the candidates held
    still, the reconstruction's free gates and multipliers reach the residual of the
    alternating bounded least squares of ``benchmarks/kinks.py`` (an independent solver),
    below the exact step's; and a checkpoint holds the gates."""
    from recon.train import TrainConfig, train

    kinks = load_benchmark("kinks")

    g = torch.Generator().manual_seed(0)
    x = (0.5 * torch.randn(8, 1, 4, 4, generator=g, dtype=F64)).clamp(-1, 1)
    y = balanced_labels(8, F64)
    torch.manual_seed(0)
    model = MLP((1, 4, 4), (16, 8), init_scale=0.3).double()
    train(model, x, y, TrainConfig(widths=(16, 8), init_scale=0.3, lr=0.2, epochs=3000,
                                   weight_decay=0.01, log_every=1000), progress=False)
    base = dict(n_candidates=8, steps=300, lr_x=1e-12, alpha=1e6, subspace_tol=0.0,
                box="none", lambda_min=0.0, dtype="float64", lr_lambda=0.05, lr_gate=0.05)
    exact = reconstruct(model, ReconConfig(**base), x_init=x, y=y, progress=False)
    free = reconstruct(model, ReconConfig(**base, free_gates=0.1), x_init=x, y=y,
                       progress=False)
    want = kinks.free_gate_residual(model, x, y, 0.1)
    assert want["free_pairs"] > 0
    # measured (float64): exact step 0.056526, free gates 0.054548, the solver 0.054548
    assert free.final()["stat_rel"] == pytest.approx(want["unexplained"], rel=1e-4)
    assert free.final()["stat_rel"] < 0.98 * exact.final()["stat_rel"]
    cfg = dict(base, free_gates=0.1, steps=20)
    straight = reconstruct(model, ReconConfig(**cfg), x_init=x, y=y, progress=False)
    path = tmp_path / "r.pt"
    reconstruct(model, ReconConfig(**{**cfg, "steps": 10}), x_init=x, y=y, checkpoint=path,
                progress=False)
    assert "gates" in torch.load(path, weights_only=True)
    resumed = reconstruct(model, ReconConfig(**cfg), x_init=x, y=y, checkpoint=path,
                          progress=False)
    assert torch.equal(resumed.lam, straight.lam)
