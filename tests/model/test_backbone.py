"""Backbone sources, cutting, shapes, layers and errors."""

import os

import keras
import numpy as np
import pytest
from conftest import small_cnn

from finetune_tf import ApplicationPreprocessing, Backbone, HubLayer


def test_from_model_knows_shapes_and_layers():
    backbone = Backbone.from_model(small_cnn())
    assert backbone.input_shape == (8, 8, 3)
    assert backbone.output_shape == (6,)
    assert [layer.name for layer in backbone.layers] == [
        "pixels",
        "conv1",
        "bn1",
        "relu1",
        "conv2",
        "bn2",
        "features",
    ]
    assert backbone.preprocessing is None


def test_output_layer_cuts_the_model():
    backbone = Backbone.from_model(small_cnn(), output_layer="relu1")
    assert backbone.output_shape == (8, 8, 4)
    assert backbone.layers[-1].name == "relu1"


def test_unknown_output_layer_suggests_close_names():
    with pytest.raises(ValueError, match=r"output_layer.*'conv_1'.*Did you mean 'conv1'"):
        Backbone.from_model(small_cnn(), output_layer="conv_1")


def test_nested_models_count_inner_layers():
    inner = small_cnn(name="inner")
    inputs = keras.Input((8, 8, 3))
    outer = keras.Model(inputs, keras.layers.Dense(2, name="proj")(inner(inputs)))
    names = [layer.name for layer in Backbone.from_model(outer).layers]
    assert names[1:8] == ["pixels", "conv1", "bn1", "relu1", "conv2", "bn2", "features"]
    assert names[-1] == "proj"


def test_keras_applications_source_has_preprocessing():
    backbone = Backbone.from_keras_applications(
        "MobileNetV2", weights=None, input_shape=(32, 32, 3)
    )
    assert backbone.input_shape == (32, 32, 3)
    assert backbone.output_shape == (1, 1, 1280)
    assert isinstance(backbone.preprocessing, ApplicationPreprocessing)
    assert backbone.preprocessing.application == "mobilenet_v2"
    # mobilenet_v2 preprocessing maps [0, 255] to [-1, 1]
    out = backbone.preprocessing(np.array([[[[0.0, 127.5, 255.0]]]], "float32")).numpy()
    np.testing.assert_allclose(out.ravel(), [-1.0, 0.0, 1.0], atol=1e-6)


def test_keras_applications_local_weights_file(tmp_path):
    reference = Backbone.from_keras_applications(
        "MobileNetV2", weights=None, input_shape=(32, 32, 3)
    )
    path = str(tmp_path / "notop.weights.h5")
    reference.model.save_weights(path)
    loaded = Backbone.from_keras_applications("MobileNetV2", weights=path, input_shape=(32, 32, 3))
    for a, b in zip(reference.model.weights, loaded.model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_unknown_application_name_is_a_clear_error():
    with pytest.raises(
        ValueError,
        match=r"Unknown keras.applications name='MobileNetV3small'.*"
        r"Did you mean 'MobileNetV3Small'",
    ):
        Backbone.from_keras_applications("MobileNetV3small", weights=None)


def test_missing_weights_file_and_include_top_are_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="weights"):
        Backbone.from_keras_applications("MobileNetV2", weights=str(tmp_path / "nope.h5"))
    with pytest.raises(ValueError, match="include_top"):
        Backbone.from_keras_applications("MobileNetV2", weights=None, include_top=True)


def test_from_keras_file(tmp_path, images):
    model = small_cnn()
    path = str(tmp_path / "pretrained.keras")
    model.save(path)
    backbone = Backbone.from_file(path, output_layer="conv2")
    assert backbone.output_shape == (8, 8, 6)
    full = Backbone.from_file(path)
    np.testing.assert_allclose(
        full.model.predict(images, verbose=0), model.predict(images, verbose=0), atol=1e-6
    )


def test_from_keras2_h5_file(keras2_files, images):
    backbone = Backbone.from_file(keras2_files["h5"])
    assert backbone.input_shape == (8, 8, 3)
    np.testing.assert_allclose(
        backbone.model.predict(images, verbose=0),
        keras2_files["model"].predict(images, verbose=0),
        atol=1e-5,
    )
    cut = Backbone.from_file(keras2_files["h5"], output_layer="relu1")
    assert cut.output_shape == (6, 6, 4)


