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
# # Implicit bias and the KKT conditions
#
# Why should the weights of a trained classifier contain its training set? This chapter builds
# the answer that {cite:t}`haim2022reconstructing` rest on. A ReLU network with a bias in its
# first layer only is *homogeneous* in its parameters; gradient descent on the logistic loss
# drives such a network, in direction, to a KKT point of a margin-maximisation problem
# {cite:p}`lyu2020gradient,ji2020directional`; and at a KKT point the parameters are a
# non-negative combination of the network's gradients at the training samples that sit on the
# margin. We check each step numerically, first on the paper's 784-1000-1000-1 network, then on
# a 2-D toy where the margin, the multipliers and the reconstruction can be drawn. The toy
# holds a surprise: on a small fully trained network the reconstruction fits the weights as
# well as the true training set does, yet lands on *other* points; the weights satisfy the KKT
# equations for many training sets at once. We measure why, and then build the 2-D network
# whose weights do pin the points down: a wide random first layer, kept fixed, under a trained
# output layer. From its weights alone the reconstruction finds every training point on the
# margin.
#
# ## Learning goals
#
# - State what a homogeneous network is, and check numerically that the paper's MLP (bias in
#   the first layer only) is homogeneous of degree $L$ while a network with hidden biases is
#   not.
# - Write the margin-maximisation problem, its KKT conditions (stationarity, feasibility,
#   complementary slackness) and the implicit-bias theorem of Lyu & Li and Ji & Telgarsky.
# - Derive the exact multipliers of a network trained with weight decay,
#   $\lambda_i = \sigma(-y_i\Phi(\theta;x_i))/(n\,\mathrm{wd})$, and use them and
#   `recon.kkt.kkt_diagnostic` to measure how close a trained network is to a KKT point.
# - Run the reconstruction of `recon.reconstruct` on a toy you can see, read its settings, and
#   judge its output honestly: a small stationarity loss is necessary, not sufficient.
# - Count equations against unknowns to predict when the reconstruction is identifiable, and
#   see it recover the margin samples of a random-features network.
#
# The symbols, residuals, scores and profiles used here are defined on the
# {doc}`notation` page.
#
# **Runtime** on 2 CPU cores, measured by `benchmarks/chapter_times.py` with the chapters run in
# order: quick profile {glue:text}`runtime_quick`; full profile {glue:text}`runtime_full`. The toy
# is the same in both profiles.
#
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

glue_runtime("01_implicit_bias")  # the runtime line above, from the committed timings

# %%
import copy
import dataclasses
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

from recon import toy
from recon.cache import cached
from recon.kkt import gradient_gram, kkt_diagnostic
from recon.models import MLP
from recon.notebook import glue
from recon.reconstruct import ReconConfig, reconstruct
from recon.train import TrainConfig, train

torch.set_num_threads(min(2, torch.get_num_threads()))


