"""`Pretrainer`: unsupervised pre-training of a backbone on unlabeled inputs.

Many unlabeled examples, few labels: train the backbone first to reconstruct
its inputs (an auto-encoder, denoising or masked), then fine-tune it with a
`FineTuner` on the labels.

A `Pretrainer` is a `FineTuner` underneath: the head is a decoder
(`DecoderHead`), the corruption a training-only input layer (`Corruption`, where
augmentation goes), the targets are the clean inputs, and the whole backbone
trains. So progress, `seed=`, `checkpoint_dir=`, strategies, mixed precision and
the checks of `fit` are those of `FineTuner`.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from finetune_tf._checks import check_choice, check_int, check_number
from finetune_tf.finetuner import FineTuner
from finetune_tf.model.backbone import Backbone
from finetune_tf.model.corruption import METHODS, Corruption
from finetune_tf.model.freeze import FreezePolicy
from finetune_tf.model.head.decoder import DecoderHead
from finetune_tf.model.head.projection import ProjectionHead
from finetune_tf.model.views import TwoViews
from finetune_tf.training.feature_scale import rescale_features
from finetune_tf.training.fit_args import FitArgs, split_index
from finetune_tf.training.neighbors import nearest_neighbors, neighbor_batches, self_pairs

__all__ = [
    "CONTRASTIVE_BATCH_SIZE",
    "NEIGHBORS",
    "PRETRAIN_MAX_EPOCHS",
    "PRETRAIN_METHODS",
    "PRETRAIN_MIN_EPOCHS",
    "PRETRAIN_STEPS",
    "Pretrainer",
]

# `epochs="auto"`: at least this many optimizer steps, within these epochs (docs/pretraining.md).
PRETRAIN_STEPS = 5000
PRETRAIN_MIN_EPOCHS = 5
PRETRAIN_MAX_EPOCHS = 500
# What `views=` passes on to the paired `TwoViews` the Pretrainer builds.
TWO_VIEWS_SETTINGS = ("noise", "shift", "rotation", "zoom", "dropout")
DEFAULT_RATE = {"autoencoder": 0.0, "denoising": 0.5, "masked": 0.5, "contrastive": 0.1}
# The reconstruction methods (`Corruption`) and SimCLR's (`TwoViews`, `ProjectionHead`).
PRETRAIN_METHODS = (*METHODS, "contrastive")
# Contrastive learning compares each input with the rest of its batch: a large default batch.
CONTRASTIVE_BATCH_SIZE = 256
# Contrastive positives: an input and one of its nearest neighbours, drawn from this many.
NEIGHBORS = 5
# The inputs the features' scale is measured on after contrastive training (arrays, datasets).
SCALE_EXAMPLES = 4096
SCALE_BATCHES = 16


class Pretrainer:
    """Pre-trains a `Backbone` without labels: by reconstructing its inputs, or contrastively.

    The backbone's weights train in place, like a `FineTuner`'s; `fit` returns the
    `History`, and `backbone` is then ready for `FineTuner(backbone, head)`. A
    backbone already pretrained (`keras.applications`, a Hub model, a file) trains
    on on your own unlabeled data the same way (domain-adaptive pre-training).

    Args:
        backbone: `Backbone`, or anything `Backbone.load` accepts.
        method: str. `"denoising"` (reconstruct inputs from noisy ones), `"masked"`
            (from inputs with patches or features zeroed) or `"autoencoder"` (plain
            reconstruction), or `"contrastive"` (SimCLR with nearest-neighbour pairs: the
            pooled features of a random view of an input and of one of its `neighbors`,
            through a projection MLP (`ProjectionHead`), agree and differ from the other
            inputs', by the `NTXent` loss; the views are `TwoViews`). Defaults to
            `"denoising"`.
        decoder: Keras layer or model, optional. Maps the backbone's features to the
            inputs; by default one is built from the backbone's output shape (a Dense
            decoder for vectors, transposed convolutions for image feature maps; see
            `DecoderHead`).
        noise: float in [0, 1) or `"auto"`. The noise's standard deviation relative to
            the data's (denoising, and on top of the views for contrastive), or the
            fraction masked (masked). `"auto"`: 0.5 (0.1 for contrastive).
        patch_size: int. The side of a masked image patch in pixels. Defaults to 2.
        temperature: float > 0. The contrastive loss's temperature. Defaults to 0.2.
        neighbors: int >= 0 or `"auto"`. Contrastive only: each input's positive is a view
            of one of its `neighbors` nearest inputs (by the backbone's pooled features
            before training, found when `fit` gets an array), drawn anew each epoch; 0:
            a second view of the input itself (plain SimCLR, also what a
            `tf.data.Dataset` or a folder trains with). `"auto"`: 5.
        views: `TwoViews`, optional. Contrastive only: the random views (how far images
            shift, rotate, zoom, the noise); by default `TwoViews(noise=noise)`.
        strategy, mixed_precision, jit_compile, memory_growth, seed: as for `FineTuner`.
        name: str. The model's name. Defaults to `"pretrainer"`.

    Attributes:
        model: the `keras.Model` that trains (inputs to reconstructed inputs).
        tuner: the `FineTuner` underneath.
        feature_scale: float or None. After a contrastive `fit`: the factor the backbone's
            last convolution or `Dense` layer was multiplied by, so that its pooled features
            have a standard deviation of about 1 (None: not done, the backbone does not end
            so; `finetune_tf.training.feature_scale`).

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import Backbone, FineTuner, Head, Pretrainer
        >>> inputs = keras.Input((16,))
        >>> backbone = Backbone.from_model(
        ...     keras.Model(inputs, keras.layers.Dense(8, activation="relu")(inputs)))
        >>> pretrainer = Pretrainer(backbone, method="denoising", seed=0)
        >>> history = pretrainer.fit(np.random.rand(64, 16), epochs=2, verbose=0)
        >>> len(history.history["loss"])
        2
        >>> tuner = FineTuner(pretrainer.backbone, Head.classifier(3))
    """

    def __init__(
        self,
        backbone,
        *,
        method: str = "denoising",
        decoder=None,
        noise: float | str = "auto",
        patch_size: int = 2,
        temperature: float = 0.2,
        neighbors: int | str = "auto",
        views: TwoViews | None = None,
        strategy="auto",
        mixed_precision="auto",
        jit_compile="auto",
        memory_growth: bool | None = True,
        seed: int | None = None,
        name: str = "pretrainer",
    ):
        method = check_choice(method, "method", PRETRAIN_METHODS, where="Pretrainer")
        if noise == "auto":
            noise = DEFAULT_RATE[method]
        else:
            masked = method == "masked"
            noise = check_number(
                noise,
                "noise",
                low=0,
                high=1 if masked else None,
                high_inclusive=False,
                also='"auto"',
                where="Pretrainer",
                meaning=(
                    f"the fraction masked, for method={method!r}"
                    if masked
                    else "the noise's standard deviation relative to the data's, for "
                    f"method={method!r}"
                ),
                hint=f'"auto" picks {DEFAULT_RATE[method]}.',
                type_error=ValueError,
            )
        self._original = Backbone.load(backbone)
        if keras.backend.standardize_dtype(self._original.input_dtype) == "string":
            raise TypeError(
                f"Pre-training reconstructs the inputs, but backbone {self._original.name!r} "
                "takes strings (a text encoder): there are no numbers to reconstruct. Pre-train "
                "text encoders with their own objective (e.g. masked-token prediction)."
            )
        self.method = method
        self.noise = float(noise)
        self.neighbors = self._contrastive_only(method, "neighbors", neighbors, "auto")
        self._contrastive_only(method, "views", views, None)
        if neighbors == "auto":
            self.neighbors = NEIGHBORS if method == "contrastive" else 0
        elif method == "contrastive":
            self.neighbors = check_int(
                neighbors,
                "neighbors",
                minimum=0,
                also='"auto"',
                where="Pretrainer",
                meaning="how many nearest inputs each input's positive is drawn from",
                hint=f'"auto" picks {NEIGHBORS}; 0 pairs each input with itself (SimCLR).',
                type_error=ValueError,
            )
        if method == "contrastive":
            if decoder is not None:
                raise ValueError(
                    "`decoder` applies to the reconstruction methods; method='contrastive' "
                    f"trains a projection head instead. Received: decoder={decoder!r}. Leave "
                    "decoder=None, or pick method='denoising', 'masked' or 'autoencoder'."
                )
            if views is not None and not isinstance(views, TwoViews):
                raise TypeError(
                    "`Pretrainer(views)` takes a finetune_tf.model.views.TwoViews layer, e.g. "
                    f"TwoViews(shift=0.1, rotation=0.03). Received: views of type "
                    f"{type(views).__name__}. Pass a TwoViews, or None for the default views."
                )
            settings = {} if views is None else views.get_config()
            settings = {key: settings[key] for key in TWO_VIEWS_SETTINGS if key in settings}
            settings.setdefault("noise", self.noise)
            corruption = TwoViews(**settings, paired=True, seed=seed, name="views")
            head = ProjectionHead(temperature=temperature)
        else:
            corruption = Corruption(method, self.noise, patch_size, seed=seed, name="corruption")
            head = DecoderHead(self._original.input_shape, decoder)
        self.tuner = FineTuner(
            self._original,
            head,
            freeze=FreezePolicy.none(),
            augmentation=corruption,
            strategy=strategy,
            mixed_precision=mixed_precision,
            jit_compile=jit_compile,
            memory_growth=memory_growth,
            seed=seed,
            name=name,
        )
        self.model = self.tuner.model
        self.feature_scale = None

    @staticmethod
    def _contrastive_only(method: str, name: str, value, default):
        """`value`, refused unless `method` is contrastive or it is the `default`."""
        if method != "contrastive" and value is not default and value != default:
            raise ValueError(
                f"`Pretrainer({name})` applies to method='contrastive' only; "
                f"method={method!r} reconstructs its inputs. Received: {name}={value!r}. "
                f"Leave {name}={default!r}, or pick method='contrastive'."
            )
        return value

    @property
    def backbone(self) -> Backbone:
        """The pre-trained `Backbone`, with float32 weights of its own (not a strategy's or
        mixed-precision copy): the one given, trained in place."""
        trained = self.tuner.backbone
        if trained is not self._original:
            self._original.model.set_weights(trained.model.get_weights())
        return self._original

    def compile(
        self,
        optimizer="adam",
        loss="auto",
        metrics="auto",
        *,
        learning_rate: float | None = 1e-3,
        **kwargs,
    ) -> None:
        """Configures training, like `FineTuner.compile`; the default loss is the mean
        squared error of the reconstruction. `fit` compiles with the defaults if needed."""
        self.tuner.compile(optimizer, loss, metrics, learning_rate=learning_rate, **kwargs)

    def fit(
        self,
        x=None,
        y=None,
        *,
        epochs: int | str = "auto",
        checkpoint_dir: str | os.PathLike | None = None,
        **kwargs,
    ) -> keras.callbacks.History:
        """Trains the backbone and decoder to reconstruct `x`; returns the `History`.

        Args:
            x: unlabeled inputs: an array, a `tf.data.Dataset` of input batches (the
                labels of `(inputs, labels)` elements are dropped), or the path of a
                folder of images (read with `keras.utils.image_dataset_from_directory`,
                sized to the backbone's input).
            y: must be None: pre-training uses no labels.
            epochs: int or `"auto"`: enough epochs for about 5000 optimizer steps
                (between 5 and 500). Defaults to `"auto"`.
            checkpoint_dir: as for `FineTuner.fit`: resume the same call after a crash.
            **kwargs: what `keras.Model.fit` takes (`batch_size`, `callbacks`,
                `validation_split`, `validation_data` of unlabeled inputs, ...).
        """
        where = "Pretrainer.fit"
        if y is not None:
            raise ValueError(
                f"`{where}` trains without labels, but got y of type {type(y).__name__}. "
                "Pass the inputs alone, e.g. pretrainer.fit(x); use the labels later with "
                "FineTuner(pretrainer.backbone, head).fine_tune(x_labeled, y)."
            )
        if epochs != "auto":
            kwargs["epochs"] = epochs
        if self.method == "contrastive" and not isinstance(x, tf.data.Dataset):
            kwargs.setdefault("batch_size", CONTRASTIVE_BATCH_SIZE)
        args = FitArgs.checked(kwargs, where=where)
        x = self._unlabeled(x, "x", args.batch_size)
        if self.method == "contrastive":
            if args.validation_split and not isinstance(x, tf.data.Dataset):
                cut = split_index(len(x), args.validation_split)  # as Keras would cut
                x, kwargs["validation_data"] = x[:cut], x[cut:]
                kwargs.pop("validation_split")
                args = FitArgs.checked(kwargs, where=where)
            sample = (
                x.take(SCALE_BATCHES).map(lambda inputs, _: inputs)
                if isinstance(x, tf.data.Dataset)
                else x[:SCALE_EXAMPLES]
            )
            x = self._pairs(x, args.batch_size)
            kwargs.pop("batch_size", None)  # the pairs' batches are made
            kwargs.pop("shuffle", None)  # and shuffled each epoch
        targets = None if isinstance(x, tf.data.Dataset) else x
        validation = args.validation_data
        if validation is not None:
            validation = self._unlabeled(validation, "validation_data", args.batch_size)
            if not isinstance(validation, tf.data.Dataset):
                validation = (validation, validation)
            kwargs["validation_data"] = validation
        if epochs == "auto":
            steps = args.steps_per_epoch(x)
            kwargs["epochs"] = (
                PRETRAIN_MIN_EPOCHS
                if not steps
                else min(PRETRAIN_MAX_EPOCHS, max(PRETRAIN_MIN_EPOCHS, -(-PRETRAIN_STEPS // steps)))
            )
        if not self.tuner.compiled:
            self.compile()
        history = self.tuner.fit(x, targets, checkpoint_dir=checkpoint_dir, **kwargs)
        if self.method == "contrastive":
            # Its loss compares directions only: give the features a usable scale.
            self.feature_scale = rescale_features(self.tuner.backbone.model, sample)
        return history

    def _pairs(self, x, batch_size: int) -> tf.data.Dataset:
        """Batches of pairs, interleaved, as the paired `TwoViews` takes them: each input
        and one of its nearest neighbours for an array, each input and itself else."""
        if isinstance(x, tf.data.Dataset):
            return x.map(lambda inputs, _: (self_pairs(inputs),) * 2)
        if self.neighbors:
            features = keras.Model(
                self.model.inputs, self.model.get_layer("variance_floor").output
            ).predict(x, batch_size=batch_size, verbose=0)
            neighbors = nearest_neighbors(features, self.neighbors)
        else:
            neighbors = np.arange(len(x))[:, None]
        pairs = neighbor_batches(np.asarray(x), neighbors, batch_size, seed=self.tuner.seed)
        return pairs.map(lambda inputs: (inputs, inputs))

    def _unlabeled(self, x, argname: str, batch_size: int):
        """`x` as inputs to reconstruct: an array, or a dataset of `(inputs, inputs)`."""
        if isinstance(x, (str, os.PathLike)):
            x = self._image_folder(os.fspath(x), argname, batch_size)
        if isinstance(x, tf.data.Dataset):
            return x.map(_as_pair, num_parallel_calls=tf.data.AUTOTUNE)
        if isinstance(x, (tuple, list)) and len(x) == 2 and all(hasattr(a, "shape") for a in x):
            raise ValueError(
                f"`Pretrainer.fit` got `{argname}` as a pair of arrays (shapes "
                f"{tuple(x[0].shape)} and {tuple(x[1].shape)}), like (inputs, labels); "
                "pre-training uses no labels. Pass the inputs alone, e.g. fit(x_train)."
            )
        if x is None or not hasattr(x, "shape"):
            x = np.asarray(x) if isinstance(x, list) else x
        if not hasattr(x, "shape"):
            raise TypeError(
                f"`Pretrainer.fit` takes `{argname}` as an array of inputs, a tf.data.Dataset "
                f"or the path of an image folder. Received: {argname} of type "
                f"{type(x).__name__}."
            )
        return x

    def _image_folder(self, path: str, argname: str, batch_size: int) -> tf.data.Dataset:
        if not os.path.isdir(path):
            raise FileNotFoundError(
                f"`Pretrainer.fit` got `{argname}`={path!r}, which is not a folder. Pass a "
                "folder of images (in subfolders or not), an array or a tf.data.Dataset."
            )
        shape = self._original.input_shape
        if len(shape) != 3 or shape[2] not in (1, 3, 4):
            raise ValueError(
                f"`Pretrainer.fit` got an image folder, but backbone {self._original.name!r} "
                f"takes inputs of shape {shape}, not images (height, width, 1, 3 or 4 "
                "channels). Pass an array or a tf.data.Dataset of its inputs."
            )
        mode = {1: "grayscale", 3: "rgb", 4: "rgba"}[shape[2]]
        return keras.utils.image_dataset_from_directory(
            path,
            labels=None,
            color_mode=mode,
            image_size=shape[:2],
            batch_size=batch_size,
            seed=self.tuner.seed,
        )

    def __repr__(self):
        return f"<Pretrainer {self.model.name!r}: {self._original!r}, method={self.method!r}>"


def _as_pair(*element):
    """A dataset element as `(inputs, inputs)`, its labels (if any) dropped."""
    inputs = element[0]
    if isinstance(inputs, (tuple, list)) and len(element) == 1:
        inputs = inputs[0]
    return inputs, inputs
