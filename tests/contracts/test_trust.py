"""Untrusted model files: nothing in a file runs code on load unless the user trusts it.

Each file carries a payload that would create a marker file; the load must be refused
with a clear error, and the marker must never appear. A control load with
safe_mode=False shows each payload is real.
"""

import json
import os
import shutil
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetune_tf
from finetune_tf import Backbone, FineTuner, Head
from finetune_tf.sources.trust import unsafe_ops


def lambda_model(marker):
    """Dense "switch" then a Lambda whose marshalled bytecode writes `marker`."""
    payload = eval(f"lambda x: (open({marker!r}, 'w').close(), x)[1]")
    inputs = keras.Input((3,))
    x = keras.layers.Dense(3, name="switch")(inputs)
    return keras.Model(inputs, keras.layers.Lambda(payload, name="evil")(x))


def rewrite_config(path, edit):
    """Rewrites config.json inside a .keras archive with `edit(config)`."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def layer_config(config, name):
    return next(layer for layer in config["config"]["layers"] if layer["name"] == name)


def switch_off_safe_mode(config):
    """CVE-2025-1550/9906 style: a layer whose activation 'function' disables safe mode
    while the model is being deserialized, so that the Lambda after it loads."""
    layer_config(config, "switch")["config"]["activation"] = {
        "module": "keras.config",
        "class_name": "function",
        "config": "enable_unsafe_deserialization",
        "registered_name": "enable_unsafe_deserialization",
    }


def import_os_system(config):
    layer_config(config, "switch")["config"]["activation"] = {
        "module": "os",
        "class_name": "system",
        "config": {"command": "touch pwned"},
        "registered_name": None,
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        (switch_off_safe_mode, r"function keras\.config\.enable_unsafe_deserialization"),
        (import_os_system, r"object os\.system"),
    ],
)
def test_a_config_that_reaches_outside_keras_is_refused(edit, message, tmp_path):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.keras")
    lambda_model(marker).save(path)
    os.remove(marker)  # building the model ran the lambda once
    plain = str(tmp_path / "plain.keras")
    shutil.copy(path, plain)
    rewrite_config(path, edit)
    for load in (finetune_tf.load_model, Backbone.from_file):
        with pytest.raises(ValueError, match=message + r".*could run code.*safe_mode=False"):
            load(path)
    assert not os.path.exists(marker)
    # Control: the Lambda that the edit tries to unlock is a real payload once trusted.
    # (Keras 3.15 refuses enable_unsafe_deserialization by a deny-list of its own; ours is
    # an allow-list checked before Keras runs, so variants it misses are refused too.)
    finetune_tf.load_model(plain, safe_mode=False)(np.ones((1, 3)))
    assert os.path.exists(marker)


def test_a_damaged_or_foreign_keras_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"not a Keras archive.*damaged"):
        finetune_tf.load_model(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no config here")
    with pytest.raises(ValueError, match=r"not a Keras archive.*config\.json"):
        finetune_tf.load_model(path)


class WritesAFile(tf.Module):
    """A SavedModel whose graph writes a file whenever it is called: no Python, just ops."""

    def __init__(self, marker):
        super().__init__()
        self.marker = marker
        self.w = tf.Variable(tf.ones((3, 4)))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def __call__(self, x):
        tf.io.write_file(self.marker, "pwned")
        return tf.matmul(x, self.w)


def test_a_model_file_pointing_at_a_file_writing_saved_model_is_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    saved_model = str(tmp_path / "innocent_looking_savedmodel")
    tf.saved_model.save(WritesAFile(marker), saved_model)
    assert unsafe_ops(saved_model) == ["WriteFile"]
    # The user chose this SavedModel when building, so that is allowed...
    tuner = FineTuner(Backbone.from_hub(saved_model), Head.regressor())
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    if os.path.exists(marker):
        os.remove(marker)
    # ...but a model file that names it is refused in safe mode, by both loaders.
    message = r"innocent_looking_savedmodel.*write files or run Python.*WriteFile.*safe_mode=False"
    with pytest.raises(ValueError, match=message):
        finetune_tf.load_model(path)
    with pytest.raises(ValueError, match=message):
        keras.models.load_model(path)
    assert not os.path.exists(marker)
    # Control: trusted explicitly, it loads and its graph does write the file.
    restored = finetune_tf.load_model(path, safe_mode=False)
    restored(np.ones((1, 3), "float32"))
    assert os.path.exists(marker)


def test_a_clean_saved_model_backbone_still_loads_in_safe_mode(tmp_path):
    class Clean(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones((3, 4)))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w)

    saved_model = str(tmp_path / "clean")
    tf.saved_model.save(Clean(), saved_model)
    assert unsafe_ops(saved_model) == []
    tuner = FineTuner(Backbone.from_hub(saved_model), Head.regressor())
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(
        keras.models.load_model(path).predict(x, verbose=0), tuner.predict(x, verbose=0)
    )


@keras.saving.register_keras_serializable(package="trust_tests")
class Doubler(keras.layers.Layer):
    """A layer class the user's own code registered."""

    def call(self, x):
        return x * 2.0


def registered_layer_file(tmp_path):
    inputs = keras.Input((3,))
    path = str(tmp_path / "registered.keras")
    keras.Model(inputs, Doubler(name="doubler")(keras.layers.Dense(3, name="switch")(inputs))).save(
        path
    )
    return path


def test_a_layer_class_the_user_registered_loads_in_safe_mode(tmp_path):
    path = registered_layer_file(tmp_path)
    model = finetune_tf.load_model(path)
    assert isinstance(model.get_layer("doubler"), Doubler)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("module", "os", r"object os\.Doubler"),  # a registered name with another module
        ("class_name", "system", r"object .*\.system"),  # ... or another class
    ],
)
def test_a_registered_name_does_not_vouch_for_another_object(field, value, message, tmp_path):
    path = registered_layer_file(tmp_path)
    rewrite_config(path, lambda config: layer_config(config, "doubler").update({field: value}))
    with pytest.raises(ValueError, match=message + r".*could run code"):
        finetune_tf.load_model(path)


def test_a_lambda_inside_a_registered_layer_is_still_refused(tmp_path):
    path = registered_layer_file(tmp_path)

    def nest_lambda(config):
        layer_config(config, "doubler")["config"]["activation"] = {
            "class_name": "Lambda",
            "config": {"name": "evil"},
        }

    rewrite_config(path, nest_lambda)
    with pytest.raises(ValueError, match=r"Lambda layer 'evil'"):
        finetune_tf.load_model(path)
