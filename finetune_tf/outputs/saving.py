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
from finetune_tf.model.backbone import Backbone
from finetune_tf.runtime.chief import chief_path
from finetune_tf.runtime.devices import resolve_strategy
from finetune_tf.sources.files import load_keras_file

__all__ = [
    "copy_weights_by_layer_name",
    "load_model",
    "read_tuner_file",
    "save_model_atomically",
    "save_tuner_file",
]


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


def save_tuner_file(model, settings: dict, filepath, *, chief: bool, overwrite: bool) -> None:
    """Saves `model` with a tuner's `settings` in its config (`TunedModel.tuner_config`),
    atomically, on the chief only; the model keeps no settings afterwards (a later
    `model.save()` is the model alone)."""
    model.tuner_config = settings
    try:
        with chief_path(chief, filepath) as target:
            save_model_atomically(model, target, overwrite=overwrite)
    finally:
        model.tuner_config = None


def read_tuner_file(filepath, *, safe_mode: bool, strategy) -> tuple[keras.Model, dict]:
    """The model of a file `save_tuner_file` wrote, and the tuner settings it holds, with
    `settings["parts"]` the `(Backbone, augmentation layer or None)` found in the model."""
    model = load_model(filepath, compile=False, safe_mode=safe_mode, strategy=strategy)
    settings = getattr(model, "tuner_config", None)
    if not isinstance(settings, dict) or not isinstance(settings.get("parts"), dict):
        raise ValueError(
            f"`filepath`={os.fspath(filepath)!r} holds a model without FineTuner settings "
            "(it was not written by FineTuner.save). Load the model with "
            "finetune_tf.load_model(filepath), or fine-tune it anew with "
            "FineTuner(Backbone.from_model(model), head)."
        )
    settings = dict(settings)
    parts = settings.pop("parts")
    layer = model.get_layer
    preprocessing = parts.get("preprocessing") and layer(parts["preprocessing"])
    backbone = Backbone(
        layer("backbone").backbone, preprocessing=preprocessing, source=parts.get("source")
    )
    settings["parts"] = (backbone, parts.get("augmentation") and layer(parts["augmentation"]))
    return model, settings


def copy_weights_by_layer_name(source: keras.Model, target: keras.Model) -> None:
    """Each weighted layer of `target` takes the weights of `source`'s layer of the same
    name (layers they share are skipped); a ValueError names a layer `source` lacks."""
    names = {layer.name for layer in source.layers}
    for layer in target.layers:
        if not layer.weights:
            continue
        if layer.name not in names:
            raise ValueError(
                f"The saved model has no layer {layer.name!r} for the restored tuner's "
                "weights: the file's tuner settings do not match its model. Load the model "
                "alone with finetune_tf.load_model."
            )
        origin = source.get_layer(layer.name)
        if origin is not layer:
            layer.set_weights(origin.get_weights())
