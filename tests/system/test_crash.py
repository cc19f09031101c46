"""Killed with SIGKILL: while training, while writing the training state, while saving.

Each run is a fresh process of tests/system/workers/crash_training.py: fine-tuning in two stages
(3 + 5 epochs, validation, early stopping) with checkpoint_dir and seed=, deterministic
ops on. A resumed run must end exactly where the uninterrupted one does.
"""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest

import finetune_tf

SCRIPT = os.path.join(os.path.dirname(__file__), "workers", "crash_training.py")
TIMEOUT = 240
KILL_EPOCH = 4  # as in the worker: in stage 2, which starts at epoch 3


def run(directory, mode):
    process = subprocess.run(
        [sys.executable, SCRIPT, str(directory), mode],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    return process.returncode, process.stdout + process.stderr


def outcome(directory, mode):
    weights = np.load(directory / f"{mode}.npz")
    with open(directory / f"{mode}.json") as f:
        return [weights[f"arr_{i}"] for i in range(len(weights.files))], json.load(f)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    directory = tmp_path_factory.mktemp("uninterrupted")
    code, output = run(directory, "run")
    assert code == 0, output[-3000:]
    assert not os.listdir(directory / "state")  # the state is removed once the call is done
    return outcome(directory, "run")


def assert_resumed_like(directory, uninterrupted, first_epoch_run):
    code, output = run(directory, "run")  # the same call again
    assert code == 0, output[-3000:]
    weights, report = outcome(directory, "run")
    expected_weights, expected = uninterrupted
    assert report["ran"][0] == first_epoch_run  # at most the interrupted epoch is repeated
    assert "resuming stage 'fine_tune'" in output  # the stage goes on, it does not restart
    assert report["epoch"] == expected["epoch"]
    assert report["stage"] == expected["stage"]
    np.testing.assert_allclose(report["val_loss"], expected["val_loss"], rtol=1e-6)
    assert len(weights) == len(expected_weights)
    for got, want in zip(weights, expected_weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_sigkill_in_the_middle_of_an_epoch_then_resume(tmp_path, uninterrupted):
    code, output = run(tmp_path, "kill_in_epoch")
    assert code == -signal.SIGKILL, output[-3000:]
    # The state of the last epoch, and the fine_tune stage's frozen layers, written once.
    assert sorted(os.listdir(tmp_path / "state")) == ["frozen-1.npz", "state.npz"]
    assert_resumed_like(tmp_path, uninterrupted, first_epoch_run=KILL_EPOCH)


def test_sigkill_while_writing_the_state_keeps_the_previous_one(tmp_path, uninterrupted):
    code, output = run(tmp_path, "kill_in_state_write")
    assert code == -signal.SIGKILL, output[-3000:]
    # The half-written state is a temporary file; the state of the epoch before is intact.
    assert "state.npz" in os.listdir(tmp_path / "state")
    assert_resumed_like(tmp_path, uninterrupted, first_epoch_run=KILL_EPOCH)


def test_sigkill_while_saving_the_model_keeps_the_previous_file(tmp_path):
    code, output = run(tmp_path, "kill_in_save")
    assert code == -signal.SIGKILL, output[-3000:]
    names = os.listdir(tmp_path)
    assert any(name.startswith(".tmp-") for name in names)  # the save that was cut short
    restored = finetune_tf.load_model(tmp_path / "model.keras")
    saved = np.load(tmp_path / "saved.npz")
    for got, want in zip(
        restored.get_weights(), [saved[f"arr_{i}"] for i in range(len(saved.files))], strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert isinstance(restored, keras.Model)
