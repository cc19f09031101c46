"""Model files as a source: `.keras` archives, Keras `.h5` files (Keras 2 ones
too) and TF SavedModel directories.

Files are checked by `sources.trust` before Keras reads them (in safe mode);
a SavedModel becomes a one-input Keras 3 model around a trainable `HubLayer`.
"""

from __future__ import annotations

import os
import zipfile

import keras

from finetune_tf._utils import as_str_path, shape_tuple, short_list
from finetune_tf.sources.hub import HubLayer
from finetune_tf.sources.keras2_h5 import keras2_config, keras2_fix, load_fixed_copy
from finetune_tf.sources.trust import check_h5_file, check_keras_archive

__all__ = [
    "H5_SUFFIXES",
    "KERAS_SUFFIXES",
    "check_model_path",
    "load_keras_file",
    "saved_model_network",
]

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")


def check_model_path(path, output_layer: str | None = None) -> tuple[str, bool]:
    """`path` as a str, and whether it is a SavedModel directory (else a .keras/.h5 file).

    Raises FileNotFoundError or ValueError naming what is wrong with it.
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
        return path, True
    if not path.lower().endswith(KERAS_SUFFIXES + H5_SUFFIXES):
        raise ValueError(
            f"`path`={path!r} is not a supported model file. Expected a .keras, .h5 or "
            ".hdf5 file, or a SavedModel directory (containing saved_model.pb)."
        )
    return path, False


def load_keras_file(path, *, safe_mode: bool = True, compile: bool = True, argname="filepath"):
    """Loads a `.keras` or `.h5` model file with the safety checks above."""
    path = as_str_path(path, argname, "a path to a .keras or .h5 file")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"`{argname}`={path!r} does not exist. Check the path, or save a model "
            "there first with FineTuner.save() or model.save()."
        )
    lower = path.lower()
    if os.path.isdir(path):
        raise ValueError(
            f"`{argname}`={path!r} is a directory, not a .keras or .h5 file. For a "
            "TF SavedModel directory use finetune_tf.Backbone.from_file(path)."
        )
    if lower.endswith(H5_SUFFIXES):
        if safe_mode:
            check_h5_file(path, argname, compile)
        config = keras2_config(path)
        if config is not None:
            return _load_keras2_h5(path, config, compile, safe_mode, argname)
    elif lower.endswith(KERAS_SUFFIXES):
        if safe_mode:
            check_keras_archive(path, argname, compile)  # before Keras: a second line of defence
        elif not zipfile.is_zipfile(path):
            raise ValueError(
                f"`{argname}`={path!r} is not a Keras archive (a .keras file is a zip "
                "archive). It may be damaged or be another kind of file."
            )
    else:
        raise ValueError(
            f"`{argname}`={path!r} has an unsupported extension. Expected a .keras or "
            ".h5/.hdf5 model file (or a SavedModel directory for Backbone.from_file)."
        )
    return keras.models.load_model(path, compile=compile, safe_mode=safe_mode)


def _load_keras2_h5(path: str, config: dict, compile: bool, safe_mode: bool, argname: str):
    """A Keras 2 (tf_keras) `.h5` file: what Keras 3 misreads in its `model_config` is
    rewritten in a temporary copy; a training config Keras 3 cannot compile (Keras 2's
    `keras.metrics.mse`, loss objects) is named, with the fix, not left as Keras' error."""
    fixed = keras2_fix(config)

    def load(compile_: bool):
        if fixed != config:
            return load_fixed_copy(path, fixed, compile=compile_, safe_mode=safe_mode)
        return keras.models.load_model(path, compile=compile_, safe_mode=safe_mode)

    if not compile:
        return load(False)
    try:
        return load(True)
    except (ValueError, TypeError) as error:
        try:
            load(False)
        except Exception:
            raise error from None  # the architecture itself fails: Keras' own error
        raise ValueError(
            f"`{argname}`={path!r} is a Keras 2 (tf_keras) model whose compiled loss, "
            f"metrics or optimizer Keras 3 cannot restore ({error}). Load it with "
            "compile=False (FineTuner and Backbone.from_file compile anew anyway), then "
            "compile it yourself."
        ) from error


def saved_model_network(
    handle: str,
    *,
    input_shape: tuple | None,
    signature: str | None,
    output_key: str | None,
    trainable: bool = True,
) -> keras.Model:
    """A one-input Keras model around the SavedModel at `handle` (a `HubLayer`); the
    input shape is the one given, else the one the SavedModel declares. (Example:
    `Backbone.from_hub`.)"""
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
    return keras.Model(inputs, outputs, name="saved_model_backbone")
