"""Hyperparameter sweeps (recon.sweep, `python -m recon sweep`): shared storage, workers that
die, PostgreSQL across machines, pooled candidates."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from recon.cli import main
from recon.evaluate import sweep_score
from recon.reconstruct import ReconConfig
from recon.sweep import (
    load_study,
    load_trial,
    pool_trials,
    run_study,
    search_space,
    study_summary,
    top_by_multiplier,
)

ROOT = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("RECON_TEST_POSTGRES_URL")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models run several times faster on one thread than on two busy cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def _data_dir_env(data_dir):
    """Studies load their task through RECON_DATA_DIR: point it at the offline data for the
    module, and restore it afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECON_DATA_DIR", str(data_dir))
        yield


def _train(run, data_dir, *args):
    assert main(["train", "--task", "mnist", "--n-test-per-class", "20", "--lr", "0.3",
                 "--weight-decay", "0.02", "--dtype", "float32", "--run", str(run), "--quiet",
                 *args]) == 0
    return run


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, data_dir, _data_dir_env):
    """10 MNIST digits, 784-64-64-1: fast trials for the storage and worker tests (~1 s)."""
    return _train(tmp_path_factory.mktemp("sweep") / "mnist-tiny", data_dir, "--n-per-class",
                  "5", "--widths", "64,64", "--epochs", "300")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, data_dir, _data_dir_env):
    """A real small MNIST model: 20 digits, 784-256-256-1, weight decay (~3 s)."""
    return _train(tmp_path_factory.mktemp("sweep") / "mnist-small", data_dir, "--n-per-class",
                  "10", "--widths", "256,256", "--epochs", "1000")


