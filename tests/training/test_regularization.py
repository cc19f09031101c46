"""L2 / L1 penalties on the backbone's trained kernels: `compile(backbone_l2=, backbone_l1=)`."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetune_tf
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, Stage
from finetune_tf.training.regularization import BackbonePenalty, is_kernel

X = np.random.default_rng(0).random((12, 6), dtype=np.float32)
Y = np.arange(12) % 3
L2, L1 = 0.01, 0.002


def sequential_backbone():
    """d1 (with a regularizer of its own), bn, d2, ln: kernels d1 and d2."""
    return Backbone.from_model(
        keras.Sequential(
            [
                keras.Input((6,)),
                keras.layers.Dense(8, kernel_regularizer=keras.regularizers.L2(0.5), name="d1"),
                keras.layers.BatchNormalization(name="bn"),
                keras.layers.Dense(5, name="d2"),
                keras.layers.LayerNormalization(name="ln"),
            ],
            name="seq",
        )
    )


def functional_backbone():
    inputs = keras.Input((6,), name="x")
    x = keras.layers.Dense(8, name="low")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return Backbone.from_model(keras.Model(inputs, keras.layers.Dense(5, name="top")(x)))


def by_hand(kernels, l2=L2, l1=L1) -> float:
    """The penalty computed in numpy: l2 * sum(w**2) + l1 * sum(|w|)."""
    values = [np.asarray(k, dtype=np.float64) for k in kernels]
    return sum(l2 * np.sum(w**2) + l1 * np.sum(np.abs(w)) for w in values)


def layer(tuner, name):
    return next(lay for lay in tuner.backbone.layers if lay.name == name)


def penalty_of(tuner) -> float:
    """Our term of `model.losses` (the last one), 0.0 when there is none."""
    penalty = tuner.model.weight_penalty
    term = None if penalty is None else penalty(tuner.model)
    return 0.0 if term is None else float(term)


def evaluated_loss(tuner) -> float:
    return tuner.evaluate(X, Y, batch_size=12, verbose=0, return_dict=True)["loss"]


@pytest.fixture(scope="module")
def sequential():
    keras.utils.set_random_seed(0)
    return FineTuner(sequential_backbone(), Head.classifier(3), freeze=FreezePolicy.top(2))


def test_the_penalty_is_l2_and_l1_over_the_trained_kernels_and_is_in_the_loss(sequential):
    tuner = sequential
    tuner.compile("sgd", learning_rate=0.1)
    plain = evaluated_loss(tuner)
    assert tuner.model.losses == []  # d1's own regularizer: frozen, so none either

    tuner.compile("sgd", learning_rate=0.1, backbone_l2=L2, backbone_l1=L1)
    d1, d2 = layer(tuner, "d1").kernel, layer(tuner, "d2").kernel
    # top(2) trains d2 and ln: d2's kernel only (not its bias, not ln's gamma and beta)
    assert [v.path for v in tuner.model.weight_penalty.variables(tuner.model)] == [d2.path]
    expected = by_hand([d2])
    assert len(tuner.model.losses) == 1
    assert tuner.model.losses[0].dtype == tf.float32
    np.testing.assert_allclose(float(tuner.model.losses[0]), expected, rtol=1e-5)
    np.testing.assert_allclose(evaluated_loss(tuner) - plain, expected, rtol=1e-4)

    # Kept by recompile; follows set_freeze: none when all is frozen, both kernels when none
    tuner.recompile(learning_rate=0.01)
    np.testing.assert_allclose(penalty_of(tuner), expected, rtol=1e-5)
    tuner.set_freeze(FreezePolicy.all())
    assert tuner.model.losses == []
    tuner.set_freeze(FreezePolicy.none())
    np.testing.assert_allclose(penalty_of(tuner), by_hand([d1, d2]), rtol=1e-5)
    own = 0.5 * float(np.sum(d1.numpy() ** 2))  # d1's kernel_regularizer is kept, beside ours
    np.testing.assert_allclose(sum(map(float, tuner.model.losses)), own + by_hand([d1, d2]), 1e-5)
    assert tuner.get_config()["compile"]["backbone_l2"] == L2

    tuner.compile("sgd")  # a compile without them: no penalty
    assert penalty_of(tuner) == 0.0 and tuner.model.weight_penalty is None


def test_sgd_steps_shrink_the_trained_kernels_exactly_as_the_penalty_says():
    """With a loss that gives no gradient, each SGD step is w -= lr * (2 * l2 * w + l1 * sign(w))
    on the trained backbone kernels; a frozen layer, biases and the head stay as they were."""
    keras.utils.set_random_seed(0)
    tuner = FineTuner(functional_backbone(), Head.classifier(3), freeze=FreezePolicy.top(2))
    tuner.compile(
        "sgd",
        loss=lambda y, p: 0.0 * keras.ops.mean(p, axis=-1),
        learning_rate=0.5,
        backbone_l2=0.2,
        backbone_l1=1e-3,
    )
    before = {v.path: v.numpy().copy() for v in tuner.model.weights}
    tuner.fit(X, Y, epochs=3, batch_size=12, feature_cache=False, verbose=0)
    top = layer(tuner, "top").kernel
    expected = before[top.path].astype(np.float64)
    for _ in range(3):
        expected = expected - 0.5 * (2 * 0.2 * expected + 1e-3 * np.sign(expected))
    np.testing.assert_allclose(top.numpy(), expected, rtol=1e-5, atol=1e-7)
    assert np.linalg.norm(top.numpy()) < 0.75 * np.linalg.norm(before[top.path])
    for variable in tuner.model.weights:
        if variable.path != top.path:
            np.testing.assert_array_equal(variable.numpy(), before[variable.path], variable.path)


def test_a_stage_that_unfreezes_a_layer_adds_its_penalty_and_fine_tune_sets_it():
    class Penalties(keras.callbacks.Callback):
        seen = []

        def on_train_begin(self, logs=None):
            self.seen.append(len(self.model.losses))

    keras.utils.set_random_seed(0)
    tuner = FineTuner(functional_backbone(), Head.classifier(3))
    tuner.compile(backbone_l2=L2)
    tuner.fit(
        X,
        Y,
        schedule=[Stage(1, FreezePolicy.all()), Stage(1, FreezePolicy.top(1))],
        feature_cache=False,
        callbacks=[Penalties()],
        verbose=0,
    )
    assert Penalties.seen == [0, 1]
    top_only = by_hand([layer(tuner, "top").kernel], l1=0)
    np.testing.assert_allclose(penalty_of(tuner), top_only, rtol=1e-5)

    class Stop(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            if self.model.losses:
                raise RuntimeError("stopped where the penalty appears")

    # A run that fails gives the settings from before it back, its penalties too
    with pytest.raises(RuntimeError, match="stopped"):
        tuner.fine_tune(X, Y, head_epochs=1, epochs=1, backbone_l2=0.5, callbacks=[Stop()])
    np.testing.assert_allclose(penalty_of(tuner), top_only, rtol=1e-5)
    assert tuner.get_config()["compile"]["backbone_l2"] == L2

    Penalties.seen = []
    tuner = FineTuner(functional_backbone(), Head.classifier(3))  # not compiled
    with pytest.raises(ValueError, match="generator"):  # refused before the first step
        tuner.fine_tune((batch for batch in [(X, Y)]), backbone_l2=L2)
    with pytest.raises(RuntimeError, match="before `compile"):  # and left as it was
        tuner.fit(X, Y)
    tuner.fine_tune(
        X, Y, head_epochs=1, epochs=1, backbone_l1=L1, callbacks=[Penalties()], verbose=0
    )
    assert Penalties.seen == [0, 1]  # stage "head": frozen; "fine_tune": the whole backbone
    kernels = [layer(tuner, "low").kernel, layer(tuner, "top").kernel]
    np.testing.assert_allclose(penalty_of(tuner), by_hand(kernels, l2=0), rtol=1e-5)
    assert tuner.get_config()["compile"]["backbone_l1"] == L1


def test_the_penalty_survives_save_and_load_but_is_not_hidden_in_the_keras_file(tmp_path):
    keras.utils.set_random_seed(0)
    tuner = FineTuner(functional_backbone(), Head.classifier(3), freeze=FreezePolicy.none())
    tuner.compile(learning_rate=1e-3, backbone_l2=L2, backbone_l1=L1)
    path = os.path.join(tmp_path, "tuned.keras")
    tuner.save(path)
    again = FineTuner.load(path)
    np.testing.assert_allclose(penalty_of(again), penalty_of(tuner), rtol=1e-6)
    np.testing.assert_allclose(evaluated_loss(again), evaluated_loss(tuner), rtol=1e-5)
    plain = keras.models.load_model(path)
    assert isinstance(plain, finetune_tf.TunedModel) and plain.losses == []


def test_hub_kernels_are_penalised_and_precision_stays_float32(tmp_path):
    import tf_keras

    inputs = tf_keras.Input((6,))
    hidden = tf_keras.layers.BatchNormalization(name="bn")(tf_keras.layers.Dense(4)(inputs))
    tf.saved_model.save(tf_keras.Model(inputs, hidden), str(tmp_path))
    tuner = FineTuner(
        Backbone.from_hub(str(tmp_path)),
        Head.classifier(3),
        freeze=FreezePolicy.none(),
        mixed_precision="mixed_bfloat16",
    )
    tuner.compile(backbone_l2=L2, backbone_l1=L1)
    kernels = tuner.model.weight_penalty.variables(tuner.model)
    assert [v.name for v in kernels] == ["dense_kernel"]  # not its bias, not bn's gamma, beta
    term = tuner.model.losses[-1]
    assert term.dtype == tf.float32
    np.testing.assert_allclose(float(term), by_hand(kernels), rtol=1e-6)


def test_which_variables_are_kernels():
    embedding, attention = keras.layers.Embedding(10, 4), keras.layers.MultiHeadAttention(2, 4)
    embedding.build((None, 3))
    attention.build((None, 3, 8), (None, 3, 8))
    separable = keras.layers.SeparableConv2D(4, 3)
    separable.build((None, 8, 8, 3))
    assert not any(is_kernel(v) for v in embedding.weights)
    assert sorted(v.name for v in attention.weights if is_kernel(v)) == ["kernel"] * 4
    assert all(v.name == "bias" for v in attention.weights if not is_kernel(v))
    assert {v.name for v in separable.weights if is_kernel(v)} == {
        "depthwise_kernel",
        "pointwise_kernel",
    }
    with pytest.raises(ValueError, match=r"BackbonePenalty\(l2\).*>= 0.*l2=-1"):
        BackbonePenalty(functional_backbone(), l2=-1)
