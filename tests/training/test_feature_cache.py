"""The feature cache trains the head on cached backbone outputs, with the same result."""

import os
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

from finetune_tf import Backbone, FeatureCache, FineTuner, FreezePolicy, Head, Stage

RNG = np.random.default_rng(0)
X = RNG.random((60, 8, 8, 3), dtype=np.float32)
Y = np.arange(60) % 3
XV = RNG.random((20, 8, 8, 3), dtype=np.float32)
YV = np.arange(20) % 3


def _tuner(freeze=None, **kwargs):
    keras.utils.set_random_seed(1)
    head = Head.classifier(3, hidden_units=(8,), dropout=0.3)
    tuner = FineTuner(Backbone.from_model(small_cnn()), head, freeze=freeze, **kwargs)
    tuner.compile("adam", learning_rate=1e-2)
    return tuner


def _train(feature_cache, x=X, y=Y, freeze=None, tuner_kwargs=None, **kwargs):
    tuner = _tuner(freeze, **(tuner_kwargs or {}))
    history = tuner.fit(x, y, feature_cache=feature_cache, **{"verbose": 0, **kwargs})
    return tuner, [w.numpy() for w in tuner.model.weights], history.history


def _spy(monkeypatch, tuner_cls=FineTuner):
    """Counts full-model fits and backbone passes of every FineTuner made afterwards."""
    calls = {"full_fit": 0, "feature_batches": 0}
    original_init = tuner_cls.__init__

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        fit, predict = self.model.fit, self.assembly.feature_model.predict_on_batch

        def counting_fit(*a, **k):
            calls["full_fit"] += 1
            return fit(*a, **k)

        def counting_predict(*a, **k):
            calls["feature_batches"] += 1
            return predict(*a, **k)

        self.model.fit = counting_fit
        self.assembly.feature_model.predict_on_batch = counting_predict

    monkeypatch.setattr(tuner_cls, "__init__", init)
    return calls


def _assert_same(a, b, atol=1e-6):
    assert len(a) == len(b)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_allclose(left, right, atol=atol)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 16},
        {"batch_size": 16, "validation_data": (XV, YV)},
        {"batch_size": 8, "validation_split": 0.25, "class_weight": {0: 1.0, 1: 2.0, 2: 0.5}},
    ],
    ids=["shuffled", "validation_data", "validation_split+class_weight"],
)
def test_cached_numpy_training_matches_training_through_the_frozen_backbone(kwargs, monkeypatch):
    _, reference, reference_history = _train(False, epochs=4, **kwargs)
    calls = _spy(monkeypatch)
    _, cached, cached_history = _train("auto", epochs=4, **kwargs)
    assert calls["full_fit"] == 0  # the head trained on cached features...
    # ...computed by one backbone pass (one call of up to 256 images each), not one per epoch
    assert calls["feature_batches"] == (2 if "validation_data" in kwargs else 1)
    _assert_same(reference, cached)  # dropout and shuffling included
    assert cached_history.keys() == reference_history.keys()
    for key in reference_history:
        np.testing.assert_allclose(cached_history[key], reference_history[key], atol=1e-5)


def test_cached_tf_data_matches_and_spills_to_disk(tmp_path, capsys):
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(16)
    validation = tf.data.Dataset.from_tensor_slices((XV, YV)).batch(16)
    _, reference, _ = _train(False, dataset, None, epochs=3, validation_data=validation)
    _, cached, _ = _train("auto", dataset, None, epochs=3, validation_data=validation)
    _assert_same(reference, cached)
    spill = FeatureCache(memory_limit=0, directory=str(tmp_path / "spill"))
    tuner = _tuner()
    tuner.fit(dataset, epochs=3, validation_data=validation, feature_cache=spill, verbose=1)
    assert "of features on disk" in capsys.readouterr().out
    _assert_same(reference, [w.numpy() for w in tuner.model.weights])
    assert os.listdir(tmp_path / "spill") == []  # the spilled features are removed afterwards


