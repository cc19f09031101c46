"""Killed with SIGKILL: at random moments of fine_tune and at the named risky ones (while a
stage's frozen variables or the state are written, between those writes, after the last
epoch of a stage before it ends), and while saving.

The runs are children of one server process (tests/system/workers/crash_training.py
--serve) that imported TensorFlow once and forks a fresh child per run: fine-tuning in two
stages (3 + 5 epochs, validation, the second stopped early) with checkpoint_dir and seed=,
deterministic ops on. A resumed run must end exactly where the uninterrupted one does:
the same weights, bit for bit, and the same history.

Each chain kills one run, resumes it with the same call, kills the resumption later on,
and so on, then lets the last one finish: a kill costs one process, not two, and every
resumption starts from a state a kill left. The moments are drawn by a seeded RNG from the
events of the uninterrupted run (a kind first: batch, array written, before or after a
rename, end of a stage; then one of its events), at most one kill an epoch in a chain so
that each moment lies ahead of where the resumption starts.
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
CHAINS = 4
KILLS_PER_CHAIN = 6  # 24 kills in all
STATE = ("state.npz", "frozen-1.npz")


class Server:
    """The worker in --serve mode: one TensorFlow import, a forked child per run."""

    def __init__(self):
        self.process = subprocess.Popen(
            [sys.executable, SCRIPT, "--serve"],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def run(self, directory, kill=None) -> int:
        """Runs fine_tune in `directory` (dying at `kill`); the child's exit status."""
        self.process.stdin.write(json.dumps({"directory": str(directory), "kill": kill}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        assert line, "the server died"
        return json.loads(line)["status"]

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def server():
    server = Server()
    yield server
    server.close()


def outcome(directory):
    weights = np.load(directory / "run.npz")
    with open(directory / "run.json") as f:
        return [weights[f"arr_{i}"] for i in range(len(weights.files))], json.load(f)


def output(directory) -> str:
    with open(directory / "output.txt") as f:
        return f.read()[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(server, tmp_path_factory):
    directory = tmp_path_factory.mktemp("uninterrupted")
    assert server.run(directory) == 0, output(directory)
    assert not os.listdir(directory / "state")  # the state is removed once the call is done
    weights, report = outcome(directory)
    stages = report["history"]["stage"]
    assert stages.count("head") == 3 and 0 < stages.count("fine_tune") < 5  # stopped early
    return weights, report


def named_moments(report) -> list[list]:
    """Per chain, the moments issue 17 names, as events of the uninterrupted run."""
    stages = report["history"]["stage"]
    second = stages.index("fine_tune")  # the first epoch of stage 2
    head_end, last = second - 1, report["epoch"][-1]
    moments = [
        [  # while frozen-1.npz is written; after stage 1's last epoch; after early stopping
            [second, "member", "frozen-1.npz", 0, 1],
            [head_end, "train_end"],
            [last, "train_end"],
        ],
        [  # between the frozen and the state write; while the between-stages state is written
            [second, "after_replace", "frozen-1.npz", 0],
            [head_end, "member", "state.npz", 1, 1],
        ],
        [  # while state.npz is written in stage 2's first epoch; before the stage-1 rename
            [second, "member", "state.npz", 0, 2],
            [head_end, "before_replace", "state.npz", 1],
        ],
        [  # in stage 2's first epoch, resuming from the between-stages state; and renames
            [second, "batch", 0],
            [head_end, "after_replace", "state.npz", 1],
            [last, "before_replace", "state.npz", 0],
        ],
    ]
    for chain in moments:
        for moment in chain:
            assert moment in report["events"], moment
    return moments


def chain_moments(report, index) -> list[list]:
    """Chain `index`'s kills: its named moments and random ones, one an epoch, in order."""
    rng = np.random.default_rng(17 + index)
    chosen = {moment[0]: moment for moment in named_moments(report)[index]}
    free = [epoch for epoch in report["epoch"] if epoch not in chosen]
    for epoch in rng.choice(free, size=KILLS_PER_CHAIN - len(chosen), replace=False):
        events = [event for event in report["events"] if event[0] == epoch]
        kinds = sorted({event[1] for event in events})  # a batch as likely as a write
        kind = kinds[rng.integers(len(kinds))]
        events = [event for event in events if event[1] == kind]
        chosen[int(epoch)] = events[rng.integers(len(events))]
    return [chosen[epoch] for epoch in sorted(chosen)]


@pytest.mark.parametrize("index", range(CHAINS))
def test_sigkill_anywhere_then_resume_ends_like_the_uninterrupted_run(
    tmp_path, server, uninterrupted, index
):
    expected_weights, expected = uninterrupted
    for moment in chain_moments(expected, index):
        code = server.run(tmp_path, moment)
        assert code == -signal.SIGKILL, (moment, code, output(tmp_path))
        assert os.path.exists(tmp_path / "state" / "state.npz") or moment[0] == 0, moment
    code = server.run(tmp_path)  # the same call again, to the end
    assert code == 0, output(tmp_path)
    weights, report = outcome(tmp_path)
    assert report["epoch"] == expected["epoch"]  # not one epoch more, nor one less
    assert report["history"] == expected["history"]
    assert len(weights) == len(expected_weights)
    for got, want in zip(weights, expected_weights, strict=True):
        np.testing.assert_array_equal(got, want)
    assert not os.listdir(tmp_path / "state")  # finished: nothing left, half-written or not


def test_sigkill_while_saving_the_model_keeps_the_previous_file(tmp_path):
    process = subprocess.run(
        [sys.executable, SCRIPT, str(tmp_path), "kill_in_save"],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert process.returncode == -signal.SIGKILL, (process.stdout + process.stderr)[-3000:]
    names = os.listdir(tmp_path)
    assert any(name.startswith(".tmp-") for name in names)  # the save that was cut short
    restored = finetune_tf.load_model(tmp_path / "model.keras")
    saved = np.load(tmp_path / "saved.npz")
    for got, want in zip(
        restored.get_weights(), [saved[f"arr_{i}"] for i in range(len(saved.files))], strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert isinstance(restored, keras.Model)
