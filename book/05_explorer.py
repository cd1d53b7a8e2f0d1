# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     formats: ipynb,py:percent
#     notebook_metadata_filter: kernelspec,jupytext,-widgets,-varInspector
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Exploring the results
#
# Counts compress a reconstruction into a few numbers; the previous chapter showed how much
# they can hide (a blob can pass SSIM > 0.4, a perfect digit can fail it). This chapter gives
# the reader the pictures behind the counts. Every matched pair of the book's MNIST and
# CIFAR-10 runs becomes an *item*: the reconstruction above its training image, with the
# pair's SSIM and correlation, and the training image's KKT multiplier $\lambda_i$ and margin.
# We first draw items as a static figure, then browse them in an explorer that works in this
# web page without any Python behind it (the items written into the page, a few lines of
# JavaScript), and finally in an ipywidgets explorer (`recon.widgets.explore_pairs`) that a
# running kernel drives in Jupyter or on Colab. Both filter by class and SSIM threshold and
# sort by any of the numbers; both show the same precomputed items.

# %% [markdown]
# ## Learning goals
#
# - Read a reconstruction pair together with its numbers: SSIM, NCC, multiplier, margin.
# - Use `recon.widgets.pair_items` to precompute what a viewer shows (PNG bytes and numbers),
#   and `plot_pair_cards` to draw it statically.
# - Browse every pair with `explore_pairs`: filter by class and SSIM, sort by multiplier or
#   margin, and check the chapter-4 counts by eye.
# - Explain why the explorer separates data (items) from wiring (widgets), and what that buys
#   for a static web page: an explorer that works with no kernel, and what it cannot do.
#
# The symbols, residuals, scores and profiles used here are defined on the
# {doc}`notation` page.
#
# **Runtime** on 2 CPU cores, measured by `benchmarks/chapter_times.py` with the chapters run in
# order: quick profile {glue:text}`runtime_quick`; full profile {glue:text}`runtime_full`. It shows
# chapter 3's reconstructions.

# %% [markdown]
# ## Setup

# %%
# On Colab (or wherever `recon` is not installed yet) install the library that ships with
# this book; Colab's own torch is kept.
import importlib.util
import subprocess
import sys

REPOSITORY = "https://github.com/recon-book/recon"  # set in the book's _config.yml
if importlib.util.find_spec("recon") is None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"git+{REPOSITORY}"],
                   check=True)

from recon import pipeline
from recon.plots import set_style

set_style()
print(pipeline.describe())

from recon.notebook import glue_runtime

glue_runtime("05_explorer")  # the runtime line above, from the committed timings

# %%
import json

import matplotlib.pyplot as plt
from IPython.display import HTML

from recon.data import CLASS_NAMES
from recon.evaluate import evaluate_both
from recon.html_explorer import MAX_ITEMS, explorer_html
from recon.notebook import glue
from recon.widgets import explore_pairs, filter_items, pair_items, plot_pair_cards

if "google.colab" in sys.modules:  # let Colab render ipywidgets 8
    from google.colab import output

    output.enable_custom_widget_manager()

TASKS = ("mnist", "cifar10")
PRETTY = {"mnist": "MNIST (odd vs even)", "cifar10": "CIFAR-10 (animal vs vehicle)"}
GOOD = 0.4

# %% [markdown]
# ## 1. A pair and its numbers
#
# Each item answers four questions about one training image $x_i$ and the candidate
# $\hat{x}$ matched to it (one-to-one matching, chapter 4):
#
# - **SSIM**: the paper's score after adding the mean back and min-max scaling $\hat{x}$;
#   above 0.4 counts as a good reconstruction.
# - **NCC**: the pixel correlation $\rho(\hat{x}, x_i)$; above 0.9 the two are, by eye, the
#   same image (chapter 4, Section 6).
# - **$\lambda_i$**: the training image's multiplier in
#   $\theta = \sum_i \lambda_i y_i \nabla_\theta \Phi(\theta; x_i)$, fitted at the true
#   training set (chapter 2); how strongly $x_i$ is written into the weights.
# - **margin** $y_i \Phi(\theta; x_i)$: how far $x_i$ is from the decision boundary. With
#   weight decay $\lambda_i$ falls as the margin grows
#   {cite:p}`buzaglo2023deconstructing`, and the paper finds that the samples near the
#   margin are the ones recovered {cite:p}`haim2022reconstructing`.
#
# The smallest code: evaluate, then turn the evaluation into items.

