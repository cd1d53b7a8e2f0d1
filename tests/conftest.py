"""Shared test setup: the offline copies of MNIST / CIFAR-10 in ../shared/data."""

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The directory of mnist.npz / cifar10.npz: RECON_DATA_DIR, else ../shared/data."""
    path = Path(os.environ.get("RECON_DATA_DIR") or SHARED_DATA)
    if not (path / "mnist.npz").is_file():
        pytest.fail(
            f"no mnist.npz in {path}: set RECON_DATA_DIR to a directory holding the offline "
            "data sets (see README, 'Data')"
        )
    return path
