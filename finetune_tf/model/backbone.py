"""`Backbone`: a pretrained feature extractor, from wherever it comes.

Sources: a `keras.applications` name, a `.keras` / `.h5` file, a TF
SavedModel directory, a TF Hub handle, or a live `keras.Model`; each can be
cut at a named layer. A backbone knows its input and output shapes, its
ordered (flattened) list of layers, and the preprocessing its weights expect.

`BackboneLayer` is how a backbone sits inside a FineTuner's model: it runs
the backbone in inference mode while BatchNorm statistics must stay fixed.
(Keras 3 propagates the outer `training=True` into a nested model even when
the graph was built with `base_model(x, training=False)`, so the Keras
guide's recipe does not hold inside a functional model; this layer makes it
hold.)
"""

from __future__ import annotations

import copy
import os
import re

import keras
import tensorflow as tf

from finetune_tf._utils import as_str_path, did_you_mean, shape_tuple, short_list
from finetune_tf.model.kinds import single_io_model, warn_if_classifier, with_inputs
from finetune_tf.model.preprocessing import ApplicationPreprocessing
from finetune_tf.outputs.saving import H5_SUFFIXES, KERAS_SUFFIXES, load_keras_file
from finetune_tf.sources.hub import ARCHIVE_SUFFIXES, HubLayer, _is_url

__all__ = ["Backbone", "BackboneLayer", "application_names", "flatten_layers"]


def application_names() -> list[str]:
    """All model constructors in `keras.applications` (e.g. `"ResNet50"`)."""
    return sorted(
        name
        for name in dir(keras.applications)
        if name[:1].isupper() and callable(getattr(keras.applications, name))
    )


def flatten_layers(model: keras.Model) -> list:
    """A model's layers in order, with nested models replaced by their layers.

    A `HubLayer` (SavedModel) is replaced by its variable groups, in order of use.
    """
    layers = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            layers.extend(flatten_layers(layer))
        elif isinstance(layer, HubLayer) and layer.variable_groups:
            layers.extend(layer.variable_groups)
        else:
            layers.append(layer)
    return layers


def _is_tf_keras_model(obj) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith(("tf_keras", "keras.src.engine", "tensorflow.python.keras"))


def _cut(model: keras.Model, output_layer: str | None, source: str) -> keras.Model:
    if output_layer is None:
        return model
    if not isinstance(output_layer, str):
        raise TypeError(
            f"`output_layer` must be a layer name (str). Received: output_layer={output_layer!r}."
        )
    names = [layer.name for layer in model.layers]
    if output_layer not in names:
        raise ValueError(
            f"`output_layer`={output_layer!r} is not a layer of {source}."
            f"{did_you_mean(output_layer, names)} Its top-level layers are: "
            f"{short_list(names[-12:])} (last 12 shown; see model.summary())."
        )
    layer = model.get_layer(output_layer)
    try:
        output = layer.output
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"Cannot cut {source} at `output_layer`={output_layer!r}: {error}. Pick a layer "
            "that is used once in the model's graph."
        ) from error
    return keras.Model(model.inputs, output, name=f"{model.name}_to_{output_layer}")


