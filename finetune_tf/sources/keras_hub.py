"""KerasHub presets as backbones: preprocessor, backbone and feature in one Keras model.

A KerasHub preset (a built-in name, a local `save_to_preset` directory, or an
`hf://` / `kaggle://` handle) holds a backbone with several inputs (token ids,
padding mask, segment ids) or an image backbone, and the preprocessing that feeds
it (a tokenizer and packer, or an image converter). `preset_network` puts that
preprocessing inside a single-input Keras model, so the model takes raw strings or
raw images, and ends in one feature (`FEATURES`). `Backbone.from_preset` calls it.

keras-hub and tensorflow-text are an extra (`pip install "finetune_tf[keras-hub]"`):
this module imports `keras_hub` only when a preset is loaded, so `import finetune_tf`
does not. Its two layers are registered here, so a saved model loads after
`import finetune_tf` (Keras imports `keras_hub` itself for the KerasHub objects inside).
"""

from __future__ import annotations

import importlib.util
import json
import os

import keras

from finetune_tf._checks import check_choice, check_int
from finetune_tf._utils import as_str_path, did_you_mean, revived, short_list

__all__ = [
    "FEATURES",
    "PresetPreprocessor",
    "TokenPooling",
    "builtin_preset_name",
    "has_tokenizer",
    "is_keras_hub_preset",
    "preset_network",
]

FEATURES = ("pooled", "first_token", "mean", "all")
"""What `Backbone.from_preset(feature=...)` takes as the feature: the backbone's
`pooled_output`, its first token's vector (`[CLS]`), the mean of its token vectors
over the padding mask (or of its feature maps over space), or its whole output
(token vectors, or an image backbone's feature maps, which `Head` pools)."""

_REMOTE_PREFIXES = ("hf://", "kaggle://", "gs://", "http://", "https://", "modelscope://")
_EXTRA = 'pip install "finetune_tf[keras-hub]"'
_KERAS_HUB_KWARGS = ("load_weights", "dtype")  # what from_preset passes to KerasHub


def import_keras_hub():
    """The `keras_hub` module, or an ImportError that says how to install the extra."""
    try:
        import keras_hub
    except ImportError as error:
        raise ImportError(
            "Backbone.from_preset needs keras-hub and tensorflow-text (Python >= 3.11), "
            f"which are not installed ({error}). Install them with: {_EXTRA}"
        ) from error
    return keras_hub


