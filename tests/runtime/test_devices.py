"""Placement, mixed precision and XLA in one process (multi-device runs: test_distribute.py)."""

import json
import os
import tempfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

import finetune_tf
import finetune_tf.training.compile
import finetune_tf.training.run_state
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, devices

CPU0 = "/job:localhost/replica:0/task:0/device:CPU:0"


def make_tuner(**kwargs):
    keras.utils.set_random_seed(0)
    kwargs.setdefault("freeze", FreezePolicy.none())
    return FineTuner(
        Backbone.from_model(small_cnn()), Head.classifier(3, hidden_units=(5,)), **kwargs
    )


def test_auto_placement_on_a_cpu_machine_is_the_default_strategy(images, labels, capsys):
    tuner = make_tuner()
    assert tuner.strategy is tf.distribute.get_strategy()
    assert tuner.devices == [CPU0]
    assert tuner.mixed_precision is None  # float32 on CPUs
    tuner.compile()
    assert tuner.model.jit_compile is False  # XLA only where it is known to help
    tuner.fit(images, labels, epochs=1, verbose=0)
    assert "training on" not in capsys.readouterr().out
    tuner.fit(images, labels, epochs=1, verbose=2)
    out = capsys.readouterr().out
    assert "finetune_tf: training on 1 device (CPU:0), default strategy, float32" in out
    tuner.fit(images, labels, epochs=1, verbose=2)
    assert "training on" not in capsys.readouterr().out  # said once


def test_a_given_strategy_or_an_enclosing_scope_is_used_as_given(images, labels):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    tuner = make_tuner(strategy=strategy)
    assert tuner.strategy is strategy
    # The backbone was rebuilt inside the strategy's scope, with the same weights.
    for variable in tuner.model.weights:
        assert strategy.extended.variable_created_in_scope(variable._value)
    tuner.compile()
    history = tuner.fit(images, labels, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    with strategy.scope():
        inside = make_tuner()
    assert inside.strategy is strategy


def test_an_optimizer_made_outside_the_scope_is_recreated_inside_it(images, labels):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    tuner = make_tuner(strategy=strategy)
    tuner.compile(keras.optimizers.Adam(1e-3))  # built outside: Keras alone would refuse it
    history = tuner.fit(images, labels, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    for variable in tuner.model.optimizer.variables:
        assert strategy.extended.variable_created_in_scope(variable._value)


def test_backbone_copy_under_a_strategy_keeps_the_pretrained_weights():
    model = small_cnn()
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    tuner = FineTuner(Backbone.from_model(model), Head.classifier(3), strategy=strategy)
    assert tuner.backbone.model is not model
    for copy, original in zip(tuner.backbone.model.weights, model.weights, strict=True):
        np.testing.assert_array_equal(copy.numpy(), original.numpy())


def test_mixed_bfloat16_applies_to_this_model_only_and_survives_saving(images, labels, tmp_path):
    before = keras.config.dtype_policy().name
    tuner = make_tuner(mixed_precision="mixed_bfloat16")
    assert keras.config.dtype_policy().name == before == "float32"  # nothing leaked
    conv = tuner.backbone.model.get_layer("conv1")
    assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"
    assert tuner.model.get_layer("hidden_1").compute_dtype == "bfloat16"
    assert tuner.model.get_layer("predictions").compute_dtype == "float32"
    other = keras.layers.Dense(2)  # a model built afterwards in the same process
    assert other.dtype_policy.name == "float32"
    tuner.compile(learning_rate=1e-3)
    history = tuner.fit(images, labels, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    predictions = tuner.predict(images, verbose=0)
    assert predictions.dtype == np.float32
    tuner.save(tmp_path / "mixed.keras")
    restored = keras.models.load_model(tmp_path / "mixed.keras")
    inner = restored.get_layer("backbone").backbone.get_layer("conv1")
    assert inner.compute_dtype == "bfloat16"
    assert restored.get_layer("predictions").compute_dtype == "float32"
    np.testing.assert_allclose(restored.predict(images, verbose=0), predictions, atol=1e-6)


def test_mixed_float16_gets_loss_scaling():
    tuner = make_tuner(mixed_precision="mixed_float16")
    tuner.compile(learning_rate=1e-3)
    assert isinstance(tuner.model.optimizer, keras.optimizers.LossScaleOptimizer)
    assert float(tuner.model.optimizer.learning_rate) == pytest.approx(1e-3)
    plain = make_tuner()
    plain.compile()
    assert not isinstance(plain.model.optimizer, keras.optimizers.LossScaleOptimizer)


class NumpyDouble(keras.layers.Layer):
    """A layer XLA cannot compile (a Python callback)."""

    def call(self, x):
        y = tf.numpy_function(lambda a: a * 2, [x], tf.float32)
        y.set_shape(x.shape)
        return y


def python_callback_backbone():
    inputs = keras.Input((4,))
    return Backbone.from_model(keras.Model(inputs, keras.layers.Dense(3)(NumpyDouble()(inputs))))


def test_auto_xla_falls_back_with_a_log_line_when_a_layer_cannot_compile(monkeypatch, capsys):
    tuner = FineTuner(python_callback_backbone(), Head.regressor(), freeze=FreezePolicy.none())
    monkeypatch.setattr(tuner.placement, "xla_helps", lambda: True)  # as on a GPU
    tuner.compile("sgd")
    assert tuner.model.jit_compile is True
    x, y = np.random.rand(16, 4).astype("float32"), np.random.rand(16)
    history = tuner.fit(x, y, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all() and len(history.epoch) == 2
    assert "XLA cannot compile this model" in capsys.readouterr().out
    assert tuner.model.jit_compile is False
    tuner.recompile()
    assert tuner.model.jit_compile is False  # remembered


def test_explicit_xla_is_not_silently_dropped():
    tuner = FineTuner(
        python_callback_backbone(), Head.regressor(), freeze=FreezePolicy.none(), jit_compile=True
    )
    tuner.compile("sgd")
    with pytest.raises(tf.errors.InvalidArgumentError, match="XLA"):
        tuner.fit(np.random.rand(16, 4).astype("float32"), np.random.rand(16), verbose=0)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"strategy": "mirrored"}, TypeError, "strategy='mirrored'"),
        ({"mixed_precision": "float16"}, ValueError, "mixed_precision='float16'"),
        ({"jit_compile": "yes"}, ValueError, "jit_compile='yes'"),
        ({"memory_growth": "yes"}, TypeError, "memory_growth='yes'"),
    ],
)
def test_bad_placement_arguments_are_named(kwargs, error, words):
    with pytest.raises(error, match=words):
        make_tuner(**kwargs)


