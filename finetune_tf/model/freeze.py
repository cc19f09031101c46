"""`FreezePolicy`: which backbone layers train, and what BatchNorm does.

A policy is plain data; `apply(backbone)` sets the layers' `trainable` flags and
returns a `FreezeReport` (`model.freeze_report`) saying what it did. `FineTuner`
applies its policy when built and again (recompiling) whenever the policy changes,
because Keras ignores a change of `trainable` until the next `compile()`.
In a KerasHub backbone `bottom(n)` and `top(k)` count transformer blocks
(`model.blocks`: the blocks, their mask and its errors); `lora(rank)` trains low-rank
adapters only (`model.lora`: its targets, and `adapt`, its `apply`).
"""

from __future__ import annotations

import re

import keras

from finetune_tf._checks import check_choice, check_int, check_number
from finetune_tf._utils import did_you_mean
from finetune_tf.model import lora as adapters
from finetune_tf.model.blocks import block_mask, block_starts, count_error, counted_blocks
from finetune_tf.model.freeze_report import FreezeReport, parameter_count

__all__ = ["BATCHNORM_MODES", "FreezePolicy", "FreezeReport"]

BATCHNORM_MODES = ("inference", "train", "freeze")
_KINDS = ("all", "none", "bottom", "top", "until", "matching", "lora")
_COUNT_HINT = "Use FreezePolicy.all() to freeze every layer, FreezePolicy.none() to train them all."


def _is_batchnorm(layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization) or getattr(
        layer, "is_batchnorm", False
    )


