"""`FreezePolicy`: which backbone layers train, and what BatchNorm does.

A policy is plain data; `apply(backbone)` sets the layers' `trainable`
flags and returns a `FreezeReport` saying what it did. `FineTuner` applies
its policy when built and again (recompiling) whenever the policy changes,
because Keras ignores a change of `trainable` until the next `compile()`.
"""

from __future__ import annotations

import dataclasses
import re

import keras
import numpy as np

from finetune_tf._checks import check_choice, check_int
from finetune_tf._utils import did_you_mean

__all__ = ["BATCHNORM_MODES", "FreezePolicy", "FreezeReport"]

BATCHNORM_MODES = ("inference", "train", "freeze")
_KINDS = ("all", "none", "bottom", "top", "until", "matching")
_COUNT_HINT = "Use FreezePolicy.all() to freeze every layer, FreezePolicy.none() to train them all."


def _is_batchnorm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization) or getattr(
        layer, "is_batchnorm", False
    )


def _count(weights) -> int:
    return int(sum(np.prod(w.shape) for w in weights))


@dataclasses.dataclass(frozen=True)
class FreezeReport:
    """What applying a `FreezePolicy` did.

    Attributes:
        policy: str. The policy that was applied.
        trainable_layers: list of str. Backbone layers that train.
        frozen_layers: list of str. Backbone layers that are frozen.
        trainable_params: int. Backbone parameters that train.
        non_trainable_params: int. Frozen parameters plus BatchNorm statistics.
        batchnorm: str. The BatchNorm mode.

    Examples:
        >>> import keras
        >>> from finetune_tf import Backbone, FreezePolicy
        >>> inputs = keras.Input((4,), name="features_in")
        >>> x = keras.layers.Dense(3, name="a")(inputs)
        >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(2, name="b")(x)))
        >>> FreezePolicy.bottom(2).apply(backbone).frozen_layers
        ['features_in', 'a']
    """

    policy: str
    trainable_layers: list
    frozen_layers: list
    trainable_params: int
    non_trainable_params: int
    batchnorm: str

    def __str__(self):
        total_layers = len(self.trainable_layers) + len(self.frozen_layers)
        total_params = self.trainable_params + self.non_trainable_params
        share = 100.0 * self.trainable_params / total_params if total_params else 0.0
        return (
            f"{self.policy}: trainable layers {len(self.trainable_layers)} / {total_layers} | "
            f"trainable params {self.trainable_params:,} / {total_params:,} ({share:.2f}%) | "
            f"BatchNorm: {self.batchnorm}"
        )


