"""Keras 2 (tf_keras) `.h5` model files that Keras 3 misreads, nested models above all.

Keras 3's legacy `.h5` loader rebuilds a Keras 2 model, but rejects arguments
only Keras 2 had (`groups=1` on DepthwiseConv2D in every MobileNet, on
Conv*Transpose and SeparableConv*; a SeparableConv's unused `kernel_*`; the
augmentation layers' `rng_type`) and misreads a nested model: a
BatchNormalization inside it keeps Keras 2's list `axis` (`[3]`), a model
calling it points at Keras 2's node numbering (where a model's own construction
was node 0), the nested model returns a one-element list instead of its tensor,
and a model two deep names tf_keras' class. `keras2_fix` rewrites the `model_config` JSON so
Keras 3 rebuilds the same network; `load_fixed_copy` loads it from a temporary
copy of the file (the user's file is never written). The weights are read by
Keras' own loader, unchanged.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile

__all__ = ["keras2_config", "keras2_fix", "load_fixed_copy"]

_MODEL_CLASSES = ("Functional", "Model", "Sequential")


def _is_model(entry) -> bool:
    return (
        isinstance(entry, dict)
        and entry.get("class_name") in _MODEL_CLASSES
        and isinstance(entry.get("config"), dict)
        and isinstance(entry["config"].get("layers"), list)
    )


def _is_leaf(value) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 3
        and isinstance(value[0], str)
        and all(isinstance(i, int) for i in value[1:])
    )


# Arguments Keras 2 saves that Keras 3's constructors reject, by layer class. Keras 2's
# `groups` on these classes could only be 1; a SeparableConv's `kernel_*` were unused
# (its kernels are the depthwise and pointwise ones). Anything else stays for Keras to judge.
_GROUPS_OF_ONE = {
    "DepthwiseConv1D",
    "DepthwiseConv2D",
    "Conv1DTranspose",
    "Conv2DTranspose",
    "Conv3DTranspose",
    "SeparableConv1D",
    "SeparableConv2D",
}
_UNUSED = {
    "SeparableConv1D": ("kernel_initializer", "kernel_regularizer", "kernel_constraint"),
    "SeparableConv2D": ("kernel_initializer", "kernel_regularizer", "kernel_constraint"),
}
_RANDOM_LAYERS = ("Random",)  # the augmentation layers: Keras 2's `rng_type`


def _fix_layer_configs(value) -> None:
    """A one-element list `axis` becomes an int (as Keras does for top-level layers
    only); the Keras 2 arguments Keras 3 rejects (`_GROUPS_OF_ONE`, `_UNUSED`, a random
    augmentation layer's `rng_type`) are dropped, and so is the `tf_keras` module of a
    model nested two deep (Keras 3 then finds its own Functional or Sequential)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            inner = item.get("config")
            if "class_name" in item and isinstance(inner, dict):
                name = item["class_name"]
                axis = inner.get("axis")
                if isinstance(axis, list) and len(axis) == 1 and isinstance(axis[0], int):
                    inner["axis"] = axis[0]
                if name in _GROUPS_OF_ONE and inner.get("groups") == 1:
                    del inner["groups"]
                for key in _UNUSED.get(name, ()):
                    inner.pop(key, None)
                if isinstance(name, str) and name.startswith(_RANDOM_LAYERS):
                    inner.pop("rng_type", None)
                module = item.get("module")
                if name in _MODEL_CLASSES and str(module).startswith("tf_keras."):
                    del item["module"]  # a model nested two deep: Keras 3's own class
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _fix_model(entry: dict, nested: bool) -> None:
    config = entry["config"]
    layers = config["layers"]
    models = {layer.get("name") for layer in layers if _is_model(layer)}
    for layer in layers:
        if _is_model(layer):
            _fix_model(layer, nested=True)
        if not models:
            continue
        for node in layer.get("inbound_nodes") or []:  # Keras 2: [[name, node, tensor, kwargs]]
            if not isinstance(node, list):
                continue
            for inbound in node:
                if (
                    isinstance(inbound, list)
                    and len(inbound) >= 3
                    and inbound[0] in models
                    and isinstance(inbound[1], int)
                    and inbound[1] >= 1
                ):
                    inbound[1] -= 1  # Keras 3 models have no construction node
    # Keras 3 renumbers a nested Functional model named in input_layers/output_layers
    # itself, but not a nested Sequential (not a Functional in Keras 3).
    sequentials = {layer.get("name") for layer in layers if layer.get("class_name") == "Sequential"}
    for key in ("input_layers", "output_layers"):
        value = config.get(key)
        leaves = [value] if _is_leaf(value) else value if isinstance(value, list) else []
        for leaf in leaves:
            if _is_leaf(leaf) and leaf[0] in sequentials and leaf[1] >= 1:
                leaf[1] -= 1
        if nested and isinstance(value, list) and len(value) == 1 and _is_leaf(value[0]):
            config[key] = value[0]  # one tensor, not a one-element list


def keras2_config(path: str) -> dict | None:
    """The `model_config` of a Keras 2 (tf_keras) `.h5` model file, else None."""
    import h5py

    with h5py.File(path, "r") as f:
        version = f.attrs.get("keras_version")
        raw = f.attrs.get("model_config")
    if isinstance(version, bytes):
        version = version.decode("utf-8", errors="replace")
    if raw is None or not str(version).startswith("2."):
        return None
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    config = json.loads(raw)
    return config if _is_model(config) else None


def keras2_fix(config: dict) -> dict:
    """A copy of a Keras 2 `model_config` that Keras 3 rebuilds as it was saved.

    Example:
        >>> from finetune_tf.sources.keras2_h5 import keras2_fix
        >>> bn = {"class_name": "BatchNormalization", "config": {"axis": [3]}}
        >>> model = {"class_name": "Sequential", "config": {"layers": [bn]}}
        >>> keras2_fix(model)["config"]["layers"][0]["config"]["axis"]
        3
    """
    config = copy.deepcopy(config)
    _fix_layer_configs(config)
    if _is_model(config):
        _fix_model(config, nested=False)
    return config


def load_fixed_copy(path: str, config: dict, *, compile: bool, safe_mode: bool):
    """Loads the `.h5` file at `path` with `config` as its `model_config`, from a copy."""
    import h5py
    import keras

    with tempfile.TemporaryDirectory(prefix="finetune_tf_h5_") as directory:
        copy_path = os.path.join(directory, "model.h5")
        shutil.copyfile(path, copy_path)
        with h5py.File(copy_path, "r+") as f:
            del f.attrs["model_config"]
            f.attrs["model_config"] = json.dumps(config)
        return keras.models.load_model(copy_path, compile=compile, safe_mode=safe_mode)
