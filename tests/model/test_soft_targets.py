"""Soft targets: rows of probabilities (label smoothing, mixup, a teacher's outputs)
train on their probabilities, not on their argmax; rows that are not probability
distributions are refused at the door."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, LabelAccuracy, LabelCrossentropy

K = 3


def backbone() -> Backbone:
    return Backbone.from_model(
        keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8, activation="relu", name="hidden"),
                keras.layers.Dense(5, name="features"),
            ]
        )
    )


def tuner(head=None, seed=0) -> FineTuner:
    keras.utils.set_random_seed(seed)
    t = FineTuner(backbone(), head or Head.classifier(K), freeze=FreezePolicy.none(), seed=seed)
    t.compile(learning_rate=1e-2)
    return t


def data(n=48, seed=0):
    """Inputs and the class each belongs to (the largest of its first K features)."""
    x = np.random.default_rng(seed).normal(size=(n, 6)).astype("float32")
    return x, np.argmax(x[:, :K], axis=1)


def smoothed(labels, k=K, amount=0.1):
    return keras.utils.to_categorical(labels, k) * (1 - amount) + amount / k


def mixup(labels, k=K, seed=0):
    """Each row a mix of two examples' one-hot rows, with a weight drawn from Beta(0.4, 0.4)."""
    rng = np.random.default_rng(seed)
    lam = rng.beta(0.4, 0.4, size=(len(labels), 1)).astype("float32")
    one_hot = keras.utils.to_categorical(labels, k)
    return lam * one_hot + (1 - lam) * one_hot[rng.permutation(len(labels))]


def predictions(logits: bool, seed=0):
    raw = np.random.default_rng(seed).normal(size=(6, K)).astype("float32")
    return raw if logits else keras.ops.softmax(raw).numpy()


# --- The loss ------------------------------------------------------------------------


@pytest.mark.parametrize("logits", [False, True])
def test_the_loss_on_soft_rows_is_categorical_crossentropy_not_the_argmax_loss(logits):
    y_pred = predictions(logits)
    soft = mixup(np.arange(6) % K)
    loss = LabelCrossentropy(from_logits=logits)
    expected = keras.losses.CategoricalCrossentropy(from_logits=logits)(soft, y_pred)
    np.testing.assert_allclose(float(loss(soft, y_pred)), float(expected), rtol=1e-6)
    hard = np.argmax(soft, axis=1)
    assert abs(float(loss(soft, y_pred)) - float(loss(hard, y_pred))) > 1e-2

    def gradient(y):
        y_hat = tf.constant(y_pred)
        with tf.GradientTape() as tape:
            tape.watch(y_hat)
            value = loss(y, y_hat)
        return tape.gradient(value, y_hat).numpy()

    assert not np.allclose(gradient(soft), gradient(hard), atol=1e-3)


@pytest.mark.parametrize("logits", [False, True])
def test_one_hot_rows_give_the_loss_of_their_class_ids(logits):
    y_pred = predictions(logits)
    ids = np.array([0, 1, 2, 2, 0, 1])
    loss = LabelCrossentropy(from_logits=logits)
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=logits)(ids, y_pred)
    np.testing.assert_allclose(float(loss(ids, y_pred)), float(sparse), rtol=1e-6)
    np.testing.assert_allclose(float(loss(np.eye(K)[ids], y_pred)), float(sparse), rtol=1e-6)


def test_a_binary_head_trains_on_the_probability_of_class_1():
    y_pred = np.array([[0.9], [0.2], [0.6]], "float32")
    soft = np.array([0.8, 0.1, 0.5], "float32")
    expected = keras.losses.BinaryCrossentropy()(soft[:, None], y_pred)
    loss = LabelCrossentropy()
    np.testing.assert_allclose(float(loss(soft, y_pred)), float(expected), rtol=1e-6)
    rows = np.stack([1 - soft, soft], axis=1)
    np.testing.assert_allclose(float(loss(rows, y_pred)), float(expected), rtol=1e-6)


# --- Training through FineTuner.fit ----------------------------------------------------


def mean_confidence(t, x) -> float:
    return float(np.max(t.predict(x, verbose=0), axis=1).mean())


def test_label_smoothing_trains_less_confident_predictions_than_hard_labels():
    # Were smoothed rows trained as their argmax, both runs would be the same run.
    x, labels = data()
    hard, soft = tuner(), tuner()
    hard.fit(x, keras.utils.to_categorical(labels, K), epochs=60, batch_size=16, verbose=0)
    soft.fit(x, smoothed(labels, amount=0.3), epochs=60, batch_size=16, verbose=0)
    confident, smooth = mean_confidence(hard, x), mean_confidence(soft, x)
    assert confident > 0.9
    # Smoothing by 0.3 over 3 classes makes 0.8 the best confidence a model can have.
    assert smooth < 0.85 < confident
    assert soft.evaluate(x, labels, verbose=0)[1] > 0.8  # it still learns the classes


def test_mixup_rows_train_and_their_accuracy_is_that_of_their_argmax():
    x, labels = data()
    y = mixup(labels)
    t = tuner()
    history = t.fit(x, y, epochs=20, batch_size=16, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]
    loss, accuracy = t.evaluate(x, y, verbose=0)
    assert accuracy == pytest.approx(t.evaluate(x, np.argmax(y, axis=1), verbose=0)[1])
    assert loss != pytest.approx(t.evaluate(x, np.argmax(y, axis=1), verbose=0)[0], rel=1e-3)


