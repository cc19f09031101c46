"""scikit-learn estimators: `FineTunerClassifier`, `FineTunerRegressor`, `BackboneFeatures`.

They follow the scikit-learn contract (parameters stored verbatim by
`__init__`, `get_params`/`set_params`, `clone`, fitted attributes ending in
`_`), so they work in `Pipeline`, `cross_val_score` and `GridSearchCV`. Each
`fit` starts from the backbone's pretrained weights: the backbone is copied,
never trained in place, so folds and grid points do not leak into each other
(Keras' own scikit-learn wrapper rebuilds its model from scratch instead).

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

import numbers
import warnings

import keras
import numpy as np
import scipy.sparse
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin, TransformerMixin
from sklearn.exceptions import DataConversionWarning
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted

from finetune_tf.finetuner import FineTuner
from finetune_tf.model.backbone import Backbone
from finetune_tf.model.freeze import FreezePolicy
from finetune_tf.model.head import Head
from finetune_tf.model.tuned_model import as_tensor_if_text
from finetune_tf.outputs.export import export_model
from finetune_tf.training.fit_args import FitArgs
from finetune_tf.training.recipes import head_stage_epochs

__all__ = ["BackboneFeatures", "FineTunerClassifier", "FineTunerRegressor"]


def _pristine_backbone(backbone) -> Backbone:
    """A Backbone whose training cannot touch the caller's weights."""
    loaded = Backbone.load(backbone)
    if isinstance(backbone, (Backbone, keras.Model)):
        return loaded.copy()  # the caller's object: train a copy
    return loaded  # loaded afresh from a name, a file or a handle


_NORMALISING_LAYERS = (
    keras.layers.Normalization,
    keras.layers.Rescaling,
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
)


LARGE_SCALE = 10.0  # columns whose mean or spread exceeds this are "raw units"


def _input_scaler(scale, backbone: Backbone, X: np.ndarray):
    """The `Normalization` layer `scale` asks for on this `X`, or None.

    `"auto"` standardises numeric tabular inputs (2-D `X`) whose columns are
    in large raw units (some column's mean or standard deviation above 10:
    prices, counts, wine's proline in the hundreds) when the backbone has no
    normalisation of its own (no preprocessing, and no Normalization,
    Rescaling or BatchNormalization/LayerNormalization layer before its first
    layer with weights). Columns already on a small scale (centimetres,
    pixels in [0, 1], standardised data) are left as they are: a backbone
    pretrained on them expects them so.
    """
    if isinstance(scale, np.bool_):
        scale = bool(scale)
    if scale is not True and scale is not False and scale != "auto":
        raise ValueError(f'`scale` must be "auto", True or False. Received: scale={scale!r}.')
    tabular = X.ndim == 2 and X.dtype.kind in "biuf"
    if scale is True and not tabular:
        raise ValueError(
            "`scale=True` standardises the columns of tabular data, but `X` has shape "
            f'{X.shape} and dtype {X.dtype}. Pass scale=False (or "auto") for images or '
            "text, and put their preprocessing in the backbone."
        )
    if scale == "auto":
        if not tabular or _normalises(backbone):
            return None
        columns = X.astype("float64")
        if max(np.abs(columns.mean(axis=0)).max(), columns.std(axis=0).max()) <= LARGE_SCALE:
            return None
    elif scale is False:
        return None
    scaler = keras.layers.Normalization(name="input_scaler")
    scaler.adapt(X.astype("float32"))
    return scaler


def _normalises(backbone: Backbone) -> bool:
    """Whether the backbone scales its own inputs (see `_input_scaler`)."""
    if backbone.preprocessing is not None:
        return True
    for layer in backbone.model._flatten_layers(include_self=False):
        if isinstance(layer, _NORMALISING_LAYERS):
            return True
        if layer.weights and not isinstance(layer, keras.Model):
            return False
    return False


def _check_x(estimator, X, *, reset: bool):
    """`X` as an array (numbers, or strings for text backbones), checked as scikit-learn
    checks it; records `n_features_in_` (2-D inputs) on `fit`, compares it afterwards."""
    name = type(estimator).__name__
    if X is None:
        raise ValueError(f"`X` is None; {name} needs an array of shape (n_samples, ...).")
    if scipy.sparse.issparse(X):
        raise TypeError(
            f"{name} got sparse `X`, but sparse input is not supported: the backbone takes "
            "dense arrays. Convert it with X.toarray()."
        )
    if hasattr(X, "iloc"):  # pandas
        X = X.to_numpy()
    X = np.asarray(X)
    if X.dtype.kind == "O":
        X = _from_objects(X)
    if X.dtype.kind == "c":
        raise ValueError(
            "Complex data not supported: `X` holds complex numbers and the backbone takes real "
            "values. Pass X.real or np.abs(X)."
        )
    if X.ndim == 0 or len(X) == 0:
        raise ValueError(
            f"`X` must hold at least one example; received an array of shape {X.shape}. "
            f"Pass {name} an array of shape (n_samples, ...)."
        )
    if X.ndim == 1 and X.dtype.kind in "biuf":
        raise ValueError(
            f"`X` is 1-D (shape {X.shape}), expected a 2-D array of shape (n_samples, "
            "n_features) or an array of images or strings. Reshape your data either using "
            "X.reshape(-1, 1) if it has a single feature or X.reshape(1, -1) if it contains "
            "a single sample."
        )
    if X.ndim == 2 and X.shape[1] == 0:
        raise ValueError(
            f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is "
            f"required by {name}."
        )
    if X.dtype.kind in "biu":
        X = X.astype("float32")
    if X.dtype.kind == "f" and not np.isfinite(X).all():
        raise ValueError(
            f"Input `X` contains NaN or infinity ({int((~np.isfinite(X)).sum())} values); "
            f"{name} needs finite inputs. Impute or drop them first, e.g. with "
            "sklearn.impute.SimpleImputer."
        )
    if X.ndim == 2:
        if reset:
            estimator.n_features_in_ = X.shape[1]
        elif hasattr(estimator, "n_features_in_") and X.shape[1] != estimator.n_features_in_:
            raise ValueError(
                f"X has {X.shape[1]} features, but {name} is expecting "
                f"{estimator.n_features_in_} features as input."
            )
    return X


