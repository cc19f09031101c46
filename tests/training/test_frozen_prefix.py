"""The frozen-prefix cache: a frozen bottom runs once, the rest trains as without the cache."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from finetune_tf import Backbone, FeatureCache, FineTuner, FreezePolicy, Head
from finetune_tf.training.feature_cache import cache_decision
from finetune_tf.training.feature_store import FeatureStore, NotCacheable
from finetune_tf.training.fit_args import FitArgs
from finetune_tf.training.frozen_prefix import cut_points, frozen_prefix

RNG = np.random.default_rng(0)
X = RNG.random((48, 8, 8, 3), dtype=np.float32)
Y = np.arange(48) % 3
XV = RNG.random((16, 8, 8, 3), dtype=np.float32)
YV = np.arange(16) % 3


def sequential_cnn():
    """conv1, bn1, relu1, conv2, bn2, relu2, features: every layer's output is a cut point."""
    return keras.Sequential(
        [
            keras.Input((8, 8, 3), name="pixels"),
            keras.layers.Conv2D(4, 3, padding="same", name="conv1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(name="relu1"),
            keras.layers.Conv2D(6, 3, padding="same", name="conv2"),
            keras.layers.BatchNormalization(name="bn2"),
            keras.layers.ReLU(name="relu2"),
            keras.layers.GlobalAveragePooling2D(name="features"),
        ],
        name="seq_cnn",
    )


def residual_base():
    """A stem and two residual blocks with BatchNorm: the cut points are the block ends."""
    inputs = keras.Input((8, 8, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_out")(x)
    for block in (1, 2):
        y = keras.layers.Conv2D(4, 3, padding="same", name=f"b{block}_conv")(x)
        y = keras.layers.BatchNormalization(name=f"b{block}_bn")(y)
        x = keras.layers.Add(name=f"b{block}_add")([x, y])
        x = keras.layers.ReLU(name=f"b{block}_out")(x)
    return keras.Model(inputs, x, name="base")


def tiny_resnet():
    """`residual_base` and a pooling layer, flat (one graph)."""
    base = residual_base()
    features = keras.layers.GlobalAveragePooling2D(name="features")(base.outputs[0])
    return keras.Model(base.inputs, features, name="tiny_resnet")


def sequential_around_a_base():
    """The Keras guide's pattern: `keras.Sequential([application, GlobalAveragePooling2D()])`."""
    pooling = keras.layers.GlobalAveragePooling2D(name="features")
    return keras.Sequential([residual_base(), pooling], name="outer")


def functional_around_sequentials():
    """A functional model calling a Sequential that nests another (two levels to enter)."""
    inner = keras.Sequential(
        [
            keras.Input((8, 8, 4)),
            keras.layers.Conv2D(4, 3, padding="same", name="c1"),
            keras.layers.BatchNormalization(name="bn1"),
            keras.layers.ReLU(name="relu1"),
            keras.layers.Conv2D(6, 3, padding="same", name="c2"),
            keras.layers.BatchNormalization(name="bn2"),
        ],
        name="inner",
    )
    middle = keras.Sequential(
        [keras.Input((8, 8, 4)), keras.layers.ReLU(name="mid_relu"), inner], name="middle"
    )
    inputs = keras.Input((8, 8, 3), name="pixels")
    x = keras.layers.Conv2D(4, 3, padding="same", name="outer_conv")(inputs)
    x = middle(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, x, name="outer")


def _tuner(make_backbone, freeze, **kwargs):
    keras.utils.set_random_seed(1)
    head = Head.classifier(3, hidden_units=(8,), dropout=0.3)
    tuner = FineTuner(Backbone.from_model(make_backbone()), head, freeze=freeze, **kwargs)
    tuner.compile("adam", learning_rate=1e-2)
    return tuner


def _spy_full_fits(monkeypatch):
    calls = []
    original = keras.Model.fit

    def fit(self, *args, **kwargs):
        calls.append(self.name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    return calls


def _full(fits):
    return [name for name in fits if not name.endswith(("_tail", "_head"))]


def _assert_same(a, b, atol=1e-6):
    assert len(a) == len(b)
    for left, right in zip(a, b, strict=True):
        np.testing.assert_allclose(left, right, atol=atol)


def test_cut_points_are_the_single_tensor_points_of_the_graph():
    names = [layer.name for _, layer, _, _ in cut_points(tiny_resnet())]
    # Inside a block two tensors are alive (the branch and the shortcut): no cut there.
    assert names == ["stem_conv", "stem_bn", "stem_out", "b1_add", "b1_out", "b2_add"] + [
        "b2_out",
        "features",
    ]
    model = sequential_cnn()
    assert [layer.name for _, layer, _, _ in cut_points(model)] == [
        layer.name for layer in model.layers
    ]
    model.get_layer("bn2").trainable = False
    model.get_layer("conv1").trainable = False
    assert [frozen for _, _, frozen, _ in cut_points(model)][:2] == [True, False]


@pytest.mark.parametrize(
    "make_backbone, freeze, cut",
    [
        (sequential_cnn, FreezePolicy.bottom(3), "'relu1', layer 3 of 7"),
        (tiny_resnet, FreezePolicy.bottom(9), "'b1_out', layer 8 of 13"),
        # The first trainable layer inside a nested model: the cut goes inside it.
        (
            sequential_around_a_base,
            FreezePolicy.top(5),
            "'b1_out' inside nested model 'base', layer 8 of 13",
        ),
        (
            functional_around_sequentials,
            FreezePolicy.until("relu1"),
            "'relu1' inside nested model 'inner' in 'middle', layer 6 of 9",
        ),
    ],
    ids=["sequential", "residual", "sequential-around-functional", "functional-around-sequentials"],
)
def test_prefix_cached_training_equals_training_without_the_cache(
    make_backbone, freeze, cut, monkeypatch, capsys, tmp_path
):
    """Same seed, same steps (shuffled, validated, dropout in the head): the same weights,
    in the tuner's own model, which then predicts and saves as trained. Nested backbones:
    the prefix runs the outer layers and the nested model's frozen bottom, the tail its top
    and the rest."""
    kwargs = {"epochs": 2, "batch_size": 16}
    seed = None  # Keras shuffles the arrays (seeded by keras.utils.set_random_seed)
    if make_backbone is tiny_resnet:  # the tuner's own seeded order, and validation
        kwargs["validation_data"] = (XV, YV)
        seed = 3
    reference = _tuner(make_backbone, freeze, seed=seed)
    expected = reference.fit(X, Y, feature_cache=False, verbose=0, **kwargs).history
    fits = _spy_full_fits(monkeypatch)
    tuner = _tuner(make_backbone, freeze, seed=seed)
    history = tuner.fit(X, Y, verbose=1, **kwargs).history
    out = capsys.readouterr().out
    assert f"running the frozen bottom of the backbone (up to {cut})" in out
    assert "MiB of features in memory: float32" in out
    assert fits and not _full(fits)  # only the tail trained, on activations
    _assert_same([w.numpy() for w in reference.model.weights], tuner.model.weights)
    for key in expected:
        np.testing.assert_allclose(history[key], expected[key], atol=1e-5)
    predictions = reference.predict(XV, verbose=0)
    np.testing.assert_allclose(tuner.predict(XV, verbose=0), predictions, atol=1e-6)
    if make_backbone is sequential_cnn:
        return  # saving is the same for both: once is enough
    path = str(tmp_path / "tuned.keras")
    tuner.model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(XV, verbose=0), predictions, atol=1e-6)


def test_tf_data_spilled_to_disk_and_fine_tune_stage_two_train_the_same(tmp_path, capsys):
    """A finite tf.data pipeline (its smaller last batch padded for the frozen bottom), its
    activations on disk; and fine_tune's second stage under
    a chosen bottom-frozen policy (layer-wise learning rates on) caches its frozen bottom."""
    dataset = tf.data.Dataset.from_tensor_slices((X, Y)).batch(20)  # 20, 20 and 8
    freeze = FreezePolicy.bottom(9)
    reference = _tuner(tiny_resnet, freeze)
    reference.fit(dataset, epochs=2, feature_cache=False, verbose=0)
    spill = FeatureCache(memory_limit=0, directory=str(tmp_path / "spill"))
    tuner = _tuner(tiny_resnet, freeze)
    tuner.fit(dataset, epochs=2, feature_cache=spill, verbose=1)
    assert "MiB of features on disk" in capsys.readouterr().out
    _assert_same([w.numpy() for w in reference.model.weights], tuner.model.weights)
    assert os.listdir(tmp_path / "spill") == []

    results = []
    for cache in (False, "auto"):
        tuner = _tuner(tiny_resnet, freeze, seed=2)
        tuner.fine_tune(
            X, Y, head_epochs=1, epochs=1, batch_size=16, feature_cache=cache, verbose=1
        )
        results.append([w.numpy() for w in tuner.model.weights])
    out = capsys.readouterr().out
    assert out.count("feature cache: running the frozen backbone once") == 1  # stage 1
    assert out.count("feature cache: running the frozen bottom of the backbone") == 1  # stage 2
    _assert_same(*results, atol=1e-5)


def test_the_cache_turns_itself_off_and_says_why(capsys):
    def decision(freeze, **kwargs):
        tuner = _tuner(tiny_resnet, freeze, **kwargs)
        return cache_decision(tuner.assembly, X, FitArgs({}), FeatureCache())

    # The top block frozen, the stem training: a trainable layer below every cut.
    assert decision(FreezePolicy.matching("^b2_")) == (
        "a trainable backbone layer ('stem_conv') comes before every point where the "
        "backbone could be cut"
    )
    flip = [keras.layers.RandomFlip("horizontal")]
    assert (
        decision(FreezePolicy.bottom(9), augmentation=flip) == "the model has augmentation layers"
    )
    assert decision(FreezePolicy.none()) == ""  # nothing frozen: nothing to say

    with pytest.raises(NotCacheable, match="more than 0.0 MiB of memory and 0.0 MiB of disk"):
        FeatureStore(memory_limit=0, directory=None, disk_limit=0).append(np.zeros((1, 4)))

    tuner = _tuner(tiny_resnet, FreezePolicy.bottom(9))
    too_small = FeatureCache(memory_limit=4096, disk_limit=4096)  # 48 x 8x8x4 floats: 48 KiB
    tuner.fit(X, Y, epochs=1, batch_size=16, feature_cache=too_small, verbose=1)
    assert "feature cache off: the features would take more than" in capsys.readouterr().out
    tuner.fit(X, Y, epochs=1, batch_size=16, feature_cache=FeatureCache(dtype="float16"), verbose=1)
    assert "MiB of features in memory: float16 8x8x4" in capsys.readouterr().out


def test_random_preprocessing_turns_the_cache_off_and_trains_as_without_it(capsys):
    """Noise in the backbone's preprocessing is drawn anew each step in training: run once
    with training=False it would be dropped, so the cache stays off and says why."""
    results = []
    for cache in (False, "auto"):
        keras.utils.set_random_seed(1)
        backbone = Backbone.from_model(
            sequential_cnn(), preprocessing=keras.layers.GaussianNoise(0.5)
        )
        tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.bottom(3))
        tuner.compile("adam", learning_rate=1e-2)
        tuner.fit(X, Y, epochs=1, batch_size=16, shuffle=False, feature_cache=cache, verbose=1)
        results.append([w.numpy() for w in tuner.model.weights])
    out = capsys.readouterr().out
    assert (
        "feature cache off: the backbone's preprocessing behaves differently in training "
        "(GaussianNoise)" in out
    )
    _assert_same(*results)


def test_a_shuffling_tf_data_pipeline(capsys):
    """Shuffled once (`reshuffle_each_iteration=False`), every epoch has the order the cache
    saw: the same weights. Reshuffled each epoch, the order cannot be replayed: the cached run
    draws its own, seeded by the tuner's seed (two runs agree), and says so."""
    fixed = tf.data.Dataset.from_tensor_slices((X, Y))
    fixed = fixed.shuffle(48, seed=1, reshuffle_each_iteration=False).batch(16)
    results = []
    for cache in (False, "auto"):
        tuner = _tuner(sequential_cnn, FreezePolicy.bottom(3))
        tuner.fit(fixed, epochs=1, feature_cache=cache, verbose=0)
        results.append([w.numpy() for w in tuner.model.weights])
    _assert_same(*results)

    results = []
    for _ in range(2):  # the pipeline made after the tuner seeded TensorFlow: the same each run
        tuner = _tuner(sequential_cnn, FreezePolicy.bottom(3), seed=5)
        reshuffled = tf.data.Dataset.from_tensor_slices((X, Y)).shuffle(48, seed=1).batch(16)
        tuner.fit(reshuffled, epochs=1, verbose=1)
        results.append([w.numpy() for w in tuner.model.weights])
    _assert_same(*results)
    assert (
        capsys.readouterr().out.count(
            "the cached run draws its own order (seeded by the tuner's seed), so it equals a run "
            "without the cache only in distribution"
        )
        == 2
    )


# --- Nested models the cut cannot enter: the cache stays off and says why ---------------------


def _two_outputs():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="two_a")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same", name="two_b")(a)
    pair = keras.Model(inputs, [a, b], name="pair")
    outputs = keras.layers.Add(name="sum")(pair(inputs))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(outputs), name="outer")


