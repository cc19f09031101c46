"""scikit-learn estimators: `FineTunerClassifier`, `FineTunerRegressor`, `BackboneFeatures`.

They follow the scikit-learn contract (parameters stored verbatim by
`__init__`, `get_params`/`set_params`, `clone`, fitted attributes ending in
`_`), so they work in `Pipeline`, `cross_val_score` and `GridSearchCV`. Each
`fit` starts from the backbone's pretrained weights: the backbone is copied,
never trained in place, so folds and grid points do not leak into each other
(Keras' own scikit-learn wrapper rebuilds its model from scratch instead).
Arguments are checked when `fit` starts, against each class's
`_parameter_constraints`, and data by scikit-learn's `validate_data`
(`finetune_tf._sklearn_data`), so errors are scikit-learn's own.

With `finetune_tf` itself, this module is the public contract (0.2 had it at
`finetune_tf.estimators`, which still imports).

Examples:
    >>> import keras, numpy as np
    >>> from finetune_tf.sklearn import FineTunerClassifier
    >>> inputs = keras.Input((4,))
    >>> backbone = keras.Model(inputs, keras.layers.Dense(8, activation="relu")(inputs))
    >>> clf = FineTunerClassifier(backbone, head_epochs=2, epochs=1, random_state=0)
    >>> clf.fit(np.random.rand(20, 4), np.arange(20) % 2).classes_.tolist()
    [0, 1]
"""

from __future__ import annotations

