"""The kernel-free explorer's data and HTML (no browser here; tests/test_browser.py runs it)."""

import base64
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from recon.evaluate import evaluate
from recon.html_explorer import (
    VERSION,
    explorer_data,
    explorer_html,
    explorer_page,
    write_explorer_page,
)
from recon.widgets import NUMBER_FORMATS, explore_pairs, info_table, pair_items


def _items(n_train=12, channels=1, seed=0, names=("zero", "one", "two")):
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(n_train, channels, 8, 8, generator=g)
    mean = raw.mean(0, keepdim=True)
    x = raw - mean
    cand = torch.cat([x + 0.1 * torch.randn(x.shape, generator=g),
                      0.3 * torch.randn(4, channels, 8, 8, generator=g)])
    ev = evaluate(cand, x, mean, matching="one_to_one")
    lam = torch.linspace(1.0, 0.1, n_train, dtype=torch.float64)
    margin = torch.linspace(1.0, 3.0, n_train, dtype=torch.float64)
    return ev, pair_items(ev, lam, margin, torch.arange(n_train) % 3, names)


def _data_of(fragment: str) -> dict:
    m = re.search(r'<script type="application/json" class="rx-data">(.*?)</script>', fragment,
                  flags=re.S)
    assert m, "the fragment holds no rx-data script"
    return json.loads(m.group(1))


def test_data_keeps_the_best_items_with_numbers_and_native_pngs():
    _, items = _items(n_train=12)
    data = explorer_data({"A": items}, max_items=5)
    (run,) = data["runs"]
    assert run["name"] == "A" and run["n_total"] == 12 and len(run["items"]) == 5
    best = sorted(items, key=lambda it: -it.ssim)[:5]
    assert [r["train_index"] for r in run["items"]] == [it.train_index for it in best]
    for row, it in zip(run["items"], best):
        assert row["ssim"] == pytest.approx(it.ssim, rel=1e-5)
        assert row["lam"] == pytest.approx(it.lam, rel=1e-5)
        assert row["margin"] == pytest.approx(it.margin, rel=1e-5)
        assert row["class_name"] == it.class_name
        png = np.asarray(Image.open(io.BytesIO(base64.b64decode(row["png_base64"]))))
        assert png.shape == it.image.shape[:2]  # native size: the browser enlarges it
        np.testing.assert_allclose(png / 255, it.image[..., 0], atol=1 / 255)
    assert run["classes"] == ["zero", "one", "two"]
    assert run["has_lam"] and run["has_margin"]
    assert run["height"] == 17 and run["width"] == 8 and run["zoom"] == round(200 / 17)
    json.dumps(data, allow_nan=False)


def test_fragment_is_self_contained_and_prefilled_with_the_best_pair():
    _, items = _items()
    frag = explorer_html({"MNIST": items, "other": items[:3]}, element_id="ex1", title="T<1>")
    assert 'id="ex1"' in frag and f'data-rx-version="{VERSION}"' in frag
    assert "T&lt;1&gt;" in frag  # escaped
    # loads nothing: no external script, stylesheet or image
    assert not re.search(r"(src|href)=\"(https?:)?//", frag)
    assert "<script src" not in frag and "require" not in frag
    data = _data_of(frag)
    assert [r["name"] for r in data["runs"]] == ["MNIST", "other"]
    best = max(items, key=lambda it: it.ssim)
    assert f'<span class="rx-ssim">{best.ssim:.3f}</span>' in frag
    assert f'<span class="rx-train">#{best.train_index}</span>' in frag
    # the default id depends only on the data: a rebuild gives the same page
    assert explorer_html(items) == explorer_html(items)
    assert 'label hidden>data set' in explorer_html(items)  # one run: no run selector


def test_json_cannot_close_the_script_tag():
    _, items = _items(names=("</script><b>x", "one", "two"))
    frag = explorer_html(items)
    assert frag.count("</script>") == 2  # the data's and the code's
    assert _data_of(frag)["runs"][0]["classes"][0] == "</script><b>x"


def test_standalone_page(tmp_path):
    _, items = _items(channels=3)
    path = write_explorer_page(tmp_path / "p.html", {"rgb": items}, title="pairs")
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and "<title>pairs</title>" in text
    assert text == explorer_page({"rgb": items}, title="pairs")
    png = base64.b64decode(_data_of(text)["runs"][0]["items"][0]["png_base64"])
    assert Image.open(io.BytesIO(png)).mode == "RGB"


def test_bad_inputs_raise_clear_errors():
    ev, items = _items()
    with pytest.raises(TypeError, match="PairItem"):
        explorer_html([ev])
    with pytest.raises(TypeError, match="list of PairItem"):
        explorer_html("items")
    with pytest.raises(ValueError, match="no items"):
        explorer_html({"A": []})
    with pytest.raises(ValueError, match="no runs"):
        explorer_html({})
    with pytest.raises(ValueError, match="max_items"):
        explorer_data(items, max_items=0)
    with pytest.raises(ValueError, match="element_id"):
        explorer_html(items, element_id='a"b')


def test_kernel_explorer_carries_a_static_snapshot_for_pages_without_a_kernel():
    ev, _ = _items()
    ex = explore_pairs(ev, title="snap")
    bundle = ex._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    snap = bundle["text/html"]
    assert 'class="recon-widget-snapshot"' in snap and "snap" in snap
    assert f"#{ex.current.train_index}" in snap and "data:image/png;base64," in snap
    assert "needs a running Python" in snap or "need a running Python" in snap
    ex.min_ssim.value = 1.0  # nothing passes: the snapshot says so instead of an image
    assert "no pair passes" in ex._repr_mimebundle_()["text/html"]


def test_every_view_writes_a_pairs_numbers_the_same_way():
    """One source for the text: the page's data and table, the widget and the figure caption."""
    ev, items = _items()
    best = max(items, key=lambda it: it.ssim)
    text = best.text(0.4)
    assert text["ssim"] == format(best.ssim, NUMBER_FORMATS["ssim"])
    assert text["lam"] == format(best.lam, ".3g") and text["train"] == f"#{best.train_index}"
    assert text["verdict"] == ("good (SSIM > 0.4)" if best.ssim > 0.4 else "not good")
    frag = explorer_html(items, element_id="ex")
    first = _data_of(frag)["runs"][0]["items"][0]
    assert first["text"] == text  # the page's script shows this text, formats nothing
    assert info_table(text, best.ssim > 0.4, "rx-info") in frag
    by_image = sorted(items, key=lambda it: it.train_index)  # every training image is matched
    ex = explore_pairs(ev, [it.lam for it in by_image], [it.margin for it in by_image],
                       [it.label for it in by_image], ("zero", "one", "two"))
    assert ex.current.train_index == best.train_index
    assert ex.info.value == info_table(text, best.ssim > 0.4)
    assert best.caption(1) == f"SSIM {text['ssim']}  NCC {text['ncc']}"
    assert f"λ {text['lam']}" in best.caption()
    # every field of the table is refilled by the script, and nothing else
    assert set(re.findall(r'class="rx-([a-z-]+)', info_table(text))) == set(text)
