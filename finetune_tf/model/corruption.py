"""`Corruption`: the noise or masking a pre-training run puts on its inputs.

A denoising or masked auto-encoder learns features by reconstructing clean
inputs from corrupted ones. `Corruption` is that corruption as a Keras layer
that acts in training only (as an augmentation layer does), so the model the
`Pretrainer` trains takes clean inputs and its targets are those same inputs.
"""

from __future__ import annotations

import keras

from finetune_tf._checks import check_choice, check_int, check_number

__all__ = ["METHODS", "Corruption"]

# What each pre-training method does to a training input (see `Corruption`).
METHODS = ("autoencoder", "denoising", "masked")


@keras.saving.register_keras_serializable(package="finetune_tf")
class Corruption(keras.layers.Layer):
    """Corrupts inputs while training, for denoising and masked auto-encoders.

    Methods:
        `"autoencoder"`: no corruption (plain reconstruction).
        `"denoising"`: adds Gaussian noise of standard deviation `rate` times the
            standard deviation of the batch, so the same `rate` suits pixels in
            [0, 255] and standardised features alike.
        `"masked"`: zeroes a fraction `rate` of the input: square patches of
            `patch_size` pixels (all channels) of images (rank-4 inputs), single
            values of anything else (features of vectors).

    At inference (`training=False`) inputs pass unchanged.

    Args:
        method: str. `"autoencoder"`, `"denoising"` or `"masked"`.
        rate: float >= 0. The noise level: for denoising the noise's standard
            deviation relative to the batch's, for masked the fraction masked (below 1).
            Defaults to 0.5.
        patch_size: int. The side of a masked image patch, in pixels. Defaults to 2.
        seed: int, optional. Seeds the random draws.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.model.corruption import Corruption
        >>> layer = Corruption("masked", rate=0.5, seed=0)
        >>> x = np.ones((2, 8, 8, 1), "float32")
        >>> masked = np.asarray(layer(x, training=True))
        >>> 0.2 < float((masked == 0).mean()) < 0.8, bool((np.asarray(layer(x)) == x).all())
        (True, True)
    """

    def __init__(
        self,
        method: str = "denoising",
        rate: float = 0.5,
        patch_size: int = 2,
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.method = check_choice(method, "method", METHODS, where="Corruption")
        self.rate = check_number(
            rate,
            "rate",
            low=0,
            high=1 if self.method == "masked" else None,
            high_inclusive=False,
            where="Corruption",
            meaning="the noise level (denoising) or the fraction masked (masked)",
            type_error=ValueError,
        )
        self.patch_size = check_int(patch_size, "patch_size", where="Corruption")
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.supports_masking = True

    def call(self, inputs, training=None):
        if not training or self.method == "autoencoder" or self.rate == 0:
            return inputs
        x = keras.ops.cast(inputs, self.compute_dtype)
        if self.method == "denoising":
            scale = keras.ops.std(x) * self.rate
            noise = keras.random.normal(keras.ops.shape(x), seed=self.seed_generator)
            return x + keras.ops.cast(noise, x.dtype) * keras.ops.cast(scale, x.dtype)
        return x * keras.ops.cast(self._keep(x), x.dtype)

    def _keep(self, x):
        """1 where the input stays, 0 where it is masked."""
        shape = keras.ops.shape(x)
        if len(x.shape) != 4:
            return keras.random.uniform(shape, seed=self.seed_generator) >= self.rate
        size = self.patch_size
        rows, cols = shape[1], shape[2]
        grid = (shape[0], (rows + size - 1) // size, (cols + size - 1) // size, 1)
        keep = keras.ops.cast(
            keras.random.uniform(grid, seed=self.seed_generator) >= self.rate, "float32"
        )
        keep = keras.ops.repeat(keras.ops.repeat(keep, size, axis=1), size, axis=2)
        return keep[:, :rows, :cols, :]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {
            **super().get_config(),
            "method": self.method,
            "rate": self.rate,
            "patch_size": self.patch_size,
            "seed": self.seed,
        }
