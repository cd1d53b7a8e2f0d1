"""Tests for recon.toy: 2-D toy data, exact weight-decay multipliers, matching, plots."""

from __future__ import annotations

import math

import matplotlib.pyplot as plt
import pytest
import torch

from recon.kkt import kkt_diagnostic
from recon.models import MLP
from recon.toy import (
    alternating_arcs,
    decision_grid,
    distinct_neurons,
    nearest_same_label,
    plot_candidates,
    plot_decision,
    plot_multipliers,
    stationarity_residual,
    weight_decay_multipliers,
)
from recon.train import logistic_loss


def _model(widths=(6,), seed=0):
    torch.manual_seed(seed)
    return MLP((2,), widths, init_scale=1.0).double()


# ------------------------------------------------------------------------- alternating_arcs


def test_alternating_arcs_shape_labels_and_range():
    x, y = alternating_arcs(n_arcs=4, per_arc=3, radius=0.9, seed=1)
    assert x.shape == (12, 2) and y.shape == (12,)
    assert x.dtype == y.dtype == torch.float64
    assert torch.allclose(x.norm(dim=1), torch.full((12,), 0.9, dtype=torch.float64))
    assert x.abs().max() <= 0.9 + 1e-12
    # arcs of three alternate: + + + - - - + + + - - -
    assert y.tolist() == [1.0] * 3 + [-1.0] * 3 + [1.0] * 3 + [-1.0] * 3
    # points run around the circle in order (angles increase)
    ang = torch.atan2(x[:, 1], x[:, 0]) % (2 * math.pi)
    ang = torch.where(ang < ang[0], ang + 2 * math.pi, ang)
    assert bool((ang[1:] > ang[:-1]).all())


