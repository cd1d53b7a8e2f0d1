"""recon.study: a grid of reproduce runs from a JSON spec, one card per point, resumable."""

import json

import pytest

from recon.cli import main
from recon.study import leakage_row, load_spec, load_study_cards, study_points


def _spec(tmp_path, **over):
    spec = {
        "name": "tiny", "profile": "quick",
        "defaults": {"trials": 1, "pool": 1, "space": "seeds", "objective": "kkt",
                     "steps": 20, "epochs": 60, "widths": [16, 16]},
        "tasks": {"mnist": {"n_per_class": 2}},
        "axes": [
            {"name": "size", "tasks": ["mnist"], "key": "n_per_class", "values": [2, 3]},
            {"name": "width", "tasks": ["mnist"], "key": "widths", "values": [[16, 16], [8]]},
            {"name": "defenses", "tasks": ["mnist"], "points": [
                {"label_noise": 0.25}, {"clip": 0.5, "grad_noise": 0.1}]},
        ],
        **over,
    }
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def test_points_are_deduplicated_and_named_by_what_they_change(tmp_path):
    points = study_points(load_spec(_spec(tmp_path)))
    ids = [p.id for p in points]
    assert ids == ["mnist-base", "mnist-n_per_class=3", "mnist-widths=8",
                   "mnist-label_noise=0.25", "mnist-clip=0.5_grad_noise=0.1"]
    base = points[0]
    assert base.axes == ("size", "width")  # the base point lies on both axes, runs once
    kw = points[4].kwargs()
    assert kw["train_overrides"] == {"clip": 0.5, "grad_noise": 0.1, "widths": (16, 16)}
    assert kw["trials"] == 1 and kw["n_per_class"] == 2 and kw["steps"] == 20
    assert points[3].kwargs()["label_noise"] == 0.25


def test_a_value_equal_to_the_profile_is_no_change(tmp_path):
    spec = _spec(tmp_path, defaults={"trials": 1}, tasks={"mnist": {}},
                 axes=[{"name": "n", "tasks": ["mnist"], "key": "n_per_class",
                        "values": [25, 5]},
                       {"name": "w", "tasks": ["mnist"], "key": "widths",
                        "values": [[1000, 1000]]}])
    points = study_points(load_spec(spec))
    assert [p.id for p in points] == ["mnist-base", "mnist-n_per_class=5"]
    assert points[0].axes == ("n", "w")


@pytest.mark.parametrize("bad, match", [
    ({"axes": []}, "needs a 'name' and a list of 'axes'"),
    ({"axes": [{"name": "a", "tasks": ["mnist"], "key": "wd", "values": [1]}]},
     "unknown settings \\['wd'\\]"),
    ({"axes": [{"name": "a", "tasks": ["mnist"]}]}, "either 'key' and 'values' or 'points'"),
    ({"axes": [{"name": "a", "tasks": ["svhn"], "key": "epochs", "values": [1]}]},
     "without a base"),
    ({"defaults": {"lr_x": 1}}, "unknown defaults"),
])
def test_bad_specs_say_what_is_wrong(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        load_spec(_spec(tmp_path, **bad))
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_spec(tmp_path / "broken.json")


@pytest.mark.slow
def test_study_runs_each_point_once_and_resumes(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("RECON_DATA_DIR", str(data_dir))
    spec = _spec(tmp_path)
    out = tmp_path / "results" / "study"
    assert main(["study", str(spec), "--out", str(out), "--only", "n_per_class=3",
                 "--quiet"]) == 0
    cards = load_study_cards("tiny", tmp_path / "results")
    assert [c["study"]["point"] for c in cards] == ["mnist-n_per_class=3"]
    card = cards[0]
    assert card["task"]["n"] == 6 and card["config"]["train"]["widths"] == [16, 16]
    assert card["study"]["settings"]["epochs"] == 60 and card["train"]["epochs_done"] == 60
    row = leakage_row(card)
    assert row["p"] == 784 * 16 + 16 + 16 * 16 + 16 and row["d"] == 784
    assert row["p/(dn)"] == pytest.approx(row["p"] / (784 * 6))
    assert 0 <= row["recovered"] <= 1 and row["axes"] == ["size"]
    capsys.readouterr()
    # the rest, then a rerun that runs nothing
    assert main(["study", str(spec), "--out", str(out), "--quiet"]) == 0
    cards = load_study_cards("tiny", tmp_path / "results")
    assert len(cards) == 5
    noisy = next(c for c in cards if c["study"]["point"] == "mnist-label_noise=0.25")
    assert noisy["task"]["label_noise"] == 0.25
    dp = next(c for c in cards if c["study"]["point"].startswith("mnist-clip"))
    assert dp["config"]["train"]["clip"] == 0.5 and dp["config"]["train"]["grad_noise"] == 0.1
    before = {c["study"]["point"]: c["provenance"]["date"] for c in cards}
    capsys.readouterr()
    assert main(["study", str(spec), "--out", str(out), "--quiet"]) == 0
    assert "[study] 5 of 5 points have a complete card" in capsys.readouterr().out
    after = {c["study"]["point"]: c["provenance"]["date"]
             for c in load_study_cards("tiny", tmp_path / "results")}
    assert after == before


def test_no_cards_says_how_to_make_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m recon study"):
        load_study_cards("nothing", tmp_path)


def test_processes_running_one_study_share_its_points(tmp_path, monkeypatch):
    """A point another process holds (its lock taken) is skipped, not run twice; the others
    run; a point finished meanwhile is not run again."""
    import recon.reproduce
    from recon.files import try_lock
    from recon.study import LOCK, run_study_spec

    ran = []

    def fake_reproduce(task, profile, out, **kwargs):
        ran.append(out.name)
        return {"format": "recon-reproduce/1", "complete": True}

    monkeypatch.setattr(recon.reproduce, "reproduce", fake_reproduce)
    spec = _spec(tmp_path)
    root = tmp_path / "out"
    with try_lock(root / "tiny" / "mnist-widths=8" / LOCK) as held:
        assert held
        with try_lock(root / "tiny" / "mnist-widths=8" / LOCK) as second:
            assert not second  # a second claim on a held point fails at once
        rows = run_study_spec(spec, root)
    assert "mnist-widths=8" not in ran and len(ran) == 4
    busy = next(r for r in rows if r["point"] == "mnist-widths=8")
    assert busy["elsewhere"] and not busy["done"]
    ran.clear()
    run_study_spec(spec, root)  # the lock is free now: only the skipped point runs
    assert ran == ["mnist-widths=8"]
