"""`Report`: what a fine-tuned model gets right and wrong, from `sklearn.metrics`."""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from finetune_tf.outputs.plots import plot_confusion_matrix

__all__ = ["Report", "predict_with_labels"]


def _metrics():
    """`sklearn.metrics`, imported when a report is made, not with finetune_tf."""
    from sklearn import metrics

    return metrics


class Report(dict):
    """Evaluation of a model on labelled data: a dict that prints as a table.

    `FineTuner.report(x, y)` builds one. For classification heads it holds
    `"accuracy"`, `"per_class"` (each class's `precision`, `recall`, `f1`
    and `support`), `"macro avg"`, `"weighted avg"`, `"confusion_matrix"`
    (rows: true class, columns: predicted) and `"class_names"`; for
    multi-label heads the same per label (`"accuracy"` is the exact-match
    ratio, `"confusion_matrix"` one 2x2 matrix per label); for regression
    heads `"mae"`, `"rmse"` and `"r2"` (per output in `"per_output"`). All
    values are plain Python numbers and lists, so `json.dumps(report)` works.

    Examples:
        >>> from finetune_tf.outputs.report import Report
        >>> report = Report.for_classes([0, 1, 1, 0], [0, 1, 0, 0], class_names=["cat", "dog"])
        >>> report["accuracy"]
        0.75
        >>> report["per_class"]["dog"]["recall"]
        0.5
        >>> print(report)
        class          precision   recall   f1-score   support
        cat                0.667    1.000      0.800         2
        dog                1.000    0.500      0.667         2
        <BLANKLINE>
        accuracy                               0.750         4
        macro avg          0.833    0.750      0.733         4
        weighted avg       0.833    0.750      0.733         4
        <BLANKLINE>
        confusion matrix (rows: true, columns: predicted)
                     cat dog
        cat            2   0
        dog            1   1
    """

    @classmethod
    def for_classes(cls, y_true, y_pred, *, class_names=None, labels=None) -> Report:
        """A report from integer class ids (true and predicted)."""
        skm = _metrics()
        labels = (
            list(range(_class_count(y_true, y_pred, class_names))) if labels is None else labels
        )
        names = [str(n) for n in (class_names if class_names is not None else labels)]
        table = skm.classification_report(
            y_true, y_pred, labels=labels, target_names=names, output_dict=True, zero_division=0
        )
        report = cls(task="classification")
        report["accuracy"] = float(skm.accuracy_score(y_true, y_pred))
        report["per_class"] = {name: _row(table[name]) for name in names}
        report["macro avg"] = _row(table["macro avg"])
        report["weighted avg"] = _row(table["weighted avg"])
        report["confusion_matrix"] = skm.confusion_matrix(y_true, y_pred, labels=labels).tolist()
        report["class_names"] = names
        return report

    @classmethod
    def for_labels(cls, y_true, y_pred, *, class_names=None) -> Report:
        """A report from 0/1 multi-label indicator arrays of shape `(n, k)`."""
        skm = _metrics()
        k = np.shape(y_true)[1]
        names = [str(n) for n in (class_names if class_names is not None else range(k))]
        table = skm.classification_report(
            y_true, y_pred, target_names=names, output_dict=True, zero_division=0
        )
        report = cls(task="multilabel")
        report["accuracy"] = float(skm.accuracy_score(y_true, y_pred))  # exact match
        report["per_class"] = {name: _row(table[name]) for name in names}
        report["macro avg"] = _row(table["macro avg"])
        report["weighted avg"] = _row(table["weighted avg"])
        report["confusion_matrix"] = skm.multilabel_confusion_matrix(y_true, y_pred).tolist()
        report["class_names"] = names
        return report

    @classmethod
    def for_values(cls, y_true, y_pred) -> Report:
        """A report from regression targets and predictions, `(n,)` or `(n, k)`."""
        y_true = np.asarray(y_true, "float64").reshape(len(y_true), -1)
        y_pred = np.asarray(y_pred, "float64").reshape(len(y_pred), -1)
        report = cls(task="regression")
        report.update(_regression_row(y_true, y_pred))
        report["per_output"] = [
            _regression_row(y_true[:, i], y_pred[:, i]) for i in range(y_true.shape[1])
        ]
        return report

    def __init__(self, task: str):
        super().__init__()
        self.task = task

    def with_groups(self, groups: dict) -> Report:
        """This report with `"groups"`: for each named group of class ids (e.g. the old and
        the new classes of a grown tuner), the `accuracy` on its examples (for a multi-label
        report, the mean accuracy of its labels), its `support` and its class names; the
        table shows them under the per-class rows.

        Examples:
            >>> from finetune_tf.outputs.report import Report
            >>> report = Report.for_classes([0, 1, 2, 2], [0, 2, 2, 2])
            >>> grouped = report.with_groups({"old": [0, 1], "new": [2]})
            >>> grouped["groups"]["old"]["accuracy"], grouped["groups"]["new"]["support"]
            (0.5, 2)
        """
        names = self["class_names"]
        matrix = np.asarray(self["confusion_matrix"])
        table = {}
        for group, ids in groups.items():
            ids = list(ids)
            if self.task == "classification":
                support = int(matrix[ids].sum())
                right = int(matrix[ids, ids].sum())
                accuracy = right / support if support else float("nan")
            else:  # one 2x2 matrix per label: (tn + tp) / n, averaged
                cells = matrix[ids]
                support = int(cells[:, 1].sum())
                accuracy = float(np.mean([(m[0, 0] + m[1, 1]) / m.sum() for m in cells]))
            table[group] = {
                "accuracy": float(accuracy),
                "support": support,
                "classes": [names[i] for i in ids],
            }
        report = type(self)(self.task)
        report.update(self)
        report["groups"] = table
        return report

    def plot_confusion_matrix(self, *, normalize: bool = False, path=None):
        """The confusion matrix as a figure (see `plot_confusion_matrix`); classification only."""
        if self.task != "classification":
            raise ValueError(
                f"A {self.task} report has no single confusion matrix to plot; plot "
                "report['confusion_matrix'][i] for label i with plot_confusion_matrix()."
                if self.task == "multilabel"
                else "A regression report has no confusion matrix."
            )
        return plot_confusion_matrix(
            self["confusion_matrix"],
            class_names=self["class_names"],
            normalize=normalize,
            path=path,
        )

    def __str__(self) -> str:
        if self.task == "regression":
            lines = [f"{'':<8}{'mae':>10}{'rmse':>10}{'r2':>10}"]
            rows = [("all", self)] + [
                (f"output {i}", row) for i, row in enumerate(self["per_output"])
            ]
            if len(rows) == 2:
                rows = rows[:1]
            for name, row in rows:
                lines.append(f"{name:<8}{row['mae']:>10.4f}{row['rmse']:>10.4f}{row['r2']:>10.4f}")
            return "\n".join(lines)
        names = list(self["per_class"])
        width = max(len("weighted avg"), *(len(n) for n in names))
        lines = [f"{'class':<{width}}   precision   recall   f1-score   support"]
        for name in names:
            lines.append(_table_row(name, self["per_class"][name], width))
        total = self["weighted avg"]["support"]
        lines += [
            "",
            f"{'accuracy':<{width}}   {'':>9}   {'':>6}   {self['accuracy']:8.3f}   {total:7d}",
        ]
        lines.append(_table_row("macro avg", self["macro avg"], width))
        lines.append(_table_row("weighted avg", self["weighted avg"], width))
        for group, row in self.get("groups", {}).items():
            label = f"{group} classes"
            lines.append(
                f"{label:<{width}}   {'':>9}   {'':>6}   {row['accuracy']:8.3f}   "
                f"{row['support']:7d}   ({_span(row['classes'])})"
            )
        if self.task == "classification":
            lines += ["", "confusion matrix (rows: true, columns: predicted)"]
            column = max(4, *(len(n) + 1 for n in names))
            lines.append(" " * width + "".join(f"{n:>{column}}" for n in names))
            for name, row in zip(names, self["confusion_matrix"], strict=True):
                lines.append(f"{name:<{width}}" + "".join(f"{v:>{column}d}" for v in row))
        return "\n".join(line.rstrip() for line in lines)

    def _repr_pretty_(self, printer, cycle):  # IPython shows the table
        printer.text(str(self))


