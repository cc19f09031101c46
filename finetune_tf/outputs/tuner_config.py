"""`TunerConfig`: a FineTuner's settings as plain data, and the tuner's own file.

What `FineTuner.get_config` returns and `FineTuner.from_config` rebuilds from (the
backbone's architecture, the augmentation, the head, the freeze policy, the input
settings, the seed, the last `compile()` settings, and the class names and old-class
count that `training.growing.Growth.settings` adds), and what `FineTuner.save`
writes beside the model in one `.keras` file (`TunedModel.tuner_config`), where the
backbone and the augmentation are the model's own layers. `FineTuner.load` is
`TunerConfig.load`: it reads the file back (`TunerConfig.read`), has FineTuner build
itself from the settings and gives it the file's weights (`copy_weights_by_layer_name`).
Where a tuner trains (strategy, precision) is not part of it.
"""

from __future__ import annotations

import copy
import os

import keras

from finetune_tf.model.backbone import Backbone
from finetune_tf.model.freeze import FreezePolicy
from finetune_tf.model.head import Head
from finetune_tf.outputs.saving import load_model, save_model_atomically
from finetune_tf.runtime.chief import chief_path
from finetune_tf.runtime.placement import Placement
from finetune_tf.training.compile import Compiler

__all__ = ["TunerConfig", "copy_weights_by_layer_name"]