def _from_objects(X: np.ndarray) -> np.ndarray:
    """An object array as numbers, or as strings when every item is one; else a TypeError."""
    try:
        return X.astype("float32")
    except (TypeError, ValueError) as error:
        if all(isinstance(item, (str, bytes)) for item in X.ravel()):
            return X.astype(str)
        raise TypeError(
            f"`X` holds objects that are neither numbers nor strings ({error}): float() "
            "argument must be a string or a real number. Pass numbers, images or strings."
        ) from None


def _check_y(estimator, X, y) -> np.ndarray:
    if y is None:
        raise ValueError(
            f"{type(estimator).__name__} requires y to be passed, but the target y is None. "
            "Pass the targets: fit(X, y)."
        )
    y = np.asarray(y)
    if len(y) != len(X):
        raise ValueError(
            f"`X` has {len(X)} examples but `y` has {len(y)} targets. Pass one target per example."
        )
    return y


class _FineTunerEstimator(BaseEstimator):
    """What the classifier and the regressor share: building and training a FineTuner."""

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
        if self.backbone is None:
            raise ValueError(
                f"`{type(self).__name__}(backbone)` is required: a keras.Model, a Backbone, "
                "a keras.applications name, a model file or a Hub handle. Received: "
                "backbone=None."
            )
        if self.random_state is not None and not isinstance(self.random_state, numbers.Integral):
            raise TypeError(
                f"`random_state` must be an int or None (NumPy generators cannot seed "
                f"TensorFlow). Received: random_state={self.random_state!r}."
            )
        backbone = _pristine_backbone(self.backbone)
        scaler = _input_scaler(self.scale, backbone, X)
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
        return export_model(self.model_, self.head_, path, **kwargs)

    def _predict_raw(self, X):
        check_is_fitted(self, "model_")
        X = as_tensor_if_text(_check_x(self, X, reset=False))
        return self.model_.predict(X, batch_size=self.batch_size, verbose=0)

    def __getstate__(self):
        # A FineTuner holds TensorFlow objects that do not pickle; the model does
        # (Keras saves it to .keras bytes), and it is all that predict needs.
        state = dict(self.__dict__)
        state.pop("tuner_", None)
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
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

    def fit(self, X, y, **fit_params) -> FineTunerClassifier:
        """Fine-tunes on `X`, `y` from the pretrained weights; returns `self`."""
        X = _check_x(self, X, reset=True)
        y = _check_y(self, X, y)
        if y.ndim == 2 and y.shape[1] == 1:
            warnings.warn(
                "A column-vector y was passed when a 1d array was expected. Please change "
                "the shape of y to (n_samples,), for example using ravel().",
                DataConversionWarning,
                stacklevel=2,
            )
            y = y.ravel()
        check_classification_targets(y)
        if type_of_target(y) not in ("binary", "multiclass"):
            raise ValueError(
                f"`y` must hold one class label per example; received {type_of_target(y)} "
                "targets. For several labels per example use FineTuner with "
                "Head.multilabel."
            )
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
    `model_`, `tuner_`, `history_`, `n_features_in_` (2-D inputs).

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

    def fit(self, X, y, **fit_params) -> FineTunerRegressor:
        """Fine-tunes on `X`, `y` from the pretrained weights; returns `self`."""
        X = _check_x(self, X, reset=True)
        y = _check_y(self, X, y)
        try:
            y = y.astype("float32") if y.dtype.kind in "biufO" else None
        except (TypeError, ValueError):
            y = None
        if y is None:
            raise ValueError(
                "Unknown label type: `y` holds values that are not numbers; a regressor needs "
                "numbers. Convert them first, e.g. y.astype('float32')."
            )
        if y.ndim not in (1, 2):
            raise ValueError(
                f"`y` must be 1-D (one target) or 2-D (several); received shape {y.shape}."
            )
        if not np.isfinite(y).all():
            raise ValueError("`y` contains NaN or infinity; impute or drop those examples.")
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

    def fit(self, X, y=None) -> BackboneFeatures:
        """Loads the backbone and builds the embedding model; returns `self`."""
        if self.pooling not in ("avg", "max", "flatten"):
            raise ValueError(
                "`pooling` must be 'avg', 'max' or 'flatten' (one vector per example). "
                f"Received: pooling={self.pooling!r}."
            )
        X = _check_x(self, X, reset=True)
        if self.backbone is None:
            raise ValueError(
                "`BackboneFeatures(backbone)` is required: a keras.Model, a Backbone, a "
                "keras.applications name, a model file or a Hub handle. Received: backbone=None."
            )
        tuner = FineTuner(
            _pristine_backbone(self.backbone),  # the freeze policy must not touch the caller's
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
        X = _check_x(self, X, reset=False)
        features = self.model_.predict(as_tensor_if_text(X), batch_size=self.batch_size, verbose=0)
        return features.reshape(len(features), -1)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]  # TensorFlow computes in float32
        return tags

    def get_feature_names_out(self, input_features=None) -> np.ndarray:
        """`backbonefeatures0`, `backbonefeatures1`, ... (one name per embedding dimension)."""
        check_is_fitted(self, "model_")
        return np.array([f"backbonefeatures{i}" for i in range(self.n_features_out_)], dtype=object)