def test_tf_config_is_read_for_workers():
    config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"], "chief": ["127.0.0.1:3"]}}
    assert devices.tf_config_workers({"TF_CONFIG": json.dumps(config)}) == 3
    config["cluster"]["ps"] = ["127.0.0.1:4"]  # a parameter-server cluster is not ours
    assert devices.tf_config_workers({"TF_CONFIG": json.dumps(config)}) == 0
    assert devices.tf_config_workers({}) == 0
    with pytest.raises(ValueError, match="TF_CONFIG"):
        devices.tf_config_workers({"TF_CONFIG": "{not json"})


def test_multi_worker_too_late_is_a_clear_error(monkeypatch):
    config = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker"}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    monkeypatch.setattr(devices, "_multi_worker_strategy", None)
    assert devices.runtime_started()  # earlier tests ran TensorFlow
    with pytest.raises(RuntimeError, match="Import finetune_tf before any other TensorFlow work"):
        make_tuner()


def test_memory_growth_after_gpu_start_warns_instead_of_crashing(monkeypatch):
    calls = []

    def set_memory_growth(device, enabled):
        calls.append((device, enabled))
        raise RuntimeError("Physical devices cannot be modified after being initialized")

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU:0"])
    monkeypatch.setattr(tf.config.experimental, "get_memory_growth", lambda device: False)
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", set_memory_growth)
    with pytest.warns(RuntimeWarning, match="already initialised the GPUs"):
        devices.configure_memory_growth(True)
    assert calls == [("GPU:0", True)]
    devices.configure_memory_growth(None)  # leave it alone: no call at all
    assert len(calls) == 1


