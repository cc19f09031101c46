"""scikit-learn estimators: the estimator checks that apply, pipelines, cross-validation,
grid search, any label type, and every fit starting from the pretrained weights."""

import datetime
import pickle
import time
import types

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.base import clone
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, cross_val_score, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

import finetune_tf
from finetune_tf import (
    Backbone,
    BackboneFeatures,
    FineTunerClassifier,
    FineTunerRegressor,
    FreezePolicy,
)


def set_encoder() -> keras.Model:
    """A backbone for any number of features (scikit-learn's checks vary it): each feature
    is embedded alone, then the embeddings are averaged."""
    inputs = keras.Input((None,), name="x")
    x = keras.layers.Reshape((-1, 1))(inputs)
    x = keras.layers.Dense(
        8,
        activation="relu",
        kernel_initializer=keras.initializers.RandomNormal(1.0, 0.5, seed=0),
        bias_initializer=keras.initializers.RandomUniform(-0.5, 0.5, seed=1),
        name="per_feature",
    )(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling1D(name="pool")(x))


# The checks that cannot pass, and why (also in docs/sklearn.md).
NOT_APPLICABLE = {
    "check_classifiers_train": (
        "asks for 83% accuracy on tabular blobs of any width; the only backbone that takes "
        "any width is this permutation-invariant set encoder, which cannot separate them"
    ),
    "check_regressors_train": "asks for R2 > 0.5 on tabular data of any width; same reason",
}
FLOAT32_LAST_BITS = {
    "check_methods_subset_invariance": (
        "asks for equal predictions to 1e-7 whether examples come in one batch or in two; "
        "TensorFlow's float32 CPU kernels differ in the last bit (2e-7) between batch sizes"
    ),
    "check_methods_sample_order_invariance": (
        "asks for equal predict_proba to 1e-7 whatever the order of the examples; "
        "TensorFlow's float32 CPU kernels differ in the last bits (6e-8) when the rows "
        "batched together change"
    ),
}


def expected_failures(estimator):
    if isinstance(estimator, FineTunerClassifier):
        return {
            "check_classifiers_train": NOT_APPLICABLE["check_classifiers_train"],
            "check_methods_sample_order_invariance": FLOAT32_LAST_BITS[
                "check_methods_sample_order_invariance"
            ],
        }
    if isinstance(estimator, FineTunerRegressor):
        return {
            "check_regressors_train": NOT_APPLICABLE["check_regressors_train"],
            "check_methods_subset_invariance": FLOAT32_LAST_BITS["check_methods_subset_invariance"],
        }
    return {}


@parametrize_with_checks(
    [
        FineTunerClassifier(
            set_encoder(), head_epochs=30, epochs=2, learning_rate=3e-2, random_state=0
        ),
        FineTunerRegressor(
            set_encoder(), head_epochs=30, epochs=2, learning_rate=3e-2, random_state=0
        ),
        BackboneFeatures(set_encoder()),
    ],
    expected_failed_checks=expected_failures,
)
def test_scikit_learn_estimator_checks(estimator, check, monkeypatch):
    # Keras pickles a model by saving it: a zip whose metadata holds the second it was saved
    # and whose entries hold the time in two-second steps. The checks that hash the
    # `backbone` parameter before and after fit then differ by the clock alone whenever the
    # two hashes straddle a step (seen in CI). Both clocks are stopped; the weights and the
    # config still make the hash.
    import zipfile

    from keras.src.saving import saving_lib

    # A check expected to fail is reported as xfail without running: a non-strict xfail
    # passes whatever the check does, so running it (seconds of fits) checks nothing.
    name = getattr(check, "func", check).__name__
    if name in expected_failures(estimator):
        pytest.xfail(expected_failures(estimator)[name])
    clock = types.SimpleNamespace(now=lambda: datetime.datetime(2026, 1, 1))
    monkeypatch.setattr(saving_lib, "datetime", types.SimpleNamespace(datetime=clock))
    stopped = time.mktime((2026, 1, 1, 0, 0, 0, 0, 0, -1))
    monkeypatch.setattr(
        zipfile, "time", types.SimpleNamespace(time=lambda: stopped, localtime=time.localtime)
    )
    check(estimator)


