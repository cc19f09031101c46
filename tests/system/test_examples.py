"""Every example runs end to end (short), so the examples are tests too."""

import importlib.util
import os
import re
import runpy
import subprocess
import sys

import numpy as np
import pytest

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "examples")


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
    # The README shows the lines the script prints, in the same form (whole percents).
    with open(os.path.join(EXAMPLES, os.pardir, "README.md")) as f:
        readme = f.read()
    for line in out.splitlines()[-4:-1]:  # the header and the two accuracy lines
        shape = re.sub(r"\d+", r"\\d+", re.escape(line))
        assert re.search("^" + shape + "$", readme, re.M), line
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


def test_image_folder_example_reads_class_subfolders(tmp_path, capsys):
    result = load_example("image_folder").main(
        per_class=8, image_size=32, head_epochs=2, epochs=1, workdir=str(tmp_path)
    )
    out = capsys.readouterr().out
    assert result["class_names"] == ["circle", "square", "triangle"]
    assert "confusion matrix" in out and "stage 'fine_tune'" in out
    assert sorted(os.listdir(tmp_path / "shapes")) == result["class_names"]
    assert len(os.listdir(tmp_path / "shapes" / "circle")) == 8
    assert (tmp_path / "shapes.keras").exists() and (tmp_path / "curves.png").exists()
    assert 0.0 <= result["accuracy"] <= 1.0


def test_text_classification_example_fine_tunes_a_hub_text_encoder(tmp_path, capsys):
    result = load_example("text_classification").main(
        shots=8, head_epochs=30, epochs=10, workdir=str(tmp_path)
    )
    out = capsys.readouterr().out
    assert "fine-tuned pretrained encoder" in out
    assert (tmp_path / "text_encoder" / "saved_model.pb").exists()  # the Hub-format export
    assert (tmp_path / "reviews.keras").exists()
    # The pretrained encoder transfers: it beats the same encoder without pretraining.
    assert result["fine_tuned"] > result["scratch"]


def test_text_classification_example_fine_tunes_a_keras_hub_preset(tmp_path, capsys):
    pytest.importorskip("keras_hub")  # the keras-hub extra
    result = load_example("text_classification").keras_hub_main(
        shots=8, head_epochs=10, epochs=2, workdir=str(tmp_path)
    )
    out = capsys.readouterr().out
    assert "KerasHub preset, 8 labels per class" in out and "F1" in out
    assert (tmp_path / "tiny_bert" / "config.json").exists()  # the save_to_preset directory
    assert os.path.exists(result["path"])
    # The tiny BERT was pretrained on movie reviews: restaurant reviews are easy for it.
    assert result["accuracy"] >= 0.9 and result["f1"] >= 0.9


def run_script(name, *args, env=None):
    return subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )


def test_the_quickstart_as_a_script_leaves_no_temporary_files(tmp_path):
    """Run as the README runs it (short), in a TMPDIR of its own: nothing is left there."""
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    args = ["--shots", "2", "--head-epochs", "1", "--epochs", "1"]
    result = run_script("quickstart", *args, env={"TMPDIR": str(temporary)})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--workdir DIR keeps the files" in result.stdout
    assert os.listdir(temporary) == []


def test_image_folder_refuses_weights_without_a_backbone(monkeypatch, capsys):
    """The script's own command line, run as __main__ in this process (which has imported
    TensorFlow already): the refusal is argparse's exit status 2 and message."""
    script = os.path.join(EXAMPLES, "image_folder.py")
    monkeypatch.setattr(sys, "argv", [script, "--weights", "imagenet"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    assert exit_info.value.code == 2
    assert "--backbone MobileNetV3Small --weights imagenet" in capsys.readouterr().err


def test_growing_classes_example_grows_a_named_tuner(tmp_path, capsys):
    result = load_example("growing_classes").main(
        head_epochs=2, epochs=1, pretrain_epochs=1, workdir=str(tmp_path), compare=False
    )
    out = capsys.readouterr().out
    assert "old classes" in out and "new classes" in out and "nine" in out
    assert result["class_names"][-1] == "nine" and len(result["class_names"]) == 10
    assert (tmp_path / "digits_0-9.keras").exists() and (tmp_path / "serving").is_dir()


def test_pretraining_example_pretrains_and_fine_tunes_both(capsys):
    result = load_example("pretraining").main(labels=2, pretrain_epochs=1, head_epochs=1, epochs=1)
    out = capsys.readouterr().out
    assert "pre-trained on" in out and "from scratch" in out
    assert set(result) == {"pretrained", "scratch"}
    assert all(0.0 <= value <= 1.0 for value in result.values())
