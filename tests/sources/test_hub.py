"""HubLayer and Backbone.from_hub: the trainable SavedModel wrapper shared by
SavedModel directories and TF Hub handles. Nothing downloads: URL handles are
served from a TFHUB_CACHE_DIR laid out the way tensorflow_hub's resolver does."""

import hashlib
import shutil
import socket

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import save_text_encoder

import finetune_tf
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, HubLayer

URL = "https://tfhub.dev/finetune-tf/test/small_cnn/1"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch, keras2_files):
    """A TFHUB_CACHE_DIR holding the test SavedModel under the URL's cache key."""
    cache = tmp_path / "tfhub_cache"
    cache.mkdir()
    shutil.copytree(keras2_files["saved_model"], cache / hashlib.sha1(URL.encode()).hexdigest())
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    return cache


@pytest.mark.parametrize(
    "url", [URL, "https://www.kaggle.com/models/finetune-tf/small-cnn/TensorFlow2/default/1"]
)
def test_url_handle_is_served_from_the_cache(url, tmp_path, monkeypatch, keras2_files, images):
    cache = tmp_path / "tfhub_cache"
    shutil.copytree(keras2_files["saved_model"], cache / hashlib.sha1(url.encode()).hexdigest())
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
    backbone = Backbone.from_hub(url)
    assert backbone.input_shape == (8, 8, 3)
    np.testing.assert_allclose(
        backbone.model.predict(images, verbose=0),
        keras2_files["model"].predict(images, verbose=0),
        atol=1e-5,
    )
    assert Backbone.load(url).output_shape == (6,)


def test_unresolvable_url_says_where_the_cache_is(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    with socket.socket() as s:  # a loopback port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/models/missing/1"
    key = hashlib.sha1(url.encode()).hexdigest()
    with pytest.raises(ValueError, match=rf"TFHUB_CACHE_DIR.*{key}"):
        Backbone.from_hub(url)
    # A notebook user saw what it was trying before the error came.
    assert f"finetune_tf: downloading Hub handle {url}" in capsys.readouterr().out


def test_a_cached_url_resolves_silently(hub_cache, capsys):
    Backbone.from_hub(URL)
    assert "downloading" not in capsys.readouterr().out


def test_training_flag_reaches_the_saved_model(keras2_files, images):
    layer = HubLayer(keras2_files["saved_model"])
    inference = layer(images, training=False).numpy()
    np.testing.assert_allclose(layer(images).numpy(), inference)
    # training=True: dropout and batch statistics inside the SavedModel change the output
    assert not np.allclose(layer(images, training=True).numpy(), inference)
    # (that training call also moved the BatchNorm statistics, as hub.KerasLayer does)
    inference = layer(images, training=False).numpy()
    layer.trainable = False  # a frozen layer always runs in inference mode
    np.testing.assert_allclose(layer(images, training=True).numpy(), inference)


def test_regularization_losses_are_added_while_training(keras2_files, images):
    inputs = keras.Input((8, 8, 3))
    layer = HubLayer(keras2_files["saved_model"])
    model = keras.Model(inputs, layer(inputs, training=True))
    model(images, training=True)
    kernel = keras2_files["model"].get_layer("conv1").kernel.numpy()
    expected = 0.01 * np.sum(np.square(kernel))
    assert len(model.losses) == 1
    np.testing.assert_allclose(float(model.losses[0]), expected, rtol=1e-5)


def test_adam_trains_variables_with_slashes_and_colons_in_their_names(keras2_files, images):
    backbone = Backbone.from_file(keras2_files["saved_model"])
    layer = backbone.model.layers[-1]
    assert "conv1/kernel" in layer.restored_variable_names
    assert all("/" not in w.name and ":" not in w.name for w in layer.weights)
    tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.none())
    for optimizer in ["adam", "adamw", "rmsprop", "sgd", "nadam", "adagrad"]:
        tuner.compile(optimizer=optimizer, learning_rate=1e-2)
        before = layer.weights[0].numpy().copy()
        tuner.fit(images, np.arange(24) % 3, epochs=1, verbose=0)
        # the optimizer's update reached the SavedModel's own variable
        assert not np.array_equal(layer._loaded.variables[0].numpy(), before), optimizer