# %%
runs = {}
for name in TASKS:
    task = pipeline.task(name)
    net = pipeline.trained(name)
    rec = pipeline.reconstruction(name)
    ev = evaluate_both(rec["x"], task.x_train, task.mean)
    kkt = net["kkt"]
    runs[name] = {"task": task, "rec": rec, "ev": ev, "lam": kkt["lam"], "margin": kkt["margin"]}
    runs[name]["items"] = pair_items(ev["one_to_one"], kkt["lam"], kkt["margin"],
                                     task.labels_train, CLASS_NAMES[name])

best = runs["mnist"]["items"][0]
print(best.numbers())
print(best.caption())

# %% [markdown]
# An item carries the pair image twice: as an array (`item.image`, reconstruction above
# original, for matplotlib) and as PNG bytes (`item.png`, for a browser). Drawn as cards,
# the best MNIST and CIFAR-10 pairs by SSIM look like this; green captions pass the paper's
# SSIM > 0.4, red ones do not.

# %%
for name in TASKS:
    fig = plot_pair_cards(runs[name]["items"], ncols=8, max_items=16,
                          title=f"{PRETTY[name]}: best 16 pairs by SSIM, one-to-one "
                                "(top: reconstruction, bottom: training image)")
    plt.show()

# %% [markdown]
# Read the captions against the pictures. On MNIST the best sixteen cards are the training
# digits themselves, stroke for stroke; further down the ranking some cards pass SSIM while
# showing a blend or another digit's layout, and their NCC says so (chapter 4, Section 6).
# On CIFAR-10 the last cards are blends of several photographs: where one object dominates a
# blend, its colours and layout can be enough for SSIM and still fall short for NCC, and
# below both thresholds the eye finds at most a hint of the training image.
#
# The same items sorted by the multiplier instead (`filter_items(items, sort_by="lam")`):
# the training images the network weights most, and whether they came back.

# %%
for name in TASKS:
    by_lam = filter_items(runs[name]["items"], sort_by="lam")
    top = by_lam[:16]
    glue(f"{name}_top_lam_good", sum(it.ssim > GOOD for it in top), display=False)
    glue(f"{name}_top_lam_ncc", sum(it.ncc > 0.9 for it in top), display=False)
    glue(f"{name}_top_lam_k", len(top), display=False)
    fig = plot_pair_cards(top, ncols=8,
                          title=f"{PRETTY[name]}: the 16 training images with the largest "
                                "multipliers, and their reconstructions")
    plt.show()

# %% [markdown]
# **What to notice.** Among the {glue:text}`mnist_top_lam_k` MNIST training images with the
# largest multipliers, {glue:text}`mnist_top_lam_ncc` have a reconstruction with NCC above 0.9
# and {glue:text}`mnist_top_lam_good` pass SSIM > 0.4; on CIFAR-10
# ({glue:text}`cifar10_top_lam_k` images) the numbers are {glue:text}`cifar10_top_lam_ncc`
# and {glue:text}`cifar10_top_lam_good`. A large multiplier makes recovery likely, not
# certain: some heavily weighted images are missed by this run's random starts (the paper
# pools many runs for that reason).

# %% [markdown]
# ## 2. Data first, widgets second
#
# An interactive viewer needs two things: the data to show and the wiring that reacts to the
# reader. `recon.widgets` keeps them apart. `pair_items` and `filter_items` are plain
# functions with no widget in sight, and `PairItem.to_dict()` turns an item into JSON (the
# PNG as base64 text). The widget only looks items up. So the same items can be written into
# a web page once, at build time, and filtered there by a few lines of JavaScript, without
# a Python kernel behind the page (Section 3).

# %%
blob = json.dumps([it.to_dict() for it in runs["mnist"]["items"]])
glue("json_kb", len(blob) / 1024, display=False)
glue("n_items", len(runs["mnist"]["items"]), display=False)
first = json.loads(blob)[0]
print({k: (v[:40] + "..." if k == "png_base64" else v) for k, v in first.items()})

# %% [markdown]
# All {glue:text}`n_items` MNIST items fit in {glue:text}`json_kb:.0f` kB of JSON, images
# included.

