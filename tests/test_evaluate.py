"""Tests for recon.evaluate: matching, scaling, SSIM and the reporting around them."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from recon.evaluate import (
    Evaluation,
    evaluate,
    evaluate_both,
    first_layer_candidates,
    match_distances,
    match_nearest,
    match_one_to_one,
    minmax_scale,
    ncc_distance,
    ncc_similarity,
    ssim_pairs,
    standardize,
    sweep_score,
)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def full_range_images(n, c, h=8, w=8, seed=0):
    """Images in [0, 1] whose min is exactly 0 and max exactly 1 (min-max scaling is a no-op)."""
    x = torch.rand(n, c, h, w, generator=gen(seed))
    return minmax_scale(x)


def split_mean(images):
    """Mean-subtracted training set and its (1, C, H, W) mean, as the training code stores them."""
    mean = images.mean(0, keepdim=True)
    return images - mean, mean


# ---------------------------------------------------------------------------------------------
# NCC
# ---------------------------------------------------------------------------------------------
def test_standardize_zero_mean_unit_norm_and_constant_plane_is_zero():
    x = torch.rand(4, 3, 8, 8, generator=gen(1)) * 5 + 2
    x[0, 1] = 0.7  # constant plane
    s = standardize(x)
    assert torch.allclose(s.mean(dim=(2, 3)), torch.zeros(4, 3), atol=1e-6)
    norms = s.flatten(2).norm(dim=2)
    assert torch.allclose(norms[1:], torch.ones(3, 3), atol=1e-5)
    assert torch.equal(s[0, 1], torch.zeros(8, 8))
    assert torch.isfinite(s).all()


def test_ncc_similarity_is_mean_of_per_channel_pearson():
    a = torch.rand(3, 3, 8, 8, generator=gen(2), dtype=torch.float64)
    b = torch.rand(5, 3, 8, 8, generator=gen(3), dtype=torch.float64)
    s = ncc_similarity(a, b)
    assert s.shape == (3, 5)
    i, j = 2, 4
    per_channel = [torch.corrcoef(torch.stack([a[i, c].flatten(), b[j, c].flatten()]))[0, 1]
                   for c in range(3)]
    assert s[i, j].item() == pytest.approx(float(sum(per_channel) / 3), abs=1e-12)
    # invariant to per-channel affine changes with positive gain
    b2 = b * torch.tensor([2.0, 0.5, 9.0], dtype=torch.float64)[None, :, None, None] - 3
    assert torch.allclose(ncc_similarity(a, b2), s, atol=1e-12)
    assert torch.allclose(ncc_similarity(a, a).diagonal(), torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("c", [1, 3])
def test_ncc_distance_is_2c_times_one_minus_similarity(c):
    a = torch.randn(6, c, 8, 8, generator=gen(4), dtype=torch.float64)
    b = torch.randn(7, c, 8, 8, generator=gen(5), dtype=torch.float64)
    d = ncc_distance(a, b)
    assert d.shape == (6, 7)
    assert torch.allclose(d, 2 * c * (1 - ncc_similarity(a, b)), atol=1e-10)
    # and equal to the brute-force squared L2 of standardised images
    brute = ((standardize(a)[:, None] - standardize(b)[None]) ** 2).flatten(2).sum(2)
    assert torch.allclose(d, brute, atol=1e-10)
    assert (d >= 0).all() and (d <= 4 * c).all()


# ---------------------------------------------------------------------------------------------
# Matching
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [1, 3])
def test_shuffled_copy_matches_back_under_both_matchings(c):
    images = full_range_images(12, c, seed=6)
    x_train, mean = split_mean(images)
    perm = torch.randperm(12, generator=gen(7))
    noise = 0.01 * torch.randn(12, c, 8, 8, generator=gen(8))
    candidates = x_train[perm] + noise  # candidates[j] is a noisy copy of x_train[perm[j]]
    expected = torch.argsort(perm)  # training image i sits at candidate expected[i]
    both = evaluate_both(candidates, x_train, mean)
    for name, ev in both.items():
        assert ev.matching == name
        assert len(ev) == 12
        got = torch.empty(12, dtype=torch.long)
        got[ev.train_index] = ev.candidate_index
        assert torch.equal(got, expected), name
        assert (ev.ncc > 0.95).all()


def test_blurry_average_candidate_claims_many_under_paper_but_one_under_one_to_one():
    n, c = 12, 1
    yy, xx = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    pattern = torch.sin(xx * 0.8) * torch.cos(yy * 0.6)  # shared structure in [-1, 1]
    noise = torch.rand(n, c, 8, 8, generator=gen(9)) * 2 - 1
    images = 0.5 + 0.3 * pattern + 0.1 * noise  # in [0.1, 0.9]
    mean = torch.full((1, c, 8, 8), 0.5)  # keeps the shared pattern in the mean-subtracted data
    x_train = images - mean
    blob = 0.3 * pattern[None, None]  # "class average": close to every training image
    copies = x_train[:3].clone()  # three exact reconstructions
    junk = torch.rand(20, c, 8, 8, generator=gen(10)) - 0.5  # unrelated candidates
    candidates = torch.cat([blob, copies, junk])  # blob is candidate 0

    both = evaluate_both(candidates, x_train, mean)
    paper, one = both["paper"], both["one_to_one"]
    assert int((paper.candidate_index == 0).sum()) == n - 3  # every non-copied image -> blob
    assert int((one.candidate_index == 0).sum()) == 1
    assert torch.unique(one.candidate_index).numel() == n  # distinct candidates
    # the blob inflates the paper's counts
    assert paper.count(ncc_above=0.8) == n
    assert one.count(ncc_above=0.8) == 4  # three copies + the one image the blob keeps
    assert paper.counts() != one.counts()
    assert paper.to_dict()["n_distinct_candidates"] == 4


def test_match_one_to_one_with_fewer_candidates_marks_unmatched():
    dist = torch.tensor([[0.0, 5.0], [1.0, 0.5], [0.1, 9.0], [7.0, 7.0]])
    assert match_nearest(dist).tolist() == [0, 1, 0, 0]
    idx = match_one_to_one(dist)
    assert idx.tolist() == [0, 1, -1, -1]  # minimum total distance 0.5
    x_train, mean = split_mean(full_range_images(6, 1, seed=11))
    ev = evaluate(x_train[:2].clone(), x_train, mean, matching="one_to_one")
    assert len(ev) == 2 and sorted(ev.train_index.tolist()) == [0, 1]


def test_half_resolution_default_follows_channels():
    for c, half in [(1, False), (3, True)]:
        x_train, mean = split_mean(full_range_images(5, c, seed=12))
        cand = torch.randn(9, c, 8, 8, generator=gen(13)) * 0.3
        ev = evaluate(cand, x_train, mean)
        assert ev.half_resolution is half
        down = (lambda t: F.interpolate(t, scale_factor=0.5, mode="bicubic")) if half else (
            lambda t: t)
        ref = ncc_distance(down(x_train), down(cand))
        assert torch.allclose(match_distances(cand, x_train, half_resolution=half), ref)
        got = ref[ev.train_index, ev.candidate_index]
        assert torch.allclose(ev.distance, got)
        assert torch.equal(ref.argmin(1)[ev.train_index], ev.candidate_index)
    # explicit override: 3-channel data matched at full resolution
    ev = evaluate(cand, x_train, mean, half_resolution=False)
    assert ev.half_resolution is False


# ---------------------------------------------------------------------------------------------
# Scaling and SSIM
# ---------------------------------------------------------------------------------------------
def test_minmax_scale_range_and_constant_image():
    x = torch.randn(3, 3, 8, 8, generator=gen(14)) * 4 + 1
    x[1] = 2.5
    y = minmax_scale(x)
    assert torch.isfinite(y).all()
    assert torch.equal(y[1], torch.zeros(3, 8, 8))
    for i in (0, 2):
        assert y[i].min().item() == 0.0 and y[i].max().item() == pytest.approx(1.0)


@pytest.mark.parametrize("c", [1, 3])
def test_identical_images_score_ssim_one_and_ncc_one(c):
    images = full_range_images(12, c, seed=15)
    assert torch.allclose(ssim_pairs(images, images), torch.ones(12), atol=1e-5)
    x_train, mean = split_mean(images)
    ev = evaluate(x_train.clone(), x_train, mean)
    assert torch.allclose(ev.ssim, torch.ones(12), atol=1e-5)
    assert torch.allclose(ev.ncc, torch.ones(12), atol=1e-5)
    assert ev.counts() == {"ssim>0.3": 12, "ssim>0.4": 12, "ssim>0.5": 12, "ssim>0.6": 12,
                           "ncc>0.8": 12, "ncc>0.9": 12, "ncc0>0.8": 12, "ncc0>0.9": 12}


@pytest.mark.parametrize("c", [1, 3])
def test_scaled_shifted_copy_scores_ssim_one_after_minmax(c):
    images = full_range_images(12, c, seed=16)
    x_train, mean = split_mean(images)
    gain = torch.rand(12, 1, 1, 1, generator=gen(17)) * 10 + 0.1
    shift = torch.randn(12, 1, 1, 1, generator=gen(18)) * 5
    candidates = gain * images + shift - mean  # reconstruction = affine copy once mean is added
    ev = evaluate(candidates, x_train, mean, matching="one_to_one")
    assert torch.equal(ev.train_index.sort().values, torch.arange(12))
    assert torch.equal(ev.candidate_index, ev.train_index)
    assert torch.allclose(ev.ssim, torch.ones(12), atol=1e-5)
    assert torch.allclose(ev.recon, ev.original, atol=1e-5)
    assert ev.recon.min() >= 0 and ev.recon.max() <= 1


def reference_ssim(x, y):
    """Straightforward SSIM: 3x3 Gaussian (sigma 1.5), reflect padding 'same', data range 1."""
    c = x.shape[1]
    t = torch.arange(3, dtype=x.dtype) - 1
    g = torch.exp(-(t**2) / (2 * 1.5**2))
    g = g / g.sum()
    win = (g[:, None] * g[None, :]).expand(c, 1, 3, 3)

    def blur(z):
        return F.conv2d(F.pad(z, (1, 1, 1, 1), mode="reflect"), win, groups=c)

    c1, c2 = 0.01**2, 0.03**2
    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return m.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("c", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ssim_pairs_matches_independent_reference(c, dtype):
    x = torch.rand(12, c, 8, 8, generator=gen(19), dtype=dtype)
    y = (0.6 * x + 0.4 * torch.rand(12, c, 8, 8, generator=gen(20), dtype=dtype)).clamp(0, 1)
    got = ssim_pairs(x, y)
    assert got.shape == (12,) and got.dtype == dtype
    assert torch.allclose(got, reference_ssim(x, y), atol=1e-4)
    # a less related pair scores lower
    z = torch.rand(12, c, 8, 8, generator=gen(21), dtype=dtype)
    assert (ssim_pairs(x, z) < got).all()


# ---------------------------------------------------------------------------------------------
# Result container, baseline, sweep objective
# ---------------------------------------------------------------------------------------------
def test_evaluation_sorted_and_to_dict_is_json():
    x_train, mean = split_mean(full_range_images(10, 3, seed=22))
    cand = x_train + 0.3 * torch.randn(10, 3, 8, 8, generator=gen(23))
    ev = evaluate(cand, x_train, mean)
    assert isinstance(ev, Evaluation)
    assert (ev.ssim[:-1] >= ev.ssim[1:]).all()
    assert ev.recon.shape == ev.original.shape == (10, 3, 8, 8)
    assert torch.allclose(ev.original, (x_train + mean)[ev.train_index])
    assert ev.count() == 10
    assert ev.count(ssim_above=0.4, ncc_above=0.9) == int(((ev.ssim > 0.4) & (ev.ncc > 0.9)).sum())
    d = json.loads(json.dumps(ev.to_dict()))
    assert d["matching"] == "paper" and d["n_pairs"] == 10
    assert d["counts"] == ev.counts()
    assert d["mean_ssim_top10"] == pytest.approx(ev.ssim[:10].mean().item())
    assert d["train_index"] == ev.train_index.tolist()
    assert len(d["ssim"]) == len(d["ncc"]) == 10


def test_first_layer_candidates_reshape_and_scale():
    images = torch.randn(7, 3, 8, 8, generator=gen(24))
    weight = images.flatten(1) * torch.linspace(0.1, 3, 7)[:, None]  # rows = scaled images
    weight[3] = 0
    cand = first_layer_candidates(weight, (3, 8, 8))
    assert cand.shape == (7, 3, 8, 8)
    assert torch.isfinite(cand).all() and torch.equal(cand[3], torch.zeros(3, 8, 8))
    keep = [0, 1, 2, 4, 5, 6]
    assert torch.allclose(cand[keep].flatten(1).abs().amax(1), torch.ones(6))
    # row i, reshaped, is image i up to scale: correlation 1
    assert torch.allclose(ncc_similarity(cand[keep], images[keep]).diagonal(), torch.ones(6),
                          atol=1e-5)
    assert first_layer_candidates(weight, (3, 8, 8), both_signs=True).shape == (14, 3, 8, 8)
    with pytest.raises(ValueError, match="C\\*H\\*W"):
        first_layer_candidates(weight, (1, 8, 8))


def test_sweep_score_rewards_good_reconstructions():
    x_train, _ = split_mean(full_range_images(12, 3, seed=25))
    perfect = sweep_score(x_train[[3, 1, 4]].clone(), x_train, k=3)
    assert perfect == pytest.approx(0.0, abs=1e-4)
    noisy = x_train + 0.5 * torch.randn(12, 3, 8, 8, generator=gen(26))
    rand = torch.randn(12, 3, 8, 8, generator=gen(27))
    s_noisy, s_rand = sweep_score(noisy, x_train), sweep_score(rand, x_train)
    assert 0 < s_noisy < s_rand
    half = match_distances(noisy, x_train, half_resolution=True)
    assert s_noisy == pytest.approx(half[torch.arange(12), match_one_to_one(half)].sort()
                                    .values[:10].mean().item(), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad inputs
# ---------------------------------------------------------------------------------------------
def test_bad_inputs_raise_clear_errors():
    x_train, mean = split_mean(full_range_images(4, 3, seed=28))
    cand = x_train.clone()
    with pytest.raises(ValueError, match=r"4-D.*\(3, 8, 8\)"):
        evaluate(cand[0], x_train, mean)
    with pytest.raises(ValueError, match=r"same \(C, H, W\).*\(4, 1, 8, 8\)"):
        evaluate(cand[:, :1], x_train, mean)
    with pytest.raises(ValueError, match=r"same \(C, H, W\).*\(4, 3, 6, 6\)"):
        evaluate(cand[:, :, :6, :6], x_train, mean)
    with pytest.raises(ValueError, match=r"mean must have shape \(1, 3, 8, 8\)"):
        evaluate(cand, x_train, mean[:, :1])
    with pytest.raises(ValueError, match="empty candidate set"):
        evaluate(cand[:0], x_train, mean)
    bad = cand.clone()
    bad[2, 0, 0, 0] = math.nan
    from recon.evaluate import DivergedError

    with pytest.raises(DivergedError, match="diverged"):  # a ValueError, typed for the sweep
        evaluate(bad, x_train, mean)
    with pytest.raises(DivergedError, match="diverged"):
        sweep_score(bad, x_train)
    with pytest.raises(ValueError, match="matching"):
        evaluate(cand, x_train, mean, matching="greedy")


def test_warns_when_training_images_are_not_in_unit_range():
    images = full_range_images(4, 1, seed=29) * 2 - 1  # [-1, 1] data: SSIM's range 1 is wrong
    x_train, mean = split_mean(images)
    with pytest.warns(UserWarning, match=r"not \[0, 1\]"):
        evaluate(x_train.clone(), x_train, mean)


def test_mean_subtracted_ncc_is_not_fooled_by_the_mean():
    """Candidates that are pure noise around zero (the mean once added back) correlate with
    every training image through the mean; the mean-subtracted NCC does not."""
    g = gen(21)
    base = torch.rand(1, 3, 8, 8, generator=g)  # a shared structure: a strong mean
    images = (0.7 * base + 0.3 * torch.rand(10, 3, 8, 8, generator=g)).clamp(0, 1)
    x_train, mean = split_mean(images)
    noise = 0.01 * torch.randn(10, 3, 8, 8, generator=g)
    ev = evaluate(noise, x_train, mean, matching="one_to_one", half_resolution=False)
    assert ev.ncc.min() > 0.8  # the mean alone looks like a reconstruction
    assert ev.ncc0.abs().max() < 0.8 and ev.counts()["ncc0>0.8"] == 0
    assert ev.to_dict()["ncc0"] == [float(v) for v in ev.ncc0]
