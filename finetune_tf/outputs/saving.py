"""Loading and saving whole model files: `load_model` and `save_model_atomically`.

Loading goes through `sources.files` and the checks of `sources.trust` (Keras'
`.h5` loader ignores `safe_mode`, so those files are inspected first). Every
file written here is written to a temporary name first and moved into place,
so an interrupted save never damages the previous file.
"""

from __future__ import annotations

import os

import keras

from finetune_tf._utils import as_str_path, atomic_file, require_parent_directory
from finetune_tf.runtime.devices import resolve_strategy
from finetune_tf.sources.files import load_keras_file

__all__ = ["load_model", "save_model_atomically"]


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
        safe_mode: bool. Refuse files that could run code (Lambda layers,
            non-modelling functions or classes, a Hub backbone whose graph does
            more than compute or whose URL is not cached; see
            docs/robustness.md). Pass `False` only for files you trust.
            Defaults to `True`.
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
