"""Data that Keras takes silently but that spoils training gets a warning at fit."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

from finetune_tf import Backbone, FineTuner, Head


def rescaled_backbone(scale=1 / 255, preprocessing=None):
    """A backbone whose model starts by rescaling pixels, as pretrained files often do."""
    inputs = keras.Input((8, 8, 1))
    x = inputs if preprocessing is not None else keras.layers.Rescaling(scale)(inputs)
    x = keras.layers.Conv2D(4, 3, name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return Backbone.from_model(keras.Model(inputs, x), preprocessing=preprocessing)


def fit_warnings(tuner, x, y, **kwargs):
    tuner.compile()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tuner.fit(x, y, epochs=1, verbose=0, **kwargs)
    return [str(w.message) for w in caught if "FineTuner.fit" in str(w.message)]


RNG = np.random.default_rng(0)
LABELS = np.arange(40) % 2


@pytest.mark.parametrize(
    "backbone",
    [
        lambda: rescaled_backbone(1 / 255),  # the backbone's first layer rescales
        lambda: rescaled_backbone(preprocessing=keras.layers.Rescaling(1 / 127.5, offset=-1)),
        lambda: rescaled_backbone(preprocessing="mobilenet_v2"),  # keras.applications
    ],
)
def test_inputs_on_another_scale_than_the_backbone_expects_warn_with_the_factor(backbone):
    digits = RNG.integers(0, 17, (40, 8, 8, 1)).astype("float32")  # 0..16, as load_digits
    messages = fit_warnings(FineTuner(backbone(), Head.binary()), digits, LABELS)
    assert len(messages) == 1
    assert "values in [0, 16]" in messages[0] and "[0, 255]" in messages[0]
    assert "x = x * 15.94" in messages[0]


def test_inputs_on_the_expected_scale_do_not_warn_and_the_warning_comes_once():
    pixels = RNG.uniform(0, 255, (40, 8, 8, 1)).astype("float32")
    tuner = FineTuner(rescaled_backbone(), Head.binary())
    assert fit_warnings(tuner, pixels, LABELS) == []
    unit = pixels / 255  # [0, 1] into a network expecting [0, 255]
    tuner = FineTuner(rescaled_backbone(), Head.binary())
    assert len(fit_warnings(tuner, unit, LABELS)) == 1
    assert fit_warnings(tuner, unit, LABELS) == []  # once per tuner


def test_the_first_batch_of_a_dataset_is_checked():
    digits = RNG.integers(0, 17, (40, 8, 8, 1)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices((digits, LABELS)).batch(8)
    messages = fit_warnings(FineTuner(rescaled_backbone(), Head.binary()), data, None)
    assert len(messages) == 1 and "[0, 16]" in messages[0]


def test_a_backbone_without_a_known_range_is_not_guessed_at():
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    tuner = FineTuner(Backbone.from_model(keras.Model(inputs, x)), Head.binary())
    assert fit_warnings(tuner, RNG.random((40, 8, 8, 1)).astype("float32"), LABELS) == []


def test_validation_split_on_data_sorted_by_class_warns():
    x = RNG.uniform(0, 255, (50, 8, 8, 1)).astype("float32")
    sorted_labels = np.repeat(np.arange(5), 10)
    tuner = FineTuner(rescaled_backbone(), Head.classifier(5))
    messages = fit_warnings(tuner, x, sorted_labels, validation_split=0.2)
    assert len(messages) == 1
    assert "validation_split=0.2" in messages[0] and "only class 4" in messages[0]
    assert "sklearn.utils.shuffle" in messages[0]
    # Shuffled labels, or no split: nothing to say.
    assert fit_warnings(tuner, x, np.arange(50) % 5, validation_split=0.2) == []
    assert fit_warnings(tuner, x, sorted_labels) == []


def test_validation_split_with_classes_never_trained_on_warns_for_one_hot_labels_too():
    x = RNG.uniform(0, 255, (30, 8, 8, 1)).astype("float32")
    labels = np.array([0, 1] * 12 + [2] * 6)
    tuner = FineTuner(rescaled_backbone(), Head.classifier(3))
    (message,) = fit_warnings(tuner, x, np.eye(3)[labels], validation_split=0.2)
    assert "(1 of 1 never seen in training)" in message


def test_shuffled_imbalanced_labels_do_not_look_sorted():
    """2% positives, shuffled: the last 10% often holds no positive, which is chance."""
    from finetune_tf.training.data_checks import ordered_split_warning

    rng = np.random.default_rng(0)
    labels = np.zeros(500, "int64")
    labels[:10] = 1
    for _ in range(200):
        assert ordered_split_warning(rng.permutation(labels), 0.1) is None
    assert "(1 of 2 never seen in training)" in ordered_split_warning(np.sort(labels), 0.1)


def test_python_lists_of_labels_train_and_validate_like_arrays():
    # Keras takes a list y only beside a list x: FineTuner turns list labels (and the
    # validation labels) into arrays at the call, so both stages of fine_tune run.
    inputs = keras.Input((2,))
    sequential = keras.Sequential([inputs, keras.layers.Dense(3, name="features")])
    tuner = FineTuner(Backbone.from_model(sequential), Head.binary(), seed=0)
    x = np.random.default_rng(0).random((16, 2)).astype("float32")
    y = [0, 1] * 8
    history = tuner.fine_tune(
        x,
        y,
        head_epochs=1,
        epochs=2,
        batch_size=8,
        validation_data=(x, list(np.array(y))),
        verbose=0,
    )
    assert len(history.history["val_loss"]) == 3  # the head epoch, then two more
    assert set(tuner.evaluate(x, y, verbose=0, return_dict=True)) >= {"loss"}
