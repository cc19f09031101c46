"""`Head`: the new task layers on top of a backbone.

A head is a recipe: calling it on the backbone's features builds fresh
layers with fixed names (`"pooling"`, `"hidden_1"`, `"dropout"`,
`"predictions"`) so they are easy to find in `model.summary()`. What its
predictions mean (activation, loss, metrics, targets, reports, serving
outputs) belongs to its task, one class a module in this folder (`Task`).
"""

from __future__ import annotations

import keras
import numpy as np

from finetune_tf._checks import check_choice, check_int, check_number
from finetune_tf.model.head.capacity import check_dense_size
from finetune_tf.model.head.task import Task, get_task
from finetune_tf.outputs.report import Report

__all__ = ["POOLINGS", "Head"]

POOLINGS = ("avg", "max", "flatten", "none")  # how a head reduces feature maps


class Head:
    """The task layers that a `FineTuner` puts on top of the backbone.

    Build one with `Head.classifier`, `Head.binary`, `Head.multilabel` or
    `Head.regressor`. The layers are: pooling of 4-D (images) or 3-D
    (sequences) features, optional hidden `Dense` layers with ReLU and
    dropout, dropout, and the `"predictions"` layer, which always computes
    in float32 (also under a mixed-precision policy).

    Targets: a classifier takes integer class ids, one-hot rows or soft
    rows (label smoothing, mixup, a teacher's probabilities); its default
    loss trains on a soft row's probabilities (categorical cross-entropy),
    and accuracy and `report` count the row as its argmax. Rows must be
    probability distributions (entries >= 0 summing to 1 within 1e-3); a
    binary head also takes the probability of class 1, a multi-label head
    one in [0, 1] per label. `check_targets` says what is wrong, before
    training.

    Args:
        task: str. `"multiclass"`, `"binary"`, `"multilabel"` or `"regression"`.
        units: int. Width of the predictions layer.
        pooling: str. `"avg"`, `"max"`, `"flatten"` or `"none"` (keep the
            feature axes). Defaults to `"avg"`.
        hidden_units: tuple of int. Hidden layer widths. Defaults to `()`.
        dropout: float. Dropout rate before each Dense layer, in [0, 1).
            Defaults to `0.0`.
        weight_decay: float. L2 penalty on the head's kernels. Defaults to
            `0.0`.
        logits: bool. Output logits instead of probabilities (the default
            loss then uses `from_logits=True`). Defaults to `False`.

    Examples:
        >>> from finetune_tf import Head
        >>> head = Head.classifier(5, dropout=0.2, hidden_units=(64,))
        >>> head
        Head.classifier(num_classes=5, pooling='avg', hidden_units=(64,), dropout=0.2)
    """

    def __init__(
        self,
        task: str,
        units: int,
        *,
        pooling: str = "avg",
        hidden_units: tuple = (),
        dropout: float = 0.0,
        weight_decay: float = 0.0,
        logits: bool = False,
    ):
        task_class = get_task(task)
        check_choice(pooling, "pooling", POOLINGS)
        hidden_units = (hidden_units,) if isinstance(hidden_units, int) else tuple(hidden_units)
        for width in hidden_units:
            check_int(width, "hidden_units", each=hidden_units, type_error=ValueError)
        check_number(
            dropout,
            "dropout",
            low=0,
            high=1,
            high_inclusive=False,
            meaning="the fraction of inputs zeroed before each Dense layer",
            type_error=ValueError,
        )
        check_number(
            weight_decay,
            "weight_decay",
            low=0,
            meaning="the L2 penalty on the head's kernels (0 for none)",
            type_error=ValueError,
        )
        self.task = task
        self.units = int(units)
        self.pooling = pooling
        self.hidden_units = hidden_units
        self.dropout = float(dropout)
        self.weight_decay = float(weight_decay)
        self.logits = bool(logits)
        self._task: Task = task_class(self.units, self.logits)

    # --- Constructors -----------------------------------------------------

    @classmethod
    def classifier(cls, num_classes: int, **kwargs) -> Head:
        """Single-label classification: softmax over `num_classes`.

        With `num_classes=2` this is `Head.binary()`: one sigmoid unit.
        Labels may be integer class ids, one-hot rows or soft rows (each a
        probability distribution over the classes), e.g. label-smoothed.
        Keyword arguments are those of `Head`.

        Examples:
            >>> import keras
            >>> import numpy as np
            >>> from finetune_tf import Head
            >>> Head.classifier(10).units
            10
            >>> k, labels = 3, np.array([0, 2, 1])
            >>> y = keras.utils.to_categorical(labels, k) * 0.9 + 0.1 / k  # label smoothing
            >>> Head.classifier(k).check_targets(y, (k,))
        """
        check_int(num_classes, "num_classes", where="Head.classifier", type_error=ValueError)
        if num_classes < 2:
            raise ValueError(
                "`Head.classifier(num_classes)` needs at least 2 classes. Received: "
                f"num_classes={num_classes}. For one real-valued output use Head.regressor()."
            )
        if num_classes == 2:
            return cls.binary(**kwargs)
        return cls("multiclass", num_classes, **kwargs)

    @classmethod
    def binary(cls, **kwargs) -> Head:
        """Two-class classification with one sigmoid unit (labels 0/1 or one-hot; soft
        targets: the probability of class 1, or rows over the two classes).

        Examples:
            >>> from finetune_tf import Head
            >>> Head.binary().num_classes
            2
        """
        return cls("binary", 1, **kwargs)

    @classmethod
    def multilabel(cls, num_labels: int, **kwargs) -> Head:
        """Independent yes/no labels: one sigmoid per label (multi-hot targets).

        Examples:
            >>> from finetune_tf import Head
            >>> Head.multilabel(4).task
            'multilabel'
        """
        check_int(num_labels, "num_labels", where="Head.multilabel", type_error=ValueError)
        return cls("multilabel", num_labels, **kwargs)

    @classmethod
    def regressor(cls, num_outputs: int = 1, **kwargs) -> Head:
        """Real-valued outputs with mean squared error.

        Examples:
            >>> from finetune_tf import Head
            >>> Head.regressor(2).units
            2
        """
        check_int(num_outputs, "num_outputs", where="Head.regressor", type_error=ValueError)
        kwargs.setdefault("logits", True)
        return cls("regression", num_outputs, **kwargs)

    # --- Behaviour --------------------------------------------------------

    @property
    def num_classes(self) -> int | None:
        """The number of classes of a classification head, else None."""
        return self._task.num_classes

    @property
    def activation(self) -> str | None:
        """The activation of the predictions layer (None: linear)."""
        return self._task.activation

    def _pool(self, features):
        """The `"pooling"` layer's output on `features` (`pooling=`): what the rest of
        the head reads; `features` as they are for vectors or `pooling="none"`."""
        x = features
        rank = len(x.shape)
        if self.pooling == "flatten" and rank > 2:
            if any(d is None for d in x.shape[1:]):
                raise ValueError(
                    f"`pooling='flatten'` needs a fixed feature shape, but the backbone gives "
                    f"{tuple(x.shape[1:])}. Give the FineTuner a fixed input_shape, or use "
                    "pooling='avg'."
                )
            x = keras.layers.Flatten(name="pooling")(x)
        elif self.pooling in ("avg", "max") and rank in (3, 4, 5):
            pool = {
                ("avg", 3): keras.layers.GlobalAveragePooling1D,
                ("max", 3): keras.layers.GlobalMaxPooling1D,
                ("avg", 4): keras.layers.GlobalAveragePooling2D,
                ("max", 4): keras.layers.GlobalMaxPooling2D,
                ("avg", 5): keras.layers.GlobalAveragePooling3D,
                ("max", 5): keras.layers.GlobalMaxPooling3D,
            }[(self.pooling, rank)]
            x = pool(name="pooling")(x)
        return x

    def __call__(self, features):
        """Builds the head's layers on `features` and returns the predictions."""
        x = self._pool(features)
        regularizer = keras.regularizers.L2(self.weight_decay) if self.weight_decay else None
        check_dense_size(x.shape[-1], [*self.hidden_units, self.units], self.hidden_units)
        for i, width in enumerate(self.hidden_units, start=1):
            if self.dropout:
                x = keras.layers.Dropout(self.dropout, name=f"hidden_{i}_dropout")(x)
            x = keras.layers.Dense(
                width, activation="relu", kernel_regularizer=regularizer, name=f"hidden_{i}"
            )(x)
        if self.dropout:
            x = keras.layers.Dropout(self.dropout, name="dropout")(x)
        return keras.layers.Dense(
            self.units,
            activation=self.activation,
            kernel_regularizer=regularizer,
            dtype="float32",
            name="predictions",
        )(x)

    def label_names(self, class_names: list | None = None) -> list[str] | None:
        """The names of this head's classes (or labels), checked: `class_names`
        as strings, or "0", "1", ... when None. None for a regression head.

        Examples:
            >>> from finetune_tf import Head
            >>> Head.classifier(3).label_names()
            ['0', '1', '2']
            >>> Head.binary().label_names(["no", "yes"])
            ['no', 'yes']
        """
        count = self._task.label_count
        if count is None:
            if class_names is not None:
                raise ValueError(
                    f"`class_names` applies to classification and multi-label heads; a "
                    f"{self.task} head has no classes. Leave class_names=None."
                )
            return None
        if class_names is None:
            return [str(i) for i in range(count)]
        names = [str(name) for name in class_names]
        if len(names) != count:
            raise ValueError(
                f"`class_names` has {len(names)} names, but the head has {count} "
                f"{self._task.label_kind}. Pass one name per class, in class-id order."
            )
        return names

    def default_loss(self) -> keras.losses.Loss:
        """The loss that fits this head.

        Examples:
            >>> from finetune_tf import Head
            >>> Head.regressor().default_loss().name
            'mean_squared_error'
        """
        return self._task.default_loss()

    def default_metrics(self, prediction_rank: int = 2) -> list:
        """The metrics that fit this head.

        Args:
            prediction_rank: int. Rank of the predictions with the batch axis:
                2 for one prediction per example, more for per-position
                predictions (`pooling="none"` on image or sequence features),
                where a multi-label head's AUC pools all positions and labels
                instead of averaging per label. Defaults to 2.

        Examples:
            >>> from finetune_tf import Head
            >>> [m.name for m in Head.multilabel(3).default_metrics()]
            ['binary_accuracy', 'auc']
        """
        return self._task.default_metrics(prediction_rank)

    def check_targets(
        self, y, prediction_shape: tuple, argname: str = "y", method: str = "fit"
    ) -> None:
        """A ValueError naming `argname` unless `y` holds targets this head takes.

        Args:
            y: array-like of targets, with the batch axis first.
            prediction_shape: the model's predictions for one example, e.g. `(3,)`.
            argname: str. The argument `y` came in, for the message.
            method: str. The `FineTuner` method that received it.

        Examples:
            >>> from finetune_tf import Head
            >>> Head.classifier(3).check_targets([0, 2, 1], (3,))
            >>> try:
            ...     Head.classifier(3).check_targets([0, 5], (3,))
            ... except ValueError as error:
            ...     print(str(error)[:56])
            `y` has labels outside the integer range 0..2 of this 3-
        """
        self._task.check_targets(np.asarray(y), tuple(prediction_shape), argname, method)

    def report(self, predictions, y, class_names: list | None = None) -> Report:
        """A `Report` of `predictions` (this head's outputs) against targets `y`.

        Classes are the argmax of a softmax, or a sigmoid above 0.5 (logits
        above 0); multi-label targets count as present from 0.5. A soft
        target counts as the class it gives the most: a row's argmax, a
        binary head's probability of class 1 as class 1 above 0.5.

        Examples:
            >>> import numpy as np
            >>> from finetune_tf import Head
            >>> report = Head.binary().report(np.array([[0.9], [0.2]]), np.array([1, 1]))
            >>> report["accuracy"]
            0.5
            >>> soft = np.array([[0.1, 0.8, 0.1], [0.6, 0.2, 0.2]])  # classes 1 and 0
            >>> Head.classifier(3).report(np.eye(3)[[1, 2]], soft)["accuracy"]
            0.5
        """
        names = self.label_names(class_names)
        return self._task.report(np.asarray(predictions), np.asarray(y), names)

    def serving_outputs(self, scores, labels) -> dict:
        """What a served model returns beside `predictions`, for `scores` (a tf
        tensor of predictions) and `labels` (a string tensor of class names):
        `class_id` and `label` for classifiers, `active` for multi-label heads.
        """
        return self._task.serving_outputs(scores, labels)

    def __setstate__(self, state: dict):
        # A Head pickled before tasks were classes (0.2) has no `_task`: make it.
        self.__dict__.update(state)
        if "_task" not in state:
            self._task = get_task(self.task)(self.units, self.logits)

    # --- Config -----------------------------------------------------------

    def get_config(self) -> dict:
        """The arguments that rebuild this head with `Head.from_config`.

        Examples:
            >>> from finetune_tf import Head
            >>> head = Head.classifier(5, dropout=0.2)
            >>> Head.from_config(head.get_config())
            Head.classifier(num_classes=5, pooling='avg', dropout=0.2)
        """
        return {
            "task": self.task,
            "units": self.units,
            "pooling": self.pooling,
            "hidden_units": list(self.hidden_units),
            "dropout": self.dropout,
            "weight_decay": self.weight_decay,
            "logits": self.logits,
        }

    @classmethod
    def from_config(cls, config: dict) -> Head:
        """The head `get_config` describes."""
        return cls(**config)

    def __repr__(self):
        args = self._task.repr_args()
        args.append(f"pooling={self.pooling!r}")
        if self.hidden_units:
            args.append(f"hidden_units={self.hidden_units}")
        if self.dropout:
            args.append(f"dropout={self.dropout}")
        if self.weight_decay:
            args.append(f"weight_decay={self.weight_decay}")
        if self.logits and self._task.takes_logits:
            args.append("logits=True")
        return f"Head.{self._task.constructor}({', '.join(args)})"