def scaled(model: nn.Module, c: float) -> nn.Module:
    """A copy of `model` with every parameter multiplied by c."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            p.mul_(c)
    return out


# %% [markdown]
# ## 1. Homogeneous networks
#
# Write $\Phi(\theta; x)$ for the network's single output logit, with all parameters stacked
# in $\theta$. The network is **homogeneous of degree $L$** when scaling every parameter by
# $c>0$ scales the output by $c^L$:
#
# $$
# \Phi(c\,\theta; x) = c^{L}\,\Phi(\theta; x) \qquad \text{for all } c > 0 \text{ and all } x.
# $$
#
# The paper's network is $\Phi(\theta;x) = W_3\,\mathrm{relu}(W_2\,\mathrm{relu}(W_1x+b_1))$,
# a D-1000-1000-1 MLP with a bias in the first layer only. Since
# $\mathrm{relu}(cz) = c\,\mathrm{relu}(z)$ for $c>0$, scaling $(W_1, b_1)$ by $c$ scales the
# first hidden layer by $c$, scaling $W_2$ multiplies the second by another $c$, and $W_3$ adds
# a third: $\Phi(c\theta;x)=c^3\Phi(\theta;x)$, so $L=3$, the number of linear layers. The
# first-layer bias is harmless because it is a weight on a constant input,
# $W_1x+b_1 = [W_1\; b_1]\,[x;1]$. A bias in a *later* layer is not: $W_2h+b_2$ scales as
# $c^2W_2h + c\,b_2$, a mix of two degrees (Exercise 1).
#
# Differentiating the identity in $c$ at $c=1$ gives Euler's identity, which we use below:
#
# $$
# \langle \theta, \nabla_\theta \Phi(\theta; x) \rangle = L\, \Phi(\theta; x).
# $$
#
# The smallest check: build the paper's network (`recon.models.MLP`, widths `(1000, 1000)`),
# scale its parameters, and compare on five real MNIST training images.

# %%
mnist = pipeline.task("mnist")
images = mnist.x_train[:5].double()

torch.manual_seed(0)
paper_net = MLP(mnist.image_shape, widths=(1000, 1000), init_scale=1e-2).double()
print(paper_net, "| degree L =", paper_net.depth)

with torch.no_grad():
    out = paper_net(images)
    for c in (0.5, 2.0, 3.0):
        ratio = scaled(paper_net, c)(images) / out
        print(f"c = {c}: Phi(c theta)/Phi(theta) = {ratio.numpy().round(6)}  (c^3 = {c**3})")

# Euler's identity <theta, grad Phi> = L Phi, for the first image
phi = paper_net(images[:1]).squeeze()
grads = torch.autograd.grad(phi, list(paper_net.parameters()))
euler = sum((p.detach() * g).sum() for p, g in zip(paper_net.parameters(), grads))
print(f"<theta, grad Phi> = {euler.item():.6e},  L * Phi = {3 * phi.item():.6e}")

# %% [markdown]
# The ratios are $c^3$ to the printed precision, and Euler's identity holds. The 2-D network
# we train below has one hidden layer of 100 units, so $L = 2$. The figure checks both over two
# decades of $c$: on log-log axes a homogeneous network is a straight line of slope $L$.

# %%
toy_x, toy_y = toy.alternating_arcs()
torch.manual_seed(0)
toy_net = MLP((2,), widths=(100,), init_scale=1e-2).double()

cs = np.logspace(-1, 1, 21)
fig, ax = plt.subplots(figsize=(4.6, 3.4))
for net, inputs, name in ((paper_net, images, "paper MLP 784-1000-1000-1"),
                          (toy_net, toy_x, "toy MLP 2-100-1")):
    with torch.no_grad():
        base = net(inputs).abs()
        rel = np.array([(scaled(net, c)(inputs).abs() / base).mean().item() for c in cs])
    ax.loglog(cs, rel, "o", ms=4, label=f"{name} (L = {net.depth})")
    ax.loglog(cs, cs**net.depth, "k-", lw=0.7)
ax.set_xlabel("scale $c$ of all parameters")
ax.set_ylabel(r"$|\Phi(c\theta;x)| \,/\, |\Phi(\theta;x)|$")
ax.set_title("Homogeneity: slopes 3 and 2 (lines: $c^L$)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **What to notice.** The points sit exactly on the lines $c^3$ and $c^2$. Nothing here depends
# on training: homogeneity is a property of the architecture. It is what makes "the direction
# of $\theta$" meaningful: the classifier $\operatorname{sign}\Phi(\theta;\cdot)$ is the same
# for every positive multiple of $\theta$, and only the scale of the outputs changes.
#
# ## 2. Margin maximisation and the KKT conditions
#
# Take a training set $\{(x_i, y_i)\}_{i=1}^n$ with labels $y_i\in\{-1,+1\}$. The **margin**
# of sample $i$ is $y_i\Phi(\theta;x_i)$ (positive when it is classified correctly). Because
# $\Phi$ is homogeneous, the margins can be made as large as we like by scaling $\theta$, so the
# quantity that measures how well $\theta$ separates the data is the **normalised margin**
#
# $$
# \gamma(\theta) = \frac{\min_i y_i \Phi(\theta; x_i)}{\|\theta\|^{L}},
# $$
#
# which does not change when $\theta$ is scaled. Maximising $\gamma$ is the same as solving
#
# $$
# \min_\theta \ \tfrac12 \|\theta\|^2 \quad \text{s.t.} \quad y_i \Phi(\theta; x_i) \ge 1
# \quad (i = 1,\dots,n), \tag{P}
# $$
#
# and rescaling: a solution of (P) has minimum margin 1 and the smallest norm that achieves it.
#
# **The implicit-bias theorem.** {cite:t}`lyu2020gradient` and {cite:t}`ji2020directional`:
# let $\Phi$ be homogeneous (and locally Lipschitz and definable, which ReLU networks are),
# trained by gradient flow on the logistic (or exponential) loss
# $\frac1n\sum_i \log(1+e^{-y_i\Phi(\theta;x_i)})$, and suppose that at some time every
# training sample is classified correctly with loss below $\log 2 / n$. Then
# $\|\theta(t)\|\to\infty$, a smoothed version of the normalised margin never decreases, and
# $\theta(t)/\|\theta(t)\|$ converges to the direction of a **KKT point** of (P). Nothing was
# asked of the optimiser about margins: the bias towards large margins is *implicit* in the
# loss and the dynamics. (It is a KKT point, not necessarily the global maximum of $\gamma$.)
#
# **The KKT conditions of (P).** $\theta$ is a KKT point when there are multipliers
# $\lambda_1,\dots,\lambda_n$ with
#
# $$
# \begin{aligned}
# &\theta = \sum_{i=1}^n \lambda_i\, y_i\, \nabla_\theta \Phi(\theta; x_i)
#   && \text{(stationarity)}\\
# &y_i \Phi(\theta; x_i) \ge 1 && \text{(primal feasibility)}\\
# &\lambda_i \ge 0 && \text{(dual feasibility)}\\
# &\lambda_i \big(y_i\Phi(\theta; x_i) - 1\big) = 0 && \text{(complementary slackness)}.
# \end{aligned}
# $$
#
# For a ReLU network $\Phi$ is not differentiable where a unit's pre-activation is exactly 0,
# and $\nabla_\theta\Phi$ is then read as an element of the Clarke subdifferential: the unit's
# derivative may be anything in $[0,1]$ for that sample.
#
# **Why this matters for privacy.** Complementary slackness says $\lambda_i = 0$ unless sample
# $i$ is *on the margin* ($y_i\Phi = 1$). Stationarity then says that the trained parameters
# are a known function of the margin samples only:
# $\theta = \sum_{i\,\in\,\text{margin}} \lambda_i y_i \nabla_\theta\Phi(\theta;x_i)$.
# Reconstruction tries to invert that function: find inputs $x_j$ and $\lambda_j\ge 0$ that
# reproduce $\theta$. Whether the inverse is unique is a separate question, which the toy
# below answers for one case.
#
# **With weight decay the equation holds exactly.** Training for finite time only approaches
# the KKT direction. {cite:t}`buzaglo2023deconstructing` showed that training with weight decay
# removes that limit (and makes models easier to reconstruct). Minimise
# $F(\theta) = \frac1n\sum_i \ell(q_i) + \frac{\mathrm{wd}}2\|\theta\|^2$ with
# $q_i = y_i\Phi(\theta;x_i)$ and $\ell(q) = \log(1+e^{-q})$, so $\ell'(q) = -\sigma(-q)$
# ($\sigma$ the logistic sigmoid). At a stationary point $\nabla F = 0$:
#
# $$
# \mathrm{wd}\,\theta = \frac1n\sum_i \sigma(-q_i)\, y_i \nabla_\theta\Phi(\theta; x_i)
# \quad\Longrightarrow\quad
# \theta = \sum_i \lambda_i y_i \nabla_\theta\Phi(\theta;x_i), \qquad
# \lambda_i = \frac{\sigma(-q_i)}{n\,\mathrm{wd}} > 0 .
# $$
#
# Stationarity now holds exactly, with multipliers we can compute from the margins
# (`recon.toy.weight_decay_multipliers`). Complementary slackness holds only approximately:
# every $\lambda_i$ is positive, but $\sigma(-q)\approx e^{-q}$, so a sample whose margin is
# larger by $\Delta$ gets a multiplier smaller by about $e^{-\Delta}$. And the residual of these
# exact multipliers, $\|\theta - \sum_i\lambda_iy_i\nabla\Phi_i\|^2/\|\theta\|^2
# = \|\nabla F\|^2 / (\mathrm{wd}\,\|\theta\|)^2$, measures how far training is from
# convergence. Two bookkeeping notes: for $L=2$ the multipliers do not change when $\theta$ is
# rescaled to minimum margin 1 (in general they scale by $c^{2-L}$ when $\theta$ scales by
# $c$); and the reconstruction loss averages over its $m$ candidates,
# $\theta \approx \frac1m\sum_j\lambda_j y_j\nabla\Phi(\theta;x_j)$, so a candidate that sits on
# training sample $i$ should carry $\lambda_j \approx m\,\lambda_i$.
#
# ## 3. A 2-D toy you can see
#
# The data: 30 points on a circle of radius 0.8, cut into six arcs of five that alternate
# between the classes (`recon.toy.alternating_arcs`). The two ends of every arc lie next to an
# arc of the other class; the middle of an arc lies far from it. So we expect twelve samples on
# the margin (two per arc) and eighteen well inside their class.
#
# The model: `MLP((2,), widths=(100,))`, one hidden layer of 100 ReLU units with a first-layer
# bias, homogeneous of degree $L=2$, first layer initialised at scale $10^{-2}$. Training:
# `recon.train.train`, full-batch gradient descent on the logistic loss in float64, learning
# rate 0.5, 8,000 epochs, **weight decay $10^{-3}$**. We use weight decay so that stationarity
# holds exactly at convergence and we can compare the measured multipliers with the formula
# above; a twin run without weight decay shows the paper's setting, where it only holds in the
# limit. Each run logs the KKT residual every 400 epochs through the trainer's `callback`.

# %%
n = len(toy_x)
WD = 1e-3
TRAIN = dict(widths=(100,), init_scale=1e-2, lr=0.5, epochs=8000, dtype="float64", log_every=50)
KKT_EVERY = 400
DATA = dict(n_arcs=6, per_arc=5, radius=0.8, jitter=0.5, seed=0)


def train_toy(weight_decay: float) -> dict:
    """Train the toy MLP (cached): returns its state_dict and training history."""
    cfg = TrainConfig(**TRAIN, weight_decay=weight_decay)
    x, y = toy.alternating_arcs(**DATA)

    def callback(epoch, model):
        if epoch % KKT_EVERY:
            return None
        logs = {"kkt_epoch": epoch, "kkt_nnls": kkt_diagnostic(model, x, y).unexplained}
        if weight_decay > 0:
            lam, _ = toy.weight_decay_multipliers(model, x, y, weight_decay)
            logs["kkt_exact"] = toy.stationarity_residual(model, x, y, lam)
        return logs

    def compute() -> dict:
        torch.manual_seed(0)
        model = MLP((2,), cfg.widths, init_scale=cfg.init_scale).double()
        res = train(model, x, y, cfg, progress=False, callback=callback)
        return {"state_dict": {k: v.clone() for k, v in model.state_dict().items()},
                "history": res.history, "wall_time": res.wall_time}

    out = cached("toy-train", {"chapter": 1, "data": DATA, "train": cfg.to_dict(),
                               "kkt_every": KKT_EVERY}, compute)
    model = MLP((2,), cfg.widths, init_scale=None).double()
    model.load_state_dict(out["state_dict"])
    out["model"] = model
    return out


run_wd, run_plain = train_toy(WD), train_toy(0.0)
net, net_plain = run_wd["model"], run_plain["model"]
h_wd, h_plain = run_wd["history"], run_plain["history"]
for name, run in (("weight decay", run_wd), ("no weight decay", run_plain)):
    h = run["history"]
    print(f"{name:16s} train error {h['train_error'][-1]:.2f}  loss {h['loss'][-1]:.3g}  "
          f"||theta||^2 {h['param_norm2'][-1]:.1f}  normalised margin "
          f"{h['normalized_margin'][-1]:.4f}  ({run['_meta']['wall_time_s']:.1f} s to compute, "
          f"from cache: {run['_meta']['from_cache']})")

# %%
fig, axes = plt.subplots(1, 2, figsize=(8.4, 4.0))
toy.plot_decision(net, toy_x, toy_y, ax=axes[0], title="trained with weight decay 1e-3")
toy.plot_decision(net_plain, toy_x, toy_y, ax=axes[1], title="trained without weight decay")
fig.tight_layout()
plt.show()

# %% [markdown]
# Both networks separate the six arcs with boundaries that run between neighbouring arcs, and
# the two boundaries are similar: weight decay changed little in *what* was learned, and a lot
# in how far the parameters travel (next figure).
#
# The implicit bias shows in the training curves. Without weight decay, $\|\theta\|^2$ keeps
# growing and the normalised margin $\gamma(\theta)$ keeps climbing, slowly, as the theorem
# says. With weight decay the norm stops growing and $\gamma$ settles: the regularised problem
# has a finite solution. The right panel is the KKT residual: the best non-negative
# multipliers at the true training points (`kkt_diagnostic`, solid) and, for the weight-decay
# run, the exact multipliers $\sigma(-q_i)/(n\,\mathrm{wd})$ (dashed).

# %%
fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
for h, name, color in ((h_wd, "weight decay 1e-3", "C0"), (h_plain, "no weight decay", "C1")):
    axes[0].plot(h["epoch"], h["normalized_margin"], color=color, label=name)
    axes[1].semilogy(h["epoch"], h["param_norm2"], color=color, label=name)
    axes[2].semilogy(h["kkt_epoch"], h["kkt_nnls"], "o-", ms=3, color=color,
                     label=f"{name}: best multipliers")
axes[2].semilogy(h_wd["kkt_epoch"], h_wd["kkt_exact"], "s--", ms=3, color="C0",
                 label=r"weight decay: exact $\lambda_i$")
axes[0].set_ylim(bottom=0)
axes[0].set_ylabel(r"normalised margin $\gamma(\theta)$")
axes[1].set_ylabel(r"$\|\theta\|^2$")
axes[2].set_ylabel("unexplained fraction of $\\|\\theta\\|^2$")
for ax in axes:
    ax.set_xlabel("epoch")
axes[0].legend(fontsize=8)
axes[2].legend(fontsize=7)
fig.tight_layout()
plt.show()

gamma_plain = np.array(h_plain["normalized_margin"])
epochs = np.array(h_plain["epoch"])
glue("gamma_plain_mid", float(gamma_plain[epochs == 2000][0]), display=False)
glue("gamma_plain_end", float(gamma_plain[-1]), display=False)
glue("gamma_wd_end", float(h_wd["normalized_margin"][-1]), display=False)
glue("norm2_plain_end", float(h_plain["param_norm2"][-1]), display=False)
glue("norm2_wd_end", float(h_wd["param_norm2"][-1]), display=False)
glue("kkt_plain_end", float(h_plain["kkt_nnls"][-1]), display=False)
glue("kkt_wd_end", float(h_wd["kkt_nnls"][-1]), display=False)
glue("kkt_exact_end", float(h_wd["kkt_exact"][-1]), display=False)

# %% [markdown]
# **What to notice.** Without weight decay the normalised margin is still rising at the end
# ({glue:text}`gamma_plain_mid:.4f` at epoch 2,000, {glue:text}`gamma_plain_end:.4f` at 8,000)
# while $\|\theta\|^2$ grows to {glue:text}`norm2_plain_end:.0f`; the best multipliers leave
# {glue:text}`kkt_plain_end:.1e` of $\|\theta\|^2$ unexplained. With weight decay $\|\theta\|^2$
# settles at {glue:text}`norm2_wd_end:.1f` and $\gamma$ at {glue:text}`gamma_wd_end:.4f`, and
# the best multipliers explain all but
# {glue:text}`kkt_wd_end:.1e` of it. The exact multipliers $\sigma(-q_i)/(n\,\mathrm{wd})$ leave
# more ({glue:text}`kkt_exact_end:.1e`) and stop improving after a few thousand epochs: several
# training points sit exactly on the kink of a hidden unit, where gradient descent keeps
# switching that unit on and off from one step to the next, so the gradient never quite
# vanishes. That is the Clarke-subdifferential case of Section 2, seen in practice; the best
# non-negative multipliers absorb it by splitting such a point's weight differently.
#
# ## 4. The KKT conditions, measured
#
# Now read off the multipliers of the weight-decay network and see which samples carry the
# weight. Two sources: the exact formula $\lambda_i=\sigma(-q_i)/(n\,\mathrm{wd})$, and
# `kkt_diagnostic`, which knows nothing about weight decay and solves
# $\min_{\lambda\ge0}\|\theta-\sum_i\lambda_iy_i\nabla\Phi_i\|^2$ (non-negative least squares
# on the Gram matrix of the per-sample gradients).

# %%
lam, margin = toy.weight_decay_multipliers(net, toy_x, toy_y, WD)
diag = kkt_diagnostic(net, toy_x, toy_y)
K, _, _ = gradient_gram(net, toy_x, toy_y)
eig = torch.linalg.eigvalsh(K)
gram_rank = int((eig > eig.max() * 1e-10).sum())

on_margin = lam >= 0.1 * lam.max()          # "margin samples": within 10x of the largest lambda
order = torch.argsort(lam, descending=True)
print(f"exact multipliers: residual {toy.stationarity_residual(net, toy_x, toy_y, lam):.2e}")
print(f"kkt_diagnostic   : residual {diag.unexplained:.2e}, "
      f"{int((diag.lam > 0).sum())} of {n} multipliers positive")
print(f"Gram matrix of the {n} per-sample gradients has rank {gram_rank}")
print(f"{int(on_margin.sum())} samples with lambda >= 10% of the largest; margins "
      f"{margin[on_margin].min():.2f}..{margin[on_margin].max():.2f} vs "
      f"{margin[~on_margin].min():.2f}..{margin[~on_margin].max():.2f} for the others")
print("lambda (exact, sorted):", np.array2string(lam[order].numpy(), precision=3))

glue("n_margin", int(on_margin.sum()), display=False)
glue("lam_ratio", float(lam[on_margin].min() / lam[~on_margin].max()), display=False)
glue("lam_share", float(lam[on_margin].sum() / lam.sum()), display=False)
glue("margin_on_max", float(margin[on_margin].max()), display=False)
glue("margin_off_min", float(margin[~on_margin].min()), display=False)
glue("gram_rank", gram_rank, display=False)
glue("diag_unexplained", diag.unexplained, display=False)
glue("diag_offmargin_share", float(diag.lam[~on_margin].sum() / diag.lam.sum()), display=False)
# the norm of a KKT point (notation page): ||theta||^2 = L sum_i lambda_i q_i
theta2_toy = net.theta_norm2()
identity = net.degree * float((lam * margin).sum())
print(f"||theta||^2 = {theta2_toy:.4f},  L * sum lambda_i q_i = {identity:.4f}  "
      f"(L = {net.degree})")
glue("norm_identity_gap", 100 * abs(identity - theta2_toy) / theta2_toy, display=False)
assert abs(identity - theta2_toy) < 0.01 * theta2_toy, "the norm identity's prose: reword"

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), gridspec_kw={"width_ratios": [1.15, 1]})
toy.plot_multipliers(net, toy_x, toy_y, lam, margin, ax=axes[0],
                     title=r"marker area $\propto \lambda_i$, colour = margin")
q = torch.linspace(float(margin.min()) - 0.2, float(margin.max()) + 0.2, 200)
axes[1].semilogy(q, torch.sigmoid(-q) / (n * WD), "k-", lw=0.8,
                 label=r"$\sigma(-q)/(n\,\mathrm{wd})$")
axes[1].semilogy(margin, lam, "o", color="C0", label=r"exact $\lambda_i$")
pos = diag.lam > 0
axes[1].semilogy(margin[pos], diag.lam[pos], "x", color="C3", label="kkt_diagnostic (NNLS)")
axes[1].axvspan(float(margin[on_margin].min()) - 0.1, float(margin[on_margin].max()) + 0.1,
                color="0.9", zorder=0, label="margin samples")
axes[1].set_xlabel(r"margin $q_i = y_i\,\Phi(\theta; x_i)$")
axes[1].set_ylabel(r"multiplier $\lambda_i$")
axes[1].legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# **What to notice.** The picture is the one the theory draws. The
# {glue:text}`n_margin` samples at the ends of the arcs have the smallest margins (at most
# {glue:text}`margin_on_max:.2f`) and large multipliers; the samples in the middle of an arc
# have margins of at least {glue:text}`margin_off_min:.2f` and multipliers smaller by a factor
# of at least {glue:text}`lam_ratio:.0f`: the margin samples carry {glue:text}`lam_share:.1%`
# of the total weight. On the right, every exact multiplier
# lies on the curve $\sigma(-q)/(n\,\mathrm{wd})$: that is just the formula, but the residual
# printed above says these multipliers do reproduce $\theta$. A second check comes free: the
# inner product of the stationarity equation with $\theta$ gives
# $\|\theta\|^2 = L\sum_i\lambda_i q_i$ for an $L$-homogeneous network (derived on the
# {doc}`notation` page), and with these multipliers the two sides differ by
# {glue:text}`norm_identity_gap:.2f`%.
#
# The crosses are a warning. `kkt_diagnostic` finds multipliers that explain $\theta$ even
# better (all but {glue:text}`diag_unexplained:.1e`), yet they put
# {glue:text}`diag_offmargin_share:.0%` of their weight on off-margin samples. The 30 gradient
# vectors $\nabla_\theta\Phi(\theta;x_i)$ span only a {glue:text}`gram_rank`-dimensional
# space, so many multiplier vectors fit $\theta$ about equally well, and non-negative least
# squares returns one with few non-zeros, not the one training produced. The stationarity
# equation does not pin down the multipliers of *this* network even when the training points
# are given. Keep that in mind for the next section, where the points are not given.
#
# ## 5. Reconstructing the points from the weights
#
# The attack of {cite:t}`haim2022reconstructing` forgets the training set and keeps only
# $\theta$ (the paper's Figure 2 shows it on a two-dimensional data set, as this section
# does). It optimises $m$ candidate points $x_j$ with fixed labels $y_j$ (half $-1$, half
# $+1$) and multipliers $\lambda_j$ to satisfy stationarity:
#
# $$
# \mathcal L = \underbrace{\Big\|\theta - \frac1m\nabla_\theta\sum_{j=1}^m \lambda_j y_j
# \Phi(\theta; x_j)\Big\|^2}_{L_\text{stat}}
# + 5\sum_j \mathrm{relu}(\lambda_\text{min} - \lambda_j)^2
# + \sum_{j,k} \mathrm{relu}(|x_{jk}| - 1)^2 .
# $$
#
# `recon.reconstruct.reconstruct` implements it; here is what each setting means for the toy:
#
# - `n_candidates=60` ($m = 2n$, as in the paper): we do not know which samples are on the
#   margin, so we look for more candidates than there can be margin samples.
# - `box="paper"`: the last penalty keeps every coordinate in $[-1, 1]$, where the points live.
# - `init_scale=0.5`: candidates start as $\mathcal N(0, 0.5^2)$ noise spread over the box.
#   Starting them near the origin, as the paper does for images, leaves them stuck here: in our
#   runs the loss did not move, because the trained network is flat around the origin.
# - `alpha=300`: the loss differentiates $\nabla_\theta\Phi$ with respect to $x$, and the ReLU's
#   step derivative has zero derivative itself, so the network is evaluated with an exact
#   forward pass and a derivative $\sigma(300z)$: a gate that differs from the step function
#   only within about 0.01 of a kink (Exercise 4 varies it).
# - `lambda_min=5`, `lr_lambda=0.3`: the multipliers the fit needs are in the hundreds
#   ($m\lambda_i$, Section 2); $\lambda_\text{min}$ only stops candidates from switching off,
#   and a larger learning rate lets Adam move $\lambda_j$ that far in a few hundred steps.
# - `optimizer="adam"`, `lr_x=0.01`, `steps=6000`: Adam on the candidates rather than the
#   paper's SGD with momentum (on images it converges far faster, Chapter 3); 6,000 steps take
#   seconds here.
#
# We count a sample as **recovered** when a candidate of its label lies within 0.05 of it, a
# small fraction of the spacing between neighbouring points on the circle.

# %%
m = 2 * n
RECON = dict(n_candidates=m, steps=6000, lr_x=0.01, lr_lambda=0.3, init_scale=0.5,
             lambda_min=5.0, alpha=300.0, optimizer="adam", box="paper", dtype="float64",
             seed=0, log_every=25)
RADIUS = 0.05


def reconstruct_toy(cfg: ReconConfig, x_init=None, lam_init=None, y_init=None) -> dict:
    """Run (or load) a reconstruction against the weight-decay toy network."""
    key = {"chapter": 1, "data": DATA, "train": TrainConfig(**TRAIN, weight_decay=WD).to_dict(),
           "recon": cfg.to_dict(), "start": "random" if x_init is None else "true points"}

    def compute() -> dict:
        res = reconstruct(net, cfg, x_init=x_init, lam_init=lam_init, y=y_init, progress=False)
        return {"x": res.x, "lam": res.lam, "y": res.y, "history": res.history}

    return cached("toy-recon", key, compute)


rec = reconstruct_toy(ReconConfig(**RECON))
dist, idx = toy.nearest_same_label(toy_x, toy_y, rec["x"], rec["y"])
recovered = dist < RADIUS
chance = 1 - (1 - math.pi * RADIUS**2 / 4) ** (m // 2)
fit_candidates = kkt_diagnostic(net, rec["x"], rec["y"]).unexplained
print(f"stationarity loss / ||theta||^2 at the end: {rec['history']['stat_rel'][-1]:.2e}")
print(f"best multipliers at the candidates leave {fit_candidates:.2e} unexplained "
      f"(at the true points: {diag.unexplained:.2e})")
print(f"margin samples recovered:     {int(recovered[on_margin].sum())} / {int(on_margin.sum())}")
print(f"off-margin samples recovered: {int(recovered[~on_margin].sum())} / "
      f"{int((~on_margin).sum())}   (chance per sample: {chance:.1%})")
print("distance of each margin sample to its nearest candidate:",
      np.array2string(dist[on_margin].numpy(), precision=2))

glue("stat_rel_end", rec["history"]["stat_rel"][-1], display=False)
glue("fit_candidates", fit_candidates, display=False)
glue("rec_margin", int(recovered[on_margin].sum()), display=False)
glue("rec_off", int(recovered[~on_margin].sum()), display=False)
glue("n_off", int((~on_margin).sum()), display=False)
glue("median_margin_dist", float(dist[on_margin].median()), display=False)
glue("chance", chance, display=False)
glue("spacing", float(torch.cdist(toy_x, toy_x).fill_diagonal_(9).min(1).values.median()),
     display=False)

# %% [markdown]
# The optimiser did its job, and the attack still failed. The candidates reproduce $\theta$ up
# to {glue:text}`stat_rel_end:.1e` of its squared norm (and the loss is still falling), and
# non-negative least squares *at the candidate positions* explains $\theta$ just as well as at
# the true training points ({glue:text}`fit_candidates:.1e` against
# {glue:text}`diag_unexplained:.1e`). But {glue:text}`rec_margin` of the {glue:text}`n_margin`
# margin samples have a candidate within 0.05, and the median margin sample is
# {glue:text}`median_margin_dist:.2f` from its nearest candidate of its class, while
# neighbouring training points are typically {glue:text}`spacing:.2f` apart.
# {glue:text}`rec_off` of the {glue:text}`n_off` off-margin samples do have a candidate that
# close; for calibration, the chance that one of 30 candidates scattered uniformly over the box
# lands within 0.05 of a given point is {glue:text}`chance:.0%`.
#
# As a positive control we start the same optimisation *at the answer*: two copies of every
# training point, each with half its exact multiplier $m\lambda_i/2$.

# %%
ctrl_cfg = ReconConfig(**{**RECON, "steps": 2000})
x0 = torch.cat([toy_x, toy_x])
y0 = torch.cat([toy_y, toy_y])
lam0 = torch.cat([lam, lam]) * m / 2
ctrl = reconstruct_toy(ctrl_cfg, x_init=x0, lam_init=lam0, y_init=y0)
drift = (ctrl["x"] - x0).norm(dim=1)
drift_margin = torch.cat([on_margin, on_margin])
print(f"control: stationarity loss {ctrl['history']['stat_rel'][0]:.2e} at the true points, "
      f"{ctrl['history']['stat_rel'][-1]:.2e} after {ctrl_cfg.steps} steps")
print(f"control: margin-sample copies moved at most {drift[drift_margin].max():.3f}, "
      f"off-margin copies up to {drift[~drift_margin].max():.3f}")

glue("ctrl_start", ctrl["history"]["stat_rel"][0], display=False)
glue("ctrl_end", ctrl["history"]["stat_rel"][-1], display=False)
glue("ctrl_drift_margin", float(drift[drift_margin].max()), display=False)
glue("ctrl_drift_off", float(drift[~drift_margin].max()), display=False)

# %%
fig = plt.figure(figsize=(13, 4.3))
gs = fig.add_gridspec(1, 3, width_ratios=[1, 1, 0.9])
ax0, ax1, ax2 = fig.add_subplot(gs[0]), fig.add_subplot(gs[1]), fig.add_subplot(gs[2])
toy.plot_candidates(net, toy_x, toy_y, rec["x"], rec["y"], rec["lam"], highlight=on_margin,
                    ax=ax0, title="from random candidates")
toy.plot_candidates(net, toy_x, toy_y, ctrl["x"], ctrl["y"], ctrl["lam"],
                    highlight=on_margin, ax=ax1, title="control: started at the true points")
ax2.semilogy(rec["history"]["step"], rec["history"]["stat_rel"], label="random start")
ax2.semilogy(ctrl["history"]["step"], ctrl["history"]["stat_rel"], label="started at the truth")
ax2.axhline(diag.unexplained, color="k", lw=0.7, ls=":", label="NNLS at the true points")
ax2.set_xlabel("reconstruction step")
ax2.set_ylabel(r"$L_\mathrm{stat} / \|\theta\|^2$")
ax2.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# In the first two panels filled markers are the margin samples and open ones the others;
# crosses are candidates (area $\propto\lambda_j$), and a line joins each margin sample to its
# nearest candidate of the same class.
#
# **What to notice.** Started at the true points, the loss begins at
# {glue:text}`ctrl_start:.1e` and falls to {glue:text}`ctrl_end:.1e`; the copies of the margin
# samples move by at most {glue:text}`ctrl_drift_margin:.3f`, while off-margin copies, whose
# multipliers are small, wander up to {glue:text}`ctrl_drift_off:.2f`. So the training set *is*
# a solution of the reconstruction problem, and a stable one for the margin samples. From random
# candidates the optimiser finds a *different* solution, just as good by the only measure the
# attacker has. The random-start candidates sit in the right class regions but spread over
# them, mostly inside the circle rather than on it. The weights of this network
# satisfy the stationarity equation for (at least) two quite different training sets: the
# reconstruction is not identifiable here, and tuning the optimiser cannot fix that: both
# sets are solutions, and the loss has no way to prefer the true one.
#
# **Why two dimensions are hard: count the equations.** For a one-hidden-layer network
# $\Phi(\theta;x)=\sum_k v_k\,\mathrm{relu}(w_k\cdot x+b_k)$, the stationarity equation read
# unit by unit is
#
# $$
# \frac{1}{v_k}\begin{bmatrix} w_k \\ b_k\end{bmatrix}
# = \sum_{i\,:\,w_k\cdot x_i + b_k > 0} \lambda_i\, y_i \begin{bmatrix} x_i \\ 1\end{bmatrix}
# \qquad\text{for every hidden unit } k
# $$
#
# (the equation for $v_k$ follows from this one). Each unit therefore reveals one 3-vector: a
# signed, weighted sum of the lifted points $[x_i;1]$ it is active on. Units that point the same
# way are active on the same points and reveal the same vector. And inside one linear piece of
# the network, $\nabla_\theta\Phi(\theta;x)$ is affine in $x$, so two candidates there act
# exactly like one candidate at their $\lambda$-weighted mean: points can be split, moved and
# merged within a piece at no cost. Weight decay makes the trained network use few distinct
# units:

# %%
k_units = toy.distinct_neurons(net)
print(f"{k_units} distinct first-layer units (of 100) -> about {3 * k_units} numbers that "
      f"constrain the candidates; the reconstruction has {3 * m} unknowns "
      f"({m} candidates x (2 coordinates + 1 multiplier))")
paper_units = 1000
print(f"paper MLP on MNIST: {paper_units} first-layer units x 785 numbers each, plus a "
      f"1000 x 1000 second layer; {2 * 500} candidates x 785 unknowns")
glue("k_units", k_units, display=False)
glue("k_numbers", 3 * k_units, display=False)
glue("unknowns", 3 * m, display=False)

# %% [markdown]
# The 100 hidden units of the toy collapse onto {glue:text}`k_units` distinct ones, so
# $\theta$ carries about {glue:text}`k_numbers` informative numbers for {glue:text}`unknowns`
# unknowns: many training sets fit. In the paper's setting each first-layer unit reveals a
# 785-dimensional vector, a weighted sum of the images it is active on, and the second layer
# adds a million more numbers. The lesson so far is the one Section 4 already hinted at:
# **a small stationarity loss says the candidates are *a* solution, not *the* training set.**
# Every reconstruction in this book is therefore judged by comparing with the real training
# images, never by its loss alone. The counting also says what would make the attack work:
# weights that carry many more equations than the margin samples have unknowns. The next
# section builds such a network in two dimensions.
#
# ## 6. When the weights say enough: a wide random first layer
#
# Give the toy a first layer of 1,000 ReLU units with random weights and biases drawn from
# $\mathcal N(0,1)$, and **freeze** it: only the output weights $v\in\mathbb R^{1000}$ are
# trained (`MLP(..., frozen=(0,))`). The network
# $\Phi(v;x)=\sum_k v_k\,\mathrm{relu}(w_k\cdot x+b_k) = v\cdot\phi(x)$ is homogeneous of
# degree 1 in the trained parameters, so everything in Sections 2-4 applies with
# $\theta = v$: it is a linear classifier on random features $\phi(x)$, and gradient descent
# on the logistic loss converges in direction to the maximum-margin (hard-SVM) solution in
# feature space {cite:p}`soudry2018implicit`. Its stationarity equation reads
#
# $$
# v = \sum_i \lambda_i\,y_i\,\phi(x_i),
# $$
#
# one equation per random unit: 1,000 numbers, against 3 unknowns per margin sample. The
# frozen layer is part of the published weights, so the attacker knows $\phi$. The random
# units do not collapse (they are not trained), and every unit has its own kink line, so the
# features of different points differ. We train $v$ with weight decay $3\cdot10^{-3}$
# (learning rate 0.02, 20,000 epochs, float64; $v$ starts at zero) on the same 30 points, and
# run the same reconstruction as in Section 5, with three changes that follow from the
# numbers: the multipliers are now up to {glue:text}`rf_mlam_max:.0f` ($m\lambda_i$), so
# `lr_lambda=0.05` lets them grow within the run and `lambda_min=0.3` keeps candidates alive
# without forcing any onto a point; and a steep gate, `alpha=1000`, since $\phi$ itself (not
# its derivative) enters the equation and needs no smoothing.

# %%
RF_WD = 3e-3
RF_TRAIN = dict(widths=(1000,), init_scale=1.0, lr=0.02, epochs=20000, dtype="float64",
                log_every=500)
RF_RECON = dict(n_candidates=m, steps=3000, lr_x=0.01, lr_lambda=0.05, init_scale=0.5,
                lambda_min=0.3, alpha=1000.0, optimizer="adam", box="paper", dtype="float64",
                seed=0, log_every=25, subspace_tol=0.0)  # the first layer is frozen


def random_features_net() -> MLP:
    """The toy's random-features network: frozen N(0, 1) first layer, output layer at zero."""
    torch.manual_seed(0)
    return MLP((2,), (1000,), init_scale=1.0, deep_init_scale=0.0, frozen=(0,)).double()


