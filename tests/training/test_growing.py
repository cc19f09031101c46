"""Growing a trained classifier: `add_classes` keeps the old rows, `fit_new_classes` learns the
new classes and keeps the old ones (rehearsal), where naive training forgets them."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, TunedModel

OLD, NEW = 3, 2  # classes 0-2 trained first, then 3-4


def blobs(count_per_class: int, classes, seed: int):
    """Separable Gaussian blobs in 8-D: the class centres are fixed, the draws `seed`'s."""
    centres = np.random.default_rng(0).normal(0.0, 3.0, (OLD + NEW, 8))
    labels = np.repeat(np.asarray(classes), count_per_class)
    noise = np.random.default_rng(seed).normal(0.0, 1.0, (len(labels), 8))
    return (centres[labels] + noise).astype("float32"), labels


def sequential_backbone() -> Backbone:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, activation="relu", name="features")]
    )
    return Backbone.from_model(model)


def accuracy(tuner, x, y) -> float:
    return float((tuner.predict(x, verbose=0).argmax(axis=1) == y).mean())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tuner trained on classes 0-2, saved; its old-class accuracy; and the data."""
    x_old, y_old = blobs(40, range(OLD), seed=1)
    x_new, y_new = blobs(40, range(OLD, OLD + NEW), seed=2)
    test_old, test_y_old = blobs(30, range(OLD), seed=3)
    test_new, test_y_new = blobs(30, range(OLD, OLD + NEW), seed=4)
    tuner = FineTuner(
        sequential_backbone(),
        Head.classifier(OLD),
        freeze=FreezePolicy.none(),
        seed=0,
        class_names=["a", "b", "c"],
    )
    tuner.compile(learning_rate=1e-2)
    tuner.fit(x_old, y_old, epochs=20, verbose=0)
    path = str(tmp_path_factory.mktemp("growing") / "old.keras")
    tuner.save(path)
    return {
        "path": path,
        "before": accuracy(tuner, test_old, test_y_old),
        "train": (x_old, y_old, x_new, y_new),
        "test": (test_old, test_y_old, test_new, test_y_new),
    }


def grown_and_trained(trained, **kwargs) -> FineTuner:
    x_old, y_old, x_new, y_new = trained["train"]
    tuner = FineTuner.load(trained["path"])
    tuner.add_classes(["d", "e"])
    tuner.fit_new_classes(
        x_new,
        y_new,
        head_epochs=40,
        epochs=5,
        batch_size=16,
        learning_rate=1e-2,
        verbose=0,
        **kwargs,
    )
    return tuner


def test_rehearsal_learns_the_new_classes_and_keeps_the_old_where_naive_training_forgets(
    trained, tmp_path
):
    test_old, test_y_old, test_new, test_y_new = trained["test"]
    assert trained["before"] >= 0.95  # the old classes were learned
    x_old, y_old, _, _ = trained["train"]
    rehearsed = grown_and_trained(trained, memory=(x_old, y_old), memory_per_class=10)
    naive = grown_and_trained(trained, distillation=0.0)
    assert accuracy(rehearsed, test_old, test_y_old) >= trained["before"] - 0.05
    assert accuracy(rehearsed, test_new, test_y_new) >= 0.9
    assert accuracy(naive, test_new, test_y_new) >= 0.9
    assert accuracy(naive, test_old, test_y_old) <= 0.5  # forgot: what rehearsal prevents
    # The exemplars are seeded, 10 a class, kept for the next call,
    # and, once trained, the new classes' too (for the next growth).
    kept_x, kept_y = rehearsed._growth.memory
    assert np.bincount(kept_y).tolist() == [10] * 5 and kept_x.shape == (50, 8)

    # report() shows the old and the new classes apart, by name.
    x = np.concatenate([test_old, test_new])
    y = np.concatenate([test_y_old, test_y_new])
    report = rehearsed.report(x, y)
    groups = report["groups"]
    assert groups["old"]["classes"] == ["a", "b", "c"] and groups["new"]["classes"] == ["d", "e"]
    assert groups["old"]["support"] == 90 and groups["new"]["support"] == 60
    assert groups["old"]["accuracy"] == pytest.approx(accuracy(rehearsed, test_old, test_y_old))
    assert "old classes" in str(report) and "new classes" in str(report)

    # A grown tuner saves and loads as a tuner, with its names, and serves them.
    path = str(tmp_path / "grown.keras")
    rehearsed.save(path)
    again = FineTuner.load(path)
    assert again.class_names == ["a", "b", "c", "d", "e"] and again.head.num_classes == 5
    np.testing.assert_allclose(again.predict(x, verbose=0), rehearsed.predict(x, verbose=0))
    assert again.report(x, y)["groups"]["old"]["accuracy"] == groups["old"]["accuracy"]
    served = tf.saved_model.load(rehearsed.export(str(tmp_path / "serving")))
    labels = served.signatures["serving_default"](inputs=tf.constant(x[-2:]))["label"]
    assert [label.decode() for label in labels.numpy()] == ["e", "e"]


def test_add_classes_keeps_the_old_logits_exactly_and_the_compile_settings(tmp_path):
    x = np.random.default_rng(0).random((6, 8)).astype("float32")
    tuner = FineTuner(sequential_backbone(), Head.classifier(3, logits=True, hidden_units=(4,)))
    tuner.compile(optimizer="sgd", learning_rate=0.05)
    before = tuner.predict(x, verbose=0)
    tuner.add_classes(2)
    after = tuner.predict(x, verbose=0)
    np.testing.assert_array_equal(after[:, :3], before)
    assert after.shape == (6, 5) and tuner.head.num_classes == 5 and tuner.class_names is None
    assert isinstance(tuner.model, TunedModel) and tuner.head.get_config()["units"] == 5
    optimizer = tuner.model.optimizer
    assert type(optimizer).__name__ == "SGD" and float(optimizer.learning_rate) == pytest.approx(
        0.05
    )
    # The wider model trains, and saves and loads with plain Keras.
    tuner.fit(x, np.arange(6) % 5, epochs=1, verbose=0)
    path = str(tmp_path / "m.keras")
    tuner.model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x, verbose=0), tuner.predict(x, verbose=0))


def test_binary_and_multilabel_heads_grow_with_the_same_old_predictions():
    x = np.random.default_rng(0).random((6, 8)).astype("float32")
    binary = FineTuner(sequential_backbone(), Head.binary(), freeze=FreezePolicy.none())
    p = binary.predict(x, verbose=0)[:, 0]
    binary.add_classes(["cat"])
    grown = binary.predict(x, verbose=0)
    assert binary.head.task == "multiclass" and binary.class_names == ["0", "1", "cat"]
    # softmax([0, z, new]) renormalised over classes 0 and 1 is [1 - sigmoid(z), sigmoid(z)].
    np.testing.assert_allclose(grown[:, 1] / grown[:, :2].sum(axis=1), p, rtol=1e-5)
    labels = FineTuner(sequential_backbone(), Head.multilabel(2))
    old = labels.predict(x, verbose=0)
    labels.add_classes(1)
    new = labels.predict(x, verbose=0)
    np.testing.assert_array_equal(new[:, :2], old)
    assert labels.head.units == 3 and (new[:, 2] < 0.5).all()  # a new label starts off


def test_fit_new_classes_keeps_the_backbone_penalty_of_compile_while_it_trains():
    x, y = blobs(8, range(4), seed=5)
    tuner = FineTuner(sequential_backbone(), Head.classifier(3), seed=0)
    tuner.compile(learning_rate=1e-2, backbone_l2=1e-3)
    tuner.add_classes(1)
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(len(self.model.losses))

    tuner.fit_new_classes(
        x[y == 3],
        y[y == 3],
        memory=(x[y < 3], y[y < 3]),
        head_epochs=1,
        epochs=1,
        callbacks=[Probe()],
        verbose=0,
    )
    # The head stage trains no backbone kernel; the fine-tune stage trains them all,
    # under the penalty of compile().
    assert seen == [0, 1]


def test_growth_under_mixed_precision_keeps_the_placed_backbone_and_its_penalty():
    tuner = FineTuner(
        sequential_backbone(),
        Head.classifier(3),
        freeze=FreezePolicy.none(),
        mixed_precision="mixed_bfloat16",
        seed=0,
    )
    tuner.compile(backbone_l2=1e-2, layerwise_lr_decay=0.5)
    backbone = tuner.backbone
    assert len(tuner.model.losses) == 1
    tuner.add_classes(1)
    # The widened model is built on the backbone as placed (not a second copy), so the
    # compile settings that name its variables (penalty, layer-wise rates) still apply.
    assert tuner.backbone is backbone and len(tuner.model.losses) == 1
    assert tuner.model.get_layer("predictions").dtype_policy.name == "float32"


def test_growing_twice_keeps_untrained_classes_new_and_the_memory_across_rounds():
    x, y = blobs(12, range(5), seed=6)
    tuner = FineTuner(sequential_backbone(), Head.classifier(3), seed=0)
    tuner.compile(learning_rate=1e-2)
    tuner.add_classes(1)
    tuner.add_classes(1)  # no training between: both added classes are new
    assert tuner.report(x, y)["groups"]["new"]["classes"] == ["3", "4"]
    new = y >= 3
    tuner.fit_new_classes(
        x[new],
        y[new],
        memory=(x[~new], y[~new]),
        memory_per_class=4,
        head_epochs=1,
        epochs=1,
        verbose=0,
    )
    tuner.add_classes(1)  # a second round: 0-4 are old now, and all are remembered
    assert tuner.report(x, y)["groups"]["old"]["classes"] == ["0", "1", "2", "3", "4"]
    x6, y6 = blobs(6, [4], seed=7)[0], np.full(6, 5)  # (blobs has five centres)
    tuner.fit_new_classes(x6, y6, memory_per_class=4, head_epochs=1, epochs=1, verbose=0)
    kept_x, kept_y = tuner._growth.memory
    assert np.bincount(kept_y).tolist() == [4, 4, 4, 4, 4, 4] and kept_x.shape == (24, 8)
