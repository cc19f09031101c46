"""Heads: layers, activations, losses for both label formats, float32 output."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

from finetune_tf import (
    Backbone,
    FineTuner,
    FreezePolicy,
    Head,
    LabelAccuracy,
    LabelCrossentropy,
    Report,
)
from finetune_tf.model.head import Task, register_task


def build(head, backbone_model=None):
    backbone = Backbone.from_model(backbone_model or small_cnn(), output_layer="conv2")
    return FineTuner(backbone, head, freeze=FreezePolicy.none())


@pytest.mark.parametrize(
    "head, units, activation",
    [
        (Head.classifier(4), 4, "softmax"),
        (Head.classifier(2), 1, "sigmoid"),
        (Head.binary(), 1, "sigmoid"),
        (Head.multilabel(3), 3, "sigmoid"),
        (Head.regressor(2), 2, "linear"),
        (Head.classifier(4, logits=True), 4, "linear"),
    ],
)
def test_head_builds_named_layers(head, units, activation):
    model = build(head).model
    predictions = model.get_layer("predictions")
    assert predictions.units == units
    assert predictions.activation.__name__ == activation
    assert model.get_layer("pooling").__class__.__name__ == "GlobalAveragePooling2D"


def test_pooling_hidden_dropout_and_weight_decay():
    head = Head.classifier(3, pooling="max", hidden_units=(16, 8), dropout=0.3, weight_decay=1e-3)
    model = build(head).model
    assert isinstance(model.get_layer("pooling"), keras.layers.GlobalMaxPooling2D)
    assert model.get_layer("hidden_1").units == 16 and model.get_layer("hidden_2").units == 8
    assert model.get_layer("dropout").rate == pytest.approx(0.3)
    assert model.get_layer("predictions").kernel_regularizer is not None
    assert len(model.losses) == 3  # one L2 term per head kernel
    flat = build(Head.regressor(pooling="flatten")).model
    assert flat.get_layer("pooling").output.shape == (None, 8 * 8 * 6)
    none = build(Head.regressor(pooling="none")).model
    assert none.output.shape == (None, 8, 8, 1)


def test_3d_features_are_pooled_over_time():
    inputs = keras.Input((5, 7))
    model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
    tuner = FineTuner(Backbone.from_model(model), Head.classifier(3))
    assert isinstance(tuner.model.get_layer("pooling"), keras.layers.GlobalAveragePooling1D)


@pytest.mark.parametrize("logits", [False, True])
def test_crossentropy_accepts_sparse_and_one_hot(logits):
    rng = np.random.default_rng(0)
    raw = rng.normal(size=(6, 4)).astype("float32")
    y_pred = raw if logits else keras.ops.softmax(raw).numpy()
    sparse = np.array([0, 1, 2, 3, 0, 1])
    loss = LabelCrossentropy(from_logits=logits)
    expected = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)(sparse, y_pred)
    np.testing.assert_allclose(float(loss(sparse, y_pred)), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(loss(np.eye(4)[sparse], y_pred)), float(expected), rtol=1e-5)
    np.testing.assert_allclose(float(loss(sparse[:, None], y_pred)), float(expected), rtol=1e-5)


def test_binary_crossentropy_accepts_01_and_one_hot():
    y_pred = np.array([[0.9], [0.2], [0.6]], "float32")
    y = np.array([1, 0, 0])
    expected = float(keras.losses.BinaryCrossentropy()(y[:, None], y_pred))
    loss = LabelCrossentropy()
    assert float(loss(y, y_pred)) == pytest.approx(expected, rel=1e-5)
    assert float(loss(np.eye(2)[y], y_pred)) == pytest.approx(expected, rel=1e-5)
    metric = LabelAccuracy()
    metric.update_state(np.eye(2)[y], y_pred)
    assert float(metric.result()) == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    "y, y_pred",
    [
        (np.array([1, 0, 1, 1]), np.array([[0.9], [0.2], [0.1], [0.7]], "float32")),
        (np.array([2, 0, 1, 1]), np.eye(3, dtype="float32")[[2, 0, 0, 1]]),
    ],
)
def test_accuracy_in_a_graph_with_a_static_label_batch_and_a_dynamic_prediction_batch(y, y_pred):
    # What a string tensor x through Keras' array adapter gives: labels of shape (4,),
    # predictions of shape (None, units). TensorFlow's `==` on those has no known rank.
    import tensorflow as tf

    metric = LabelAccuracy()

    @tf.function(
        input_signature=[tf.TensorSpec((4,), tf.int64), tf.TensorSpec((None, y_pred.shape[1]))]
    )
    def update(labels, predictions):
        metric.update_state(labels, predictions)

    update(y, y_pred)
    assert float(metric.result()) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "head, y",
    [
        (Head.classifier(3), np.arange(24) % 3),
        (Head.classifier(3), np.eye(3)[np.arange(24) % 3]),
        (Head.binary(), np.arange(24) % 2),
        (Head.classifier(2), np.eye(2)[np.arange(24) % 2]),
        (Head.multilabel(3), (np.arange(72).reshape(24, 3) % 2).astype("float32")),
        (Head.regressor(), np.linspace(0, 1, 24).astype("float32")),
    ],
)
def test_every_head_trains_with_its_default_loss_and_metrics(head, y, images):
    keras.utils.set_random_seed(0)
    tuner = build(head)
    tuner.compile(learning_rate=1e-2)
    before = tuner.evaluate(images, y, verbose=0)[0]
    history = tuner.fit(images, y, epochs=15, batch_size=24, verbose=0)
    after = tuner.evaluate(images, y, verbose=0)[0]
    assert np.all(np.isfinite(history.history["loss"]))
    assert after < before  # the default loss is one it can learn from, in either label format
    metric = {
        "multiclass": "accuracy",
        "binary": "accuracy",
        "multilabel": "auc",
        "regression": "mae",
    }[head.task]
    assert metric in history.history


def test_predictions_are_float32_under_mixed_precision(images):
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        tuner = build(Head.classifier(3), small_cnn())
    finally:
        keras.config.set_dtype_policy(previous)
    assert tuner.backbone.model.get_layer("conv2").compute_dtype == "bfloat16"
    assert tuner.model.output.dtype == "float32"
    tuner.compile()
    history = tuner.fit(images, np.arange(24) % 3, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_head_arguments_are_checked():
    with pytest.raises(ValueError, match="at least 2 classes"):
        Head.classifier(1)
    with pytest.raises(ValueError, match="num_classes"):
        Head.classifier(0)
    with pytest.raises(ValueError, match="pooling"):
        Head.classifier(3, pooling="mean")
    with pytest.raises(ValueError, match="dropout"):
        Head.classifier(3, dropout=1.5)
    with pytest.raises(ValueError, match="hidden_units"):
        Head.classifier(3, hidden_units=(0,))
    with pytest.raises(ValueError, match="weight_decay"):
        Head.regressor(weight_decay=-1)
    with pytest.raises(ValueError, match="flatten"):
        FineTuner(
            Backbone.from_keras_applications("MobileNetV2", weights=None),
            Head.classifier(3, pooling="flatten"),
        )


@pytest.mark.parametrize(
    "head",
    [
        Head.classifier(4, pooling="max", hidden_units=(8, 4), dropout=0.25),
        Head.binary(logits=True),
        Head.multilabel(3, weight_decay=1e-4),
        Head.regressor(2, pooling="flatten"),
    ],
)
def test_head_config_round_trips(head):
    again = Head.from_config(head.get_config())
    assert again.get_config() == head.get_config()
    assert repr(again) == repr(head)
    json.dumps(head.get_config())  # a config is plain JSON, as Keras configs are


def test_a_new_task_is_one_small_class(monkeypatch):
    """A Poisson head for counts: a Task subclass, registered; Head, fit, report, export
    and the target checks take it without another change."""
    from finetune_tf.model.head import task as task_module

    monkeypatch.setattr(task_module, "_REGISTRY", dict(task_module._REGISTRY))

    @register_task
    class CountTask(Task):
        name = "counts"
        constructor = "counts"
        units_arg = "num_outputs"

        @property
        def activation(self):
            return "exponential"

        def default_loss(self):
            return keras.losses.Poisson()

        def default_metrics(self, prediction_rank=2):
            return [keras.metrics.MeanAbsoluteError(name="mae")]

        def check_targets(self, array, prediction_shape, argname, method):
            if (array < 0).any():
                raise ValueError(f"`{argname}` holds negative counts.")

        def report(self, predictions, y, names):
            return Report.for_values(y, predictions)

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    rate = np.exp(0.8 * x[:, :1])
    y = rng.poisson(rate).astype("float32")
    inputs = keras.Input((4,))
    backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Identity()(inputs)))
    keras.utils.set_random_seed(0)
    tuner = FineTuner(backbone, Head("counts", 1))
    assert repr(tuner.head) == "Head.counts(num_outputs=1, pooling='avg')"
    assert tuner.model.get_layer("predictions").activation.__name__ == "exponential"
    tuner.compile(learning_rate=0.05)
    first = tuner.evaluate(x, y, verbose=0, return_dict=True)["loss"]
    tuner.fit(x, y, epochs=20, verbose=0)
    assert tuner.evaluate(x, y, verbose=0, return_dict=True)["loss"] < first - 0.05
    assert "r2" in tuner.report(x, y)
    with pytest.raises(ValueError, match="negative counts"):
        tuner.fit(x, -y, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"`task` must be one of .*'counts'"):
        Head("count", 1)


def test_tasks_decide_reports_and_serving_outputs():
    scores = np.array([[0.2, 0.7, 0.1], [0.6, 0.3, 0.1]], "float32")
    report = Head.classifier(3).report(scores, np.array([1, 1]), class_names=["a", "b", "c"])
    assert report["accuracy"] == 0.5 and report["confusion_matrix"][1] == [1, 1, 0]
    served = Head.classifier(3).serving_outputs(scores, np.array(["a", "b", "c"]))
    assert served["class_id"].numpy().tolist() == [1, 0]
    assert [label.decode() for label in served["label"].numpy()] == ["b", "a"]
    logits = np.array([[-0.3], [0.4]], "float32")
    assert Head.binary(logits=True).serving_outputs(logits, np.array(["n", "y"]))[
        "class_id"
    ].numpy().tolist() == [0, 1]
    active = Head.multilabel(2).serving_outputs(tf.constant([[0.4, 0.6]]), None)["active"]
    assert active.numpy().tolist() == [[False, True]]
    assert Head.regressor().serving_outputs(scores, None) == {}


@pytest.mark.parametrize(
    "head, encodings",
    [
        (Head.classifier(3), lambda y: [y, y[:, None], np.eye(3, dtype="float32")[y], y]),
        (Head.binary(), lambda y: [y % 2, (y % 2)[:, None], np.eye(2)[y % 2], (y % 2) * 0.8]),
    ],
    ids=["classifier", "binary"],
)
def test_labels_may_change_rank_between_fits(head, encodings):
    """A notebook fits with ids, then with ids as a column, then one-hot rows: Keras traces
    the step again with a label of unknown rank, which the loss and the metric take."""
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5, name="features")])
    tuner = FineTuner(Backbone.from_model(backbone), head)
    tuner.compile()
    x = np.random.default_rng(0).random((16, 4), dtype=np.float32)
    y = np.arange(16) % 3
    for labels in encodings(y):
        history = tuner.fit(x, labels, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    # The same model, the same labels in three encodings: one loss, one accuracy.
    results = [tuner.evaluate(x, labels, verbose=0) for labels in encodings(y)[:3]]
    np.testing.assert_allclose(results, [results[0]] * 3, rtol=1e-5)