class TunerConfig:
    """A FineTuner's settings, with its backbone and augmentation layer.

    Args:
        settings: dict. The head's and the freeze policy's configs, whether the freeze
            policy was chosen, the input shape (None: the backbone's) and channels,
            `jit_compile`, the seed, the model's name and the compile settings
            (`Compiler.get_config`, None before `compile()`).
        backbone: `Backbone`.
        augmentation: Keras layer or None.
    """

    def __init__(self, settings: dict, backbone: Backbone, augmentation=None):
        self.settings = settings
        self.backbone = backbone
        self.augmentation = augmentation

    @classmethod
    def of(cls, assembly, compiler, freeze_chosen: bool, seed) -> TunerConfig:
        """The settings of a tuner with this `Assembly` and `Compiler`, whose freeze policy
        was chosen or not, built with `seed`."""
        backbone, input_shape = assembly.backbone, assembly.input_shape
        settings = {
            "head": assembly.head.get_config(),
            "freeze": assembly.freeze.get_config(),
            "freeze_chosen": freeze_chosen,
            "input_shape": None if input_shape == backbone.input_shape else list(input_shape),
            "input_channels": assembly.input_channels,
            "jit_compile": compiler.jit_compile,
            "seed": seed,
            "name": assembly.model.name,
            "compile": compiler.get_config(),
        }
        return cls(settings, backbone, assembly.augmentation)

    def get_config(self) -> dict:
        """The settings, the backbone's architecture (no weights) and the augmentation."""
        augmentation = self.augmentation
        return {
            "backbone": self.backbone.get_config(),
            "augmentation": (
                None if augmentation is None else keras.saving.serialize_keras_object(augmentation)
            ),
            **self.settings,
        }

    @classmethod
    def from_config(cls, config: dict) -> TunerConfig:
        """What `get_config` returned, with a fresh backbone and augmentation layer."""
        config = copy.deepcopy(config)  # Keras' deserialization consumes what it reads
        backbone = Backbone.from_config(config.pop("backbone"))
        augmentation = config.pop("augmentation", None)
        if augmentation is not None:
            augmentation = keras.saving.deserialize_keras_object(augmentation)
        return cls(config, backbone, augmentation)

    @property
    def freeze_chosen(self) -> bool:
        """Whether the user chose the freeze policy (`fine_tune` keeps a chosen one)."""
        return self.settings["freeze_chosen"]

    def tuner_arguments(self) -> dict:
        """`FineTuner`'s arguments, but where it trains (strategy, precision, memory)."""
        settings = self.settings
        input_shape = settings["input_shape"]
        return {
            "backbone": self.backbone,
            "head": Head.from_config(settings["head"]),
            "freeze": FreezePolicy.from_config(settings["freeze"]),
            "input_shape": None if input_shape is None else tuple(input_shape),
            "input_channels": settings["input_channels"],
            "augmentation": self.augmentation,
            "jit_compile": settings["jit_compile"],
            "seed": settings["seed"],
            "name": settings["name"],
        }

    def compile_arguments(self, safe_mode: bool = True) -> dict | None:
        """The last `compile()`'s arguments (None: the tuner was not compiled)."""
        compiled = self.settings.get("compile")
        if compiled is None:
            return None
        return Compiler.arguments_from_config(compiled, safe_mode=safe_mode)

    def save(self, model: keras.Model, filepath, *, chief: bool, overwrite: bool) -> None:
        """Saves `model` with these settings and the names of the parts it holds (the
        augmentation and preprocessing layers, and the backbone's source)."""
        augmentation, preprocessing = self.augmentation, self.backbone.preprocessing
        settings = dict(self.settings)
        settings["parts"] = {
            "augmentation": None if augmentation is None else augmentation.name,
            "preprocessing": None if preprocessing is None else preprocessing.name,
            "source": self.backbone.source,
        }
        _save_tuner_file(model, settings, filepath, chief=chief, overwrite=overwrite)

    @classmethod
    def read(
        cls, filepath, *, safe_mode: bool, strategy, precision
    ) -> tuple[keras.Model, TunerConfig]:
        """The model of a file `save` wrote, and its settings, with the backbone (placed
        under `strategy` in `precision`) and the augmentation layer found in the model."""
        model, settings = _read_tuner_file(filepath, safe_mode=safe_mode, strategy=strategy)
        backbone, augmentation = settings.pop("parts")
        with strategy.scope():  # the file's precision is not this tuner's: recast
            backbone = backbone.placed(strategy, precision, exact=True)
        return model, cls(settings, backbone, augmentation)

    @classmethod
    def load(cls, filepath, build, placement: Placement, *, safe_mode: bool):
        """The tuner of a file `save` wrote, with its weights: `build(config, safe_mode=...,
        strategy=..., mixed_precision=..., memory_growth=None)` makes it from the settings
        (FineTuner's `_from_config`), where `placement` says."""
        strategy = placement.strategy  # the file's variables are made in its scope
        model, config = cls.read(
            filepath, safe_mode=safe_mode, strategy=strategy, precision=placement.precision
        )
        tuner = build(
            config,
            safe_mode=safe_mode,
            strategy=strategy,
            mixed_precision=placement.precision,
            memory_growth=None,
        )
        with tuner.placement.scope():
            copy_weights_by_layer_name(model, tuner.model)
        return tuner


def _save_tuner_file(model, settings: dict, filepath, *, chief: bool, overwrite: bool) -> None:
    """Saves `model` with a tuner's `settings` in its config (`TunedModel.tuner_config`),
    atomically, on the chief only; the model keeps no settings afterwards (a later
    `model.save()` is the model alone)."""
    model.tuner_config = settings
    try:
        with chief_path(chief, filepath) as target:
            save_model_atomically(model, target, overwrite=overwrite)
    finally:
        model.tuner_config = None


def _read_tuner_file(filepath, *, safe_mode: bool, strategy) -> tuple[keras.Model, dict]:
    """The model of a file `_save_tuner_file` wrote, and the tuner settings it holds, with
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


def copy_weights_by_layer_name(source: keras.Model, target: keras.Model, skip=()) -> None:
    """Each weighted layer of `target` takes the weights of `source`'s layer of the same
    name (layers they share, and those named in `skip`, are skipped); a ValueError names a
    layer `source` lacks."""
    names = {layer.name for layer in source.layers}
    for layer in target.layers:
        if not layer.weights or layer.name in skip:
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