# %% [markdown]
# ## 3. An explorer that needs no kernel
#
# The web version of this book is static: no Python runs behind the page, so nothing can
# call `filter_items` when a reader moves a slider. The usual remedy for ipywidgets is to
# save the widgets' state into the notebook when the book is built and to link widgets in the
# browser (`jslink`, say a slider to the selected page of a `Stack`); a JavaScript widget
# manager, fetched with its loader from a CDN, then draws them. That is three moving parts
# for a result that is blank whenever the CDN cannot be reached, and links only copy values:
# filtering and sorting would need code in the page anyway.
#
# So the page gets that code directly. `recon.html_explorer.explorer_html` writes the items of
# each run into one HTML fragment: the numbers as JSON and the pair images as base64 PNGs at
# their native size (the browser enlarges them with square pixels), bounded to the best
# `MAX_ITEMS` pairs of a run by SSIM, plus about a hundred lines of plain JavaScript that
# filter, sort and step through them. The fragment loads nothing, so it works the same in
# this page, in Jupyter, on Colab and offline. A test (`tests/test_browser.py`) opens the
# built page in headless Chromium with the network cut off, moves the slider and the
# dropdowns, and checks that the image and the numbers change.

# %%
page = explorer_html(
    {PRETTY[name]: runs[name]["items"] for name in TASKS},
    max_items=MAX_ITEMS, good_ssim=GOOD, element_id="pair-explorer",
    title="Reconstructions next to their training images (one-to-one matching)")
n_embedded = sum(min(len(runs[name]["items"]), MAX_ITEMS) for name in TASKS)
glue("explorer_kb", len(page.encode()) / 1024, display=False)
glue("explorer_n", n_embedded, display=False)
glue("explorer_max", MAX_ITEMS, display=False)
HTML(page)

# %% [markdown]
# Choose the data set, a class, a minimum SSIM and a sort order; step with the slider, the
# buttons or the arrow keys. The page holds {glue:text}`explorer_n` pairs (at most
# {glue:text}`explorer_max` per run) in {glue:text}`explorer_kb:.0f` kB, images included.
#
# What does *not* work without a kernel: anything that needs new numbers. The page cannot
# switch to another evaluation (the paper's matching, the first-layer baseline), show more
# than the embedded pairs, or compute anything about the pair on screen; in Jupyter (where
# the notebook must be trusted for the script to run) these are one line of Python away.
#
# **What to notice.** Set "SSIM above" to 0.4 and the count is chapter 4's; sort by margin
# and the pairs nearest the decision boundary come first. Browse them and check the paper's
# claim that samples on the margin are the ones that come back.

# %% [markdown]
# ## 4. The kernel explorer
#
# `explore_pairs(evaluation, lam, margin, labels, class_names)` builds the browser: choose a
# class, a minimum SSIM and a sort order; step through the pairs that pass with the slider or
# the buttons; the panel on the right shows the numbers of the pair on screen. It runs in
# Jupyter and on Colab, where the callbacks execute in the kernel, so it takes any evaluation
# and all of its pairs.
#
# ```{note}
# In the HTML version of this book the explorers of this section and the next are **static
# snapshots**: each shows the pair it had on screen when the book was built, and has no
# controls, because no Python kernel runs behind the page. To use them, open this chapter in
# Jupyter or on Colab (the launch buttons at the top of the page) and run it; the explorer of
# Section 3 works in this page.
# ```

# %%
mnist = runs["mnist"]
explorer = explore_pairs(mnist["ev"]["one_to_one"], mnist["lam"], mnist["margin"],
                         mnist["task"].labels_train, CLASS_NAMES["mnist"],
                         title="MNIST, one-to-one matching")
explorer

# %% [markdown]
# And the CIFAR-10 run:

# %%
cifar = runs["cifar10"]
explore_pairs(cifar["ev"]["one_to_one"], cifar["lam"], cifar["margin"],
              cifar["task"].labels_train, CLASS_NAMES["cifar10"],
              title="CIFAR-10, one-to-one matching")

# %% [markdown]
# ## 5. Driving the explorer from code
#
# The controls are ordinary widget attributes, so a script (or a test) can set them and read
# what the explorer shows. Setting the SSIM threshold to the paper's 0.4 must leave exactly as
# many pairs as chapter 4 counted, and sorting by the multiplier puts the most heavily
# weighted training image first:

