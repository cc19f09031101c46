"""Which Keras models can be a backbone, and how each kind is made one.

Sequential and functional models (nested too) are used as they are, so
their `layers` are what `FreezePolicy` counts; a built subclassed model is
wrapped in a functional model; Keras 2 `.h5` models are re-wrapped; models
with several inputs or outputs are refused with the fix that works; a model
that ends in a softmax (a whole classifier) is accepted with a warning that
names the layer below its classifier.
"""

from __future__ import annotations

import warnings

import keras

from finetune_tf._utils import did_you_mean, shape_tuple, short_list

__all__ = ["cut_at", "is_tf_keras_model", "single_io_model", "warn_if_classifier", "with_inputs"]


def _build_input_shape(model: keras.Model) -> tuple | None:
    """The input shape a subclassed model was built or first called with (batch axis dropped)."""
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) != 1:
        return None
    shape = next(iter(shapes.values()))
    if not isinstance(shape, (tuple, list)) or not shape or isinstance(shape[0], (tuple, list)):
        return None  # several inputs, or not a shape
    return shape_tuple(shape[1:])


def _functional_view(model: keras.Model, input_shape: tuple | None) -> keras.Model:
    """A subclassed model wrapped in a functional model (`input_shape` or its build shape)."""
    shape = input_shape if input_shape is not None else _build_input_shape(model)
    if shape is None:
        raise ValueError(
            f"`model` {model.name!r} ({type(model).__name__}) has no defined inputs: it is a "
            "subclassed model that was not built. Call it once on a batch, or pass "
            "input_shape=, e.g. Backbone.from_model(model, input_shape=(224, 224, 3))."
        )
    inputs = keras.Input(shape_tuple(shape), name="inputs")
    return keras.Model(inputs, model(inputs), name=model.name)


def with_inputs(model: keras.Model, input_shape: tuple | None = None) -> keras.Model:
    """`model` with defined inputs: Sequential and functional models as they are (their
    `layers` are what `FreezePolicy` counts), a built subclassed model wrapped in a
    functional model."""
    if isinstance(model, keras.Sequential):
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):  # not built yet
            inputs = None
        if not inputs:
            raise ValueError(
                f"`model` {model.name!r} is a Sequential model that has not been built, so its "
                "input shape is unknown. Start it with keras.Input(shape), e.g. "
                "keras.Sequential([keras.Input((224, 224, 3)), ...]), or call "
                "model.build((None, *input_shape)) first."
            )
        return model
    if not hasattr(model, "_inputs_struct"):  # subclassed (functional models have it)
        return _functional_view(model, input_shape)
    return model


def single_io_model(model: keras.Model) -> keras.Model:
    """`model` (see `with_inputs`) checked to have one input and one output.

    Keras 2 `.h5` models, which hold their one input and output in lists, are
    re-wrapped with plain tensors.
    """
    model = with_inputs(model)
    if isinstance(model, keras.Sequential):
        return model
    inputs, outputs = model.inputs, model.outputs
    if len(inputs) != 1:
        raise ValueError(
            f"`model` {model.name!r} has {len(inputs)} inputs "
            f"({short_list(t.name for t in inputs)}); a Backbone takes one. Wrap it in a "
            "one-input model that feeds every input, e.g. inputs = keras.Input(shape); "
            "Backbone.from_model(keras.Model(inputs, model([inputs, ...])))."
        )
    if len(outputs) != 1:
        names = [t._keras_history.operation.name for t in outputs]
        raise ValueError(
            f"`model` {model.name!r} has {len(outputs)} outputs (from layers "
            f"{short_list(names)}); a Backbone has one. Cut it at the layer whose output you "
            f"want with output_layer=, e.g. output_layer={names[0]!r}."
        )
    if isinstance(model._inputs_struct, list | tuple) or isinstance(
        model._outputs_struct, list | tuple
    ):
        # e.g. Keras 2 .h5 files: one input and output, but held in lists.
        model = keras.Model(inputs[0], outputs[0], name=model.name)
    return model


_SOFTMAX = ("softmax", "log_softmax")


def _ends_in_softmax(model: keras.Model) -> bool:
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Softmax):
        return True
    activation = getattr(last, "activation", None)
    return getattr(activation, "__name__", None) in _SOFTMAX


def _producer(layer):
    """The layer whose output `layer` takes (its first input, first call), or None."""
    nodes = getattr(layer, "_inbound_nodes", None) or []
    tensors = nodes[0].input_tensors if nodes else []
    history = getattr(tensors[0], "_keras_history", None) if tensors else None
    return history.operation if history is not None else None


_PASS_THROUGH = (
    keras.layers.Activation,
    keras.layers.Softmax,
    keras.layers.Flatten,
    keras.layers.Reshape,
    keras.layers.Dropout,
)


def _cut_below_classifier(model: keras.Model):
    """The layer below a model's classifier: from the softmax, back past activations and
    reshapes to the first layer with a kernel (the classifier), then past dropout to what
    feeds it. None if the graph does not say."""
    layer = model.layers[-1]
    while isinstance(layer, _PASS_THROUGH):
        layer = _producer(layer)
    if layer is None or not hasattr(layer, "kernel"):
        return None
    below = _producer(layer)
    while isinstance(below, keras.layers.Dropout):
        below = _producer(below)
    if below is None or isinstance(below, keras.layers.InputLayer):
        return None
    return below


def warn_if_classifier(model: keras.Model, source: str) -> None:
    """Warns when `model` ends in a softmax: a head would train on class probabilities."""
    if not _ends_in_softmax(model):
        return
    below = _cut_below_classifier(model)
    hint = (
        f" Cut it below the classifier, e.g. output_layer={below.name!r}"
        if below is not None
        else " Cut it below the classifier with output_layer="
    )
    warnings.warn(
        f"The backbone from {source} ends in a softmax (layer {model.layers[-1].name!r}): it "
        "is a whole classifier, so the new head would train on its class probabilities, which "
        f"throws away most of what the network learned.{hint}, or load it without its top "
        "(keras.applications: include_top=False, which Backbone.from_keras_applications does).",
        UserWarning,
        stacklevel=3,
    )


def is_tf_keras_model(obj) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith(("tf_keras", "keras.src.engine", "tensorflow.python.keras"))


def cut_at(model: keras.Model, output_layer: str | None, source: str) -> keras.Model:
    if output_layer is None:
        return model
    if not isinstance(output_layer, str):
        raise TypeError(
            f"`output_layer` must be a layer name (str). Received: output_layer={output_layer!r}."
        )
    names = [layer.name for layer in model.layers]
    if output_layer not in names:
        raise ValueError(
            f"`output_layer`={output_layer!r} is not a layer of {source}."
            f"{did_you_mean(output_layer, names)} Its top-level layers are: "
            f"{short_list(names[-12:])} (last 12 shown; see model.summary())."
        )
    layer = model.get_layer(output_layer)
    try:
        output = layer.output
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"Cannot cut {source} at `output_layer`={output_layer!r}: {error}. Pick a layer "
            "that is used once in the model's graph."
        ) from error
    return keras.Model(model.inputs, output, name=f"{model.name}_to_{output_layer}")
