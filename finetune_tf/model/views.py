"""`TwoViews`: the two random views of each input that contrastive pre-training compares.

A contrastive method (SimCLR) learns features that agree on two random
augmentations of the same input and differ between inputs. `TwoViews` makes those
views as a Keras layer that acts in training only (as an augmentation layer does):
a batch of `n` inputs becomes `2n`, the first view of each input then the second,
so input `i` and input `i + n` are a positive pair (`NTXent`). With `paired=True`
the batch holds the pairs already (an input and one of its nearest neighbours,
interleaved: `Pretrainer` makes such batches), and each row gets one view. At
inference inputs pass unchanged, so the model's features are the backbone's on
clean inputs.
"""

from __future__ import annotations

import keras

from finetune_tf._checks import check_number

__all__ = ["TwoViews"]


@keras.saving.register_keras_serializable(package="finetune_tf")
class TwoViews(keras.layers.Layer):
    """Two random augmentations of every input, stacked on the batch axis, in training.

    Images (rank-4 inputs) are shifted, rotated and zoomed a little (each view its own
    draw); vectors have a fraction `dropout` of their values zeroed. Both then get Gaussian
    noise of standard deviation `noise` times the batch's. The defaults are mild: on 8x8
    digits stronger views hurt (docs/benchmarks.md).

    Args:
        noise: float >= 0. The noise's standard deviation relative to the batch's.
            Defaults to 0.1.
        shift: float in [0, 1). The largest shift of an image, as a fraction of its
            height and width. Defaults to 0.1.
        rotation: float in [0, 1). The largest rotation, as a fraction of a full turn.
            Defaults to 0.03 (11 degrees).
        zoom: float in [0, 1). The largest zoom in or out, as a fraction. Defaults to 0.05.
        dropout: float in [0, 1). The fraction of a vector's values zeroed. Defaults to 0.2.
        paired: bool. The batch holds pairs, interleaved (rows `2i` and `2i + 1`): each
            row gets one view, first rows then second rows, so a batch of `2n` stays `2n`.
            Defaults to False (each input gives both views).
        seed: int, optional. Seeds the random draws.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.model.views import TwoViews
        >>> layer = TwoViews(seed=0)
        >>> x = np.random.rand(4, 8, 8, 1).astype("float32")
        >>> tuple(layer(x, training=True).shape), tuple(layer(x).shape)
        ((8, 8, 8, 1), (4, 8, 8, 1))
        >>> tuple(TwoViews(paired=True, seed=0)(x, training=True).shape)
        (4, 8, 8, 1)
    """

    def __init__(
        self,
        noise: float = 0.1,
        shift: float = 0.1,
        rotation: float = 0.03,
        zoom: float = 0.05,
        dropout: float = 0.2,
        paired: bool = False,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        where = "TwoViews"
        self.noise = check_number(noise, "noise", low=0, where=where, type_error=ValueError)
        fraction = {"high": 1, "high_inclusive": False, "where": where, "type_error": ValueError}
        self.shift = check_number(shift, "shift", low=0, **fraction)
        self.rotation = check_number(rotation, "rotation", low=0, **fraction)
        self.zoom = check_number(zoom, "zoom", low=0, **fraction)
        self.dropout = check_number(dropout, "dropout", low=0, **fraction)
        if not isinstance(paired, bool):
            raise TypeError(
                f"`TwoViews(paired)` must be True or False. Received: paired={paired!r} of "
                f"type {type(paired).__name__}."
            )
        self.paired = paired
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._image_layers = []

    def build(self, input_shape):
        if len(input_shape) == 4:
            seed = self.seed
            self._image_layers = [
                keras.layers.RandomTranslation(
                    self.shift, self.shift, fill_mode="constant", seed=seed, dtype="float32"
                ),
                keras.layers.RandomRotation(
                    self.rotation,
                    fill_mode="constant",
                    seed=None if seed is None else seed + 1,
                    dtype="float32",
                ),
                keras.layers.RandomZoom(
                    self.zoom,
                    fill_mode="constant",
                    seed=None if seed is None else seed + 2,
                    dtype="float32",
                ),
            ]
            self._image_layers = [
                layer
                for layer, amount in zip(
                    self._image_layers, (self.shift, self.rotation, self.zoom), strict=True
                )
                if amount
            ]
        self.built = True

    def call(self, inputs, training=None):
        if not training:
            return inputs
        x = keras.ops.cast(inputs, "float32")
        if self.paired:  # rows 2i, 2i + 1 -> rows i, i + n
            rest = tuple(keras.ops.shape(x)[1:])
            x = keras.ops.reshape(x, (-1, 2, *rest))
            x = keras.ops.reshape(keras.ops.swapaxes(x, 0, 1), (-1, *rest))
        else:
            x = keras.ops.concatenate([x, x], axis=0)
        if len(x.shape) == 4:
            for layer in self._image_layers:
                x = layer(x, training=True)
        elif self.dropout:
            keep = keras.random.uniform(keras.ops.shape(x), seed=self.seed_generator)
            x = x * keras.ops.cast(keep >= self.dropout, x.dtype)
        if self.noise:
            noise = keras.random.normal(keras.ops.shape(x), seed=self.seed_generator)
            x = x + noise * keras.ops.std(x) * self.noise
        return keras.ops.cast(x, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "noise": self.noise,
            "shift": self.shift,
            "rotation": self.rotation,
            "zoom": self.zoom,
            "dropout": self.dropout,
            "paired": self.paired,
            "seed": self.seed,
        }
