"""Plots: training curves across stages, confusion matrices, the LR finder curve.

Each function returns a `matplotlib.figure.Figure` (shown inline in Jupyter)
and saves it when given a `path` (atomically: a temporary file moved into
place). They build figures with matplotlib's object-oriented API, not
`pyplot`, so they neither change the matplotlib backend nor keep figures
alive in pyplot's registry. matplotlib is an optional dependency:
`pip install "finetune_tf[plot]"`.
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np

from finetune_tf._utils import as_str_path, atomic_file, require_parent_directory

__all__ = ["plot_confusion_matrix", "plot_history", "plot_lr_finder"]


@functools.cache
def _figure_class():
    """matplotlib's Figure, shown inline by Jupyter without pyplot or `%matplotlib inline`
    (matplotlib is imported on first use only: it is an optional extra)."""
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png")
            return buffer.getvalue()

    return NotebookFigure


def _figure(what: str, figsize: tuple):
    try:
        figure_class = _figure_class()
    except ImportError as error:
        raise ImportError(
            f'{what} needs matplotlib. Install it with `pip install "finetune_tf[plot]"` '
            "(or `pip install matplotlib`)."
        ) from error
    return figure_class(figsize=figsize, layout="constrained")


def _save(figure, path) -> None:
    if path is None:
        return
    path = as_str_path(path, "path", "a file path ending in .png, .pdf or .svg")
    require_parent_directory(path, "path")
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in (".png", ".pdf", ".svg", ".jpg", ".jpeg"):
        raise ValueError(
            f"`path`={path!r} has no image suffix matplotlib writes; end it in .png, .pdf, "
            ".svg or .jpg."
        )
    with atomic_file(path, suffix=suffix) as tmp:
        figure.savefig(tmp, format=suffix[1:])


def plot_history(history, *, metrics: list | None = None, path=None):
    """Training curves, one panel per metric, with validation curves and stage boundaries.

    Args:
        history: `keras.callbacks.History` (what `fit` / `fine_tune` return) or
            its `.history` dict. With a `"stage"` entry (staged schedules),
            each stage's epochs are shaded and labelled.
        metrics: list of str, optional. Which metrics to plot (`"loss"`,
            `"accuracy"`, ...); their `val_` curves come along. Defaults to all.
        path: str, optional. Where to save the figure (.png, .pdf, .svg).

    Returns:
        The `matplotlib.figure.Figure`.

    Examples:
        >>> from finetune_tf import plot_history
        >>> figure = plot_history({"loss": [1.0, 0.5, 0.4], "val_loss": [1.1, 0.7, 0.6],
        ...                        "stage": ["head", "head", "fine_tune"]})
        >>> [axis.get_title() for axis in figure.axes]
        ['loss']
    """
    logs = dict(getattr(history, "history", history))
    epochs = list(getattr(history, "epoch", None) or [])
    stages = logs.pop("stage", None)
    names = [k for k in logs if not k.startswith("val_")]
    names.sort(key=lambda name: name != "loss")  # the loss first, then the metrics in order
    if metrics is not None:
        unknown = [m for m in metrics if m not in names]
        if unknown:
            raise ValueError(
                f"`metrics` names {unknown}, which the history does not hold. Choose from {names}."
            )
        names = list(metrics)
    if not names:
        raise ValueError(
            "`history` holds no metrics to plot. Pass what fit() returned, after at least "
            "one epoch."
        )
    length = len(logs[names[0]])
    epochs = epochs if len(epochs) == length else list(range(length))
    figure = _figure("plot_history", (5 * len(names), 3.6))
    axes = figure.subplots(1, len(names), squeeze=False)[0]
    for axis, name in zip(axes, names, strict=True):
        axis.plot(epochs, logs[name], marker=".", label=name)
        if f"val_{name}" in logs:
            axis.plot(epochs, logs[f"val_{name}"], marker=".", label=f"val_{name}")
        if stages:
            _shade_stages(axis, epochs, stages)
        axis.set_title(name)
        axis.set_xlabel("epoch")
        axis.legend(fontsize="small")
    _save(figure, path)
    return figure


def _shade_stages(axis, epochs, stages):
    """Alternate shading and a label for each run of epochs of one stage."""
    runs, start = [], 0
    for i in range(1, len(stages) + 1):
        if i == len(stages) or stages[i] != stages[start]:
            runs.append((start, i - 1))
            start = i
    for index, (first, last) in enumerate(runs):
        left, right = epochs[first] - 0.5, epochs[last] + 0.5
        if index % 2 == 0:
            axis.axvspan(left, right, color="grey", alpha=0.08, linewidth=0)
        axis.text(
            (left + right) / 2,
            1.0,
            stages[first],
            transform=axis.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize="small",
        )


def plot_confusion_matrix(matrix, *, class_names: list | None = None, normalize=False, path=None):
    """A confusion matrix as a heat map with counts (rows: true class; columns: predicted).

    Args:
        matrix: array of shape `(k, k)`, e.g. `report["confusion_matrix"]`.
        class_names: list of str, optional. Tick labels. Defaults to 0..k-1.
        normalize: bool. Show each row as fractions of its true class.
            Defaults to False.
        path: str, optional. Where to save the figure.

    Examples:
        >>> from finetune_tf import plot_confusion_matrix
        >>> figure = plot_confusion_matrix([[5, 1], [0, 4]], class_names=["cat", "dog"])
        >>> [t.get_text() for t in figure.axes[0].get_xticklabels()]
        ['cat', 'dog']
    """
    matrix = np.asarray(matrix, dtype="float64")
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(
            f"`matrix` must be square (k, k); received shape {matrix.shape}. Pass "
            "report['confusion_matrix']."
        )
    k = matrix.shape[0]
    names = [str(n) for n in (class_names if class_names is not None else range(k))]
    if len(names) != k:
        raise ValueError(
            f"`class_names` has {len(names)} names for a {k}x{k} matrix; pass one per class."
        )
    if normalize:
        totals = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    size = max(3.5, 0.5 * k + 2)
    figure = _figure("plot_confusion_matrix", (size + 1, size))
    axis = figure.subplots()
    image = axis.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axis, shrink=0.8)
    axis.set_xticks(range(k), names, rotation=45 if k > 4 else 0, ha="right" if k > 4 else "center")
    axis.set_yticks(range(k), names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    if k <= 30:
        high = matrix.max() / 2 if matrix.size else 0
        for (row, column), value in np.ndenumerate(matrix):
            text = f"{value:.2f}" if normalize else f"{int(value)}"
            color = "white" if value > high else "black"
            axis.text(column, row, text, ha="center", va="center", color=color, fontsize=8)
    _save(figure, path)
    return figure


def plot_lr_finder(learning_rates, losses, suggestion: float, *, path=None):
    """Loss against learning rate (log scale) with the suggestion marked.

    `LRFinderResult.plot(path)` calls this.

    Examples:
        >>> from finetune_tf.outputs.plots import plot_lr_finder
        >>> figure = plot_lr_finder([1e-4, 1e-3, 1e-2], [1.0, 0.5, 2.0], 1e-4)
        >>> figure.axes[0].get_xscale()
        'log'
    """
    figure = _figure("LRFinderResult.plot()", (6, 4))
    axis = figure.subplots()
    axis.plot(learning_rates, losses)
    axis.axvline(suggestion, color="tab:red", linestyle="--", label=f"suggestion {suggestion:.2e}")
    axis.set_xscale("log")
    axis.set_xlabel("learning rate")
    axis.set_ylabel("training loss")
    axis.legend()
    _save(figure, path)
    return figure
