"""Trains one small FineTuner and writes its final weights; run by tests/system/test_distribute.py.

    python distributed_training.py OUT.npz MODE

MODE "reference": one device, TensorFlow's default strategy.
MODE "logical_cpus": the CPU split into 2 logical devices; strategy="auto" must pick
    MirroredStrategy over them.
MODE "multi_worker": one of the workers TF_CONFIG describes; strategy="auto" must pick
    MultiWorkerMirroredStrategy. Saves the model (from the chief only); a ModelCheckpoint
    and a BackupAndRestore callback write there too (the others write temporary copies).
MODE "canary": a worker that only runs plain Keras fit without our compatibility module
    and reports how it fails (keras-team/keras#20585).

Every mode trains on the same data in the same global batches of 16, without
shuffling, from the same initial weights, so their results must agree.
"""

import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
out, mode = sys.argv[1], sys.argv[2]
backbone_kind = sys.argv[3] if len(sys.argv) > 3 else "keras"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import finetune_tf  # noqa: E402  (before TensorFlow runs: creates the multi-worker strategy)

if mode == "logical_cpus":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # noqa: E402

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head  # noqa: E402

report = {"mode": mode}


def plain_keras_multi_worker_fails() -> str:
    """Runs the TensorFlow multi-worker tutorial's Keras 3 fit, without our module."""
    strategy = finetune_tf.runtime.devices.multi_worker_strategy()
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
        model.compile("sgd", "mse")
    data = tf.data.Dataset.from_tensor_slices((np.ones((32, 4)), np.ones((32, 2)))).batch(8)
    try:
        model.fit(data, epochs=1, verbose=0)
    except Exception as error:  # the known failure
        return f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"
    return ""


if mode == "canary":
    report["plain_keras_error"] = plain_keras_multi_worker_fails()
    with open(out + ".json", "w") as f:
        json.dump(report, f)
    sys.exit(0)


def build_backbone():
    if backbone_kind == "hub":
        # A Hub-format SavedModel exported from tf_keras, as tfhub.dev models were made.
        path = os.path.join(os.path.dirname(out), f"hub_features_{os.getpid()}")
        import tf_keras

        tf_keras.utils.set_random_seed(1)
        inputs = tf_keras.Input((6,))
        hidden = tf_keras.layers.Dense(8, activation="relu")(inputs)
        tf.saved_model.save(tf_keras.Model(inputs, tf_keras.layers.Dense(5)(hidden)), path)
        return Backbone.from_hub(path, trainable=True)
    inputs = keras.Input((6,))
    x = keras.layers.Dense(8, activation="relu", name="dense1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.Dense(5, activation="relu", name="features")(x)
    return Backbone.from_model(keras.Model(inputs, x))


keras.utils.set_random_seed(0)
tuner = FineTuner(
    build_backbone(),
    Head.classifier(3, hidden_units=(4,)),
    freeze=FreezePolicy.none(),
    strategy=None if mode == "reference" else "auto",
    seed=7,
)
report["strategy"] = type(tuner.strategy).__name__
report["devices"] = tuner.devices
report["replicas"] = tuner.strategy.num_replicas_in_sync
# What seed=7 drew: the same on one device and under a strategy (the test compares them).
np.savez(out + ".init.npz", *[np.asarray(w) for w in tuner.model.get_weights()])
# Then set weights from our own generator, so every mode starts from the same point
# whatever the seed does; valid weights: a BatchNorm variance is positive.
rng = np.random.default_rng(0)
for weight in tuner.model.weights:
    value = rng.normal(0, 0.3, weight.shape)
    if weight.path.endswith("moving_variance"):
        value = 1.0 + np.abs(value)
    weight.assign(value.astype("float32"))
x = np.random.default_rng(2).normal(size=(64, 6)).astype("float32")
y = (x[:, 0] > 0).astype("int64") + (x[:, 1] > 0.5)
tuner.compile("sgd", learning_rate=0.1)
callbacks = []
if mode == "multi_worker":
    # The user's checkpoint callbacks, the same paths on every worker (shared storage).
    shared = os.path.dirname(out)

    class SeeTemporaryFiles(keras.callbacks.Callback):
        """Records what this worker has written under its temporary directory."""

        def on_epoch_end(self, epoch, logs=None):
            report["temporary_files"] = sorted(
                os.path.relpath(os.path.join(root, name), tempfile.gettempdir())
                for root, _, names in os.walk(tempfile.gettempdir())
                for name in names
            )

    callbacks = [
        keras.callbacks.ModelCheckpoint(os.path.join(shared, "checkpoint.keras")),
        keras.callbacks.BackupAndRestore(os.path.join(shared, "backup"), delete_checkpoint=False),
        SeeTemporaryFiles(),
    ]
history = tuner.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=2, callbacks=callbacks)
report["loss"] = history.history["loss"]
report["evaluate"] = tuner.evaluate(x, y, batch_size=16, verbose=0)
report["predict_shape"] = list(tuner.predict(x, batch_size=16, verbose=0).shape)
if mode == "multi_worker":
    saved = os.path.join(os.path.dirname(out), "tuned.keras")
    tuner.save(saved)
    report["is_chief"] = finetune_tf.runtime.devices.is_chief(tuner.strategy)
np.savez(out, *[np.asarray(w) for w in tuner.model.get_weights()])
with open(out + ".json", "w") as f:
    json.dump(report, f)
print("done", json.dumps(report))