def test_a_binary_head_trains_on_soft_targets():
    x, labels = data()
    soft = np.clip(0.5 + x[:, 0] / 4, 0, 1).astype("float32")  # a probability of class 1
    t = tuner(Head.binary())
    history = t.fit(x, soft, epochs=10, batch_size=16, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and history["loss"][-1] < history["loss"][0]


def test_accuracy_of_soft_rows_is_the_accuracy_of_their_argmax():
    y_pred = predictions(False)
    soft = mixup(np.arange(6) % K)

    def accuracy(y):
        metric = LabelAccuracy()
        metric.update_state(y, y_pred)
        return float(metric.result())

    assert accuracy(soft) == accuracy(np.argmax(soft, axis=1))
    binary = LabelAccuracy()
    binary.update_state(np.array([0.7, 0.3, 0.5]), np.array([[0.9], [0.2], [0.6]]))
    assert float(binary.result()) == pytest.approx(2 / 3)  # 0.5 counts as class 0


def test_a_report_counts_a_soft_row_as_its_argmax():
    x, labels = data()
    t = tuner()
    soft = mixup(labels)
    assert t.report(x, soft) == t.report(x, np.argmax(soft, axis=1))
    binary = tuner(Head.binary())
    p = np.clip(0.5 + x[:, 0] / 4, 0, 1)
    assert binary.report(x, p) == binary.report(x, (p > 0.5).astype(int))
    rows = np.stack([1 - p, p], axis=1)
    assert binary.report(x, rows) == binary.report(x, (p > 0.5).astype(int))


# --- Refusals --------------------------------------------------------------------------


def rows_with(row: int, values) -> np.ndarray:
    x, labels = data()
    y = smoothed(labels)
    y[row] = values
    return y


@pytest.mark.parametrize(
    "head, y, words",
    [
        (None, rows_with(3, [np.nan, 0.5, 0.5]), r"`y\[3\]` = \[nan, 0\.5, 0\.5\] holds NaN"),
        (None, rows_with(3, [-0.2, 0.6, 0.6]), r"`y\[3\]` = .*negative.*np\.clip"),
        (
            None,
            rows_with(3, [0.5, 0.2, 0.0]),
            r"`y\[3\]` = \[0\.5, 0\.2, 0\. \] sums to 0\.7.*sum to 1 \(within 0\.001\)"
            r".*y / y\.sum\(axis=-1, keepdims=True\)",
        ),
        (Head.binary(), np.r_[np.zeros(3), 1.3, np.zeros(44)], r"binary.*`y\[3\]` = 1\.3"),
        (
            Head.multilabel(K),
            rows_with(3, [0.2, -0.1, 0.9]),
            r"multi-label.*outside \[0, 1\].*`y\[3\]` = \[ 0\.2, -0\.1,  0\.9\]",
        ),
    ],
    ids=["nan-row", "negative-entry", "sums-to-0.7", "binary-1.3", "multilabel-negative"],
)
def test_targets_that_are_not_probabilities_are_refused_before_training(head, y, words):
    x, _ = data()
    t = tuner(head)
    before = [w.numpy().copy() for w in t.model.weights]
    with pytest.raises(ValueError, match=r"`y`") as info:
        t.fit(x, y, epochs=1, verbose=0)
    assert info.match(words)
    assert all(np.array_equal(a, w.numpy()) for a, w in zip(before, t.model.weights, strict=True))
    with pytest.raises(ValueError, match=words):
        t.evaluate(x, y, verbose=0)


def test_validation_targets_are_checked_under_their_own_name():
    x, labels = data()
    bad = rows_with(5, [0.5, 0.2, 0.0])
    with pytest.raises(ValueError, match=r"`validation_data\[1\]\[5\]` = .*sums to 0\.7"):
        tuner().fit(x, smoothed(labels), validation_data=(x, bad), epochs=1, verbose=0)


def test_rows_that_sum_to_1_within_the_tolerance_are_taken():
    x, labels = data()
    y = smoothed(labels)
    y[0] += [4e-4, 0, 0]  # float32 rounding, smoothing written with a few decimals
    tuner().fit(x, y, epochs=1, verbose=0)


# --- Saving ----------------------------------------------------------------------------

EVALUATE_IN_FRESH_PROCESS = textwrap.dedent(
    """
    import sys, numpy as np, keras
    import finetune_tf  # registers the loss; nothing else is needed
    x, y = np.load(sys.argv[1]), np.load(sys.argv[2])
    for path in sys.argv[3:]:
        model = keras.models.load_model(path)
        loss = model.evaluate(x, y, verbose=0)[0]
        print(type(model.loss).__name__, model.loss.from_logits, loss)
    """
)


def test_a_saved_model_loads_elsewhere_and_gives_the_same_soft_loss(tmp_path):
    x, labels = data()
    y = mixup(labels)
    x_path, y_path = str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
    np.save(x_path, x)
    np.save(y_path, y)
    tuners, paths = {}, []
    for logits in (False, True):
        t = tuners[logits] = tuner(Head.classifier(K, logits=logits))
        t.fit(x, y, epochs=10, batch_size=16, verbose=0)
        paths.append(str(tmp_path / f"logits_{logits}.keras"))
        t.model.save(paths[-1])
    result = subprocess.run(
        [sys.executable, "-c", EVALUATE_IN_FRESH_PROCESS, x_path, y_path, *paths],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()[-2:]
    for (logits, t), line in zip(tuners.items(), lines, strict=True):
        kind, from_logits, loss = line.split()
        assert (kind, from_logits) == ("LabelCrossentropy", str(logits))
        assert float(loss) == pytest.approx(t.evaluate(x, y, verbose=0)[0], rel=1e-5)
        # The loss of the rows, not of their argmax.
        assert float(loss) != pytest.approx(t.evaluate(x, labels, verbose=0)[0], rel=1e-2)
