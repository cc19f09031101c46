"""`DecoderHead`: a head that reconstructs the inputs from the backbone's features.

Pre-training (`Pretrainer`) trains a backbone to encode its inputs well enough
for a decoder to give them back. The decoder sits where a task head sits, so the
FineTuner machinery (compile, fit, checkpoints, strategies) trains it; its task
is a regression onto the inputs themselves (mean squared error).

The decoder is built from the backbone's output shape:

- vectors `(d,)`: `Dense(hidden, relu)` then a linear `Dense` to every input value,
  reshaped to the input shape;
- feature maps `(h, w, c)`, for images `(H, W, C)`: the features averaged over
  positions (as the default head pools them), a `Dense` layer to an `(h, w, 32)` grid,
  one stride-2 `Conv2DTranspose` per doubling from `h` to `H`, a 3x3 `Conv2D` to `C`
  channels, and a `Resizing` when the sizes do not divide evenly;
- anything else: flattened, then the vector decoder.

A decoder of the user's (a Keras layer or model from features to inputs) is
used as given, once its output shape is checked.
"""

from __future__ import annotations

import math

import keras

from finetune_tf._utils import shape_tuple
from finetune_tf.model.head.head import Head

__all__ = ["SEED_CHANNELS", "DecoderHead", "build_decoder"]

SEED_CHANNELS = 32  # channels of the grid the image decoder starts from


class DecoderHead(Head):
    """Reconstructs inputs of `target_shape` from backbone features.

    A regression head (mean squared error on every input value) whose layers are a
    decoder: the one `build_decoder` makes, or `decoder`.

    Args:
        target_shape: tuple. The shape of one input, without the batch axis.
        decoder: Keras layer or model, optional. Maps the features to `target_shape`.
        hidden_units: int. Width of the vector decoder's hidden layer (0: none).
            Defaults to 256.

    Examples:
        >>> import keras
        >>> from finetune_tf.model.head.decoder import DecoderHead
        >>> head = DecoderHead((8, 8, 1))
        >>> head(keras.Input((2, 2, 16))).shape
        (None, 8, 8, 1)
    """

    def __init__(self, target_shape: tuple, decoder=None, hidden_units: int = 256):
        target_shape = shape_tuple(target_shape)
        if any(size is None for size in target_shape):
            raise ValueError(
                f"Pre-training reconstructs the inputs, so it needs a fixed input shape; the "
                f"backbone takes {target_shape}. Build the backbone with a fixed input shape, "
                "e.g. Backbone.from_keras_applications(name, input_shape=(96, 96, 3))."
            )
        super().__init__("regression", math.prod(target_shape), pooling="none", logits=True)
        if decoder is not None and not isinstance(decoder, keras.layers.Layer):
            raise TypeError(
                "`decoder` must be a Keras layer or model mapping the backbone's features to "
                f"inputs of shape {target_shape}, or None to build one. Received: "
                f"decoder={decoder!r} of type {type(decoder).__name__}."
            )
        self.target_shape = target_shape
        self.decoder = decoder
        self.decoder_units = int(hidden_units)

    def __call__(self, features):
        if self.decoder is None:
            return build_decoder(features, self.target_shape, self.decoder_units)
        try:
            outputs = self.decoder(features)
        except Exception as error:  # any Keras build error: say which part failed
            raise ValueError(
                f"`decoder` could not be called on the backbone's features of shape "
                f"{shape_tuple(features.shape[1:])}: {error}"
            ) from None
        got = shape_tuple(outputs.shape[1:])
        if got != self.target_shape:
            raise ValueError(
                f"`decoder` maps the backbone's features {shape_tuple(features.shape[1:])} to "
                f"{got}, but pre-training reconstructs inputs of shape {self.target_shape}. "
                f"End the decoder in an output of shape {self.target_shape}, or pass "
                "decoder=None to build one."
            )
        return keras.layers.Activation("linear", dtype="float32", name="predictions")(outputs)

    def get_config(self) -> dict:
        raise NotImplementedError(
            "A pre-training model is not saved as a FineTuner: keep the pre-trained "
            "`Pretrainer.backbone` (e.g. backbone.model.save(path))."
        )

    def __repr__(self):
        made = "built" if self.decoder is None else repr(self.decoder.name)
        return f"DecoderHead(target_shape={self.target_shape}, decoder={made})"


def build_decoder(features, target_shape: tuple, hidden_units: int = 256):
    """The decoder's output (named `"predictions"`, float32) for `features` (a Keras
    tensor): see the module docstring for its layers.

    Examples:
        >>> import keras
        >>> from finetune_tf.model.head.decoder import build_decoder
        >>> build_decoder(keras.Input((3, 3, 8)), (10, 10, 3)).shape
        (None, 10, 10, 3)
        >>> build_decoder(keras.Input((16,)), (8, 8, 1)).shape
        (None, 8, 8, 1)
    """
    target_shape = shape_tuple(target_shape)
    shape = shape_tuple(features.shape[1:])
    x = features
    if len(shape) == 3 and len(target_shape) == 3 and None not in shape:
        height, width, _ = shape
        # The features as the default head reads them: averaged over positions. A decoder
        # that sees only that vector makes it describe the whole image (docs/pretraining.md).
        x = keras.layers.GlobalAveragePooling2D(name="decoder_pooling")(x)
        x = keras.layers.Dense(
            height * width * SEED_CHANNELS, activation="relu", name="decoder_seed"
        )(x)
        x = keras.layers.Reshape((height, width, SEED_CHANNELS), name="decoder_grid")(x)
        steps = max(0, math.ceil(math.log2(max(target_shape[0] / height, target_shape[1] / width))))
        for i in range(1, steps + 1):
            x = keras.layers.Conv2DTranspose(
                max(16, 2 * SEED_CHANNELS >> i),
                3,
                strides=2,
                padding="same",
                activation="relu",
                name=f"decoder_up_{i}",
            )(x)
        x = keras.layers.Conv2D(target_shape[2], 3, padding="same", name="decoder_conv")(x)
        if shape_tuple(x.shape[1:3]) != target_shape[:2]:
            x = keras.layers.Resizing(*target_shape[:2], name="decoder_resize")(x)
        return keras.layers.Activation("linear", dtype="float32", name="predictions")(x)
    if len(shape) != 1:
        if None in shape:
            raise ValueError(
                f"The decoder cannot be built for features of shape {shape} (not fixed). Pass "
                "decoder= a Keras layer mapping them to the inputs, or give the backbone a "
                "fixed input shape."
            )
        x = keras.layers.Flatten(name="decoder_flatten")(x)
    if hidden_units:
        x = keras.layers.Dense(hidden_units, activation="relu", name="decoder_hidden")(x)
    x = keras.layers.Dense(math.prod(target_shape), dtype="float32", name="decoder_dense")(x)
    return keras.layers.Reshape(target_shape, dtype="float32", name="predictions")(x)
