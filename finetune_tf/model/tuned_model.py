"""`TunedModel`: the `keras.Model` a `FineTuner` builds, trains and saves.

It is a functional Keras model (inputs -> ... -> predictions) that takes
what the `FineTuner` took: Keras' numpy path refuses numpy arrays and lists
of strings (`Invalid dtype: str288`), so text inputs are handed to Keras as
string tensors. A saved tuner loads back as a `TunedModel` with plain
`keras.models.load_model` after `import finetune_tf`, and still takes them.
"""

from __future__ import annotations

import copy
import json

import keras
import numpy as np
import tensorflow as tf

__all__ = ["TunedModel", "as_array_if_list", "as_tensor_if_text"]


def as_tensor_if_text(data):
    """numpy arrays and lists of strings as string tensors; anything else as it is.

    Examples:
        >>> import numpy as np
        >>> from finetune_tf.model.tuned_model import as_tensor_if_text
        >>> as_tensor_if_text(np.array(["good movie"])).dtype.name
        'string'
        >>> as_tensor_if_text([1.0, 2.0])
        [1.0, 2.0]
    """
    if isinstance(data, list) and data and isinstance(data[0], (str, bytes)):
        data = np.asarray(data)
    if isinstance(data, np.ndarray) and data.dtype.kind in "US":
        return tf.constant(data)
    if isinstance(data, np.ndarray) and data.dtype.kind == "O" and data.size:
        if isinstance(data.flat[0], (str, bytes)):  # strings held as Python objects
            return tf.constant(data.astype(str))
    return data


def as_array_if_list(y):
    """A Python list of labels as a numpy array (Keras takes a list as x only alongside
    a list x); anything else as it is.

    Examples:
        >>> from finetune_tf.model.tuned_model import as_array_if_list
        >>> as_array_if_list([0, 1, 1]).tolist()
        [0, 1, 1]
    """
    return np.asarray(y) if isinstance(y, list) else y


def _validation_as_tensors(validation_data):
    if isinstance(validation_data, tuple) and validation_data:
        x, *rest = validation_data
        if rest:
            rest[0] = as_array_if_list(rest[0])
        return (as_tensor_if_text(x), *rest)
    return validation_data


@keras.saving.register_keras_serializable(package="finetune_tf")
class TunedModel(keras.Model):
    """A functional `keras.Model` that also takes numpy arrays and lists of strings.

    `FineTuner.model` is one. It is built like any functional model,
    `TunedModel(inputs, outputs, name=...)`, saves like one, and
    `keras.models.load_model` gives it back as a `TunedModel` (after
    `import finetune_tf`), so a saved text classifier predicts on
    `np.array(["a review"])` or `["a review"]` as the tuner did.

    Examples:
        >>> import keras, numpy as np
        >>> from finetune_tf import TunedModel
        >>> inputs = keras.Input((1,), dtype="string")
        >>> ids = keras.layers.StringLookup(vocabulary=["bad", "good"])(inputs)
        >>> model = TunedModel(inputs, ids)
        >>> model.predict(np.array([["good"], ["bad"]]), verbose=0).ravel().tolist()
        [2, 1]
    """

    def __init__(self, *args, **kwargs):
        # (*args, **kwargs): Keras revives a subclass of this signature from a functional
        # config (layers and their connections), so saved files need nothing else.
        super().__init__(*args, **kwargs)

    @property
    def tuner_config(self) -> dict | None:
        """The settings of the `FineTuner` that saved this model (`FineTuner.load`
        rebuilds the tuner from them), or None."""
        text = getattr(self, "_tuner_json", None)
        return None if text is None else json.loads(text)

    @tuner_config.setter
    def tuner_config(self, config: dict | None):
        # Kept as JSON text: Keras tracks (and wraps) dicts set on a model.
        self._tuner_json = None if config is None else json.dumps(config)

    weight_penalty = None  # a callable of the model giving a loss term, or None (compile sets it)

    @property
    def losses(self):
        """Keras' losses (`add_loss`, regularizers) and, when `FineTuner.compile` set one, the
        backbone's weight penalty (`training.regularization.BackbonePenalty`). The penalty is
        not saved: a loaded model has none until a `FineTuner` compiles it again."""
        losses = super().losses
        term = None if self.weight_penalty is None else self.weight_penalty(self)
        return losses if term is None else [*losses, term]

    def get_config(self):
        config = super().get_config()
        if self.tuner_config is not None:
            config["tuner"] = self.tuner_config
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = copy.deepcopy(config)  # Keras' deserialization consumes what it reads
        tuner = config.pop("tuner", None)
        model = super().from_config(config, custom_objects=custom_objects)
        model.tuner_config = tuner
        return model

    def fit(self, x=None, y=None, *args, **kwargs):
        if "validation_data" in kwargs:
            kwargs["validation_data"] = _validation_as_tensors(kwargs["validation_data"])
        return super().fit(as_tensor_if_text(x), as_array_if_list(y), *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        return super().evaluate(as_tensor_if_text(x), as_array_if_list(y), *args, **kwargs)

    def predict(self, x, *args, **kwargs):
        return super().predict(as_tensor_if_text(x), *args, **kwargs)

    def train_on_batch(self, x, y=None, *args, **kwargs):
        return super().train_on_batch(as_tensor_if_text(x), as_array_if_list(y), *args, **kwargs)

    def test_on_batch(self, x, y=None, *args, **kwargs):
        return super().test_on_batch(as_tensor_if_text(x), as_array_if_list(y), *args, **kwargs)

    def predict_on_batch(self, x):
        return super().predict_on_batch(as_tensor_if_text(x))
