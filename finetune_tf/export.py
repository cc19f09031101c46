"""Export a fine-tuned model as a self-contained TF SavedModel for serving.

The SavedModel holds the graph and the fine-tuned weights (Hub and SavedModel
backbones included, vocabulary tables too) and needs neither finetune_tf nor
the original handle: `tf.saved_model.load(path).serve(x)` or TF Serving's
`serving_default` signature. It is written to a temporary directory and moved
into place, so an interrupted export never leaves a half-written model.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import keras

from finetune_tf._utils import as_str_path, require_parent_directory


def export_saved_model(model: keras.Model, path, *, overwrite: bool = True) -> str:
    """Writes `model` as a serving SavedModel directory at `path`; returns `path`."""
    path = os.path.abspath(as_str_path(path, "path", "a directory path for the SavedModel"))
    parent = require_parent_directory(path, "path")
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
    staging = tempfile.mkdtemp(prefix=".tmp-export-", dir=parent)
    target = os.path.join(staging, "model")
    try:
        model.export(target, format="tf_saved_model", verbose=False)
        if os.path.exists(path):
            old = os.path.join(staging, "previous")
            os.replace(path, old)
        os.replace(target, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return path
