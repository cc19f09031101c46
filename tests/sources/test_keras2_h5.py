"""Keras 2 (tf_keras) `.h5` files whose model nests another model (the Keras guide's
`Sequential([base_model, pooling])` and `x = base_model(inputs)` patterns)."""

import h5py
import numpy as np
import pytest

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
from finetune_tf.sources.keras2_h5 import keras2_fix


def _base(batch_norm, name="base", depthwise=False):
    import tf_keras

    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.Conv2D(4, 3, name="conv")(inputs)
    if depthwise:  # Keras 2 saves groups=1 on it, which Keras 3 rejects (MobileNets)
        x = tf_keras.layers.DepthwiseConv2D(3, name="depthwise")(x)
    if batch_norm:
        x = tf_keras.layers.BatchNormalization(name="bn")(x)
    x = tf_keras.layers.ReLU(name="relu")(x)
    return tf_keras.Model(inputs, x, name=name)


def _keras2_nested_models():
    import tf_keras

    tf_keras.utils.set_random_seed(3)
    sequential_bn = tf_keras.Sequential(
        [tf_keras.Input((8, 8, 3)), _base(True), tf_keras.layers.GlobalAveragePooling2D()]
    )
    bn = sequential_bn.get_layer("base").get_layer("bn")  # statistics a fresh layer lacks
    rng = np.random.default_rng(1)
    bn.set_weights([rng.random(4) + 0.5, rng.random(4), rng.random(4), rng.random(4) + 0.5])
    base = _base(False)
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.GlobalAveragePooling2D(name="pool")(base(inputs))
    functional = tf_keras.Model(inputs, tf_keras.layers.Dense(5, name="dense")(x))
    sequential = tf_keras.Sequential(
        [
            tf_keras.Input((8, 8, 3)),
            _base(False, depthwise=True),
            tf_keras.layers.GlobalAveragePooling2D(),
        ]
    )
    return {"sequential_bn": sequential_bn, "functional": functional, "sequential": sequential}


@pytest.fixture(scope="session")
def nested_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("keras2_nested")
    files = {}
    for name, model in _keras2_nested_models().items():
        path = str(directory / f"{name}.h5")
        model.save(path)
        files[name] = (path, model)
    return files


@pytest.mark.parametrize("name", ["sequential_bn", "functional", "sequential"])
def test_nested_keras2_h5_loads_with_its_weights(nested_files, images, name):
    path, model = nested_files[name]
    with open(path, "rb") as f:
        before = f.read()
    backbone = Backbone.from_file(path)
    output = backbone.model(images)
    assert not isinstance(output, (list, tuple))  # not the nested model's one-element list
    np.testing.assert_allclose(
        np.asarray(output), model.predict(images, verbose=0), atol=1e-5, rtol=1e-5
    )
    with open(path, "rb") as f:
        assert f.read() == before  # the user's file is never written


@pytest.mark.parametrize("name", ["sequential_bn", "functional"])
def test_nested_keras2_h5_fine_tunes_one_epoch(nested_files, images, labels, name):
    backbone = Backbone.from_file(nested_files[name][0])
    tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.top(2), seed=0)
    tuner.compile(optimizer="adam", learning_rate=1e-2)
    conv = backbone.model.get_layer("base").get_layer("conv")
    frozen = conv.kernel.numpy().copy()
    trained = [v.numpy().copy() for v in tuner.model.trainable_variables]
    history = tuner.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert [layer.trainable for layer in backbone.layers[-3:]] == [False, True, True]
    np.testing.assert_array_equal(conv.kernel.numpy(), frozen)  # below the top 2: frozen
    after = [v.numpy() for v in tuner.model.trainable_variables]
    assert all(not np.array_equal(a, b) for a, b in zip(trained, after, strict=True))


def test_keras2_fix_rewrites_only_what_keras_3_misreads(nested_files):
    import json

    with h5py.File(nested_files["functional"][0], "r") as f:
        config = json.loads(f.attrs["model_config"])
    fixed = keras2_fix(config)
    layers = {layer["name"]: layer for layer in fixed["config"]["layers"]}
    assert layers["pool"]["inbound_nodes"] == [[["base", 0, 0, {}]]]  # Keras 2 said node 1
    base = layers["base"]["config"]
    assert base["output_layers"] == ["relu", 0, 0]  # one tensor, not a one-element list
    assert fixed["config"]["output_layers"] == config["config"]["output_layers"]
    assert keras2_fix(config) == fixed and config != fixed  # the input is not changed
    with h5py.File(nested_files["sequential_bn"][0], "r") as f:
        config = json.loads(f.attrs["model_config"])
    (bn,) = [
        layer
        for layer in keras2_fix(config)["config"]["layers"][1]["config"]["layers"]
        if layer["class_name"] == "BatchNormalization"
    ]
    assert bn["config"]["axis"] == 3  # Keras 2's [3]


