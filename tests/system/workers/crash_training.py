"""Fine-tunes with checkpoint_dir and, on request, dies by SIGKILL (tests/system/test_crash.py).

    python crash_training.py DIR MODE

MODE "run": train to the end (a first run, or a resumption: the same call).
MODE "kill_in_epoch": SIGKILL in the middle of epoch KILL_EPOCH (batch 2).
MODE "kill_in_state_write": SIGKILL while the state of epoch KILL_EPOCH is being written.
MODE "kill_in_save": save the model, train on, then SIGKILL in the middle of saving it again.

Writes DIR/MODE.npz (the final weights) and DIR/MODE.json (what ran).
"""

import json
import os
import signal
import sys
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
directory, mode = sys.argv[1], sys.argv[2]
KILL_EPOCH = 4  # in stage 2 ("fine_tune"), which starts at epoch 3

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head  # noqa: E402

tf.config.experimental.enable_op_determinism()


def die():
    os.kill(os.getpid(), signal.SIGKILL)


def kill_on_second_write():
    """From now on, writing a second archive member kills the process (a file half written)."""
    original_open, original_writestr, calls = zipfile.ZipFile.open, zipfile.ZipFile.writestr, []

    def count():
        calls.append(1)
        if len(calls) == 2:
            die()

    def open_and_die(self, name, mode="r", *args, **kwargs):
        if mode == "w":
            count()
        return original_open(self, name, mode, *args, **kwargs)

    def writestr_and_die(self, *args, **kwargs):
        count()
        return original_writestr(self, *args, **kwargs)

    zipfile.ZipFile.open = open_and_die
    zipfile.ZipFile.writestr = writestr_and_die


class Killer(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        report["ran"].append(epoch)
        if mode == "kill_in_state_write" and epoch == KILL_EPOCH:
            kill_on_second_write()  # the state written at the end of this epoch

    def on_train_batch_end(self, batch, logs=None):
        if mode == "kill_in_epoch" and self.epoch == KILL_EPOCH and batch == 2:
            die()


report = {"mode": mode, "ran": []}
keras.utils.set_random_seed(0)  # the "pretrained" backbone, the same in every process
inputs = keras.Input((8, 8, 3))
x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
x = keras.layers.BatchNormalization(name="bn1")(x)
x = keras.layers.ReLU()(x)
x = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(x)
x = keras.layers.GlobalAveragePooling2D(name="features")(x)
tuner = FineTuner(
    Backbone.from_model(keras.Model(inputs, x)),
    Head.classifier(3, hidden_units=(6,), dropout=0.3),
    freeze=FreezePolicy.top(3),
    seed=11,
)
rng = np.random.default_rng(0)
images = rng.random((48, 8, 8, 3), dtype=np.float32)
labels = (images[:, 0, 0, 0] * 3).astype("int64")

if mode == "kill_in_save":
    path = os.path.join(directory, "model.keras")
    tuner.compile()
    tuner.fit(images, labels, epochs=1, verbose=0)
    tuner.save(path)
    np.savez(os.path.join(directory, "saved.npz"), *tuner.model.get_weights())
    tuner.fit(images, labels, epochs=1, verbose=0)
    kill_on_second_write()
    tuner.save(path)
    sys.exit(3)  # not reached

history = tuner.fine_tune(
    images,
    labels,
    head_epochs=3,
    epochs=5,
    batch_size=8,
    validation_split=0.25,
    early_stopping=3,
    checkpoint_dir=os.path.join(directory, "state"),
    callbacks=[Killer()],
    verbose=2,
)
report["epoch"] = history.epoch
report["stage"] = history.history["stage"]
report["val_loss"] = history.history["val_loss"]
np.savez(os.path.join(directory, f"{mode}.npz"), *[np.asarray(v) for v in tuner.model.variables])
with open(os.path.join(directory, f"{mode}.json"), "w") as f:
    json.dump(report, f)