def test_alternating_arcs_is_deterministic_per_seed():
    a, _ = alternating_arcs(seed=3)
    b, _ = alternating_arcs(seed=3)
    c, _ = alternating_arcs(seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("kw", [dict(n_arcs=3), dict(n_arcs=0), dict(per_arc=0),
                                dict(radius=1.5), dict(radius=0.0), dict(jitter=1.0)])
def test_alternating_arcs_rejects_bad_arguments(kw):
    with pytest.raises(ValueError):
        alternating_arcs(**kw)


# ---------------------------------------------------------- multipliers and the residual


def test_weight_decay_multipliers_give_the_gradient_of_the_regularised_loss():
    """grad [loss + wd/2 ||theta||^2] = wd * (theta - sum_i lam_i y_i grad Phi_i), for ANY theta:
    so the residual of the exact multipliers is the squared gradient norm, rescaled."""
    x, y = alternating_arcs(n_arcs=4, per_arc=2, seed=0)
    model, wd = _model(), 0.05
    params = list(model.parameters())
    total = logistic_loss(model, x, y) + wd / 2 * sum(p.pow(2).sum() for p in params)
    grad2 = float(sum(g.pow(2).sum() for g in torch.autograd.grad(total, params)))
    theta2 = float(sum(p.detach().pow(2).sum() for p in params))
    lam, margin = weight_decay_multipliers(model, x, y, wd)
    assert lam.shape == margin.shape == (8,)
    assert torch.allclose(margin, (y * model(x)).detach())
    assert bool((lam > 0).all())
    assert stationarity_residual(model, x, y, lam) == pytest.approx(
        grad2 / (wd**2 * theta2), rel=1e-8)


def test_stationarity_residual_matches_kkt_diagnostic_at_its_multipliers():
    x, y = alternating_arcs(n_arcs=4, per_arc=3, seed=2)
    model = _model((5, 4))
    diag = kkt_diagnostic(model, x, y)
    assert stationarity_residual(model, x, y, diag.lam) == pytest.approx(
        diag.unexplained, rel=1e-6, abs=1e-12)
    # zero multipliers explain nothing
    assert stationarity_residual(model, x, y, torch.zeros(12)) == pytest.approx(1.0)


def test_stationarity_residual_and_multipliers_reject_bad_input():
    x, y = alternating_arcs(n_arcs=2, per_arc=2)
    model = _model()
    with pytest.raises(ValueError, match="lam must have shape"):
        stationarity_residual(model, x, y, torch.ones(3))
    with pytest.raises(ValueError, match="weight_decay"):
        weight_decay_multipliers(model, x, y, 0.0)
    with pytest.raises(ValueError):
        weight_decay_multipliers(model, x, 2 * y, 0.1)  # labels must be +-1


# ----------------------------------------------------------------------------- matching


def test_nearest_same_label_ignores_the_other_class():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    y = torch.tensor([1.0, -1.0])
    cand = torch.tensor([[0.1, 0.0], [0.9, 0.0], [0.0, 0.5]])
    cand_y = torch.tensor([-1.0, 1.0, 1.0])
    dist, idx = nearest_same_label(x, y, cand, cand_y)
    # x_0 (+1): the closest candidate (0.1, 0) is a -1 candidate, so (0, 0.5) wins
    assert idx.tolist() == [2, 0]
    assert torch.allclose(dist, torch.tensor([0.5, 0.9], dtype=torch.float64))


def test_nearest_same_label_without_candidates_of_a_class():
    x = torch.zeros(2, 2)
    dist, idx = nearest_same_label(x, torch.tensor([1.0, -1.0]), torch.ones(1, 2),
                                   torch.tensor([1.0]))
    assert idx.tolist() == [0, -1]
    assert math.isinf(float(dist[1]))


def test_nearest_same_label_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        nearest_same_label(torch.zeros(3, 2), torch.ones(3), torch.zeros(2, 3), torch.ones(2))
    with pytest.raises(ValueError):
        nearest_same_label(torch.zeros(3, 2), torch.ones(2), torch.zeros(2, 2), torch.ones(2))


# ------------------------------------------------------------------------ neuron counting


def test_distinct_neurons_merges_parallel_neurons_and_skips_dead_ones():
    model = MLP((2,), (5,), init_scale=None).double()
    with torch.no_grad():
        w = model.layers[0].weight
        b = model.layers[0].bias
        w[:] = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, -1.0], [1e-6, 0.0]])
        b[:] = torch.tensor([0.5, 1.0, 0.0, 0.0, 0.0])
    # rows 0 and 1 are the same neuron up to scale; rows 2, 3 differ; row 4 is dead
    assert distinct_neurons(model) == 3
    with torch.no_grad():
        model.layers[0].weight.zero_()
        model.layers[0].bias.zero_()
    assert distinct_neurons(model) == 0


# -------------------------------------------------------------------------------- plots


def test_decision_grid_evaluates_the_network():
    model = _model()
    g1, g2, z = decision_grid(model, lim=1.0, steps=5)
    assert g1.shape == g2.shape == z.shape == (5, 5)
    pt = torch.tensor([[g1[1, 3], g2[1, 3]]], dtype=torch.float64)
    assert z[1, 3] == pytest.approx(float(model(pt).detach()))
    with pytest.raises(ValueError, match="input_shape"):
        decision_grid(MLP((3,), (4,)).double())


def test_plots_return_figures_with_labelled_axes():
    x, y = alternating_arcs(n_arcs=4, per_arc=3)
    model = _model()
    lam, margin = weight_decay_multipliers(model, x, y, 0.1)
    cand = x + 0.01
    figs = [plot_decision(model, x, y, title="t"),
            plot_multipliers(model, x, y, lam, margin),
            plot_candidates(model, x, y, cand, y, torch.ones(12), highlight=lam > lam.median())]
    for fig in figs:
        ax = fig.axes[0]
        assert ax.get_xlabel() and ax.get_ylabel()
        plt.close(fig)
    # the candidate plot draws one matching line per highlighted point
    fig = plot_candidates(model, x, y, cand, y, torch.ones(12), highlight=torch.arange(12) < 4)
    assert len(fig.axes[0].lines) == 4
    plt.close(fig)
