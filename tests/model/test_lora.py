"""FreezePolicy.lora on plain Keras backbones: what trains, the report, save, load and merge.

Sequential first, then functional (an attention block); numpy, then tf.data. The KerasHub
backbones are tests/model/test_freeze_keras_hub.py.
"""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetune_tf
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, Stage
from finetune_tf.model.lora import adapted_layers
from finetune_tf.training.layerwise import layerwise_multipliers


def weights_by_path(model):
    return {w.path: w.numpy().copy() for w in model.weights}


def changed(before, model):
    return sorted(
        w.path
        for w in model.weights
        if w.path not in before or not np.array_equal(before[w.path], w.numpy())
    )


def mlp():
    return keras.Sequential(
        [
            keras.Input((4,), name="features_in"),
            keras.layers.Dense(8, name="hidden"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.Dense(6, name="features"),
        ],
        name="mlp",
    )


class Projection(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(3, name="dense")

    def call(self, inputs):
        return self.dense(inputs)


def attention_block():
    inputs = keras.Input((6, 8), name="tokens")
    attended = keras.layers.MultiHeadAttention(2, 4, name="attention")(inputs, inputs)
    x = keras.layers.LayerNormalization(name="norm")(inputs + attended)
    x = keras.layers.Dense(16, activation="relu", name="ffn")(x)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling1D(name="pool")(x))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(48, 4)).astype("float32"), np.arange(48) % 3


def test_lora_on_a_sequential_backbone_trains_only_the_adapters_and_the_head(data, tmp_path):
    x, y = data
    model = mlp()
    tuner = FineTuner(Backbone.from_model(model), Head.classifier(3), freeze=FreezePolicy.lora(2))
    report = tuner.freeze_report
    # hidden: A 4x2 + B 2x8; features: A 8x2 + B 2x6. Backbone: 40 + BatchNorm 32 + 54.
    assert (report.lora_rank, report.adapter_params, report.trainable_params) == (2, 52, 52)
    assert report.trainable_fraction == pytest.approx(52 / 126)
    assert str(report).startswith(
        "FreezePolicy.lora(2): LoRA rank 2 on 2 layers | adapter params 52 / backbone params "
        "126 (41.27%)"
    )
    assert report.frozen_layers == ["bn"]
    assert sorted(w.path for w in model.trainable_weights) == [
        "mlp/features/lora_kernel_a",
        "mlp/features/lora_kernel_b",
        "mlp/hidden/lora_kernel_a",
        "mlp/hidden/lora_kernel_b",
    ]
    # backbone_l2/l1 penalise what trains of the kernels: the adapters.
    tuner.compile(backbone_l2=0.5, backbone_l1=0.25)
    penalty = tuner.model.weight_penalty
    adapters = [w.numpy() for w in model.trainable_weights]
    expected = sum(0.5 * np.sum(a**2) + 0.25 * np.sum(np.abs(a)) for a in adapters)
    assert len(penalty.variables(tuner.model)) == 4
    assert float(penalty(tuner.model)) == pytest.approx(expected, rel=1e-5) and expected > 0
    before = weights_by_path(tuner.model)
    tuner.compile(learning_rate=1e-2)
    tuner.fit(x, y, epochs=2, batch_size=16, verbose=0)
    moved = changed(before, tuner.model)
    assert [p for p in moved if not p.startswith("predictions/")] == [
        "mlp/features/lora_kernel_a",
        "mlp/features/lora_kernel_b",
        "mlp/hidden/lora_kernel_a",
        "mlp/hidden/lora_kernel_b",
    ]  # kernels, biases, BatchNorm's scale and statistics stay; the head trains
    assert any(p.startswith("predictions/") for p in moved)

    # Keras saves each kernel merged and loads zero adapters: the load starts them afresh.
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    again = FineTuner.load(path)
    assert again.freeze == FreezePolicy.lora(2)
    np.testing.assert_allclose(again.predict(x, verbose=0), tuner.predict(x, verbose=0), atol=1e-5)
    hidden = again.backbone.model.get_layer("hidden")
    assert np.any(hidden.lora_kernel_a.numpy()) and not np.any(hidden.lora_kernel_b.numpy())
    again.compile(learning_rate=1e-2, run_eagerly=True)
    again.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert np.any(hidden.lora_kernel_b.numpy())  # it trains again
    assert not np.array_equal(hidden.kernel.numpy(), hidden._kernel.numpy())


