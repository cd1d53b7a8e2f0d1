"""recon.rundir: one reader of a run directory's card, used by the CLI, the sweep and
reproduce; recon.models.MLP.from_arch rebuilds a network from a stored architecture."""

import json

import pytest
import torch

from recon.data import load_task
from recon.models import MLP
from recon.rundir import read_run_card, run_task


def test_run_task_keeps_the_shadow_models_skip(tmp_path, data_dir):
    card = {"task": {"name": "mnist", "n_per_class": 3, "n_test_per_class": 4,
                     "skip_per_class": 5}}
    (tmp_path / "run.json").write_text(json.dumps(card))
    task = run_task(read_run_card(tmp_path), tmp_path)
    assert torch.equal(task.index_train, load_task("mnist", 3, 4, skip_per_class=5).index_train)
    assert not torch.equal(task.index_train, load_task("mnist", 3, 4).index_train)


def test_read_run_card_missing_and_corrupt(tmp_path):
    assert read_run_card(tmp_path) == {}
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_run_card(tmp_path)
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
