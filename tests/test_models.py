"""Tests for recon.models: the homogeneous ReLU MLP, its soft-backward ReLU, model checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from recon.models import MLP, UnsupportedModelError, check_supported, relu_soft_backward


def _randomize(module: nn.Module, seed: int = 0) -> None:
    """Fill every parameter with N(0, 1) draws in the parameter's own dtype."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype))


def _sequential(hidden_bias: bool = False, n_out: int = 1, act=nn.ReLU) -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(12, 7),
        act(),
        nn.Linear(7, 5, bias=hidden_bias),
        act(),
        nn.Linear(5, n_out, bias=False),
    )


# --------------------------------------------------------------------------- structure


def test_bias_only_in_first_layer_and_depth():
    model = MLP((1, 4, 4), widths=(9, 7, 5))
    assert model.depth == 4
    assert [layer.bias is not None for layer in model.layers] == [True, False, False, False]
    assert [(la.in_features, la.out_features) for la in model.layers] == [
        (16, 9), (9, 7), (7, 5), (5, 1)
    ]
    no_bias = MLP((3,), widths=(4,), first_bias=False)
    assert all(layer.bias is None for layer in no_bias.layers)


def test_output_shape_and_input_layouts():
    torch.manual_seed(0)
    model = MLP((2, 3, 3), widths=(8, 6))
    x = torch.randn(5, 2, 3, 3)
    out = model(x)
    assert out.shape == (5,)
    # the flat (m, D) layout gives the same logits as (m, C, H, W)
    assert torch.equal(model(x.reshape(5, -1)), out)
    assert model(x[:1]).shape == (1,)


def test_first_layer_init_scale():
    torch.manual_seed(0)
    model = MLP((200,), widths=(400, 30), init_scale=1e-2)
    w0, b0 = model.layers[0].weight, model.layers[0].bias
    assert w0.std().item() == pytest.approx(1e-2, rel=0.02)  # 80,000 draws
    assert abs(w0.mean().item()) < 1e-4
    assert b0.std().item() == pytest.approx(1e-2, rel=0.15)  # 400 draws
    # deeper layers keep PyTorch's default init (uniform, bound 1/sqrt(fan_in)) unless asked
    w1 = model.layers[1].weight
    assert w1.abs().max().item() <= 1 / 400**0.5
    assert w1.std().item() > 0.5 / (3 * 400) ** 0.5
    deep = MLP((200,), widths=(400, 30), init_scale=1e-2, deep_init_scale=0.5)
    assert deep.layers[1].weight.std().item() == pytest.approx(0.5, rel=0.05)
    assert deep.layers[2].weight.std().item() == pytest.approx(0.5, rel=0.5)  # 30 draws


def test_init_scale_is_what_makes_first_layer_small():
    torch.manual_seed(0)
    small = MLP((50,), widths=(100,), init_scale=1e-4)
    big = MLP((50,), widths=(100,), init_scale=1.0)
    ratio = big.layers[0].weight.std() / small.layers[0].weight.std()
    assert ratio.item() == pytest.approx(1e4, rel=0.05)


def test_arch_rebuilds_same_module():
    torch.manual_seed(0)
    model = MLP((1, 5, 5), widths=(11, 3), first_bias=True).double()
    arch = model.arch()
    assert arch == {"input_shape": [1, 5, 5], "widths": [11, 3], "first_bias": True,
                    "frozen": [], "n_outputs": 1}
    clone = MLP(arch["input_shape"], arch["widths"], init_scale=None,
                first_bias=arch["first_bias"]).double()
    clone.load_state_dict(model.state_dict())  # strict: same parameter names and shapes
    x = torch.randn(4, 1, 5, 5, dtype=torch.float64)
    assert torch.equal(clone(x), model(x))


@pytest.mark.parametrize("widths", [(), (4, 0), (-1,)])
def test_bad_widths_raise(widths):
    with pytest.raises(ValueError, match="widths"):
        MLP((3,), widths=widths)


# --------------------------------------------------------------------------- homogeneity


@pytest.mark.parametrize("widths", [(6,), (6, 5), (6, 5, 4)])
@pytest.mark.parametrize("c", [0.3, 2.5])
def test_positive_homogeneity_in_parameters(widths, c):
    torch.manual_seed(1)
    model = MLP((3, 2, 2), widths=widths, init_scale=1.0).double()
    x = torch.randn(10, 3, 2, 2, dtype=torch.float64)
    before = model(x)
    with torch.no_grad():
        for p in model.parameters():  # all parameters, the first-layer bias included
            p.mul_(c)
    after = model(x)
    assert torch.allclose(after, c ** model.depth * before, rtol=1e-12, atol=1e-14)
    assert model.depth == len(widths) + 1