def test_spilled_numpy_features_train_the_same_without_shuffling():
    _, reference, _ = _train(False, epochs=3, batch_size=16, shuffle=False)
    _, cached, _ = _train(FeatureCache(memory_limit=0), epochs=3, batch_size=16, shuffle=False)
    _assert_same(reference, cached)


def test_shuffled_tf_data_is_reshuffled_every_epoch_from_the_cache(monkeypatch):
    from finetune_tf.training.feature_store import compute_features, feature_dataset

    calls = _spy(monkeypatch)
    dataset = (
        tf.data.Dataset.from_tensor_slices((X, np.arange(60)))
        .shuffle(60, seed=0, reshuffle_each_iteration=True)
        .batch(60)
    )
    tuner = FineTuner(Backbone.from_model(small_cnn()), Head.regressor())
    tuner.compile("sgd", learning_rate=1e-3)
    tuner.fit(dataset, epochs=2, verbose=0)
    assert calls["full_fit"] == 0
    features = tuner.assembly.feature_model
    cached = compute_features(features, tuner.strategy, dataset, None, None, 60, FeatureCache())
    try:
        reads = feature_dataset(cached, 60, shuffle=True)
        epochs = [np.asarray(next(iter(reads))[1]) for _ in range(2)]
    finally:
        cached.close()
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(60))
    assert list(epochs[0]) != list(epochs[1])


def test_augmentation_turns_the_cache_off_with_a_log_line(capsys, monkeypatch):
    calls = _spy(monkeypatch)
    tuner = _tuner(augmentation=[keras.layers.RandomFlip("horizontal")])
    tuner.fit(X, Y, epochs=1, verbose=1)
    assert "feature cache off: the model has augmentation layers" in capsys.readouterr().out
    assert calls["full_fit"] == 1

    augmented = (
        tf.data.Dataset.from_tensor_slices((X, Y))
        .batch(16)
        .map(lambda x, y: (tf.image.random_flip_left_right(x), y))
    )
    tuner = _tuner()
    tuner.fit(augmented, epochs=1, verbose=1)
    assert "random ops" in capsys.readouterr().out
    assert calls["full_fit"] == 2


class _Digits(keras.utils.PyDataset):
    def __len__(self):
        return 4

    def __getitem__(self, index):
        part = slice(index * 15, (index + 1) * 15)
        return X[part], Y[part]


def test_py_dataset_is_cached_only_when_the_user_vouches_for_it(capsys, monkeypatch):
    calls = _spy(monkeypatch)
    _, reference, _ = _train("auto", _Digits(), None, epochs=2, shuffle=False, verbose=1)
    assert "pass feature_cache=True" in capsys.readouterr().out
    assert calls["full_fit"] == 1
    _, cached, _ = _train(True, _Digits(), None, epochs=2, shuffle=False)
    assert calls["full_fit"] == 1
    _assert_same(reference, cached)


def test_stages_that_train_the_backbone_are_not_cached_and_say_nothing(capsys, monkeypatch):
    calls = _spy(monkeypatch)
    _train("auto", freeze=FreezePolicy.none(), epochs=1, verbose=1)
    _train("auto", freeze=FreezePolicy.all(batchnorm="train"), epochs=1, verbose=1)
    assert calls["full_fit"] == 2
    assert "feature cache" not in capsys.readouterr().out


def test_schedule_caches_the_frozen_stage_and_callbacks_see_the_full_model(tmp_path, monkeypatch):
    calls = _spy(monkeypatch)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append((epoch, self.model is tuner.model, sorted(logs)))

    tuner = _tuner()
    checkpoint = str(tmp_path / "best.keras")
    history = tuner.fit(
        X,
        Y,
        schedule=[Stage(2, FreezePolicy.all(), 1e-2), Stage(1, FreezePolicy.none(), 1e-4)],
        validation_data=(XV, YV),
        callbacks=[Record(), keras.callbacks.ModelCheckpoint(checkpoint)],
        verbose=0,
    )
    assert calls["full_fit"] == 1  # only the unfrozen stage ran through the backbone
    assert [epoch for epoch, _, _ in seen] == [0, 1, 2]
    assert all(is_full for _, is_full, _ in seen)
    assert seen[0][2] == seen[2][2] == ["accuracy", "loss", "val_accuracy", "val_loss"]
    assert history.history["stage"] == ["stage_1", "stage_1", "stage_2"]
    saved = keras.models.load_model(checkpoint)  # the full model, images in
    assert saved.input_shape == (None, 8, 8, 3)