def _worker(run, *args, data_dir):
    env = {**os.environ, "RECON_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "recon", "sweep", "--run", str(run), "--threads", "1",
         "--quiet", "--pool-top", "0", "--device", "cpu", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _check_no_lost_or_duplicated(study, run, n_trials):
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == n_trials, [(t.number, t.state.name) for t in trials]
    # a FAIL trial is either a surplus claim (no parameters sampled) or a dead worker's trial
    for t in trials:
        assert t.state.name in ("COMPLETE", "FAIL"), (t.number, t.state.name)
    keys = [(tuple(sorted(t.params.items())), t.user_attrs["seed"]) for t in complete]
    assert len(keys) == len(set(keys)), "two trials ran the same configuration"
    sdir = Path(run) / "sweep" / study.study_name
    for t in complete:
        art = load_trial(sdir / t.user_attrs["artefact"])
        assert art["trial"] == t.number and art["study"] == study.study_name
        assert art["value"] == pytest.approx(t.value)
        assert art["params"] == pytest.approx(t.params)
    return complete


def test_search_space_is_the_papers():
    space = search_space()
    assert set(space) == {"lr_x", "init_scale", "lambda_min", "alpha"}
    assert (space["lr_x"].low, space["lr_x"].high, space["lr_x"].log) == (1e-5, 1.0, True)
    assert (space["init_scale"].low, space["init_scale"].high) == (1e-6, 0.1)
    assert space["init_scale"].log
    assert (space["lambda_min"].low, space["lambda_min"].high) == (0.01, 0.5)
    assert not space["lambda_min"].log
    assert (space["alpha"].low, space["alpha"].high, space["alpha"].log) == (10, 500, False)
    narrow = search_space("cpu", alpha=None, lr_lambda=(1e-3, 1e-1, True))
    assert "alpha" not in narrow and narrow["lr_lambda"].log
    with pytest.raises(ValueError, match="cannot search"):
        search_space(steps=(1, 2, False))
    with pytest.raises(ValueError, match="search space"):
        search_space("nope")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_two_workers_share_one_study(tiny_run, data_dir, backend):
    """Two worker processes running the same command complete one study together: exactly
    the requested trials, none lost, none run twice. With PostgreSQL this is the path for
    workers on many machines (a real server, started by .ci/run)."""
    n = 6
    args = ["--trials", str(n), "--steps", "60", "--report-every", "20", "--pruner", "none",
            "--pool-top", "2"]
    if backend == "postgresql":
        if not PG_URL:
            pytest.skip("RECON_TEST_POSTGRES_URL is not set (.ci/run starts a server)")
        name = f"test-{uuid.uuid4().hex[:8]}"
        args += ["--storage", PG_URL, "--study-name", name]
    else:
        name = None
    procs = [_worker(tiny_run, *args, data_dir=data_dir) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    study = load_study(tiny_run, name, storage=PG_URL if backend == "postgresql" else None)
    complete = _check_no_lost_or_duplicated(study, tiny_run, n)
    assert len({t.user_attrs["worker"] for t in complete}) == 2, ("one worker did all", outs)
    for t in study.get_trials(deepcopy=False):  # a race for the last slot, lost cleanly
        if t.state.name == "FAIL":
            assert t.user_attrs.get("surplus") and not t.params
    card = json.loads((tiny_run / "run.json").read_text())
    summary = card["sweep"][study.study_name]
    assert summary["states"]["COMPLETE"] == n
    assert summary["best"]["value"] == min(t.value for t in complete)
    best2 = sorted(complete, key=lambda t: t.value)[:2]
    assert summary["pool"]["trials"] == [t.number for t in best2]
    assert Path(summary["pool"]["file"]).is_file()
    if backend == "postgresql":
        assert summary["storage"].startswith("postgresql://")


def test_killed_worker_leaves_study_consistent_and_resumable(tiny_run, data_dir):
    name = "kill-test"
    steps, report = 200, 10
    p = _worker(tiny_run, "--trials", "2", "--steps", str(steps), "--report-every",
                str(report), "--pruner", "none", "--heartbeat", "1", "--grace", "3",
                "--study-name", name, data_dir=data_dir)
    deadline = time.time() + 180
    killed_number = None
    try:
        while time.time() < deadline and killed_number is None and p.poll() is None:
            time.sleep(0.1)
            try:
                study = load_study(tiny_run, name)
            except Exception:  # noqa: BLE001 - the study is not created yet
                continue
            for t in study.get_trials(deepcopy=False):
                if t.state.name == "RUNNING" and t.intermediate_values:
                    killed_number = t.number
    finally:
        p.send_signal(signal.SIGKILL)
        out = p.communicate()[0]
    assert killed_number is not None, f"no trial was seen running: {out}"

    # consistent: the dead worker's trial still reads RUNNING, the rest is intact
    study = load_study(tiny_run, name)
    states = {t.number: t.state.name for t in study.get_trials()}
    assert states[killed_number] == "RUNNING"
    assert all(s in ("RUNNING", "COMPLETE") for s in states.values())

    # resumable: the same study continues; the dead trial is failed and replaced
    summary = run_study(tiny_run, 2, base=ReconConfig(n_candidates=20, steps=steps),
                        study_name=name, pruner="none", report_every=report,
                        heartbeat_interval=1, grace_period=3, poll_interval=0.2,
                        progress=False)
    study = load_study(tiny_run, name)
    assert study.trials[killed_number].state.name == "FAIL"
    _check_no_lost_or_duplicated(study, tiny_run, 2)
    assert summary["states"] == {"COMPLETE": 2, "FAIL": 1}
    assert not list((tiny_run / "sweep" / name).glob("*.ckpt.pt")), "checkpoints left"


def test_diverging_trials_are_pruned_not_fatal(tiny_run):
    base = ReconConfig(n_candidates=20, steps=20, optimizer="sgd")
    summary = run_study(tiny_run, 2, base=base, study_name="diverge",
                        space=search_space("paper", lr_x=(1e6, 1e7, True)), report_every=5,
                        pruner="none", progress=False)
    assert summary["states"] == {"PRUNED": 2} and summary["n_diverged"] == 2
    study = load_study(tiny_run, "diverge")
    assert all("diverged" in t.user_attrs for t in study.trials)
    # the study refuses a worker with other settings instead of mixing them
    with pytest.raises(ValueError, match="another base_config"):
        run_study(tiny_run, 0, base=ReconConfig(n_candidates=20, steps=30, optimizer="sgd"),
                  study_name="diverge", progress=False)


def test_default_objective_chooses_without_reading_the_training_images(tiny_run, monkeypatch):
    """The default sweep ranks, prunes and pools its trials from the weights alone: with the
    training images replaced by noise in everything the sweep loads, the same trials get
    the same values, the same trials are pruned and the same ones are pooled. Only the
    oracle score recorded beside them changes (so the corruption did reach the scorer)."""
    import recon.sweep.report as report
    import recon.sweep.runner as runner

    base = ReconConfig(n_candidates=20, steps=40)
    kw = dict(base=base, space="cpu", report_every=10, pruner="median", prune_startup=1,
              prune_warmup=0, sampler="random", sampler_seed=3, progress=False)
    clean = run_study(tiny_run, 4, study_name="weights-only-clean", **kw)
    assert clean["objective"] == "kkt"

    real_load = runner.load_run

    def load_with_noise(run, *args, **kwargs):
        r = real_load(run, *args, **kwargs)
        g = torch.Generator().manual_seed(0)
        noise = torch.rand(r.task.x_train.shape, generator=g) - 0.5
        return dataclasses.replace(r, task=dataclasses.replace(r.task, x_train=noise))

    monkeypatch.setattr(runner, "load_run", load_with_noise)
    monkeypatch.setattr(report, "load_run", load_with_noise)
    noisy = run_study(tiny_run, 4, study_name="weights-only-noisy", **kw)

    a, b = (sorted(load_study(tiny_run, n).trials, key=lambda t: t.number)
            for n in ("weights-only-clean", "weights-only-noisy"))
    assert [t.state for t in a] == [t.state for t in b]
    assert [t.params for t in a] == [t.params for t in b]
    for ta, tb in zip(a, b):
        assert ta.intermediate_values == pytest.approx(tb.intermediate_values, rel=1e-6)
        if ta.state.name == "COMPLETE":
            assert ta.value == pytest.approx(tb.value, rel=1e-6)
            assert ta.user_attrs["paper_score"] != pytest.approx(tb.user_attrs["paper_score"])
    assert sum(t.state.name == "COMPLETE" for t in a) >= 2
    assert pool_trials(tiny_run, 2, study_name="weights-only-clean").trials == pool_trials(
        tiny_run, 2, study_name="weights-only-noisy").trials
    assert noisy["objective"] == "kkt"


def test_kkt_objective_prunes_on_intermediate_values(tiny_run):
    base = ReconConfig(n_candidates=20, steps=60)
    summary = run_study(tiny_run, 6, base=base, objective="kkt", study_name="kkt",
                        space="paper", report_every=20, pruner="median", prune_startup=1,
                        prune_warmup=0, sampler="random", sampler_seed=1, progress=False)
    study = load_study(tiny_run, "kkt")
    assert summary["objective"] == "kkt"
    done = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(done) == 6 and summary["states"].get("PRUNED", 0) >= 1
    for t in done:
        if not t.user_attrs.get("diverged"):  # the residual, every 20 steps
            assert t.intermediate_values and set(t.intermediate_values) <= {20, 40, 60}
            assert all(v > 0 for v in t.intermediate_values.values())
    for t in study.trials:
        if t.state.name == "COMPLETE":  # the oracle score is recorded beside the objective
            assert t.value == pytest.approx(t.user_attrs["kkt_residual"])
            assert t.user_attrs["paper_score"] > 0
    # the attacker's pool (ranked by the objective) and the oracle's (ranked by paper_score)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    # the summary says how the attacker's ranking agrees with the oracle's
    agree = summary["attacker_vs_oracle"]
    assert agree["n"] == len(complete)
    if len(complete) >= 2:
        assert agree["attacker_pick"] == min(complete, key=lambda t: t.value).number
        assert agree["oracle_best"] == min(
            complete, key=lambda t: t.user_attrs["paper_score"]).number
        # Spearman's rho by hand: the correlation of the two rankings (no ties here)
        ranks = [torch.tensor(v).argsort().argsort().double() for v in (
            [t.value for t in complete], [t.user_attrs["paper_score"] for t in complete])]
        rho = float(torch.corrcoef(torch.stack(ranks))[0, 1])
        assert agree["spearman"] == pytest.approx(rho, nan_ok=True)
    by_oracle = pool_trials(tiny_run, 1, study_name="kkt", rank_by="paper_score")
    by_kkt = pool_trials(tiny_run, 1, study_name="kkt")
    assert by_oracle.trials == [min(complete, key=lambda t: t.user_attrs["paper_score"]).number]
    assert by_kkt.trials == [min(complete, key=lambda t: t.value).number]
    with pytest.raises(ValueError, match="rank_by"):
        pool_trials(tiny_run, 1, study_name="kkt", rank_by="value")


def test_pool_of_best_trials_recovers_at_least_as_many_as_the_best_trial(small_run):
    """On a real small MNIST model (20 digits), the pooled candidates of the 3 best trials
    give at least as many good reconstructions as the best single trial.

    "Good" here is the correlation criterion (NCC > 0.8 / 0.9 with the matched training
    image), which agrees with the eye on MNIST (Chapter 4). Measured caveat: the SSIM > 0.4
    count is *not* monotone under pooling. The pool's match for a training image is closer in
    correlation but can score a lower SSIM after min-max scaling (a noisier background). A
    16-trial sweep of the 784-1000-1000-1 net went from 20 (best trial) to 17 (pool of 5) that
    way, while NCC > 0.9 rose from 14 to 16. What pooling guarantees is the matching distance,
    checked exactly below."""
    space = search_space("cpu", lr_x=(3e-3, 3e-2, True), init_scale=(3e-4, 3e-3, True),
                         lambda_min=(0.35, 0.5, False), alpha=(50, 200, False))
    run_study(small_run, 3, base=ReconConfig(n_candidates=40, steps=300), space=space,
              study_name="pool", sampler="random", sampler_seed=3, pruner="none",
              progress=False)
    res = pool_trials(small_run, 3, study_name="pool")
    assert len(res.trials) == 3 and not res.missing
    assert res.pool["paper"].n_candidates == 3 * 40
    c = res.counts()
    best, pooled = c["best_trial"], c["pool"]
    assert best["one_to_one"]["ncc>0.8"] >= 1, c  # the model is reconstructable at all
    for matching in ("paper", "one_to_one"):
        for crit in ("ncc>0.8", "ncc>0.9"):
            assert pooled[matching][crit] >= best[matching][crit], (matching, crit, c)
    # every training image's nearest candidate is at least as close in the pool
    def nearest(ev):
        d = torch.full((ev.n_train,), float("nan"))
        d[ev.train_index] = ev.distance.float()
        return d
    assert (nearest(res.pool["paper"]) <= nearest(res.best["paper"]) + 1e-5).all()

    saved = json.loads((small_run / "sweep" / "pool" / "pool.json").read_text())
    assert saved["counts"] == c and saved["trials"] == res.trials
    # artefacts load with weights_only=True and hold what pooling needs
    study = load_study(small_run, "pool")
    assert study_summary(study)["best"]["number"] == res.best_trial == res.trials[0]
    art = load_trial(small_run / "sweep" / "pool" / f"trial-{res.best_trial:05d}.pt")
    assert art["x"].shape == (40, 1, 28, 28) and torch.isfinite(art["x"]).all()
    assert art["lam"].shape == (40,) and set(art["y"].tolist()) == {-1.0, 1.0}
    assert ReconConfig(**art["config"]).steps == 300
    assert art["counts"] == {m: ev.counts() for m, ev in res.best.items()}

    # keep: each trial gives only its candidates with the largest multipliers, in that order
    half = pool_trials(small_run, 3, study_name="pool", keep=0.5, write=False)
    assert half.trials == res.trials and half.keep == 0.5
    assert half.pool["paper"].n_candidates == len(half.candidates) == 3 * 20
    for i, t in enumerate(half.trials):
        a = load_trial(small_run / "sweep" / "pool" / f"trial-{t:05d}.pt")
        order = torch.argsort(a["lam"], descending=True)
        assert torch.equal(half.candidates[20 * i:20 * (i + 1)], a["x"][order[:20]])
    assert json.loads((small_run / "sweep" / "pool" / "pool.json").read_text())["keep"] == 1
    with pytest.raises(ValueError, match=r"in \(0, 1\]"):
        pool_trials(small_run, 3, study_name="pool", keep=0)


def test_top_by_multiplier_ranks_by_the_total_multiplier():
    x = torch.arange(5.0).reshape(5, 1, 1, 1)
    assert torch.equal(top_by_multiplier(x, torch.tensor([0.1, 3.0, 0.5, 2.0, 0.0]), 0.4),
                       x[[1, 3]])
    # one multiplier per wrong class (ten-class models): ranked by the candidate's total
    lam2 = torch.tensor([[1.0, 0.0], [0.2, 0.2], [0.0, 0.9], [0.5, 0.6], [0.0, 0.0]])
    assert torch.equal(top_by_multiplier(x, lam2, 0.5), x[[3, 0, 2]])  # ceil(2.5) = 3
    assert top_by_multiplier(x, torch.zeros(5), 1.0) is x
    assert len(top_by_multiplier(x, torch.rand(5), 0.01)) == 1  # never empty
    with pytest.raises(ValueError, match="5 candidates but 4 multipliers"):
        top_by_multiplier(x, torch.rand(4), 0.5)


def test_agreement_objective_compares_two_independent_runs(tiny_run):
    summary = run_study(tiny_run, 1, base=ReconConfig(n_candidates=20, steps=30),
                        objective="agreement", study_name="agree", report_every=30,
                        progress=False)
    art = load_trial(tiny_run / "sweep" / "agree" / summary["best"]["artefact"])
    assert art["runs"] == 2 and art["x"].shape[0] == 40  # both runs' candidates are kept
    assert art["value"] == pytest.approx(sweep_score(art["x"][:20], art["x"][20:]), rel=1e-5)
    assert not torch.equal(art["x"][:20], art["x"][20:])  # different seeds


def test_chunked_trial_matches_one_uninterrupted_run(tiny_run):
    """Intermediate values come from resuming the run chunk by chunk; the result must be the
    run reconstruct() gives in one go with the same config (checked to fail when each chunk
    shortens the config's steps, which moved the switch to the wider row space into the
    first chunk)."""
    from recon.reconstruct import reconstruct
    from recon.sweep.storage import load_run

    # with a schedule (the last half in a wider row space), which must stay a share of the
    # whole run's steps, not of each chunk's
    base = ReconConfig(n_candidates=20, steps=40, subspace_tol=0.3, refine_share=0.5,
                       refine_tol=1e-6)
    summary = run_study(tiny_run, 1, base=base, study_name="chunks", space="cpu",
                        report_every=10, pruner="none", progress=False)
    art = load_trial(tiny_run / "sweep" / "chunks" / summary["best"]["artefact"])
    model, task, _ = load_run(tiny_run)
    one = reconstruct(model, ReconConfig(**art["config"]), mean=task.mean, progress=False)
    torch.testing.assert_close(art["x"], one.x)
    torch.testing.assert_close(art["lam"], one.lam)
    assert load_study(tiny_run, "chunks").trials[0].intermediate_values.keys() == {10, 20, 30, 40}


def test_seeds_space_runs_the_recipe_with_one_seed_per_trial(tiny_run):
    """space "seeds": nothing is searched; trial t is the base recipe with seed base + t, so
    pooling trials pools independent runs chosen without any data. Nothing is pruned by
    default (a median pruner after one trial would drop about half of them)."""
    base = ReconConfig(n_candidates=20, steps=20, seed=7)
    run_study(tiny_run, 4, base=base, study_name="seeds", space="seeds", prune_startup=1,
              prune_warmup=0, report_every=5, progress=False)
    study = load_study(tiny_run, "seeds")
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 4
    done = sorted(study.trials, key=lambda t: t.number)
    assert all(t.params == {} for t in done)
    assert [t.user_attrs["seed"] for t in done] == [7, 8, 9, 10]
    arts = [load_trial(tiny_run / "sweep" / "seeds" / t.user_attrs["artefact"]) for t in done]
    assert not torch.equal(arts[0]["x"], arts[1]["x"])
    assert {k: v for k, v in arts[0]["config"].items() if k != "seed"} == {
        k: v for k, v in base.to_dict().items() if k != "seed"}


def test_postgres_driver_is_optional_with_a_clear_error(monkeypatch):
    import importlib.util

    from recon.sweep.storage import _with_driver

    assert _with_driver("sqlite:///x.db") == "sqlite:///x.db"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.startswith("psycopg") else real(name, *a))
    with pytest.raises(ImportError, match=r"psycopg2-binary .*\.\[postgres\]"):
        _with_driver("postgresql://u@h/db")