# --- A "pretrained" backbone for digits -------------------------------------------------


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits(return_X_y=True)
    return train_test_split(x.astype("float32") / 16, y, test_size=0.3, random_state=0)


@pytest.fixture(scope="module")
def pretrained(digits):
    """A small network pretrained on digits 0-4; its hidden layer is the backbone."""
    x, _, y, _ = digits
    keras.utils.set_random_seed(0)
    inputs = keras.Input((64,), name="pixels")
    hidden = keras.layers.Dense(32, activation="relu", name="features")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(5, activation="softmax")(hidden))
    model.compile("adam", "sparse_categorical_crossentropy")
    seen = y < 5
    model.fit(x[seen], y[seen], epochs=40, verbose=0)
    return Backbone.from_model(model, output_layer="features")


NAMES = np.array(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])


def test_string_labels_pipeline_and_pretrained_starting_point(digits, pretrained):
    x_train, x_test, y_train, y_test = digits
    before = [w.copy() for w in pretrained.model.get_weights()]
    clf = FineTunerClassifier(
        pretrained, freeze=FreezePolicy.none(), head_epochs=20, epochs=5, random_state=0
    )
    model = make_pipeline(StandardScaler(), clf).fit(x_train, NAMES[y_train])
    assert list(clf.classes_) == sorted(NAMES)
    predicted = model.predict(x_test)
    assert predicted.dtype.kind == "U" and set(predicted) <= set(NAMES)
    assert model.score(x_test, NAMES[y_test]) > 0.85
    probabilities = model.predict_proba(x_test[:5])
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    # The backbone was fine-tuned (freeze=none), but as a copy: the pretrained weights
    # the user handed in are intact, and a second fit starts from them again.
    for old, new in zip(before, pretrained.model.get_weights(), strict=True):
        np.testing.assert_array_equal(old, new)
    assert not np.array_equal(
        clf.tuner_.backbone.model.get_weights()[0], pretrained.model.get_weights()[0]
    )
    again = clone(clf).fit(StandardScaler().fit_transform(x_train), NAMES[y_train])
    np.testing.assert_allclose(
        again.predict_proba(StandardScaler().fit(x_train).transform(x_test[:20])),
        clf.predict_proba(StandardScaler().fit(x_train).transform(x_test[:20])),
        atol=1e-5,
    )


def test_cross_validation_and_grid_search(digits, pretrained):
    x, _, y, _ = digits
    x, y = x[:300], y[:300]
    head_only = {"freeze": FreezePolicy.all(), "random_state": 0}
    scores = cross_val_score(
        FineTunerClassifier(pretrained, head_epochs=30, learning_rate=1e-2, **head_only),
        x,
        y,
        cv=3,
    )
    assert scores.shape == (3,) and scores.min() > 0.7
    search = GridSearchCV(
        FineTunerClassifier(pretrained, head_epochs=15, **head_only),
        {"learning_rate": [1e-4, 1e-2]},
        cv=2,
    ).fit(x, y)
    assert search.best_params_ == {"learning_rate": 1e-2}  # 15 epochs at 1e-4 learn little
    assert search.best_estimator_.score(x, y) > 0.8


def test_regressor_multi_output_and_score():
    rng = np.random.default_rng(0)
    x = rng.random((200, 6)).astype("float32")
    # Targets the set encoder can express: it sees the features as a set.
    y = np.stack([x.sum(axis=1), (x**2).mean(axis=1)], axis=1)
    reg = FineTunerRegressor(  # both stages, shapes only: a short fine-tuning stage
        set_encoder(),
        freeze=FreezePolicy.none(),
        head_epochs=60,
        epochs=2,
        learning_rate=3e-2,
        random_state=0,
    )
    assert reg.fit(x, y).predict(x).shape == (200, 2)
    single = FineTunerRegressor(
        set_encoder(), freeze=FreezePolicy.all(), head_epochs=60, learning_rate=3e-2, random_state=0
    )
    assert single.fit(x, y[:, 0]).predict(x).shape == (200,)
    assert single.score(x, y[:, 0]) > 0.9