def test_frozen_hub_backbone_stays_bit_for_bit(keras2_files, images):
    backbone = Backbone.from_file(keras2_files["saved_model"])
    tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.all())
    before = [w.numpy().copy() for w in backbone.model.weights]
    tuner.compile(learning_rate=1e-2)
    tuner.fit(images, np.arange(24) % 3, epochs=2, verbose=0)
    for a, w in zip(before, backbone.model.weights, strict=True):
        np.testing.assert_array_equal(a, w.numpy())


def test_signature_and_bad_arguments(keras2_files, images):
    layer = HubLayer(keras2_files["saved_model"], signature="serving_default")
    out = layer(images)
    assert tuple(out.shape) == (24, 6)
    with pytest.raises(ValueError, match=r"no signature 'serve'.*serving_default"):
        HubLayer(keras2_files["saved_model"], signature="serve")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HubLayer("/nonexistent/model")
    with pytest.raises(TypeError, match="handle"):
        HubLayer(42)


def test_url_backbone_round_trips_with_its_fine_tuned_weights(
    hub_cache, tmp_path, images, load_and_predict_elsewhere
):
    tuner = FineTuner(Backbone.from_hub(URL), Head.classifier(3), freeze=FreezePolicy.none())
    tuner.compile(learning_rate=0.1)
    tuner.fit(images, np.arange(24) % 3, epochs=2, verbose=0)
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    expected = tuner.predict(images, verbose=0)
    # a fresh process resolves the URL from the same TFHUB_CACHE_DIR, then loads the tuned weights
    np.testing.assert_allclose(
        load_and_predict_elsewhere(path, images, tmp_path), expected, atol=1e-5
    )
    restored = finetune_tf.load_model(path)
    assert restored.get_layer("backbone").backbone.layers[-1].handle == URL
    np.testing.assert_allclose(restored.predict(images, verbose=0), expected, atol=1e-5)


def test_text_encoder_with_string_inputs_fine_tunes_and_round_trips(
    tmp_path, load_and_predict_elsewhere
):
    handle = save_text_encoder(str(tmp_path / "text_encoder"))
    backbone = Backbone.from_hub(handle, output_key="pooled_output")
    assert backbone.input_dtype == "string" and backbone.output_shape == (4,)
    assert [g.name for g in backbone.layers[1:]] == [
        "text_encoder/embedding",
        "text_encoder/encoder_dense",
    ]
    tuner = FineTuner(backbone, Head.binary(), freeze=FreezePolicy.none())
    tuner.compile(learning_rate=0.1)
    texts = np.array(["good movie", "bad film", "great film", "awful movie"] * 4)
    labels = np.array([1, 0, 1, 0] * 4)
    # Mini-batches of a string tensor: labels of static batch size, predictions of None.
    tuner.fit(texts, labels, epochs=10, batch_size=4, verbose=0, validation_data=(texts, labels))
    assert tuner.evaluate(texts, labels, verbose=0)[1] == 1.0
    path = str(tmp_path / "text.keras")
    tuner.save(path)
    expected = tuner.predict(list(texts), verbose=0)
    # Loaded back, it takes what the tuner took: numpy strings, lists, tensors.
    for restored in (finetune_tf.load_model(path), keras.models.load_model(path)):
        assert isinstance(restored, finetune_tf.TunedModel)
        for given in (texts, list(texts), tf.constant(texts)):
            np.testing.assert_allclose(restored.predict(given, verbose=0), expected, atol=1e-6)
        restored.compile(loss="binary_crossentropy")
        assert np.all(np.isfinite(restored.evaluate(texts, labels, verbose=0)))
        restored.fit(texts, labels, epochs=1, verbose=0, validation_data=(list(texts), labels))
    np.testing.assert_allclose(
        load_and_predict_elsewhere(path, texts, tmp_path), expected, atol=1e-6
    )
    with pytest.raises(ValueError, match=r"output_key='pooled'.*pooled_output"):
        Backbone.from_hub(handle, output_key="pooled")


