"""Learning new classes without forgetting the old (`FineTuner.fit_new_classes`).

After `FineTuner.add_classes` widens the head, training on the new classes alone
makes the model forget the old ones: nothing in the data says an old class is
ever right, so the softmax pushes them all down, even with a frozen backbone.
Two remedies, combined when both apply:

- Rehearsal (`memory=(x_old, y_old)`): a small seeded exemplar set of old
  examples (`memory_per_class` a class) trains beside the new data, each
  example weighted so that every class present counts the same in the loss.
- Knowledge distillation (Learning without Forgetting, Li & Hoiem 2016): before
  training, the model's responses over the old classes are recorded on every
  training example (new and exemplar), softened at `temperature`; the loss adds
  the cross-entropy between those and the model's own old-class softmax at the
  same temperature (times `temperature**2`, Hinton et al. 2015), so the old
  classes keep their relative scores. With no memory it is the only remedy.

The training itself is `fine_tune`'s recipe (the head on the frozen backbone,
then the backbone at a gentler rate, both sized in optimizer steps) with the
`GrowthLoss` in place of the compiled loss; the user's compile settings come
back afterwards. Targets hand the loss the labels and the recorded old-class
responses packed in one row per example (`packed_targets`).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from finetune_tf._checks import check_int, check_number

__all__ = [
    "DISTILLATION_WEIGHT",
    "MEMORY_PER_CLASS",
    "TEMPERATURE",
    "Growth",
    "GrowthLoss",
    "balancing_weights",
    "old_class_responses",
    "packed_targets",
    "select_exemplars",
]

MEMORY_PER_CLASS = 20  # old examples kept a class for rehearsal
TEMPERATURE = 2.0  # softening of the distilled old-class responses (Li & Hoiem use 2)
DISTILLATION_WEIGHT = 1.0  # the distillation term's weight beside the cross-entropy
_TINY = float(np.finfo("float32").tiny)  # the least normal float32 probability


@keras.saving.register_keras_serializable(package="finetune_tf")
class GrowthLoss(keras.losses.Loss):
    """Cross-entropy on the labels plus distillation of the old classes' responses.

    `y_true` rows are `packed_targets`: `classes` one-hot columns, then the recorded
    old-class responses (`old_classes` columns, a softmax at `temperature`). The loss is
    the categorical cross-entropy of the labels plus `weight * temperature**2` times the
    cross-entropy between the recorded responses and the model's softmax over its
    old-class outputs at `temperature`.

    Args:
        classes: int. The number of classes the grown head predicts.
        old_classes: int. How many of them (the first) the model knew before.
        temperature: float. Softening of both old-class distributions. Defaults to 2.
        weight: float. The distillation term's weight (0: plain cross-entropy).
            Defaults to 1.
        from_logits: bool. Whether the model outputs logits. Defaults to False.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.growing import GrowthLoss, packed_targets
        >>> probs = np.array([[0.6, 0.3, 0.1]], "float32")
        >>> y = packed_targets(np.array([2]), np.array([[2 / 3, 1 / 3]]), 3)
        >>> plain = float(GrowthLoss(3, 2, weight=0.0)(y, probs))
        >>> round(plain, 4) == round(float(-np.log(0.1)), 4)
        True
        >>> float(GrowthLoss(3, 2)(y, probs)) > plain
        True
    """

    def __init__(
        self,
        classes: int,
        old_classes: int,
        temperature: float = TEMPERATURE,
        weight: float = DISTILLATION_WEIGHT,
        from_logits: bool = False,
        reduction: str = "sum_over_batch_size",
        name: str = "growth_loss",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.classes = int(classes)
        self.old_classes = int(old_classes)
        self.temperature = float(temperature)
        self.weight = float(weight)
        self.from_logits = bool(from_logits)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        y_true = ops.cast(y_true, y_pred.dtype)
        labels, recorded = y_true[:, : self.classes], y_true[:, self.classes :]
        loss = keras.losses.categorical_crossentropy(labels, y_pred, from_logits=self.from_logits)
        if not self.weight:
            return loss
        old = (y_pred if self.from_logits else _logits_of(y_pred))[:, : self.old_classes]
        student = ops.log_softmax(old / self.temperature, axis=-1)
        distilled = -ops.sum(recorded * student, axis=-1) * self.temperature**2
        return loss + self.weight * distilled

    def get_config(self):
        return {
            **super().get_config(),
            "classes": self.classes,
            "old_classes": self.old_classes,
            "temperature": self.temperature,
            "weight": self.weight,
            "from_logits": self.from_logits,
        }


def _logits_of(probabilities):
    """The logits of a softmax's output (up to a constant): the softmax's input where Keras
    kept it (as its own cross-entropy does), else the log of the probabilities. An old
    class's probability on new data falls far below 1e-7, where clipping as Keras' losses
    do would erase the old classes' relative scores that distillation keeps."""
    logits = getattr(probabilities, "_keras_logits", None)
    if logits is not None:
        return logits
    op = getattr(probabilities, "op", None) if not tf.executing_eagerly() else None
    if op is not None and op.type == "Softmax" and len(op.inputs) == 1:
        return op.inputs[0]
    return ops.log(ops.maximum(probabilities, _TINY))


