"""`Backbone`: a pretrained feature extractor, from wherever it comes.

Sources: a `keras.applications` name, a `.keras` / `.h5` file, a TF
SavedModel directory, a TF Hub handle, a KerasHub preset (its preprocessor inside),
or a live `keras.Model`; each can be cut at a named layer. A backbone knows its
input and output shapes, its ordered (flattened) list of layers, and the
preprocessing its weights expect.

Where the weights come from is `finetune_tf.sources` (applications, model
files, Hub handles, and the trust checks before any file is read), and how
each constructor turns its source into a model is `model.backbone_sources`;
which Keras models can be one is `model.kinds`; how it sits inside a
FineTuner's model is `model.layers.BackboneLayer`.
"""

from __future__ import annotations

import copy
import os

import keras
import tensorflow as tf

from finetune_tf._utils import shape_tuple
from finetune_tf.model.backbone_sources import (
    application_parts,
    file_parts,
    hub_parts,
    model_parts,
    preset_parts,
    source_kind,
)
from finetune_tf.model.kinds import is_tf_keras_model, single_io_model
from finetune_tf.model.layers import BackboneLayer, clone_model, flatten_layers, placing_copy
from finetune_tf.model.preprocessing import ApplicationPreprocessing
from finetune_tf.sources.applications import application_names
from finetune_tf.sources.keras_hub import has_tokenizer

# BackboneLayer, application_names and flatten_layers lived here in 0.2 and still import
# from here.
__all__ = ["Backbone", "BackboneLayer", "application_names", "flatten_layers"]