def test_backbone_features_feed_a_classic_model(digits, pretrained):
    x_train, x_test, y_train, y_test = digits
    features = BackboneFeatures(pretrained)
    pipeline = make_pipeline(features, LogisticRegression(max_iter=2000)).fit(x_train, y_train)
    assert features.n_features_out_ == 32
    assert features.get_feature_names_out()[0] == "backbonefeatures0"
    np.testing.assert_allclose(
        features.transform(x_test[:4]),
        keras.Model(pretrained.model.input, pretrained.model.output).predict(x_test[:4], verbose=0),
        rtol=1e-5,
    )
    assert pipeline.score(x_test, y_test) > 0.9


def test_fitted_estimators_pickle_and_predict_the_same(digits, pretrained):
    x_train, x_test, y_train, _ = digits
    clf = FineTunerClassifier(pretrained, head_epochs=3, epochs=1, random_state=0)
    clf.fit(x_train, y_train)
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_allclose(restored.predict_proba(x_test), clf.predict_proba(x_test))
    assert not hasattr(restored, "tuner_")  # documented: model_ travels, the FineTuner not


def test_estimator_errors_name_the_argument():
    x = np.random.default_rng(0).random((10, 4)).astype("float32")
    with pytest.raises(ValueError, match=r"'backbone' parameter of FineTunerClassifier.*Got None"):
        FineTunerClassifier().fit(x, np.arange(10) % 2)
    # A NumPy generator cannot seed TensorFlow: an int or None (InvalidParameterError is
    # both a ValueError and a TypeError).
    with pytest.raises(TypeError, match=r"'random_state' parameter.*an int .* or None"):
        FineTunerClassifier(set_encoder(), random_state=np.random.default_rng(0)).fit(
            x, np.arange(10) % 2
        )
    with pytest.raises(ValueError, match=r"'pooling' parameter.* among \{.*'flatten'.*\}"):
        BackboneFeatures(set_encoder(), pooling="none").fit(x)
    with pytest.raises(ValueError, match=r"`y`.*multilabel-indicator.*Head.multilabel"):
        FineTunerClassifier(set_encoder()).fit(x, np.eye(10)[:, :3].astype(int))


# --- Checked by scikit-learn: `_parameter_constraints` and `validate_data` ---------------


@pytest.mark.parametrize(
    "estimator, name, value",
    [
        (FineTunerClassifier, "epochs", -1),
        (FineTunerClassifier, "epochs", True),  # a bool is not a number of epochs
        (FineTunerClassifier, "head_epochs", "fast"),
        (FineTunerClassifier, "learning_rate", 0.0),
        (FineTunerClassifier, "dropout", 1.0),
        (FineTunerClassifier, "freeze", "all"),
        (FineTunerClassifier, "pooling", "mean"),
        (FineTunerRegressor, "batch_size", 0),
        (FineTunerRegressor, "random_state", -1),
        (FineTunerClassifier, "random_state", 2**70),  # NumPy and Python seeds are 32-bit
        (FineTunerRegressor, "scale", None),
        (BackboneFeatures, "batch_size", 2.5),
        (BackboneFeatures, "backbone", 3),
    ],
)
def test_invalid_parameters_raise_scikit_learns_error_at_fit(estimator, name, value):
    from sklearn.utils._param_validation import InvalidParameterError

    unfit = estimator(set_encoder())
    unfit.set_params(**{name: value})  # stored verbatim: nothing is checked before fit
    x = np.random.default_rng(0).random((6, 3))
    with pytest.raises(
        InvalidParameterError,
        match=rf"The '{name}' parameter of {estimator.__name__} must be .* Got .* instead",
    ):
        unfit.fit(x, np.arange(6) % 2)
    assert not hasattr(unfit, "n_features_in_")  # refused before the data was looked at


@pytest.mark.parametrize("estimator", [FineTunerClassifier, FineTunerRegressor, BackboneFeatures])
def test_every_parameter_has_a_constraint_checked_at_fit(estimator):
    # scikit-learn's own check (its common tests run it; parametrize_with_checks does not):
    # one constraint per parameter, and a value of a wrong type or out of range refused.
    from sklearn.utils.estimator_checks import check_param_validation

    check_param_validation(estimator.__name__, estimator(set_encoder()))