def growth_accuracy(classes: int):
    """Accuracy on the label columns of `packed_targets` rows (named `"accuracy"`)."""

    def accuracy(y_true, y_pred):
        labels = ops.argmax(y_true[:, :classes], axis=-1)
        return ops.cast(ops.equal(labels, ops.argmax(y_pred, axis=-1)), "float32")

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def packed_targets(labels: np.ndarray, recorded: np.ndarray, classes: int) -> np.ndarray:
    """One row per example: the one-hot label over `classes`, then `recorded` (the old-class
    responses), as `GrowthLoss` reads them.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.growing import packed_targets
        >>> packed_targets(np.array([2]), np.array([[0.5, 0.5]]), 3).tolist()
        [[0.0, 0.0, 1.0, 0.5, 0.5]]
    """
    one_hot = np.eye(classes, dtype="float32")[np.asarray(labels, int)]
    return np.concatenate([one_hot, np.asarray(recorded, "float32")], axis=1)


def old_class_responses(
    predictions: np.ndarray, old_classes: int, temperature: float, from_logits: bool
) -> np.ndarray:
    """The softmax at `temperature` over the first `old_classes` outputs of `predictions`
    (probabilities, or logits with `from_logits`): what the model said about the old
    classes, as `GrowthLoss` distils it.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.growing import old_class_responses
        >>> p = np.array([[0.6, 0.2, 0.2]])
        >>> old_class_responses(p, 2, 1.0, False).round(3).tolist()
        [[0.75, 0.25]]
    """
    old = np.asarray(predictions, "float64")[:, :old_classes]
    if not from_logits:
        old = np.log(np.maximum(old, _TINY))
    scaled = old / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    soft = np.exp(scaled)
    return (soft / soft.sum(axis=1, keepdims=True)).astype("float32")