def test_homogeneity_fails_with_a_hidden_bias():
    """Control: the homogeneity check above would catch a bias outside the first layer."""
    torch.manual_seed(1)
    model = MLP((3,), widths=(6, 5), init_scale=1.0).double()
    model.layers[1].bias = nn.Parameter(torch.randn(5, dtype=torch.float64))
    x = torch.randn(10, 3, dtype=torch.float64)
    before = model(x)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    assert not torch.allclose(model(x), 2.0**3 * before)


# --------------------------------------------------------------------------- soft ReLU


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", [1.0, 20.0, 150.0])
def test_relu_soft_backward_forward_is_relu(dtype, alpha):
    z = torch.linspace(-3, 3, 2001, dtype=dtype)
    out = relu_soft_backward(z, alpha)
    assert out.shape == z.shape and out.dtype == dtype
    # exact zero on the negative side; elsewhere equal up to the rounding of relu + softplus
    assert torch.all(out[z <= 0] == 0)
    bound = 2 * torch.finfo(dtype).eps * (torch.relu(z) + torch.nn.functional.softplus(alpha * z)
                                          / alpha)
    assert torch.all((out - torch.relu(z)).abs() <= bound)
    # a wrong forward (e.g. the smooth softplus itself) is far outside that bound
    assert not torch.all((torch.nn.functional.softplus(alpha * z) / alpha - torch.relu(z)).abs()
                         <= bound)


def test_relu_soft_backward_forward_is_bit_exact():
    torch.manual_seed(0)
    z = torch.randn(10_000) * 3
    assert torch.equal(relu_soft_backward(z, 20.0), torch.relu(z))


@pytest.mark.parametrize("alpha", [0.5, 20.0, 150.0])
def test_relu_soft_backward_first_and_second_derivative(alpha):
    # keep |alpha z| below softplus's linear-threshold (20) so the formulas hold exactly
    z = torch.linspace(-19.0 / alpha, 19.0 / alpha, 401, dtype=torch.float64)
    z.requires_grad_(True)
    out = relu_soft_backward(z, alpha)
    (d1,) = torch.autograd.grad(out.sum(), z, create_graph=True)
    s = torch.sigmoid(alpha * z.detach())
    assert torch.allclose(d1, s, rtol=1e-12, atol=1e-14)
    (d2,) = torch.autograd.grad(d1.sum(), z)
    assert torch.allclose(d2, alpha * s * (1 - s), rtol=1e-10, atol=1e-12)


def test_relu_soft_backward_derivative_far_from_zero():
    """Outside softplus's threshold the gate is still ~sigmoid (0 or 1)."""
    alpha = 100.0
    z = torch.tensor([-5.0, -1.0, 1.0, 5.0], dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(relu_soft_backward(z, alpha).sum(), z)
    assert torch.allclose(d1, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64),
                          atol=1e-12)


def test_relu_soft_backward_alpha_none_is_exact_relu():
    z = torch.tensor([-2.0, -0.1, 0.3, 4.0], requires_grad=True)
    out = relu_soft_backward(z, None)
    assert torch.equal(out, torch.relu(z))
    (d1,) = torch.autograd.grad(out.sum(), z)
    assert torch.equal(d1, torch.tensor([0.0, 0.0, 1.0, 1.0]))


def test_model_alpha_changes_gradient_not_value():
    torch.manual_seed(0)
    model = MLP((4,), widths=(8, 8), init_scale=1.0).double()
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    exact, soft = model(x), model(x, alpha=5.0)
    assert torch.allclose(exact, soft, rtol=1e-13, atol=1e-13)
    (g_exact,) = torch.autograd.grad(exact.sum(), x)
    (g_soft,) = torch.autograd.grad(soft.sum(), x)
    assert not torch.allclose(g_exact, g_soft)  # alpha=5 is a visibly soft gate


# --------------------------------------------------------------------------- conversions


def test_from_sequential_float32_identical_outputs():
    seq = _sequential()
    _randomize(seq)
    model = MLP.from_sequential(seq, (3, 2, 2))
    assert check_supported(model) is model
    assert model.widths == (7, 5) and model.first_bias and model.depth == 3
    x = torch.randn(9, 3, 2, 2)
    assert torch.allclose(model(x), seq(x).squeeze(-1), rtol=1e-6, atol=1e-7)
    assert torch.equal(model.layers[1].weight, seq[3].weight)