def test_lora_on_a_functional_attention_block_layerwise_saves_loads_and_merges(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(32, 6, 8)).astype("float32")
    y = np.arange(32) % 2
    policy = FreezePolicy.lora(4, alpha=8, targets=["query", "value"])
    tuner = FineTuner(Backbone.from_model(attention_block()), Head.binary(), freeze=policy, seed=0)
    report = tuner.freeze_report
    assert sorted(name.split("/")[-1] for name in report.trainable_layers) == ["query", "value"]
    attention = tuner.backbone.model.get_layer("attention")
    assert attention.query_dense.lora_alpha == 8 and not attention.key_dense.lora_enabled
    assert not tuner.backbone.model.get_layer("ffn").lora_enabled
    # query and value kernels (8, 2, 4): Keras gives A (8, 2, 4) and B (4, 4) each.
    assert report.adapter_params == 2 * (64 + 16) == report.trainable_params
    # layer-wise rates: the adapters of a frozen layer get its depth, not the head's rate
    rates = dict(layerwise_multipliers(tuner.backbone, tuner.model, 0.5))
    assert {path.split("/", 1)[1]: rate for path, rate in rates.items() if "lora" in path} == {
        "query/lora_kernel_a": 0.5,
        "query/lora_kernel_b": 0.5,
        "value/lora_kernel_a": 0.5,
        "value/lora_kernel_b": 0.5,
    }

    before = weights_by_path(tuner.model)
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    tuner.compile(learning_rate=1e-2, run_eagerly=True)  # no tracing: seconds less
    tuner.fit(dataset, epochs=1, verbose=0)
    backbone_moved = [p for p in changed(before, tuner.model) if not p.startswith("predictions")]
    assert backbone_moved and all("lora_kernel" in p for p in backbone_moved)

    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    expected = tuner.predict(x, verbose=0)
    # LoRA layers are Keras' own (no class of ours to register): Keras' loader is enough,
    # in this process as in a fresh one (tests/outputs/test_saving.py loads in a fresh one).
    plain = keras.models.load_model(path)
    np.testing.assert_allclose(plain.predict(x, verbose=0), expected, atol=1e-5)
    with pytest.raises(ValueError, match=r"found no LoRA adapters.*may already be merged"):
        finetune_tf.merge_lora(plain)  # attention layers load plain, their kernels merged
    assert FineTuner.load(path).freeze == policy

    merged = tuner.merge_lora()
    assert merged.policy == "FreezePolicy.all()" and merged.adapter_params == 0
    assert tuner.freeze == FreezePolicy.all() and tuner.compiled
    assert not [w.path for w in tuner.model.weights if "lora" in w.path]
    np.testing.assert_allclose(tuner.predict(x, verbose=0), expected, atol=1e-5)


