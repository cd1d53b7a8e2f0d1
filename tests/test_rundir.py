"""recon.rundir: one reader of a run directory (card, task as trained, model), used by the
CLI, the sweep, reproduce and the benchmark scripts; recon.models.MLP.from_arch rebuilds a
network from a stored architecture."""

import json

import pytest
import torch

from recon.data import flip_labels, load_task
from recon.models import MLP
from recon.rundir import held_out, load_run, read_run_record, run_task, task_card
from recon.train import TrainConfig, train_task


def test_run_task_keeps_the_shadow_models_skip(tmp_path, data_dir):
    card = {"task": {"name": "mnist", "n_per_class": 3, "n_test_per_class": 4,
                     "skip_per_class": 5}}
    (tmp_path / "run.json").write_text(json.dumps(card))
    task = run_task(read_run_record(tmp_path), tmp_path)
    assert torch.equal(task.index_train, load_task("mnist", 3, 4, skip_per_class=5).index_train)
    assert not torch.equal(task.index_train, load_task("mnist", 3, 4).index_train)


def test_read_run_record_missing_and_corrupt(tmp_path):
    assert read_run_record(tmp_path) == {}
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run_record(tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m recon train"):
        run_task({}, tmp_path)


def test_from_arch_rebuilds_the_same_network():
    torch.manual_seed(0)
    net = MLP((1, 4, 4), (8, 6), frozen=(0,))
    copy = MLP.from_arch(json.loads(json.dumps(net.arch())))
    copy.load_state_dict(net.state_dict())
    x = torch.randn(3, 1, 4, 4)
    torch.testing.assert_close(copy(x), net(x))
    assert copy.arch() == net.arch()
    assert copy.theta_norm2() == pytest.approx(net.theta_norm2())


# ---------------------------------------------------------------------------------------------
# load_run: the model and the exact task of a shadow, noisy-label run; the benchmarks use it
# ---------------------------------------------------------------------------------------------
SKIP, NOISE, NOISE_SEED = 5, 0.5, 3


@pytest.fixture(scope="module", autouse=True)
def _data_dir_env(data_dir):
    """Run directories name their task; it is loaded through RECON_DATA_DIR."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RECON_DATA_DIR", str(data_dir))
        yield


@pytest.fixture(scope="module")
def shadow_run(tmp_path_factory, _data_dir_env):
    """A tiny shadow model with label noise: 3 + 3 MNIST digits after the first 5 of each
    class, half the labels flipped, 784-16-1, 30 epochs (well under a second)."""
    run = tmp_path_factory.mktemp("rundir") / "shadow-noisy"
    task = flip_labels(load_task("mnist", 3, 4, skip_per_class=SKIP), NOISE, NOISE_SEED)
    cfg = TrainConfig(widths=(16,), epochs=30, lr=0.1, weight_decay=1e-2, dtype="float32",
                      log_every=10)
    res = train_task(task, cfg, checkpoint=run / "model.pt", progress=False)
    card = {"task": task_card(task, skip_per_class=SKIP, label_noise=NOISE,
                              label_noise_seed=NOISE_SEED),
            "train": {"config": cfg.to_dict(), "epochs_done": res.epoch}}
    (run / "run.json").write_text(json.dumps(card))
    return run, task, res.model


def test_load_run_returns_the_shadow_images_and_the_noisy_labels(shadow_run):
    path, trained_on, model = shadow_run
    run = load_run(path)
    default = load_task("mnist", 3, 4)
    # the shadow images, disjoint from the default task's
    assert torch.equal(run.task.index_train, trained_on.index_train)
    assert not set(run.task.index_train.tolist()) & set(default.index_train.tolist())
    torch.testing.assert_close(run.task.x_train, trained_on.x_train)
    # the labels the model was trained on: flipped where the noise flipped them
    clean = load_task("mnist", 3, 4, skip_per_class=SKIP).y_train
    assert torch.equal(run.task.y_train, trained_on.y_train)
    assert int((run.task.y_train != clean).sum()) == round(NOISE * run.task.n)
    # and the weights of model.pt
    for a, b in zip(run.model.parameters(), model.parameters()):
        torch.testing.assert_close(a, b)
    assert run.trained.config.widths == (16,)
    assert run.reproduce_card() is None
    with pytest.raises(FileNotFoundError, match="python -m recon reconstruct"):
        run.reconstruction()


def test_task_card_round_trips_through_run_task(shadow_run, tmp_path):
    path, trained_on, _ = shadow_run
    card = read_run_record(path)
    assert card["task"] == {"name": "mnist", "n_per_class": 3, "n_test_per_class": 4, "n": 6,
                            "source": trained_on.source_kind, "skip_per_class": SKIP,
                            "label_noise": NOISE, "label_noise_seed": NOISE_SEED}
    plain = task_card(load_task("mnist", 3, 4))
    assert "skip_per_class" not in plain and "label_noise" not in plain
    assert torch.equal(run_task({"task": plain}, tmp_path).y_train,
                       load_task("mnist", 3, 4).y_train)


def test_a_cli_shadow_run_reads_back_with_its_images(tmp_path):
    from recon.cli import main

    run = tmp_path / "shadow"
    assert main(["train", "--task", "mnist", "--n-per-class", "3", "--n-test-per-class", "4",
                 "--skip-per-class", str(SKIP), "--widths", "16", "--epochs", "20",
                 "--dtype", "float32", "--run", str(run), "--quiet"]) == 0
    loaded = load_run(run)
    assert torch.equal(loaded.task.index_train,
                       load_task("mnist", 3, 4, skip_per_class=SKIP).index_train)


def test_load_run_refuses_an_empty_directory_and_a_model_of_another_task(shadow_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m recon train"):
        load_run(tmp_path)
    path, _, _ = shadow_run
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.pt").write_bytes((path / "model.pt").read_bytes())
    (other / "run.json").write_text(json.dumps({"task": {"name": "cifar10", "n_per_class": 3,
                                                         "n_test_per_class": 4}}))
    with pytest.raises(ValueError, match="does not fit the task"):
        load_run(other)


def test_held_out_takes_the_same_number_of_test_images_of_each_class():
    task = load_task("mnist", 3, 10)
    x = held_out(task)
    assert x.shape[0] == task.n
    idx = [int((task.x_test == xi).flatten(1).all(1).nonzero()[0]) for xi in x]
    assert sorted(task.y_test[idx].tolist()) == [-1.0] * 3 + [1.0] * 3


def test_the_sweep_reads_runs_through_rundir(shadow_run):
    from recon.sweep import report, runner, storage

    assert runner.load_run is load_run and report.load_run is load_run
    path, trained_on, _ = shadow_run
    model, task, fingerprint = storage.load_run(path)
    assert torch.equal(task.index_train, trained_on.index_train)
    assert torch.equal(task.y_train, trained_on.y_train)
    assert fingerprint == load_run(path).fingerprint()


def test_the_benchmarks_read_runs_through_rundir(load_benchmark):
    for name in ("ablation", "rowspace"):
        assert load_benchmark(name).load_run is load_run, name


def test_rowspace_scores_the_shadow_images(shadow_run, load_benchmark):
    """Behaviour, not only wiring: at a cut-off that keeps the whole row space, the training
    images rowspace scores are the shadow ones (all in the span of W1 up to the small
    initialisation), not the default task's."""
    path, trained_on, _ = shadow_run
    out = load_benchmark("rowspace").analyse(path, tols=(1e-6, 0.5))
    assert out["n"] == trained_on.n
    full, cut = out["cutoffs"]
    assert full["rank"] > cut["rank"]
    assert full["train_ncc>0.9"] == trained_on.n


def test_ablation_records_the_rank_of_each_variants_cutoff(shadow_run, tmp_path,
                                                            load_benchmark):
    """The rank in each entry is the dimension kept at that entry's subspace_tol (it was
    once computed at the default cut-off and written into every entry)."""
    from recon.reconstruct import first_layer_basis

    path, _, model = shadow_run
    out = tmp_path / "tol.json"
    tols = (1e-4, 0.3)
    load_benchmark("ablation").main(
        ["custom", str(path), "--seeds", "0", "--steps", "3", "--out", str(out),
         "--variant", f"low:subspace_tol={tols[0]}", "--variant", f"high:subspace_tol={tols[1]}",
         "--variant", "none:subspace_tol=0"])
    entries = {e["variant"]: e for e in json.loads(out.read_text())["entries"]}
    want = {name: first_layer_basis(model, tol).shape[1] for name, tol in zip(("low", "high"),
                                                                             tols)}
    assert want["low"] > want["high"]
    assert {name: entries[name]["rank"] for name in want} == want
    assert entries["none"]["rank"] is None
    assert entries["low"]["n"] == 6


def test_ablation_resumes_only_the_recipe_it_was_asked_for(shadow_run, tmp_path,
                                                          load_benchmark):
    """Run again with the same variants, a finished ablation skips what it holds; the same
    variant name with another recipe (or another keep) is refused, not silently skipped."""
    path, _, _ = shadow_run
    out = tmp_path / "resume.json"
    ablation = load_benchmark("ablation")
    args = ["custom", str(path), "--seeds", "0", "--steps", "3", "--out", str(out)]
    ablation.main(args + ["--variant", "book:subspace_tol=0.3"])
    first = out.read_text()
    ablation.main(args + ["--variant", "book:subspace_tol=0.3"])  # nothing to do
    assert out.read_text() == first
    for other in ("book:subspace_tol=0.1", "book:subspace_tol=0.3,keep=0.5"):
        with pytest.raises(SystemExit, match="another recipe"):
            ablation.main(args + ["--variant", other])
    assert out.read_text() == first


def test_held_out_labelled_gives_each_images_own_label():
    from recon.rundir import held_out_labelled

    task = load_task("mnist", 3, 10)
    x, y = held_out_labelled(task)
    assert torch.equal(x, held_out(task))
    idx = [int((task.x_test == xi).flatten(1).all(1).nonzero()[0]) for xi in x]
    assert torch.equal(y, task.y_test[idx])


def test_free_gates_start_at_the_exact_diagnostic_and_only_lower_it(_data_dir_env,
                                                                   load_benchmark):
    """kinks.free_gate_residual: round 0 is kkt_diagnostic with the exact step; fitting the
    multipliers and the free gates in turn never raises the residual; with no pre-activation
    in the band nothing is free; a network it does not handle is refused."""
    from recon.kkt import kkt_diagnostic

    kinks = load_benchmark("kinks")
    task = load_task("mnist", 4, 4)
    cfg = TrainConfig(widths=(24, 24), epochs=300, lr=0.1, weight_decay=1e-2, dtype="float32",
                      log_every=100)
    model = train_task(task, cfg, progress=False).model
    exact = kkt_diagnostic(model, task.x_train, task.y_train).unexplained
    out = kinks.free_gate_residual(model, task.x_train, task.y_train, eps=0.05, rounds=3)
    assert out["free_pairs"] > 0
    assert out["history"][0] == pytest.approx(exact, rel=1e-6, abs=1e-10)
    assert all(b <= a + 1e-9 for a, b in zip(out["history"], out["history"][1:]))
    assert out["unexplained"] < out["history"][0]
    none = kinks.free_gate_residual(model, task.x_train, task.y_train, eps=0.0, rounds=2)
    assert none["free_pairs"] == 0
    assert none["history"] == pytest.approx([none["history"][0]] * 3, rel=1e-9)
    shallow = MLP((1, 28, 28), (8,), init_scale=1e-2)
    with pytest.raises(ValueError, match="two hidden layers"):
        kinks.free_gate_residual(shallow, task.x_train, task.y_train, eps=1e-3)