def test_a_callback_can_stop_a_cached_stage():
    class StopNow(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            self.model.stop_training = True

    tuner = _tuner()
    history = tuner.fit(X, Y, epochs=5, callbacks=[StopNow()], verbose=0)
    assert history.epoch == [0]


def test_bad_feature_cache_values_are_refused():
    tuner = _tuner()
    for value in ["yes", 1, None]:
        with pytest.raises(ValueError, match="feature_cache"):
            tuner.fit(X, Y, epochs=1, feature_cache=value, verbose=0)
    with pytest.raises(ValueError, match="memory_limit"):
        FeatureCache(memory_limit=-1)
    with pytest.raises(ValueError, match="mode"):
        FeatureCache(mode="always")


def test_text_backbone_strings_are_cached_with_the_same_result(tmp_path, monkeypatch):
    from conftest import save_text_encoder

    handle = save_text_encoder(str(tmp_path / "encoder"))
    texts = np.array(["good movie", "bad film", "great film", "awful movie"] * 4)
    labels = np.array([1, 0, 1, 0] * 4)

    def train(cache):
        keras.utils.set_random_seed(0)
        backbone = Backbone.from_hub(handle, output_key="pooled_output")
        tuner = FineTuner(backbone, Head.binary())
        tuner.compile(learning_rate=0.1)
        tuner.fit(texts, labels, epochs=3, feature_cache=cache, verbose=0)
        return [w.numpy() for w in tuner.model.trainable_weights]

    reference = train(False)
    calls = _spy(monkeypatch)
    _assert_same(reference, train("auto"))
    assert calls["full_fit"] == 0


class StepsAtEpochEnd(keras.callbacks.Callback):
    """The optimizer's step count at the end of each epoch."""

    def __init__(self, tuner):
        super().__init__()
        self.optimizer, self.steps = tuner.model.optimizer, []

    def on_epoch_end(self, epoch, logs=None):
        self.steps.append(int(self.optimizer.iterations.numpy()))


@pytest.mark.parametrize("feature_cache", [True, False])
@pytest.mark.parametrize("seed", [None, 3])
def test_steps_per_epoch_are_what_keras_runs_with_or_without_a_seed(feature_cache, seed):
    """60 examples at batch 1 are 60 steps an epoch, whatever the path: with a seed the
    epochs come back to back from one dataset, and the cached head's several steps per
    execution must not run past an epoch's end."""
    tuner = _tuner(seed=seed)
    steps = StepsAtEpochEnd(tuner)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        history = tuner.fit(
            X, Y, epochs=3, batch_size=1, feature_cache=feature_cache, callbacks=[steps], verbose=0
        )
    assert steps.steps == [60, 120, 180]
    assert len(history.history["loss"]) == 3
    assert not [w for w in caught if "ran out of data" in str(w.message)]


def test_a_seeded_fit_keeps_the_steps_per_execution_the_user_compiled():
    tuner = _tuner(freeze=FreezePolicy.none(), seed=3)
    tuner.compile("adam", learning_rate=1e-2, steps_per_execution=4)
    steps = StepsAtEpochEnd(tuner)
    tuner.fit(X, Y, epochs=3, batch_size=10, callbacks=[steps], verbose=0)  # 6 steps an epoch
    assert steps.steps == [6, 12, 18]
    assert tuner.model.steps_per_execution == 4


def test_evaluate_after_a_seeded_fit_reads_every_batch():
    """The seeded fit runs fewer steps per execution; validation inside it traces the test
    function for that count, which must not outlive the fit (evaluate would then read only
    7 of every 8 batches)."""
    tuner = _tuner(freeze=FreezePolicy.none(), seed=1)
    tuner.compile("adam", learning_rate=1e-2, steps_per_execution=8)
    tuner.fit(X[:35], Y[:35], epochs=1, batch_size=5, validation_data=(XV, YV), verbose=0)
    x = np.concatenate([X] * 4)  # 240 examples: 48 batches of 5
    y = np.concatenate([Y] * 4)
    evaluated = tuner.evaluate(x, y, batch_size=5, verbose=0)
    probabilities = tuner.predict(x, batch_size=5, verbose=0)
    loss = -np.mean(np.log(probabilities[np.arange(len(y)), y]))
    np.testing.assert_allclose(evaluated[0], loss, rtol=2e-6)  # a skipped batch: 4e-5


class _Recorder(keras.layers.Layer):
    """Passes its input through, noting the row numbers (column 0) of each eager batch."""

    def __init__(self, seen, **kwargs):
        super().__init__(**kwargs)
        self.note = seen.extend  # (a list attribute would be copied into Keras' tracking)

    def call(self, inputs):
        if tf.executing_eagerly():
            self.note(np.asarray(inputs)[:, 0].astype(int).tolist())
        return inputs


def _orders_keras_fit_reads(count, batch_size, epochs):
    seen = []
    inputs = keras.Input((1,))
    model = keras.Model(inputs, keras.layers.Dense(1)(_Recorder(seen)(inputs)))
    model.compile("sgd", "mse", run_eagerly=True)
    rows = np.arange(count, dtype="float32")[:, None]
    model.fit(rows, rows, batch_size=batch_size, epochs=epochs, verbose=0)
    return [seen[e * count : (e + 1) * count] for e in range(epochs)]


def test_the_cached_head_reads_arrays_in_the_order_keras_fit_reads_them():
    from finetune_tf.training.seeding import keras_array_order

    keras.utils.set_random_seed(4)
    expected = _orders_keras_fit_reads(20, 8, epochs=2)
    keras.utils.set_random_seed(4)
    order = keras_array_order(20, 8, shuffle=True)
    if isinstance(order, str):  # a Keras that reseeds its order each epoch: left to it
        assert order == "keras" and expected[0] != expected[1]
    else:  # Keras 3.15: the same seeded order each epoch
        assert [order.tolist()] * 2 == expected
    assert keras_array_order(5, 2, shuffle=False).tolist() == [0, 1, 2, 3, 4]
    assert keras_array_order(5, 2, shuffle="batch") == "keras"  # left to Keras
    tf.random.set_seed(None)  # no global seed: Keras draws a new order each epoch
    try:
        assert keras_array_order(50, 8, shuffle=True) == "random"
    finally:
        keras.utils.set_random_seed(0)


def test_in_keras_order_batches_rows_and_weights_in_the_probed_order():
    from finetune_tf.training.fit_args import FitArgs
    from finetune_tf.training.seeding import in_keras_order, keras_array_order

    x = np.arange(10, dtype="float32")[:, None]
    y, w = np.arange(10) * 10, np.arange(10) / 10
    args = FitArgs({"batch_size": 4, "shuffle": True, "sample_weight": w})
    keras.utils.set_random_seed(3)
    order = keras_array_order(10, 4, shuffle=True)
    keras.utils.set_random_seed(3)
    data, none, fit_args = in_keras_order(x, y, args)
    if isinstance(order, str):  # a Keras whose order is left to it: nothing replaced
        assert data is x and fit_args is args
        return
    batches = list(data)
    assert none is None and fit_args.sample_weight is None and not fit_args.shuffle
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    rows = np.concatenate([b[0].numpy()[:, 0] for b in batches]).astype(int)
    assert rows.tolist() == order.tolist()
    np.testing.assert_array_equal(np.concatenate([b[1] for b in batches]), rows * 10)
    np.testing.assert_allclose(np.concatenate([b[2] for b in batches]), rows / 10)
    # Rows that do not match are left to Keras, which names the lengths.
    assert in_keras_order(x, y[:7], args)[1] is not None