class FreezePolicy:
    """Which backbone layers train during fine-tuning.

    Build one with `bottom(n)`, `top(k)`, `all()`, `none()`, `until(name)`
    or `matching(pattern)`. Layers are those of `Backbone.layers`: for a flat
    model exactly `model.layers` (input layer included), nested models
    replaced by their own layers.

    BatchNorm is handled on purpose, with `batchnorm=`:

    - `"inference"` (default): every BatchNorm layer of the backbone, frozen
      or not, runs in inference mode and keeps its moving statistics, as the
      Keras transfer-learning guide prescribes. The backbone runs with
      `training=False` (its own dropout is off too); unfrozen BatchNorm
      layers still learn their scale and offset.
    - `"train"`: unfrozen BatchNorm layers run in training mode and update
      their statistics (good with large batches from a new domain).
    - `"freeze"`: BatchNorm layers are always frozen, whatever the policy.

    Examples:
        >>> from finetune_tf import FreezePolicy
        >>> FreezePolicy.bottom(100)
        FreezePolicy.bottom(100)
        >>> FreezePolicy.top(20, batchnorm="train")
        FreezePolicy.top(20, batchnorm='train')
    """

    def __init__(self, kind: str, value=None, *, batchnorm: str = "inference", **options):
        check_choice(
            kind,
            "kind",
            _KINDS,
            where="FreezePolicy",
            hint="Use FreezePolicy.all(), none(), bottom(n), top(k), until(name) or "
            "matching(pattern).",
        )
        check_choice(
            batchnorm,
            "batchnorm",
            BATCHNORM_MODES,
            hint="'inference' (the default) keeps the pretrained statistics, 'train' updates "
            "them in unfrozen layers, 'freeze' freezes every BatchNorm layer.",
        )
        self.kind = kind
        self.value = value
        self.batchnorm = batchnorm
        self.options = options

    # --- Constructors -----------------------------------------------------

    @classmethod
    def all(cls, *, batchnorm: str = "inference") -> FreezePolicy:
        """Freeze the whole backbone (feature extraction); only the head trains.

        Examples:
            >>> from finetune_tf import FreezePolicy
            >>> FreezePolicy.all()
            FreezePolicy.all()
        """
        return cls("all", batchnorm=batchnorm)

    @classmethod
    def none(cls, *, batchnorm: str = "inference") -> FreezePolicy:
        """Train every backbone layer.

        Examples:
            >>> from finetune_tf import FreezePolicy
            >>> FreezePolicy.none().kind
            'none'
        """
        return cls("none", batchnorm=batchnorm)

    @classmethod
    def bottom(cls, n: int, *, batchnorm: str = "inference") -> FreezePolicy:
        """Freeze the first `n` entries of `Backbone.layers`; train the rest.

        Same count as `base_model.layers[:fine_tune_at]` in the TensorFlow
        transfer-learning tutorial, so a number taken from it means the same
        here. `n` larger than the number of layers is an error, not "all".

        Examples:
            >>> from finetune_tf import FreezePolicy
            >>> FreezePolicy.bottom(100).value
            100
        """
        n = check_int(n, "n", minimum=0, where="FreezePolicy.bottom", hint=_COUNT_HINT)
        return cls("bottom", n, batchnorm=batchnorm)

    @classmethod
    def top(cls, k: int, *, batchnorm: str = "inference") -> FreezePolicy:
        """Train only the last `k` entries of `Backbone.layers`; freeze the rest.

        Examples:
            >>> from finetune_tf import FreezePolicy
            >>> FreezePolicy.top(30).value
            30
        """
        k = check_int(k, "k", minimum=0, where="FreezePolicy.top", hint=_COUNT_HINT)
        return cls("top", k, batchnorm=batchnorm)

    @classmethod
    def until(cls, layer_name: str, *, inclusive: bool = True, batchnorm: str = "inference"):
        """Freeze from the bottom up to the layer named `layer_name`.

        Args:
            layer_name: str. A name from `[l.name for l in backbone.layers]`.
            inclusive: bool. Whether that layer is frozen too. Defaults to
                `True`.

        Examples:
            >>> from finetune_tf import FreezePolicy
            >>> FreezePolicy.until("block_12_add")
            FreezePolicy.until('block_12_add')
        """
        if not isinstance(layer_name, str) or not layer_name:
            raise TypeError(
                "`FreezePolicy.until(layer_name)` expects a layer name (non-empty str). "
                f"Received: layer_name={layer_name!r}."
            )
        return cls("until", layer_name, inclusive=bool(inclusive), batchnorm=batchnorm)

    @classmethod
    def matching(cls, pattern: str, *, train: bool = False, batchnorm: str = "inference"):
        """Freeze the layers whose name matches a regular expression.

        Args:
            pattern: str. A regular expression, searched in each layer name.
            train: bool. If `True`, invert: train only the matching layers
                and freeze the rest. Defaults to `False`.

        Examples:
            >>> from finetune_tf import FreezePolicy
            >>> FreezePolicy.matching(r"^block_[0-9]_", train=False).value
            '^block_[0-9]_'
        """
        if not isinstance(pattern, str):
            raise TypeError(
                "`FreezePolicy.matching(pattern)` expects a regular expression string. "
                f"Received: pattern={pattern!r}."
            )
        try:
            re.compile(pattern)
        except re.error as error:
            raise ValueError(
                f"`pattern`={pattern!r} is not a valid regular expression: {error}."
            ) from error
        return cls("matching", pattern, train=bool(train), batchnorm=batchnorm)

    # --- Behaviour --------------------------------------------------------

    def frozen_mask(self, layers: list) -> list[bool]:
        """For each layer in order, whether this policy freezes it."""
        count = len(layers)
        names = [layer.name for layer in layers]
        if self.kind == "all":
            return [True] * count
        if self.kind == "none":
            return [False] * count
        if self.kind in ("bottom", "top"):
            if self.value > count:
                argname = "n" if self.kind == "bottom" else "k"
                raise ValueError(
                    f"`FreezePolicy.{self.kind}({argname})` got {argname}={self.value}, but the "
                    f"backbone has {count} layers. Use {argname} <= {count}, or "
                    f"FreezePolicy.{'all' if self.kind == 'bottom' else 'none'}() to "
                    f"{'freeze' if self.kind == 'bottom' else 'train'} everything."
                )
            if self.kind == "bottom":
                return [i < self.value for i in range(count)]
            return [i < count - self.value for i in range(count)]
        if self.kind == "until":
            if self.value not in names:
                raise ValueError(
                    f"`FreezePolicy.until(layer_name)` got layer_name={self.value!r}, which is "
                    f"not a backbone layer.{did_you_mean(self.value, names)} See "
                    "[layer.name for layer in backbone.layers] for the names."
                )
            stop = names.index(self.value) + (1 if self.options["inclusive"] else 0)
            return [i < stop for i in range(count)]
        regex = re.compile(self.value)
        matches = [bool(regex.search(name)) for name in names]
        if not any(matches):
            raise ValueError(
                f"`FreezePolicy.matching(pattern)` got pattern={self.value!r}, which matches "
                f"no backbone layer.{did_you_mean(self.value, names)} See "
                "[layer.name for layer in backbone.layers] for the names."
            )
        if self.options["train"]:
            return [not m for m in matches]
        return matches

    def apply(self, backbone) -> FreezeReport:
        """Sets `trainable` on the backbone's layers; returns a `FreezeReport`.

        Raises a ValueError, before changing anything, if the policy does
        not fit the backbone (too many layers, unknown name).
        """
        layers = backbone.layers
        mask = self.frozen_mask(layers)
        backbone.model.trainable = True
        for layer, frozen in zip(layers, mask, strict=True):
            if self.batchnorm == "freeze" and _is_batchnorm(layer):
                frozen = True
            layer.trainable = not frozen
        trainable = [layer.name for layer in layers if layer.trainable]
        frozen = [layer.name for layer in layers if not layer.trainable]
        trainable_params = _count(backbone.model.trainable_weights)
        return FreezeReport(
            policy=repr(self),
            trainable_layers=trainable,
            frozen_layers=frozen,
            trainable_params=trainable_params,
            non_trainable_params=_count(backbone.model.weights) - trainable_params,
            batchnorm=self.batchnorm,
        )

    def __eq__(self, other):
        return isinstance(other, FreezePolicy) and (
            self.kind,
            self.value,
            self.batchnorm,
            self.options,
        ) == (other.kind, other.value, other.batchnorm, other.options)

    def __hash__(self):
        return hash((self.kind, self.value, self.batchnorm, tuple(sorted(self.options.items()))))

    def get_config(self) -> dict:
        """The arguments that rebuild this policy with `FreezePolicy.from_config`.

        Examples:
            >>> from finetune_tf import FreezePolicy
            >>> policy = FreezePolicy.until("block_3", inclusive=False)
            >>> FreezePolicy.from_config(policy.get_config()) == policy
            True
        """
        return {"kind": self.kind, "value": self.value, "batchnorm": self.batchnorm, **self.options}

    @classmethod
    def from_config(cls, config: dict) -> FreezePolicy:
        """The policy `get_config` describes, checked as its constructor checks it."""
        config = dict(config)
        kind, value = config.pop("kind", None), config.pop("value", None)
        if kind not in _KINDS:
            return cls(kind, value, **config)  # the constructor's error names the kinds
        constructor = getattr(cls, kind)  # checks the value as FreezePolicy.<kind> does
        return constructor(**config) if value is None else constructor(value, **config)

    def __repr__(self):
        args = [] if self.value is None else [repr(self.value)]
        defaults = {"inclusive": True, "train": False}
        args += [f"{k}={v!r}" for k, v in self.options.items() if defaults.get(k) != v]
        if self.batchnorm != "inference":
            args.append(f"batchnorm={self.batchnorm!r}")
        return f"FreezePolicy.{self.kind}({', '.join(args)})"
