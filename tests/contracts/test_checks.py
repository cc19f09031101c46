"""The argument checks of finetune_tf._checks, and the calls that use them.

The helpers are tested on their own first (types, bounds, choices, messages); then
one bad call per call site that no other test file covers, so that dropping the check
from that call makes a test fail.
"""

import doctest
import re

import numpy as np
import pytest

from finetune_tf import (
    FeatureCache,
    FreezePolicy,
    Head,
    InputAdapter,
    Stage,
    _checks,
    gradual_unfreezing,
)
from finetune_tf._checks import check_choice, check_int, check_number
from finetune_tf.model.head.task import get_task
from finetune_tf.outputs.export import export_model
from finetune_tf.runtime.precision import resolve_precision
from finetune_tf.training.compile import check_jit_compile, check_learning_rate
from finetune_tf.training.lr_finder import find_learning_rate
from finetune_tf.training.seeding import check_seed


def test_the_examples_in_the_docstrings_run():
    result = doctest.testmod(_checks, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 8


# --- check_int -------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False, np.bool_(True), 2.0, "3", None, [1]])
def test_check_int_refuses_what_is_not_a_whole_number(value):
    with pytest.raises(TypeError) as info:
        check_int(value, "epochs")
    message = str(info.value)
    assert message.startswith("`epochs` must be a whole number >= 1. Received: epochs=")
    assert f"epochs={value!r} of type {type(value).__name__}." in message


@pytest.mark.parametrize("value", [np.int8(3), np.int64(3), np.uint16(3), 3])
def test_check_int_takes_numpy_integers_and_returns_a_plain_int(value):
    result = check_int(value, "units")
    assert result == 3 and type(result) is int


def test_check_int_bounds_are_inclusive():
    assert check_int(0, "n", minimum=0) == 0
    assert check_int(5, "steps", maximum=5) == 5
    assert check_int(-7, "offset", minimum=None) == -7
    with pytest.raises(ValueError, match=r"^`n` must be a whole number >= 0\. Received: n=-1\.$"):
        check_int(-1, "n", minimum=0)
    with pytest.raises(ValueError, match=r"a whole number in \[1, 5\]\. Received: steps=6\."):
        check_int(6, "steps", maximum=5)


def test_check_int_none_where_and_hint():
    assert check_int(None, "seed", allow_none=True) is None
    with pytest.raises(ValueError) as info:
        check_int(0, "epochs", where="Stage", meaning="its length", hint="Drop the stage.")
    assert str(info.value) == (
        "`Stage(epochs)` must be a whole number >= 1: its length. Received: epochs=0. "
        "Drop the stage."
    )
    with pytest.raises(TypeError, match=r"whole number >= 0 or None\. Received: seed='1'"):
        check_int("1", "seed", minimum=0, allow_none=True)
    with pytest.raises(ValueError, match=r'>= 1 or "auto"\. Received: epochs=\'x\' of type str'):
        check_int("x", "epochs", also='"auto"', type_error=ValueError)


def test_check_int_names_the_container_of_an_entry():
    with pytest.raises(ValueError) as info:
        check_int(0, "hidden_units", each=(64, 0))
    assert str(info.value) == (
        "Each entry of `hidden_units` must be a whole number >= 1. "
        "Received: hidden_units=(64, 0), with the entry 0."
    )


def test_the_type_error_can_stay_a_value_error_where_it_was_one():
    with pytest.raises(ValueError) as info:
        check_int(2.5, "steps", type_error=ValueError)
    assert type(info.value) is ValueError and "steps=2.5 of type float" in str(info.value)


# --- check_number ----------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.5, np.float32(0.25), np.int64(0), np.float64(0.999)])
def test_check_number_takes_python_and_numpy_numbers(value):
    result = check_number(value, "dropout", low=0, high=1, high_inclusive=False)
    assert result == float(value) and type(result) is float


@pytest.mark.parametrize("value", [True, np.bool_(False), "0.1", None, [0.1]])
def test_check_number_refuses_what_is_not_a_number(value):
    received = re.escape(f"Received: rate={value!r} of type {type(value).__name__}.")
    with pytest.raises(TypeError, match=rf"^`rate` must be a finite number >= 0\. {received}$"):
        check_number(value, "rate", low=0)


@pytest.mark.parametrize(
    "low_inclusive, high_inclusive, expected",
    [
        (True, True, "[0, 1]"),
        (False, True, "(0, 1]"),
        (True, False, "[0, 1)"),
        (False, False, "(0, 1)"),
    ],
)
def test_check_number_bounds_inclusive_or_exclusive(low_inclusive, high_inclusive, expected):
    bounds = {"low_inclusive": low_inclusive, "high_inclusive": high_inclusive}
    for value, inclusive in ((0, low_inclusive), (1, high_inclusive)):
        if inclusive:
            assert check_number(value, "decay", low=0, high=1, **bounds) == value
        else:
            message = f"in {expected}. Received: decay={value}."
            with pytest.raises(ValueError, match=re.escape(message)):
                check_number(value, "decay", low=0, high=1, **bounds)
    with pytest.raises(ValueError, match=re.escape(f"a number in {expected}")):
        check_number(1.5, "decay", low=0, high=1, **bounds)


def test_check_number_one_sided_bounds_and_non_finite_values():
    assert check_number(1e-9, "learning_rate", low=0, low_inclusive=False) == 1e-9
    with pytest.raises(ValueError, match=r"a finite number > 0\. Received: learning_rate=0\."):
        check_number(0, "learning_rate", low=0, low_inclusive=False)
    with pytest.raises(ValueError, match=r"a finite number <= 2\. Received: x=3\."):
        check_number(3, "x", high=2)
    for bad in (float("nan"), float("inf"), -float("inf"), np.float32("nan")):
        with pytest.raises(ValueError, match="Received: weight_decay="):
            check_number(bad, "weight_decay", low=0)
    assert check_number(None, "decay", allow_none=True) is None


# --- check_choice ----------------------------------------------------------------


def test_check_choice_returns_the_value_and_suggests_a_close_one():
    assert check_choice("avg", "pooling", ("avg", "max")) == "avg"
    assert check_choice(np.str_("max"), "pooling", ("avg", "max")) == "max"
    with pytest.raises(ValueError) as info:
        check_choice("flaten", "pooling", ("avg", "max", "flatten"), where="Head")
    assert str(info.value) == (
        "`Head(pooling)` must be one of 'avg', 'max' or 'flatten'. Received: pooling='flaten'. "
        "Did you mean 'flatten'?"
    )
    with pytest.raises(ValueError) as info:
        check_choice("zzz", "pooling", ("avg", "max"))
    assert "Did you mean" not in str(info.value)


def test_check_choice_compares_true_false_and_none_strictly():
    for ok in ("auto", True, False, None):
        assert check_choice(ok, "x", ("auto", True, False, None)) is ok
    for bad in (1, 0, 1.0, np.True_, "True"):
        with pytest.raises(ValueError, match=rf"Received: x={re.escape(repr(bad))}"):
            check_choice(bad, "x", ("auto", True, False, None))
    with pytest.raises(ValueError, match=r"Received: x=\[1\] of type list\.$"):
        check_choice([1], "x", ("auto",))


def test_check_choice_names_another_kind_of_value_and_a_hint():
    with pytest.raises(ValueError) as info:
        check_choice("yes", "cache", ("auto", True), also="a Cache", hint="See the docs.")
    assert str(info.value) == (
        "`cache` must be one of 'auto', True or a Cache. Received: cache='yes'. See the docs."
    )


# --- Call sites no other test file covers ------------------------------------------

SITES = [
    (lambda: FreezePolicy("alll"), ValueError, r"FreezePolicy\(kind\).*kind='alll'.*'all'"),
    (lambda: FreezePolicy.top(True), TypeError, r"FreezePolicy.top\(k\).*k=True of type bool"),
    (lambda: InputAdapter((8, 8, 3), channels="proj"), ValueError, r"channels='proj'.*'project'"),
    (lambda: Head.regressor(weight_decay=float("nan")), ValueError, r"weight_decay=nan"),
    (lambda: Head.classifier(2.5), ValueError, r"classifier\(num_classes\).*=2.5 of type float"),
    (lambda: Head.multilabel(0), ValueError, r"Head.multilabel\(num_labels\).*num_labels=0"),
    (lambda: Head.regressor(2.0), ValueError, r"Head.regressor\(num_outputs\).*num_outputs=2.0"),
    (lambda: get_task("nope"), ValueError, r"`task` must be one of .*task='nope'"),
    (lambda: Stage(0), ValueError, r"`Stage\(epochs\)` must be a whole number >= 1.*epochs=0"),
    (lambda: Stage(2.5), TypeError, r"`Stage\(epochs\)` must be .*epochs=2.5 of type float"),
    (lambda: Stage(1, early_stopping=True), ValueError, r"early_stopping=True of type bool"),
    (lambda: Stage(2, warmup_epochs=True), ValueError, r"warmup_epochs=True of type bool"),
    (lambda: gradual_unfreezing(True), ValueError, r"layer_count=True of type bool"),
    (
        lambda: check_seed(-1),
        ValueError,
        r"`seed` must be a whole number in \[0, 4294967295\].*seed=-1",
    ),
    (lambda: check_learning_rate(float("inf")), ValueError, r"finite number > 0.*=inf"),
    (lambda: check_jit_compile(1), ValueError, r"jit_compile=1 of type int"),
    (lambda: resolve_precision(0, []), ValueError, r"mixed_precision=0 of type int"),
    (
        lambda: export_model(None, Head.classifier(3), "m", quantize="int8"),
        ValueError,
        r"`quantize` must be one of None or 'dynamic'.*quantize='int8'",
    ),
    (lambda: FeatureCache(mode=1), ValueError, r"FeatureCache\(mode\).*mode=1 of type int"),
    (lambda: FeatureCache.get(1), ValueError, r"`feature_cache` must be .*feature_cache=1"),
    (lambda: FeatureCache(memory_limit=2.0**30), ValueError, r"memory_limit=1073741824.0"),
    (
        lambda: find_learning_rate(
            None, None, None, min_lr=1e-5, max_lr=1.0, steps=2, batch_size=8, divergence=4.0
        ),
        ValueError,
        r"`steps` must be a whole number >= 3.*steps=2",
    ),
]


@pytest.mark.parametrize("site", SITES, ids=[f"site{i}" for i in range(len(SITES))])
def test_each_call_site_refuses_bad_input_with_its_builtin_type(site):
    call, exception, words = site
    with pytest.raises(exception) as info:
        call()
    assert type(info.value) is exception
    assert re.search(words, str(info.value)), str(info.value)


def test_call_sites_take_numpy_integers():
    assert check_seed(np.int64(7)) == 7 and type(check_seed(np.int64(7))) is int
    assert FreezePolicy.top(np.int64(3)) == FreezePolicy.top(3)
    assert Head.classifier(np.int32(4)).units == 4
    assert Stage(np.int64(2), early_stopping=np.int8(1), warmup_epochs=np.float32(0.5)).epochs == 2
    assert len(gradual_unfreezing(np.int64(6), steps=np.int64(2))) == 3
