"""Shared setup: the app's config shrunk to seconds of training."""

import os
import sys
import unittest
from pathlib import Path

FLOWER_DIR = Path(__file__).resolve().parent.parent
REPO = FLOWER_DIR.parent
sys.path.insert(0, str(FLOWER_DIR))

CONFIG_PATH = FLOWER_DIR / "fedolf_flower" / "configs" / "fmnist-fedolf.toml"
CONFIG = CONFIG_PATH.read_text()
SMALL = [
    "data.data_dir=" + str(REPO / "datasets" / "data" / "fashion-mnist-subset"),
    "data.train_limit=900",
    "data.test_limit=300",
    "federation.clients=3",
    "federation.rounds=2",
]

# Columns that depend on the machine (time, memory, energy from time), not on the maths.
# A memory budget's predicted peak is calibrated on measured memory in each process.
MACHINE_COLUMNS = {"compute_s", "wall_s", "peak_mem_mb", "peak_extra_mb", "energy_compute_j", "energy_comm_j", "predicted_mb"}


def fedolf_binary() -> str:
    path = os.environ.get("FEDOLF_BIN")
    if not path:
        raise unittest.SkipTest("FEDOLF_BIN (the fedolf binary) is not set; the Rust test tests/flower.rs sets it")
    return path