def test_merge_lora_on_a_loaded_model_and_the_policy_as_data(tmp_path):
    model = mlp()
    FreezePolicy.lora(3, alpha=1.5).apply(Backbone.from_model(model))
    with pytest.raises(
        ValueError,
        match=r"lora\(alpha\)` got alpha=None \(alpha = rank = 3\).*rank 3, alpha 1\.5.*"
        r"Use alpha=1\.5,",
    ):
        FreezePolicy.lora(3).check(Backbone.from_model(model))  # another scale: refused
    hidden = model.get_layer("hidden")
    hidden.lora_kernel_b.assign(np.full(hidden.lora_kernel_b.shape, 0.1, "float32"))
    path = str(tmp_path / "adapted.keras")
    model.save(path)
    loaded = finetune_tf.load_model(path)
    plain = finetune_tf.merge_lora(loaded)
    x = np.random.default_rng(2).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(plain(x), model(x), atol=1e-5)
    assert not any(getattr(layer, "lora_enabled", False) for layer in plain.layers)
    assert len(plain.weights) == len(mlp().weights)

    # Should Keras' enable_lora fail mid-way, the trainable flags are as they were.
    other = mlp()
    features = other.get_layer("features")
    features.enable_lora = lambda *args, **kwargs: (_ for _ in ()).throw(RuntimeError("keras"))
    with pytest.raises(RuntimeError):
        FreezePolicy.lora(2).apply(Backbone.from_model(other))
    assert all(layer.trainable for layer in other.layers)
    assert [w.path for w in other.trainable_weights] == [w.path for w in mlp().trainable_weights]

    # A subclassed model merges too (copied as Backbone.copy copies it).
    subclassed = Projection()
    subclassed(x)
    subclassed.dense.enable_lora(2)
    subclassed.dense.lora_kernel_b.assign(np.full((2, 3), 0.1, "float32"))
    np.testing.assert_allclose(finetune_tf.merge_lora(subclassed)(x), subclassed(x), atol=1e-5)

    policy = FreezePolicy.lora(3, alpha=1.5, targets="hidden")
    assert repr(policy) == "FreezePolicy.lora(3, alpha=1.5, targets=('hidden',))"
    assert FreezePolicy.from_config(policy.get_config()) == policy
    assert FreezePolicy.lora().value == 8
    assert FreezePolicy.lora(2).frozen_mask(model.layers) == [True] * 3
    assert FreezePolicy("lora", 4) == FreezePolicy.lora(4)  # the constructor fills defaults
    report = FreezePolicy("lora", 4).apply(Backbone.from_model(again := mlp()))
    assert report.lora_rank == 4 and report.adapter_params == 4 * 4 + 4 * 8 + 8 * 4 + 4 * 6
    narrowed = FreezePolicy.lora(4, targets=["hidden"]).apply(Backbone.from_model(again))
    assert narrowed.adapter_params == 4 * 4 + 4 * 8 == narrowed.trainable_params  # features' froze
    assert "adapter params 48 / backbone params 182 (26.37%)" in str(narrowed)
    with pytest.raises(ValueError, match=r"lora\(rank\)"):
        FreezePolicy("lorra", 4)

    # Dropout: off by default (the frozen backbone runs in inference mode), on with "train".
    dropped = keras.Sequential([keras.Input((4,)), keras.layers.Dropout(0.5), mlp()])
    for batchnorm, differs in (("inference", False), ("train", True)):
        policy = FreezePolicy.lora(2, batchnorm=batchnorm)
        assert FreezePolicy.from_config(policy.get_config()) == policy
        tuned = FineTuner(Backbone.from_model(dropped), Head.classifier(3), freeze=policy)
        first, second = (tuned.model(x, training=True).numpy() for _ in range(2))
        assert (not np.allclose(first, second)) is differs


def test_a_schedule_checks_lora_targets_first_then_switches_to_adapters(data):
    x, y = data
    tuner = FineTuner(Backbone.from_model(mlp()), Head.classifier(3), seed=0)
    tuner.compile(learning_rate=1e-2, run_eagerly=True)
    before = weights_by_path(tuner.model)
    bad = [Stage(1, FreezePolicy.all()), Stage(1, FreezePolicy.lora(2, targets=["hiden"]))]
    with pytest.raises(ValueError, match=r"'hiden'.*Did you mean 'hidden'.*Nothing was trained"):
        tuner.fit(x, y, schedule=bad, verbose=0)
    # Adapters a stage adds are planned: a later stage of another rank is refused up front.
    other_rank = [Stage(1, FreezePolicy.lora(2)), Stage(1, FreezePolicy.lora(4))]
    with pytest.raises(ValueError, match=r"stage_2.*rank=4.*rank 2.*Nothing was trained"):
        tuner.fit(x, y, schedule=other_rank, verbose=0)
    assert not adapted_layers(tuner.backbone.model)
    assert changed(before, tuner.model) == []
    schedule = [Stage(1, FreezePolicy.all()), Stage(1, FreezePolicy.lora(2, targets=["hidden"]))]
    history = tuner.fit(x, y, schedule=schedule, batch_size=16, verbose=0)
    assert history.history["stage"] == ["stage_1", "stage_2"]
    assert [p.split("/")[-1] for p in changed(before, tuner.backbone.model)] == [
        "lora_kernel_a",
        "lora_kernel_b",
    ]
    assert os.path.basename(tuner.freeze_report.trainable_layers[0]) == "hidden"
