"""A trainable Keras 3 layer around a TF2 SavedModel (TF Hub's reusable format).

`tensorflow_hub.KerasLayer` is a tf_keras (Keras 2) layer and cannot enter a
Keras 3 model; Keras 3's `TFSMLayer` copies the restored variables, so the
SavedModel's functions never see what the optimizer changed. `HubLayer`
wraps the SavedModel's own `tf.Variable`s in Keras variables, so they train,
freeze, save and load like any Keras weight, and passes `training` to the
SavedModel's `__call__` when it accepts it (BatchNorm and dropout inside
behave as under `hub.KerasLayer`). Where a handle's SavedModel is on disk is
`hub_handles`'.
"""

from __future__ import annotations

import inspect

import keras
import tensorflow as tf
from keras.src.saving import serialization_lib

from finetune_tf._utils import as_str_path, short_list
from finetune_tf.sources.hub_handles import ARCHIVE_SUFFIXES, hub_cache_dir, resolve_handle
from finetune_tf.sources.savedmodel_trust import unsafe_ops

__all__ = [
    # ARCHIVE_SUFFIXES, hub_cache_dir and resolve_handle live in `hub_handles`; named here
    # too for 0.2's `finetune_tf.hub` path (`_aliases`), whose public names they were.
    "ARCHIVE_SUFFIXES",
    "HubLayer",
    "VariableGroup",
    "hub_cache_dir",
    "resolve_handle",
]


class _RestoredVariable(keras.Variable):
    """A Keras variable that *is* an existing `tf.Variable` (no copy)."""

    def _initialize_with_initializer(self, initializer):
        self._initialize(initializer(self._shape, dtype=self._dtype))


def _wrap_variable(variable: tf.Variable, trainable: bool) -> keras.Variable:
    name = variable.name.split(":")[0].replace("/", "_")
    return _RestoredVariable(
        initializer=lambda shape, dtype: variable,
        shape=variable.shape,
        dtype=variable.dtype.name,
        trainable=trainable,
        name=name,
    )


def _accepts_training(fn) -> bool:
    spec = getattr(fn, "function_spec", None)
    fullargspec = getattr(spec, "fullargspec", None)
    if fullargspec is not None:
        return "training" in fullargspec.args or "training" in fullargspec.kwonlyargs
    try:
        return "training" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _handle_of(variable):
    """The resource handle a traced function captures for `variable`."""
    if isinstance(variable, tf.distribute.DistributedValues):  # loaded in a strategy's scope
        return variable._primary.handle
    return variable.handle


def _in_order_of_use(fn, variables) -> list:
    """`variables` in the order the traced function first reads them.

    Variables that cannot be placed (no traced graph, nested calls) keep their
    SavedModel order after the placed ones.
    """
    by_handle = {id(_handle_of(v)): v for v in variables}
    ordered, seen = [], set()
    concrete_functions = getattr(fn, "concrete_functions", None)
    if concrete_functions is None and hasattr(fn, "graph"):
        concrete_functions = [fn]
    try:
        graph = concrete_functions[-1].graph
        external = {internal.name: ext for ext, internal in graph.captures}
        for op in graph.get_operations():
            for tensor in op.inputs:
                variable = by_handle.get(id(external.get(tensor.name)))
                if variable is not None and id(variable) not in seen:
                    seen.add(id(variable))
                    ordered.append(variable)
    except (AttributeError, IndexError, TypeError):
        pass
    return ordered + [v for v in variables if id(v) not in seen]


class VariableGroup:
    """The variables of one name scope of a SavedModel, frozen or trained together.

    `Backbone.layers` lists these for a SavedModel or Hub backbone, in order
    of use, so `FreezePolicy` works on it as on a Keras backbone.

    Attributes:
        name: str. The name scope, e.g. `"block_3_expand"`.
        weights: list. The group's Keras variables.
        is_batchnorm: bool. Whether the group holds BatchNorm statistics.
    """

    def __init__(self, name: str, members: list):
        self.name = name
        self._members = members  # (keras variable, trainable in the SavedModel)
        self.weights = [variable for variable, _ in members]
        self.is_batchnorm = any("moving_mean" in v.name for v in self.weights)

    @property
    def trainable(self) -> bool:
        trainable = [v.trainable for v, can_train in self._members if can_train]
        return bool(trainable) and all(trainable)

    @trainable.setter
    def trainable(self, value: bool):
        for variable, can_train in self._members:
            if can_train:
                variable.trainable = bool(value)

    @property
    def trainable_weights(self) -> list:
        return [v for v in self.weights if v.trainable]

    def __repr__(self):
        return f"<VariableGroup {self.name!r}: {len(self.weights)} variables>"