def test_compressed_archive_handle_is_extracted_into_the_hub_cache(
    tmp_path, monkeypatch, keras2_files, images, capsys
):
    import tarfile

    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "cache"))
    archive = str(tmp_path / "small_cnn.tar.gz")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(keras2_files["saved_model"], arcname=".")
    backbone = Backbone.from_hub(archive)
    np.testing.assert_allclose(
        backbone.model.predict(images, verbose=0),
        keras2_files["model"].predict(images, verbose=0),
        atol=1e-5,
    )
    extracted = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(extracted) == 1 and (extracted[0] / "saved_model.pb").exists()
    assert f"finetune_tf: extracting {archive}" in capsys.readouterr().out
    Backbone.from_hub(archive)
    assert "extracting" not in capsys.readouterr().out  # once: the second load uses the cache
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="archive"):
        Backbone.from_hub(str(broken))


def test_export_is_self_contained(tmp_path, keras2_files, images):
    handle = str(tmp_path / "encoder")
    shutil.copytree(keras2_files["saved_model"], handle)
    text_handle = save_text_encoder(str(tmp_path / "text_encoder"))
    image_tuner = FineTuner(Backbone.from_hub(handle), Head.classifier(3))
    text_tuner = FineTuner(
        Backbone.from_hub(text_handle, output_key="pooled_output"), Head.binary()
    )
    texts = ["good movie", "awful film"]
    expected_image = image_tuner.predict(images, verbose=0)
    expected_text = text_tuner.predict(texts, verbose=0)
    image_path = image_tuner.export(str(tmp_path / "image_export"), class_names=["a", "b", "c"])
    text_path = text_tuner.export(str(tmp_path / "text_export"), class_names=["neg", "pos"])
    image_lite = image_tuner.export(str(tmp_path / "image.tflite"), format="tflite")
    shutil.rmtree(handle)
    shutil.rmtree(text_handle)  # the exports must not need the handles
    image_served = tf.saved_model.load(image_path)
    np.testing.assert_allclose(image_served.serve(images).numpy(), expected_image, atol=1e-5)
    served = image_served.signatures["serving_default"](inputs=tf.constant(images))
    np.testing.assert_allclose(served["predictions"].numpy(), expected_image, atol=1e-5)
    names = np.array(["a", "b", "c"])[np.argmax(expected_image, axis=-1)]
    assert [label.decode() for label in served["label"].numpy()] == names.tolist()
    text_served = tf.saved_model.load(text_path)
    np.testing.assert_allclose(
        text_served.serve(tf.constant(texts)).numpy(), expected_text, atol=1e-5
    )
    served = text_served.signatures["serving_default"](inputs=tf.constant(texts))
    expected_labels = np.where(expected_text[:, 0] > 0.5, b"pos", b"neg")
    assert served["label"].numpy().tolist() == expected_labels.tolist()
    # TFLite: the Hub graph runs in the interpreter, labels included.
    lite = tf.lite.Interpreter(model_path=image_lite).get_signature_runner("serving_default")
    outputs = lite(inputs=images)
    np.testing.assert_allclose(outputs["predictions"], expected_image, atol=1e-4)
    assert outputs["label"].tolist() == [
        name.encode() for name in np.arange(3).astype(str)[np.argmax(expected_image, axis=-1)]
    ]
    # exporting again replaces the previous export in one move; other directories are refused
    assert image_tuner.export(image_path) == image_path
    (tmp_path / "notes").mkdir()
    with pytest.raises(ValueError, match="not a SavedModel directory"):
        image_tuner.export(str(tmp_path / "notes"))


def test_mixed_precision_keeps_the_hub_graph_in_its_dtype(keras2_files, images):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        tuner = FineTuner(
            Backbone.from_file(keras2_files["saved_model"]),
            Head.classifier(3, hidden_units=(8,)),
            freeze=FreezePolicy.none(),
        )
    finally:
        keras.config.set_dtype_policy(previous)
    assert tuner.model.get_layer("hidden_1").compute_dtype == "bfloat16"
    assert tuner.backbone.model.outputs[0].dtype == "float32"  # the SavedModel's own dtype
    assert tuner.model.output.dtype == "float32"
    tuner.compile(learning_rate=1e-2)
    history = tuner.fit(images, np.arange(24) % 3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