def test_features_are_counted_and_named_as_scikit_learn_does():
    x = np.random.default_rng(0).random((12, 4)).astype("float32")
    clf = FineTunerClassifier(set_encoder(), head_epochs=1, epochs=1, random_state=0)
    clf.fit(x, np.arange(12) % 2)
    assert clf.n_features_in_ == 4 and not hasattr(clf, "feature_names_in_")
    # The set encoder takes any width: only the recorded n_features_in_ refuses 3 columns.
    with pytest.raises(ValueError, match=r"X has 3 features, but \w+ is expecting 4 features"):
        clf.predict(x[:, :3])
    features = BackboneFeatures(set_encoder()).fit(x)
    with pytest.raises(ValueError, match=r"X has 5 features, but BackboneFeatures is expecting 4"):
        features.transform(np.zeros((2, 5)))
    # Images: N-D arrays pass, and n_features_in_ is for 2-D X only.
    inputs = keras.Input((4, 4, 1))
    conv = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    images = BackboneFeatures(conv).fit(np.zeros((3, 4, 4, 1)))
    assert not hasattr(images, "n_features_in_")
    assert images.transform(np.ones((2, 4, 4, 1))).shape == (2, 2)


def test_feature_names_of_a_dataframe_are_kept():
    pd = pytest.importorskip("pandas")
    x = pd.DataFrame(np.random.default_rng(0).random((12, 3)), columns=["a", "b", "c"])
    reg = FineTunerRegressor(set_encoder(), head_epochs=1, epochs=1, random_state=0)
    reg.fit(x, x["a"] * 2)
    assert list(reg.feature_names_in_) == ["a", "b", "c"] and reg.n_features_in_ == 3
    assert reg.predict(x).shape == (12,)
    with pytest.raises(ValueError, match=r"feature names should match"):
        reg.predict(x[["c", "b", "a"]])
    with pytest.warns(UserWarning, match=r"X does not have valid feature names"):
        reg.predict(x.to_numpy())


def test_data_rules_scikit_learns_and_the_backbones():
    """What `validate` lets through beyond scikit-learn's defaults (images, text, object
    arrays), and that scikit-learn's own rules refuse the rest with its messages."""
    import scipy.sparse
    from sklearn.base import BaseEstimator

    from finetune_tf._sklearn_data import validate

    def check(X, reset=True):
        return validate(BaseEstimator(), X, reset=reset)[0]

    assert check(np.zeros((2, 5, 5, 3), dtype="uint8")).dtype == np.float32  # images
    assert check(["a film", "a book"]).dtype.kind == "U"  # text, 1-D
    assert check(np.array(["a", b"b"], dtype=object)).dtype.kind == "U"
    assert check(np.array([[1, 2.5], [True, 0]], dtype=object)).dtype == np.float32
    assert check(np.array([["x", "y"]], dtype=object)).dtype.kind == "U"
    with pytest.raises(TypeError, match=r"argument must be a string.* number"):
        check(np.array([[1.0, {"a": 1}]], dtype=object))
    with pytest.raises(ValueError, match=r"Input X contains infinity"):
        check(np.array([[1.0, np.inf]], dtype=object))
    with pytest.raises(ValueError, match=r"Expected 2D array, got 1D array"):
        check(np.arange(3.0))
    with pytest.raises(ValueError, match=r"Input X contains NaN"):
        check(np.array([[np.nan, 1.0]]))
    with pytest.raises(TypeError, match=r"Sparse data was passed for X"):
        check(scipy.sparse.csr_matrix(np.eye(3)))
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        check(np.zeros((3, 0)))


def test_exported_names():
    for name in ("FineTunerClassifier", "FineTunerRegressor", "BackboneFeatures"):
        assert name in finetune_tf.__all__


