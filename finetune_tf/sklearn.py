"""scikit-learn estimators on a pretrained backbone: the public home of
`FineTunerClassifier`, `FineTunerRegressor` and `BackboneFeatures`.

With `finetune_tf` itself, this module is the public contract; the
implementation lives in `finetune_tf.estimators` and may move.

Examples:
    >>> import keras, numpy as np
    >>> from finetune_tf.sklearn import FineTunerClassifier
    >>> inputs = keras.Input((4,))
    >>> backbone = keras.Model(inputs, keras.layers.Dense(8, activation="relu")(inputs))
    >>> clf = FineTunerClassifier(backbone, head_epochs=2, epochs=1, random_state=0)
    >>> clf.fit(np.random.rand(20, 4), np.arange(20) % 2).classes_.tolist()
    [0, 1]
"""

from finetune_tf.estimators import BackboneFeatures, FineTunerClassifier, FineTunerRegressor

__all__ = ["BackboneFeatures", "FineTunerClassifier", "FineTunerRegressor"]
