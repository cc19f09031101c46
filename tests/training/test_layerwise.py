"""Discriminative (layer-wise) learning rates: `LayerwiseOptimizer` and `layerwise_lr_decay`."""

import keras
import numpy as np
import pytest
from conftest import small_cnn, weights_of

import finetune_tf
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, LayerwiseOptimizer, Stage


def _tuner(backbone=None, freeze=None):
    keras.utils.set_random_seed(0)
    backbone = backbone or Backbone.from_model(small_cnn())
    return FineTuner(backbone, Head.classifier(3), freeze=freeze or FreezePolicy.none())


def _restore(model, weights):
    for variable, value in zip(model.weights, weights, strict=True):
        variable.assign(value)


def test_multipliers_decay_from_the_head_down_through_the_weighted_layers():
    tuner = _tuner()
    tuner.compile("sgd", learning_rate=0.1, layerwise_lr_decay=0.5)
    optimizer = tuner.model.optimizer
    assert isinstance(optimizer, LayerwiseOptimizer)
    multipliers = dict(optimizer.multipliers)
    # small_cnn: conv1, bn1, relu1 (no weights), conv2, bn2 -> bn2 is the top weighted layer
    assert multipliers["predictions/kernel"] == 1.0
    assert multipliers["bn2/gamma"] == 0.5
    assert multipliers["conv2/kernel"] == 0.25
    assert multipliers["bn1/beta"] == 0.125
    assert multipliers["conv1/kernel"] == 0.0625
    assert optimizer.factors == [1.0, 0.5, 0.25, 0.125, 0.0625]


def _variables():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, name="low"), keras.layers.Dense(2, name="top")]
    )
    return model.trainable_variables


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop", "lion"])
def test_each_group_trains_exactly_as_the_optimizer_would_at_its_scaled_rate(name):
    """Fed the same gradients, variables with multiplier m follow `name` at learning_rate * m
    step for step (its state, weight decay and all): one optimizer copy per group."""
    rng = np.random.default_rng(0)
    steps = [[rng.normal(size=v.shape).astype("float32") for v in _variables()] for _ in range(3)]
    factors = {"low/kernel": 0.25, "low/bias": 0.25, "top/kernel": 1.0, "top/bias": 0.5}

    def run(optimizer, variables):
        for grads in steps:
            optimizer.apply(grads, variables)
        return {v.path.split("/", 1)[1]: v.numpy() for v in variables}

    keras.utils.set_random_seed(0)
    variables = _variables()
    start = [v.numpy() for v in variables]
    optimizer = keras.optimizers.get(name)
    pairs = [(v.path, factors[v.path.split("/", 1)[1]]) for v in variables]
    layerwise = run(LayerwiseOptimizer(optimizer, pairs), variables)
    for factor in set(factors.values()):
        for variable, value in zip(variables, start, strict=True):
            variable.assign(value)
        config = dict(optimizer.get_config(), learning_rate=float(optimizer.learning_rate) * factor)
        plain = run(optimizer.__class__.from_config(config), variables)
        for path, value in plain.items():
            if factors[path] == factor:
                np.testing.assert_allclose(layerwise[path], value, rtol=1e-6, atol=1e-7)
    assert not np.allclose(layerwise["low/kernel"], start[0])


def test_global_clipnorm_clips_the_norm_over_all_groups(images, labels):
    tuner = _tuner()
    start = weights_of(tuner.model)
    sgd = keras.optimizers.SGD(learning_rate=1.0, global_clipnorm=1e-3)
    tuner.compile(sgd, layerwise_lr_decay=0.5)
    multipliers = dict(tuner.model.optimizer.multipliers)
    tuner.fit(images, labels, batch_size=24, epochs=1, verbose=0)
    layerwise = {v.path: v.numpy().copy() for v in tuner.model.trainable_variables}
    _restore(tuner.model, start)
    tuner.compile(keras.optimizers.SGD(learning_rate=1.0, global_clipnorm=1e-3))
    tuner.fit(images, labels, batch_size=24, epochs=1, verbose=0)
    for variable in tuner.model.trainable_variables:
        if multipliers[variable.path] == 1.0:  # the head: same rate, so same clipped step
            np.testing.assert_allclose(layerwise[variable.path], variable.numpy(), atol=1e-7)


def test_setting_the_learning_rate_rescales_every_group():
    tuner = _tuner()
    tuner.compile("adam", learning_rate=1e-3, layerwise_lr_decay=0.5)
    optimizer = tuner.model.optimizer
    optimizer.learning_rate = 1e-2  # what ReduceLROnPlateau and the LR finder do
    assert float(optimizer.learning_rate) == pytest.approx(1e-2)
    rates = {factor: float(group.learning_rate) for factor, group, _ in optimizer._groups}
    assert rates == pytest.approx({f: 1e-2 * f for f in optimizer.factors})


def test_learning_rate_schedules_are_scaled_per_group(images, labels):
    tuner = _tuner()
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=1, decay_rate=0.5)
    tuner.compile("sgd", learning_rate=schedule, layerwise_lr_decay=0.5)
    tuner.fit(images, labels, batch_size=8, epochs=1, verbose=0)  # 3 steps
    for factor, group, _ in tuner.model.optimizer._groups:
        assert float(group.learning_rate) == pytest.approx(1e-2 * 0.5**3 * factor)


