"""Property-based tests: over shapes, label encodings, head types and freeze policies,
every call either works as documented or raises a documented error.

Each drawn case knows by construction whether it is valid (the oracle here is written
from the docs, not from the implementation): a valid case must train one epoch with a
finite loss and predict the documented shape; an invalid one must raise ValueError or
TypeError at the call that received it, with a message that names the argument in
backticks, and must leave the model's weights untouched. Any other exception (a
TensorFlow error from deep inside `fit`, an IndexError, ...) is a failure.

Hypothesis runs derandomized with no example database by default, so CI sees the same
cases every run; `HYPOTHESIS_PROFILE=explore pytest tests/contracts/test_properties.py` searches
further with fresh random cases.
"""

import os
import re

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head

settings.register_profile(
    "ci",
    max_examples=30,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "explore",
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

DOCUMENTED = (ValueError, TypeError)
NAMES_AN_ARGUMENT = re.compile(r"`[^`]+`")

# --- Backbones whose feature shapes the tests know ---------------------------------

FEATURES = {"vector": (8,), "image": (6, 6, 4)}
INPUTS = {"vector": (5,), "image": (8, 8, 3)}


def make_backbone(kind: str) -> Backbone:
    inputs = keras.Input(INPUTS[kind], name="x")
    if kind == "vector":
        features = keras.layers.Dense(8, activation="relu", name="features")(inputs)
    else:
        features = keras.layers.Conv2D(4, 3, activation="relu", name="features")(inputs)
    return Backbone.from_model(keras.Model(inputs, features, name=f"{kind}_backbone"))


def weights(model: keras.Model) -> list:
    return [w.numpy().copy() for w in model.weights]


def assert_documented_error(error: BaseException):
    assert isinstance(error, DOCUMENTED), f"{type(error).__name__}: {error}"
    assert NAMES_AN_ARGUMENT.search(str(error)), f"message names no argument: {error}"


# --- Heads and label encodings ------------------------------------------------------

CLASS_ENCODINGS = {
    # name: valid?
    "sparse": True,
    "column": True,
    "one_hot": True,
    "one_hot_too_wide": False,
    "soft": True,  # rows of probabilities (label smoothing, mixup, a teacher's)
    "soft_not_summing_to_1": False,
    "out_of_range": False,
    "negative": False,
    "fractional": None,  # valid for a binary head only (a probability of class 1)
    "strings": False,
    "nan": False,
    "one_short": False,
}
REAL_ENCODINGS = {
    "full": True,
    "flat": None,  # valid only for one output/label
    "too_wide": False,
    "strings": False,
    "nan": False,
    "one_short": False,
    "out_of_unit": None,  # invalid for multi-label, valid for regression
}


@st.composite
def heads(draw):
    task = draw(st.sampled_from(["multiclass", "binary", "multilabel", "regression"]))
    options = {
        "pooling": draw(st.sampled_from(["avg", "max", "flatten", "none"])),
        "hidden_units": draw(st.sampled_from([(), (4,), (4, 3)])),
        "dropout": draw(st.sampled_from([0.0, 0.3])),
    }
    if task == "multiclass":
        return Head.classifier(draw(st.integers(3, 5)), logits=draw(st.booleans()), **options)
    if task == "binary":
        return Head.binary(logits=draw(st.booleans()), **options)
    if task == "multilabel":
        return Head.multilabel(draw(st.integers(1, 4)), **options)
    return Head.regressor(draw(st.integers(1, 3)), **options)


def make_labels(head: Head, encoding: str, n: int, lead: tuple, rng) -> tuple:
    """(labels, valid) for `n` examples of a head predicting `lead + (units,)` each."""
    shape = (n, *lead)
    if head.num_classes is not None and head.task != "multilabel":
        k = head.num_classes
        ids = rng.integers(0, k, size=shape)
        valid = CLASS_ENCODINGS[encoding]
        if encoding == "fractional":
            valid = head.task == "binary"
        soft = rng.dirichlet(np.ones(k), size=shape).astype("float32")
        y = {
            "sparse": lambda: ids,
            "column": lambda: ids[..., None],
            "one_hot": lambda: np.eye(k, dtype="float32")[ids],
            "one_hot_too_wide": lambda: np.eye(k + 1, dtype="float32")[ids],
            "soft": lambda: soft,
            "soft_not_summing_to_1": lambda: soft * 0.7,
            "out_of_range": lambda: np.full(shape, k),
            "negative": lambda: -np.ones(shape, "int64"),
            "fractional": lambda: np.full(shape, 0.5),
            "strings": lambda: np.array(list("ab" * n))[:n].reshape(n, *([1] * len(lead))),
            "nan": lambda: np.full(shape, np.nan),
            "one_short": lambda: ids[:-1] if n > 1 else ids[:0],
        }[encoding]()
        return y, valid
    units = head.units
    valid = REAL_ENCODINGS[encoding]
    if encoding == "flat":
        valid = units == 1
    if encoding == "out_of_unit":
        valid = head.task == "regression"
    values = rng.random((*shape, units)).astype("float32")
    if head.task == "multilabel":
        values = np.round(values)
    y = {
        "full": lambda: values,
        "flat": lambda: values[..., 0],
        "too_wide": lambda: np.concatenate([values, values[..., :1]], axis=-1),
        "strings": lambda: values.astype(str),
        "nan": lambda: np.where(values >= 0, np.nan, values),
        "one_short": lambda: values[:-1] if n > 1 else values[:0],
        "out_of_unit": lambda: values + 2.0,
    }[encoding]()
    return y, valid


@st.composite
def training_cases(draw):
    kind = draw(st.sampled_from(sorted(FEATURES)))
    head = draw(heads())
    classes = head.num_classes is not None and head.task != "multilabel"
    encoding = draw(st.sampled_from(sorted(CLASS_ENCODINGS if classes else REAL_ENCODINGS)))
    x_shape = draw(
        st.sampled_from(["right", "right", "right", "wrong_size", "wrong_rank"])
    )  # mostly right, so the label cases get exercised
    n = draw(st.integers(1, 6))
    batch_size = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    return kind, head, encoding, x_shape, n, batch_size, seed


def make_inputs(kind: str, x_shape: str, n: int, rng) -> tuple:
    shape = INPUTS[kind]
    if x_shape == "wrong_size":
        shape = (*shape[:-1], shape[-1] + 1)
    elif x_shape == "wrong_rank":
        shape = (*shape, 1)
    return rng.random((n, *shape)).astype("float32"), x_shape == "right"


@given(training_cases())
# Found by the explore profile: the default multi-label AUC took only rank-2 predictions.
@example(("image", Head.multilabel(1, pooling="none"), "flat", "right", 1, 1, 0))
@example(("image", Head.multilabel(3, pooling="none"), "full", "right", 3, 2, 0))
def test_any_head_and_label_encoding_trains_or_is_refused(case):
    kind, head, encoding, x_shape, n, batch_size, seed = case
    rng = np.random.default_rng(seed)
    features = FEATURES[kind]
    if head.pooling == "flatten" and len(features) > 1:
        lead = ()
    elif head.pooling == "none":
        lead = features[:-1]  # per-position predictions
    else:
        lead = ()
    tuner = FineTuner(make_backbone(kind), head, freeze=FreezePolicy.none())
    tuner.compile(learning_rate=1e-2)
    x, x_valid = make_inputs(kind, x_shape, n, rng)
    y, y_valid = make_labels(head, encoding, n, lead, rng)
    before = weights(tuner.model)
    if x_valid and y_valid:
        history = tuner.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
        assert np.isfinite(history.history["loss"][-1])
        predictions = tuner.predict(x, verbose=0)
        assert predictions.shape == (n, *lead, head.units)
        assert np.isfinite(predictions).all()
        tuner.evaluate(x, y, verbose=0)
        return
    with pytest.raises(Exception) as info:
        tuner.fit(x, y, epochs=1, batch_size=batch_size, verbose=0)
    assert_documented_error(info.value)
    if not x_valid:
        assert "`x`" in str(info.value)
    for old, new in zip(before, weights(tuner.model), strict=True):
        np.testing.assert_array_equal(old, new)  # nothing trained on a refused call


# --- Freeze policies ----------------------------------------------------------------

LAYERS = ["x", "dense_1", "bn", "dense_2", "features"]


def freeze_backbone() -> Backbone:
    inputs = keras.Input((5,), name="x")
    h = keras.layers.Dense(6, name="dense_1")(inputs)
    h = keras.layers.BatchNormalization(name="bn")(h)
    h = keras.layers.Dense(6, activation="relu", name="dense_2")(h)
    return Backbone.from_model(
        keras.Model(inputs, keras.layers.Dense(4, name="features")(h), name="freeze_backbone")
    )


@st.composite
def policies(draw):
    """(make the policy, expected frozen layers or the exception type and where it's raised)."""
    kind = draw(st.sampled_from(["all", "none", "bottom", "top", "until", "matching"]))
    batchnorm = draw(st.sampled_from(["inference", "train", "freeze", "sometimes"]))
    count = len(LAYERS)
    args: tuple = ()
    options: dict = {}
    if kind in ("bottom", "top"):
        args = (draw(st.integers(-2, count + 2)),)
    elif kind == "until":
        args = (draw(st.sampled_from([*LAYERS, "dense1", "nope", ""])),)
        options["inclusive"] = draw(st.booleans())
    elif kind == "matching":
        args = (draw(st.sampled_from(["dense", "^d", "features$", "bn|dense_1", "zzz", "("])),)
        options["train"] = draw(st.booleans())
    return kind, args, options, batchnorm


def expected_frozen(kind, args, options) -> set | None:
    """The layers the docs say are frozen, or None when the policy cannot fit the backbone."""
    count = len(LAYERS)
    if kind == "all":
        return set(LAYERS)
    if kind == "none":
        return set()
    if kind in ("bottom", "top"):
        n = args[0]
        if n > count:
            return None
        return set(LAYERS[:n] if kind == "bottom" else LAYERS[: count - n])
    if kind == "until":
        if args[0] not in LAYERS:
            return None
        return set(LAYERS[: LAYERS.index(args[0]) + int(options["inclusive"])])
    matches = {name for name in LAYERS if re.search(args[0], name)}
    if not matches:
        return None
    return set(LAYERS) - matches if options["train"] else matches


def policy_constructor_refuses(kind, args, batchnorm) -> bool:
    if batchnorm not in ("inference", "train", "freeze"):
        return True
    if kind in ("bottom", "top"):
        return args[0] < 0
    if kind == "until":
        return args[0] == ""
    if kind == "matching":
        return args[0] == "("
    return False


@given(policies(), st.integers(0, 2**16))
def test_any_freeze_policy_applies_as_documented_or_is_refused(policy_case, seed):
    kind, args, options, batchnorm = policy_case
    if policy_constructor_refuses(kind, args, batchnorm):
        with pytest.raises(Exception) as info:
            getattr(FreezePolicy, kind)(*args, batchnorm=batchnorm, **options)
        assert_documented_error(info.value)
        return
    policy = getattr(FreezePolicy, kind)(*args, batchnorm=batchnorm, **options)
    frozen = expected_frozen(kind, args, options)
    backbone = freeze_backbone()
    if frozen is None:
        with pytest.raises(Exception) as info:
            FineTuner(backbone, Head.regressor(), freeze=policy)
        assert_documented_error(info.value)
        return
    if batchnorm == "freeze":
        frozen = frozen | {"bn"}
    tuner = FineTuner(backbone, Head.regressor(), freeze=policy)
    layers = {layer.name: layer for layer in tuner.backbone.layers}
    assert sorted(layers) == sorted(LAYERS)
    assert {name for name, layer in layers.items() if not layer.trainable} == frozen

    rng = np.random.default_rng(seed)
    x = rng.normal(3.0, 2.0, size=(16, 5)).astype("float32")
    y = rng.normal(size=(16,)).astype("float32")
    before = {name: [w.numpy().copy() for w in layer.weights] for name, layer in layers.items()}
    tuner.compile(optimizer="sgd", learning_rate=0.1)
    tuner.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for name, layer in layers.items():
        for old, variable in zip(before[name], layer.weights, strict=True):
            moving = "moving" in variable.path
            changed = not np.array_equal(old, variable.numpy())
            if moving:  # BatchNorm statistics move only in "train" mode, on a trained layer
                assert changed == (batchnorm == "train" and name not in frozen), variable.path
            elif name in frozen:
                assert not changed, f"frozen {variable.path} changed"
            elif name.startswith("dense") or name == "features":
                assert changed, f"trainable {variable.path} did not change"


# --- Input shapes and the input adapter -------------------------------------------------

image_sizes = st.integers(1, 12)


@given(
    input_shape=st.one_of(
        st.none(),
        st.tuples(image_sizes, image_sizes, st.integers(1, 4)),
        st.tuples(st.integers(-1, 4), image_sizes),
    ),
    data_matches=st.booleans(),
    n=st.integers(1, 4),
)
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_any_image_shape_is_adapted_or_refused(input_shape, data_matches, n):
    backbone = make_backbone("image")
    adaptable = input_shape is None or (len(input_shape) == 3 and min(input_shape) >= 1)
    if not adaptable:
        with pytest.raises(Exception) as info:
            FineTuner(backbone, Head.classifier(3), input_shape=input_shape)
        assert_documented_error(info.value)
        assert "`input_shape`" in str(info.value)
        return
    tuner = FineTuner(backbone, Head.classifier(3), input_shape=input_shape)
    expected = input_shape or INPUTS["image"]
    shape = expected if data_matches else (expected[0] + 1, *expected[1:])
    x = np.random.default_rng(n).random((n, *shape)).astype("float32")
    if not data_matches:
        with pytest.raises(Exception) as info:
            tuner.predict(x, verbose=0)
        assert_documented_error(info.value)
        assert "`x`" in str(info.value)
        return
    predictions = tuner.predict(x, verbose=0)
    assert predictions.shape == (n, 3)
    np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-5)
    tuner.compile()
    assert np.isfinite(tuner.fit(x, np.arange(n) % 3, epochs=1, verbose=0).history["loss"][0])
