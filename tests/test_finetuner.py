"""FineTuner: Keras conventions, freezing through fit, recompiling, input adaptation, errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, InputAdapter


def make_tuner(freeze=None, **kwargs):
    model = small_cnn()
    return FineTuner(Backbone.from_model(model), Head.classifier(3), freeze=freeze, **kwargs), model


def layer_weights(model, names):
    return {n: [w.numpy().copy() for w in model.get_layer(n).weights] for n in names}


def test_frozen_weights_stay_bit_for_bit_while_trainable_ones_move(images, labels):
    tuner, model = make_tuner(FreezePolicy.bottom(3))  # pixels, conv1, bn1 frozen
    tuner.compile(optimizer="adam", learning_rate=1e-2)
    before = layer_weights(model, ["conv1", "bn1", "conv2"])
    tuner.fit(images, labels, epochs=2, batch_size=8, verbose=0)
    after = layer_weights(model, ["conv1", "bn1", "conv2"])
    for name in ["conv1", "bn1"]:
        for a, b in zip(before[name], after[name], strict=True):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(before["conv2"][0], after["conv2"][0])


def test_changing_the_policy_after_compile_takes_effect(images, labels):
    tuner, model = make_tuner(FreezePolicy.all())
    tuner.compile(optimizer="adam", learning_rate=1e-2)
    tuner.fit(images, labels, epochs=1, verbose=0)
    head_kernel = tuner.model.get_layer("predictions").kernel.numpy().copy()
    conv1 = model.get_layer("conv1").kernel.numpy().copy()
    tuner.freeze = FreezePolicy.none()  # Keras alone would ignore this until compile()
    assert tuner.freeze_report.frozen_layers == []
    # trained weights were kept by the recompile
    np.testing.assert_array_equal(tuner.model.get_layer("predictions").kernel.numpy(), head_kernel)
    tuner.fit(images, labels, epochs=1, verbose=0)
    assert not np.array_equal(model.get_layer("conv1").kernel.numpy(), conv1)
    # and back: freezing again really stops the backbone
    tuner.set_freeze(FreezePolicy.all())
    conv1 = model.get_layer("conv1").kernel.numpy().copy()
    tuner.fit(images, labels, epochs=1, verbose=0)
    np.testing.assert_array_equal(model.get_layer("conv1").kernel.numpy(), conv1)


def test_keras_inputs_and_return_values(images, labels):
    tuner, _ = make_tuner(FreezePolicy.none())
    tuner.compile(optimizer=keras.optimizers.SGD(), learning_rate=0.05)
    assert float(tuner.model.optimizer.learning_rate) == pytest.approx(0.05)
    seen = []
    callback = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append(epoch))
    history = tuner.fit(
        images,
        labels,
        validation_split=0.25,
        epochs=2,
        batch_size=8,
        verbose=0,
        callbacks=[callback],
        class_weight={0: 1.0, 1: 2.0, 2: 1.0},
    )
    assert isinstance(history, keras.callbacks.History)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert seen == [0, 1]
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)
    tuner.fit(dataset, validation_data=dataset, epochs=1, verbose=0)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return images[i * 8 : (i + 1) * 8], labels[i * 8 : (i + 1) * 8]

    tuner.fit(Batches(), epochs=1, verbose=0)
    results = tuner.evaluate(images, labels, verbose=0)
    assert isinstance(results, list) and len(results) == 2
    as_dict = tuner.evaluate(dataset, verbose=0, return_dict=True)
    assert set(as_dict) == {"loss", "accuracy"}
    predictions = tuner.predict(images, verbose=0)
    assert isinstance(predictions, np.ndarray) and predictions.shape == (24, 3)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)


def test_input_shape_adapts_small_grayscale_images():
    backbone = Backbone.from_keras_applications(
        "MobileNetV3Small", weights=None, input_shape=(32, 32, 3)
    )
    tuner = FineTuner(backbone, Head.classifier(3), input_shape=(28, 28, 1))
    assert tuner.input_shape == (28, 28, 1)
    adapter = tuner.model.get_layer("input_adapter")
    assert isinstance(adapter, InputAdapter)
    out = adapter(np.arange(28 * 28, dtype="float32").reshape(1, 28, 28, 1))
    assert tuple(out.shape) == (1, 32, 32, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # channel repeated
    tuner.compile()
    x = np.random.default_rng(0).uniform(0, 255, (6, 28, 28, 1)).astype("float32")
    tuner.fit(x, np.arange(6) % 3, epochs=1, verbose=0)


def test_channel_projection_is_learned(images, labels):
    tuner = FineTuner(
        Backbone.from_model(small_cnn()),
        Head.classifier(3),
        freeze=FreezePolicy.all(),
        input_shape=(8, 8, 5),
    )
    adapter = tuner.model.get_layer("input_adapter")
    np.testing.assert_allclose(adapter.projection.numpy(), np.full((5, 3), 0.2))
    tuner.compile(learning_rate=1e-2)
    tuner.fit(np.random.default_rng(0).random((24, 8, 8, 5)), labels, epochs=1, verbose=0)
    assert not np.allclose(adapter.projection.numpy(), 0.2)


def test_shape_mismatch_names_both_shapes_and_the_fix(labels):
    tuner, _ = make_tuner()
    tuner.compile()
    wrong = np.zeros((24, 28, 28, 1), "float32")
    with pytest.raises(ValueError, match=r"\(28, 28, 1\).*\(8, 8, 3\).*input_shape=\(28, 28, 1\)"):
        tuner.fit(wrong, labels)
    with pytest.raises(ValueError, match="input_shape"):
        tuner.predict(wrong)
    dataset = tf.data.Dataset.from_tensor_slices((wrong, labels)).batch(4)
    with pytest.raises(ValueError, match=r"\(28, 28, 1\)"):
        tuner.evaluate(dataset)
    with pytest.raises(ValueError, match="cannot be adapted"):
        make_tuner(input_shape=(64,))


def test_label_and_data_errors(images, labels):
    tuner, _ = make_tuner()
    tuner.compile()
    with pytest.raises(ValueError, match=r"outside the integer range 0..2.*num_classes"):
        tuner.fit(images, labels + 1)
    with pytest.raises(ValueError, match="LabelEncoder"):
        tuner.fit(images, np.array(["cat", "dog", "eel"] * 8))
    with pytest.raises(ValueError, match=r"24 inputs but 23 labels"):
        tuner.fit(images, labels[:-1])
    with pytest.raises(ValueError, match=r"one-hot labels of shape \(n, 3\)"):
        tuner.fit(images, np.zeros((24, 4)))
    with pytest.raises(ValueError, match="empty"):
        tuner.fit(images[:0], labels[:0])
    with pytest.raises(ValueError, match="validation_data"):
        tuner.fit(images, labels, validation_data=(images, labels + 5))


def test_compile_errors_and_order():
    tuner, _ = make_tuner()
    with pytest.raises(RuntimeError, match=r"before `compile\(\)`"):
        tuner.fit(np.zeros((2, 8, 8, 3)), np.zeros(2))
    with pytest.raises(RuntimeError, match="compile"):
        tuner.evaluate(np.zeros((2, 8, 8, 3)), np.zeros(2))
    with pytest.raises(ValueError, match=r"Unknown optimizer='adma'.*Did you mean.*'adam'"):
        tuner.compile(optimizer="adma")
    with pytest.raises(ValueError, match="learning_rate"):
        tuner.compile(learning_rate=0)
    with pytest.raises(ValueError, match="learning_rate"):
        tuner.compile(learning_rate=-1e-3)
    with pytest.raises(ValueError, match="Unknown loss"):
        tuner.compile(loss="cross_entropy")
    with pytest.raises(TypeError, match="optimizer"):
        tuner.compile(optimizer=object())


def test_constructor_errors():
    with pytest.raises(TypeError, match="head"):
        FineTuner(Backbone.from_model(small_cnn()), "classifier")
    with pytest.raises(TypeError, match="freeze"):
        FineTuner(Backbone.from_model(small_cnn()), Head.classifier(3), freeze=3)
    with pytest.raises(ValueError, match="input_shape"):
        FineTuner(Backbone.from_model(small_cnn()), Head.classifier(3), input_shape=(0, 8, 3))
    with pytest.raises(ValueError, match=r"bottom\(n\)"):
        FineTuner(
            Backbone.from_model(small_cnn()), Head.classifier(3), freeze=FreezePolicy.bottom(50)
        )


def test_compile_passes_keras_arguments_through(images, labels):
    tuner, _ = make_tuner()
    tuner.compile(metrics=["accuracy"], run_eagerly=True)
    assert tuner.model.run_eagerly
    history = tuner.fit(images, labels, epochs=1, verbose=0)
    assert "accuracy" in history.history


def test_augmentation_runs_while_training_only_and_round_trips(tmp_path, images):
    keras.utils.set_random_seed(0)
    tuner = FineTuner(
        Backbone.from_model(small_cnn()),
        Head.classifier(3),
        augmentation=[keras.layers.RandomFlip("horizontal"), keras.layers.RandomContrast(0.5)],
    )
    inference = tuner.predict(images, verbose=0)
    np.testing.assert_array_equal(inference, tuner.predict(images, verbose=0))
    training = keras.ops.convert_to_numpy(tuner.model(images, training=True))
    assert not np.allclose(training, inference)
    path = str(tmp_path / "augmented.keras")
    tuner.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), inference, atol=1e-6)
    with pytest.raises(TypeError, match="augmentation.*RandomFlip"):
        FineTuner(Backbone.from_model(small_cnn()), Head.classifier(3), augmentation="flip")
