"""The learning-rate range test leaves the model as it was and suggests a sensible rate."""

import keras
import numpy as np
import pytest
from conftest import small_cnn

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head


def test_sweep_restores_weights_and_optimizer(images, labels):
    tuner = FineTuner(
        Backbone.from_model(small_cnn()), Head.classifier(3), freeze=FreezePolicy.none()
    )
    tuner.compile(optimizer="adam", learning_rate=1e-3)
    tuner.fit(images, labels, epochs=1, verbose=0)
    optimizer = tuner.model.optimizer
    iterations = int(optimizer.iterations)
    before = [w.numpy().copy() for w in tuner.model.weights]
    result = tuner.find_learning_rate(images, labels, steps=30, batch_size=4)
    for w, b in zip(tuner.model.weights, before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)
    assert tuner.model.optimizer is optimizer and int(optimizer.iterations) == iterations
    assert float(optimizer.learning_rate) == pytest.approx(1e-3)
    lrs = np.asarray(result.learning_rates)
    assert len(lrs) == len(result.losses) >= 3
    np.testing.assert_allclose(lrs[1:] / lrs[:-1], lrs[1] / lrs[0], rtol=1e-6)  # exponential
    assert lrs[0] == pytest.approx(1e-7)
    assert lrs[0] / 10 <= result.suggestion <= lrs[-1] / 10
    tuner.fit(images, labels, epochs=1, verbose=0)  # still trains as compiled


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sweep_finds_the_useful_range_and_stops_on_divergence(seed):
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 4)).astype("float32")
    y = x @ np.array([1.0, -2.0, 0.5, 3.0], "float32")
    inputs = keras.Input((4,))
    backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(8)(inputs)))
    tuner = FineTuner(backbone, Head.regressor(), freeze=FreezePolicy.none())
    tuner.compile(optimizer="sgd")
    result = tuner.find_learning_rate(x, y, min_lr=1e-5, max_lr=10.0, steps=120, batch_size=16)
    assert 1e-4 < result.suggestion < 1.0  # SGD on this problem learns in this range
    assert len(result.losses) < 120  # the sweep stopped once the loss blew up


def test_plot_and_errors(tmp_path, images, labels):
    pytest.importorskip("matplotlib")
    tuner = FineTuner(Backbone.from_model(small_cnn()), Head.classifier(3))
    result = tuner.find_learning_rate(images, labels, steps=10, batch_size=4)
    path = tmp_path / "lr.png"
    figure = result.plot(str(path))
    assert path.stat().st_size > 1000 and figure.axes[0].get_xscale() == "log"
    with pytest.raises(ValueError, match="min_lr < max_lr"):
        tuner.find_learning_rate(images, labels, min_lr=1.0, max_lr=0.1)
    with pytest.raises(ValueError, match="steps"):
        tuner.find_learning_rate(images, labels, steps=1)


def test_a_curve_without_a_minimum_is_flagged_and_the_suggestion_stays_in_the_sweep():
    """Random labels cannot be learned: no learning rate makes the loss fall."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = rng.integers(0, 2, 64)
    inputs = keras.Input((4,))
    backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(8)(inputs)))
    tuner = FineTuner(backbone, Head.binary(), freeze=FreezePolicy.none())
    with pytest.warns(UserWarning, match="no reliable minimum"):
        result = tuner.find_learning_rate(x, y, min_lr=1e-7, max_lr=1e-5, steps=30, batch_size=8)
    assert not result.reliable and "did not fall" in result.note
    assert 1e-7 <= result.suggestion <= 1e-5


@pytest.mark.parametrize(
    "losses, reliable, words",
    [
        ([1.0] * 5 + [0.5] * 40 + [3.0] * 5, True, ""),
        ([0.2] + [1.0] * 49, False, "very start"),  # argmin / 10 would be below the sweep
        ([1.0 - 0.015 * i for i in range(50)], False, "still falling at max_lr"),
    ],
)
def test_the_suggestion_never_leaves_the_sweep(losses, reliable, words):
    from finetune_tf.training.lr_finder import _suggest

    lrs = list(np.geomspace(1e-7, 1.0, len(losses)))
    suggestion, note = _suggest(lrs, losses)
    assert lrs[0] <= suggestion <= lrs[-1]
    assert (note == "") is reliable and words in note
