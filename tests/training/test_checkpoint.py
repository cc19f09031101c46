"""Resuming interrupted training (checkpoint_dir), seeds, and the non-finite-loss guard.

A crash here is an exception raised by a callback in the middle of an epoch; the
SIGKILL of a real process is in test_crash.py.
"""

import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
from finetune_tf.training.state_file import STATE_FILE, _load_arrays, read_state


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
    with pytest.raises(ValueError, match=r"checkpoint_dir.*different training run.*epochs"):
        tuner.fit(x, y, epochs=4, checkpoint_dir=tmp_path, verbose=0)
    (tmp_path / STATE_FILE).write_bytes(b"not a state")
    with pytest.raises(ValueError, match=r"checkpoint_dir.*cannot be read.*state.npz.*Delete"):
        tuner.fit(x, y, epochs=3, checkpoint_dir=tmp_path, verbose=0)
    with pytest.raises(ValueError, match=r"checkpoint_dir.*is a file"):
        tuner.fit(x, y, checkpoint_dir=tmp_path / STATE_FILE, verbose=0)
    with pytest.raises(TypeError, match=r"checkpoint_dir.*Received: checkpoint_dir=3"):
        tuner.fit(x, y, checkpoint_dir=3, verbose=0)


FINE_TUNE = dict(head_epochs=3, epochs=6, batch_size=8, validation_split=0.25, verbose=0)


def crashed_fine_tune(directory, epoch, batch=0, **changes):
    """A fine_tune with checkpoint_dir that dies in the middle of `epoch`."""
    x, y = data()
    kwargs = {**FINE_TUNE, "early_stopping": 2, **changes}
    with pytest.raises(Crash):
        make_tuner().fine_tune(
            x, y, checkpoint_dir=directory, callbacks=[CrashAt(epoch, batch)], **kwargs
        )


@pytest.fixture(scope="module")
def crashed_at_epoch_4(tmp_path_factory):
    """The checkpoint_dir of `crashed_fine_tune(directory, 4)`, made once a module: each
    test resumes from its own copy (the same files a crash of its own would leave)."""
    directory = tmp_path_factory.mktemp("crashed_at_epoch_4")
    crashed_fine_tune(directory, 4)
    return directory


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(x="last example"), r"the training data \(x\) \(same shape and dtype, other values"),
        (dict(x="fewer"), r"the training data \(x\) \(saved: shape \(40, 8, 8, 3\)"),
        (dict(y="first label"), r"the targets \(y\)"),
        (dict(batch_size=4), r"changed: batch_size \(saved: 8, now: 4\)\. "),
        (dict(fine_tune_learning_rate=1e-3), r"the schedule.*learning"),
        (dict(validation_split=0.5), r"validation_split \(saved: 0.25, now: 0.5\)"),
        (dict(early_stopping=3), r"the schedule"),
        (dict(seed=8), r"the FineTuner's seed \(saved: 7, now: 8\)"),
        (dict(fit=True), r"epochs.*schedule"),  # a second training sharing the directory
    ],
)
def test_resuming_another_run_is_refused_naming_what_changed(
    tmp_path, change, words, crashed_at_epoch_4
):
    shutil.copytree(crashed_at_epoch_4, tmp_path, dirs_exist_ok=True)
    x, y = data()
    kwargs = {**FINE_TUNE, "early_stopping": 2}
    tuner = make_tuner(seed=change.pop("seed", 7))
    data_change = change.pop("x", None)
    if data_change == "last example":
        x = x.copy()
        x[-1, 0, 0, 0] += 1
    elif data_change == "fewer":
        x, y = x[:-1], y[:-1]
    if change.pop("y", None):
        y = y.copy()
        y[0] = (y[0] + 1) % 3
    message = r"checkpoint_dir.*different training run.*" + words + r".*same data and arguments"
    with pytest.raises(ValueError, match=message):
        if change.pop("fit", False):
            tuner.compile()
            tuner.fit(x, y, epochs=2, checkpoint_dir=tmp_path, verbose=0)
        else:
            tuner.fine_tune(x, y, checkpoint_dir=tmp_path, **{**kwargs, **change})
    assert os.path.exists(tmp_path / STATE_FILE)  # refused, not overwritten


@pytest.mark.parametrize("content", [b"", b"PK\x03\x04 cut short", b"\x93NUMPY garbage"])
def test_an_empty_or_damaged_state_is_refused_naming_the_file(tmp_path, content):
    x, y = data()
    (tmp_path / STATE_FILE).write_bytes(content)
    tuner = make_tuner()
    message = rf"cannot be read: '.*{STATE_FILE}' \({len(content)} bytes.*Delete the directory"
    with pytest.raises(ValueError, match=message):
        tuner.fine_tune(x, y, checkpoint_dir=tmp_path, **FINE_TUNE)


@pytest.fixture(scope="module")
def fine_tuned():
    """An uninterrupted fine_tune (stage 2 stops early) and its final weights."""
    x, y = data()
    tuner = make_tuner()
    history = tuner.fine_tune(x, y, early_stopping=1, **FINE_TUNE)
    assert len(history.epoch) < 3 + 6  # early stopping ended stage 2
    return history, [np.asarray(v) for v in tuner.model.variables]


