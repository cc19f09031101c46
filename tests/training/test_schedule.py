"""Staged schedules, the default fine_tune recipe and gradual unfreezing."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import small_cnn

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, Stage, gradual_unfreezing


def make_tuner(freeze=None):
    keras.utils.set_random_seed(0)
    model = small_cnn()
    return FineTuner(Backbone.from_model(model), Head.classifier(3), freeze=freeze), model


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.learning_rates = [], []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.learning_rates.append(float(self.model.optimizer.learning_rate))


def test_schedule_runs_stages_as_one_continuous_history(images, labels):
    tuner, model = make_tuner()
    recorder = Recorder()
    conv1 = model.get_layer("conv1").kernel
    schedule = [
        Stage(2, FreezePolicy.all(), learning_rate=1e-2, name="head"),
        Stage(3, FreezePolicy.none(), learning_rate=1e-3, optimizer="sgd"),
    ]
    before_stage_2 = {}

    class Snapshot(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                before_stage_2["conv1"] = conv1.numpy().copy()
                before_stage_2["iterations"] = int(self.model.optimizer.iterations)

    initial = conv1.numpy().copy()
    history = tuner.fit(
        images, labels, schedule=schedule, batch_size=8, verbose=0, callbacks=[recorder, Snapshot()]
    )
    assert isinstance(history, keras.callbacks.History)
    assert history.epoch == [0, 1, 2, 3, 4] and recorder.epochs == [0, 1, 2, 3, 4]
    assert history.history["stage"] == ["head", "head", "stage_2", "stage_2", "stage_2"]
    assert len(history.history["loss"]) == 5
    np.testing.assert_allclose(recorder.learning_rates, [1e-2, 1e-2, 1e-3, 1e-3, 1e-3], rtol=1e-6)
    np.testing.assert_array_equal(before_stage_2["conv1"], initial)  # frozen in stage 1
    assert not np.array_equal(conv1.numpy(), initial)  # trained in stage 2
    assert isinstance(tuner.model.optimizer, keras.optimizers.SGD)
    assert before_stage_2["iterations"] == 0  # fresh optimizer state for the new stage
    assert tuner.freeze == FreezePolicy.none()


def test_stage_restores_its_best_weights(images, labels):
    tuner, _ = make_tuner(FreezePolicy.none())
    # validation labels that disagree with the training labels: the better the fit, the worse
    # the validation loss, so the best epoch is an early one
    learnable = images.mean(axis=(1, 2)).argmax(-1)  # the brightest channel
    validation = (images, (learnable + 1) % 3)
    schedule = [Stage(6, learning_rate=3e-2)]
    history = tuner.fit(images, learnable, schedule=schedule, validation_data=validation, verbose=0)
    val_losses = history.history["val_loss"]
    assert min(val_losses) < val_losses[-1]
    final = tuner.evaluate(*validation, verbose=0)[0]
    assert final == pytest.approx(min(val_losses), rel=1e-4)


def test_early_stopping_ends_a_stage(images, labels):
    tuner, _ = make_tuner(FreezePolicy.none())
    schedule = [
        Stage(10, learning_rate=1e-30, optimizer="sgd", early_stopping=1, name="stuck"),
        Stage(1, learning_rate=1e-3, name="next"),
    ]
    history = tuner.fit(
        images, labels, schedule=schedule, validation_data=(images, labels), verbose=0
    )
    assert history.history["stage"] == ["stuck", "stuck", "next"]
    assert history.epoch == [0, 1, 2]


def test_fine_tune_default_recipe(images, labels):
    tuner, model = make_tuner(FreezePolicy.top(3))
    recorder = Recorder()
    history = tuner.fine_tune(
        images,
        labels,
        head_epochs=2,
        epochs=2,
        callbacks=[recorder],
        validation_data=(images, labels),
        verbose=0,
    )
    assert history.history["stage"][:2] == ["head", "head"]
    assert set(history.history["stage"][2:]) == {"fine_tune"}
    assert recorder.learning_rates[0] == pytest.approx(3e-3)
    assert recorder.learning_rates[-1] == pytest.approx(3e-4)  # the head's; lower layers less
    assert tuner.freeze == FreezePolicy.top(3)  # the tuner's own policy for stage 2
    assert model.get_layer("conv2").trainable and not model.get_layer("conv1").trainable


def test_progress_lines_name_each_stage_and_the_cache(images, labels, capsys):
    tuner, _ = make_tuner(FreezePolicy.top(3))
    tuner.fine_tune(images, labels, head_epochs=1, epochs=1, verbose=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if "finetune_tf:" in line]
    assert lines[0].startswith("finetune_tf: stage 'head': 1 epochs, FreezePolicy.all()")
    assert any("feature cache: running the frozen backbone once" in line for line in lines)
    assert any(line.startswith("finetune_tf: stage 'fine_tune': 1 epochs") for line in lines)
    tuner.fine_tune(images, labels, head_epochs=1, epochs=1, verbose=0)
    assert "finetune_tf:" not in capsys.readouterr().out  # verbose=0 is silent


def test_gradual_unfreezing_stages_train(images, labels):
    tuner, _ = make_tuner()
    stages = gradual_unfreezing(
        len(tuner.backbone.layers), steps=2, epochs_per_stage=1, learning_rate=1e-3
    )
    assert [s.freeze for s in stages] == [
        FreezePolicy.all(),
        FreezePolicy.top(3),
        FreezePolicy.top(7),
    ]
    assert [s.learning_rate for s in stages] == pytest.approx([1e-3, 3e-4, 1.5e-4])
    history = tuner.fit(images, labels, schedule=stages, verbose=0)
    assert history.history["stage"] == ["head", "unfreeze_1", "unfreeze_2"]


def test_schedule_errors(images, labels):
    tuner, _ = make_tuner()
    with pytest.raises(ValueError, match=r"Stage\(epochs\)` must be a whole number >= 1.*epochs=0"):
        Stage(0)
    with pytest.raises(TypeError, match="whole number"):
        Stage(2.5)
    with pytest.raises(TypeError, match="FreezePolicy"):
        Stage(1, freeze="all")
    with pytest.raises(ValueError, match="patience"):
        Stage(1, early_stopping=0)
    with pytest.raises(ValueError, match="learning_rate"):
        tuner.fit(images, labels, schedule=[Stage(1, learning_rate=-1.0)])
    with pytest.raises(ValueError, match="non-empty list"):
        tuner.fit(images, labels, schedule=[])
    with pytest.raises(ValueError, match=r"`epochs`=3.*Stage\(epochs"):
        tuner.fit(images, labels, schedule=[Stage(1)], epochs=3)
    with pytest.raises(ValueError, match=r"bottom\(n\)"):
        tuner.fit(images, labels, schedule=[Stage(1, FreezePolicy.bottom(99))])
    with pytest.raises(ValueError, match="layer_count"):
        gradual_unfreezing(0)
    with pytest.raises(ValueError, match="steps"):
        gradual_unfreezing(5, steps=9)


class BatchRates(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.rates = []

    def on_train_batch_begin(self, batch, logs=None):
        self.rates.append(float(self.model.optimizer.learning_rate))


def test_cosine_stage_decays_to_zero_and_warmup_ramps_up(images, labels):
    tuner, _ = make_tuner(FreezePolicy.none())
    rates = BatchRates()
    tuner.fit(  # 24 examples, batch 8: 3 steps an epoch
        images,
        labels,
        schedule=[
            Stage(2, learning_rate=1e-2, warmup_epochs=1),
            Stage(4, learning_rate=1e-2, lr_schedule="cosine"),
            Stage(2, learning_rate=1e-2, lr_schedule="cosine", warmup_epochs=1),
        ],
        batch_size=8,
        callbacks=[rates],
        verbose=0,
    )
    warmup, cosine, both = rates.rates[:6], rates.rates[6:18], rates.rates[18:]
    np.testing.assert_allclose(warmup, [1e-2 / 3, 2e-2 / 3, 1e-2, 1e-2, 1e-2, 1e-2], rtol=1e-5)
    expected = [1e-2 * 0.5 * (1 + np.cos(np.pi * step / 12)) for step in range(12)]
    np.testing.assert_allclose(cosine, expected, rtol=1e-4, atol=1e-9)
    assert both[0] < both[2] == pytest.approx(1e-2 * 2 / 3) and both[3] == pytest.approx(1e-2)
    assert both[3] > both[4] > both[5]


def test_warmup_takes_the_compiled_rate_and_scales_per_layer(images, labels):
    tuner, _ = make_tuner(FreezePolicy.none())
    tuner.compile("adam", learning_rate=4e-3)
    rates = BatchRates()
    tuner.fit(
        images,
        labels,
        schedule=[Stage(2, warmup_epochs=1, layerwise_lr_decay=0.5)],
        batch_size=12,
        callbacks=[rates],
        verbose=0,
    )
    np.testing.assert_allclose(rates.rates, [2e-3, 4e-3, 4e-3, 4e-3], rtol=1e-5)
    groups = tuner.model.optimizer._groups
    assert [float(group.learning_rate) for _, group, _ in groups[:2]] == pytest.approx([4e-3, 2e-3])


def test_shaped_stage_errors(images, labels):
    with pytest.raises(ValueError, match="lr_schedule.*'constant' or 'cosine'"):
        Stage(2, lr_schedule="linear")
    with pytest.raises(ValueError, match=r"warmup_epochs.*\[0, 2\).*epochs=2.*warmup_epochs=2"):
        Stage(2, warmup_epochs=2)
    decay = keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5)
    with pytest.raises(ValueError, match="already a LearningRateSchedule"):
        Stage(2, learning_rate=decay, lr_schedule="cosine")
    tuner, _ = make_tuner()
    unknown_length = tf.data.Dataset.from_tensor_slices((images, labels)).filter(
        lambda x, y: y >= 0
    )
    with pytest.raises(ValueError, match="steps_per_epoch"):
        tuner.fit(
            unknown_length.batch(8),
            schedule=[Stage(2, learning_rate=1e-3, lr_schedule="cosine")],
            verbose=0,
        )


def dense_tuner():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(8)(inputs)))
    return FineTuner(backbone, Head.classifier(2), freeze=FreezePolicy.none())


def stage_lengths(history):
    return {name: history.history["stage"].count(name) for name in ("head", "fine_tune")}


def test_fine_tune_sizes_stage_two_in_optimizer_steps():
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 4), dtype=np.float32), np.arange(40) % 2
    # 40 examples at batch 3 make 14 steps an epoch: 300 steps take 22 epochs (more than
    # the least 10), all of them run without validation data (no stopping on a noisy
    # training loss).
    history = dense_tuner().fine_tune(x, y, head_epochs=1, batch_size=3, verbose=0)
    assert stage_lengths(history) == {"head": 1, "fine_tune": 22}
    # Data of unknown length: 10 epochs.
    unknown = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(20)
    history = dense_tuner().fine_tune(unknown, head_epochs=1, verbose=0)
    assert stage_lengths(history) == {"head": 1, "fine_tune": 10}


def test_fine_tune_sizes_the_head_stage_in_optimizer_steps():
    """Issue 15: 30 head epochs of 50 examples were 60 steps, and the head had not learned
    when stage 2 began. `head_epochs="auto"`: 30 epochs or 500 steps, at most 500 epochs."""
    rng = np.random.default_rng(0)
    x, y = rng.random((40, 4), dtype=np.float32), np.arange(40) % 2
    history = dense_tuner().fine_tune(x, y, epochs=1, batch_size=3, verbose=0)
    assert stage_lengths(history) == {"head": 36, "fine_tune": 1}  # 14 steps an epoch
    big = rng.random((2000, 4), dtype=np.float32)
    history = dense_tuner().fine_tune(big, np.arange(2000) % 2, epochs=1, verbose=0)
    assert stage_lengths(history) == {"head": 30, "fine_tune": 1}  # 63 steps an epoch
    unknown = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(20)
    history = dense_tuner().fine_tune(unknown, epochs=1, verbose=0)
    assert stage_lengths(history) == {"head": 30, "fine_tune": 1}
    for bad in ("long", 0, True, 2.5):
        with pytest.raises(ValueError, match=rf"`head_epochs` must be a whole number.*={bad!r}"):
            dense_tuner().fine_tune(x, y, head_epochs=bad)


def test_fine_tune_auto_early_stopping_waits_a_tenth_of_the_stage():
    rng = np.random.default_rng(0)
    x = rng.random((40, 4), dtype=np.float32)
    y = (x[:, 0] > 0.5).astype("int64")  # learnable, so the flipped labels below get worse
    # Validation labels are the training labels flipped: val_loss soon only gets worse.
    history = dense_tuner().fine_tune(
        x, y, head_epochs=1, batch_size=20, validation_data=(x, 1 - y), verbose=0
    )
    stage = [i for i, name in enumerate(history.history["stage"]) if name == "fine_tune"]
    val_loss = [history.history["val_loss"][i] for i in stage]
    assert len(stage) < 150
    assert len(stage) == int(np.argmin(val_loss)) + 1 + 15  # patience max(3, 150 // 10)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"epochs": "many"}, "epochs='many'"), ({"early_stopping": "yes"}, "early_stopping='yes'")],
)
def test_fine_tune_rejects_unknown_budget_words(kwargs, words):
    with pytest.raises(ValueError, match=words):
        dense_tuner().fine_tune(np.zeros((4, 4)), np.zeros(4), **kwargs)


class BackboneWatcher(keras.callbacks.Callback):
    """The backbone's weights at the end of every epoch, with the stage it belonged to."""

    def __init__(self, backbone_model):
        super().__init__()
        self.backbone_model, self.snapshots = backbone_model, []

    def on_epoch_end(self, epoch, logs=None):
        self.snapshots.append([w.numpy().copy() for w in self.backbone_model.weights])


