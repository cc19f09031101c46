"""Every example runs end to end (short), so the examples are tests too."""

import importlib.util
import os

import numpy as np

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def load_example(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_runs_and_reports(tmp_path, capsys):
    result = load_example("quickstart").main(
        shots=5, head_epochs=3, epochs=2, workdir=str(tmp_path)
    )
    out = capsys.readouterr().out
    assert "fine-tuned from the pretrained backbone" in out and "from scratch" in out
    assert 0.0 <= result["fine_tuned"] <= 1.0 and 0.0 <= result["scratch"] <= 1.0
    assert result["reloaded_same"]
    assert os.path.exists(tmp_path / "tuned_digits_5-9.keras")
    assert np.isfinite(result["fine_tuned"])


def test_multi_worker_example_trains_on_two_local_workers(tmp_path, capsys):
    outputs = load_example("multi_worker").launch(2, 2, 2, workdir=str(tmp_path))
    assert "2 workers: test accuracy" in outputs[0]  # the chief reports
    assert "test accuracy" not in outputs[1]  # the other worker stays quiet
    assert "MultiWorkerMirroredStrategy, worker 0 of 2" in outputs[0]
    assert os.path.exists(tmp_path / "tuned.keras")
