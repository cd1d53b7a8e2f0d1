"""The command line writes a complete run directory and fails clearly on bad input."""

import json

from recon.cli import main


def test_train_reconstruct_evaluate_writes_a_run_directory(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("RECON_DATA_DIR", str(data_dir))
    run = tmp_path / "run"
    common = ["--run", str(run), "--quiet"]
    assert main(["train", "--task", "mnist", "--n-per-class", "4", "--n-test-per-class", "20",
                 "--widths", "64,64", "--epochs", "300", "--lr", "0.1", "--weight-decay", "0.02",
                 "--dtype", "float32", *common]) == 0
    assert main(["reconstruct", "--steps", "20", *common]) == 0
    assert main(["evaluate", *common]) == 0
    for name in ("model.pt", "reconstruction.pt", "evaluation.json", "pairs.png", "run.json"):
        assert (run / name).is_file(), name
    card = json.loads((run / "run.json").read_text())
    assert card["task"]["n"] == 8
    assert card["reconstruct"]["config"]["n_candidates"] == 16  # 2n by default
    assert card["reconstruct"]["config"]["subspace_tol"] > 0  # the cpu preset's row space
    assert card["reconstruct"]["config"]["matmul"] == "auto"
    assert card["train"]["config"]["matmul"] == "full"
    # another config on the same reconstruction file is refused, not overwritten ...
    assert main(["reconstruct", "--steps", "5", "--matmul", "full", *common]) == 2
    # ... and in a run directory of its own --matmul reaches the config
    other = tmp_path / "other"
    other.mkdir()
    for name in ("model.pt", "run.json"):
        (other / name).write_bytes((run / name).read_bytes())
    assert main(["reconstruct", "--steps", "5", "--matmul", "full", "--two-tone", "0.5",
                 "--refine-share", "0.4", "--refine-tol", "1e-6", "--run", str(other),
                 "--quiet"]) == 0
    card = json.loads((other / "run.json").read_text())
    cfg = card["reconstruct"]["config"]
    assert cfg["matmul"] == "full"
    assert (cfg["two_tone"], cfg["refine_share"], cfg["refine_tol"]) == (0.5, 0.4, 1e-6)
    assert card["train"]["epochs_done"] == 300
    assert set(card["evaluate"]) == {"paper", "one_to_one", "baseline_first_layer"}
    assert card["provenance"]["torch"]
    assert "ssim>0.4" in card["evaluate"]["one_to_one"]["counts"]
    # the PNG is a real image
    assert (run / "pairs.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # a run that blows up is an error with a non-zero exit, not a success
    boom = tmp_path / "boom"
    boom.mkdir()
    for name in ("model.pt", "run.json"):
        (boom / name).write_bytes((run / name).read_bytes())
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["reconstruct", "--steps", "20", "--lr-x", "1e6", "--run", str(boom),
                     "--quiet"])
    assert code == 2
    assert "exploded" in err.getvalue() or "diverged" in err.getvalue(), err.getvalue()
    assert (boom / "reconstruction.pt").is_file()  # kept for inspection


def test_reconstruct_without_a_trained_model_says_what_to_do(tmp_path, capsys):
    assert main(["reconstruct", "--run", str(tmp_path / "empty"), "--quiet"]) == 2
    assert "python -m recon train" in capsys.readouterr().err


def test_corrupt_checkpoint_is_a_clear_error(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setenv("RECON_DATA_DIR", str(data_dir))
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(
        {"task": {"name": "mnist", "n_per_class": 2, "n_test_per_class": 2}}))
    (run / "model.pt").write_bytes(b"not a checkpoint at all")
    assert main(["reconstruct", "--run", str(run), "--quiet"]) == 2
    assert "not a readable recon checkpoint" in capsys.readouterr().err


def test_missing_data_directory_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RECON_DATA_DIR", str(tmp_path / "nowhere"))
    assert main(["train", "--run", str(tmp_path / "r"), "--n-per-class", "2", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "RECON_DATA_DIR" in err and "mnist.npz" in err


def test_every_option_has_help():
    """`python -m recon CMD --help` explains every option (and shows defaults)."""
    import argparse

    from recon.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{cmd} {'/'.join(a.option_strings)}" for cmd, p in sub.choices.items()
               for a in p._actions if a.option_strings and not a.help]
    assert not missing, missing
    text = sub.choices["train"].format_help()
    assert "(default: 1000,1000)" in text and "(default: 0.01)" in text
