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

from finetune_tf._utils import as_str_path, atomic_file
from finetune_tf.devices import resolve_strategy

KERAS_SUFFIXES = (".keras",)
H5_SUFFIXES = (".h5", ".hdf5")


def _code_carrying_layers(config) -> list[str]:
    """Names of layers in a model config that carry Python code."""
    found = []
    if isinstance(config, dict):
        class_name = config.get("class_name")
        if isinstance(class_name, str) and class_name.endswith("Lambda"):
            inner = config.get("config", {})
            found.append(inner.get("name", class_name) if isinstance(inner, dict) else class_name)
        for value in config.values():
            found.extend(_code_carrying_layers(value))
    elif isinstance(config, list):
        for value in config:
            found.extend(_code_carrying_layers(value))
    return found


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
    unsafe = _code_carrying_layers(json.loads(raw))
    if unsafe:
        raise ValueError(
            f"Refusing to load `{argname}`={path!r}: it contains Lambda layers "
            f"({', '.join(unsafe)}) whose Python code would run on load, and Keras' .h5 "
            "loader does not honour safe_mode. If you trust the file's author, pass "
            "safe_mode=False."
        )


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
        if not zipfile.is_zipfile(path):
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

    Example:

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
    directory = os.path.dirname(os.path.abspath(filepath))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"The directory of `filepath`={filepath!r} does not exist. Create {directory!r} first."
        )
    if os.path.exists(filepath) and not overwrite:
        raise FileExistsError(
            f"`filepath`={filepath!r} exists and overwrite=False. Pass overwrite=True "
            "or choose another path."
        )
    with atomic_file(filepath, suffix=".keras") as tmp:
        model.save(tmp, overwrite=True)
    return filepath