class Backbone:
    """A pretrained feature extractor for `FineTuner`.

    Build one with a constructor: `from_keras_applications`, `from_file`,
    `from_hub`, `from_model`, or `load`, which picks the right one.

    Weights are shared: every `FineTuner` built on the same `Backbone`
    trains the same variables. Build a new `Backbone` for an independent run.

    Args:
        model: keras.Model. A single-input Keras 3 model.
        preprocessing: `keras.layers.Layer`, str or None. What the
            FineTuner applies to raw inputs before the backbone: a Keras layer
            (e.g. `keras.layers.Rescaling(1 / 255)`), a `keras.applications`
            module name (`"mobilenet_v2"`), or an ImageNet mode (`"tf"`,
            `"torch"`, `"caffe"`). Defaults to `None` (inputs go in as given).
        source: str, optional. A description of where it came from.

    Examples:
        >>> import keras
        >>> from finetune_tf import Backbone
        >>> inputs = keras.Input((16, 16, 3))
        >>> x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
        >>> backbone = Backbone.from_model(keras.Model(inputs, x))
        >>> backbone.input_shape, backbone.output_shape
        ((16, 16, 3), (14, 14, 4))
    """

    def __init__(self, model: keras.Model, *, preprocessing=None, source: str | None = None):
        if _is_tf_keras_model(model):
            raise TypeError(
                "`model` is a tf_keras (Keras 2) model, which cannot enter a Keras 3 model. "
                "Save it with tf.saved_model.save(model, path) and use "
                "Backbone.from_file(path), or save it as .h5 and load that."
            )
        if not isinstance(model, keras.Model):
            raise TypeError(
                "`model` must be a keras.Model (Keras 3). "
                f"Received: model={model!r} of type {type(model).__name__}."
            )
        model = single_io_model(model)
        if isinstance(preprocessing, str):
            preprocessing = ApplicationPreprocessing(preprocessing, name="preprocessing")
        elif preprocessing is not None and not isinstance(preprocessing, keras.layers.Layer):
            raise TypeError(
                "`preprocessing` must be a keras.layers.Layer, a keras.applications module "
                "name, or one of 'tf', 'torch', 'caffe' (a plain function cannot be saved "
                f"in a .keras file). Received: preprocessing={preprocessing!r}."
            )
        self.model = model
        self.preprocessing = preprocessing
        self.source = source or f"model {model.name!r}"

    # --- Properties -------------------------------------------------------

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def input_shape(self) -> tuple:
        """The input shape without the batch axis (None for flexible axes)."""
        return shape_tuple(self.model.inputs[0].shape[1:])

    @property
    def input_dtype(self) -> str:
        return self.model.inputs[0].dtype

    @property
    def output_shape(self) -> tuple:
        """The feature shape without the batch axis."""
        return shape_tuple(self.model.outputs[0].shape[1:])

    @property
    def layers(self) -> list:
        """The ordered layers that `FreezePolicy` counts.

        For a flat model this is exactly `model.layers` (input layer
        included), so `FreezePolicy.bottom(100)` means what
        `base_model.layers[:100]` means in the TensorFlow tutorial. Nested
        models are replaced by their own layers, in order.
        """
        return flatten_layers(self.model)

    def placed(
        self, strategy: tf.distribute.Strategy, dtype_policy: str | None = None, *, exact=False
    ) -> Backbone:
        """This backbone with its variables under `strategy` and layers computing in `dtype_policy`.

        Returns `self` when nothing needs to change (TensorFlow's default
        strategy, or variables already created in `strategy.scope()`, and
        float32); otherwise a copy with the same weights, built inside the
        strategy's scope, since a model trains under the strategy its
        variables were created in. Hub layers keep float32: their graphs are
        fixed. Call it inside `strategy.scope()`. With `exact=True` and no
        `dtype_policy`, layers that compute in a mixed policy (a backbone saved from
        a mixed-precision tuner) are recast to float32 too; by default a model the
        user built under a global mixed policy keeps it.
        """
        in_scope = all(  # Keras variables hold the tf.Variable in `_value`
            strategy.extended.variable_created_in_scope(getattr(v, "_value", v))
            for v in self.model.weights
        )
        # Layers that compute in a mixed policy (a backbone saved from a mixed-precision
        # tuner) go back to float32 when this model is float32.
        mixed = (
            exact
            and dtype_policy is None
            and any(
                getattr(layer, "dtype_policy", None) is not None
                and layer.dtype_policy.name.startswith("mixed_")
                for layer in self.model._flatten_layers(include_self=False)
            )
        )
        if in_scope and dtype_policy is None and not mixed:
            return self
        try:
            return self._copy("float32" if mixed else dtype_policy)
        except ValueError as error:
            raise ValueError(
                f"Backbone {self.name!r} cannot be rebuilt under {type(strategy).__name__} or "
                f"with dtype policy {dtype_policy!r}: {error} Build the backbone model inside "
                "`with strategy.scope():` and pass that strategy, or pass strategy=None and "
                "mixed_precision=None."
            ) from None

    def get_config(self) -> dict:
        """The backbone's architecture and preprocessing (no weights), the Keras way;
        `Backbone.from_config` rebuilds it with fresh weights, as `keras.Model.from_config`.

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone
            >>> inputs = keras.Input((4,))
            >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)))
            >>> Backbone.from_config(backbone.get_config()).output_shape
            (3,)
        """
        serialize = keras.saving.serialize_keras_object
        preprocessing = self.preprocessing
        return {
            "model": serialize(self.model),
            "preprocessing": None if preprocessing is None else serialize(preprocessing),
            "source": self.source,
        }

    @classmethod
    def from_config(cls, config: dict) -> Backbone:
        """The backbone `get_config` describes (Keras' safe mode applies: no Lambda code)."""
        deserialize = keras.saving.deserialize_keras_object
        config = copy.deepcopy(config)  # Keras' deserialization consumes what it reads
        preprocessing = config.get("preprocessing")
        return cls(
            deserialize(config["model"]),
            preprocessing=None if preprocessing is None else deserialize(preprocessing),
            source=config.get("source"),
        )

    def copy(self) -> Backbone:
        """An independent copy: same architecture, preprocessing and weights.

        A `FineTuner` trains its backbone's model in place; train a copy to
        keep the pretrained weights for another run (the scikit-learn
        estimators do so on every `fit`). `copy.deepcopy(backbone)` does the
        same.

        Examples:
            >>> import keras, numpy as np
            >>> from finetune_tf import Backbone
            >>> inputs = keras.Input((4,))
            >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
            >>> twin = backbone.copy()
            >>> twin.model is backbone.model
            False
            >>> bool(np.array_equal(twin.model.get_weights()[0], backbone.model.get_weights()[0]))
            True
        """
        return self._copy(None)

    def __deepcopy__(self, memo) -> Backbone:
        return self.copy()

    def _copy(self, dtype_policy: str | None) -> Backbone:
        try:
            model = keras.models.clone_model(
                self.model, clone_function=lambda layer: _clone_layer(layer, dtype_policy)
            )
        except (TypeError, NotImplementedError) as error:
            # A subclassed model whose get_config does not give its constructor's arguments.
            subclassed = [
                type(layer).__name__
                for layer in self.model._flatten_layers(include_self=False)
                if isinstance(layer, keras.Model)
                and not isinstance(layer, keras.Sequential)
                and not hasattr(layer, "_inputs_struct")
            ]
            what = f"the subclassed model {subclassed[0]}" if subclassed else "a layer"
            raise ValueError(
                f"Backbone {self.name!r} cannot be copied: {what} cannot be rebuilt from its "
                f"config ({type(error).__name__}: {str(error).splitlines()[0][:200]}). A copy "
                "is made for strategies, mixed precision and every scikit-learn fit. Give the "
                "class a get_config() that returns its constructor's arguments (and register "
                "it with keras.saving.register_keras_serializable), or build the model inside "
                "`with strategy.scope():` and pass that strategy."
            ) from None
        model.set_weights(self.model.get_weights())
        for layer in model._flatten_layers(include_self=False):
            # As Keras does after loading a file: an adapted Normalization computes from its
            # statistics (weights) only once finalized; without this the copy normalised with
            # the zeros and ones it was built with. (Other adapted layers keep their state in
            # their config, and finalizing them would reset it from an empty summary.)
            if isinstance(layer, keras.layers.Normalization):
                layer.finalize_state()
        return Backbone(model, preprocessing=self.preprocessing, source=self.source)

    def __repr__(self):
        return (
            f"<Backbone {self.name!r} from {self.source}: input {self.input_shape} -> "
            f"features {self.output_shape}, {len(self.layers)} layers>"
        )

    # --- Constructors -----------------------------------------------------

    @classmethod
    def from_model(
        cls,
        model: keras.Model,
        *,
        output_layer: str | None = None,
        preprocessing=None,
        input_shape: tuple | None = None,
    ) -> Backbone:
        """A backbone from a live Keras 3 model, optionally cut at `output_layer`.

        Sequential, functional (nested too) and subclassed models work. A
        Sequential model needs its input shape (start it with `keras.Input`
        or call `build()`); a subclassed model must have been called once or
        built, or be given `input_shape=` (it is then wrapped in a functional
        model). A model ending in a softmax (a whole classifier) is accepted
        with a warning that names the layer to cut at.

        Args:
            model: keras.Model. The pretrained network.
            output_layer: str, optional. Cut the model at this layer.
            preprocessing: see `Backbone`.
            input_shape: tuple, optional. The input shape of a subclassed
                model, without the batch axis. Defaults to the shape it was
                built with.

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone
            >>> model = keras.Sequential([
            ...     keras.Input((8,)),
            ...     keras.layers.Dense(4, name="hidden"),
            ...     keras.layers.Dense(2, name="top"),
            ... ])
            >>> Backbone.from_model(model, output_layer="hidden").output_shape
            (4,)
        """
        if isinstance(model, keras.Model) and not _is_tf_keras_model(model):
            source = f"model {model.name!r}"
            if input_shape is not None and hasattr(model, "_inputs_struct"):
                raise ValueError(
                    f"`input_shape` is for subclassed models; `model` {model.name!r} already "
                    "has an input. Remove input_shape=, or pass FineTuner(input_shape=...) to "
                    "adapt differently shaped data."
                )
            model = with_inputs(model, input_shape)
            if output_layer is None:
                warn_if_classifier(model, source)
            return cls(
                _cut(model, output_layer, source), preprocessing=preprocessing, source=source
            )
        return cls(model, preprocessing=preprocessing)  # raises the right TypeError

    @classmethod
    def from_keras_applications(
        cls,
        name: str,
        *,
        weights: str | None = "imagenet",
        input_shape: tuple | None = None,
        output_layer: str | None = None,
        **kwargs,
    ) -> Backbone:
        """A `keras.applications` architecture without its top, with its preprocessing.

        Args:
            name: str. A `keras.applications` constructor, e.g. `"ResNet50"`,
                `"MobileNetV3Small"`, `"EfficientNetB0"`.
            weights: `"imagenet"`, `None` (random init), or the path of a local
                no-top weights file. `"imagenet"` downloads once into
                `~/.keras/models`. Defaults to `"imagenet"`.
            input_shape: tuple, optional. `(height, width, 3)`; defaults to the
                architecture's default (flexible height and width).
            output_layer: str, optional. Cut the network at this layer.
            **kwargs: passed to the constructor (e.g. `alpha=0.75`).
                `include_top` is always `False`.

        Examples:
            >>> from finetune_tf import Backbone
            >>> backbone = Backbone.from_keras_applications(
            ...     "MobileNetV3Small", weights=None, input_shape=(96, 96, 3))
            >>> backbone.output_shape
            (3, 3, 576)
        """
        names = application_names()
        if not isinstance(name, str) or name not in names:
            raise ValueError(
                f"Unknown keras.applications name={name!r}.{did_you_mean(str(name), names)} "
                f"Expected one of: {', '.join(names)}."
            )
        if "include_top" in kwargs:
            raise ValueError(
                "`include_top` is always False for a Backbone (the FineTuner adds its own "
                "head). Remove include_top= from the call."
            )
        if weights not in ("imagenet", None):
            if not isinstance(weights, (str, os.PathLike)) or not os.path.isfile(weights):
                raise FileNotFoundError(
                    f"`weights`={weights!r} is neither 'imagenet', None, nor an existing "
                    "weights file. Pass the path of a no-top weights file for "
                    f"{name}, 'imagenet' to download them, or None for random weights."
                )
            weights = os.fspath(weights)
        constructor = getattr(keras.applications, name)
        try:
            model = constructor(
                include_top=False, weights=weights, input_shape=input_shape, **kwargs
            )
        except Exception as error:  # Keras raises a bare Exception when a download fails
            if "URL fetch failure" not in str(error):
                raise
            raise _weights_download_error(name, str(error)) from None
        module = constructor.__module__.rsplit(".", 1)[-1]
        source = f"keras.applications.{name}(weights={weights!r})"
        return cls(
            _cut(model, output_layer, source),
            preprocessing=ApplicationPreprocessing(module, name="preprocessing"),
            source=source,
        )

    @classmethod
    def from_file(
        cls,
        path: str | os.PathLike,
        *,
        output_layer: str | None = None,
        preprocessing=None,
        input_shape: tuple | None = None,
        safe_mode: bool = True,
        signature: str | None = None,
        output_key: str | None = None,
    ) -> Backbone:
        """A backbone from a `.keras` file, a Keras `.h5` file or a SavedModel directory.

        `.h5` files from Keras 2 (tf_keras) load too. A TF SavedModel
        directory is wrapped in a trainable `HubLayer` (Keras 3 cannot
        `load_model` it); `input_shape`, `signature` and `output_key` apply
        to SavedModels only.

        Args:
            path: str or path. The model file or SavedModel directory.
            output_layer: str, optional. Cut the model at this layer
                (`.keras` / `.h5` only).
            preprocessing: see `Backbone`.
            input_shape: tuple, optional. For a SavedModel that does not
                declare a fixed input shape.
            safe_mode: bool. Refuse files that would run Python code on load.
                Defaults to `True`.
            signature, output_key: see `HubLayer`.

        Examples:
            >>> import os, tempfile, keras
            >>> from finetune_tf import Backbone
            >>> inputs = keras.Input((8,))
            >>> model = keras.Model(inputs, keras.layers.Dense(4)(inputs))
            >>> path = os.path.join(tempfile.mkdtemp(), "pretrained.keras")
            >>> model.save(path)
            >>> Backbone.from_file(path).output_shape
            (4,)
        """
        path = as_str_path(path, "path", "a path to a .keras/.h5 file or a SavedModel directory")
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"`path`={path!r} does not exist. Expected a .keras or .h5 model file or a "
                "SavedModel directory."
            )
        if os.path.isdir(path):
            if output_layer is not None:
                raise ValueError(
                    "`output_layer` cannot cut a SavedModel (its graph has no Keras layers). "
                    "Export the SavedModel at the layer you want instead."
                )
            return cls._from_saved_model(
                path,
                input_shape=input_shape,
                preprocessing=preprocessing,
                signature=signature,
                output_key=output_key,
                source=f"SavedModel {path!r}",
            )
        if not path.lower().endswith(KERAS_SUFFIXES + H5_SUFFIXES):
            raise ValueError(
                f"`path`={path!r} is not a supported model file. Expected a .keras, .h5 or "
                ".hdf5 file, or a SavedModel directory (containing saved_model.pb)."
            )
        model = load_keras_file(path, safe_mode=safe_mode, compile=False, argname="path")
        source = f"file {os.path.basename(path)!r}"
        if output_layer is None:
            warn_if_classifier(model, source)
        return cls(_cut(model, output_layer, source), preprocessing=preprocessing, source=source)

    @classmethod
    def from_hub(
        cls,
        handle: str,
        *,
        input_shape: tuple | None = None,
        preprocessing=None,
        signature: str | None = None,
        output_key: str | None = None,
        trainable: bool = True,
    ) -> Backbone:
        """A backbone from a TF Hub handle: a https URL or a local SavedModel directory.

        URLs are resolved by tensorflow_hub's resolver and cache
        (`TFHUB_CACHE_DIR`). The model runs in a trainable Keras 3
        `HubLayer`.

        Examples:
            >>> import tempfile, tensorflow as tf
            >>> from finetune_tf import Backbone
            >>> class Features(tf.Module):
            ...     def __init__(self):
            ...         super().__init__()
            ...         self.w = tf.Variable(tf.ones((3, 5)))
            ...     @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
            ...     def __call__(self, x):
            ...         return tf.matmul(x, self.w)
            >>> path = tempfile.mkdtemp()
            >>> tf.saved_model.save(Features(), path)
            >>> Backbone.from_hub(path).output_shape
            (5,)
        """
        handle = as_str_path(handle, "handle", "a Hub URL or a SavedModel directory")
        return cls._from_saved_model(
            handle,
            input_shape=input_shape,
            preprocessing=preprocessing,
            signature=signature,
            output_key=output_key,
            trainable=trainable,
            source=f"hub handle {handle!r}",
        )

    @classmethod
    def _from_saved_model(
        cls, handle, *, input_shape, preprocessing, signature, output_key, source, trainable=True
    ):
        layer = HubLayer(
            handle,
            signature=signature,
            output_key=output_key,
            trainable=trainable,
            name="saved_model",
        )
        declared = layer.input_spec_from_saved_model()
        dtype = declared[1] if declared else "float32"
        if input_shape is None:
            if declared is None:
                raise ValueError(
                    f"The SavedModel {handle!r} does not declare its input shape. Pass "
                    "input_shape=, e.g. input_shape=(224, 224, 3)."
                )
            input_shape = declared[0]
        inputs = keras.Input(shape_tuple(input_shape), dtype=dtype, name="inputs")
        outputs = layer(inputs)
        if isinstance(outputs, dict):
            raise ValueError(
                f"The SavedModel {handle!r} returns {len(outputs)} outputs "
                f"({short_list(sorted(outputs))}); a Backbone has one. Choose it with "
                f"output_key=, e.g. output_key={sorted(outputs)[0]!r}."
            )
        model = keras.Model(inputs, outputs, name="saved_model_backbone")
        return cls(model, preprocessing=preprocessing, source=source)

    @classmethod
    def load(cls, source, **kwargs) -> Backbone:
        """Picks the right constructor for `source`.

        `source` may be a `keras.Model`, a `keras.applications` name, a
        `.keras` / `.h5` file, a SavedModel directory or a Hub URL.
        `kwargs` go to that constructor.

        Examples:
            >>> from finetune_tf import Backbone
            >>> Backbone.load("MobileNetV3Small", weights=None,
            ...               input_shape=(64, 64, 3)).source
            'keras.applications.MobileNetV3Small(weights=None)'
        """
        if isinstance(source, Backbone):
            return source
        if isinstance(source, keras.Model) or _is_tf_keras_model(source):
            return cls.from_model(source, **kwargs)
        source = as_str_path(
            source,
            "source",
            "a keras.Model, a keras.applications name, a model file path or a Hub handle",
        )
        if _is_url(source) or (os.path.isfile(source) and source.endswith(ARCHIVE_SUFFIXES)):
            return cls.from_hub(source, **kwargs)
        if os.path.exists(source):
            return cls.from_file(source, **kwargs)
        if source in application_names():
            return cls.from_keras_applications(source, **kwargs)
        looks_like_path = os.sep in source or "." in source
        hint = did_you_mean(source, application_names())
        raise (FileNotFoundError if looks_like_path else ValueError)(
            f"`source`={source!r} is not a keras.applications name, an existing file or "
            f"directory, or a Hub URL.{hint} Check the path or the spelling."
        )


