"""Save and load: every backbone source round-trips in a fresh process; unsafe files are refused."""

import os

import keras
import numpy as np
import pytest
from conftest import small_cnn

import finetune_tf
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head


def backbone_from(source, tmp_path, keras2_files):
    if source == "model":
        return Backbone.from_model(small_cnn())
    if source == "keras_file":
        path = str(tmp_path / "pre.keras")
        small_cnn().save(path)
        return Backbone.from_file(path, output_layer="bn2")
    if source == "h5":
        return Backbone.from_file(keras2_files["h5"])
    if source == "saved_model":
        return Backbone.from_file(keras2_files["saved_model"])
    return Backbone.from_keras_applications(
        "MobileNetV3Small", weights=None, input_shape=(32, 32, 3)
    )


@pytest.mark.parametrize("source", ["model", "keras_file", "h5", "saved_model", "applications"])
def test_fine_tuned_model_round_trips_in_a_fresh_process(
    source, tmp_path, keras2_files, labels, load_and_predict_elsewhere
):
    backbone = backbone_from(source, tmp_path, keras2_files)
    input_shape = (8, 8, 3) if source != "applications" else (8, 8, 1)
    tuner = FineTuner(
        backbone,
        Head.classifier(3, hidden_units=(8,)),
        freeze=FreezePolicy.none(),
        input_shape=input_shape,
    )
    tuner.compile(learning_rate=1e-2)
    x = np.random.default_rng(0).uniform(0, 1, (24, *input_shape)).astype("float32")
    tuner.fit(x, labels, epochs=2, batch_size=8, verbose=0)
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    expected = tuner.predict(x, verbose=0)
    np.testing.assert_allclose(load_and_predict_elsewhere(path, x, tmp_path), expected, atol=1e-5)
    restored = finetune_tf.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), expected, atol=1e-5)
    # the loaded model keeps training with its compiled loss and the backbone's BatchNorm rule
    assert restored.get_layer("backbone").inference_mode
    restored.fit(x, labels, epochs=1, verbose=0)


def test_saved_model_backbone_loads_fine_tuned_weights_not_the_originals(
    tmp_path, keras2_files, labels
):
    tuner = FineTuner(
        Backbone.from_file(keras2_files["saved_model"]),
        Head.classifier(3),
        freeze=FreezePolicy.none(),
    )
    tuner.compile(learning_rate=0.1)
    x = np.random.default_rng(0).random((24, 8, 8, 3)).astype("float32")
    tuner.fit(x, labels, epochs=2, verbose=0)
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    fresh = Backbone.from_file(keras2_files["saved_model"]).model.predict(x, verbose=0)
    loaded = finetune_tf.load_model(path)
    tuned_features = loaded.get_layer("backbone").backbone.predict(x, verbose=0)
    assert not np.allclose(tuned_features, fresh)


def make_malicious_model(marker):
    """A model whose Lambda layer is stored as marshalled bytecode that writes `marker`."""
    payload = eval(f"lambda x: (open({marker!r}, 'w').close(), x)[1]")  # marker baked in
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Lambda(payload, name="evil")(inputs))


@pytest.mark.parametrize(
    "suffix, message",
    [
        (".h5", r"Lambda layer .evil.*ignores safe_mode.*safe_mode=False"),
        (".keras", "safe_mode"),
    ],
)
def test_model_file_with_lambda_bytecode_is_refused(suffix, message, tmp_path):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / f"evil{suffix}")
    make_malicious_model(marker).save(path)
    if os.path.exists(marker):
        os.remove(marker)
    with pytest.raises(ValueError, match=message):
        finetune_tf.load_model(path)
    with pytest.raises(ValueError, match=message):
        Backbone.from_file(path)
    assert not os.path.exists(marker)
    # Control: the file really carries the payload, which runs once the user trusts it.
    finetune_tf.load_model(path, safe_mode=False)(np.ones((1, 3)))
    assert os.path.exists(marker)


def test_weights_only_h5_is_a_clear_error(tmp_path):
    path = str(tmp_path / "only.weights.h5")
    small_cnn().save_weights(path)
    with pytest.raises(ValueError, match="weights-only"):
        finetune_tf.load_model(path)


def test_save_is_atomic_and_checks_the_path(tmp_path, monkeypatch):
    tuner = FineTuner(Backbone.from_model(small_cnn()), Head.classifier(3))
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    good = open(path, "rb").read()

    def crash(*args, **kwargs):
        with open(args[0], "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(tuner.model, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        tuner.save(path)
    assert open(path, "rb").read() == good  # the previous file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["tuned.keras"]  # no temp left behind
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"\.keras"):
        tuner.save(str(tmp_path / "tuned.h5"))
    with pytest.raises(FileNotFoundError, match="directory"):
        tuner.save(str(tmp_path / "missing" / "tuned.keras"))
    with pytest.raises(FileExistsError, match="overwrite"):
        tuner.save(path, overwrite=False)


def test_load_model_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        finetune_tf.load_model(str(tmp_path / "nope.keras"))
    with pytest.raises(ValueError, match="directory"):
        finetune_tf.load_model(str(tmp_path))
    other = tmp_path / "model.pt"
    other.write_bytes(b"\x00")
    with pytest.raises(ValueError, match="unsupported extension"):
        finetune_tf.load_model(str(other))