def _called_twice():
    inputs = keras.Input((8, 8, 3))
    shared = keras.Sequential(
        [keras.Input((8, 8, 3))]
        + [keras.layers.Conv2D(3, 3, padding="same", name=f"s{i}") for i in (1, 2)],
        name="shared",
    )
    x = shared(shared(inputs))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="outer")


def _in_a_branch():
    x = inputs = keras.Input((8, 8, 3))
    branch = keras.Sequential(
        [keras.Input((8, 8, 3))]
        + [keras.layers.Conv2D(3, 3, padding="same", name=f"r{i}") for i in (1, 2)],
        name="branch",
    )
    x = keras.layers.Add(name="join")([x, branch(x)])
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x), name="outer")


@pytest.mark.parametrize(
    "make_backbone, reason",
    [
        (_two_outputs, "nested model 'pair' (from 'two_b') and it has 1 input(s) and 2 output(s)"),
        (_called_twice, "nested model 'shared' (from 's2') and it is called 2 times (shared)"),
        (
            _in_a_branch,
            "nested model 'branch' (from 'r2') and it is not on the backbone's single path "
            "(other tensors are alive beside it)",
        ),
    ],
    ids=["two-outputs", "called-twice", "in-a-branch"],
)
def test_a_nested_model_the_cut_cannot_enter_turns_the_cache_off(make_backbone, reason):
    tuner = _tuner(make_backbone, FreezePolicy.matching("^(two_b|s2|r2)$", train=True))
    assert cache_decision(tuner.assembly, X, FitArgs({}), FeatureCache()) == (
        f"the trainable layers are inside {reason}; the cache cannot cut inside it"
    )


def test_a_trainable_layer_below_every_cut_inside_a_nested_model_is_named_with_it():
    tuner = _tuner(sequential_around_a_base, FreezePolicy.matching("^stem_conv$", train=True))
    assert cache_decision(tuner.assembly, X, FitArgs({}), FeatureCache()) == (
        "a trainable backbone layer ('stem_conv' inside nested model 'base') comes before "
        "every point where the backbone could be cut"
    )


def test_a_nested_model_built_for_any_size_is_cut_at_the_shape_the_backbone_calls_it_with():
    # An application built without `input_shape` has (None, None, 3) in its own graph.
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="any_conv1")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", name="any_conv2")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="any_conv3")(x)
    base = keras.Model(inputs, x, name="any_size")

    def outer():
        pooling = keras.layers.GlobalAveragePooling2D(name="features")
        return keras.Sequential([keras.Input((8, 8, 3)), base, pooling], name="outer")

    tuner = _tuner(outer, FreezePolicy.matching("^any_conv3$", train=True))
    split = frozen_prefix(tuner.assembly)
    assert split.shape == (8, 8, 4)
    assert tuple(split.tail_model.inputs[0].shape) == (None, 8, 8, 4)
