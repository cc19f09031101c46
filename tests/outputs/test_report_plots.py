"""tuner.report(): sklearn.metrics on the model's predictions, for every head and label
format; plots rendered to PNG (training curves across stages, confusion matrix)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm

from finetune_tf import (
    Backbone,
    FineTuner,
    FreezePolicy,
    Head,
    Report,
    plot_confusion_matrix,
    plot_history,
)

matplotlib = pytest.importorskip("matplotlib")


def vector_tuner(head, features=6):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((features,))
    backbone = Backbone.from_model(
        keras.Model(inputs, keras.layers.Dense(8, activation="relu", name="dense")(inputs))
    )
    tuner = FineTuner(backbone, head, freeze=FreezePolicy.none())
    tuner.compile(learning_rate=1e-2)
    return tuner


def data(n=60):
    rng = np.random.default_rng(0)
    x = rng.random((n, 6)).astype("float32")
    return x, (x[:, 0] * 2.99).astype(int)  # three classes from the first feature


def test_classification_report_matches_sklearn_in_every_label_format():
    x, y = data()
    tuner = vector_tuner(Head.classifier(3))
    tuner.fit(x, y, epochs=30, verbose=0)
    names = ["low", "mid", "high"]
    report = tuner.report(x, y, class_names=names)
    predicted = np.argmax(tuner.predict(x, verbose=0), axis=-1)
    assert isinstance(report, Report) and isinstance(report, dict)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(y, predicted))
    assert report["confusion_matrix"] == skm.confusion_matrix(y, predicted).tolist()
    f1 = skm.f1_score(y, predicted, average=None)
    assert [report["per_class"][n]["f1"] for n in names] == pytest.approx(f1.tolist())
    assert sum(report["per_class"][n]["support"] for n in names) == len(y)
    # One-hot labels, a labelled tf.data pipeline: the same report.
    assert tuner.report(x, np.eye(3)[y], class_names=names) == report
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(7)
    assert tuner.report(dataset, class_names=names) == report

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 3

        def __getitem__(self, index):
            return x[index * 20 : (index + 1) * 20], y[index * 20 : (index + 1) * 20]

    assert tuner.report(Batches(), class_names=names) == report
    json.dumps(report)  # plain numbers and lists
    table = str(report)
    assert "precision" in table and "confusion matrix" in table and "high" in table


def test_binary_multilabel_and_regression_reports():
    x, y = data()
    binary = vector_tuner(Head.binary(logits=True))
    labels = (y > 0).astype(int)
    binary.fit(x, labels, epochs=20, verbose=0)
    logits = binary.predict(x, verbose=0)[:, 0]
    report = binary.report(x, labels)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(labels, logits > 0))
    assert len(report["confusion_matrix"]) == 2
    assert binary.report(x, np.eye(2)[labels]) == report

    multi = vector_tuner(Head.multilabel(2))
    targets = np.stack([y == 0, y == 2], axis=1).astype("float32")
    multi.fit(x, targets, epochs=20, verbose=0)
    report = multi.report(x, targets, class_names=["zero", "two"])
    predicted = (multi.predict(x, verbose=0) > 0.5).astype(int)
    assert report["accuracy"] == pytest.approx(skm.accuracy_score(targets, predicted))
    assert np.shape(report["confusion_matrix"]) == (2, 2, 2)
    assert report["per_class"]["two"]["support"] == int(targets[:, 1].sum())

    regression = vector_tuner(Head.regressor(2))
    values = np.stack([x[:, 0], x[:, 1] * 2], axis=1)
    regression.fit(x, values, epochs=20, verbose=0)
    report = regression.report(x, values)
    predictions = regression.predict(x, verbose=0)
    assert report["r2"] == pytest.approx(skm.r2_score(values, predictions))
    assert report["per_output"][1]["mae"] == pytest.approx(
        skm.mean_absolute_error(values[:, 1], predictions[:, 1])
    )
    assert "rmse" in str(report)


def test_report_refuses_what_it_cannot_score():
    x, y = data()
    tuner = vector_tuner(Head.classifier(3))
    with pytest.raises(ValueError, match=r"`class_names` has 2 names.*3 classes"):
        tuner.report(x, y, class_names=["a", "b"])
    with pytest.raises(ValueError, match=r"needs the labels"):
        tuner.report(x)
    with pytest.raises(ValueError, match=r"`y` has labels outside the integer range 0..2"):
        tuner.report(x, y + 1)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    with pytest.raises(ValueError, match=r"`y` must be None"):
        tuner.report(dataset, y)
    with pytest.raises(ValueError, match=r"no confusion matrix"):
        vector_tuner(Head.regressor()).report(x, x[:, 0]).plot_confusion_matrix()


def test_plots_render_to_png_without_touching_pyplot(tmp_path):
    import matplotlib.pyplot as plt

    open_figures = plt.get_fignums()
    x, y = data()
    tuner = vector_tuner(Head.classifier(3), features=6)
    history = tuner.fine_tune(
        x, y, head_epochs=3, epochs=4, validation_data=(x, y), early_stopping=None, verbose=0
    )
    figure = plot_history(history, path=tmp_path / "curves.png")
    assert [axis.get_title() for axis in figure.axes] == ["loss", "accuracy"]
    labels = {text.get_text() for axis in figure.axes for text in axis.texts}
    assert labels == {"head", "fine_tune"}  # the stages are marked
    lines = figure.axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["loss", "val_loss"]
    np.testing.assert_allclose(lines[0].get_ydata(), history.history["loss"])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure._repr_png_()[:8] == b"\x89PNG\r\n\x1a\n"  # how Jupyter shows it inline

    report = tuner.report(x, y, class_names=["low", "mid", "high"])
    figure = report.plot_confusion_matrix(normalize=True, path=tmp_path / "confusion.png")
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    shown = np.asarray(figure.axes[0].images[0].get_array())
    np.testing.assert_allclose(shown.sum(axis=1), 1.0)  # rows normalised
    plot_confusion_matrix(report["confusion_matrix"], path=tmp_path / "counts.svg")
    assert (tmp_path / "counts.svg").read_text().lstrip().startswith("<?xml")
    assert plt.get_fignums() == open_figures  # nothing left in pyplot's registry


def test_plot_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match=r"`metrics` names \['auc'\]"):
        plot_history({"loss": [1.0]}, metrics=["auc"])
    with pytest.raises(ValueError, match=r"`history` holds no metrics"):
        plot_history({})
    with pytest.raises(ValueError, match=r"`path`.*\.png"):
        plot_history({"loss": [1.0]}, path=tmp_path / "curves.txt")
    with pytest.raises(FileNotFoundError, match=r"`path`"):
        plot_history({"loss": [1.0]}, path=tmp_path / "missing" / "curves.png")
    with pytest.raises(ValueError, match=r"`matrix` must be square"):
        plot_confusion_matrix([[1, 2, 3]])
    with pytest.raises(ValueError, match=r"`class_names` has 1 names"):
        plot_confusion_matrix([[1, 0], [0, 1]], class_names=["a"])