def test_hub_backbone_keeps_float32_inside_a_mixed_model(keras2_files, images, labels):
    tuner = FineTuner(
        Backbone.from_hub(keras2_files["saved_model"], trainable=True),
        Head.classifier(3, hidden_units=(5,)),
        freeze=FreezePolicy.none(),
        mixed_precision="mixed_bfloat16",
    )
    hub_layer = tuner.backbone.model.layers[-1]
    assert hub_layer.compute_dtype == "float32"  # a fixed graph: its dtype cannot change
    assert tuner.model.get_layer("hidden_1").compute_dtype == "bfloat16"
    tuner.compile(learning_rate=1e-3)
    history = tuner.fit(images, labels, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


def test_loss_scaling_wraps_layerwise_learning_rates(images, labels):
    tuner = make_tuner(mixed_precision="mixed_float16")
    tuner.compile(learning_rate=1e-2, layerwise_lr_decay=0.5)
    optimizer = tuner.model.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
    assert isinstance(optimizer.inner_optimizer, finetune_tf.LayerwiseOptimizer)
    conv1 = tuner.backbone.model.get_layer("conv1").kernel
    before = conv1.numpy().copy()
    history = tuner.fit(images, labels, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert not np.array_equal(conv1.numpy(), before)  # the scaled gradients were applied


def test_load_model_restores_into_a_strategy_and_trains_on(images, labels, tmp_path):
    tuner = make_tuner()
    tuner.compile(learning_rate=1e-3)
    tuner.fit(images, labels, epochs=1, verbose=0)
    tuner.save(tmp_path / "tuned.keras")
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    restored = finetune_tf.load_model(tmp_path / "tuned.keras", strategy=strategy)
    assert restored.distribute_strategy is strategy
    for variable in restored.weights + restored.optimizer.variables:
        assert strategy.extended.variable_created_in_scope(variable._value)
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), tuner.predict(images, verbose=0), atol=1e-6
    )
    history = restored.fit(images, labels, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"]).all()


@pytest.mark.parametrize(
    ("capability", "expected"),
    [((8, 0), "mixed_float16"), ((7, 0), "mixed_float16"), ((6, 1), None)],
)
def test_auto_precision_follows_the_gpu_compute_capability(monkeypatch, capability, expected):
    from finetune_tf.runtime import precision

    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: ["GPU0", "GPU1"])
    monkeypatch.setattr(
        tf.config.experimental,
        "get_device_details",
        lambda device: {"compute_capability": capability},
    )
    gpu = "/job:localhost/replica:0/task:0/device:GPU:{}"
    assert precision.resolve_precision("auto", [gpu.format(0), gpu.format(1)]) == expected
    assert precision.resolve_precision("auto", ["/device:TPU:0"]) == "mixed_bfloat16"
    assert precision.resolve_precision("auto", [CPU0]) is None


def test_checkpoint_callbacks_on_a_non_chief_worker_write_temporary_copies(
    images, labels, tmp_path, monkeypatch
):
    """tf.distribute's rule: only the chief writes the real checkpoint (2 real workers:
    test_distribute.py). A non-chief still restores from the real backup."""
    tuner = make_tuner()
    tuner.compile()
    backup = tmp_path / "backup"
    tuner.fit(
        images,
        labels,
        epochs=2,
        verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)],
    )
    written = {name: (backup / name).stat().st_mtime_ns for name in os.listdir(backup)}
    assert "latest.weights.h5" in written

    monkeypatch.setattr(tuner.placement, "is_chief", lambda: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "worker_tmp"))
    os.mkdir(tmp_path / "worker_tmp")
    seen = []

    class LookInTemporaryDirectory(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.extend(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())

    checkpoint = keras.callbacks.ModelCheckpoint(str(tmp_path / "best.keras"))
    restore = keras.callbacks.BackupAndRestore(str(backup), delete_checkpoint=False)
    history = tuner.fit(
        images,
        labels,
        epochs=3,
        verbose=0,
        callbacks=[checkpoint, restore, LookInTemporaryDirectory()],
    )
    assert history.epoch == [2]  # restored from the chief's backup: epochs 0 and 1 were done
    assert not (tmp_path / "best.keras").exists()
    assert {name: (backup / name).stat().st_mtime_ns for name in os.listdir(backup)} == written
    copies = {os.path.basename(p) for p in seen if p.startswith("worker_tmp/finetune_tf_worker_")}
    assert {"best.keras", "latest.weights.h5"} <= copies
    assert os.listdir(tmp_path / "worker_tmp") == []  # removed after fit
    assert checkpoint.filepath == str(tmp_path / "best.keras")  # the user's objects untouched
    assert restore.backup_dir == str(backup)


def test_augmentation_layers_made_outside_the_scope_train_under_mirrored_strategy(images, labels):
    augmentation = [keras.layers.RandomFlip("horizontal"), keras.layers.RandomRotation(0.1)]
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    tuner = make_tuner(strategy=strategy, augmentation=augmentation)
    states = [v for v in tuner.augmentation.variables if "seed_generator" in v.path]
    before = [v.numpy().copy() for v in states]
    tuner.compile()
    history = tuner.fit(images, labels, epochs=2, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    # Their random streams advanced: each step drew new augmentations.
    assert len(states) == 2
    assert all((a != v.numpy()).any() for a, v in zip(before, states, strict=True))
