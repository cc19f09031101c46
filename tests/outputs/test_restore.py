"""A saved tuner comes back as a tuner: `FineTuner.load`, and the configs behind it."""

import json

import keras
import numpy as np
import pytest
from conftest import small_cnn

import finetune_tf
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, Stage


def sequential_backbone():
    """The model kind users have first: a Sequential CNN, with BatchNorm (valid statistics)."""
    model = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(4, 3, name="conv1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(name="relu1"),
            keras.layers.Conv2D(6, 3, name="conv2"),
        ],
        name="seq_cnn",
    )
    return Backbone.from_model(model)


def data(n=48, shape=(12, 12, 1), seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.normal(size=(n, *shape)).astype("float32") + y[:, None, None, None]
    return x, y


def test_a_saved_tuner_loads_as_a_tuner_ready_to_train_again(tmp_path):
    x, y = data()
    tuner = FineTuner(
        sequential_backbone(),
        Head.classifier(3, hidden_units=(8,), dropout=0.1),
        freeze=FreezePolicy.top(2, batchnorm="train"),
        input_shape=(12, 12, 1),
        augmentation=[keras.layers.RandomFlip("horizontal", seed=1)],
        seed=3,
        name="digits_tuner",
    )
    optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    tuner.compile(optimizer, layerwise_lr_decay=0.5, loss_weights=[1.0])
    tuner.fit(x, y, epochs=2, batch_size=16, verbose=0)
    path = tmp_path / "tuned.keras"
    tuner.save(path)

    again = FineTuner.load(path)
    assert again.head.get_config() == tuner.head.get_config()
    assert again.freeze == FreezePolicy.top(2, batchnorm="train")
    assert again.freeze_report.trainable_layers == tuner.freeze_report.trainable_layers
    assert again.input_shape == (12, 12, 1) and again.model.name == "digits_tuner"
    assert isinstance(again.augmentation.layers[0], keras.layers.RandomFlip)
    np.testing.assert_allclose(
        again.predict(x, verbose=0), tuner.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    # The compile settings came back: optimizer, rates, loss weights, layer-wise decay.
    inner = again.model.optimizer.inner_optimizer  # LayerwiseOptimizer around the SGD
    assert isinstance(inner, keras.optimizers.SGD) and inner.momentum == pytest.approx(0.9)
    assert float(inner.learning_rate) == pytest.approx(0.05)
    assert again.evaluate(x, y, verbose=0, return_dict=True).keys() == {"loss", "accuracy"}
    # It trains again, on its own weights, without touching the tuner it came from.
    before = [w.copy() for w in again.model.get_weights()]
    original = [w.copy() for w in tuner.model.get_weights()]
    history = again.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    after = again.model.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after, strict=True))
    for a, b in zip(original, tuner.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    history = again.fine_tune(x, y, head_epochs=1, epochs=1, verbose=0)
    assert history.history["stage"] == ["head", "fine_tune"]
    assert again.report(x, y)["accuracy"] >= 0.0
    # A restored tuner saves and restores again (its backbone came from a file).
    again.save(tmp_path / "again.keras")
    third = FineTuner.load(tmp_path / "again.keras")
    np.testing.assert_allclose(
        third.predict(x, verbose=0), again.predict(x, verbose=0), rtol=1e-5, atol=1e-6
    )
    assert third.freeze == again.freeze and third.head.get_config() == again.head.get_config()
    # The same file still loads as a plain Keras model.
    plain = keras.models.load_model(path)
    assert isinstance(plain, finetune_tf.TunedModel)
    assert plain.tuner_config["head"]["task"] == "multiclass"


def test_an_uncompiled_tuner_and_the_default_policy_round_trip(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(5, name="features")(inputs))
    tuner = FineTuner(Backbone.from_model(model), Head.regressor(2))
    tuner.save(tmp_path / "t.keras")
    again = FineTuner.load(tmp_path / "t.keras")
    assert again.freeze == FreezePolicy.all()
    with pytest.raises(RuntimeError, match="before `compile\\(\\)`"):
        again.fit(np.ones((4, 4)), np.ones((4, 2)), verbose=0)
    # fine_tune still trains the whole backbone in stage 2: the policy was not chosen.
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    kernel = again.model.get_layer("backbone").backbone.get_layer("features").kernel
    start = kernel.numpy().copy()
    again.fine_tune(x, x[:, :2], head_epochs=1, epochs=1, verbose=0)
    assert not np.allclose(kernel.numpy(), start)


def test_loading_a_file_without_tuner_settings_says_what_to_do(tmp_path):
    path = str(tmp_path / "plain.keras")
    small_cnn().save(path)
    with pytest.raises(ValueError, match="not written by FineTuner.save.*load_model"):
        FineTuner.load(path)
    with pytest.raises(FileNotFoundError):
        FineTuner.load(tmp_path / "missing.keras")


def zero_loss(y_true, y_pred):  # a plain function: Keras cannot find it by name on load
    return keras.ops.mean(y_pred * 0.0)


def test_unsaveable_compile_arguments_are_named_on_load(tmp_path):
    inputs = keras.Input((4,))
    tuner = FineTuner(
        Backbone.from_model(keras.Model(inputs, keras.layers.Dense(3)(inputs))), Head.regressor()
    )
    tuner.compile("rmsprop", learning_rate=1e-3, loss=zero_loss, metrics=["mae", zero_loss])
    tuner.save(tmp_path / "t.keras")
    with pytest.warns(UserWarning, match="could not be saved.*: loss, metrics"):
        again = FineTuner.load(tmp_path / "t.keras")
    assert isinstance(again.model.optimizer, keras.optimizers.RMSprop)  # the rest came back
    assert isinstance(again.model.loss, keras.losses.MeanSquaredError)  # the head's default


def test_from_config_rebuilds_the_architecture_with_fresh_weights():
    tuner = FineTuner(
        sequential_backbone(),
        Head.multilabel(4, pooling="max"),
        freeze=FreezePolicy.until("bn1"),
        input_shape=(10, 10, 1),
        seed=0,
    )
    tuner.compile("adamw", learning_rate=2e-3, metrics=["binary_accuracy"])
    config = tuner.get_config()
    json.dumps(config)  # plain data
    again = FineTuner.from_config(config)
    assert again.model.count_params() == tuner.model.count_params()
    kernel = again.model.get_layer("backbone").backbone.get_layer("conv1").kernel
    trained = tuner.model.get_layer("backbone").backbone.get_layer("conv1").kernel
    assert not np.allclose(kernel.numpy(), trained.numpy())  # fresh weights, as Keras does
    assert [layer.name for layer in again.model.layers] == [
        layer.name for layer in tuner.model.layers
    ]
    assert again.freeze == tuner.freeze and again.input_shape == (10, 10, 1)
    assert isinstance(again.model.optimizer, keras.optimizers.AdamW)
    assert float(again.model.optimizer.learning_rate) == pytest.approx(2e-3)
    assert again.get_config() == config


@pytest.mark.parametrize(
    "policy",
    [
        FreezePolicy.all(),
        FreezePolicy.none(batchnorm="train"),
        FreezePolicy.bottom(3),
        FreezePolicy.top(2, batchnorm="freeze"),
        FreezePolicy.until("conv2", inclusive=False),
        FreezePolicy.matching("^bn", train=True),
    ],
)
def test_every_freeze_policy_round_trips(policy):
    config = policy.get_config()
    json.dumps(config)
    assert FreezePolicy.from_config(config) == policy
    assert repr(FreezePolicy.from_config(config)) == repr(policy)


def test_a_stage_round_trips_with_keras_objects():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9)
    stage = Stage(
        4,
        FreezePolicy.top(2),
        learning_rate=schedule,
        optimizer=keras.optimizers.SGD(momentum=0.5),
        early_stopping=2,
        name="tune",
    )
    config = stage.get_config()
    json.dumps(config)
    again = Stage.from_config(config)
    assert again.freeze == stage.freeze and again.name == "tune" and again.early_stopping == 2
    assert again.learning_rate.get_config() == schedule.get_config()
    assert again.optimizer.get_config()["momentum"] == pytest.approx(0.5)