def test_from_saved_model_directory_trains_the_saved_variables(keras2_files, images):
    backbone = Backbone.from_file(keras2_files["saved_model"])
    hub_layer = backbone.model.layers[-1]
    assert isinstance(hub_layer, HubLayer)
    assert backbone.input_shape == (8, 8, 3)
    assert backbone.output_shape == (6,)
    # Same outputs as the Keras 2 model in inference mode.
    np.testing.assert_allclose(
        backbone.model.predict(images, verbose=0),
        keras2_files["model"].predict(images, verbose=0),
        atol=1e-5,
    )
    # 6 trainable (2 kernels, 2 biases, gamma, beta) + 2 BatchNorm statistics.
    assert len(hub_layer.trainable_weights) == 6
    assert len(hub_layer.non_trainable_weights) == 2


def test_load_picks_the_right_constructor(tmp_path, keras2_files):
    model = small_cnn()
    path = str(tmp_path / "m.keras")
    model.save(path)
    assert Backbone.load(model).model is model
    assert Backbone.load(path).source == "file 'm.keras'"
    assert Backbone.load(keras2_files["h5"]).source == "file 'keras2.h5'"
    assert isinstance(Backbone.load(keras2_files["saved_model"]).model.layers[-1], HubLayer)
    backbone = Backbone.load("MobileNetV3Small", weights=None, input_shape=(32, 32, 3))
    assert backbone.source.startswith("keras.applications.MobileNetV3Small")


def test_bad_sources_get_clear_errors(tmp_path, keras2_files):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Backbone.from_file(str(tmp_path / "missing.keras"))
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    with pytest.raises(ValueError, match=r"not a supported model file.*\.keras"):
        Backbone.from_file(str(text))
    fake = tmp_path / "fake.keras"
    fake.write_text("not a zip")
    with pytest.raises(ValueError, match="not a Keras archive"):
        Backbone.from_file(str(fake))
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(ValueError, match="saved_model.pb"):
        Backbone.from_file(str(empty_dir))
    with pytest.raises(ValueError, match="Did you mean 'ResNet50'"):
        Backbone.load("Resnet50")
    with pytest.raises(FileNotFoundError, match="source"):
        Backbone.load(os.path.join("models", "resnet.keras"))
    with pytest.raises(TypeError, match="source"):
        Backbone.load(42)


def test_tf_keras_model_is_refused_with_the_fix(keras2_files):
    with pytest.raises(TypeError, match=r"tf_keras \(Keras 2\).*tf.saved_model.save"):
        Backbone.from_model(keras2_files["model"])


def test_subclassed_model_without_inputs_is_refused():
    class Net(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="no defined inputs"):
        Backbone.from_model(Net())


def test_preprocessing_must_be_serializable():
    with pytest.raises(TypeError, match="preprocessing"):
        Backbone.from_model(small_cnn(), preprocessing=lambda x: x / 255)
    with pytest.raises(ValueError, match="Unknown preprocessing"):
        Backbone.from_model(small_cnn(), preprocessing="mobilenet_v9")


def test_imagenet_weights_without_a_network_name_the_file_and_where_it_goes(monkeypatch):
    """Offline, Keras' download fails inside keras.utils.get_file (urlretrieve)."""
    import urllib.error

    from keras.src.utils import file_utils

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(file_utils, "urlretrieve", offline)
    with pytest.raises(ConnectionError) as caught:
        Backbone.from_keras_applications(
            "MobileNetV3Small", weights="imagenet", input_shape=(32, 32, 3)
        )
    message = str(caught.value)
    assert "MobileNetV3Small" in message and "Temporary failure" in message
    assert "_no_top" in message and ".h5 in " in message
    assert os.path.join(".keras", "models") in message
    assert "weights=None" in message
    assert caught.value.__suppress_context__  # one error, not three chained tracebacks


def test_a_copy_computes_what_the_original_computes_with_adapted_preprocessing_layers():
    """Found by benchmarks/quality.py: a copy (made for every scikit-learn fit, strategy and
    mixed precision) of a backbone with an adapted Normalization normalised with the zeros
    and ones it was built with: its outputs differed by hundreds on wine's raw columns."""
    rng = np.random.default_rng(0)
    x = rng.normal(loc=[700.0, 2.0, -50.0], scale=[300.0, 0.5, 10.0], size=(64, 3))
    normalise = keras.layers.Normalization(name="normalise")
    normalise.adapt(x)
    bins = keras.layers.Discretization(num_bins=4, name="bins")
    bins.adapt(x[:, :1])
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, name="dense")(normalise(inputs))
    binned = keras.ops.cast(bins(inputs[:, :1]), "float32")
    model = keras.Model(inputs, keras.layers.Concatenate()([hidden, binned]))
    backbone = Backbone.from_model(model)
    copy = backbone.copy()
    np.testing.assert_allclose(
        copy.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5, atol=1e-5
    )
