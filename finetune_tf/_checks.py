"""Declarative argument checks: the three shapes of guard the public calls repeat.

`check_int` (a whole number in a range), `check_number` (a finite number in a
range) and `check_choice` (one of a few values) each check one argument and
return it. Bad input raises the builtin exception that fits, `TypeError` for
the wrong type and `ValueError` for a value out of range or not among the
choices, with one message layout that names the argument, what was received,
what was expected and, in the call site's `hint`, how to fix it:

    `Stage(epochs)` must be a whole number >= 1. Received: epochs=0. To skip a
    stage, leave it out of the schedule.

Some calls raised `ValueError` for a wrong type before these helpers existed;
they pass `type_error=ValueError` and keep doing so.

Examples:
    >>> from finetune_tf._checks import check_choice, check_int
    >>> check_int(3, "epochs", where="Stage")
    3
    >>> check_choice("mean", "pooling", ("avg", "max"))
    Traceback (most recent call last):
    ...
    ValueError: `pooling` must be one of 'avg' or 'max'. Received: pooling='mean'. Did you ...?
"""

from __future__ import annotations

import math

import numpy as np

from finetune_tf._utils import did_you_mean

__all__ = ["check_choice", "check_int", "check_number"]


def _either(items: list[str]) -> str:
    """'a', 'a or b', 'a, b or c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " or " + items[-1]


def _refusal(error, value, name, expected, *, where, meaning, hint, show_type, each=None, names=()):
    """`error` with the message layout every check shares; `names` are suggested for a
    misspelt string."""
    subject = f"`{where}({name})`" if where else f"`{name}`"
    if each is None:
        received = f"{name}={value!r}"
    else:
        subject = f"Each entry of {subject}"
        received = f"{name}={each!r}, with the entry {value!r}"
    if show_type:
        received += f" of type {type(value).__name__}"
    message = f"{subject} must be {expected}{': ' + meaning if meaning else ''}. "
    message += f"Received: {received}."
    if isinstance(value, str) and names:
        message += did_you_mean(value, names)
    return error(message + (f" {hint}" if hint else ""))


def _bounds(low, high, low_inclusive=True, high_inclusive=True) -> str:
    if low is not None and high is not None:
        return f" in {'[' if low_inclusive else '('}{low}, {high}{']' if high_inclusive else ')'}"
    if low is not None:
        return f" {'>=' if low_inclusive else '>'} {low}"
    if high is not None:
        return f" {'<=' if high_inclusive else '<'} {high}"
    return ""


def check_int(
    value,
    name: str,
    *,
    minimum: int | None = 1,
    maximum: int | None = None,
    allow_none: bool = False,
    also: str = "",
    where: str = "",
    meaning: str = "",
    hint: str = "",
    each=None,
    type_error: type[Exception] = TypeError,
) -> int | None:
    """`value` as a plain int in [`minimum`, `maximum`] (None when `allow_none`).

    A Python or numpy integer passes; a bool, float or string is refused with
    `type_error`, a number out of range with a ValueError.

    Args:
        value: what the caller passed.
        name: the argument's name, as the caller wrote it.
        minimum: the least value allowed; `None` for no lower bound. Defaults to 1.
        maximum: the largest value allowed; `None` (the default) for no upper bound.
        allow_none: whether `None` passes (and is returned).
        also: another accepted kind of value the caller handled before the
            check, named in the message (e.g. `'"auto"'`).
        where: the call the argument belongs to, e.g. `"Stage"`: the message
            then names `` `Stage(epochs)` ``.
        meaning: what the number means, said after what is expected.
        hint: a sentence on how to fix it.
        each: the container `value` came from (the message then shows it).
        type_error: the exception for the wrong type. Defaults to TypeError.

    Examples:
        >>> import numpy as np
        >>> check_int(np.int64(4), "num_classes")
        4
        >>> check_int(True, "epochs")
        Traceback (most recent call last):
        ...
        TypeError: `epochs` must be a whole number >= 1. Received: epochs=True of type bool.
    """
    if value is None and allow_none:
        return None
    expected = "a whole number" + _bounds(minimum, maximum)
    expected = _either([expected] + (["None"] if allow_none else []) + ([also] if also else []))
    details = {"where": where, "meaning": meaning, "hint": hint, "each": each}
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise _refusal(type_error, value, name, expected, show_type=True, **details)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise _refusal(ValueError, value, name, expected, show_type=False, **details)
    return int(value)


def check_number(
    value,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_inclusive: bool = True,
    high_inclusive: bool = True,
    allow_none: bool = False,
    also: str = "",
    where: str = "",
    meaning: str = "",
    hint: str = "",
    type_error: type[Exception] = TypeError,
) -> float | None:
    """`value` as a finite float between `low` and `high` (None when `allow_none`).

    Python and numpy ints and floats pass; a bool or string is refused with
    `type_error`; NaN, an infinity or a number out of range with a ValueError.
    The arguments are those of `check_int`; `low_inclusive` and
    `high_inclusive` say whether the bounds themselves are allowed (both
    are by default).

    Examples:
        >>> check_number(0, "dropout", low=0, high=1, high_inclusive=False)
        0.0
        >>> check_number(1.0, "dropout", low=0, high=1, high_inclusive=False)
        Traceback (most recent call last):
        ...
        ValueError: `dropout` must be a number in [0, 1). Received: dropout=1.0.
    """
    if value is None and allow_none:
        return None
    noun = "a number" if low is not None and high is not None else "a finite number"
    expected = noun + _bounds(low, high, low_inclusive, high_inclusive)
    expected = _either([expected] + (["None"] if allow_none else []) + ([also] if also else []))
    details = {"where": where, "meaning": meaning, "hint": hint}
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise _refusal(type_error, value, name, expected, show_type=True, **details)
    number = float(value)
    if (
        not math.isfinite(number)
        or (low is not None and not (number >= low if low_inclusive else number > low))
        or (high is not None and not (number <= high if high_inclusive else number < high))
    ):
        raise _refusal(ValueError, value, name, expected, show_type=False, **details)
    return number


def _is_choice(value, choice) -> bool:
    """Whether `value` is `choice`: strings by equality, None/True/False by identity (so
    1 is not True), anything else by type and equality."""
    if isinstance(choice, str):
        return isinstance(value, str) and value == choice
    if choice is None or isinstance(choice, bool):
        return value is choice
    return type(value) is type(choice) and value == choice


def check_choice(value, name: str, choices, *, also: str = "", where="", meaning="", hint=""):
    """`value` if it is one of `choices`, else a ValueError listing them.

    A string close to a string choice gets a "Did you mean" suggestion. Choices
    compare strictly: `1` is not `True`. `also` names another kind of value the
    caller accepts (listed last); the other arguments are those of `check_int`.

    Examples:
        >>> check_choice("auto", "jit_compile", ("auto", True, False))
        'auto'
        >>> check_choice(1, "jit_compile", ("auto", True, False))
        Traceback (most recent call last):
        ...
        ValueError: `jit_compile` must be one of 'auto', True or False. Received: jit_compile=1 ...
    """
    choices = tuple(choices)
    if any(_is_choice(value, choice) for choice in choices):
        return value
    names = [choice for choice in choices if isinstance(choice, str)]
    expected = "one of " + _either([repr(c) for c in choices] + ([also] if also else []))
    show_type = value is not None and not isinstance(value, str)
    details = {"where": where, "meaning": meaning, "hint": hint, "names": names}
    raise _refusal(ValueError, value, name, expected, show_type=show_type, **details)
