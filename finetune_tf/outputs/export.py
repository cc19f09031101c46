"""Export a fine-tuned model for serving (TF SavedModel) and for mobile (TFLite).

Both exports hold the graph, the fine-tuned weights (Hub and SavedModel
backbones included, vocabulary tables too) and the class names, and need
neither finetune_tf nor the original handle:

- SavedModel: `tf.saved_model.load(path).serve(x)` returns the predictions,
  as Keras' own export does; the `serving_default` signature (what TF
  Serving calls) takes `inputs` and returns named outputs: `predictions`,
  and for classification heads `class_id` and `label` (the class name).
  Multi-label heads also return `active` (predictions above the threshold);
  their label names are in `assets/labels.txt`.
- TFLite: one `.tflite` flatbuffer whose `serving_default` signature returns
  the same named outputs, labels included; `quantize="dynamic"` stores the
  weights in int8 (dynamic-range quantisation, about 4x smaller).

Every export is written under a temporary name and moved into place, so an
interrupted export never leaves a half-written model. Under several workers only
the chief writes at `path` (`chief=`; see `runtime.chief.chief_path`).
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras
import tensorflow as tf

from finetune_tf._checks import check_choice
from finetune_tf._utils import as_str_path, atomic_file, require_parent_directory
from finetune_tf.runtime.chief import chief_path
from finetune_tf.runtime.progress import say

__all__ = ["FORMATS", "LABELS_FILE", "QUANTIZATIONS", "export_model"]

FORMATS = ("saved_model", "tflite")
QUANTIZATIONS = (None, "dynamic")
LABELS_FILE = "labels.txt"


def export_model(
    model: keras.Model,
    head,
    path,
    *,
    format: str = "saved_model",
    class_names: list | None = None,
    quantize: str | None = None,
    overwrite: bool = True,
    chief: bool = True,
) -> str:
    """Writes `model` (with `head`'s named outputs) at `path`; returns `path`.

    On a multi-worker that is not the chief (`chief=False`, `Placement.is_chief`), the
    export goes to a throwaway copy (`chief_path`) and the absolute `path` is returned.

    Examples:
        >>> import os, tempfile, keras, numpy as np, tensorflow as tf
        >>> from finetune_tf import Head
        >>> from finetune_tf.outputs.export import export_model
        >>> inputs = keras.Input((4,))
        >>> model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
        >>> path = export_model(model, Head.classifier(3), os.path.join(tempfile.mkdtemp(), "m"),
        ...                     class_names=["cat", "dog", "fox"])
        >>> served = tf.saved_model.load(path)
        >>> outputs = served.signatures["serving_default"](inputs=tf.ones((2, 4)))
        >>> sorted(outputs), outputs["label"].shape
        (['class_id', 'label', 'predictions'], TensorShape([2]))
    """
    with chief_path(chief, path) as target:
        written = _export(model, head, target, format, class_names, quantize, overwrite)
    return written if target is path else os.path.abspath(os.fspath(path))


def _export(model, head, path, format, class_names, quantize, overwrite) -> str:
    """`export_model` on the chief."""
    check_choice(
        format,
        "format",
        FORMATS,
        meaning="'saved_model' for TF Serving, 'tflite' for mobile and edge devices",
    )
    check_choice(quantize, "quantize", QUANTIZATIONS, meaning="'dynamic' stores int8 weights")
    if quantize is not None and format != "tflite":
        raise ValueError(
            f"`quantize`={quantize!r} applies to format='tflite' only; a SavedModel keeps "
            "float32 weights. Pass format='tflite', or quantize=None."
        )
    if format == "tflite" and any(
        keras.backend.standardize_dtype(tensor.dtype) == "string" for tensor in model.inputs
    ):
        raise ValueError(
            "format='tflite' cannot export a model that takes raw strings (a KerasHub "
            "preset's tokenizer runs tensorflow-text ops, which TFLite does not have). "
            "Pass format='saved_model', which serves raw strings."
        )
    names = head.label_names(class_names)
    path = os.path.abspath(as_str_path(path, "path", "a path for the export"))
    parent = require_parent_directory(path, "path")
    if format == "tflite":
        _check_tflite_target(path, overwrite)
    else:
        _check_saved_model_target(path, overwrite)
    staging = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    try:
        saved_model = os.path.join(staging, "model")
        _archive(model, head, names).write_out(saved_model, verbose=False)
        if names is not None:
            with open(os.path.join(saved_model, "assets", LABELS_FILE), "w") as f:
                f.write("".join(f"{name}\n" for name in names))
        if format == "tflite":
            flatbuffer = _to_tflite(saved_model, quantize)
            with atomic_file(path, suffix=".tflite") as tmp, open(tmp, "wb") as f:
                f.write(flatbuffer)
        else:
            if os.path.exists(path):
                os.replace(path, os.path.join(staging, "previous"))
            os.replace(saved_model, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path


def _check_saved_model_target(path: str, overwrite: bool):
    if os.path.exists(path):
        if not overwrite:
            raise FileExistsError(
                f"`path`={path!r} exists and overwrite=False. Pass overwrite=True or choose "
                "another directory."
            )
        if not os.path.isfile(os.path.join(path, "saved_model.pb")):
            raise ValueError(
                f"`path`={path!r} exists and is not a SavedModel directory; refusing to "
                "replace it. Choose a new directory."
            )


def _check_tflite_target(path: str, overwrite: bool):
    if not path.endswith(".tflite"):
        raise ValueError(
            f"`path`={path!r} must end in .tflite for format='tflite', e.g. 'model.tflite'."
        )
    if os.path.isdir(path):
        raise ValueError(f"`path`={path!r} is a directory; pass a file path ending in .tflite.")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"`path`={path!r} exists and overwrite=False. Pass overwrite=True or choose "
            "another file."
        )


def _archive(model: keras.Model, head, names: list[str] | None) -> keras.export.ExportArchive:
    """`serve` (the predictions, as Keras exports) and `serving_default` (named outputs)."""
    spec = model.inputs[0]
    dtype = tf.string if spec.dtype == "string" else tf.as_dtype(spec.dtype)
    signature = [tf.TensorSpec(spec.shape, dtype, name="inputs")]
    labels = None if names is None else tf.constant(names)

    def predictions(inputs):
        return model(inputs, training=False)

    def named_outputs(inputs):
        scores = model(inputs, training=False)
        return {"predictions": scores, **head.serving_outputs(scores, labels)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serve", predictions, input_signature=signature)
    archive.add_endpoint("serving_default", named_outputs, input_signature=signature)
    return archive


def _to_tflite(saved_model: str, quantize: str | None) -> bytes:
    """The `serving_default` signature as a TFLite flatbuffer; TensorFlow ops (Flex) only
    when the builtin ops cannot express the graph (e.g. a text encoder's tables)."""
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model, signature_keys=["serving_default"]
    )
    if quantize == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    try:
        return converter.convert()
    except Exception as error:  # ConverterError and friends; retry with TensorFlow ops
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else repr(error)
    say(
        "TFLite: the builtin ops cannot express this model "
        f"({first}); converting with TensorFlow ops (the app needs the Flex delegate)"
    )
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    return converter.convert()
