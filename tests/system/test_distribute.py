"""Training under tf.distribute: 2 logical CPU devices (MirroredStrategy) and 2 worker
processes on localhost (MultiWorkerMirroredStrategy), each against one-device training.

Device configuration and the multi-worker strategy must precede TensorFlow's runtime
start, so each run is a fresh process of tests/system/workers/distributed_training.py.
"""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

import finetune_tf

SCRIPT = os.path.join(os.path.dirname(__file__), "workers", "distributed_training.py")
TIMEOUT = 240  # seconds for any one run; the processes are killed after it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))  # loopback only
        return s.getsockname()[1]


def launch(out, mode, backbone, env=None):
    return subprocess.Popen(
        [sys.executable, SCRIPT, str(out), mode, backbone],
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(processes):
    """Waits for all, within TIMEOUT; always kills what is left; returns their outputs."""
    outputs = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT)
            outputs.append(output)
            assert process.returncode == 0, output[-4000:]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()
    return outputs


def arrays(path):
    saved = np.load(path)
    return [saved[f"arr_{i}"] for i in range(len(saved.files))]


def result(out):
    with open(f"{out}.json") as f:
        return arrays(out), json.load(f)


def initial_weights(out):
    """The weights the worker's `FineTuner(seed=7)` started from."""
    return arrays(f"{out}.init.npz")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One-device training under TensorFlow's default strategy, per backbone kind."""
    directory = tmp_path_factory.mktemp("reference")
    outs = {kind: directory / f"{kind}.npz" for kind in ("keras", "hub")}
    finish([launch(out, "reference", kind) for kind, out in outs.items()])
    return {kind: (*result(out), initial_weights(out)) for kind, out in outs.items()}


def assert_same_training(got, want):
    (weights, report), (ref_weights, ref_report) = got[:2], want[:2]
    assert len(weights) == len(ref_weights)
    for w, r in zip(weights, ref_weights, strict=True):
        np.testing.assert_allclose(w, r, atol=1e-5)
    np.testing.assert_allclose(report["loss"], ref_report["loss"], rtol=1e-5)
    np.testing.assert_allclose(report["evaluate"], ref_report["evaluate"], rtol=1e-5)
    assert report["predict_shape"] == ref_report["predict_shape"] == [64, 3]


@pytest.mark.parametrize("backbone", ["keras", "hub"])
def test_auto_strategy_mirrors_over_logical_cpus_like_one_device(backbone, reference, tmp_path):
    out = tmp_path / "mirrored.npz"
    (output,) = finish([launch(out, "logical_cpus", backbone)])
    got = result(out)
    report = got[1]
    assert report["strategy"] == "MirroredStrategy" and report["replicas"] == 2
    assert [d.split("/")[-1] for d in report["devices"]] == ["device:CPU:0", "device:CPU:1"]
    assert "finetune_tf: training on 2 devices (CPU:0, CPU:1), MirroredStrategy" in output
    assert reference[backbone][1]["strategy"] == "_DefaultDistributionStrategy"
    assert_same_training(got, reference[backbone])
    # The same seed draws the same initial weights (the head's included) under the strategy.
    initial, reference_initial = initial_weights(out), reference[backbone][2]
    assert len(initial) == len(reference_initial)
    for got_weight, want_weight in zip(initial, reference_initial, strict=True):
        np.testing.assert_array_equal(got_weight, want_weight)


def test_two_workers_on_localhost_train_like_one_process(reference, tmp_path):
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    outs = [tmp_path / f"worker{i}.npz" for i in range(2)]
    temporary = [tmp_path / f"tmp{i}" for i in range(2)]
    for directory in temporary:
        directory.mkdir()
    processes = [
        launch(
            out,
            "multi_worker",
            "keras",
            {
                "TF_CONFIG": json.dumps(
                    {"cluster": cluster, "task": {"type": "worker", "index": i}}
                ),
                "TMPDIR": str(temporary[i]),
            },
        )
        for i, out in enumerate(outs)
    ]
    outputs = finish(processes)
    (w0, r0), (w1, r1) = result(outs[0]), result(outs[1])
    for report in (r0, r1):
        assert report["strategy"] == "CollectiveAllReduceStrategy"  # MultiWorkerMirrored
        assert report["replicas"] == 2
    assert "worker 0 of 2" in outputs[0] and "worker 1 of 2" in outputs[1]
    # Both workers hold identical weights, equal to one process on the same global batches.
    for a, b in zip(w0, w1, strict=True):
        np.testing.assert_array_equal(a, b)
    assert_same_training((w0, r0), reference["keras"])
    # Only the chief wrote the model file; it loads with plain Keras.
    assert (r0["is_chief"], r1["is_chief"]) == (True, False)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [
            "tuned.keras",
            "checkpoint.keras",
            "backup",
            "tmp0",
            "tmp1",
            *[o.name for o in outs],
            *[f"{o.name}.json" for o in outs],
            *[f"{o.name}.init.npz" for o in outs],
        ]
    )
    restored = keras.models.load_model(tmp_path / "tuned.keras")
    for a, b in zip(restored.get_weights(), w0, strict=True):
        np.testing.assert_allclose(a, b)
    # The user's ModelCheckpoint and BackupAndRestore: the chief wrote the real files, the
    # other worker wrote its copies into a temporary directory, removed after fit.
    assert keras.models.load_model(tmp_path / "checkpoint.keras").count_params() > 0
    assert "latest.weights.h5" in os.listdir(tmp_path / "backup")
    assert r0["temporary_files"] == []
    worker_files = {os.path.basename(name) for name in r1["temporary_files"]}
    assert {"checkpoint.keras", "latest.weights.h5"} <= worker_files, r1["temporary_files"]
    assert all(name.startswith("finetune_tf_worker_") for name in r1["temporary_files"])
    assert os.listdir(temporary[0]) == os.listdir(temporary[1]) == []


def test_plain_keras_multi_worker_fit_is_still_broken_upstream(tmp_path):
    """Tells us when keras-team/keras#20585 is fixed, so distribute_compat can go."""
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    env = [
        {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}
        for i in range(2)
    ]
    outs = [tmp_path / f"canary{i}.npz" for i in range(2)]
    finish([launch(out, "canary", "keras", e) for out, e in zip(outs, env, strict=True)])
    for out in outs:
        with open(f"{out}.json") as f:
            error = json.load(f)["plain_keras_error"]
        assert "PerReplica" in error, (
            f"Plain Keras fit under MultiWorkerMirroredStrategy no longer fails ({error!r}): "
            f"upstream ({finetune_tf.runtime.multi_worker.UPSTREAM_ISSUE}) may be fixed; check "
            "whether finetune_tf/distribute_compat.py is still needed."
        )