def select_exemplars(
    x: np.ndarray, y: np.ndarray, per_class: int, seed: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `per_class` examples of each class in `y`, chosen at random by `seed`, in
    class order.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.growing import select_exemplars
        >>> x, y = np.arange(10.0), np.array([0] * 6 + [1] * 4)
        >>> _, kept = select_exemplars(x, y, 3, seed=0)
        >>> kept.tolist()
        [0, 0, 0, 1, 1, 1]
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(y):
        where = np.flatnonzero(y == label)
        chosen.append(np.sort(rng.choice(where, min(per_class, len(where)), replace=False)))
    index = np.concatenate(chosen)
    return x[index], y[index]


def balancing_weights(y: np.ndarray) -> np.ndarray:
    """A weight per example so that every class in `y` weighs the same in total, with
    mean 1 (`n / (classes present * count of its class)`).

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.growing import balancing_weights
        >>> balancing_weights(np.array([0, 0, 0, 1])).tolist()
        [0.6666666666666666, 0.6666666666666666, 0.6666666666666666, 2.0]
    """
    labels, counts = np.unique(y, return_counts=True)
    per_class = len(y) / (len(labels) * counts)
    return per_class[np.searchsorted(labels, y)]


@dataclasses.dataclass
class Growth:
    """What a tuner remembers of growing: how many classes it knew before the last
    `add_classes` (`old_classes`), and the exemplars kept for rehearsal (`memory`, the
    `(x, y)` of `select_exemplars`, or None). The memory stays in the process (it is not
    saved with the tuner); give `memory=` again after loading."""

    old_classes: int | None = None
    memory: tuple | None = None
    trained: bool = False  # whether fit_new_classes has trained the classes last added
    learned: tuple | None = None  # exemplars of the new classes, kept once they are trained

    def grown(self, old_classes: int) -> Growth:
        """The `Growth` after another `add_classes` on a tuner of `old_classes` classes:
        classes added before and not trained yet stay new; the memory is kept."""
        if self.old_classes is not None and not self.trained:
            old_classes = self.old_classes
        return Growth(old_classes=old_classes, memory=self.memory)

    def remember_learned(self) -> None:
        """After training: the new classes are learned, and their exemplars join the memory
        (for the next growth's rehearsal)."""
        self.trained = True
        if self.learned is not None:
            parts = [self.learned] if self.memory is None else [self.memory, self.learned]
            self.memory = tuple(np.concatenate(arrays) for arrays in zip(*parts, strict=True))
        self.learned = None

    def settings(self, class_names: list | None) -> dict:
        """What a tuner's config keeps of it (with the tuner's class names)."""
        return {"class_names": class_names, "old_classes": self.old_classes}

    @classmethod
    def from_settings(cls, settings: dict) -> tuple[list | None, Growth]:
        """The class names and the `Growth` that `settings` (a tuner's config) keep."""
        return settings.get("class_names"), cls(old_classes=settings.get("old_classes"))

    def grouped(self, report):
        """`report` with the old and the new classes apart, once the tuner has grown."""
        if self.old_classes is None or "per_class" not in report:
            return report
        count = len(report["per_class"])
        return report.with_groups(
            {"old": range(self.old_classes), "new": range(self.old_classes, count)}
        )

    def check_labels(self, y, classes: int, argname: str, low: int = 0, high=None) -> np.ndarray:
        """`y` as integer class ids in `low..high-1` (a column of ids is flattened)."""
        high = classes if high is None else high
        array = np.asarray(y)
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        whole = array.dtype.kind in "iu" or (
            array.dtype.kind == "f"
            and np.isfinite(array).all()
            and (array == np.round(array)).all()
        )
        if array.ndim != 1 or not whole:
            raise ValueError(
                f"`FineTuner.fit_new_classes` takes `{argname}` as integer class ids, one per "
                f"example (shape (n,)). Received: an array of shape {array.shape} and dtype "
                f"{array.dtype}. Turn one-hot rows into ids first, e.g. y.argmax(axis=1)."
            )
        bad = (array < low) | (array >= high)
        if bad.any():
            raise ValueError(
                f"`FineTuner.fit_new_classes` got `{argname}` with class ids outside "
                f"{low}..{high - 1} (e.g. {argname}[{int(np.flatnonzero(bad)[0])}] = "
                f"{array[bad][0].item()!r}); the grown head has {classes} classes, of which "
                f"0..{self.old_classes - 1} are the old ones. "
                + (
                    "`memory` holds examples of the old classes only."
                    if argname.startswith("memory")
                    else "Check the labels, or call add_classes() with the number of new "
                    "classes first."
                )
            )
        return array.astype(int)

    def training_data(self, x, y, memory, memory_per_class: int, classes: int, seed):
        """The examples to train on (new, then exemplars), their labels and balancing
        weights, shuffled by `seed`; the exemplars are kept for the next call."""
        for name, value in (("x", x), ("memory", None if memory is None else memory[0])):
            if isinstance(value, (tf.data.Dataset, keras.utils.PyDataset)) or callable(
                getattr(value, "__next__", None)
            ):
                raise TypeError(
                    f"`FineTuner.fit_new_classes` takes `{name}` as an array (it picks "
                    f"exemplars, weighs classes and records answers per example). Received: "
                    f"{type(value).__name__}. Collect the examples first, e.g. x = "
                    "np.concatenate([batch for batch, _ in dataset])."
                )
        labels = self.check_labels(y, classes, "y")
        if memory is not None:
            if not isinstance(memory, (tuple, list)) or len(memory) != 2:
                raise ValueError(
                    "`FineTuner.fit_new_classes(memory)` is a pair (x_old, y_old) of old-class "
                    f"examples and their labels. Received: memory of type {type(memory).__name__}."
                )
            x_old = np.asarray(memory[0])
            y_old = self.check_labels(memory[1], classes, "memory[1]", high=self.old_classes)
            if len(x_old) != len(y_old):
                raise ValueError(
                    f"`FineTuner.fit_new_classes(memory)` has {len(x_old)} inputs but "
                    f"{len(y_old)} labels. Pass memory=(x_old, y_old), one label per example."
                )
            self.memory = select_exemplars(x_old, y_old, memory_per_class, seed)
        x = np.asarray(x)
        if len(x) != len(labels) or not len(x):
            raise ValueError(
                f"`FineTuner.fit_new_classes` takes one label in `y` per example in `x`, at "
                f"least one. Received: {len(x)} examples and {len(labels)} labels. Pass x and "
                "y of the same length (the new classes' examples)."
            )
        self.learned = select_exemplars(x, labels, memory_per_class, seed)
        if self.memory is not None:
            if self.memory[0].shape[1:] != x.shape[1:]:
                raise ValueError(
                    f"`FineTuner.fit_new_classes` got `x` of examples shaped {x.shape[1:]}, "
                    f"but the memory's are shaped {self.memory[0].shape[1:]}. Pass new "
                    "examples shaped like the old ones."
                )
            x = np.concatenate([x, self.memory[0]])
            labels = np.concatenate([labels, self.memory[1]])
        order = np.random.default_rng(seed).permutation(len(labels))
        x, labels = x[order], labels[order]
        return x, labels, balancing_weights(labels)

    def fit(
        self,
        tuner,
        compiler,
        x,
        y,
        *,
        memory,
        memory_per_class: int,
        temperature: float,
        distillation: float,
        **kwargs,
    ) -> keras.callbacks.History:
        """`FineTuner.fit_new_classes` for `tuner` (whose `compiler` it is): checks, records
        the old-class responses, trains with `tuner.fine_tune(**kwargs)` under `GrowthLoss`,
        and compiles back."""
        if self.old_classes is None:
            raise ValueError(
                "`FineTuner.fit_new_classes` trains the classes that `add_classes` added, but "
                "this tuner has not grown. Call tuner.add_classes(new_names_or_count) first."
            )
        if tuner.head.task == "multilabel":
            raise ValueError(
                "`FineTuner.fit_new_classes` is for softmax classifiers; a multi-label head's "
                "labels are independent sigmoids. Train the grown head with fit() on rows over "
                "all labels (for old labels the new data lacks, the model's own predictions "
                "make soft targets: y_old = tuner.predict(x)[:, :old_labels])."
            )
        for name in ("sample_weight", "class_weight"):
            if name in kwargs:
                raise ValueError(
                    f"`FineTuner.fit_new_classes` weighs the examples itself (each class the "
                    f"same in total); it takes no `{name}`. Leave it out, or train with fit()."
                )
        check_growth_settings(memory_per_class, temperature, distillation)
        classes = tuner.head.num_classes
        x, labels, weights = self.training_data(x, y, memory, memory_per_class, classes, tuner.seed)
        logits = tuner.head.logits

        def targets(inputs, ids):
            recorded = tuner.predict(inputs, batch_size=256, verbose=0)
            recorded = old_class_responses(recorded, self.old_classes, temperature, logits)
            return packed_targets(ids, recorded, classes)

        validation = kwargs.get("validation_data")
        if validation is not None:
            if not isinstance(validation, (tuple, list)) or len(validation) != 2:
                raise ValueError(
                    "`FineTuner.fit_new_classes(validation_data)` takes a pair (x_val, y_val) "
                    "of arrays with class ids in the grown range. Received: "
                    f"{type(validation).__name__}."
                )
            ids = self.check_labels(validation[1], classes, "validation_data[1]")
            kwargs["validation_data"] = (validation[0], targets(validation[0], ids))
        y = targets(x, labels)
        loss = GrowthLoss(classes, self.old_classes, temperature, distillation, logits)
        # Its loss and accuracy read packed targets; loss_weights name the user's outputs.
        with compiler.using(loss, [growth_accuracy(loss.classes)], drop=("loss_weights",)):
            history = tuner.fine_tune(x, y, sample_weight=weights, **kwargs)
        self.remember_learned()
        return history


def check_growth_settings(memory_per_class, temperature, distillation) -> None:
    """ValueErrors for settings of `fit_new_classes` out of range."""
    check_int(memory_per_class, "memory_per_class", where="FineTuner.fit_new_classes")
    check_number(
        temperature,
        "temperature",
        low=0,
        low_inclusive=False,
        where="FineTuner.fit_new_classes",
        meaning="the softening of the distilled old-class responses",
        hint="Li & Hoiem use 2.",
        type_error=ValueError,
    )
    check_number(
        distillation,
        "distillation",
        low=0,
        where="FineTuner.fit_new_classes",
        meaning="the weight of the distillation loss (0 for none)",
        type_error=ValueError,
    )
