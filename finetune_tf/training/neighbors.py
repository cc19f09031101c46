"""Nearest-neighbour pairs: the positive pairs of contrastive pre-training on arrays.

SimCLR's positive pair is two random views of one input. On small data that
teaches little beyond the views themselves; pairing each input with one of its
nearest neighbours (found once, before training) teaches the backbone that
similar inputs belong together, as the neighbour graph behind UMAP or t-SNE does
(docs/benchmarks.md). `neighbor_batches` makes the batches `TwoViews(paired=True)`
takes: each input followed by one of its neighbours, drawn anew every epoch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

__all__ = ["nearest_neighbors", "neighbor_batches", "self_pairs"]


def nearest_neighbors(features, k: int) -> np.ndarray:
    """The indices of each row's `k` nearest other rows (Euclidean), shape `(n, k)`.

    Args:
        features: array of shape `(n, ...)`; each row is flattened.
        k: int >= 1. Neighbours per row (at most `n - 1` are found).

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.neighbors import nearest_neighbors
        >>> nearest_neighbors(np.array([[0.0], [1.0], [5.0], [6.0]]), 1).ravel().tolist()
        [1, 0, 3, 2]
    """
    from sklearn.neighbors import NearestNeighbors  # heavy: imported when first needed

    features = np.asarray(features, "float32").reshape(len(features), -1)
    k = max(1, min(int(k), len(features) - 1))
    found = NearestNeighbors(n_neighbors=k + 1).fit(features)
    indices = found.kneighbors(features, return_distance=False)
    # Each row is (nearly always) its own nearest: drop it, whichever column it is in.
    rows = np.arange(len(features))[:, None]
    others = np.where(indices == rows, -1, indices)
    return np.stack([row[row >= 0][:k] for row in others])


def neighbor_batches(x, neighbors: np.ndarray, batch_size: int, seed: int | None = None):
    """A `tf.data.Dataset` of batches of `2 * batch_size` rows: each input of `x` (in a
    new random order every epoch) followed by one of its `neighbors`, drawn at random.

    Args:
        x: array of inputs, shape `(n, ...)`.
        neighbors: int array `(n, k)`, as `nearest_neighbors` gives.
        batch_size: int. Inputs per batch (the batch holds twice as many rows).
        seed: int, optional. Seeds the order and the draws.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.neighbors import neighbor_batches
        >>> x = np.arange(4.0)[:, None]
        >>> batch = next(iter(neighbor_batches(x, np.array([[1], [0], [3], [2]]), 4, seed=0)))
        >>> sorted(batch.numpy().ravel().reshape(-1, 2).tolist())
        [[0.0, 1.0], [1.0, 0.0], [2.0, 3.0], [3.0, 2.0]]
    """
    count, k = neighbors.shape
    inputs = tf.constant(x)
    table = tf.constant(neighbors, tf.int32)
    order = tf.data.Dataset.range(count).shuffle(count, seed=seed, reshuffle_each_iteration=True)
    draws = tf.data.Dataset.random(seed=seed)

    def pairs(index, draw):
        index = tf.cast(index, tf.int32)
        column = tf.cast(draw % k, tf.int32)
        neighbor = tf.gather_nd(table, tf.stack([index, column], axis=1))
        both = tf.stack([tf.gather(inputs, index), tf.gather(inputs, neighbor)], axis=1)
        return tf.reshape(both, (-1, *x.shape[1:]))

    return (
        tf.data.Dataset.zip(order, draws)
        .batch(batch_size)
        .map(pairs, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(tf.data.AUTOTUNE)
    )


def self_pairs(inputs):
    """A batch as `TwoViews(paired=True)` takes it when no neighbours are known: each
    input twice in a row, so its pair is itself (SimCLR's two views of one input).

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.training.neighbors import self_pairs
        >>> self_pairs(np.array([[1.0], [2.0]])).numpy().ravel().tolist()
        [1.0, 1.0, 2.0, 2.0]
    """
    return tf.repeat(inputs, 2, axis=0)
