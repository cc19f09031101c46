"""Fine-tunes with checkpoint_dir and, on request, dies by SIGKILL (tests/system/test_crash.py).

    python crash_training.py DIR kill_in_save
    python crash_training.py --serve

`kill_in_save`: save the model, train on, then SIGKILL in the middle of saving it again.

`--serve` imports TensorFlow once, then for each JSON line on stdin
(`{"directory": ..., "kill": [...] or null}`) forks a child that runs the fine-tuning
below with checkpoint_dir=DIRECTORY/state (a first run, or a resumption: the same call)
and answers one JSON line: `{"status": exit code, or minus the signal}`. Forking spares
each run the seconds of importing TensorFlow; the child has run no TensorFlow op before.

A kill is an event of the run, named by where it is in training, so that it means the
same moment in a first run and in a resumption:
    [epoch, "batch", b]                  after batch b of the epoch
    [epoch, "member", file, nth, k]      while writing array k of the nth write of file
                                         (state.npz, frozen-<stage>.npz) in that epoch
    [epoch, "before_replace", file, nth] that write complete, not yet renamed into place
    [epoch, "after_replace", file, nth]  just renamed into place
    [epoch, "train_end"]                 the stage's last epoch saved, before it ends
The child SIGKILLs itself at that event. Every run writes DIRECTORY/run.json (epochs,
history, and every event it went through, in order) and DIRECTORY/run.npz (the final
weights) when it completes.
"""

import json
import os
import signal
import sys
import zipfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from forking import run_forked  # noqa: E402  (beside this script)

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head  # noqa: E402
from finetune_tf.training import state_file  # noqa: E402


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


class Events:
    """Records the events of a run (see the module docstring) and dies at `kill`."""

    def __init__(self, kill):
        self.kill = None if kill is None else list(kill)
        self.log, self.epoch = [], None
        self.file, self.nth, self.member, self.writes = None, None, 0, {}
        self._install()

    def event(self, *what):
        event = [self.epoch, *what]
        self.log.append(event)
        if event == self.kill:
            die()

    def _install(self):
        events = self
        save_arrays, replace = state_file._save_arrays, os.replace
        original_open, original_writestr = zipfile.ZipFile.open, zipfile.ZipFile.writestr

        def saving(path, meta, values):
            name = os.path.basename(path)
            key = (events.epoch, name)
            events.writes[key] = events.writes.get(key, -1) + 1
            events.file, events.nth, events.member = name, events.writes[key], 0
            try:
                save_arrays(path, meta, values)
            finally:
                events.file = None

        def member():
            if events.file is not None:
                events.event("member", events.file, events.nth, events.member)
                events.member += 1

        def zip_open(self, name, mode="r", *args, **kwargs):
            if mode == "w":
                member()
            return original_open(self, name, mode, *args, **kwargs)

        def zip_writestr(self, *args, **kwargs):
            member()
            return original_writestr(self, *args, **kwargs)

        def replacing(source, target, *args, **kwargs):
            if events.file is not None:
                events.event("before_replace", events.file, events.nth)
            replace(source, target, *args, **kwargs)
            if events.file is not None:
                events.event("after_replace", events.file, events.nth)

        state_file._save_arrays = saving
        zipfile.ZipFile.open, zipfile.ZipFile.writestr = zip_open, zip_writestr
        os.replace = replacing


class Killer(keras.callbacks.Callback):
    def __init__(self, events):
        super().__init__()
        self.events = events

    def on_epoch_begin(self, epoch, logs=None):
        self.events.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.events.event("batch", batch)

    def on_train_end(self, logs=None):
        if self.events.epoch is not None:
            self.events.event("train_end")


def make_tuner():
    keras.utils.set_random_seed(0)  # the "pretrained" backbone, the same in every process
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return FineTuner(
        Backbone.from_model(keras.Model(inputs, x)),
        Head.classifier(3, hidden_units=(6,), dropout=0.3),
        freeze=FreezePolicy.top(3),
        seed=11,
    )


def data():
    rng = np.random.default_rng(0)
    images = rng.random((48, 8, 8, 3), dtype=np.float32)
    return images, (images[:, 0, 0, 0] * 3).astype("int64")


def fine_tune(directory, kill):
    """The run every test kills and resumes: two stages (3 + 5 epochs, the second stopped
    early), validation, the head stage on cached features."""
    tf.config.experimental.enable_op_determinism()
    events = Events(kill)
    tuner = make_tuner()
    images, labels = data()
    history = tuner.fine_tune(
        images,
        labels,
        head_epochs=3,
        epochs=5,
        batch_size=8,
        validation_split=0.25,
        early_stopping=2,
        checkpoint_dir=os.path.join(directory, "state"),
        callbacks=[Killer(events)],
        verbose=2,
    )
    report = {"epoch": history.epoch, "history": history.history, "events": events.log}
    np.savez(os.path.join(directory, "run.npz"), *[np.asarray(v) for v in tuner.model.variables])
    with open(os.path.join(directory, "run.json"), "w") as f:
        json.dump(report, f)


def kill_in_save(directory):
    tuner = make_tuner()
    images, labels = data()
    path = os.path.join(directory, "model.keras")
    tuner.compile()
    tuner.fit(images, labels, epochs=1, verbose=0)
    tuner.save(path)
    np.savez(os.path.join(directory, "saved.npz"), *tuner.model.get_weights())
    tuner.fit(images, labels, epochs=1, verbose=0)
    kill_on_second_write()
    tuner.save(path)
    sys.exit(3)  # not reached


def serve():
    for line in sys.stdin:
        job = json.loads(line)
        output = os.path.join(job["directory"], "output.txt")
        code = run_forked(output, lambda job=job: fine_tune(job["directory"], job["kill"]))
        print(json.dumps({"status": code}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve()
    else:
        kill_in_save(sys.argv[1])  # DIR kill_in_save