def _span(names: list) -> str:
    """'a, b, c' for a few names, 'a .. z' (with the count) for many."""
    if len(names) <= 4:
        return ", ".join(names)
    return f"{names[0]} .. {names[-1]}, {len(names)} classes"


def _class_count(y_true, y_pred, class_names) -> int:
    if class_names is not None:
        return len(class_names)
    return int(max(np.max(y_true), np.max(y_pred))) + 1


def _row(entry: dict) -> dict:
    return {
        "precision": float(entry["precision"]),
        "recall": float(entry["recall"]),
        "f1": float(entry["f1-score"]),
        "support": int(entry["support"]),
    }


def _table_row(name: str, row: dict, width: int) -> str:
    return (
        f"{name:<{width}}   {row['precision']:9.3f}   {row['recall']:6.3f}   "
        f"{row['f1']:8.3f}   {row['support']:7d}"
    )


def _regression_row(y_true, y_pred) -> dict:
    skm = _metrics()
    return {
        "mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "rmse": float(np.sqrt(skm.mean_squared_error(y_true, y_pred))),
        "r2": float(skm.r2_score(y_true, y_pred)),
    }


def predict_with_labels(model: keras.Model, x, y, batch_size=None) -> tuple:
    """`(predictions, labels)` of `model` on `x`, `y`, or on a dataset of `(inputs, labels)`.

    Examples:
        >>> import keras, numpy as np, tensorflow as tf
        >>> from finetune_tf.outputs.report import predict_with_labels
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
        >>> data = tf.data.Dataset.from_tensor_slices((np.ones((5, 2)), np.arange(5))).batch(2)
        >>> predictions, labels = predict_with_labels(model, data, None)
        >>> predictions.shape, labels.tolist()
        ((5, 3), [0, 1, 2, 3, 4])
    """
    if isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)):
        kind = type(x).__name__ if isinstance(x, keras.utils.PyDataset) else "tf.data.Dataset"
        if y is not None:
            raise ValueError(
                f"`y` must be None when `x` is a {kind}: it yields (inputs, labels) batches."
            )
        batches = x if isinstance(x, tf.data.Dataset) else (x[i] for i in range(len(x)))
        predictions, labels = [], []
        for batch in batches:
            if not isinstance(batch, tuple) or len(batch) < 2:
                raise ValueError(
                    f"`x` is a {kind} without labels; report() needs (inputs, labels) batches."
                )
            predictions.append(np.asarray(model.predict_on_batch(batch[0])))
            labels.append(np.asarray(batch[1]))
        return np.concatenate(predictions), np.concatenate(labels)
    if y is None:
        raise ValueError(
            "`FineTuner.report` needs the labels: report(x, y), or a tf.data.Dataset "
            "of (inputs, labels) as x."
        )
    return model.predict(x, batch_size=batch_size, verbose=0), y
