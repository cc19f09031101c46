"""Could this file run code? Every check finetune_tf makes before loading one.

A model config (in a `.keras` archive or an `.h5` file) is refused in safe
mode when it names a Lambda layer (marshalled Python bytecode), a Python
lambda, a function outside Keras' modelling modules, or an object from a
package other than Keras' or finetune_tf's (unless this process registered
it itself). Keras' legacy `.h5` loader ignores `safe_mode` (CVE-2025-9905),
so `.h5` files are only safe through these checks. A SavedModel runs no
Python, but its graph runs whatever ops it holds: `unsafe_ops` lists those
that write files or call back into Python.
"""

from __future__ import annotations

import json
import os
import zipfile

import keras

__all__ = ["UNSAFE_OPS", "check_h5_file", "check_keras_archive", "unsafe_ops"]


# Where a model config may take objects from: Keras and packages built on its registry.
_SAFE_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp", "finetune_tf")
# What a class registered by the user's own code must be to be loaded in safe mode.
_MODELLING_BASES = (
    keras.layers.Layer,
    keras.losses.Loss,
    keras.metrics.Metric,
    keras.initializers.Initializer,
    keras.regularizers.Regularizer,
    keras.constraints.Constraint,
    keras.optimizers.Optimizer,
    keras.optimizers.schedules.LearningRateSchedule,
)
# Modules whose functions a config may name (losses, metrics, activations, ...).
_SAFE_FUNCTION_MODULES = (
    "builtins",
    "keras.activations",
    "keras.losses",
    "keras.metrics",
    "keras.ops",
    "keras.src.activations",
    "keras.src.losses",
    "keras.src.metrics",
    "keras.src.ops",
)


def _in_modules(module: str, modules) -> bool:
    return any(module == m or module.startswith(m + ".") for m in modules)


def _registered_in_this_process(config: dict) -> bool:
    """Whether the config names a modelling class that this process registered itself
    (`keras.saving.register_keras_serializable`): its code is the user's, already
    imported, and the file only gives it arguments (as Keras' own safe mode allows)."""
    name = config.get("registered_name")
    if not isinstance(name, str):
        return False
    found = keras.saving.get_registered_object(name)
    return (
        isinstance(found, type)
        and found.__module__ == config.get("module")
        and found.__name__ == config.get("class_name")
        and issubclass(found, _MODELLING_BASES)
    )


def _unsafe_objects(config) -> list[str]:
    """What in a model config could run code on load: Lambda layers (marshalled Python
    bytecode), Python lambdas, functions from outside Keras' modelling modules (e.g.
    `keras.config.enable_unsafe_deserialization`, CVE-2025-1550/9906) and objects from
    packages other than Keras'."""
    found = []
    if isinstance(config, dict):
        class_name, module = config.get("class_name"), config.get("module")
        if isinstance(class_name, str):
            inner = config.get("config")
            if class_name.endswith("Lambda"):
                name = inner.get("name", class_name) if isinstance(inner, dict) else class_name
                found.append(f"Lambda layer {name!r}")
            elif class_name == "__lambda__":
                found.append("a Python lambda")
            elif class_name == "function" and isinstance(module, str):
                if not _in_modules(module, _SAFE_FUNCTION_MODULES):
                    found.append(f"function {module}.{inner}")
            elif (
                isinstance(module, str)
                and not _in_modules(module, _SAFE_PACKAGES)
                and not _registered_in_this_process(config)
            ):
                found.append(f"object {module}.{class_name}")
        for value in config.values():
            found.extend(_unsafe_objects(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(_unsafe_objects(value))
    return found


def _refuse_unsafe(config, path: str, argname: str, why: str) -> None:
    unsafe = _unsafe_objects(config)
    if unsafe:
        raise ValueError(
            f"Refusing to load `{argname}`={path!r}: its config holds "
            f"{', '.join(sorted(set(unsafe)))}, which could run code on load{why}. If you "
            "trust the file's author, pass safe_mode=False."
        )


def check_keras_archive(path: str, argname: str = "filepath") -> None:
    """Raises ValueError if a `.keras` archive is not one, or its config could run code."""
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as error:
        raise ValueError(
            f"`{argname}`={path!r} is not a Keras archive (a .keras file is a zip archive "
            f"holding config.json; {type(error).__name__}: {error}). It may be damaged or "
            "be another kind of file."
        ) from None
    _refuse_unsafe(config, path, argname, "")


def check_h5_file(path: str, argname: str = "filepath") -> None:
    """Raises ValueError if the `.h5` model file would run Python code when loaded."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
    except OSError as error:
        raise ValueError(
            f"`{argname}`={path!r} is not a readable HDF5 file ({error}). Expected a Keras "
            "model saved with model.save('model.h5')."
        ) from error
    if raw is None:
        raise ValueError(
            f"`{argname}`={path!r} holds no model config: it is a weights-only .h5 file. "
            "Build the architecture and call model.load_weights() on it, or pass a "
            "full-model file saved with model.save('model.h5')."
        )
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8")
    _refuse_unsafe(json.loads(raw), path, argname, " (Keras' .h5 loader ignores safe_mode)")


# TensorFlow ops through which a SavedModel's graph can write files or call back into
# Python. A SavedModel runs no Python of its own, but its graph runs whatever ops it holds.
UNSAFE_OPS = frozenset(
    {
        "WriteFile",
        "PyFunc",
        "PyFuncStateless",
        "EagerPyFunc",
        "SaveDataset",
        "SaveDatasetV2",
        "CreateSummaryFileWriter",
        "DebugIdentityV2",
        "DebugIdentityV3",
    }
)


def unsafe_ops(path: str) -> list[str]:
    """The ops of `UNSAFE_OPS` (and `PrintV2` to a file) in a SavedModel's graphs.

    Examples:
        >>> import tempfile, tensorflow as tf
        >>> from finetune_tf.sources.trust import unsafe_ops
        >>> class Writes(tf.Module):
        ...     @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        ...     def __call__(self, x):
        ...         tf.io.write_file("/tmp/anything", "text")
        ...         return x
        >>> path = tempfile.mkdtemp()
        >>> tf.saved_model.save(Writes(), path)
        >>> unsafe_ops(path)
        ['WriteFile']
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        saved_model.ParseFromString(f.read())
    found = set()
    for meta_graph in saved_model.meta_graphs:
        graph = meta_graph.graph_def
        nodes = list(graph.node) + [n for fn in graph.library.function for n in fn.node_def]
        for node in nodes:
            if node.op in UNSAFE_OPS:
                found.add(node.op)
            elif node.op == "PrintV2":
                stream = node.attr["output_stream"].s.decode(errors="replace")
                if stream.startswith("file://"):
                    found.add(f"PrintV2 to {stream}")
    return sorted(found)
