"""recon.plots: the figures every chapter draws."""

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from recon import plots


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def test_to_display_adds_the_mean_and_scales_each_image():
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 3.0]]], [[[2.0, 2.0], [2.0, 4.0]]]])
    mean = torch.full((1, 1, 2, 2), 0.5)
    out = plots.to_display(x, mean)
    for img in out:
        assert float(img.min()) == 0.0 and float(img.max()) == 1.0
    # -1 + 0.5 is the first image's minimum, 3 + 0.5 its maximum: 0 + 0.5 sits at 1/4
    assert float(out[0, 0, 0, 1]) == pytest.approx(0.25)
    raw = plots.to_display(x, mean, minmax=False)  # only clamped to [0, 1]
    assert float(raw[0, 0, 0, 0]) == 0.0 and float(raw[0, 0, 0, 1]) == 0.5


def test_image_grid_places_each_image_and_pads():
    imgs = torch.stack([torch.full((3, 2, 2), v) for v in (0.1, 0.2, 0.3)])
    grid = plots.image_grid(imgs, ncols=2, pad=1, pad_value=1.0)
    assert grid.shape == (2 * 3 + 1, 2 * 3 + 1, 3)
    assert np.allclose(grid[1:3, 1:3], 0.1) and np.allclose(grid[1:3, 4:6], 0.2)
    assert np.allclose(grid[4:6, 1:3], 0.3) and np.allclose(grid[4:6, 4:6], 1.0)  # empty cell
    assert np.allclose(grid[0], 1.0)  # padding
    grey = plots.image_grid(torch.zeros(2, 1, 4, 4), ncols=2)
    assert grey.ndim == 2


def test_plot_pairs_puts_each_reconstruction_above_its_image():
    rec, orig = torch.rand(5, 1, 6, 6), torch.rand(5, 1, 6, 6)
    fig = plots.plot_pairs(rec, orig, scores=[0.91, 0.8, 0.7, 0.6, 0.5], ncols=3, title="t")
    axes = np.array(fig.axes).reshape(4, 3)  # two rows of pairs, three columns
    assert axes[0, 0].get_title() == "0.91" and axes[2, 1].get_title() == "0.50"
    shown = axes[0, 1].images[0].get_array()
    assert np.allclose(shown, rec[1, 0].numpy())
    assert np.allclose(axes[1, 1].images[0].get_array(), orig[1, 0].numpy())
    assert not axes[3, 2].images  # no sixth pair
    assert "SSIM above each pair" in fig._suptitle.get_text()
    with pytest.raises(ValueError, match="no pairs"):
        plots.plot_pairs(rec[:0], orig[:0])


def test_plot_history_and_snapshots():
    h = {"epoch": [0, 1, 2], "loss": [1.0, 0.1, 0.01], "err": [0.5, 0.2, 0.0]}
    fig = plots.plot_history(h, ["loss", "err"], logy=["loss"], labels={"err": "error"})
    assert [ax.get_yscale() for ax in fig.axes] == ["log", "linear"]
    assert fig.axes[1].get_ylabel() == "error"
    assert list(fig.axes[0].lines[0].get_ydata()) == h["loss"]
    snaps = {0: torch.randn(8, 1, 5, 5), 100: torch.randn(8, 1, 5, 5)}
    fig = plots.plot_snapshots(snaps, indices=(0, 3, 5))
    assert len(fig.axes) == 2 * 3 and fig.axes[3].get_ylabel() == "step 100"


def test_show_card_figure_shows_the_file_at_its_own_size(tmp_path):
    img = np.zeros((90, 180, 3))
    img[:, 90:] = 1.0
    plt.imsave(tmp_path / "pairs.png", img)
    fig = plots.show_card_figure({"_dir": str(tmp_path)})
    assert tuple(fig.get_size_inches()) == pytest.approx((2.0, 1.0))
    shown = fig.axes[0].images[0].get_array()
    assert shown.shape[:2] == (90, 180) and shown[0, -1, 0] == pytest.approx(1.0)
    with pytest.raises(FileNotFoundError):
        plots.show_card_figure({"_dir": str(tmp_path)}, "margins.png")