class FreezePolicy:
    """Which backbone layers train during fine-tuning.

    Build one with `bottom(n)`, `top(k)`, `all()`, `none()`, `until(name)`,
    `matching(pattern)` or `lora(rank)`. Layers are those of `Backbone.layers`:
    for a flat model exactly `model.layers` (input layer included), nested
    models replaced by their own layers. In a KerasHub backbone (e.g.
    `keras_hub.models.BertBackbone`) `bottom(n)` and `top(k)` count its
    transformer blocks instead, and the `FreezeReport` says so.

    BatchNorm is handled on purpose, with `batchnorm=`:

    - `"inference"` (default): every BatchNorm layer of the backbone, frozen
      or not, runs in inference mode and keeps its moving statistics, as the
      Keras transfer-learning guide prescribes. The backbone runs with
      `training=False` (its own dropout is off too); unfrozen BatchNorm
      layers still learn their scale and offset.
    - `"train"`: unfrozen BatchNorm layers run in training mode and update
      their statistics (good with large batches from a new domain).
    - `"freeze"`: BatchNorm layers are always frozen, whatever the policy.

    LayerNormalization has no moving statistics: it is frozen or trains
    with the layers around it (a frozen block's LayerNorm is frozen).

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
            hint="Use FreezePolicy.all(), none(), bottom(n), top(k), until(name), "
            "matching(pattern) or lora(rank).",
        )
        check_choice(
            batchnorm,
            "batchnorm",
            BATCHNORM_MODES,
            hint="'inference' (the default) keeps the pretrained statistics, 'train' updates "
            "them in unfrozen layers, 'freeze' freezes every BatchNorm layer.",
        )
        if kind == "lora":  # FreezePolicy("lora", 4) means FreezePolicy.lora(4)
            options = {"alpha": None, "targets": None, **options}
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
        In a KerasHub backbone `n` counts transformer blocks: the embeddings
        and the first `n` blocks are frozen, the blocks above them and the
        layers after the last block (e.g. BERT's `pooled_dense`) train
        (`bottom(0)` freezes the embeddings only; `none()` trains everything).

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

        In a KerasHub backbone `k` counts transformer blocks: the last `k`
        blocks and the layers after them train; the embeddings stay frozen.

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

    @classmethod
    def lora(
        cls,
        rank: int = 8,
        *,
        alpha: float | None = None,
        targets=None,
        batchnorm: str = "inference",
    ) -> FreezePolicy:
        """Freeze the whole backbone and train low-rank adapters (LoRA) on some of its layers.

        Each target layer (Dense, EinsumDense, Embedding: a layer with Keras'
        `enable_lora`) gets Keras' LoRA adapters: it computes with
        `kernel + (alpha / rank) * lora_a @ lora_b`, and only `lora_a` and `lora_b` train,
        with the head. The `FreezeReport` gives the adapters' share of the backbone's parameters.
        A saved model keeps the adapters' layers; `FineTuner.merge_lora()` folds them into
        the kernels for export (docs/usage.md).

        Args:
            rank: int. The rank of the adapters (>= 1). Defaults to 8.
            alpha: float, optional. Scales the adapters' update by `alpha / rank`.
                Defaults to None (`alpha = rank`: a scale of 1, Keras' default).
            targets: list of str, optional. The names of the layers to adapt (a name
                shared by several layers, as `"query"` in every attention layer, adapts
                them all). Defaults to None: KerasHub's choice in a KerasHub backbone (the
                query and value projections of its attention layers), every Dense and
                EinsumDense layer in other models.
            batchnorm: str. As for the other policies, how the frozen backbone runs
                while training. `"inference"` (the default, also `"freeze"`): the backbone
                runs with `training=False`, so its dropout is off (KerasHub's BERT's 0.1
                too), unlike `backbone.enable_lora(rank)` and a hand-written fit.
                `"train"`: `training=True` passes through, so dropout is on as in
                KerasHub's own LoRA recipe; BatchNorm layers, frozen, still use their
                moving statistics. Defaults to `"inference"`.

        Examples:
            >>> from finetune_tf import FreezePolicy
            >>> FreezePolicy.lora(4, targets=["query", "value"])
            FreezePolicy.lora(4, targets=('query', 'value'))
        """
        rank = check_int(
            rank, "rank", where="FreezePolicy.lora", hint="A rank of 4 to 16 is usual."
        )
        if alpha is not None:
            alpha = check_number(
                alpha,
                "alpha",
                low=0,
                low_inclusive=False,
                allow_none=True,
                where="FreezePolicy.lora",
                hint="Leave alpha=None for a scale of 1 (alpha = rank).",
            )
            alpha = int(alpha) if alpha.is_integer() else alpha
        if targets is not None:
            targets = (targets,) if isinstance(targets, str) else targets
            if (
                not isinstance(targets, (list, tuple))
                or not targets
                or not all(isinstance(name, str) and name for name in targets)
            ):
                raise TypeError(
                    "`FreezePolicy.lora(targets)` must be None or a non-empty list of layer "
                    f"names (str). Received: targets={targets!r}. Pass e.g. "
                    'targets=["query", "value"], or None for the default targets.'
                )
            targets = tuple(targets)
        return cls("lora", rank, alpha=alpha, targets=targets, batchnorm=batchnorm)

    # --- Behaviour --------------------------------------------------------

    def frozen_mask(self, layers: list, blocks: list | None = None) -> list[bool]:
        """For each layer in order, whether this policy freezes it.

        `blocks`, a backbone's transformer blocks (entries of `layers`), make
        `bottom(n)` and `top(k)` count blocks. LoRA freezes every layer's own weights.
        """
        count = len(layers)
        names = [layer.name for layer in layers]
        if self.kind in ("all", "lora"):
            return [True] * count
        if self.kind == "none":
            return [False] * count
        starts = block_starts(layers, blocks or [])
        if self.kind in ("bottom", "top") and starts:
            return block_mask(self.kind, self.value, count, starts)
        if self.kind in ("bottom", "top"):
            if self.value > count:
                raise count_error(self.kind, self.value, count, "layers")
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

    def check(self, backbone, planned: dict | None = None) -> None:
        """A ValueError if this policy does not fit `backbone` (too many layers or blocks,
        an unknown name, LoRA targets it lacks); changes nothing.

        `planned`, for the stages of a schedule, maps `id(layer)` to the `(rank, alpha)` of
        the adapters earlier stages add; a LoRA policy checks against them and adds its own.

        Examples:
            >>> import keras
            >>> from finetune_tf import Backbone, FreezePolicy
            >>> inputs = keras.Input((4,))
            >>> backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(2)(inputs)))
            >>> FreezePolicy.bottom(3).check(backbone)
            Traceback (most recent call last):
            ...
            ValueError: `FreezePolicy.bottom(n)` got n=3, but the backbone has 2 layers. ...
        """
        targets = adapters.policy_targets(self, backbone, planned) if self.kind == "lora" else []
        self.frozen_mask(backbone.layers, counted_blocks(backbone.model, self.kind))
        if planned is not None and targets:
            alpha = self.options["alpha"]
            for layer in targets:
                if not layer.lora_enabled:
                    planned[id(layer)] = (self.value, self.value if alpha is None else alpha)

    def apply(self, backbone) -> FreezeReport:
        """Sets `trainable` on the backbone's layers; returns a `FreezeReport`.

        Raises a ValueError, before changing anything, if the policy does
        not fit the backbone (too many layers, unknown name).
        """
        if self.kind == "lora":
            return adapters.adapt(self, backbone)
        layers = backbone.layers
        blocks = counted_blocks(backbone.model, self.kind)
        mask = self.frozen_mask(layers, blocks)
        backbone.model.trainable = True
        for layer, frozen in zip(layers, mask, strict=True):
            if self.batchnorm == "freeze" and _is_batchnorm(layer):
                frozen = True
            layer.trainable = not frozen
        trainable = [layer.name for layer in layers if layer.trainable]
        frozen = [layer.name for layer in layers if not layer.trainable]
        trainable_params = parameter_count(backbone.model.trainable_weights)
        return FreezeReport(
            policy=repr(self),
            trainable_layers=trainable,
            frozen_layers=frozen,
            trainable_params=trainable_params,
            non_trainable_params=parameter_count(backbone.model.weights) - trainable_params,
            batchnorm=self.batchnorm,
            unit="blocks" if blocks and self.kind in ("bottom", "top") else "layers",
            blocks=len(blocks),
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
        defaults = {"inclusive": True, "train": False, "alpha": None, "targets": None}
        args += [f"{k}={v!r}" for k, v in self.options.items() if defaults.get(k) != v]
        if self.batchnorm != "inference":
            args.append(f"batchnorm={self.batchnorm!r}")
        return f"FreezePolicy.{self.kind}({', '.join(args)})"