def train_rf() -> dict:
    cfg = TrainConfig(**RF_TRAIN, weight_decay=RF_WD)

    def compute() -> dict:
        model = random_features_net()
        res = train(model, toy_x, toy_y, cfg, progress=False)
        return {"state_dict": {k: v.clone() for k, v in model.state_dict().items()},
                "history": res.history}

    out = cached("toy-train", {"chapter": 1, "data": DATA, "train": cfg.to_dict(),
                               "model": "random features, frozen first layer"}, compute)
    model = random_features_net()
    model.load_state_dict(out["state_dict"])
    out["model"] = model
    return out


rf_run = train_rf()
rf_net = rf_run["model"]
rf_lam, rf_margin = toy.weight_decay_multipliers(rf_net, toy_x, toy_y, RF_WD)
rf_on = rf_lam >= 0.1 * rf_lam.max()
rf_resid = toy.stationarity_residual(rf_net, toy_x, toy_y, rf_lam)


def reconstruct_rf(seed: int) -> dict:
    cfg = ReconConfig(**{**RF_RECON, "seed": seed})
    key = {"chapter": 1, "data": DATA, "model": "random features, frozen first layer",
           "train": TrainConfig(**RF_TRAIN, weight_decay=RF_WD).to_dict(),
           "recon": cfg.to_dict()}

    def compute() -> dict:
        res = reconstruct(rf_net, cfg, progress=False)
        return {"x": res.x, "lam": res.lam, "y": res.y, "history": res.history}

    return cached("toy-recon", key, compute)


