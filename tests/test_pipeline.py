"""recon.pipeline: the chapters' one code path, its profiles and its cache."""

import pytest
import torch

from recon import pipeline
from recon.reconstruct import ReconConfig
from recon.train import TrainConfig


@pytest.fixture
def tiny(monkeypatch, tmp_path, data_dir):
    """A profile small enough for a unit test, and an empty cache."""
    monkeypatch.setenv("RECON_DATA_DIR", str(data_dir))
    monkeypatch.setenv("RECON_RESULTS_CACHE", str(tmp_path / "cache"))
    profiles = {**pipeline.PROFILES, "tiny": {"mnist": {
        "n_per_class": 3,
        "train": TrainConfig(widths=(32, 32), lr=0.1, weight_decay=2e-2, epochs=60,
                             dtype="float32", log_every=10),
        "recon": ReconConfig(steps=20, log_every=5),
    }}}
    monkeypatch.setattr(pipeline, "PROFILES", profiles)
    monkeypatch.setenv("RECON_PROFILE", "tiny")
    return "tiny"


def test_profile_name_default_and_validation(monkeypatch):
    monkeypatch.delenv("RECON_PROFILE", raising=False)
    assert pipeline.profile_name() == "quick"
    monkeypatch.setenv("RECON_PROFILE", "huge")
    with pytest.raises(ValueError, match="RECON_PROFILE must be one of"):
        pipeline.profile_name()


def test_settings_per_profile(monkeypatch):
    assert pipeline.settings("mnist", "quick")["n_per_class"] == 25
    for profile in ("full", "paper"):
        for name in ("mnist", "cifar10"):
            assert pipeline.settings(name, profile)["n_per_class"] == 250  # the paper's n
    assert pipeline.settings("mnist", "paper")["train"].dtype == "float64"
    with pytest.raises(ValueError, match="no settings for task 'svhn'"):
        pipeline.settings("svhn", "quick")
    monkeypatch.setenv("RECON_PROFILE", "full")
    assert pipeline.describe().startswith("profile: full | device: ")


def test_trained_computes_once_and_rebuilds_the_model(tiny):
    first = pipeline.trained("mnist", kkt_every=20)
    assert first["_meta"]["from_cache"] is False
    model = first["model"]
    assert tuple(model.arch()["widths"]) == (32, 32)
    assert first["history"]["epoch"][-1] == 60
    assert first["history"]["kkt_epoch"] == [0, 20, 40, 60]
    assert len(first["kkt"]["lam"]) == 6
    again = pipeline.trained("mnist", kkt_every=20)
    assert again["_meta"]["from_cache"] is True
    x = pipeline.task("mnist").x_train
    assert torch.equal(again["model"](x), model(x))  # the same weights, rebuilt from the cache
    assert again["model"].layers[0].weight.dtype == torch.float32
    # another training config is another result
    other = TrainConfig(**{**first["_meta"]["config"]["train"], "epochs": 40})
    assert pipeline.trained("mnist", config=other)["_meta"]["from_cache"] is False


def test_reconstruction_uses_the_profiles_model_and_is_cached(tiny):
    out = pipeline.reconstruction("mnist")
    assert out["_meta"]["from_cache"] is False
    assert out["x"].shape == (12, 1, 28, 28)  # two candidates per training image
    assert sorted(out["snapshots"]) == [0, 1, 4, 10, 20]  # int keys again
    assert out["history"]["step"][-1] == 19
    again = pipeline.reconstruction("mnist")
    assert again["_meta"]["from_cache"] is True and torch.equal(again["x"], out["x"])
    cfg = ReconConfig(n_candidates=4, steps=10, log_every=5)
    small = pipeline.reconstruction("mnist", config=cfg, snapshot_steps=(10,))
    assert small["x"].shape[0] == 4 and sorted(small["snapshots"]) == [10]


def test_time_to_recovery_runs_the_cards_whole_recipe(load_benchmark):
    """The time-to-recovery benchmark passes a card's recipe to the ablation as KEY=VALUE
    fields: every field in which a full profile's recipe differs from the library's default
    must survive the round trip, or the benchmark would time another recipe."""
    import dataclasses

    from recon.pipeline import PROFILES
    from recon.reconstruct import ReconConfig

    ttr, ablation = load_benchmark("time_to_recovery"), load_benchmark("ablation")
    default = ReconConfig().to_dict()
    for task, s in PROFILES["full"].items():
        recipe = dataclasses.replace(s["recon"], n_candidates=1000).to_dict()
        name, _, body = ttr._spec("book", recipe).partition(":")
        back = ablation.parse_overrides(body.split(","))
        differs = {k for k, v in recipe.items() if v != default[k]} - {"n_candidates",
                                                                      "log_every"}
        assert differs <= set(back), (task, differs - set(back))
        assert all(back[k] == recipe[k] for k in differs), task
    # the card's number of candidates per image (4n on the full MNIST card), the paper's 2n
    card = {"task": {"n": 500}, "config": {"recon_base": PROFILES["full"]["mnist"][
        "recon"].to_dict() | {"n_candidates": 2000}}}
    book, paper = (ablation.parse_overrides(v.partition(":")[2].split(","))
                   for v in ttr.card_variants(card, 50))
    assert book["m_per_n"] == 4 and paper["m_per_n"] == 2
    assert "keep" not in book and "keep" not in paper  # a card that pools every candidate
    task = type("Task", (), {"n": 500})()
    assert ablation._config(task, 10, 0, book).n_candidates == 2000
    # a card that pools the quarter with the largest multipliers is counted the same way
    card["config"]["sweep"] = {"keep": 0.25}
    book, paper = (ablation.parse_overrides(v.partition(":")[2].split(","))
                   for v in ttr.card_variants(card, 50))
    assert book["keep"] == 0.25 and "keep" not in paper  # the paper pools all it finds
    assert ablation._config(task, 10, 0, book).n_candidates == 2000  # not a field of the run


def test_trajectory_counts_the_kept_share_at_every_snapshot(load_benchmark):
    """With keep < 1 the time-to-recovery curve counts, at each snapshot, only the share of
    the candidates with the largest multipliers *at that step*, as a card's pool would."""
    from recon.reconstruct import ReconResult

    ablation = load_benchmark("ablation")
    torch.manual_seed(0)
    train = torch.randn(4, 1, 6, 6)
    task = type("Task", (), {"x_train": train, "mean": torch.zeros(1, 1, 6, 6), "n": 4,
                             "x_test": torch.randn(4, 1, 6, 6),
                             "y_test": torch.tensor([1, -1, 1, -1]), "n_test": 4,
                             "n_outputs": 1})()
    noise = torch.randn(4, 1, 6, 6)
    # step 10: the training images carry the large multipliers; step 20: the noise does
    x = torch.cat([train, noise])
    lam_early, lam_late = torch.tensor([4., 3, 2, 1, 0, 0, 0, 0]), torch.tensor([0., 0, 0, 0,
                                                                                 1, 2, 3, 4])
    res = ReconResult(x, lam_late, torch.ones(8), ReconConfig(n_candidates=8),
                      snapshots={10: x, 20: x}, snapshot_lam={10: lam_early, 20: lam_late},
                      step=20, wall_time=2.0)
    everything = ablation.trajectory(res, task)
    kept = ablation.trajectory(res, task, keep=0.5)
    assert [t["train_ncc>0.9"] for t in everything] == [4, 4]
    assert [t["train_ncc>0.9"] for t in kept] == [4, 0]
    assert [t["time_s"] for t in kept] == [1.0, 2.0]