def test_fine_tune_with_every_default_trains_the_backbone_in_stage_two():
    """FineTuner(backbone, head) with no freeze policy, then fine_tune(x, y): stage 1 trains
    only the head, and it learns (loss well below chance on a learnable task); stage 2 moves
    every kernel of the backbone (the whole backbone), while BatchNorm statistics stay."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(32, activation="relu", name="dense1")(inputs)
    hidden = keras.layers.BatchNormalization(name="bn")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(16, name="features")(hidden))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(96, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + 2 * (x[:, 1] > 0)  # 4 classes
    tuner = FineTuner(Backbone.from_model(model), Head.classifier(4))
    watcher = BackboneWatcher(model)
    before = [w.numpy().copy() for w in model.weights]
    history = tuner.fine_tune(x, y, epochs=3, callbacks=[watcher], verbose=0)
    stages = history.history["stage"]
    head_end = stages.count("head") - 1
    assert stages.count("fine_tune") == 3
    # Stage 1: only the head trained, and it learned (chance is log(4) = 1.39).
    for b, a in zip(before, watcher.snapshots[head_end], strict=True):
        np.testing.assert_array_equal(a, b)
    assert history.history["loss"][head_end] < 0.8 * np.log(4)
    # Stage 2: every kernel of the backbone moved; BatchNorm statistics did not.
    for variable, b, a in zip(model.weights, before, watcher.snapshots[-1], strict=True):
        if "moving" in variable.path:
            np.testing.assert_array_equal(a, b)
        elif "kernel" in variable.path:
            assert not np.allclose(a, b), variable.path
    assert tuner.freeze == FreezePolicy.none()


def test_fine_tune_keeps_a_policy_the_user_chose_even_all():
    tuner, model = make_tuner(FreezePolicy.all())
    before = [w.numpy().copy() for w in model.weights]
    images = np.random.default_rng(1).random((24, 8, 8, 3), dtype=np.float32)
    tuner.fine_tune(images, np.arange(24) % 3, head_epochs=1, epochs=2, verbose=0)
    for b, a in zip(before, model.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    tuner, model = make_tuner()
    tuner.set_freeze(FreezePolicy.top(2))  # chosen after construction: kept too
    tuner.fine_tune(images, np.arange(24) % 3, head_epochs=1, epochs=1, verbose=0)
    assert tuner.freeze == FreezePolicy.top(2)
