"""The whole plan of a fit call is checked before its first step (training/plan.py,
FitArgs.checked, the DataGate's first-batch checks): a refusal trains nothing, and what
Keras accepts still passes."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, Stage


def make_tuner(**kwargs):
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, name="hidden"),
            keras.layers.Dense(5, name="features"),
        ]
    )
    return FineTuner(Backbone.from_model(backbone), Head.classifier(3), seed=0, **kwargs)


rng = np.random.default_rng(0)
X = rng.random((24, 6), dtype=np.float32)
Y = np.arange(24) % 3


def weights(tuner):
    return [w.copy() for w in tuner.model.get_weights()]


@pytest.mark.parametrize(
    "bad_stage",
    [
        Stage(1, FreezePolicy.until("nope")),
        Stage(1, optimizer="adamm"),
        Stage(1, lr_schedule="cosine"),  # after a cosine stage: no float rate to shape
    ],
    ids=["freeze", "optimizer", "cosine-after-cosine"],
)
def test_a_bad_last_stage_is_refused_before_the_first_stage_trains(bad_stage):
    tuner = make_tuner()
    before = weights(tuner)
    trained = []
    spy = keras.callbacks.LambdaCallback(on_train_batch_end=lambda *_: trained.append(1))
    schedule = [Stage(2, FreezePolicy.all(), 1e-3, lr_schedule="cosine"), bad_stage]
    with pytest.raises(ValueError, match="stage 2 of 2|Stage 'stage_2'"):
        tuner.fit(X, Y, schedule=schedule, callbacks=[spy], verbose=0)
    assert trained == []  # not one step
    for old, new in zip(before, weights(tuner), strict=True):
        np.testing.assert_array_equal(old, new)
    assert tuner.freeze == FreezePolicy.all()  # the freeze policy it was built with


def test_an_endless_generator_with_steps_per_epoch_feeds_every_stage():
    """A generator is refused for several stages only when it would end: an endless
    one with steps_per_epoch is how Keras users feed it, and both stages train."""

    def endless():
        for start in itertools.cycle(range(0, 24, 8)):
            yield X[start : start + 8], Y[start : start + 8]

    history = make_tuner().fine_tune(
        endless(), head_epochs=2, epochs=2, steps_per_epoch=3, verbose=0
    )
    assert history.history["stage"] == ["head", "head", "fine_tune", "fine_tune"]
    assert all(np.isfinite(history.history["loss"]))


def test_a_finite_generator_still_trains_a_single_stage_fit():
    tuner = make_tuner()
    tuner.compile()
    batches = ((X[i : i + 8], Y[i : i + 8]) for i in range(0, 24, 8))
    history = tuner.fit(batches, epochs=1, verbose=0)
    assert len(history.history["loss"]) == 1


def test_every_argument_keras_takes_still_passes():
    """The checks refuse only what Keras cannot use: its other spellings pass (verbose
    True, shuffle "batch", numpy-int class_weight keys, a tuple of callbacks,
    validation_freq, validation_batch_size)."""
    tuner = make_tuner()
    tuner.compile()
    seen = []
    history = tuner.fit(
        X,
        Y,
        epochs=np.int64(3),
        batch_size=np.int32(8),
        verbose=False,
        shuffle="batch",
        class_weight={np.int64(0): 1.0, 1: np.float32(2.0), 2: 1},
        callbacks=(keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e)),),
        validation_split=0.25,
        validation_freq=2,
        validation_batch_size=4,
    )
    assert seen == [0, 1, 2]
    assert len(history.history["val_loss"]) == 1  # validated at epoch 2 only


def test_a_dataset_is_checked_on_its_first_batch_and_still_read_whole():
    """The first-batch check reads one batch; the fit then sees every batch of every
    epoch (the check does not consume the dataset)."""
    tuner = make_tuner()
    tuner.compile()
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(8)
    tuner.fit(data, epochs=2, verbose=0)
    assert int(tuner.model.optimizer.iterations) == 6  # 3 batches an epoch, 2 epochs
    bad = tf.data.Dataset.from_tensor_slices((X, Y + 3)).batch(8)
    with pytest.raises(ValueError, match="first batch of `x`.*`y` has labels outside"):
        tuner.fit(bad, epochs=1, verbose=0)


def test_labels_out_of_range_after_the_first_batch_are_keras_business():
    """Only the first batch is read (a dataset can be endless): documented, so a test
    pins it. Keras then fails in the step of the bad batch."""
    tuner = make_tuner()
    tuner.compile()
    y = Y.copy()
    y[-1] = 7  # in the last batch
    data = tf.data.Dataset.from_tensor_slices((X, y)).batch(8)
    with pytest.raises(tf.errors.InvalidArgumentError):
        tuner.fit(data, epochs=1, verbose=0)


def test_a_writable_checkpoint_dir_is_probed_without_leaving_files(tmp_path):
    tuner = make_tuner()
    tuner.compile()
    directory = tmp_path / "run"
    tuner.fit(X, Y, epochs=1, checkpoint_dir=directory, verbose=0)
    # The probe left nothing; the run removed its state when it completed.
    leftovers = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert leftovers == []


def test_a_loss_of_the_users_defines_its_own_targets():
    """The head's target checks are its own loss's contract: labels that a user's loss
    handles (an ignore_class of -1, masked all-zero rows) train, from arrays and from a
    dataset's first batch; NaN labels are refused whatever the loss."""
    y = Y.copy()
    y[0] = -1
    tuner = make_tuner()
    tuner.compile(loss=keras.losses.SparseCategoricalCrossentropy(ignore_class=-1))
    tuner.fit(X, y, epochs=1, verbose=0)
    tuner.fit(tf.data.Dataset.from_tensor_slices((X, y)).batch(8), epochs=1, verbose=0)
    masked = np.eye(3, dtype=np.float32)[Y]
    masked[0] = 0.0
    tuner = make_tuner()
    tuner.compile(loss="categorical_crossentropy")
    tuner.fit(X, masked, epochs=1, verbose=0)
    masked[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        tuner.fit(X, masked, epochs=1, verbose=0)
    tuner = make_tuner()
    tuner.compile()
    with pytest.raises(ValueError, match="outside the integer range"):
        tuner.fit(X, y, epochs=1, verbose=0)  # the head's loss: -1 is no class


def test_keras_spellings_and_a_pydataset_without_len_pass():
    """Keras spellings that must pass: verbose as a numpy int or 3, shuffle as a numpy bool,
    an empty class_weight (no weights), a lone callback, initial_epoch == epochs (a finished
    run called again), and a PyDataset that tells its length only through num_batches."""
    tuner = make_tuner()
    tuner.compile()
    seen = []
    lone = keras.callbacks.LambdaCallback(on_epoch_end=lambda e, logs: seen.append(e))
    tuner.fit(X, Y, epochs=1, verbose=np.int64(0), shuffle=np.bool_(True), callbacks=lone)
    tuner.fit(X, Y, epochs=1, verbose=3, class_weight={})
    history = tuner.fit(X, Y, epochs=2, initial_epoch=2, verbose=0)
    assert seen == [0] and history.history.get("loss", []) == []

    class Batches(keras.utils.PyDataset):
        def __init__(self):
            super().__init__()

        @property
        def num_batches(self):
            return 3

        def __getitem__(self, index):
            return X[index * 8 : index * 8 + 8], Y[index * 8 : index * 8 + 8]

    history = make_tuner().fit(Batches(), schedule=[Stage(1), Stage(1)], verbose=0)
    assert history.history["stage"] == ["stage_1", "stage_2"]


def test_a_numpy_float_learning_rate_is_a_python_float():
    stage = Stage(2, learning_rate=np.float32(1e-3), lr_schedule="cosine")
    assert type(stage.learning_rate) is float
    history = make_tuner().fine_tune(
        X, Y, head_epochs=1, epochs=1, learning_rate=np.float32(3e-3), verbose=0
    )
    assert len(history.history["loss"]) == 2
    make_tuner().fit(X, Y, schedule=[stage], verbose=0)


def test_a_schedule_may_be_any_iterable_of_stages():
    """A tuple or a generator of stages, as before the plan was checked first."""
    stages = (Stage(1, FreezePolicy.all(), name=f"s{i}") for i in range(2))
    history = make_tuner().fit(X, Y, schedule=stages, verbose=0)
    assert history.history["stage"] == ["s0", "s1"]