@keras.saving.register_keras_serializable(package="finetune_tf")
class PresetPreprocessor(keras.layers.Layer):
    """A KerasHub preprocessor (tokenizer and packer, or image converter) as a model layer.

    Inside a functional model, raw strings go in and the backbone's inputs come
    out. KerasHub keeps a tokenizer's vocabulary as an asset of the saved file,
    loaded after the model's graph is rebuilt; this layer therefore declares the
    shapes and dtypes of what it packs (`packed_spec`, measured when it is
    made) instead of running the tokenizer to infer them, so a saved model
    loads. It holds no weights; copies of a backbone share it.

    Args:
        preprocessor: a `keras_hub` preprocessor: a `TextClassifierPreprocessor`
            (or any with a `tokenizer`), or a `keras_hub.layers.ImageConverter`.
        packed_spec: dict, optional. For text: each packed input's name ->
            `[shape without the batch axis, dtype]`. Defaults to measuring it on
            one string.

    Examples:
        >>> import keras, keras_hub, numpy as np
        >>> from finetune_tf.sources.keras_hub import PresetPreprocessor
        >>> vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "film"]
        >>> tokenizer = keras_hub.models.BertTokenizer(vocabulary=vocabulary)
        >>> layer = PresetPreprocessor(
        ...     keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=6))
        >>> layer(keras.Input((), dtype="string"))["token_ids"].shape
        (None, 6)
        >>> layer(np.array(["good film"]))["token_ids"].numpy().tolist()
        [[2, 5, 6, 3, 0, 0]]
    """

    def __init__(self, preprocessor, packed_spec: dict | None = None, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if not isinstance(preprocessor, keras.layers.Layer):
            raise TypeError(
                "`preprocessor` must be a KerasHub preprocessor or image converter (a "
                f"keras.layers.Layer). Received: preprocessor={preprocessor!r} of type "
                f"{type(preprocessor).__name__}."
            )
        self.preprocessor = preprocessor
        if packed_spec is None and is_text_preprocessor(preprocessor):
            packed_spec = _measured_spec(preprocessor)
        self.packed_spec = packed_spec
        self.built = True

    def call(self, inputs):
        return self.preprocessor(inputs)

    def compute_output_spec(self, inputs):
        if self.packed_spec is None:  # an image converter: it runs symbolically
            return self.preprocessor.compute_output_spec(inputs)
        batch = inputs.shape[0]
        return {
            name: keras.KerasTensor((batch, *shape), dtype=dtype)
            for name, (shape, dtype) in self.packed_spec.items()
        }

    def get_config(self):
        return {
            **super().get_config(),
            "preprocessor": keras.saving.serialize_keras_object(self.preprocessor),
            "packed_spec": self.packed_spec,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**revived(config, "preprocessor"))


def is_text_preprocessor(preprocessor) -> bool:
    """Whether `preprocessor` tokenizes text (it has a tokenizer)."""
    return getattr(preprocessor, "tokenizer", None) is not None


def has_tokenizer(model: keras.Model) -> bool:
    """Whether `model` holds a `PresetPreprocessor` with a tokenizer, whose vocabulary
    is an asset (saved in a `.keras` file), not config."""
    return any(
        isinstance(layer, PresetPreprocessor) and is_text_preprocessor(layer.preprocessor)
        for layer in model._flatten_layers()
    )


def _measured_spec(preprocessor) -> dict:
    """What a text preprocessor packs one string into: name -> [shape, dtype]."""
    import tensorflow as tf

    packed = preprocessor(tf.constant(["a"]))
    if not isinstance(packed, dict):
        packed = {"token_ids": packed}
    length = getattr(preprocessor, "sequence_length", None)
    spec = {}
    for name, value in packed.items():
        shape = list(value.shape[1:])
        if shape and length is None:
            shape[0] = None  # packed to the batch's longest text
        spec[name] = [shape, keras.backend.standardize_dtype(value.dtype)]
    return spec


@keras.saving.register_keras_serializable(package="finetune_tf")
class TokenPooling(keras.layers.Layer):
    """One vector per example from token vectors or feature maps.

    `mode="first_token"` takes the first token's vector (BERT's `[CLS]`);
    `mode="mean"` averages the token vectors where `padding_mask` is true, or
    averages feature maps `(batch, height, width, channels)` over space.

    Args:
        mode: str. `"first_token"` or `"mean"`. Defaults to `"mean"`.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.sources.keras_hub import TokenPooling
        >>> tokens = np.array([[[1.0], [3.0], [100.0]]])
        >>> mask = np.array([[True, True, False]])
        >>> TokenPooling("mean")(tokens, padding_mask=mask).numpy().tolist()
        [[2.0]]
        >>> TokenPooling("first_token")(tokens).numpy().tolist()
        [[1.0]]
    """

    def __init__(self, mode: str = "mean", **kwargs):
        super().__init__(**kwargs)
        self.mode = check_choice(mode, "mode", ("first_token", "mean"), where="TokenPooling")
        self.supports_masking = False

    def call(self, inputs, padding_mask=None):
        if self.mode == "first_token":
            return inputs[:, 0]
        if len(inputs.shape) == 4:  # feature maps
            return keras.ops.mean(inputs, axis=(1, 2))
        if padding_mask is None:
            return keras.ops.mean(inputs, axis=1)
        weights = keras.ops.expand_dims(keras.ops.cast(padding_mask, inputs.dtype), -1)
        total = keras.ops.sum(inputs * weights, axis=1)
        return total / keras.ops.maximum(keras.ops.sum(weights, axis=1), 1.0)

    def compute_output_shape(self, inputs_shape, padding_mask_shape=None):
        return (inputs_shape[0], inputs_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


def is_keras_hub_preset(source: str) -> bool:
    """Whether `source` names a KerasHub preset: an hf:// / kaggle:// handle, or a
    directory (`~` expanded) whose metadata.json names the KerasHub version that wrote
    it (`save_to_preset`; a Keras model saved unzipped has a metadata.json without one).
    Built-in preset names are `builtin_preset_name`'s."""
    if source.startswith(("hf://", "kaggle://")):
        return True
    metadata = os.path.join(os.path.expanduser(source), "metadata.json")
    try:
        with open(metadata) as f:
            found = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(found, dict) and bool({"keras_hub_version", "keras_nlp_version"} & set(found))


def builtin_preset_name(source: str) -> bool:
    """Whether `source` is a KerasHub built-in preset name (False without keras-hub)."""
    if importlib.util.find_spec("keras_hub") is None:
        return False
    return source in _builtin_presets()


def _builtin_presets() -> list:
    from keras_hub.src.utils.preset_utils import BUILTIN_PRESETS

    return sorted(BUILTIN_PRESETS)


def _check_preset(preset) -> tuple[str, bool]:
    """`preset` as a str, and whether it is remote (a name or handle KerasHub downloads);
    a clear error for a directory that is missing or is not a preset, or an unknown name."""
    preset = as_str_path(
        preset,
        "preset",
        "a KerasHub preset name, an hf:// or kaggle:// handle, or a local preset directory",
    )
    if preset.startswith(_REMOTE_PREFIXES):
        return preset, True
    if os.path.isdir(os.path.expanduser(preset)):
        preset = os.path.expanduser(preset)
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise FileNotFoundError(
                f"`preset`={preset!r} is a directory but not a KerasHub preset: it has no "
                "config.json. Pass the directory that `save_to_preset` wrote (it holds "
                "config.json, model.weights.h5 and the tokenizer or image converter files)."
            )
        if not is_keras_hub_preset(preset):
            raise ValueError(
                f"`preset`={preset!r} is a Keras model saved unzipped (its metadata.json "
                "names no KerasHub version), not a KerasHub preset. Load it with "
                "keras.models.load_model, or save it as a .keras file and use "
                "Backbone.from_file; for a preset pass the directory `save_to_preset` wrote."
            )
        return preset, False
    names = _builtin_presets()
    if preset in names:
        return preset, True
    looks_like_path = os.sep in preset or preset.startswith((".", "~"))
    if looks_like_path:
        raise FileNotFoundError(
            f"`preset`={preset!r} does not exist. Pass a local preset directory (what "
            "`save_to_preset` writes), a KerasHub preset name or an hf:// / kaggle:// handle."
        )
    raise ValueError(
        f"`preset`={preset!r} is not a KerasHub preset name, an hf:// or kaggle:// handle, "
        f"or an existing directory.{did_you_mean(preset, names)} "
        "keras_hub.models.Backbone.presets lists the names; a local preset is a directory "
        "that `save_to_preset` wrote."
    )


def _download_error(preset: str, error: Exception) -> OSError:
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return OSError(
        f"KerasHub could not fetch the preset `preset`={preset!r}, or it names no preset "
        f"({type(error).__name__}: {first_line}). A preset name or an hf:// / kaggle:// "
        "handle is downloaded on first use (then cached), which needs a network connection "
        "and, for gated models, credentials. Offline, pass a local preset directory "
        "instead: on a connected machine run "
        f"keras_hub.models.Backbone.from_preset({preset!r}).save_to_preset(path) "
        "(and the same for its preprocessor), or copy KerasHub's cache."
    )


def _check_causal_feature(keras_hub, backbone, feature, preset) -> None:
    if feature == "first_token" and is_causal(keras_hub, backbone):
        raise ValueError(
            f"`feature`='first_token' is constant for preset {preset!r}: its backbone "
            f"({type(backbone).__name__}) is decoder-only (causal), so its first token sees "
            "no other token. Use feature='mean' (the default for causal backbones) or 'all'."
        )


def _load_preset_parts(keras_hub, preset, remote, feature, preprocessor, sequence_length, kwargs):
    """The preset's KerasHub backbone and preprocessor (or None)."""
    from keras_hub.src.utils.preset_utils import (
        IMAGE_CONVERTER_CONFIG_FILE,
        TOKENIZER_CONFIG_FILE,
        check_file_exists,
    )

    try:
        backbone = keras_hub.models.Backbone.from_preset(preset, **kwargs)
        _check_causal_feature(keras_hub, backbone, feature, preset)
        if preprocessor is not True:
            return backbone, preprocessor or None
        if check_file_exists(preset, TOKENIZER_CONFIG_FILE):
            length = {} if sequence_length is None else {"sequence_length": sequence_length}
            try:
                found = keras_hub.models.TextClassifierPreprocessor.from_preset(preset, **length)
            except ValueError as error:
                if "Unable to find a subclass" not in str(error):
                    raise
                raise ValueError(
                    f"Preset {preset!r} has a tokenizer but no text classifier preprocessor "
                    f"for its backbone ({type(backbone).__name__}, e.g. a decoder-only "
                    "model). Pass one with `preprocessor=`, e.g. preprocessor="
                    "keras_hub.models.GPT2Preprocessor(tokenizer, sequence_length=128), "
                    "which packs token ids and a padding mask."
                ) from None
        elif check_file_exists(preset, IMAGE_CONVERTER_CONFIG_FILE):
            found = keras_hub.layers.ImageConverter.from_preset(preset)
        else:
            found = None
    except OSError as error:  # network errors are OSErrors (requests, kagglehub, hf hub)
        if remote and not isinstance(error, FileNotFoundError):
            raise _download_error(preset, error) from error
        raise
    except ValueError as error:
        # KerasHub reports an hf:// handle it could not fetch as one without a config.json.
        if remote and "has no config.json" in str(error):
            raise _download_error(preset, error) from error
        raise
    return backbone, found


def _subclasses(cls) -> list:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def is_causal(keras_hub, backbone) -> bool:
    """Whether `backbone` (a KerasHub backbone) is a decoder-only (causal) model: the
    `backbone_cls` of a `keras_hub.models.CausalLM` task (GPT-2, Gemma, Llama, ...)."""
    tasks = _subclasses(keras_hub.models.CausalLM)
    return any(getattr(task, "backbone_cls", None) is type(backbone) for task in tasks)


def _plain_graph(backbone) -> keras.Model:
    """The KerasHub backbone's graph as a plain functional `keras.Model` on the same layers.

    A KerasHub `Backbone` saves only its constructor arguments, so its inner layers'
    `trainable` flags (what `FreezePolicy` set) are lost by `keras.models.load_model`;
    a plain functional model saves each layer's config, flags included."""
    return keras.Model(backbone.input, backbone.output, name=backbone.name)


def _backbone_inputs(backbone) -> dict | None:
    """The backbone's named inputs (dict), or None for a single-input backbone."""
    inputs = backbone.input
    return inputs if isinstance(inputs, dict) else None


def _feature(outputs, packed, feature, preset) -> keras.KerasTensor:
    """The feature `feature` names, from the backbone's `outputs`."""
    pooled = outputs.get("pooled_output") if isinstance(outputs, dict) else None
    if isinstance(outputs, dict):
        sequence = outputs.get("sequence_output")
        if sequence is None and len(outputs) == 1:
            sequence = next(iter(outputs.values()))
    else:
        sequence = outputs
    mask = packed.get("padding_mask") if isinstance(packed, dict) else None
    rank = None if sequence is None else len(sequence.shape)
    if feature is None:  # the family's default
        if pooled is not None:
            feature = "pooled"
        elif mask is not None and rank == 3:
            feature = "first_token"
        else:
            feature = "all"
    available = [
        name
        for name, ok in (
            ("pooled", pooled is not None),
            ("first_token", rank == 3),
            ("mean", rank in (3, 4)),
            ("all", sequence is not None),
        )
        if ok
    ]
    if feature not in available:
        if isinstance(outputs, dict):
            gives = f"outputs {short_list(outputs)}"
        else:
            gives = {3: "token vectors", 4: "feature maps"}.get(rank, "one tensor")
            gives = f"outputs {gives} of shape {tuple(sequence.shape)}"
        choices = " or ".join(repr(name) for name in available)
        raise ValueError(
            f"`feature`={feature!r} is not available from preset {preset!r}, whose backbone "
            f"{gives}. Use one of {choices}, or feature=None for the default."
        )
    if feature == "pooled":
        return pooled
    if feature == "all":
        return sequence
    pooling = TokenPooling(feature, name="token_pooling")
    return pooling(sequence, padding_mask=mask) if mask is not None else pooling(sequence)


def preset_network(
    preset,
    *,
    feature: str | None = None,
    preprocessor=True,
    sequence_length: int | None = None,
    **kwargs,
) -> tuple[keras.Model, str]:
    """A single-input Keras model for a KerasHub preset, and a description of its source.

    The model is `inputs -> PresetPreprocessor -> the KerasHub backbone -> feature`:
    raw strings (shape `()`) for a preset with a tokenizer, raw images
    (`(None, None, channels)`, resized by the converter) for one with an image
    converter, else the backbone's own single input. Arguments are
    `Backbone.from_preset`'s; `kwargs` go to `keras_hub.models.Backbone.from_preset`.
    """
    if feature is not None:
        check_choice(feature, "feature", FEATURES, also="None", where="Backbone.from_preset")
    if not (isinstance(preprocessor, (bool, keras.layers.Layer))):
        raise TypeError(
            "`preprocessor` must be True (the preset's own), False (none: the model takes "
            "the backbone's inputs) or a KerasHub preprocessor layer. Received: "
            f"preprocessor={preprocessor!r} of type {type(preprocessor).__name__}."
        )
    sequence_length = check_int(
        sequence_length, "sequence_length", allow_none=True, where="Backbone.from_preset"
    )
    unknown = sorted(set(kwargs) - set(_KERAS_HUB_KWARGS))
    if unknown:
        raise TypeError(
            f"Backbone.from_preset got unexpected keyword arguments {unknown}: it passes only "
            f"{' and '.join(_KERAS_HUB_KWARGS)} to KerasHub. A preset's model is whole: choose "
            "its output with feature= (not output_layer=), and its input is made by the "
            "preprocessor (not input_shape=; an image converter resizes images)."
        )
    if sequence_length is not None and isinstance(preprocessor, keras.layers.Layer):
        raise ValueError(
            f"`sequence_length`={sequence_length} applies to the preset's own preprocessor; "
            "a preprocessor passed with preprocessor= packs to its own length. Set "
            "sequence_length on that preprocessor, or remove sequence_length=."
        )
    keras_hub = import_keras_hub()
    preset, remote = _check_preset(preset)
    backbone, found = _load_preset_parts(
        keras_hub, preset, remote, feature, preprocessor, sequence_length, kwargs
    )
    most = getattr(backbone, "max_sequence_length", None)
    if sequence_length is not None and most is not None and sequence_length > most:
        raise ValueError(
            f"`sequence_length`={sequence_length} is longer than preset {preset!r}'s backbone "
            f"takes (max_sequence_length={most}: it has that many position embeddings). "
            f"Use sequence_length <= {most}, or None for the preprocessor's default."
        )
    causal = is_causal(keras_hub, backbone)
    backbone = _plain_graph(backbone)
    named_inputs = _backbone_inputs(backbone)
    if sequence_length is not None and not (found is not None and is_text_preprocessor(found)):
        raise ValueError(
            f"`sequence_length`={sequence_length} applies to text presets, whose preprocessor "
            f"packs token ids; preset {preset!r} has no tokenizer (or preprocessor=False was "
            "passed). Remove sequence_length=."
        )
    if found is None:
        if named_inputs is not None:
            raise ValueError(
                f"Preset {preset!r} has a backbone with several inputs "
                f"({short_list(named_inputs)}) and no preprocessor to make them from one "
                "input. Pass preprocessor=True with a preset that has a tokenizer, or a "
                "KerasHub preprocessor, e.g. "
                "preprocessor=keras_hub.models.TextClassifierPreprocessor(tokenizer)."
            )
        inputs = keras.Input(backbone.input.shape[1:], dtype=backbone.input.dtype, name="inputs")
        packed = inputs
    elif is_text_preprocessor(found):
        inputs = keras.Input((), dtype="string", name="text")
        packed = PresetPreprocessor(found, name="preprocessor")(inputs)
    else:
        channels = backbone.input.shape[-1] if named_inputs is None else None
        inputs = keras.Input((None, None, channels), name="images")
        packed = PresetPreprocessor(found, name="preprocessor")(inputs)
    if named_inputs is not None:
        missing = sorted(set(named_inputs) - set(packed) if isinstance(packed, dict) else [])
        if not isinstance(packed, dict) or missing:
            raise ValueError(
                f"The preprocessor of preset {preset!r} does not make the backbone's inputs "
                f"{short_list(missing or named_inputs)}. Pass the preprocessor made for this "
                "backbone (preprocessor=True uses the preset's own)."
            )
        outputs = backbone({name: packed[name] for name in named_inputs})
    else:
        outputs = backbone(packed)
    if feature is None and causal:
        feature = "mean"  # a causal model's first token sees nothing else
    features = _feature(outputs, packed, feature, preset)
    model = keras.Model(inputs, features, name=backbone.name)
    return model, f"KerasHub preset {preset!r}"