def test_from_sequential_keeps_float64_weights():
    seq = _sequential().double()
    _randomize(seq)  # float64 values that float32 cannot represent
    model = MLP.from_sequential(seq, (12,))
    assert model.layers[0].weight.dtype == torch.float64
    assert torch.equal(model.layers[0].weight, seq[1].weight)
    x = torch.randn(9, 12, dtype=torch.float64)
    assert torch.allclose(model(x), seq(x).squeeze(-1), rtol=1e-13, atol=1e-13)


def test_from_sequential_without_flatten_and_without_bias():
    seq = nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 1, bias=False))
    model = MLP.from_sequential(seq, (4,))
    assert not model.first_bias
    x = torch.randn(5, 4)
    assert torch.allclose(model(x), seq(x).squeeze(-1))


def test_from_sequential_with_several_outputs_is_a_multiclass_mlp():
    seq = _sequential(n_out=3)
    model = MLP.from_sequential(seq, (3, 2, 2))
    assert model.n_outputs == 3 and model.multiclass
    x = torch.randn(5, 3, 2, 2)
    assert torch.allclose(model(x), seq(x))


@pytest.mark.parametrize(
    ("seq", "words"),
    [
        (_sequential(hidden_bias=True), ["bias", "homogeneous"]),
        (_sequential(act=nn.Tanh), ["Tanh", "ReLU"]),
        (nn.Sequential(nn.Conv2d(3, 2, 2), nn.ReLU(), nn.Flatten(), nn.Linear(2, 1, bias=False)),
         ["Conv2d", "Linear"]),
        # ends in an activation
        (nn.Sequential(nn.Linear(12, 4), nn.ReLU()), ["expected", "got Linear, ReLU"]),
    ],
    ids=["hidden-bias", "tanh", "conv", "trailing-relu"],
)
def test_from_sequential_rejects_unsupported(seq, words):
    with pytest.raises(UnsupportedModelError) as info:
        MLP.from_sequential(seq, (3, 2, 2))
    for word in words:
        assert word in str(info.value)


def test_from_sequential_input_shape_mismatch():
    with pytest.raises(UnsupportedModelError, match="input_shape"):
        MLP.from_sequential(_sequential(), (1, 28, 28))


def test_unsupported_model_error_is_a_type_error():
    assert issubclass(UnsupportedModelError, TypeError)


def test_check_supported_rejects_sequential_and_points_to_converter():
    with pytest.raises(UnsupportedModelError, match="from_sequential"):
        check_supported(_sequential())


def test_check_supported_rejects_other_modules():
    with pytest.raises(UnsupportedModelError, match="MLP"):
        check_supported(nn.Linear(3, 1))


def test_check_supported_rejects_modified_mlp():
    model = MLP((3,), widths=(4, 4))
    model.layers[2] = nn.Linear(4, 1, bias=True)
    with pytest.raises(UnsupportedModelError, match="bias"):
        check_supported(model)
    model = MLP((3,), widths=(4, 4))
    model.layers[2] = nn.Linear(4, 3, bias=False)
    with pytest.raises(UnsupportedModelError, match="declares n_outputs = 1"):
        check_supported(model)


# --------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("shape", [(5, 1, 4, 5), (5, 2, 4, 4), (5, 15), (5, 4, 4), (5, 1, 16)])
def test_wrong_trailing_dims_raise_with_expected_shape(shape):
    model = MLP((1, 4, 4), widths=(3,))
    with pytest.raises(ValueError, match=r"\(m, 1, 4, 4\)") as info:
        model(torch.zeros(shape))
    assert str(tuple(shape)) in str(info.value)


def test_one_dimensional_input_raises_and_suggests_unsqueeze():
    model = MLP((6,), widths=(3,))
    with pytest.raises(ValueError, match=r"\(m, 6\)") as info:
        model(torch.zeros(6))
    assert "unsqueeze" in str(info.value)
    assert model(torch.zeros(6).unsqueeze(0)).shape == (1,)


def test_a_bias_in_every_layer_converts_and_round_trips():
    seq = nn.Sequential(nn.Flatten(), nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 5), nn.ReLU(),
                        nn.Linear(5, 2))  # PyTorch's default: a bias everywhere
    model = MLP.from_sequential(seq, (3, 2, 2))
    assert model.all_biases and model.arch()["all_biases"] is True
    x = torch.randn(4, 3, 2, 2)
    assert torch.allclose(model(x), seq(x))
    again = MLP.from_arch(model.arch())
    again.load_state_dict(model.state_dict())
    assert torch.allclose(again(x), seq(x)) and check_supported(again) is again
    with pytest.raises(ValueError, match="the first included"):
        MLP((3,), widths=(4,), first_bias=False, all_biases=True)
