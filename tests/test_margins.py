"""recon.margins: which training images come back, lined up with margins and multipliers."""

import math
from types import SimpleNamespace

import matplotlib.pyplot as plt
import pytest
import torch

from recon.evaluate import evaluate
from recon.kkt import kkt_diagnostic
from recon.margins import (
    margin_analysis,
    model_margin_analysis,
    per_image_scores,
    plot_margin_scatter,
)
from recon.models import MLP


def _matched(train_index, ncc, ssim=None):
    """A stand-in for an Evaluation: the fields the analysis reads."""
    ncc = torch.tensor(ncc, dtype=torch.float32)
    return SimpleNamespace(train_index=torch.tensor(train_index),
                           ncc=ncc, ssim=ncc / 2 if ssim is None else torch.tensor(ssim))


def test_scores_land_on_their_training_image_and_unmatched_are_nan():
    ev = _matched([3, 0, 4], [0.95, 0.5, 0.2])
    s = per_image_scores(ev, 6)
    assert s["ncc"][3] == pytest.approx(0.95) and s["ncc"][0] == pytest.approx(0.5)
    assert s["ssim"][4] == pytest.approx(0.1)
    assert torch.isnan(s["ncc"][[1, 2, 5]]).all()
    with pytest.raises(ValueError, match="n = 4"):
        per_image_scores(ev, 4)


def test_the_real_protocol_scores_an_exact_copy_at_its_own_index():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 1, 8, 8, generator=g)
    mean = x.mean(0, keepdim=True)
    x = x - mean
    cand = torch.cat([x[[2]], torch.randn(3, 1, 8, 8, generator=g)])  # one copy, three noise
    ev = evaluate(cand, x, mean, matching="one_to_one")
    s = per_image_scores(ev, 6)
    assert s["ncc"][2] == pytest.approx(1.0, abs=1e-5)
    assert int((~torch.isnan(s["ncc"])).sum()) == 4  # four candidates, four matched images


def test_rank_correlations_and_recovered_shares_by_hand():
    n = 10
    # images 0..4 matched, NCC falling with the margin: rho(margin, NCC) = -1 exactly
    ev = _matched([0, 1, 2, 3, 4], [0.99, 0.95, 0.7, 0.5, 0.3])
    margin = torch.arange(1, n + 1, dtype=torch.float64)  # image 0 has the smallest margin
    lam = 1 / margin  # multipliers rise as the margin falls: rho(lam, NCC) = +1
    a = margin_analysis(margin, lam, ev, labels=torch.ones(n))
    assert a["spearman_margin_ncc"] == pytest.approx(-1.0)
    assert a["spearman"]["lam_ncc"] == pytest.approx(1.0)
    assert a["spearman"]["margin_ssim"] == pytest.approx(-1.0)
    # the smallest-margin fifth is images 0 and 1, both above 0.9; the rest: none
    assert a["n_low_margin"] == 2
    assert a["recovered_share_low_margin"] == 1.0 and a["recovered_share_rest"] == 0.0
    assert a["n_support"] == n and len(a["ncc"]) == n and math.isnan(a["ncc"][7])
    stricter = margin_analysis(margin, lam, ev, recovered_at=0.97)
    assert stricter["recovered_share_low_margin"] == 0.5


def test_margin_and_multipliers_must_cover_the_same_images():
    with pytest.raises(ValueError, match="one value per training image"):
        margin_analysis(torch.ones(5), torch.ones(4), _matched([0], [0.9]))


def test_model_margin_analysis_uses_the_kkt_fit_at_the_training_set():
    torch.manual_seed(0)
    model = MLP((1, 4, 4), (8,), init_scale=0.5).double()
    x = torch.randn(6, 1, 4, 4, dtype=torch.float64)
    y = torch.tensor([-1.0, 1, -1, 1, -1, 1], dtype=torch.float64)
    task = SimpleNamespace(x_train=x, y_train=y)
    a = model_margin_analysis(model, task, _matched([0, 1], [0.9, 0.2]))
    d = kkt_diagnostic(model, x, y)
    assert a["lam"] == pytest.approx(d.lam.tolist())
    assert a["margin"] == pytest.approx(d.margin.tolist())
    assert a["kkt_unexplained"] == pytest.approx(d.unexplained)
    assert a["labels"] == y.tolist()


def test_scatter_draws_recovered_images_apart_and_names_rho():
    ev = _matched([0, 1, 2, 3], [0.99, 0.95, 0.7, 0.5])
    a = margin_analysis(torch.arange(1.0, 7.0), torch.linspace(1, 0, 6), ev)
    fig, axes = plt.subplots(1, 3)
    plot_margin_scatter(axes[0], a, "margin", "ncc")
    found, rest = axes[0].collections[1], axes[0].collections[0]
    assert len(found.get_offsets()) == 2 and len(rest.get_offsets()) == 2
    assert "ρ = -1.00" in axes[0].get_title()
    plot_margin_scatter(axes[1], a, "ratio", "ssim", title="mnist")
    assert axes[1].get_title().startswith("mnist: ")
    plot_margin_scatter(axes[2], a, "lam", "ncc")
    assert axes[2].get_xscale() == "symlog"
    with pytest.raises(ValueError, match="x must be"):
        plot_margin_scatter(axes[0], a, "ssim", "ncc")
    plt.close(fig)
