"""tuner.export(): a SavedModel for TF Serving and a TFLite flatbuffer, both run here the
way their servers run them, with outputs matching the Keras model and labels aboard."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from finetune_tf import Backbone, FineTuner, FineTunerClassifier, FreezePolicy, Head

NAMES = ["cat", "dog", "fox"]


def tuner_for(head, width=64):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16,), name="x")
    hidden = keras.layers.Dense(width, activation="relu", name="dense_1")(inputs)
    hidden = keras.layers.Dense(width, activation="relu", name="dense_2")(hidden)
    tuner = FineTuner(
        Backbone.from_model(keras.Model(inputs, hidden)), head, freeze=FreezePolicy.none()
    )
    tuner.compile(learning_rate=1e-2)
    return tuner


X = np.random.default_rng(0).random((20, 16)).astype("float32")


def run_tflite(path, x):
    """What a mobile app does: the interpreter, the serving signature, named outputs."""
    runner = tf.lite.Interpreter(model_path=path).get_signature_runner("serving_default")
    return runner(inputs=x)


def test_classifier_exports_serve_the_same_predictions_and_labels(tmp_path):
    tuner = tuner_for(Head.classifier(3))
    tuner.fit(X, np.arange(20) % 3, epochs=3, verbose=0)
    expected = tuner.predict(X, verbose=0)
    labels = np.array(NAMES)[np.argmax(expected, axis=-1)].tolist()

    path = tuner.export(tmp_path / "serving", class_names=NAMES)
    served = tf.saved_model.load(path)
    outputs = served.signatures["serving_default"](inputs=tf.constant(X))  # TF Serving's call
    assert sorted(outputs) == ["class_id", "label", "predictions"]
    np.testing.assert_allclose(outputs["predictions"].numpy(), expected, atol=1e-6)
    assert [b.decode() for b in outputs["label"].numpy()] == labels
    np.testing.assert_array_equal(outputs["class_id"].numpy(), np.argmax(expected, axis=-1))
    np.testing.assert_allclose(served.serve(X).numpy(), expected, atol=1e-6)
    with open(os.path.join(path, "assets", "labels.txt")) as f:
        assert f.read().split() == NAMES

    lite = tuner.export(tmp_path / "model.tflite", format="tflite", class_names=NAMES)
    outputs = run_tflite(lite, X)
    np.testing.assert_allclose(outputs["predictions"], expected, atol=1e-5)
    assert [b.decode() for b in outputs["label"]] == labels

    small = tuner.export(
        tmp_path / "small.tflite", format="tflite", class_names=NAMES, quantize="dynamic"
    )
    assert os.path.getsize(small) < 0.5 * os.path.getsize(lite)  # int8 weights
    outputs = run_tflite(small, X)
    np.testing.assert_allclose(outputs["predictions"], expected, atol=2e-2)


def test_binary_multilabel_and_regression_heads(tmp_path):
    binary = tuner_for(Head.binary(logits=True))
    scores = binary.predict(X, verbose=0)[:, 0]
    outputs = run_tflite(
        binary.export(tmp_path / "b.tflite", format="tflite", class_names=["no", "yes"]), X
    )
    assert [b.decode() for b in outputs["label"]] == np.where(scores > 0, "yes", "no").tolist()

    multilabel = tuner_for(Head.multilabel(2))
    scores = multilabel.predict(X, verbose=0)
    path = multilabel.export(tmp_path / "m", class_names=["red", "round"])
    outputs = tf.saved_model.load(path).signatures["serving_default"](inputs=tf.constant(X))
    np.testing.assert_array_equal(outputs["active"].numpy(), scores > 0.5)
    with open(os.path.join(path, "assets", "labels.txt")) as f:
        assert f.read().split() == ["red", "round"]

    regression = tuner_for(Head.regressor(2))
    outputs = run_tflite(regression.export(tmp_path / "r.tflite", format="tflite"), X)
    assert sorted(outputs) == ["predictions"]
    np.testing.assert_allclose(outputs["predictions"], regression.predict(X, verbose=0), atol=1e-5)


def test_sklearn_classifier_exports_its_classes(tmp_path):
    inputs = keras.Input((16,))
    backbone = keras.Model(inputs, keras.layers.Dense(8, activation="relu")(inputs))
    y = np.array(["spam", "ham"])[np.arange(20) % 2]
    clf = FineTunerClassifier(backbone, head_epochs=3, epochs=1, random_state=0).fit(X, y)
    outputs = run_tflite(clf.export(tmp_path / "clf.tflite", format="tflite"), X)
    assert [b.decode() for b in outputs["label"]] == clf.predict(X).tolist()


def test_export_arguments_are_checked_and_failures_leave_the_old_file(tmp_path, monkeypatch):
    tuner = tuner_for(Head.classifier(3))
    with pytest.raises(ValueError, match=r"`format` must be one of.*Received: format='onnx'"):
        tuner.export(tmp_path / "m", format="onnx")
    with pytest.raises(ValueError, match=r"`quantize`='dynamic' applies to format='tflite'"):
        tuner.export(tmp_path / "m", quantize="dynamic")
    with pytest.raises(ValueError, match=r"`path`.*must end in \.tflite"):
        tuner.export(tmp_path / "model.lite", format="tflite")
    with pytest.raises(ValueError, match=r"`class_names` has 2 names.*3 classes"):
        tuner.export(tmp_path / "m", class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"`class_names` applies to classification"):
        tuner_for(Head.regressor()).export(tmp_path / "r", class_names=["a"])
    lite = tuner.export(tmp_path / "model.tflite", format="tflite")
    with pytest.raises(FileExistsError, match=r"overwrite=False"):
        tuner.export(lite, format="tflite", overwrite=False)
    before = open(lite, "rb").read()

    def broken(*args, **kwargs):
        raise RuntimeError("converter died")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", broken)
    with pytest.raises(RuntimeError, match="converter died"):
        tuner.export(lite, format="tflite")
    assert open(lite, "rb").read() == before  # the previous export is intact
    assert sorted(os.listdir(tmp_path)) == ["model.tflite"]  # no temporary leftovers


def test_a_non_chief_worker_writes_a_throwaway_copy(tmp_path, monkeypatch):
    import tempfile

    tuner = tuner_for(Head.classifier(3))
    monkeypatch.setattr(tuner.placement, "is_chief", lambda: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "worker_tmp"))
    os.makedirs(tmp_path / "worker_tmp")
    converted = []
    from_saved_model = tf.lite.TFLiteConverter.from_saved_model

    def spy(saved_model, **kwargs):
        converted.append(saved_model)
        return from_saved_model(saved_model, **kwargs)

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_saved_model", spy)
    target = tmp_path / "model.tflite"
    assert tuner.export(target, format="tflite") == str(target)
    tuner.save(tmp_path / "tuned.keras")
    assert not target.exists() and not (tmp_path / "tuned.keras").exists()  # chief's files
    assert converted[0].startswith(str(tmp_path / "worker_tmp"))  # it did export, elsewhere
    assert os.listdir(tmp_path / "worker_tmp") == []  # and cleaned up
