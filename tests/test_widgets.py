"""The pair explorer: items, filters, static figure and the ipywidgets wiring."""

import base64
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from recon.evaluate import evaluate
from recon.widgets import (
    PairExplorer,
    explore_pairs,
    filter_items,
    pair_image,
    pair_items,
    plot_pair_cards,
    png_bytes,
)

N_TRAIN = 12


def _evaluation(channels=1, n_train=N_TRAIN, m=20, seed=0, matching="paper"):
    """Random training images; half the candidates are noisy copies of training images, so
    SSIM spreads from near 1 to near 0."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n_train, channels, 8, 8, generator=g)
    mean = raw.mean(0, keepdim=True)
    x_train = raw - mean
    copies = x_train[: m // 2] + 0.05 * torch.arange(m // 2).view(-1, 1, 1, 1) * torch.randn(
        m // 2, channels, 8, 8, generator=g)
    noise = 0.3 * torch.randn(m - m // 2, channels, 8, 8, generator=g)
    return evaluate(torch.cat([copies, noise]), x_train, mean, matching=matching)


def _extras(n=N_TRAIN):
    lam = torch.linspace(1.0, 0.0, n, dtype=torch.float64)
    margin = torch.linspace(1.0, 3.0, n, dtype=torch.float64)
    labels = torch.arange(n) % 3
    return lam, margin, labels, ("zero", "one", "two")


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)))


@pytest.fixture
def ev():
    return _evaluation()


# ---------------------------------------------------------------------------------------------
# items
# ---------------------------------------------------------------------------------------------
def test_pair_items_follow_the_evaluation(ev):
    lam, margin, labels, names = _extras()
    items = pair_items(ev, lam, margin, labels, names, scale=3)
    assert len(items) == len(ev) == N_TRAIN
    for rank, it in enumerate(items):
        t = int(ev.train_index[rank])
        assert it.rank == rank and it.train_index == t
        assert it.candidate_index == int(ev.candidate_index[rank])
        assert it.ssim == pytest.approx(float(ev.ssim[rank]))
        assert it.ncc == pytest.approx(float(ev.ncc[rank]))
        assert it.lam == pytest.approx(float(lam[t])) and it.margin == pytest.approx(margin[t])
        assert it.label == int(labels[t]) and it.class_name == names[int(labels[t])]
    # the image is the reconstruction above the original, and the PNG is that image enlarged
    it = items[0]
    np.testing.assert_allclose(it.image[:8, :, 0], ev.recon[0, 0].numpy(), atol=1e-6)
    np.testing.assert_allclose(it.image[9:, :, 0], ev.original[0, 0].clamp(0, 1).numpy(),
                               atol=1e-6)
    decoded = _decode(it.png)
    assert decoded.shape == (17 * 3, 8 * 3)
    np.testing.assert_allclose(decoded[::3, ::3] / 255, it.image[..., 0], atol=1 / 255)


def test_items_without_extras_and_rgb():
    ev = _evaluation(channels=3)
    items = pair_items(ev)
    assert all(it.lam is None and it.margin is None and it.class_name is None for it in items)
    assert items[0].image.shape == (17, 8, 3)
    assert _decode(items[0].png).shape == (17 * 4, 8 * 4, 3)
    assert "λ" not in items[0].caption()


def test_to_dict_is_json_and_round_trips_the_png(ev):
    items = pair_items(ev, *_extras())
    blob = json.dumps([it.to_dict() for it in items])
    back = json.loads(blob)[0]
    assert base64.b64decode(back["png_base64"]) == items[0].png
    assert back["ssim"] == pytest.approx(items[0].ssim)
    assert back["class_name"] == items[0].class_name


def test_filter_items(ev):
    lam, margin, labels, names = _extras()
    items = pair_items(ev, lam, margin, labels, names)
    assert filter_items(items) == items  # default: all, SSIM order
    ones = filter_items(items, class_name="one")
    assert len(ones) == int((labels == 1).sum()) and {it.class_name for it in ones} == {"one"}
    t = 0.5
    above = filter_items(items, min_ssim=t)
    assert len(above) == ev.count(ssim_above=t)
    assert 0 < len(above) < len(items), "the constructed evaluation should straddle 0.5"
    by_lam = filter_items(items, sort_by="lam")
    assert [it.lam for it in by_lam] == sorted((it.lam for it in items), reverse=True)
    by_margin = filter_items(items, sort_by="margin")
    assert [it.margin for it in by_margin] == sorted(it.margin for it in items)


# ---------------------------------------------------------------------------------------------
# static figure
# ---------------------------------------------------------------------------------------------
def test_plot_pair_cards_draws_one_panel_per_item(ev):
    items = pair_items(ev, *_extras())
    fig = plot_pair_cards(items, ncols=4, max_items=6)
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 6
    assert drawn[0].get_title().startswith(f"#{items[0].train_index}")
    caption = drawn[0].get_xlabel()
    assert "SSIM" in caption and "λ" in caption
    assert caption == items[0].caption()


# ---------------------------------------------------------------------------------------------
# widget
# ---------------------------------------------------------------------------------------------
def test_explorer_builds_and_shows_the_best_pair(ev):
    lam, margin, labels, names = _extras()
    ex = explore_pairs(ev, lam, margin, labels, names)
    assert isinstance(ex, PairExplorer)
    assert len(ex.shown) == len(ev)
    assert ex.index.max == len(ev) - 1
    assert ex.current.rank == 0
    assert ex.image.value == ex.items[0].png
    assert f"{float(ev.ssim[0]):.3f}" in ex.info.value
    assert list(ex.class_filter.options) == ["all classes", "zero", "one", "two"]
    assert {v for _, v in ex.sort_by.options} == {"ssim", "ncc", "lam", "margin"}


def test_moving_the_index_changes_image_and_numbers(ev):
    ex = explore_pairs(ev, *_extras())
    first_png, first_info = ex.image.value, ex.info.value
    ex.index.value = 3
    assert ex.current is ex.shown[3]
    assert ex.image.value == ex.shown[3].png != first_png
    assert ex.info.value != first_info
    assert f"{ex.shown[3].ssim:.3f}" in ex.info.value
    assert f"#{ex.shown[3].train_index}" in ex.info.value
    ex.step(+1)
    assert ex.index.value == 4 and ex.current is ex.shown[4]
    ex.step(-10)  # clamped
    assert ex.index.value == 0 and ex.prev_button.disabled


def test_filters_change_the_number_of_items_shown(ev):
    lam, margin, labels, names = _extras()
    ex = explore_pairs(ev, lam, margin, labels, names)
    ex.index.value = len(ev) - 1
    ex.min_ssim.value = 0.5
    assert len(ex.shown) == ev.count(ssim_above=0.5) < len(ev)
    assert all(it.ssim > 0.5 for it in ex.shown)
    assert ex.index.value == 0 and ex.index.max == len(ex.shown) - 1
    assert ex.image.value == ex.shown[0].png
    assert f"of {len(ex.shown)} shown" in ex.status.value
    ex.min_ssim.value = -1.0
    ex.class_filter.value = "two"
    assert len(ex.shown) == int((labels == 2).sum())
    assert all(it.class_name == "two" for it in ex.shown)
    ex.sort_by.value = "lam"
    lams = [it.lam for it in ex.shown]
    assert lams == sorted(lams, reverse=True)
    assert ex.current is ex.shown[0]


def test_a_filter_that_leaves_nothing_shows_a_message(ev):
    ex = explore_pairs(ev)
    ex.min_ssim.value = 1.0
    assert ex.shown == [] and ex.current is None
    assert ex.image.value == b""
    assert "no pair" in ex.info.value
    assert ex.index.disabled and ex.next_button.disabled
    ex.min_ssim.value = -1.0
    assert len(ex.shown) == len(ev) and ex.image.value == ex.items[0].png


def test_explorer_without_extras_offers_only_ssim_and_ncc():
    ex = explore_pairs(_evaluation(channels=3, matching="one_to_one"))
    assert {v for _, v in ex.sort_by.options} == {"ssim", "ncc"}
    assert ex.class_filter.disabled
    assert "—" in ex.info.value  # lambda and margin unknown


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors(ev):
    lam, margin, labels, names = _extras()
    with pytest.raises(TypeError, match="Evaluation"):
        explore_pairs({"ssim": [0.5]})
    with pytest.raises(ValueError, match=r"lam must hold one value per training image"):
        explore_pairs(ev, lam=lam[:-1])
    with pytest.raises(ValueError, match=r"margin .*n_train = 12"):
        explore_pairs(ev, margin=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="no entry in class_names"):
        explore_pairs(ev, labels=labels, class_names=("zero", "one"))
    with pytest.raises(ValueError, match="class_names needs labels"):
        explore_pairs(ev, class_names=names)
    with pytest.raises(TypeError, match="sequence of numbers"):
        explore_pairs(ev, lam=["a"] * N_TRAIN)
    with pytest.raises(ValueError, match="positive integer"):
        explore_pairs(ev, scale=0)
    items = pair_items(ev)
    with pytest.raises(ValueError, match="sort_by must be one of"):
        filter_items(items, sort_by="size")
    with pytest.raises(ValueError, match="no lam values"):
        filter_items(items, sort_by="lam")
    with pytest.raises(ValueError, match="unknown class"):
        filter_items(pair_items(ev, labels=labels), class_name="seven")
    with pytest.raises(ValueError, match="no items"):
        plot_pair_cards([])
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        pair_image(torch.zeros(1, 4, 4), torch.zeros(1, 4, 5))
    with pytest.raises(ValueError, match="image must be"):
        png_bytes(np.zeros((4, 4, 2)))


def test_empty_evaluation_is_refused(ev):
    import dataclasses

    empty = dataclasses.replace(ev, train_index=ev.train_index[:0],
                                candidate_index=ev.candidate_index[:0], ssim=ev.ssim[:0],
                                ncc=ev.ncc[:0], recon=ev.recon[:0], original=ev.original[:0])
    with pytest.raises(ValueError, match="no pairs"):
        explore_pairs(empty)