def test_nested_keras2_h5_with_a_lambda_is_still_refused(tmp_path):
    import tf_keras

    inputs = tf_keras.Input((8, 8, 3))
    base = tf_keras.Model(inputs, tf_keras.layers.Lambda(lambda t: t * 2, name="double")(inputs))
    outer = tf_keras.Sequential([tf_keras.Input((8, 8, 3)), base])
    path = str(tmp_path / "lambda.h5")
    outer.save(path)
    with pytest.raises(ValueError, match="Refusing to load.*Lambda layer 'double'"):
        Backbone.from_file(path)


def test_flat_keras2_h5_with_a_depthwise_conv_loads(tmp_path, images):
    import tf_keras

    tf_keras.utils.set_random_seed(4)
    inputs = tf_keras.Input((8, 8, 3))
    x = tf_keras.layers.DepthwiseConv2D(3, name="depthwise")(inputs)  # saved with groups=1
    model = tf_keras.Model(inputs, tf_keras.layers.GlobalAveragePooling2D()(x))
    path = str(tmp_path / "flat.h5")
    model.save(path)
    np.testing.assert_allclose(
        Backbone.from_file(path).model.predict(images, verbose=0),
        model.predict(images, verbose=0),
        atol=1e-5,
    )


def _assert_loads_as_tf_keras(model, path, x):
    model.save(path)
    loaded = Backbone.from_file(path).model
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5, rtol=1e-5
    )


def test_keras2_mobilenet_v2_in_the_guides_sequential_loads_with_its_weights(tmp_path):
    import tf_keras

    tf_keras.utils.set_random_seed(5)
    base = tf_keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None
    )
    rng = np.random.default_rng(5)
    for layer in base.layers:  # statistics unlike a fresh layer's (variance positive)
        if isinstance(layer, tf_keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            size = gamma.shape
            layer.set_weights(
                [
                    rng.random(size) + 0.5,
                    rng.random(size) - 0.5,
                    rng.random(size),
                    rng.random(size) + 0.5,
                ]
            )
    model = tf_keras.Sequential(
        [tf_keras.Input((32, 32, 3)), base, tf_keras.layers.GlobalAveragePooling2D()]
    )
    x = rng.random((4, 32, 32, 3), dtype=np.float32)
    _assert_loads_as_tf_keras(model, str(tmp_path / "mobilenet_v2.h5"), x)


def _guide_block_and_keras2_only_arguments():
    import tf_keras

    layers = tf_keras.layers
    inputs = tf_keras.Input((8, 8, 3))  # the Keras guide's augmentation block first
    y = tf_keras.Sequential([layers.RandomFlip("horizontal"), layers.RandomRotation(0.1)])(inputs)
    y = layers.SeparableConv2D(4, 3, name="separable")(y)  # groups, kernel_* saved
    y = layers.Conv2DTranspose(4, 3, name="transpose")(y)  # groups=1 saved
    return tf_keras.Model(inputs, layers.GlobalAveragePooling2D()(y))


def _model_two_deep_in_a_sequential():
    import tf_keras

    inner = _base(False, name="inner")
    middle_inputs = tf_keras.Input((8, 8, 3))
    middle = tf_keras.Model(middle_inputs, inner(middle_inputs), name="middle")
    pooling = tf_keras.layers.GlobalAveragePooling2D()
    return tf_keras.Sequential([tf_keras.Input((8, 8, 3)), middle, pooling])


def _nested_sequential_as_the_output():
    import tf_keras

    layers = tf_keras.layers
    sequential = tf_keras.Sequential([layers.Conv2D(4, 3), layers.GlobalAveragePooling2D()])
    inputs = tf_keras.Input((8, 8, 3))
    return tf_keras.Model(inputs, sequential(layers.ReLU()(inputs)))


@pytest.mark.parametrize(
    "build",
    [
        _guide_block_and_keras2_only_arguments,
        _model_two_deep_in_a_sequential,
        _nested_sequential_as_the_output,
    ],
)
def test_more_keras2_files_keras_3_misreads_load_with_their_weights(tmp_path, build):
    import tf_keras

    tf_keras.utils.set_random_seed(6)
    x = np.random.default_rng(6).random((4, 8, 8, 3), dtype=np.float32)
    _assert_loads_as_tf_keras(build(), str(tmp_path / "model.h5"), x)


def test_a_compiled_keras2_file_keras_3_cannot_compile_names_the_fix(tmp_path, images):
    import tf_keras

    import finetune_tf

    inputs = tf_keras.Input((8, 8, 3))
    model = tf_keras.Model(inputs, tf_keras.layers.Conv2D(2, 3)(inputs))
    model.compile(optimizer="adam", loss="mse", metrics=["mse"])  # Keras 2's metric names
    path = str(tmp_path / "compiled.h5")
    model.save(path)
    with pytest.raises(ValueError, match=r"Keras 2 .*cannot restore.*compile=False"):
        finetune_tf.load_model(path)
    loaded = finetune_tf.load_model(path, compile=False)
    np.testing.assert_allclose(
        np.asarray(loaded(images)), model.predict(images, verbose=0), atol=1e-5
    )
    assert Backbone.from_file(path).model is not None  # a backbone is loaded uncompiled
