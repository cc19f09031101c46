"""`Assembly`: one FineTuner's model, wired from its parts, and the data it takes.

The flow of a fine-tuned model, in the order the layers run:

    raw inputs -> augmentation -> input adapter -> backbone preprocessing
               -> backbone (one `BackboneLayer`) -> head -> predictions

`resolve_parts` checks and resolves a FineTuner's arguments for it, and
`Assembly.build` (or `build_placed`, under a tuner's `Placement`) wires it
once; the parts that training needs later (the backbone layer whose BatchNorm
mode a freeze policy sets, the backbone's features for the feature cache, the
head alone) are its attributes.
`check_inputs` and `check_targets` say, before any step, whether data fits
this model and how to fix it when it does not.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from finetune_tf._utils import shape_tuple
from finetune_tf.model.backbone import Backbone, BackboneLayer
from finetune_tf.model.freeze import FreezePolicy, FreezeReport
from finetune_tf.model.head import Head
from finetune_tf.model.preprocessing import InputAdapter
from finetune_tf.model.tuned_model import TunedModel
from finetune_tf.training.data_checks import check_finite, shapes_compatible

__all__ = ["Assembly", "first_array", "input_plan", "resolve_augmentation", "resolve_parts"]


class Assembly:
    """The wired model of one FineTuner and its named parts.

    Build one with `Assembly.build`. Attributes:
        model: the `TunedModel`, raw inputs to predictions.
        backbone: the `Backbone` inside it.
        head: the `Head` on top.
        backbone_layer: the `BackboneLayer` wrapping the backbone's model.
        features: the backbone's output tensor in `model`'s graph.
        backbone_inputs: the tensor the backbone layer takes in `model`'s graph.
        feature_model: `keras.Model` from raw inputs to `features`.
        augmentation: the augmentation layer, or None.
        input_channels: how an input adapter adapts channels (`InputAdapter`'s `channels`).
        freeze: the `FreezePolicy` applied last (`apply_freeze`).
        freeze_report: its `FreezeReport`.
    """

    def __init__(
        self,
        model,
        backbone,
        head,
        backbone_layer,
        features,
        augmentation,
        freeze,
        report,
        input_channels: str = "auto",
        backbone_inputs=None,
    ):
        self.model = model
        self.backbone = backbone
        self.head = head
        self.backbone_layer = backbone_layer
        self.features = features
        self.backbone_inputs = backbone_inputs
        self.augmentation = augmentation
        inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
        self.feature_model = keras.Model(inputs, features, name=f"{model.name}_features")
        self._head_model = None
        self.input_channels = input_channels
        self.freeze = freeze
        self.freeze_report: FreezeReport = report

    @classmethod
    def build(
        cls,
        backbone: Backbone,
        head: Head,
        freeze: FreezePolicy,
        *,
        input_shape: tuple,
        adapt: bool,
        input_channels: str,
        augmentation,
        name: str,
    ) -> Assembly:
        """Applies `freeze` to `backbone` and wires it to `head` (see the module docstring
        for the order)."""
        check_policy(freeze)
        report = freeze.apply(backbone)
        # === Layers ===
        backbone_layer = BackboneLayer(
            backbone.model, inference_mode=freeze.batchnorm != "train", name="backbone"
        )
        # === Functional Model ===
        inputs = keras.Input(input_shape, dtype=backbone.input_dtype, name="inputs")
        x = inputs
        if augmentation is not None:
            x = augmentation(x)
        if adapt:
            x = InputAdapter(backbone.input_shape, channels=input_channels, name="input_adapter")(x)
        if backbone.preprocessing is not None:
            x = backbone.preprocessing(x)
        features = backbone_layer(x)
        outputs = head(features)
        model = TunedModel(inputs, outputs, name=name)
        parts = (model, backbone, head, backbone_layer, features, augmentation, freeze, report)
        return cls(*parts, input_channels=input_channels, backbone_inputs=x)

    @classmethod
    def build_placed(cls, placement, seed: int | None, *, backbone: Backbone, **parts) -> Assembly:
        """`build` in `placement`'s scope and precision (a `runtime.placement.Placement`), on
        the backbone placed there (`Backbone.placed`); `parts` are `build`'s other arguments."""
        with placement.building():
            backbone = backbone.placed(placement.strategy, placement.precision)
            if seed is not None:
                # Copying the backbone into a strategy's scope draws from the generator; the
                # head must start from the same weights with or without that copy.
                keras.utils.set_random_seed(seed)
            return cls.build(backbone, **parts)

    def rebuilt(
        self,
        placement,
        *,
        backbone: Backbone | None = None,
        head: Head | None = None,
        freeze: FreezePolicy | None = None,
        skip: tuple = (),
    ) -> Assembly:
        """A new `Assembly` like this one (built under `placement`) with `backbone`, `head`
        or `freeze` replaced; the layers it shares with this one are the same objects, the
        others (but those named in `skip`) take this model's weights by layer name."""
        from finetune_tf.outputs.tuner_config import copy_weights_by_layer_name

        old = self.model
        with placement.building():
            new = Assembly.build(
                self.backbone if backbone is None else backbone,
                head=self.head if head is None else head,
                freeze=self.freeze if freeze is None else freeze,
                input_shape=self.input_shape,
                adapt=any(layer.name == "input_adapter" for layer in old.layers),
                input_channels=self.input_channels,
                augmentation=self.augmentation,
                name=old.name,
            )
            copy_weights_by_layer_name(old, new.model, skip=skip)
        return new

    def apply_freeze(self, policy: FreezePolicy) -> FreezeReport:
        """Sets which backbone layers train, and BatchNorm's mode; the caller recompiles."""
        check_policy(policy)
        self.freeze_report = policy.apply(self.backbone)
        self.freeze = policy
        self.backbone_layer.inference_mode = policy.batchnorm != "train"
        return self.freeze_report

    # === Parts ===

    def head_model(self) -> keras.Model:
        """The head alone, from backbone features to predictions (shares the layers)."""
        if self._head_model is None:
            self._head_model = keras.Model(
                self.features, self.model.outputs, name=f"{self.model.name}_head"
            )
        return self._head_model

    @property
    def input_shape(self) -> tuple:
        """The shape of raw inputs the model takes, without the batch axis."""
        return shape_tuple(self.model.inputs[0].shape[1:])

    @property
    def prediction_shape(self) -> tuple:
        """The model's output shape for one example, e.g. `(3,)` or `(6, 6, 3)`."""
        return shape_tuple(self.model.output_shape)[1:]

    # === Data ===

    def check_inputs(self, x, argname: str, method: str) -> None:
        """A ValueError naming `argname` when `x` cannot be this model's inputs."""
        if isinstance(x, tf.data.Dataset):
            spec = x.element_spec
            spec = spec[0] if isinstance(spec, tuple) else spec
            if isinstance(spec, tf.TensorSpec) and spec.shape.rank is not None:
                self._check_sample_shape(tuple(spec.shape)[1:], argname, method)
            return
        array = first_array(x)
        if array is None:
            return
        if len(array.shape) == 0 or array.shape[0] == 0:
            raise ValueError(
                f"`FineTuner.{method}` got an empty `{argname}` (shape {tuple(array.shape)}). "
                "Pass at least one example."
            )
        self._check_sample_shape(tuple(array.shape)[1:], argname, method)
        self._check_dtype(array, argname, method)
        if method != "predict":  # a NaN prediction harms nothing; a NaN step harms all
            check_finite(array, argname, method)

    def _check_dtype(self, array, argname, method):
        """A TypeError when `array` holds strings or Python objects and the model takes
        numbers (TensorFlow would fail in a cast, deep inside the first step)."""
        takes = keras.backend.standardize_dtype(self.model.inputs[0].dtype)
        if takes == "string":
            return
        if isinstance(array, tf.Tensor):
            if array.dtype != tf.string:
                return
            array = array.numpy()
        if array.dtype.kind not in "USO":
            return
        first = array.flat[0] if array.size else None
        if array.dtype.kind in "US" or isinstance(first, (str, bytes)):
            raise TypeError(
                f"`FineTuner.{method}` got `{argname}` holding strings (e.g. {first!r}), but "
                f"the model takes {takes} numbers: its backbone is not a text model. Convert "
                f"numbers held as text first, e.g. x = x.astype('float32'); for text, use a "
                "backbone that takes strings (e.g. a TF Hub text encoder)."
            )
        raise TypeError(
            f"`FineTuner.{method}` got `{argname}` as a NumPy array of Python objects "
            f"(dtype=object, e.g. {first!r} of type {type(first).__name__}), which "
            f"TensorFlow cannot read; the model takes {takes} numbers. Convert it first, "
            "e.g. x = np.asarray(x, dtype='float32') (from pandas: "
            "df.to_numpy(dtype='float32'))."
        )

    def _check_sample_shape(self, shape, argname, method):
        expected = self.input_shape
        if shapes_compatible(shape_tuple(shape), expected):
            return
        hint = (
            f" Pass input_shape={shape_tuple(shape)} to FineTuner to resize and adapt "
            "them inside the model."
            if len(shape) == 3 and len(expected) == 3
            else " Reshape your data to match."
        )
        raise ValueError(
            f"`FineTuner.{method}` got `{argname}` with samples of shape {shape_tuple(shape)}, "
            f"but the model takes {expected}"
            f"{' (the backbone input shape)' if expected == self.backbone.input_shape else ''}."
            + hint
        )

    def check_targets(self, x, y, argname: str, method: str, *, by_head: bool = True) -> None:
        """A ValueError naming `argname` when `y` are not targets of `x` for this head (with
        `by_head=False`, for a loss of the user's: one finite label per example)."""
        array = first_array(y)
        if array is None:
            return
        array = np.asarray(array)
        inputs = first_array(x)
        if inputs is not None and len(inputs) != len(array):
            raise ValueError(
                f"`FineTuner.{method}` got {len(inputs)} inputs but {len(array)} labels in "
                f"`{argname}`. Pass one label per example."
            )
        if by_head:
            self.head.check_targets(array, self.prediction_shape, argname, method)
        elif array.dtype.kind == "f":
            check_finite(array, argname, method)  # a NaN label poisons any loss


def resolve_parts(backbone, head, freeze, input_shape, augmentation) -> dict:
    """`FineTuner`'s model arguments checked, in order, and resolved into `build`'s: the
    `Backbone` (`Backbone.load`), the head, the freeze policy (None: `FreezePolicy.all()`),
    the model's input shape and whether to adapt to it, and the augmentation layer."""
    backbone = Backbone.load(backbone)
    if not isinstance(head, Head):
        raise TypeError(
            "`head` must be a finetune_tf.Head, e.g. Head.classifier(num_classes=5). "
            f"Received: head={head!r} of type {type(head).__name__}."
        )
    freeze = FreezePolicy.all() if freeze is None else freeze
    check_policy(freeze)
    input_shape, adapt = input_plan(backbone, input_shape)
    augmentation = resolve_augmentation(augmentation)
    return {
        "backbone": backbone,
        "head": head,
        "freeze": freeze,
        "input_shape": input_shape,
        "adapt": adapt,
        "augmentation": augmentation,
    }


def check_policy(freeze) -> None:
    """A TypeError unless `freeze` is a `FreezePolicy`."""
    if not isinstance(freeze, FreezePolicy):
        raise TypeError(
            "`freeze` must be a finetune_tf.FreezePolicy, e.g. FreezePolicy.bottom(100) "
            f"or FreezePolicy.all(). Received: freeze={freeze!r}."
        )


def first_array(data):
    """The array-like inside `x` (numpy/tensor), or None for generators etc."""
    if isinstance(data, (np.ndarray, tf.Tensor)):
        return data
    if isinstance(data, (list, tuple)) and data and _is_scalar_or_row(data[0]):
        return np.asarray(data)
    return None


def _is_scalar_or_row(item) -> bool:
    """A label or number (or a list of them): what a Python list of examples holds."""
    if isinstance(item, list):
        return bool(item) and _is_scalar_or_row(item[0])
    return isinstance(item, (int, float, str, bytes, np.generic))


def input_plan(backbone: Backbone, input_shape) -> tuple[tuple, bool]:
    """The model's input shape for `FineTuner(input_shape=...)`, and whether images
    must be adapted (resized, channels changed) to the backbone's input shape."""
    target = backbone.input_shape
    if input_shape is None:
        return target, False
    if isinstance(input_shape, int):
        input_shape = (input_shape,)
    try:
        shape = shape_tuple(input_shape)
    except (TypeError, ValueError):
        shape = None
    if shape is None or any(d is not None and d < 1 for d in shape):
        raise ValueError(
            "`input_shape` must be a tuple of positive sizes without the batch axis, "
            f"e.g. (28, 28, 1). Received: input_shape={input_shape!r}."
        )
    if shapes_compatible(shape, target):
        return shape, False
    if len(shape) == 3 and len(target) == 3:
        return shape, True
    raise ValueError(
        f"`input_shape`={shape} cannot be adapted to the backbone's input shape {target}: "
        "only images (height, width, channels) are resized and channel-adapted. "
        "Reshape your data to the backbone's input shape."
    )


def resolve_augmentation(augmentation):
    """`augmentation` as one Keras layer (a list becomes a Sequential), or None."""
    if augmentation is None:
        return None
    if isinstance(augmentation, (list, tuple)):
        layers = list(augmentation)
        if layers and all(isinstance(layer, keras.layers.Layer) for layer in layers):
            return keras.Sequential(layers, name="augmentation")
    elif isinstance(augmentation, keras.layers.Layer):
        return augmentation
    raise TypeError(
        "`augmentation` must be a Keras layer or a list of Keras layers, e.g. "
        "[keras.layers.RandomFlip('horizontal'), keras.layers.RandomRotation(0.1)]. "
        f"Received: augmentation={augmentation!r}."
    )