class Backbone:
    """A pretrained feature extractor for `FineTuner`.

    Build one with a constructor: `from_keras_applications`, `from_file`,
    `from_hub`, `from_preset` (KerasHub), `from_model`, or `load`, which picks
    the right one.

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
        if is_tf_keras_model(model):
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
        needed, policy = placing_copy(self.model, strategy, dtype_policy, exact)
        if not needed:
            return self
        try:
            return self._copy(policy)
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
        if has_tokenizer(self.model):
            raise ValueError(
                f"Backbone.get_config cannot describe the backbone from {self.source}: its "
                "tokenizer's vocabulary is an asset of a saved file, not config, so "
                "from_config would rebuild it without one. Save the model instead "
                "(FineTuner.save or model.save to a .keras file, which keeps the assets), "
                "or call Backbone.from_preset again."
            )
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

    def pretrain(
        self, x, *, method: str = "denoising", decoder=None, noise: float | str = "auto", **kwargs
    ) -> Backbone:
        """Pre-trains this backbone on unlabeled inputs `x`, in place, and returns it.

        The backbone learns to reconstruct `x` through a decoder built from its output
        shape (or `decoder`), or with `method="contrastive"` to tell random views of its
        inputs apart (SimCLR with nearest-neighbour pairs): see `Pretrainer`, which this
        calls. Keyword arguments are `Pretrainer`'s (`seed`, `temperature`, `neighbors`,
        `views`, `strategy`, `mixed_precision`, ...), `learning_rate` (Adam's,
        1e-3 by default) and its `fit`'s (`epochs`, `batch_size`, `checkpoint_dir`,
        `validation_data`, ...). Pre-train a
        `copy()` to keep the weights as they were (docs/pretraining.md).

        Examples:
            >>> import keras, numpy as np
            >>> from finetune_tf import Backbone, FineTuner, Head
            >>> inputs = keras.Input((16,))
            >>> backbone = Backbone.from_model(
            ...     keras.Model(inputs, keras.layers.Dense(8, activation="relu")(inputs)))
            >>> backbone = backbone.pretrain(np.random.rand(64, 16), epochs=2, verbose=0)
            >>> tuner = FineTuner(backbone, Head.classifier(3))
        """
        from finetune_tf.training.pretrain import Pretrainer  # it builds on FineTuner

        settings = ("strategy", "mixed_precision", "jit_compile", "memory_growth", "seed")
        settings += ("patch_size", "temperature", "neighbors", "views", "name")
        built = {key: kwargs.pop(key) for key in settings if key in kwargs}
        pretrainer = Pretrainer(self, method=method, decoder=decoder, noise=noise, **built)
        pretrainer.compile(learning_rate=kwargs.pop("learning_rate", 1e-3))
        pretrainer.fit(x, **kwargs)
        return pretrainer.backbone

    def __deepcopy__(self, memo) -> Backbone:
        return self.copy()

    def _copy(self, dtype_policy: str | None) -> Backbone:
        model = clone_model(self.model, dtype_policy, what=f"Backbone {self.name!r}")
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
        return cls(**model_parts(model, output_layer, preprocessing, input_shape))

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
        return cls(**application_parts(name, weights, input_shape, output_layer, **kwargs))

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
        return cls(
            **file_parts(
                path, output_layer, preprocessing, input_shape, safe_mode, signature, output_key
            )
        )

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
        return cls(
            **hub_parts(handle, input_shape, preprocessing, signature, output_key, trainable)
        )

    @classmethod
    def from_preset(
        cls,
        preset: str | os.PathLike,
        *,
        feature: str | None = None,
        preprocessor=True,
        sequence_length: int | None = None,
        **kwargs,
    ) -> Backbone:
        """A backbone from a KerasHub preset, its preprocessor inside: it takes raw inputs.

        The preset's tokenizer and packer (text) or image converter (images) become
        the model's first layer (`PresetPreprocessor`), so `fit`, `predict`, the
        saved file and the SavedModel export take raw strings or raw images; the
        backbone's several inputs (token ids, padding mask, segment ids) are made
        by it. Needs the `finetune_tf[keras-hub]` extra (docs/keras_hub.md).

        Args:
            preset: str or path. A KerasHub preset name (e.g.
                `"bert_tiny_en_uncased"`, downloaded and cached by KerasHub), an
                `hf://` or `kaggle://` handle, or a local preset directory (what
                `save_to_preset` writes; works offline).
            feature: str, optional. The backbone output that is the feature:
                `"pooled"` (the `pooled_output`), `"first_token"` (the `[CLS]`
                vector), `"mean"` (token vectors averaged over the padding mask, or
                feature maps over space) or `"all"` (token vectors, or an image
                backbone's feature maps, which `Head` pools). Defaults to `"pooled"`
                where the backbone has a pooled output, `"mean"` for decoder-only
                (causal) backbones, which refuse `"first_token"`, `"first_token"` for
                other text backbones and `"all"` for image backbones.
            preprocessor: `True` (the preset's own), `False` (none: the model
                takes the backbone's single input, e.g. images already scaled), or a
                KerasHub preprocessor layer to use instead. Defaults to `True`.
            sequence_length: int, optional. Pad or cut texts to this many tokens,
                at most the backbone's `max_sequence_length`; for the preset's own
                preprocessor only. Defaults to the preset preprocessor's (512 for BERT).
            **kwargs: `load_weights=` and `dtype=`, passed to
                `keras_hub.models.Backbone.from_preset`; anything else is a TypeError.

        Examples:
            >>> import os, tempfile, keras_hub
            >>> from finetune_tf import Backbone
            >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad"]
            >>> preset = os.path.join(tempfile.mkdtemp(), "tiny_bert")
            >>> keras_hub.models.BertBackbone(
            ...     vocabulary_size=7, num_layers=1, num_heads=1, hidden_dim=8,
            ...     intermediate_dim=16, max_sequence_length=8).save_to_preset(preset)
            >>> keras_hub.models.BertTextClassifierPreprocessor(
            ...     keras_hub.models.BertTokenizer(vocabulary=vocabulary),
            ...     sequence_length=8).save_to_preset(preset)
            >>> backbone = Backbone.from_preset(preset)
            >>> backbone.input_dtype, backbone.output_shape
            ('string', (8,))
        """
        return cls(**preset_parts(preset, feature, preprocessor, sequence_length, **kwargs))

    @classmethod
    def load(cls, source, **kwargs) -> Backbone:
        """Picks the right constructor for `source`.

        `source` may be a `keras.Model`, a `keras.applications` name, a
        `.keras` / `.h5` file, a SavedModel directory, a Hub URL, or a KerasHub
        preset directory or `hf://` / `kaggle://` handle.
        `kwargs` go to that constructor.

        Examples:
            >>> from finetune_tf import Backbone
            >>> Backbone.load("MobileNetV3Small", weights=None,
            ...               input_shape=(64, 64, 3)).source
            'keras.applications.MobileNetV3Small(weights=None)'
        """
        if isinstance(source, Backbone):
            return source
        kind, source = source_kind(source)
        constructor = {
            "model": cls.from_model,
            "hub": cls.from_hub,
            "file": cls.from_file,
            "application": cls.from_keras_applications,
            "preset": cls.from_preset,
        }[kind]
        return constructor(source, **kwargs)