rf_recs = [reconstruct_rf(seed) for seed in (0, 1, 2)]
rf_found = []
for seed, r in enumerate(rf_recs):
    d, _ = toy.nearest_same_label(toy_x, toy_y, r["x"], r["y"])
    rf_found.append((int((d[rf_on] < RADIUS).sum()), int((d[~rf_on] < RADIUS).sum()),
                     float(d[rf_on].max())))
    print(f"seed {seed}: L_stat/||v||^2 = {r['history']['stat_rel'][-1]:.1e}; margin samples "
          f"recovered {rf_found[-1][0]}/{int(rf_on.sum())} (farthest "
          f"{rf_found[-1][2]:.3f} away), off-margin {rf_found[-1][1]}/{int((~rf_on).sum())}")
print(f"train error {rf_run['history']['train_error'][-1]:.2f}; exact multipliers leave "
      f"{rf_resid:.1e} of ||v||^2 unexplained; {int(rf_on.sum())} margin samples")

glue("rf_margin_n", int(rf_on.sum()), display=False)
glue("rf_resid", rf_resid, display=False)
glue("rf_found0", rf_found[0][0], display=False)
glue("rf_far0", rf_found[0][2], display=False)
glue("rf_off0", rf_found[0][1], display=False)
glue("rf_found_all", ", ".join(f"{a}" for a, _, _ in rf_found), display=False)
glue("rf_lam_ratio", float(rf_lam[rf_on].min() / rf_lam[~rf_on].max()), display=False)
glue("rf_mlam_max", float(m * rf_lam.max()), display=False)
glue("rf_stat0", rf_recs[0]["history"]["stat_rel"][-1], display=False)

