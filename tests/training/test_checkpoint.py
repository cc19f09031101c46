"""Resuming interrupted training (checkpoint_dir), seeds, and the non-finite-loss guard.

A crash here is an exception raised by a callback in the middle of an epoch; the
SIGKILL of a real process is in test_crash.py.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
from finetune_tf.training.run_state import STATE_FILE, _load_arrays, read_state


class Crash(Exception):
    pass


class CrashAt(keras.callbacks.Callback):
    """Raises in the middle of epoch `epoch` (global epoch number), as a dying process would."""

    def __init__(self, epoch, batch=1):
        super().__init__()
        self.crash_epoch, self.crash_batch, self.epoch = epoch, batch, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == self.crash_epoch and batch == self.crash_batch:
            raise Crash(f"killed in epoch {self.epoch}")


def make_tuner(seed=7, **kwargs):
    kwargs.setdefault("freeze", FreezePolicy.top(3))
    keras.utils.set_random_seed(0)  # the same "pretrained" backbone every time
    backbone = Backbone.from_model(small_cnn())
    return FineTuner(
        backbone,
        Head.classifier(3, hidden_units=(6,), dropout=0.3),
        seed=seed,
        **kwargs,
    )


def data():
    rng = np.random.default_rng(0)
    x = rng.random((40, 8, 8, 3), dtype=np.float32)
    return x, (x[:, 0, 0, 0] * 3).astype("int64")


def weights(tuner):
    return [np.asarray(v) for v in tuner.model.variables] + [
        np.asarray(v) for v in tuner.model.optimizer.variables
    ]


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_same_seed_same_weights_other_seed_other_weights():
    x, y = data()
    runs = []
    for seed in (3, 3, 4):
        tuner = make_tuner(seed)
        tuner.compile(learning_rate=1e-2)
        tuner.fit(x, y, epochs=3, batch_size=8, verbose=0)
        runs.append(weights(tuner))
    assert_same(runs[0], runs[1])
    assert not all(np.array_equal(a, b) for a, b in zip(runs[0], runs[2], strict=True))


def test_fit_resumes_from_the_last_completed_epoch(tmp_path):
    x, y = data()
    kwargs = dict(epochs=5, batch_size=8, validation_split=0.2, verbose=0)
    reference = make_tuner()
    reference.compile(learning_rate=1e-2)
    expected = reference.fit(x, y, **kwargs)

    tuner = make_tuner()
    tuner.compile(learning_rate=1e-2)
    with pytest.raises(Crash):
        tuner.fit(x, y, checkpoint_dir=tmp_path, callbacks=[CrashAt(3)], **kwargs)
    assert os.path.exists(tmp_path / STATE_FILE)

    # A new process would build a new tuner: do the same.
    resumed_tuner = make_tuner()
    resumed_tuner.compile(learning_rate=1e-2)
    ran = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: ran.append(epoch))
    history = resumed_tuner.fit(x, y, checkpoint_dir=tmp_path, callbacks=[record], **kwargs)
    assert ran == [3, 4]  # only the interrupted epoch is repeated
    assert history.epoch == [0, 1, 2, 3, 4]
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-6)
    assert_same(weights(resumed_tuner), weights(reference))
    assert not os.path.exists(tmp_path / STATE_FILE)  # done: the state is removed


def test_fine_tune_resumes_its_stage_with_early_stopping_state(tmp_path):
    x, y = data()
    kwargs = dict(head_epochs=3, epochs=6, batch_size=8, validation_split=0.25, verbose=0)
    reference = make_tuner()
    expected = reference.fine_tune(x, y, early_stopping=2, **kwargs)

    tuner = make_tuner()
    with pytest.raises(Crash):  # in stage 2, after its first epoch
        tuner.fine_tune(
            x, y, early_stopping=2, checkpoint_dir=tmp_path, callbacks=[CrashAt(4)], **kwargs
        )
    with np.load(tmp_path / STATE_FILE) as state:
        meta = json.loads(str(state["meta"]))
    assert (meta["stage"], meta["stage_start"], meta["epoch"]) == (1, 3, 4)

    resumed = make_tuner()
    stages = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: stages.append(epoch))
    history = resumed.fine_tune(
        x, y, early_stopping=2, checkpoint_dir=tmp_path, callbacks=[record], **kwargs
    )
    assert stages[0] == 4  # stage 1 was not run again; stage 2 went on where it stopped
    assert history.history["stage"] == expected.history["stage"]
    assert history.epoch == expected.epoch
    np.testing.assert_allclose(history.history["val_loss"], expected.history["val_loss"], rtol=1e-6)
    assert_same(weights(resumed), weights(reference))


def test_frozen_layers_are_written_once_a_stage_not_every_epoch(tmp_path):
    x, y = data()
    tuner = make_tuner()  # FreezePolicy.top(3): most of the backbone frozen
    tuner.compile()
    snapshots = []
    keep = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append(weights(tuner))
    )
    with pytest.raises(Crash):
        tuner.fit(
            x, y, epochs=4, checkpoint_dir=tmp_path, callbacks=[keep, CrashAt(3, 0)], verbose=0
        )
    assert sorted(os.listdir(tmp_path)) == ["frozen-0.npz", STATE_FILE]
    meta, values = _load_arrays(str(tmp_path / STATE_FILE))
    header, frozen = _load_arrays(str(tmp_path / "frozen-0.npz"))
    frozen_ids = {
        id(v)
        for layer in tuner.model._flatten_layers(include_self=False)
        if not layer.trainable
        for v in layer.variables
    }
    expected = [i for i, v in enumerate(tuner.model.variables) if id(v) in frozen_ids]
    assert header["indices"] == expected and len(frozen) == len(expected) > 0
    assert len(values) + len(frozen) == meta["count"]  # each variable stored once
    assert os.path.getmtime(tmp_path / "frozen-0.npz") < os.path.getmtime(tmp_path / STATE_FILE)
    _, merged = read_state(str(tmp_path))
    assert_same(merged, snapshots[2])  # the end of epoch 2, every variable in its place


def test_a_state_of_another_call_is_refused(tmp_path):
    x, y = data()
    tuner = make_tuner()
    tuner.compile()
    with pytest.raises(Crash):
        tuner.fit(x, y, epochs=3, checkpoint_dir=tmp_path, callbacks=[CrashAt(1, 0)], verbose=0)
    with pytest.raises(ValueError, match=r"checkpoint_dir.*different training call.*new directory"):
        tuner.fit(x, y, epochs=4, checkpoint_dir=tmp_path, verbose=0)
    (tmp_path / STATE_FILE).write_bytes(b"not a state")
    with pytest.raises(ValueError, match=r"checkpoint_dir.*cannot be read.*delete it"):
        tuner.fit(x, y, epochs=3, checkpoint_dir=tmp_path, verbose=0)
    with pytest.raises(ValueError, match=r"checkpoint_dir.*is a file"):
        tuner.fit(x, y, checkpoint_dir=tmp_path / STATE_FILE, verbose=0)
    with pytest.raises(TypeError, match=r"checkpoint_dir.*Received: checkpoint_dir=3"):
        tuner.fit(x, y, checkpoint_dir=3, verbose=0)


class ExplodesAfter(keras.optimizers.schedules.LearningRateSchedule):
    """A sane learning rate for `steps` steps, then one that makes the weights overflow."""

    def __init__(self, steps):
        self.steps = steps

    def __call__(self, step):
        return keras.ops.where(step < self.steps, 1e-2, 1e36)


@pytest.mark.parametrize(
    "checkpoint, freeze",
    [
        (False, FreezePolicy.top(3)),
        (True, FreezePolicy.top(3)),
        # The whole backbone frozen: the head trains on cached features, and the guard's
        # snapshot leaves out the frozen layers (all of them must still end as they were).
        (False, FreezePolicy.all()),
        (True, FreezePolicy.all()),
    ],
    ids=["top3", "top3-checkpoint", "frozen-cached", "frozen-cached-checkpoint"],
)
def test_a_nan_loss_stops_training_and_keeps_the_last_good_weights(checkpoint, freeze, tmp_path):
    x, y = data()
    tuner = make_tuner(freeze=freeze)
    cached = freeze == FreezePolicy.all()
    tuner.compile("sgd", learning_rate=ExplodesAfter(10))  # 5 steps an epoch: bad in epoch 2
    snapshots = []
    keep = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: snapshots.append(weights(tuner))
    )
    ran = []
    count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: ran.append(batch))
    message = r"loss became (nan|inf) in epoch 2 .*stage 'fit'.*last epoch.*learning rate"
    with pytest.raises(FloatingPointError, match=message) as err:
        tuner.fit(
            x,
            y,
            batch_size=8,
            epochs=6,
            callbacks=[keep, count],
            checkpoint_dir=tmp_path if checkpoint else None,
            verbose=0,
        )
    assert err.value.history.epoch == [0, 1, 2]
    if not cached:  # (on cached features Keras runs several steps per callback)
        assert len(ran) == 5 + 5 + 2  # stopped at the first bad batch (batch 1), not at the end
    assert_same(weights(tuner), snapshots[1])  # the end of epoch 1, the last good one
    if checkpoint:
        meta, saved = read_state(str(tmp_path))
        assert meta["epoch"] == 2
        assert_same(saved[: meta["count"]], snapshots[1])


class Tap(keras.layers.Layer):
    """Passes its input through and records the first feature of each example it sees."""

    def __init__(self, seen, **kwargs):
        super().__init__(**kwargs)
        self.record = seen.append  # (a list attribute would be copied by Keras' tracking)

    def call(self, x):
        def record(batch):
            self.record(batch[:, 0].tolist())
            return batch

        return tf.ensure_shape(tf.numpy_function(record, [x], x.dtype), x.shape)


def test_with_a_seed_every_epoch_has_its_own_order_and_it_repeats():
    """Keras alone, under keras.utils.set_random_seed, shuffles arrays the same way every
    epoch; with seed= the order changes every epoch and is a function of (seed, epoch)."""
    orders = []
    for _ in range(2):
        seen = []
        inputs = keras.Input((4,))
        backbone = Backbone.from_model(keras.Model(inputs, Tap(seen)(inputs)))
        tuner = FineTuner(backbone, Head.regressor(), seed=5)
        tuner.compile()
        x = np.arange(24, dtype="float32")[:, None].repeat(4, axis=1)
        tuner.fit(x, np.zeros(24), batch_size=24, epochs=3, verbose=0, feature_cache=False)
        orders.append(seen)
    first = orders[0]
    assert len(first) == 3 and all(sorted(o) == list(range(24)) for o in first), first
    assert first[0] != first[1] != first[2] != first[0]  # reshuffled every epoch
    assert orders[1] == first  # and the same in another run with the same seed