def test_only_trained_layers_count_and_frozen_ones_stay_frozen(images, labels):
    tuner = _tuner(freeze=FreezePolicy.top(3))  # features (no weights), bn2 and conv2 train
    frozen_before = [w.numpy().copy() for w in tuner.backbone.model.get_layer("conv1").weights]
    tuner.compile("adam", learning_rate=1e-2, layerwise_lr_decay=0.5)
    multipliers = dict(tuner.model.optimizer.multipliers)
    assert set(multipliers.values()) == {1.0, 0.5, 0.25}
    assert not any(path.startswith("conv1") for path in multipliers)
    tuner.fit(images, labels, epochs=1, verbose=0)
    for a, w in zip(frozen_before, tuner.backbone.model.get_layer("conv1").weights, strict=True):
        np.testing.assert_array_equal(a, w.numpy())


def test_hub_variable_groups_get_their_own_rates(keras2_files, images, labels):
    backbone = Backbone.from_file(keras2_files["saved_model"])
    tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.none())
    tuner.compile("adam", learning_rate=1e-2, layerwise_lr_decay=0.5)
    multipliers = tuner.model.optimizer.multipliers
    groups = [group for group in backbone.layers if group.trainable_weights]
    assert [g.name for g in groups] == ["conv1", "bn1", "conv2"]
    by_variable = {
        id(v): m for v, (_, m) in zip(tuner.model.trainable_variables, multipliers, strict=True)
    }
    for depth, group in enumerate(reversed(groups), start=1):
        assert {by_variable[id(v)] for v in group.trainable_weights} == {0.5**depth}
    before = [w.numpy().copy() for w in backbone.model.weights]
    tuner.fit(images, labels, epochs=1, verbose=0)
    hub_layer = backbone.model.layers[-1]
    assert not np.array_equal(hub_layer._loaded.variables[0].numpy(), before[0])


def test_stage_decay_applies_to_its_stage_only(images, labels):
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append(type(self.model.optimizer).__name__)

    tuner = _tuner(freeze=FreezePolicy.all())
    tuner.fit(
        images,
        labels,
        schedule=[
            Stage(1, FreezePolicy.all(), 1e-3),
            Stage(1, FreezePolicy.none(), 1e-4, layerwise_lr_decay=0.7),
            Stage(1, FreezePolicy.none(), 1e-5),
        ],
        callbacks=[Record()],
        verbose=0,
    )
    assert seen == ["Adam", "LayerwiseOptimizer", "Adam"]


def test_fine_tune_passes_the_decay_to_its_second_stage(images, labels):
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            optimizer = self.model.optimizer
            seen.append(len(getattr(optimizer, "factors", [1.0])))

    tuner = _tuner(freeze=FreezePolicy.none())
    tuner.fine_tune(
        images, labels, head_epochs=1, epochs=1, layerwise_lr_decay=0.8, callbacks=[Record()],
        verbose=0,
    )  # fmt: skip
    assert seen == [1, 5]


def test_layerwise_model_saves_and_loads_with_optimizer_state(tmp_path, images, labels):
    tuner = _tuner()
    tuner.compile("adam", learning_rate=1e-3, layerwise_lr_decay=0.5)
    tuner.fit(images, labels, epochs=1, verbose=0)
    path = str(tmp_path / "layerwise.keras")
    tuner.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, LayerwiseOptimizer)
    assert loaded.optimizer.multipliers == tuner.model.optimizer.multipliers
    for a, b in zip(loaded.optimizer.variables, tuner.model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    loaded.fit(images, labels, epochs=1, verbose=0)


@pytest.mark.parametrize("decay", [0, -0.5, 1.5, "0.8", True, float("nan")])
def test_bad_decay_is_refused_where_it_is_given(decay):
    tuner = _tuner()
    with pytest.raises(ValueError, match=r"layerwise_lr_decay.*\(0, 1\]"):
        tuner.compile("adam", layerwise_lr_decay=decay)
    with pytest.raises(ValueError, match="layerwise_lr_decay"):
        Stage(1, layerwise_lr_decay=decay)


def test_optimizer_built_for_other_variables_says_to_recompile():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1, name="dense")])
    optimizer = LayerwiseOptimizer(keras.optimizers.SGD(0.1), [("other/kernel", 1.0)])
    with pytest.raises(ValueError, match="Recompile"):
        optimizer.build(model.trainable_variables)
    with pytest.raises(TypeError, match="Keras optimizer"):
        LayerwiseOptimizer("adam", [])
    assert finetune_tf.LayerwiseOptimizer is LayerwiseOptimizer


def test_the_variable_check_allows_a_reloaded_scope_and_nothing_looser():
    with keras.name_scope("seq"):
        scoped = keras.layers.Dense(2, name="conv")
        scoped.build((None, 3))
    plain = keras.layers.Dense(2, name="conv")
    plain.build((None, 3))
    other = keras.layers.Dense(2, name="other")
    other.build((None, 3))
    assert scoped.kernel.path == "seq/conv/kernel" and plain.kernel.path == "conv/kernel"

    def build(expected, variables):
        optimizer = LayerwiseOptimizer(keras.optimizers.SGD(0.1), [(p, 1.0) for p in expected])
        optimizer.build(variables)

    build(["seq/conv/kernel"], [plain.kernel])  # reloaded: the Sequential's scope dropped
    build(["seq/conv/kernel"], [scoped.kernel])
    with pytest.raises(ValueError, match="other variables"):
        build(["conv/kernel"], [scoped.kernel])  # a longer path is another variable
    with pytest.raises(ValueError, match="other variables"):
        build(["seq/conv/kernel"], [other.kernel])
    with pytest.raises(ValueError, match="other variables"):
        build(["seq/conv/kernel"], [plain.kernel, plain.bias])
