"""Layers that turn the user's raw inputs into what the backbone expects.

`ApplicationPreprocessing` applies a `keras.applications` family's
`preprocess_input` inside the model, so a saved model takes raw pixels.
`InputAdapter` resizes images and adapts their channels (28x28 grayscale
digits into a 224x224 RGB network).
"""

from __future__ import annotations

import keras

from finetune_tf._checks import check_choice
from finetune_tf._utils import did_you_mean, shape_tuple

__all__ = ["ApplicationPreprocessing", "InputAdapter"]

_MODES = ("tf", "torch", "caffe")


def _application_modules() -> list[str]:
    return sorted(
        name
        for name in dir(keras.applications)
        if not name.startswith("_")
        and name[0].islower()
        and hasattr(getattr(keras.applications, name), "preprocess_input")
    )


@keras.saving.register_keras_serializable(package="finetune_tf")
class ApplicationPreprocessing(keras.layers.Layer):
    """Applies a `keras.applications` `preprocess_input` inside the model.

    Args:
        application: str. The `keras.applications` module whose
            `preprocess_input` to apply (e.g. `"mobilenet_v2"`, `"resnet"`),
            or one of the generic ImageNet modes `"tf"` (scale to [-1, 1]),
            `"torch"` (scale to [0, 1] and normalise per channel) or `"caffe"`
            (RGB to BGR and subtract the ImageNet means).

    Examples:
        >>> import numpy as np
        >>> from finetune_tf import ApplicationPreprocessing
        >>> layer = ApplicationPreprocessing("mobilenet_v2")
        >>> float(layer(np.full((1, 2, 2, 3), 255.0)).numpy().max())
        1.0
    """

    def __init__(self, application: str, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(application, str):
            raise TypeError(
                "`ApplicationPreprocessing` expects `application` to be a string naming a "
                f"keras.applications module or a mode. Received: application={application!r}"
            )
        if application in _MODES:
            mode = application

            def fn(x):
                return keras.applications.imagenet_utils.preprocess_input(x, mode=mode)

        else:
            module = getattr(keras.applications, application, None)
            if module is None or not hasattr(module, "preprocess_input"):
                valid = _application_modules()
                raise ValueError(
                    f"Unknown preprocessing application={application!r}."
                    f"{did_you_mean(application, valid + list(_MODES))} Expected one of the "
                    f"keras.applications modules ({', '.join(valid)}) or a mode "
                    f"({', '.join(_MODES)})."
                )
            fn = module.preprocess_input
        self.application = application
        self._fn = fn

    def call(self, inputs):
        return self._fn(keras.ops.cast(inputs, self.compute_dtype))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "application": self.application}


@keras.saving.register_keras_serializable(package="finetune_tf")
class InputAdapter(keras.layers.Layer):
    """Resizes images and adapts their channels to a backbone's input shape.

    Spatial size is changed with `keras.ops.image.resize`. Channels are
    adapted by repeating a single channel (grayscale to RGB) or by a learned
    1x1 projection initialised to the channel mean, so the pretrained
    backbone sees sensible inputs at the first step.

    Args:
        target_shape: tuple. The backbone's input shape without the batch
            axis, `(height, width, channels)`; `None` for a flexible height or
            width leaves that axis as it is.
        channels: str. How to adapt the channel count: `"auto"` (repeat a
            single channel, project otherwise), `"repeat"` or `"project"`.
            Defaults to `"auto"`.
        interpolation: str. Resize interpolation. Defaults to `"bilinear"`.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf import InputAdapter
        >>> adapter = InputAdapter(target_shape=(32, 32, 3))
        >>> tuple(adapter(np.zeros((2, 28, 28, 1))).shape)
        (2, 32, 32, 3)
    """

    def __init__(
        self,
        target_shape: tuple,
        channels: str = "auto",
        interpolation: str = "bilinear",
        **kwargs,
    ):
        super().__init__(**kwargs)
        target_shape = shape_tuple(target_shape)
        if len(target_shape) != 3:
            raise ValueError(
                "`InputAdapter` adapts images: `target_shape` must be (height, width, channels). "
                f"Received: target_shape={target_shape}"
            )
        check_choice(
            channels,
            "channels",
            ("auto", "repeat", "project"),
            where="InputAdapter",
            hint="'repeat' copies a single channel, 'project' learns a 1x1 projection, "
            "'auto' repeats one channel and projects any other count.",
        )
        self.target_shape = target_shape
        self.channels = channels
        self.interpolation = interpolation
        self.projection = None
        self._channel_mode = None

    def build(self, input_shape):
        source_channels = input_shape[-1]
        target_channels = self.target_shape[-1]
        if source_channels is None:
            raise ValueError(
                "`InputAdapter` needs a known number of input channels. "
                f"Received: input_shape={input_shape}"
            )
        mode = None
        if target_channels is not None and source_channels != target_channels:
            mode = self.channels
            if mode == "auto":
                mode = "repeat" if source_channels == 1 else "project"
            if mode == "repeat" and source_channels != 1:
                raise ValueError(
                    f"`channels='repeat'` can only expand 1 channel, but the inputs have "
                    f"{source_channels}. Use channels='project' to learn a mapping to "
                    f"{target_channels} channels."
                )
        if mode == "project":
            self.projection = self.add_weight(
                name="projection",
                shape=(source_channels, target_channels),
                initializer=keras.initializers.Constant(1.0 / source_channels),
                trainable=True,
            )
        self._channel_mode = mode

    def call(self, inputs):
        x = keras.ops.cast(inputs, self.compute_dtype)
        height, width, _ = self.target_shape
        if height is not None or width is not None:
            size = (
                height if height is not None else keras.ops.shape(x)[1],
                width if width is not None else keras.ops.shape(x)[2],
            )
            if tuple(x.shape[1:3]) != (height, width):
                x = keras.ops.image.resize(x, size, interpolation=self.interpolation)
        if self._channel_mode == "repeat":
            x = keras.ops.repeat(x, self.target_shape[-1], axis=-1)
        elif self._channel_mode == "project":
            x = keras.ops.matmul(x, keras.ops.cast(self.projection, x.dtype))
        return x

    def compute_output_shape(self, input_shape):
        height, width, channels = self.target_shape
        return (
            input_shape[0],
            height if height is not None else input_shape[1],
            width if width is not None else input_shape[2],
            channels if channels is not None else input_shape[3],
        )

    def get_config(self):
        return {
            **super().get_config(),
            "target_shape": self.target_shape,
            "channels": self.channels,
            "interpolation": self.interpolation,
        }