def test_only_the_chief_worker_exports_at_the_path(tmp_path, monkeypatch):
    """As FineTuner.export: under several workers the others write a throwaway copy, so
    they do not race the chief for the same files."""
    import tempfile

    x = np.random.default_rng(0).random((20, 4)).astype("float32")
    clf = FineTunerClassifier(set_encoder(), head_epochs=1, epochs=1, random_state=0)
    clf.fit(x, np.arange(20) % 2)
    monkeypatch.setattr(clf.tuner_.placement, "is_chief", lambda: False)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "worker_tmp"))
    (tmp_path / "worker_tmp").mkdir()
    clf.export(tmp_path / "served")
    assert not (tmp_path / "served").exists()
    monkeypatch.undo()
    clf.export(tmp_path / "served")
    assert (tmp_path / "served" / "saved_model.pb").exists()


def test_a_failed_refit_leaves_the_previous_fit_whole():
    x = np.random.default_rng(0).random((20, 4)).astype("float32")
    clf = FineTunerClassifier(set_encoder(), head_epochs=2, epochs=1, random_state=0)
    clf.fit(x, np.array(["a", "b"])[np.arange(20) % 2])
    before = clf.predict_proba(x)
    clf.set_params(freeze=FreezePolicy.bottom(99))  # more layers than the backbone has
    with pytest.raises(ValueError, match=r"FreezePolicy.bottom\(n\)"):
        clf.fit(x, np.array(["x", "y", "z"])[np.arange(20) % 3])
    assert list(clf.classes_) == ["a", "b"]
    np.testing.assert_allclose(clf.predict_proba(x), before)


# --- The defaults on tabular data ------------------------------------------------------


def small_mlp(features: int, normalisation=None) -> keras.Model:
    """A two-layer MLP backbone; optionally with a Normalization layer of its own."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((features,))
    x = normalisation(inputs) if normalisation is not None else inputs
    x = keras.layers.Dense(16, activation="relu", name="hidden")(x)
    return keras.Model(inputs, keras.layers.Dense(8, activation="relu", name="features")(x))


def test_default_classifier_learns_iris_as_well_as_a_hand_written_head():
    """Issue 15: the defaults scored chance level (0.35) on iris, where a hand-written head
    on the same frozen backbone scored 0.88. The default estimator trains its head to
    convergence, then fine-tunes."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import StratifiedKFold

    X, y = load_iris(return_X_y=True)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    scores = cross_val_score(FineTunerClassifier(small_mlp(4), random_state=0), X, y, cv=folds)
    by_hand = []
    for train, test in folds:  # the hand-written head: Adam 1e-2, 200 epochs
        keras.utils.set_random_seed(0)
        base = small_mlp(4)
        base.trainable = False
        model = keras.Sequential([base, keras.layers.Dense(3, activation="softmax")])
        model.compile(
            keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["acc"]
        )
        # 200 shuffled passes in batches of 32, as `fit(epochs=200)`, but as one Keras
        # epoch: the per-epoch overhead of 200 `fit` epochs cost most of this test.
        passes = tf.data.Dataset.from_tensor_slices((X[train], y[train]))
        passes = passes.shuffle(len(train), seed=0, reshuffle_each_iteration=True)
        model.fit(passes.batch(32).repeat(200), epochs=1, shuffle=False, verbose=0)
        by_hand.append(model.evaluate(X[test], y[test], verbose=0)[1])
    # The bar is never below the hand-written 0.88: the reference's own score moves
    # by a few points with the order of its batches (0.84 in one pass order, 0.89 in another).
    bar = max(np.mean(by_hand), 0.88) - 0.02
    assert scores.mean() >= bar and scores.mean() > 0.8, (scores, by_hand)


def test_default_classifier_standardises_raw_units():
    """Wine's columns are in raw units (proline in the hundreds): into a backbone without
    normalisation, the default standardises them inside the model."""
    from sklearn.datasets import load_wine
    from sklearn.model_selection import StratifiedKFold, cross_validate

    X, y = load_wine(return_X_y=True)
    folds = list(StratifiedKFold(3, shuffle=True, random_state=0).split(X, y))
    quick = {"random_state": 0}  # the defaults
    scaled = cross_validate(
        FineTunerClassifier(small_mlp(13), **quick), X, y, cv=folds, return_estimator=True
    )
    raw = cross_val_score(FineTunerClassifier(small_mlp(13), scale=False, **quick), X, y, cv=folds)
    score = scaled["test_score"].mean()
    assert score > 0.9 and score > raw.mean() + 0.1, (scaled["test_score"], raw)
    # The scaler inside each fitted model holds the statistics of the columns it was fit on.
    for estimator, (train, _) in zip(scaled["estimator"], folds, strict=True):
        scaler = estimator.model_.get_layer("input_scaler")
        np.testing.assert_allclose(np.ravel(scaler.mean), X[train].mean(axis=0), rtol=1e-4)