def _keras_models_directory() -> str:
    """Where `keras.utils.get_file` keeps downloaded weights (`$KERAS_HOME/models`)."""
    from keras.src.backend import config  # the directory Keras fixed when it was imported

    home = getattr(config, "keras_home", lambda: os.path.join("~", ".keras"))()
    return os.path.join(os.path.expanduser(home), "models")


def _weights_download_error(name: str, keras_message: str) -> ConnectionError:
    """One clear error for `weights="imagenet"` without a network, naming the file to place."""
    match = re.search(r"(https?://\S+?\.(?:h5|keras))", keras_message)
    url = match.group(1) if match else None
    file = url.rsplit("/", 1)[-1] if url else f"the {name} no-top weights file"
    directory = _keras_models_directory()
    where = f" from {url}" if url else ""
    return ConnectionError(
        f"Could not download the ImageNet weights of {name}{where} "
        f"({keras_message.rsplit(' -- ', 1)[-1]}; no network, or a proxy refused it). Keras "
        f"looks for {file} in {directory} (or in /tmp/.keras/models when that is not "
        "writable). Copy it there from a machine that has a connection (or run this once "
        "where there is one), or pass weights= the path of the file, or weights=None for "
        "random initialisation."
    )


def _clone_layer(layer, dtype_policy: str | None):
    """A fresh copy of `layer` (nested models layer by layer), computing in `dtype_policy`.

    A subclassed model is rebuilt from its config like any layer: it must implement
    `get_config` (Keras' rule for saving it too).
    """
    if isinstance(layer, keras.Sequential) or hasattr(layer, "_inputs_struct"):
        return keras.models.clone_model(
            layer, clone_function=lambda inner: _clone_layer(inner, dtype_policy)
        )
    config = layer.get_config()
    if dtype_policy is not None and "dtype" in config and not isinstance(layer, HubLayer):
        config["dtype"] = dtype_policy
    return layer.__class__.from_config(config)