# %%
driven = explore_pairs(mnist["ev"]["one_to_one"], mnist["lam"], mnist["margin"],
                       mnist["task"].labels_train, CLASS_NAMES["mnist"],
                       title="MNIST, SSIM > 0.4, sorted by multiplier")
driven.min_ssim.value = GOOD
assert len(driven.shown) == mnist["ev"]["one_to_one"].count(ssim_above=GOOD)
driven.sort_by.value = "lam"
glue("driven_shown", len(driven.shown), display=False)
glue("driven_lam", driven.current.lam, display=False)
glue("driven_class", int(driven.current.label), display=False)

per_class = {}
for name in CLASS_NAMES["mnist"]:
    if name in driven.class_filter.options:
        driven.class_filter.value = name
        per_class[name] = len(driven.shown)
driven.class_filter.value = "all classes"
print("good pairs (SSIM > 0.4) per digit:", per_class)
driven

# %% [markdown]
# With the threshold at 0.4 the explorer shows {glue:text}`driven_shown` MNIST pairs, the
# chapter-4 count; sorted by multiplier, the first is a digit {glue:text}`driven_class` with
# $\lambda_i$ = {glue:text}`driven_lam:.3g`. The per-digit counts show which digits come back
# under the paper's criterion. (In the HTML page, this second explorer is again a snapshot,
# taken after the code above changed its controls.)
#
# **What to notice.** The explorer does not add numbers; it shows the ones chapter 4 counted,
# next to the images. Lower the threshold to 0 and sort by NCC: the pairs just under the
# paper's 0.4 (if this run has any) and the highest-NCC pairs sit side by side, and a reader
# can judge the 0.4 threshold for themselves.

# %% [markdown]
# ## Exercises
#
# 1. Build an explorer over the *paper* matching (`ev["paper"]`) of CIFAR-10 and sort by NCC.
#    Find the candidates that several training images claimed (same reconstruction, different
#    training images). How do their SSIMs compare with the one-to-one pairs?
# 2. Explore the first-layer-weights baseline of chapter 4 for CIFAR-10
#    (`first_layer_candidates` on `pipeline.trained("cifar10")["model"].layers[0].weight`). Which
#    training images does it show, and are they the ones with the largest multipliers?
# 3. Write a kernel-free explorer of CIFAR-10 under *both* matchings to a standalone file
#    (`recon.html_explorer.write_explorer_page`) and open it in a browser with the network
#    switched off. How does the page let a reader compare the two matchings, although it
#    cannot evaluate anything itself?
# 4. The reconstruction has multipliers of its own, `pipeline.reconstruction(name)["lam"]`, one
#    per candidate. Compare the multiplier of each matched candidate with the true
#    $\lambda_i$ of its training image (rank correlation). Mind the conventions: the
#    reconstruction divides its sum by the number of candidates $m$.

# %% [markdown]
# :::{admonition} Solution 1
# :class: dropdown
#
# Two kinds of sharing show up (the folded cell lists the shared candidates and compares the
# SSIM of their claims with the one-to-one pairs'). A smooth, blended candidate is claimed by
# several unrelated images, each scoring a low SSIM against it. A real reconstruction of one
# image can also be claimed by a similar-looking training image (two airplanes, say); then
# only one of the two claims is a true recovery, but under the paper's matching both are
# scored. One-to-one matching keeps each candidate for one image and gives the others their
# next choice.
# :::

# %% tags=["hide-cell"]
# Solution to exercise 1
import numpy as np
import torch

paper = explore_pairs(cifar["ev"]["paper"], cifar["lam"], cifar["margin"],
                      cifar["task"].labels_train, CLASS_NAMES["cifar10"])
paper.sort_by.value = "ncc"
shared = {}
for it in paper.items:
    shared.setdefault(it.candidate_index, []).append((it.train_index, round(it.ssim, 2)))
shared = {c: v for c, v in shared.items() if len(v) > 1}
print("candidates claimed by several training images (training image, SSIM):", shared)
ssim_shared = [s for v in shared.values() for _, s in v]
ssim_one = cifar["ev"]["one_to_one"].ssim
print(f"median SSIM: {np.median(ssim_shared) if ssim_shared else float('nan'):.2f} over the "
      f"shared claims, {float(ssim_one.median()):.2f} over the one-to-one pairs")
assert shared and np.median(ssim_shared) < float(ssim_one.median())
paper

