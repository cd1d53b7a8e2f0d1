"""`python -m recon reproduce`: every stage writes its part of the run card, and runs resume."""

import json

import pytest
import torch

from recon.cli import main
from recon.reconstruct import ReconConfig
from recon.reproduce import card_row, load_cards, read_card, summary_table
from recon.sweep import load_study

TINY = ["--n-per-class", "3", "--epochs", "200", "--trials", "2", "--pool", "2",
        "--steps", "30", "--quiet"]


@pytest.mark.slow
def test_reproduce_writes_card_and_figures_and_resumes(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("RECON_DATA_DIR", str(data_dir))
    out = tmp_path / "reproduce" / "mnist-tiny"
    assert main(["reproduce", "mnist", "--out", str(out), *TINY]) == 0
    card = read_card(out)
    assert card["task"] == {"name": "mnist", "n_per_class": 3, "n": 6, "n_test": 1000,
                            "source": card["task"]["source"]}
    assert card["train"]["epochs_done"] == 200
    assert card["train"]["test_accuracy"] == pytest.approx(1 - card["train"]["test_error"])
    assert card["sweep"]["states"] == {"COMPLETE": 2}
    # the first trial is the profile's recipe, not a sampled point
    assert card["config"]["recon_base"]["n_candidates"] == 12
    # the library's recipe: candidates in the first layer's row space, no TV prior
    assert card["config"]["recon_base"]["subspace_tol"] == ReconConfig().subspace_tol > 0
    assert card["config"]["recon_base"]["tv"] == 0.0
    study = load_study(out, card["sweep"]["study_name"])
    first = min(study.trials, key=lambda t: t.number)
    assert first.params and first.params == {
        k: pytest.approx(card["config"]["recon_base"][k]) for k in first.params}
    assert sorted(card["pool"]["trials"]) == [0, 1]
    pool = card["pool"]["counts"]["pool"]
    assert set(pool) == {"paper", "one_to_one"} and "ncc>0.9" in pool["one_to_one"]
    # the held-out control: the pooled candidates matched to 6 test images instead
    control = card["pool"]["test_control"]
    assert set(control) == set(pool["one_to_one"])
    # weights-only by default; every trial pooled here, so nothing was chosen
    assert card["config"]["sweep"]["objective"] == "kkt"
    assert card["selection"] == "none (every trial pooled)"
    assert "pool_oracle" not in card  # no choice, so nothing for the oracle to choose either
    assert card["precision"]["recon"] in ("full", "bfloat16")
    assert card["precision"]["train"] == "full"  # TrainConfig's default
    assert card["provenance"]["cpu"]["model"]
    m = card["margins"]
    assert len(m["margin"]) == len(m["ncc"]) == len(m["lam"]) == 6
    assert all(lam >= 0 for lam in m["lam"])
    assert card["provenance"]["torch"] and card["wall_time_s"]["train"] > 0
    for fig in ("pairs.png", "margins.png"):
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # rerunning resumes: nothing is trained or reconstructed again
    before = (out / "model.pt").stat().st_mtime_ns
    assert main(["reproduce", "mnist", "--out", str(out), *TINY]) == 0
    assert (out / "model.pt").stat().st_mtime_ns == before
    again = read_card(out)
    assert again["sweep"]["states"] == {"COMPLETE": 2}
    assert again["pool"]["counts"] == card["pool"]["counts"]
    # asking for more trials extends the study instead of starting over
    more = [a if a != "2" or TINY[i - 1] != "--trials" else "3" for i, a in enumerate(TINY)]
    assert main(["reproduce", "mnist", "--out", str(out), *more]) == 0
    card3 = read_card(out)
    assert card3["sweep"]["states"] == {"COMPLETE": 3}
    # 2 of 3 pooled: chosen from the weights alone, and the oracle's choice recorded beside
    assert card3["selection"].startswith("weights only")
    assert len(card3["pool_oracle"]["trials"]) == 2
    assert card_row(card3)["trials chosen by"] == card3["selection"]
    assert "[reproduce] done" in capsys.readouterr().out

    # the Results chapter reads cards through load_cards / card_row
    assert read_card(out)["complete"] is True
    cards = load_cards(tmp_path)
    assert len(cards) == 1 and cards[0]["_dir"] == str(out)
    # a run still in progress is left out, with a warning
    busy = tmp_path / "reproduce" / "busy"
    busy.mkdir()
    (busy / "card.json").write_text(json.dumps({"format": "recon-reproduce/1",
                                                "complete": False}))
    with pytest.warns(UserWarning, match="not finished"):
        assert [c["_dir"] for c in load_cards(tmp_path)] == [str(out)]
    row = card_row(cards[0])
    assert row["n"] == 6 and row["trials pooled"] == 2 and row["subspace"] == "3e-05"
    one_to_one = read_card(out)["pool"]["counts"]["pool"]["one_to_one"]
    assert row["NCC>0.9 (1-1)"] == one_to_one["ncc>0.9"]
    assert row["NCC>0.9, mean-subtracted"] == one_to_one["ncc0>0.9"]
    assert row["NCC>0.9 vs test images"] == read_card(out)["pool"]["test_control"]["ncc>0.9"]


@pytest.mark.slow
def test_reproduce_a_shadow_model_pooling_the_largest_multipliers(tmp_path, data_dir,
                                                                   monkeypatch):
    """``--skip-per-class`` trains on other images of the task (a shadow model, card under
    results/shadow/), and ``--keep`` pools only each trial's candidates with the largest
    multipliers; the card counts the pool at every share of KEEP_SHARES beside it.
    ``--candidates-per-image 3`` runs m = 3n candidates per trial."""
    from recon.data import load_task
    from recon.reproduce import KEEP_SHARES
    from recon.sweep import load_trial, top_by_multiplier

    monkeypatch.setenv("RECON_DATA_DIR", str(data_dir))
    monkeypatch.chdir(tmp_path)
    assert main(["reproduce", "mnist", "--skip-per-class", "3", "--keep", "0.5",
                 "--candidates-per-image", "3", *TINY]) == 0
    out = tmp_path / "results" / "shadow" / "mnist-quick-n6"
    card = read_card(out)
    assert card["task"]["skip_per_class"] == 3
    assert not (tmp_path / "results" / "reproduce").exists()
    # the shadow's training set: the images after the first 3 of each class
    shadow = load_task("mnist", 3, skip_per_class=3)
    assert not torch.equal(shadow.x_train, load_task("mnist", 3).x_train)
    # ... and the sweep reconstructs with the shadow's task (its mean), from the run record
    from recon.rundir import load_run
    run = load_run(out)
    assert torch.equal(run.task.x_train, shadow.x_train)
    assert torch.equal(run.task.mean, shadow.mean)
    ev = card["pool"]
    assert card["config"]["sweep"]["keep"] == ev["keep"] == 0.5
    assert card["config"]["recon_base"]["n_candidates"] == 18  # m = 3n
    assert ev["n_candidates"] == 2 * 9  # two trials, half of each trial's 18
    assert "largest multipliers" in card["selection"]
    assert "0.5 of each by multiplier" in summary_table([card])
    rows = {r["keep"]: r for r in ev["by_keep"]}
    assert sorted(rows) == sorted(KEEP_SHARES)
    assert [rows[k]["n_candidates"] for k in KEEP_SHARES] == [6, 10, 18, 36]  # 2 ceil(18 k)
    # the chosen share's row is the card's own count; the pooled candidates are each
    # trial's top half by multiplier, scored against the shadow's training images
    assert rows[0.5]["ncc>0.9"] == ev["counts"]["pool"]["one_to_one"]["ncc>0.9"]
    assert rows[0.5]["test_ncc>0.9"] == ev["test_control"]["ncc>0.9"]
    from recon.evaluate import evaluate
    sdir = out / "sweep" / card["sweep"]["study_name"]
    kept = torch.cat([top_by_multiplier(a["x"], a["lam"], 0.5) for a in
                      (load_trial(sdir / f"trial-{t:05d}.pt") for t in ev["trials"])])
    assert kept.shape[0] == 18
    # the pool's growth with runs: the best one, then both (the card's own count)
    runs = ev["by_runs"]
    assert [r["runs"] for r in runs] == [1, 2]
    assert (runs[-1]["ncc>0.9"], runs[-1]["test_ncc>0.9"]) == (rows[0.5]["ncc>0.9"],
                                                               rows[0.5]["test_ncc>0.9"])
    assert runs[0]["ncc>0.9"] <= runs[1]["ncc>0.9"]
    again = evaluate(kept, shadow.x_train, shadow.mean, matching="one_to_one")
    assert again.counts() == ev["counts"]["pool"]["one_to_one"]


def test_cli_passes_the_tv_override_to_reproduce(monkeypatch):
    import recon.reproduce

    seen = {}
    monkeypatch.setattr(recon.reproduce, "reproduce", lambda *a, **kw: seen.update(kw))
    assert main(["reproduce", "mnist", "--tv", "0.02", "--quiet"]) == 0
    assert seen["tv"] == 0.02
    assert main(["reproduce", "mnist", "--quiet"]) == 0
    assert seen["tv"] is None  # no override: the profile's value


def test_cli_passes_candidates_per_image_and_reproduce_checks_it(monkeypatch, tmp_path):
    import recon.reproduce

    seen = {}
    real = recon.reproduce.reproduce
    monkeypatch.setattr(recon.reproduce, "reproduce", lambda *a, **kw: seen.update(kw))
    assert main(["reproduce", "mnist", "--candidates-per-image", "4", "--quiet"]) == 0
    assert seen["candidates_per_image"] == 4
    assert main(["reproduce", "mnist", "--quiet"]) == 0
    assert seen["candidates_per_image"] is None  # the profile's
    for bad in (0, 2.5, True):  # refused before anything is trained or written
        with pytest.raises(ValueError, match="candidates_per_image must be an integer >= 1"):
            real("mnist", "quick", tmp_path / "out", candidates_per_image=bad)
    assert not (tmp_path / "out").exists()


def test_read_card_rejects_other_json(tmp_path):
    (tmp_path / "card.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="not a recon run card"):
        read_card(tmp_path)
    with pytest.raises(FileNotFoundError, match="recon reproduce"):
        read_card(tmp_path / "missing")


def test_reproduce_refuses_a_bad_profile(tmp_path):
    from recon.reproduce import reproduce

    with pytest.raises(ValueError, match="profile must be one of"):
        reproduce("mnist", "medium", tmp_path)


def test_load_cards_without_cards_says_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="RECON_RESULTS_DIR"):
        load_cards(tmp_path)


def test_results_dir_falls_back_to_the_shipped_cards(tmp_path, monkeypatch):
    """Outside a checkout (cwd without results/), the cards come from the package."""
    import recon.reproduce as rp

    monkeypatch.delenv("RECON_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    found = rp.results_dir()
    assert (found / "reproduce").is_dir() and load_cards(found)
    monkeypatch.setenv("RECON_RESULTS_DIR", str(tmp_path))
    assert rp.results_dir() == tmp_path