class CrashAtTrainEnd(keras.callbacks.Callback):
    """Dies once stage `stage` has trained, before the run records that the stage ended."""

    def __init__(self, epoch):
        super().__init__()
        self.after_epoch, self.last = epoch, None

    def on_epoch_end(self, epoch, logs=None):
        self.last = epoch

    def on_train_end(self, logs=None):
        if self.last is not None and self.last >= self.after_epoch:
            raise Crash("killed after the stage's last epoch")


@pytest.mark.parametrize(
    "crash",
    [
        # Between the stages (the state holds the model only) and the first epoch of
        # stage 2: a fresh, never compiled tuner resumed this into an AttributeError.
        CrashAt(3, 0),
        # After stage 2's last epoch (early stopping ended it), before the call returned.
        CrashAtTrainEnd(3),
        # After stage 1's last epoch, before stage 2 began.
        CrashAtTrainEnd(2),
    ],
    ids=["between-stages", "after-early-stopping", "after-the-head-stage"],
)
def test_fine_tune_resumes_from_any_point_like_an_uninterrupted_run(tmp_path, crash, fine_tuned):
    expected, expected_weights = fine_tuned
    x, y = data()
    kwargs = {**FINE_TUNE, "early_stopping": 1, "checkpoint_dir": tmp_path}
    with pytest.raises(Crash):
        make_tuner().fine_tune(x, y, callbacks=[crash], **kwargs)
    resumed = make_tuner()  # a new process builds a new tuner, not compiled
    ran = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: ran.append(epoch))
    history = resumed.fine_tune(x, y, callbacks=[record], **kwargs)
    assert history.epoch == expected.epoch  # not one epoch more
    assert history.history == expected.history
    assert_same([np.asarray(v) for v in resumed.model.variables], expected_weights)
    assert not os.listdir(tmp_path)


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


def test_a_resumed_stage_keeps_what_it_inherits_from_the_stages_before(tmp_path):
    """A stage without its own freeze policy or learning rate keeps the previous stage's,
    also when the previous stage ran in the process that died."""
    from finetune_tf import Stage

    x, y = data()
    schedule = [
        Stage(2, FreezePolicy.all(), 1e-2, name="head"),
        Stage(2, FreezePolicy.none(), 1e-3, optimizer="sgd", name="all"),
        Stage(2, name="more"),  # all layers, sgd at 1e-3, as the stage before
    ]
    kwargs = dict(schedule=schedule, batch_size=8, verbose=0)
    reference = make_tuner()
    expected = reference.fit(x, y, **kwargs)
    with pytest.raises(Crash):
        make_tuner().fit(x, y, checkpoint_dir=tmp_path, callbacks=[CrashAt(5)], **kwargs)
    resumed = make_tuner()
    history = resumed.fit(x, y, checkpoint_dir=tmp_path, **kwargs)
    assert history.history == expected.history
    assert_same(weights(resumed), weights(reference))


def test_the_same_tuner_called_again_after_an_interruption_resumes(tmp_path, fine_tuned):
    """A notebook cell interrupted mid-schedule and run again: the tuner's settings went
    back to what they were, so it is the same run and resumes like a new process would."""
    expected, expected_weights = fine_tuned
    x, y = data()
    kwargs = {**FINE_TUNE, "early_stopping": 1, "checkpoint_dir": tmp_path}
    tuner = make_tuner()
    with pytest.raises(Crash):
        tuner.fine_tune(x, y, callbacks=[CrashAt(4, 0)], **kwargs)
    assert tuner.freeze == FreezePolicy.top(3)  # not the interrupted stage's policy
    history = tuner.fine_tune(x, y, **kwargs)
    assert history.epoch == expected.epoch
    assert history.history == expected.history
    assert_same([np.asarray(v) for v in tuner.model.variables], expected_weights)


def test_class_weights_keyed_by_numpy_ints_resume_and_a_changing_rate_is_the_same_run(tmp_path):
    """`dict(zip(np.unique(y), weights))` is the usual class_weight; a learning-rate
    callback changes the live optimizer, not the settings the run was started with."""
    x, y = data()
    class_weight = dict(zip(np.unique(y), [1.0, 2.0, 3.0], strict=True))
    halve = keras.callbacks.LearningRateScheduler(lambda epoch, rate: rate * 0.5)
    kwargs = dict(epochs=4, batch_size=8, class_weight=class_weight, verbose=0)
    tuner = make_tuner()
    tuner.compile("sgd", learning_rate=0.1)
    with pytest.raises(Crash):
        tuner.fit(x, y, checkpoint_dir=tmp_path, callbacks=[halve, CrashAt(2)], **kwargs)
    history = tuner.fit(x, y, checkpoint_dir=tmp_path, callbacks=[halve], **kwargs)
    assert history.epoch == [0, 1, 2, 3]