def small_tuner(**kwargs):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(5, name="features")(inputs), name="bb")
    return FineTuner(Backbone.from_model(model), Head.classifier(3), **kwargs)


def test_learning_rate_schedules_and_shaped_stages_save_and_restore(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.arange(32) % 3
    tuner = small_tuner(freeze=FreezePolicy.none())
    tuner.compile(learning_rate=keras.optimizers.schedules.CosineDecay(1e-2, 100))
    tuner.save(tmp_path / "cosine.keras")
    again = FineTuner.load(tmp_path / "cosine.keras")
    rate = again.model.optimizer._learning_rate
    assert isinstance(rate, keras.optimizers.schedules.CosineDecay)
    assert rate.get_config()["decay_steps"] == 100
    tuner.fit(x, y, schedule=[Stage(2, learning_rate=1e-3, warmup_epochs=1)], verbose=0)
    tuner.save(tmp_path / "warmup.keras")  # the compiled rate is a warm-up schedule now
    assert FineTuner.load(tmp_path / "warmup.keras").model.optimizer is not None


def test_policies_built_from_numpy_counts_save():
    policy = FreezePolicy.top(np.int64(1))
    assert json.loads(json.dumps(policy.get_config()))["value"] == 1
    assert FreezePolicy.bottom(np.int32(2)).get_config()["value"] == 2


def test_a_mixed_precision_tuner_restores_in_the_precision_asked_for(tmp_path):
    x = np.ones((2, 4), "float32")
    tuner = small_tuner(mixed_precision="mixed_bfloat16")
    tuner.save(tmp_path / "mixed.keras")
    plain = FineTuner.load(tmp_path / "mixed.keras")  # float32 on this CPU ("auto")
    assert plain.mixed_precision is None
    features = plain.model.get_layer("backbone").backbone.get_layer("features")
    assert features.dtype_policy.name == "float32"
    np.testing.assert_allclose(
        plain.predict(x, verbose=0), tuner.predict(x, verbose=0), rtol=2e-2, atol=1e-2
    )
    mixed = FineTuner.load(tmp_path / "mixed.keras", mixed_precision="mixed_bfloat16")
    layer = mixed.model.get_layer("backbone").backbone.get_layer("features")
    assert mixed.mixed_precision == "mixed_bfloat16"
    assert layer.dtype_policy.name == "mixed_bfloat16"


LOAD_UNDER_A_STRATEGY = """
import sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
inputs = keras.Input((4,))
model = keras.Model(inputs, keras.layers.Dense(5, name="features")(inputs))
backbone = Backbone.from_model(model, preprocessing=keras.layers.Dense(4, name="scaler"))
tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.none(), strategy=None)
tuner.compile(learning_rate=1e-2)
tuner.save(sys.argv[1])
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
again = FineTuner.load(sys.argv[1], strategy=strategy)
x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
history = again.fit(x, np.arange(32) % 3, epochs=2, batch_size=8, verbose=0)
assert again.strategy is strategy and np.isfinite(history.history["loss"]).all()
print("ok", again.strategy.num_replicas_in_sync)
"""


def test_a_tuner_restores_under_a_strategy(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", LOAD_UNDER_A_STRATEGY, str(tmp_path / "t.keras")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok 2")


def test_a_head_pickled_before_tasks_were_classes_still_works():
    import pickle

    head = Head.classifier(4, dropout=0.1)
    del head.__dict__["_task"]  # as a 0.2 Head was pickled
    again = pickle.loads(pickle.dumps(head))
    assert again.num_classes == 4 and again.default_loss().name == "label_crossentropy"
    assert repr(again) == "Head.classifier(num_classes=4, pooling='avg', dropout=0.1)"