@keras.saving.register_keras_serializable(package="finetune_tf")
class HubLayer(keras.layers.Layer):
    """A Keras 3 layer that runs and fine-tunes a TF2 SavedModel.

    Works on TF Hub handles (https URLs resolved through tensorflow_hub's cache)
    and on local SavedModel directories. The SavedModel's trainable variables
    become this layer's trainable weights, the others its non-trainable
    weights; its `regularization_losses` are added to the model's losses
    while the layer trains.

    A saved `.keras` model stores the handle and the fine-tuned weights; the
    handle must still resolve when the model is loaded. In safe mode that load
    fetches nothing (a URL must be in tensorflow_hub's cache) and refuses a
    SavedModel whose graph holds ops outside `sources.trust.ALLOWED_OPS`.

    Args:
        handle: str. A TF Hub URL or a local SavedModel directory.
        signature: str, optional. Call this named signature (e.g.
            `"serving_default"`) instead of the object's `__call__`.
            Signatures take no `training` argument.
        output_key: str, optional. For dict outputs, the key to return (e.g.
            `"pooled_output"`). Without it a dict output is returned whole.
        arguments: dict, optional. Extra keyword arguments for every call.
        trainable: bool. Whether the SavedModel's variables train. Defaults
            to `True`.

    Examples:
        >>> import tempfile, numpy as np, tensorflow as tf
        >>> from finetune_tf import HubLayer
        >>> class Scale(tf.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.w = tf.Variable(2.0)
        ...     @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        ...     def __call__(self, x):
        ...         return x * self.w
        >>> path = tempfile.mkdtemp()
        >>> tf.saved_model.save(Scale(), path)
        >>> layer = HubLayer(path)
        >>> layer(np.ones((1, 3), "float32")).numpy().tolist()
        [[2.0, 2.0, 2.0]]
    """

    def __init__(
        self,
        handle: str,
        signature: str | None = None,
        output_key: str | None = None,
        arguments: dict | None = None,
        trainable: bool = True,
        frozen_groups: list | None = None,
        **kwargs,
    ):
        super().__init__(trainable=trainable, **kwargs)
        self.handle = as_str_path(handle, "handle", "a URL or a path to a SavedModel directory")
        self.signature = signature
        self.output_key = output_key
        self.arguments = dict(arguments or {})
        path = resolve_handle(self.handle)
        self._loaded = tf.saved_model.load(path)
        self._input_name = None
        if signature is not None:
            if signature not in self._loaded.signatures:
                raise ValueError(
                    f"The SavedModel at {handle!r} has no signature {signature!r}. "
                    f"Available signatures: {short_list(self._loaded.signatures.keys())}."
                )
            self._fn = self._loaded.signatures[signature]
            names = list(self._fn.structured_input_signature[1].keys())
            if len(names) != 1:
                raise ValueError(
                    f"Signature {signature!r} takes {len(names)} inputs ({short_list(names)}); "
                    "HubLayer supports signatures with one input."
                )
            self._input_name = names[0]
            self._accepts_training = False
        else:
            if not callable(self._loaded):
                raise ValueError(
                    f"The SavedModel at {handle!r} has no __call__ function. Pass "
                    f"signature= with one of its signatures: "
                    f"{short_list(self._loaded.signatures.keys()) or 'none'}."
                )
            self._fn = self._loaded
            self._accepts_training = _accepts_training(self._loaded.__call__)
        self._regularization_losses = list(getattr(self._loaded, "regularization_losses", []))
        self._track_restored_variables()
        # Mixed precision: the SavedModel runs in its own dtype, with casts at its edges
        # (see `input_dtype`), whatever this layer's dtype policy.
        declared = self.input_spec_from_saved_model()
        self._saved_input_dtype = declared[1] if declared else None
        frozen_groups = set(frozen_groups or ())
        for group in self.variable_groups:
            if group.name in frozen_groups:
                group.trainable = False
        self.built = True

    def _track_restored_variables(self):
        loaded = self._loaded
        if hasattr(loaded, "variables"):
            all_variables = list(loaded.variables)
        else:
            all_variables = list(getattr(self._fn, "variables", []))
        trainable_ids = {id(v) for v in getattr(loaded, "trainable_variables", [])}
        # Keras' own order: trainable first, then the rest, each in SavedModel order.
        self.restored_variable_names = []
        wrapped = {}
        for want_trainable in (True, False):
            for variable in all_variables:
                if (id(variable) in trainable_ids) == want_trainable:
                    keras_variable = _wrap_variable(variable, want_trainable)
                    self._track_variable(keras_variable)
                    self.restored_variable_names.append(variable.name.split(":")[0])
                    wrapped[id(variable)] = keras_variable
        groups = {}
        traced = self._fn if self._input_name is not None else self._loaded.__call__
        for variable in _in_order_of_use(traced, all_variables):
            scope = variable.name.split(":")[0].rpartition("/")[0] or self.name
            groups.setdefault(scope, []).append(
                (wrapped[id(variable)], id(variable) in trainable_ids)
            )
        self.variable_groups = [VariableGroup(name, members) for name, members in groups.items()]

    @property
    def input_dtype(self):
        """Inputs are converted to the SavedModel's declared input dtype."""
        return self._saved_input_dtype or self.compute_dtype

    def call(self, inputs, training=None):
        kwargs = dict(self.arguments)
        training = bool(training) and self.trainable
        if self._saved_input_dtype is not None and inputs.dtype != self._saved_input_dtype:
            inputs = tf.cast(inputs, self._saved_input_dtype)
        if self._accepts_training:
            kwargs["training"] = training
        if self._input_name is not None:
            result = self._fn(**{self._input_name: inputs}, **kwargs)
        else:
            result = self._fn(inputs, **kwargs)
        if isinstance(result, dict):
            if self.output_key is not None:
                if self.output_key not in result:
                    raise ValueError(
                        f"output_key={self.output_key!r} is not an output of {self.handle!r}. "
                        f"Available outputs: {short_list(result.keys())}."
                    )
                result = result[self.output_key]
            elif len(result) == 1:
                result = next(iter(result.values()))
        if training:
            for loss_fn in self._regularization_losses:
                self.add_loss(loss_fn())
        return result

    @classmethod
    def from_config(cls, config):
        # Loading a model file: the file, not the user, chose this SavedModel. In safe mode,
        # fetch nothing and refuse a graph holding ops that do more than compute; checked
        # before tf.saved_model.load, which runs the SavedModel's initializers.
        if serialization_lib.in_safe_mode() is not False:
            handle = as_str_path(config.get("handle"), "handle", "a URL or a SavedModel path")
            path = resolve_handle(handle, download=False)
            found = unsafe_ops(path)
            if found:
                raise ValueError(
                    f"Refusing to load the SavedModel `handle`={handle!r} named by the model "
                    "file: its graph holds ops that could write files or run Python (or "
                    f"otherwise do more than compute), on load or when it runs: "
                    f"{', '.join(found)}. Safe mode allows only ops that compute "
                    "(finetune_tf.sources.trust.ALLOWED_OPS). If you trust the SavedModel's "
                    "author, load with safe_mode=False."
                )
        return cls(**config)

    def get_config(self):
        return {
            **super().get_config(),
            "handle": self.handle,
            "signature": self.signature,
            "output_key": self.output_key,
            "arguments": self.arguments,
            "frozen_groups": [g.name for g in self.variable_groups if not g.trainable],
        }

    def input_spec_from_saved_model(self):
        """The (shape, dtype) of the SavedModel's input, without the batch axis.

        Returns `None` when the SavedModel does not declare one.
        """
        if self._input_name is not None:
            spec = self._fn.structured_input_signature[1][self._input_name]
            return tuple(spec.shape)[1:], spec.dtype.name
        fn = self._loaded.__call__
        for concrete in getattr(fn, "concrete_functions", []):
            args = concrete.structured_input_signature[0]
            if args and isinstance(args[0], tf.TensorSpec):
                return tuple(args[0].shape)[1:], args[0].dtype.name
        return None
