"""Label-format helpers shared by the loss and the metric: integer class ids
and rows over the classes (one-hot or soft) are both accepted, for softmax
and for sigmoid heads."""

from __future__ import annotations

import tensorflow as tf
from keras import ops


def is_class_rows(y_true, y_pred) -> bool:
    """True when `y_true` holds a row over `y_pred`'s classes for each prediction:
    one-hot or soft (static shapes)."""
    classes = y_pred.shape[-1]
    if classes == 1:
        classes = 2  # a sigmoid head over two classes
    return len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == classes != 1


def binary_targets(y_true, y_pred):
    """Targets of class 1 (0/1, or a probability) shaped like a one-unit sigmoid output."""
    y_true = ops.cast(y_true, y_pred.dtype)
    if is_class_rows(y_true, y_pred):
        return y_true[..., 1:]
    if len(y_true.shape) == len(y_pred.shape) - 1:
        return ops.expand_dims(y_true, -1)
    return ops.reshape(y_true, ops.shape(y_pred))


def sparse_targets(y_true, y_pred):
    """Integer class ids of shape `y_pred.shape[:-1]`: a row's argmax (the class a
    one-hot or soft row gives the most)."""
    if is_class_rows(y_true, y_pred):
        return ops.argmax(y_true, axis=-1)
    y_true = ops.cast(y_true, "int32")
    if len(y_true.shape) == len(y_pred.shape):
        y_true = ops.squeeze(y_true, axis=-1)
    return y_true


def known_rank(y_true, y_pred):
    """`y_true` with a static rank. When one model's labels change rank between `fit`
    calls (ids `(n,)`, then `(n, 1)`, then one-hot rows), Keras traces its step again with
    a label of unknown rank; then the labels are brought, at run time, to `y_pred`'s shape:
    rows over the classes (ids one-hot), or a sigmoid head's class-1 target."""
    if y_true.shape.rank is not None:
        return y_true
    classes = y_pred.shape[-1]
    y_true = tf.cast(y_true, y_pred.dtype)
    row_width = 2 if classes == 1 else classes
    rows = tf.logical_and(
        tf.equal(tf.rank(y_true), tf.rank(y_pred)), tf.equal(tf.shape(y_true)[-1], row_width)
    )
    if classes == 1:  # a sigmoid head: rows over two classes, or the target of class 1

        def from_rows():
            return tf.reshape(y_true[..., 1:], tf.shape(y_pred))

        def from_targets():
            return tf.reshape(y_true, tf.shape(y_pred))

    else:

        def from_rows():
            return tf.reshape(y_true, tf.shape(y_pred))

        def from_targets():
            ids = tf.cast(tf.reshape(y_true, tf.shape(y_pred)[:-1]), "int32")
            return tf.one_hot(ids, classes, dtype=y_pred.dtype)

    labels = tf.cond(rows, from_rows, from_targets)
    labels.set_shape(y_pred.shape)
    return labels