import keras
import numpy as np
from sklearn.base import (
    BaseEstimator,
    ClassifierMixin,
    RegressorMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils._param_validation import StrOptions
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, column_or_1d

from finetune_tf._sklearn_data import input_scaler, validate
from finetune_tf._sklearn_params import ESTIMATOR_CONSTRAINTS, SHARED_CONSTRAINTS, pristine_backbone
from finetune_tf.finetuner import FineTuner
from finetune_tf.model.backbone import Backbone
from finetune_tf.model.freeze import FreezePolicy
from finetune_tf.model.head import Head
from finetune_tf.model.tuned_model import as_tensor_if_text
from finetune_tf.outputs.export import export_model
from finetune_tf.training.fit_args import FitArgs
from finetune_tf.training.recipes import head_stage_epochs

__all__ = ["BackboneFeatures", "FineTunerClassifier", "FineTunerRegressor"]


class _FineTunerEstimator(BaseEstimator):
    """What the classifier and the regressor share: building and training a FineTuner."""

    _parameter_constraints: dict = dict(ESTIMATOR_CONSTRAINTS)

    def __init__(
        self,
        backbone=None,
        *,
        freeze: FreezePolicy | None = None,
        input_shape: tuple | None = None,
        pooling: str = "avg",
        hidden_units: tuple = (),
        dropout: float = 0.0,
        head_epochs: int | str = "auto",
        epochs: int | str = "auto",
        learning_rate: float = 3e-3,
        fine_tune_learning_rate: float = 3e-4,
        batch_size: int = 32,
        scale: bool | str = "auto",
        random_state: int | None = None,
        verbose: int = 0,
    ):
        self.backbone = backbone
        self.freeze = freeze
        self.input_shape = input_shape
        self.pooling = pooling
        self.hidden_units = hidden_units
        self.dropout = dropout
        self.head_epochs = head_epochs
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.fine_tune_learning_rate = fine_tune_learning_rate
        self.batch_size = batch_size
        self.scale = scale
        self.random_state = random_state
        self.verbose = verbose

    def _head_options(self) -> dict:
        return {
            "pooling": self.pooling,
            "hidden_units": self.hidden_units,
            "dropout": self.dropout,
        }

    def _train(self, X, y, head: Head, fit_params: dict, fitted: dict):
        backbone = pristine_backbone(self.backbone)
        scaler = input_scaler(self.scale, backbone, X)
        if scaler is not None:
            if backbone.preprocessing is not None:  # scale=True: standardise, then theirs
                scaler = keras.Sequential([scaler, backbone.preprocessing], name="preprocessing")
            backbone = Backbone(backbone.model, preprocessing=scaler, source=backbone.source)
        tuner = FineTuner(
            backbone,
            head,
            freeze=self.freeze,
            input_shape=self.input_shape,
            seed=self.random_state,
        )
        fit_params = {"batch_size": self.batch_size, "verbose": self.verbose, **fit_params}
        if self.freeze is not None and self.freeze.kind == "all":
            # Nothing of the backbone trains: the head stage is the whole recipe.
            tuner.compile(optimizer="adam", learning_rate=self.learning_rate)
            epochs = head_stage_epochs(self.head_epochs, X, FitArgs(fit_params))
            history = tuner.fit(X, y, epochs=epochs, **fit_params)
        else:
            history = tuner.fine_tune(
                X,
                y,
                head_epochs=self.head_epochs,
                epochs=self.epochs,
                learning_rate=self.learning_rate,
                fine_tune_learning_rate=self.fine_tune_learning_rate,
                **fit_params,
            )
        # Fitted attributes only once training succeeded: a failed fit leaves a previous
        # fit whole, never half replaced.
        for name, value in fitted.items():
            setattr(self, name, value)
        self.tuner_, self.model_, self.head_ = tuner, tuner.model, head
        self.history_ = dict(history.history)
        return self

    def export(self, path, **kwargs) -> str:
        """Exports the fitted model like `FineTuner.export` (SavedModel or TFLite); a
        classifier's `classes_` travel as the class names. Returns `path`."""
        check_is_fitted(self, "model_")
        if hasattr(self, "classes_"):
            kwargs.setdefault("class_names", [str(c) for c in self.classes_])
        # Under several workers only the chief writes at `path` (as FineTuner.export).
        tuner = getattr(self, "tuner_", None)  # not after unpickling: then one process
        chief = tuner.placement.is_chief() if tuner is not None else True
        return export_model(self.model_, self.head_, path, chief=chief, **kwargs)

    def _predict_raw(self, X):
        check_is_fitted(self, "model_")
        X, _ = validate(self, X, reset=False)
        return self.model_.predict(as_tensor_if_text(X), batch_size=self.batch_size, verbose=0)

    def __getstate__(self):
        # A FineTuner holds TensorFlow objects that do not pickle; the model does
        # (Keras saves it to .keras bytes), and it is all that predict needs.
        state = dict(self.__dict__)
        state.pop("tuner_", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images and sequences: N-D X
        tags.non_deterministic = self.random_state is None
        return tags


class FineTunerClassifier(ClassifierMixin, _FineTunerEstimator):
    """A scikit-learn classifier that fine-tunes a pretrained backbone.

    Labels may be anything scikit-learn accepts (ints, strings, ...);
    `classes_` holds them in sorted order and `predict` returns them. `fit`
    runs `FineTuner.fine_tune` with its defaults: the new head trained to
    convergence on the frozen backbone, then the whole backbone fine-tuned
    gently (or the layers of your `freeze` policy). `freeze=FreezePolicy.all()`
    trains the head alone: much faster on a large backbone (its features are
    computed once and cached), as good when the pretraining task was close.

    Args:
        backbone: what `Backbone.load` takes: a `keras.Model`, a `Backbone`,
            a `keras.applications` name, a `.keras`/`.h5` file, a SavedModel
            directory or a Hub handle. Copied (or loaded afresh) on every
            `fit`, so each fit starts from the pretrained weights.
        freeze: `FreezePolicy` or None. Which backbone layers fine-tune after
            the head stage. None: the whole backbone (BatchNorm in inference
            mode); `FreezePolicy.all()`: none, the head stage is the whole
            fit. Defaults to None.
        input_shape: tuple, optional. The shape of one example when it
            differs from the backbone's (images are resized inside the model).
        pooling, hidden_units, dropout: the head's (see `Head`).
        head_epochs: int or `"auto"`. Epochs of the head stage (see
            `FineTuner.fine_tune`). Defaults to `"auto"`.
        epochs: int or `"auto"`. Epochs of the fine-tuning stage (see
            `FineTuner.fine_tune`). Defaults to `"auto"`.
        learning_rate: float. The head stage's rate. Defaults to 3e-3.
        fine_tune_learning_rate: float. The fine-tuning stage's rate.
            Defaults to 3e-4.
        batch_size: int. Defaults to 32.
        scale: `"auto"`, True or False. Standardise the columns of tabular
            `X` inside the model (a `keras.layers.Normalization` named
            `"input_scaler"`, adapted to the training data, saved with the
            model). `"auto"` does so when the backbone has no normalisation
            of its own and some column is in large raw units (mean or
            standard deviation above 10); True always for 2-D numeric `X`.
            Defaults to `"auto"`.
        random_state: int, optional. Seeds the head's initial weights and the
            shuffling, so two fits give the same model.
        verbose: int. Keras' verbosity. Defaults to 0.

    Attributes:
        classes_: the class labels.
        tuner_: the fitted `FineTuner`.
        history_: dict. The Keras training history.
        n_features_in_: the number of features, for 2-D inputs.
        feature_names_in_: the column names, when `X` is a pandas DataFrame.

    `fit` also takes Keras `fit` arguments (`validation_data`, `callbacks`,
    `sample_weight`, ...).

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import FineTunerClassifier
        >>> inputs = keras.Input((4,))
        >>> backbone = keras.Model(inputs, keras.layers.Dense(8, activation="relu")(inputs))
        >>> X = np.random.default_rng(0).random((40, 4))
        >>> y = np.where(X[:, 0] > 0.5, "big", "small")
        >>> clf = FineTunerClassifier(backbone, epochs=2, random_state=0).fit(X, y)
        >>> clf.classes_.tolist()
        ['big', 'small']
        >>> clf.predict_proba(X[:2]).shape
        (2, 2)
    """

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, **fit_params) -> FineTunerClassifier:
        """Fine-tunes on `X`, `y` from the pretrained weights; returns `self`."""
        # multi_output: a 2-D y gets to the type_of_target message below.
        X, y = validate(self, X, y, reset=True, multi_output=True)
        check_classification_targets(y)
        if type_of_target(y) not in ("binary", "multiclass"):
            raise ValueError(
                f"`y` must hold one class label per example; received {type_of_target(y)} "
                "targets. For several labels per example use FineTuner with "
                "Head.multilabel."
            )
        y = column_or_1d(y, warn=True)  # a column vector: a DataConversionWarning
        from sklearn.preprocessing import LabelEncoder  # here, not at finetune_tf's import

        encoder = LabelEncoder().fit(y)
        classes = encoder.classes_
        if len(classes) < 2:
            raise ValueError(
                f"`y` holds 1 class only ({classes[0]!r}); a classifier needs "
                "examples of at least 2 classes."
            )
        head = Head.classifier(len(classes), **self._head_options())
        return self._train(X, encoder.transform(y), head, fit_params, {"classes_": classes})

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape `(n_samples, n_classes)`, columns as `classes_`."""
        probabilities = self._predict_raw(X).astype("float64")
        if probabilities.shape[-1] == 1:  # one sigmoid unit: P(classes_[1])
            probabilities = np.concatenate([1.0 - probabilities, probabilities], axis=-1)
        return probabilities

    def predict(self, X) -> np.ndarray:
        """The most probable class of each example, as labels from `classes_`."""
        probabilities = self.predict_proba(X)  # first: it checks that fit has run
        return self.classes_[np.argmax(probabilities, axis=-1)]


class FineTunerRegressor(RegressorMixin, _FineTunerEstimator):
    """A scikit-learn regressor that fine-tunes a pretrained backbone.

    Takes the arguments of `FineTunerClassifier`; `y` may be 1-D (one target)
    or 2-D (several). `score` is R². Fitted attributes: `n_outputs_`,
    `model_`, `tuner_`, `history_`, `n_features_in_` (2-D inputs),
    `feature_names_in_` (DataFrames).

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import FineTunerRegressor
        >>> inputs = keras.Input((3,))
        >>> backbone = keras.Model(inputs, keras.layers.Dense(8)(inputs))
        >>> X = np.random.default_rng(0).random((32, 3))
        >>> reg = FineTunerRegressor(backbone, epochs=2, random_state=0).fit(X, X.sum(axis=1))
        >>> reg.predict(X[:4]).shape
        (4,)
    """

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, **fit_params) -> FineTunerRegressor:
        """Fine-tunes on `X`, `y` from the pretrained weights; returns `self`."""
        X, y = validate(self, X, y, reset=True, multi_output=True, y_numeric=True)
        if y.dtype.kind not in "biuf":  # y_numeric reads object arrays, not strings
            raise ValueError(
                "Unknown label type: `y` holds values that are not numbers; a regressor needs "
                "numbers. Convert them first, e.g. y.astype('float32')."
            )
        y = y.astype("float32")
        outputs = 1 if y.ndim == 1 else y.shape[1]
        head = Head.regressor(outputs, **self._head_options())
        return self._train(X, y, head, fit_params, {"n_outputs_": outputs})

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X) -> np.ndarray:
        """Predictions, shape `(n_samples,)` for one target, else `(n_samples, n_targets)`."""
        predictions = self._predict_raw(X).astype("float64")
        return predictions[:, 0] if self.n_outputs_ == 1 and predictions.ndim == 2 else predictions


class BackboneFeatures(TransformerMixin, BaseEstimator):
    """Frozen-backbone embeddings as a scikit-learn transformer.

    Runs the pretrained backbone (with its preprocessing, and resizing when
    `input_shape` differs) and pools its output to one vector per example,
    for classic scikit-learn models: `make_pipeline(BackboneFeatures(...),
    LogisticRegression())`. Nothing trains; `fit` only loads the backbone.

    Args:
        backbone: what `Backbone.load` takes.
        input_shape: tuple, optional. The shape of one example when it
            differs from the backbone's.
        pooling: str. `"avg"`, `"max"` or `"flatten"` for image or sequence
            features. Defaults to `"avg"`.
        batch_size: int. Defaults to 32.

    Attributes:
        n_features_out_: int. The width of the embeddings.

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import BackboneFeatures
        >>> inputs = keras.Input((8, 8, 1))
        >>> backbone = keras.Model(inputs, keras.layers.Conv2D(5, 3)(inputs))
        >>> BackboneFeatures(backbone).fit_transform(np.zeros((3, 8, 8, 1))).shape
        (3, 5)
    """

    _parameter_constraints: dict = {
        **SHARED_CONSTRAINTS,
        "pooling": [StrOptions({"avg", "max", "flatten"})],  # one vector per example
    }

    def __init__(
        self,
        backbone=None,
        *,
        input_shape: tuple | None = None,
        pooling: str = "avg",
        batch_size: int = 32,
    ):
        self.backbone = backbone
        self.input_shape = input_shape
        self.pooling = pooling
        self.batch_size = batch_size

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None) -> BackboneFeatures:
        """Loads the backbone and builds the embedding model; returns `self`."""
        X, _ = validate(self, X, reset=True)
        tuner = FineTuner(
            pristine_backbone(self.backbone),  # the freeze policy must not touch the caller's
            Head.regressor(pooling=self.pooling),
            input_shape=self.input_shape,
        )
        tuner.assembly.check_inputs(as_tensor_if_text(X), "X", "fit")
        model = tuner.model
        names = [layer.name for layer in model.layers]
        pooled = (
            model.get_layer("pooling").output if "pooling" in names else tuner.assembly.features
        )
        self.model_ = keras.Model(model.input, pooled, name="backbone_features")
        self.n_features_out_ = int(np.prod(pooled.shape[1:]))
        return self

    def transform(self, X) -> np.ndarray:
        """Embeddings of shape `(n_samples, n_features_out_)`."""
        check_is_fitted(self, "model_")
        X, _ = validate(self, X, reset=False)
        features = self.model_.predict(as_tensor_if_text(X), batch_size=self.batch_size, verbose=0)
        return features.reshape(len(features), -1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.three_d_array = True  # images and sequences: N-D X
        tags.transformer_tags.preserves_dtype = ["float32"]  # TensorFlow computes in float32
        return tags

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """`backbonefeatures0`, `backbonefeatures1`, ... (one name per embedding dimension)."""
        check_is_fitted(self, "model_")
        return np.array([f"backbonefeatures{i}" for i in range(self.n_features_out_)], dtype=object)