# %%
fig = plt.figure(figsize=(13, 4.4))
gs = fig.add_gridspec(1, 3, width_ratios=[1.15, 1, 1])
toy.plot_multipliers(rf_net, toy_x, toy_y, rf_lam, rf_margin, ax=fig.add_subplot(gs[0]),
                     title=r"random features: marker area $\propto \lambda_i$")
toy.plot_candidates(rf_net, toy_x, toy_y, rf_recs[0]["x"], rf_recs[0]["y"],
                    rf_recs[0]["lam"], highlight=rf_on, ax=fig.add_subplot(gs[1]),
                    title="reconstruction from random candidates")
ax = fig.add_subplot(gs[2])
for seed, r in enumerate(rf_recs):
    ax.semilogy(r["history"]["step"], r["history"]["stat_rel"], label=f"seed {seed}")
ax.set_xlabel("reconstruction step")
ax.set_ylabel(r"$L_\mathrm{stat} / \|v\|^2$")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %% [markdown]
# **What to notice.** Training leaves {glue:text}`rf_resid:.0e` of $\|v\|^2$ unexplained by
# the exact multipliers, and the picture of Section 4 repeats: the
# {glue:text}`rf_margin_n` arc ends carry the weight (their multipliers are at least
# {glue:text}`rf_lam_ratio:.0f` times those of the arc middles). This time the reconstruction
# finds them. From random candidates spread over the box, {glue:text}`rf_found0` of the
# {glue:text}`rf_margin_n` margin samples end with a candidate of their class within 0.05
# (the farthest is {glue:text}`rf_far0:.3f` away), drawn as a large cross on each filled
# marker; the three random seeds recover {glue:text}`rf_found_all` of them. Candidates also
# land on {glue:text}`rf_off0` of the 18 off-margin samples: with weight decay every sample
# keeps a small positive multiplier, and the candidates that `lambda_min` keeps alive settle
# where they cost least. The stationarity loss falls to
# {glue:text}`rf_stat0:.0e` of $\|v\|^2$: not lower than in Section 5, but now the solution
# it finds is the training set, because 1,000 equations leave no room for another.
#
# This is the regime of the paper: there the first layer alone has 1,000 units that each
# reveal a 785- or 3,073-dimensional vector, far more numbers than the margin samples have
# pixels, and the attack recovers real images (Chapters 3 and 4). Between the two toys of this
# chapter the rule to remember: **the attack needs the weights to carry more equations than
# the margin samples have unknowns, and units that are not collapsed onto a few directions.**
# Large, over-parameterised networks are the vulnerable ones.
#
# ## Exercises
#
# **1. Hidden biases break homogeneity.** Build
# `nn.Sequential(nn.Linear(2, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 1))`
# (PyTorch gives every layer a bias), scale all its parameters by $c$ and plot
# $|\Phi(c\theta;x)|/|\Phi(\theta;x)|$ against $c$ as in Section 1. Is it a power law? What
# does `MLP.from_sequential` say about this network?
#
# :::{admonition} Solution 1
# :class: dropdown
# The curve is not a straight line on log-log axes (the folded cell below plots it beside
# $c^3$ and prints its local slopes). For $c>1$ it approaches slope 3 (the paths through all
# three weight matrices dominate); for $c<1$ the biases of the later layers, whose terms have
# lower degree, take over, and the ratio flattens (terms of different degree can even
# cancel). Without homogeneity the normalised margin is not scale-invariant and the
# implicit-bias theorem of Section 2 does not apply. `from_sequential` still accepts the
# network, but marks it `all_biases`: with weight decay a stationary point of the
# regularised loss still gives the stationarity equation (with the biases among the
# parameters), so the reconstruction can run, but only at such a point, not at the
# direction gradient descent converges to without weight decay. A network with biases in
# some hidden layers and not others is refused with an `UnsupportedModelError`.
# :::