def test_scale_is_auto_true_or_false_and_travels_with_the_model():
    X = np.random.default_rng(0).normal(loc=100.0, scale=50.0, size=(60, 3))
    y = (X[:, 0] > 100).astype(int)
    quick = {"freeze": FreezePolicy.all(), "head_epochs": 2, "random_state": 0}
    names = lambda clf: [layer.name for layer in clf.model_.layers]  # noqa: E731
    # Raw columns into a backbone without normalisation: standardised inside the model.
    clf = FineTunerClassifier(small_mlp(3), **quick).fit(X, y)
    assert "input_scaler" in names(clf)
    restored = pickle.loads(pickle.dumps(clf))  # the scaler travels with the model
    np.testing.assert_allclose(restored.predict_proba(X), clf.predict_proba(X), rtol=1e-5)
    # Columns on a small scale are left as they are, unless scale=True.
    assert "input_scaler" not in names(FineTunerClassifier(small_mlp(3), **quick).fit(X / 100, y))
    assert "input_scaler" in names(
        FineTunerClassifier(small_mlp(3), scale=True, **quick).fit(X / 100, y)
    )
    # A backbone that normalises its own inputs is left alone, as is scale=False.
    own = keras.layers.Normalization()
    own.adapt(X)
    assert "input_scaler" not in names(FineTunerClassifier(small_mlp(3, own), **quick).fit(X, y))
    assert "input_scaler" not in names(
        FineTunerClassifier(small_mlp(3), scale=False, **quick).fit(X, y)
    )
    with pytest.raises(ValueError, match=r"'scale' parameter .* among \{'auto'\} or .*'bool'"):
        FineTunerClassifier(small_mlp(3), scale="yes", **quick).fit(X, y)
    # scale=True in front of the backbone's own preprocessing, which stays.
    backbone = Backbone(small_mlp(3), preprocessing=keras.layers.Rescaling(2.0, name="twice"))
    clf = FineTunerClassifier(backbone, scale=np.True_, **quick).fit(X, y)
    preprocessing = clf.model_.get_layer("preprocessing")
    assert [layer.name for layer in preprocessing.layers] == ["input_scaler", "twice"]


def test_scale_true_refuses_images():
    inputs = keras.Input((4, 4, 1))
    backbone = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    with pytest.raises(ValueError, match=r"`scale=True` standardises the columns.*\(6, 4, 4, 1\)"):
        FineTunerClassifier(backbone, scale=True).fit(np.zeros((6, 4, 4, 1)), np.arange(6) % 2)


def test_default_estimator_fine_tunes_the_backbone_and_freeze_all_does_not(digits, pretrained):
    x, _, y, _ = digits
    x, y = x[:512], y[:512]  # 16 steps an epoch: "auto" gives few epochs of many steps
    before = pretrained.model.get_layer("features").get_weights()[0]
    tuned = FineTunerClassifier(pretrained, epochs=2, random_state=0).fit(x, y)
    assert tuned.history_["stage"][-1] == "fine_tune"
    assert not np.allclose(
        tuned.tuner_.backbone.model.get_layer("features").get_weights()[0], before
    )
    frozen = FineTunerClassifier(
        pretrained, freeze=FreezePolicy.all(batchnorm="freeze"), random_state=0
    ).fit(x, y)
    assert len(frozen.history_["loss"]) == 32  # the head stage alone: 500 steps, 16 an epoch
    np.testing.assert_array_equal(
        frozen.tuner_.backbone.model.get_layer("features").get_weights()[0], before
    )
