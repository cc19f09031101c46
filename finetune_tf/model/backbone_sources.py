"""From a source to a `Backbone`'s parts: one function per `Backbone` constructor.

Each returns the keyword arguments of `Backbone(...)`: the model (loaded through
`finetune_tf.sources`, given inputs, cut at `output_layer`, with a warning when it
ends in a classifier), its preprocessing and where it came from. `source_kind` says
which constructor `Backbone.load` calls for a source. The constructors, with their
documented arguments, are `Backbone`'s (`model.backbone`).
"""

from __future__ import annotations

import os

import keras

from finetune_tf._utils import as_str_path, did_you_mean
from finetune_tf.model.kinds import cut_at, is_tf_keras_model, warn_if_classifier, with_inputs
from finetune_tf.model.preprocessing import ApplicationPreprocessing
from finetune_tf.sources.applications import application_names, build_application
from finetune_tf.sources.files import check_model_path, load_keras_file, saved_model_network
from finetune_tf.sources.hub_handles import ARCHIVE_SUFFIXES, is_url
from finetune_tf.sources.keras_hub import builtin_preset_name, is_keras_hub_preset, preset_network

__all__ = [
    "application_parts",
    "file_parts",
    "hub_parts",
    "model_parts",
    "preset_parts",
    "source_kind",
]


def model_parts(model, output_layer, preprocessing, input_shape) -> dict:
    """`Backbone.from_model`'s parts: a live Keras 3 model, given inputs and cut."""
    if isinstance(model, keras.Model) and not is_tf_keras_model(model):
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
        model = cut_at(model, output_layer, source)
        return {"model": model, "preprocessing": preprocessing, "source": source}
    return {"model": model, "preprocessing": preprocessing}  # Backbone raises the TypeError


def application_parts(name, weights, input_shape, output_layer, **kwargs) -> dict:
    """`Backbone.from_keras_applications`' parts: the network without its top, and the
    preprocessing its weights expect."""
    model, module = build_application(name, weights=weights, input_shape=input_shape, **kwargs)
    source = f"keras.applications.{name}(weights={weights!r})"
    return {
        "model": cut_at(model, output_layer, source),
        "preprocessing": ApplicationPreprocessing(module, name="preprocessing"),
        "source": source,
    }


def file_parts(
    path, output_layer, preprocessing, input_shape, safe_mode, signature, output_key
) -> dict:
    """`Backbone.from_file`'s parts: a `.keras` / `.h5` model (checked in safe mode) or a
    SavedModel directory in a `HubLayer`."""
    path, saved_model = check_model_path(path, output_layer)
    if saved_model:
        model = saved_model_network(
            path, input_shape=input_shape, signature=signature, output_key=output_key
        )
        return {"model": model, "preprocessing": preprocessing, "source": f"SavedModel {path!r}"}
    model = load_keras_file(path, safe_mode=safe_mode, compile=False, argname="path")
    source = f"file {os.path.basename(path)!r}"
    if output_layer is None:
        warn_if_classifier(model, source)
    model = cut_at(model, output_layer, source)
    return {"model": model, "preprocessing": preprocessing, "source": source}


def hub_parts(handle, input_shape, preprocessing, signature, output_key, trainable) -> dict:
    """`Backbone.from_hub`'s parts: the handle's SavedModel in a trainable `HubLayer`."""
    handle = as_str_path(handle, "handle", "a Hub URL or a SavedModel directory")
    model = saved_model_network(
        handle,
        input_shape=input_shape,
        signature=signature,
        output_key=output_key,
        trainable=trainable,
    )
    return {"model": model, "preprocessing": preprocessing, "source": f"hub handle {handle!r}"}


def preset_parts(preset, feature, preprocessor, sequence_length, **kwargs) -> dict:
    """`Backbone.from_preset`'s parts: the KerasHub preset's preprocessor, backbone and
    feature in one single-input model (`sources.keras_hub`); the preprocessing is in it."""
    model, source = preset_network(
        preset,
        feature=feature,
        preprocessor=preprocessor,
        sequence_length=sequence_length,
        **kwargs,
    )
    return {"model": model, "preprocessing": None, "source": source}


def source_kind(source) -> tuple[str, object]:
    """Which constructor `Backbone.load` calls for `source` (not a `Backbone`):
    `"model"`, `"hub"`, `"file"`, `"preset"` or `"application"`, with the source (a str but for a
    model); a clear error for anything else."""
    if isinstance(source, keras.Model) or is_tf_keras_model(source):
        return "model", source
    source = as_str_path(
        source,
        "source",
        "a keras.Model, a keras.applications name, a model file path or a Hub handle",
    )
    if is_keras_hub_preset(source):
        return "preset", os.path.expanduser(source)
    if is_url(source) or (os.path.isfile(source) and source.endswith(ARCHIVE_SUFFIXES)):
        return "hub", source
    if os.path.exists(source):
        return "file", source
    if source in application_names():
        return "application", source
    if builtin_preset_name(source):
        raise ValueError(
            f"`source`={source!r} is a KerasHub preset name: Backbone.load takes local "
            "presets and hf:// / kaggle:// handles only, so that it never downloads by "
            f"surprise. Use Backbone.from_preset({source!r}), which downloads and caches it."
        )
    looks_like_path = os.sep in source or "." in source
    hint = did_you_mean(source, application_names())
    raise (FileNotFoundError if looks_like_path else ValueError)(
        f"`source`={source!r} is not a keras.applications name, an existing file or "
        f"directory, or a Hub URL.{hint} Check the path or the spelling."
    )