# %% tags=["hide-cell"]
# Solution to exercise 1
from recon.models import UnsupportedModelError

torch.manual_seed(0)
seq = nn.Sequential(nn.Linear(2, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(),
                    nn.Linear(50, 1)).double()
with torch.no_grad():
    base = seq(toy_x).abs()
    rel = np.array([(scaled(seq, c)(toy_x).abs() / base).mean().item() for c in cs])
slopes = np.diff(np.log(rel)) / np.diff(np.log(cs))
fig, ax = plt.subplots(figsize=(4.2, 3.2))
ax.loglog(cs, rel, "o", label="biases in every layer")
ax.loglog(cs, cs**3, "k-", label="$c^3$")
ax.set_xlabel("$c$")
ax.set_ylabel(r"$|\Phi(c\theta;x)|\,/\,|\Phi(\theta;x)|$")
ax.legend()
plt.show()
print("local slopes from c = 0.1 to 10:", np.array2string(slopes, precision=2))
assert slopes[-1] > 2.5 and slopes.max() - slopes.min() > 0.5  # not one power law
converted = MLP.from_sequential(seq, (2,))
with torch.no_grad():
    torch.testing.assert_close(converted(toy_x).squeeze(), seq(toy_x).squeeze())
print("from_sequential: all_biases =", converted.all_biases)
assert converted.all_biases
with torch.no_grad():
    seq[2].bias = None  # a bias in the first and last layers, none in the middle
try:
    MLP.from_sequential(seq, (2,))
    raise AssertionError("from_sequential accepted biases in some hidden layers only")
except UnsupportedModelError as e:
    print(e)

# %% [markdown]
# **2. Reconstruction without weight decay.** The network `net_plain` was trained without
# weight decay, so there is no formula for its multipliers: take the best ones,
# `L = kkt_diagnostic(net_plain, toy_x, toy_y).lam * m`. Run the positive control,
# `reconstruct(net_plain, cfg, x_init=x0, lam_init=torch.cat([L, L]) / 2, y=y0,
# progress=False)`, and a random start, `reconstruct(net_plain, cfg, progress=False)`, with
# `cfg = ReconConfig(**RECON)` (check that `lambda_min` is below the multipliers of the margin
# samples). Does the control still hold? Does the random start recover more?
#
# :::{admonition} Solution 2
# :class: dropdown
# Without weight decay the network is only on its way to a KKT point: the best multipliers
# leave a clearly larger part of $\|\theta\|^2$ unexplained than with weight decay (Section
# 3's figure; the folded cell prints both). Started from them, the control's loss ends
# well above the weight-decay control's and the margin samples drift further; the random
# start again fits $\theta$ with other points and recovers no more margin samples than
# Section 5's did. Weight decay is not what makes Section 5 fail (the low-dimensional inputs
# are), but it is what makes the training set an exact, stable solution.
# :::

# %% tags=["hide-cell"]
# Solution to exercise 2
diag_plain = kkt_diagnostic(net_plain, toy_x, toy_y)
L = diag_plain.lam * m
on_margin_plain = L >= 0.1 * L.max()  # this network's own margin samples
cfg_plain = ReconConfig(**RECON)
print(f"lambda_min {cfg_plain.lambda_min:g}; the {int(on_margin_plain.sum())} margin samples' "
      f"multipliers start at {float(L[on_margin_plain].min()):.3g}")
assert cfg_plain.lambda_min < float(L[on_margin_plain].min())
ctrl_plain = reconstruct(net_plain, dataclasses.replace(cfg_plain, steps=ctrl_cfg.steps),
                         x_init=x0, lam_init=torch.cat([L, L]) / 2, y=y0, progress=False)
rand_plain = reconstruct(net_plain, cfg_plain, progress=False)
drift_plain = (ctrl_plain.x - x0).norm(dim=1)
d_plain, _ = toy.nearest_same_label(toy_x, toy_y, rand_plain.x, rand_plain.y)
print(f"unexplained at the true points: {diag_plain.unexplained:.2e} without weight decay, "
      f"{diag.unexplained:.2e} with")
moved_plain = float(drift_plain[torch.cat([on_margin_plain] * 2)].max())
print(f"control: loss {ctrl_plain.history['stat_rel'][0]:.2e} -> "
      f"{ctrl_plain.history['stat_rel'][-1]:.2e} (weight decay: "
      f"{ctrl['history']['stat_rel'][-1]:.2e}); margin copies moved up to {moved_plain:.3f} "
      f"(weight decay: {drift[drift_margin].max():.3f})")
found_plain = int((d_plain[on_margin_plain] < RADIUS).sum())
print(f"random start: {found_plain} of {int(on_margin_plain.sum())} margin samples recovered "
      f"(weight decay: {int(recovered[on_margin].sum())} of {int(on_margin.sum())})")
assert diag_plain.unexplained > 10 * diag.unexplained
assert ctrl_plain.history["stat_rel"][-1] > ctrl["history"]["stat_rel"][-1]
assert moved_plain > float(drift[drift_margin].max())
assert found_plain <= int(recovered[on_margin].sum()) + 2

# %% [markdown]
# **3. Fewer epochs.** Retrain the weight-decay toy for 500 instead of 8,000 epochs: the body of
# `compute` in `train_toy` with `TrainConfig(**{**TRAIN, "epochs": 500}, weight_decay=WD)`. How
# large is the residual of the exact multipliers? What happens to the positive control?
#
# :::{admonition} Solution 3
# :class: dropdown
# The residual of the exact multipliers is $\|\nabla F\|^2/(\mathrm{wd}\,\|\theta\|)^2$, so it
# measures how far gradient descent is from a stationary point. After 500 epochs it is not
# small at all (the folded cell prints it; compare the dashed curve of Section 3 at epoch
# 400): these "multipliers" do not describe $\theta$, and the control, started from them,
# begins far higher than the fully trained toy's. The equation the reconstruction solves is
# not yet one that the training points satisfy, so the true points are not where this toy's
# reconstruction settles. On real images that is not the end of the attack: chapter 3's
# ablation (section 8) recovers a third or more of 50 MNIST digits from models with over 90%
# of $\|\theta\|^2$ unexplained at the truth (stopped at the first epoch with zero training
# error, or trained without weight decay), none of them matched by a test digit. Being near a
# KKT point is what the derivation assumes and what makes the row-space prior pay; Chapter 2
# measures how long it takes.
# :::

# %% tags=["hide-cell"]
# Solution to exercise 3
torch.manual_seed(0)
short = MLP((2,), TRAIN["widths"], init_scale=TRAIN["init_scale"]).double()
train(short, toy_x, toy_y, TrainConfig(**{**TRAIN, "epochs": 500}, weight_decay=WD),
      progress=False)
lam_short, _ = toy.weight_decay_multipliers(short, toy_x, toy_y, WD)
resid_short = toy.stationarity_residual(short, toy_x, toy_y, lam_short)
resid_full = toy.stationarity_residual(net, toy_x, toy_y, lam)
ctrl_short = reconstruct(short, ctrl_cfg, x_init=x0, lam_init=torch.cat([lam_short] * 2) * m / 2,
                         y=y0, progress=False)
drift_short = (ctrl_short.x - x0).norm(dim=1)
print(f"exact multipliers' residual: {resid_short:.2e} after 500 epochs, {resid_full:.2e} "
      f"after {TRAIN['epochs']}")
print(f"control: loss {ctrl_short.history['stat_rel'][0]:.2e} -> "
      f"{ctrl_short.history['stat_rel'][-1]:.2e}; copies moved up to {drift_short.max():.3f}")
assert resid_short > 100 * resid_full
assert ctrl_short.history["stat_rel"][0] > 10 * ctrl["history"]["stat_rel"][0]

# %% [markdown]
# **4. The soft ReLU derivative.** Rerun the positive control with `alpha=30` and with
# `alpha=3000`. Compare the loss *at the start* (the true points) and how far the margin samples
# move. Why does a small $\alpha$ make even the true training set a poor solution?
#
# :::{admonition} Solution 4
# :class: dropdown
# With $\alpha=30$ the gate $\sigma(30z)$ differs from the step function for every
# pre-activation within about 0.1 of zero, which includes a good share of the toy's (point,
# unit) pairs. The soft gradients at the true points are then not the gradients the network
# was trained with: the control starts at a higher loss than with $\alpha=300$, and the margin
# samples move further to compensate. With $\alpha=3000$ the control starts lower than with
# 300 (the folded cell prints all three). A large $\alpha$ is faithful but gives the optimiser
# almost no gradient across a kink; the paper's search settled near $\alpha=20$ for images,
# and the right value depends on how far the training points' pre-activations are from zero.
# :::

# %% tags=["hide-cell"]
# Solution to exercise 4
starts, moved = {}, {}
for a in (30.0, RECON["alpha"], 3000.0):
    r = reconstruct(net, dataclasses.replace(ctrl_cfg, alpha=a), x_init=x0, lam_init=lam0,
                    y=y0, progress=False)
    starts[a] = r.history["stat_rel"][0]
    moved[a] = float((r.x - x0).norm(dim=1)[drift_margin].max())
    print(f"alpha {a:6.0f}: loss at the true points {starts[a]:.2e}, after "
          f"{ctrl_cfg.steps} steps {r.history['stat_rel'][-1]:.2e}; margin copies moved up "
          f"to {moved[a]:.3f}")
assert starts[30.0] > starts[RECON["alpha"]] > starts[3000.0]
assert moved[30.0] > moved[3000.0]

# %% [markdown]
# ## Summary
#
# - A ReLU MLP with a bias in the first layer only is homogeneous of degree $L$ (its number of
#   layers): $\Phi(c\theta;x)=c^L\Phi(\theta;x)$, checked numerically on the paper's network.
# - Gradient descent on the logistic loss drives a homogeneous network, in direction, to a KKT
#   point of $\min\frac12\|\theta\|^2$ s.t. $y_i\Phi(\theta;x_i)\ge1$: the parameters become a
#   non-negative combination of the gradients at the margin samples.
# - With weight decay the stationarity equation holds exactly, with
#   $\lambda_i=\sigma(-q_i)/(n\,\mathrm{wd})$; the margin samples carry almost all the weight.
# - On a small fully trained 2-D network the reconstruction fits the weights as well as the
#   training set does, and the training set is a stable solution, but from random starts it
#   finds another one: its units collapse onto a few directions and the equation has many
#   solutions. A small stationarity loss never proves a reconstruction; comparison with the
#   data does.
# - With a wide random first layer kept fixed, the weights carry 1,000 equations for a dozen
#   margin samples, and the reconstruction recovers every one of them from random starts:
#   the attack needs weights that say more than the margin samples have unknowns.
#
# ## References
#
# ```{bibliography}
# :filter: docname in docnames
# ```