@keras.saving.register_keras_serializable(package="finetune_tf")
class BackboneLayer(keras.layers.Layer):
    """Runs a backbone model inside a FineTuner's model.

    With `inference_mode=True` the backbone always runs with
    `training=False`: BatchNorm uses and keeps its moving statistics (the
    Keras transfer-learning guide's rule, which nested functional models no
    longer honour by themselves in Keras 3), and the backbone's own dropout is
    off. With `inference_mode=False`, `training` passes through, so unfrozen
    BatchNorm layers update their statistics.

    Args:
        backbone: keras.Model. The backbone model.
        inference_mode: bool. Defaults to `True`.

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import BackboneLayer
        >>> inputs = keras.Input((4,))
        >>> bn = keras.layers.BatchNormalization()
        >>> layer = BackboneLayer(keras.Model(inputs, bn(inputs)))
        >>> _ = layer(np.random.rand(8, 4) * 10, training=True)
        >>> float(bn.moving_mean.numpy().max())  # statistics untouched
        0.0
    """

    def __init__(self, backbone: keras.Model, inference_mode: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self.inference_mode = bool(inference_mode)
        self.built = True

    def call(self, inputs, training=None):
        if self.inference_mode:
            training = False
        return self.backbone(inputs, training=training)

    def compute_output_spec(self, inputs, training=None):
        return self.backbone.compute_output_spec(inputs)

    def get_config(self):
        return {
            **super().get_config(),
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "inference_mode": self.inference_mode,
        }

    @classmethod
    def from_config(cls, config):
        config = copy.deepcopy(config)  # Keras' deserialization consumes what it reads
        config["backbone"] = keras.saving.deserialize_keras_object(config["backbone"])
        return cls(**config)
