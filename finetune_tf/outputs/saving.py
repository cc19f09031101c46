"""Loading and saving model files safely.

`.keras` archives go through Keras' own loader with `safe_mode`. Keras'
legacy `.h5` loader ignores `safe_mode` (CVE-2025-9905), so `.h5` files are
inspected here first: a file whose config holds a `Lambda` layer (marshalled
Python bytecode) is refused unless the caller passes `safe_mode=False`.
Every file written here is written to a temporary name first and moved into
place, so an interrupted save never damages the previous file.
"""

from __future__ import annotations

import json
import os
import zipfile

import keras

from finetune_tf._utils import as_str_path, atomic_file, require_parent_directory
from finetune_tf.runtime.devices import resolve_strategy

__all__ = [
    "H5_SUFFIXES",
    "KERAS_SUFFIXES",
    "check_h5_file",
    "check_keras_archive",
    "load_keras_file",
    "load_model",
    "save_model_atomically",
]

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")


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
            check_h5_file(path, argname)
    elif lower.endswith(KERAS_SUFFIXES):
        if safe_mode:
            check_keras_archive(path, argname)  # before Keras: a second line of defence
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


def load_model(
    filepath: str | os.PathLike,
    *,
    compile: bool = True,
    safe_mode: bool = True,
    strategy=None,
):
    """Loads a model saved by `FineTuner.save` (or any `.keras` / `.h5` model).

    Equivalent to `keras.models.load_model` with finetune_tf's layers
    registered, plus a safety check of `.h5` files, which Keras loads without
    honouring `safe_mode`.

    Args:
        filepath: str or path. The `.keras` or `.h5` file.
        compile: bool. Whether to restore the compiled loss, metrics and
            optimizer. Defaults to `True`.
        safe_mode: bool. Refuse files that would run Python code on load
            (Lambda layers). Pass `False` only for files you trust. Defaults
            to `True`.
        strategy: None, `"auto"` or a `tf.distribute.Strategy`. Restore the
            model and its optimizer in this strategy's scope, to go on
            training on several devices (`"auto"` picks as
            `FineTuner(strategy="auto")` does). Defaults to None: TensorFlow's
            current strategy.

    Returns:
        The `keras.Model`.

    Examples:
        >>> import os, tempfile, keras, numpy as np
        >>> import finetune_tf
        >>> model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> path = os.path.join(tempfile.mkdtemp(), "model.keras")
        >>> model.save(path)
        >>> restored = finetune_tf.load_model(path)
        >>> bool(np.allclose(restored.predict(np.ones((1, 3)), verbose=0),
        ...                  model.predict(np.ones((1, 3)), verbose=0)))
        True
    """
    with resolve_strategy(strategy).scope():
        return load_keras_file(filepath, safe_mode=safe_mode, compile=compile)


def save_model_atomically(model: keras.Model, filepath, *, overwrite: bool = True) -> str:
    """Saves `model` to a `.keras` file via a temporary file and an atomic rename."""
    filepath = as_str_path(filepath, "filepath", "a path ending in .keras")
    if not filepath.endswith(".keras"):
        raise ValueError(
            "`filepath` must be a path ending in .keras (Keras 3's native format). "
            f"Received: filepath={filepath!r}. Use e.g. 'tuned.keras'; for a serving "
            "SavedModel use model.export(dir)."
        )
    require_parent_directory(filepath, "filepath")
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(
            f"`filepath`={filepath!r} exists and overwrite=False. Pass overwrite=True "
            "or choose another path."
        )
    with atomic_file(filepath, suffix=".keras") as tmp:
        model.save(tmp, overwrite=True)
    return filepath