# %% [markdown]
# :::{admonition} Solution 2
# :class: dropdown
#
# With only 20 training images and weight decay, some first-layer rows are dominated by a
# single image (chapter 4, Section 8). Whether those are the large-multiplier images is what
# the rank correlation tells you (the folded cell prints it; compare it with the
# reconstruction's, in the same cell).
# :::

# %% tags=["hide-cell"]
# Solution to exercise 2
from scipy.stats import spearmanr

from recon.evaluate import evaluate, first_layer_candidates

task = cifar["task"]
weight = pipeline.trained("cifar10")["model"].layers[0].weight.float()
rows = first_layer_candidates(weight, task.image_shape, max_abs=task.x_train.abs().max())
base = evaluate(rows, task.x_train, task.mean, matching="one_to_one")
rank_corr = {}
for label, e in (("first-layer rows", base), ("reconstruction", cifar["ev"]["one_to_one"])):
    items = pair_items(e, cifar["lam"], cifar["margin"], task.labels_train,
                       CLASS_NAMES["cifar10"])
    rank_corr[label] = spearmanr([it.lam for it in items], [it.ncc for it in items]).statistic
    print(f"{label}: rank correlation of lambda_i with the pair's NCC "
          f"{rank_corr[label]:.2f}; NCC > 0.9: {e.count(ncc_above=0.9)}")
explore_pairs(base, cifar["lam"], cifar["margin"], task.labels_train, CLASS_NAMES["cifar10"])

# %% [markdown]
# :::{admonition} Solution 3
# :class: dropdown
#
# Both evaluations are computed in Python and written into the page as two runs; the page's
# "data set" selector switches between them (the folded cell writes the page and checks that
# both are in it). The page only ever shows what was computed before it was written: a third
# matching, or a new threshold for the matching itself, needs Python again.
# :::

# %% tags=["hide-cell"]
# Solution to exercise 3
import tempfile
from pathlib import Path

from recon.html_explorer import write_explorer_page

args = (cifar["lam"], cifar["margin"], cifar["task"].labels_train, CLASS_NAMES["cifar10"])
page = Path(tempfile.mkdtemp()) / "cifar10_pairs.html"
write_explorer_page(page, {
    "one-to-one": pair_items(cifar["ev"]["one_to_one"], *args),
    "paper matching": pair_items(cifar["ev"]["paper"], *args),
}, title="CIFAR-10: two matchings")
html = page.read_text()
print(page, f"{len(html) / 1e3:.0f} kB")
assert "one-to-one" in html and "paper matching" in html

# %% [markdown]
# :::{admonition} Solution 4
# :class: dropdown
#
# The reconstruction's multipliers are kept above `lambda_min` by a penalty and are only
# loosely tied to the true ones (the folded cell prints the rank correlation and the ratio
# of the medians, in the sum convention); a rank correlation near zero would say the
# reconstruction finds the images without finding their weights.
# :::

# %% tags=["hide-cell"]
# Solution to exercise 4
for name in TASKS:
    ev, rec = runs[name]["ev"]["one_to_one"], runs[name]["rec"]
    lam_true = torch.tensor(runs[name]["lam"])[ev.train_index]
    lam_rec = rec["lam"][ev.candidate_index] / len(rec["lam"])  # into the sum convention
    print(f"{name}: rank correlation {spearmanr(lam_true, lam_rec).statistic:.2f}, median "
          f"ratio reconstructed / true {float(lam_rec.median() / lam_true.median()):.2f}")

# %% [markdown]
# ## Summary
#
# - An item is one matched pair with everything needed to judge it: the picture, SSIM, NCC,
#   the training image's multiplier and margin.
# - `plot_pair_cards` draws items statically; `explorer_html` writes the best of them into a
#   self-contained page fragment (JSON, PNGs, plain JavaScript) that browses them with class
#   and SSIM filters and four sort orders without a kernel, in the HTML book, Jupyter and
#   Colab; `explore_pairs` does the same with ipywidgets, driven by a kernel, over any
#   evaluation.
# - The items are computed apart from the widgets and serialise to JSON: that separation is
#   what lets a static page work. What it cannot do is compute anything new.
# - Browsing confirms chapter 4: large-multiplier images are the likely ones to come back,
#   and the SSIM threshold misjudges some MNIST digits that the eye accepts.

# %% [markdown]
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# ```
