"""FreezePolicy: what trains, BatchNorm on purpose, reports and errors."""

import keras
import numpy as np
import pytest
from conftest import small_cnn, weights_of

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head


def trainable_names(backbone):
    return [layer.name for layer in backbone.layers if layer.trainable]


@pytest.fixture
def backbone():
    return Backbone.from_model(small_cnn())


def test_bottom_freezes_the_first_n_layers(backbone):
    report = FreezePolicy.bottom(3).apply(backbone)
    assert report.frozen_layers == ["pixels", "conv1", "bn1"]
    assert trainable_names(backbone) == ["relu1", "conv2", "bn2", "features"]
    # conv2 kernel 3*3*4*6 + bias 6, bn2 gamma + beta 12
    assert report.trainable_params == 216 + 6 + 12
    assert report.trainable_params == sum(
        int(np.prod(w.shape)) for w in backbone.model.trainable_weights
    )


def test_top_all_none_until_matching(backbone):
    FreezePolicy.top(2).apply(backbone)
    assert trainable_names(backbone) == ["bn2", "features"]
    FreezePolicy.all().apply(backbone)
    assert trainable_names(backbone) == []
    assert backbone.model.trainable_weights == []
    FreezePolicy.none().apply(backbone)
    assert len(trainable_names(backbone)) == 7
    FreezePolicy.until("bn1").apply(backbone)
    assert trainable_names(backbone) == ["relu1", "conv2", "bn2", "features"]
    FreezePolicy.until("bn1", inclusive=False).apply(backbone)
    assert trainable_names(backbone)[0] == "bn1"
    FreezePolicy.matching(r"^conv").apply(backbone)
    assert "conv1" not in trainable_names(backbone) and "bn1" in trainable_names(backbone)
    FreezePolicy.matching(r"^conv", train=True).apply(backbone)
    assert trainable_names(backbone) == ["conv1", "conv2"]


def test_policies_fit_their_numbers_to_the_backbone(backbone):
    with pytest.raises(ValueError, match=r"bottom\(n\)` got n=200, but the backbone has 7 layers"):
        FreezePolicy.bottom(200).apply(backbone)
    with pytest.raises(ValueError, match=r"top\(k\)` got k=8"):
        FreezePolicy.top(8).apply(backbone)
    with pytest.raises(ValueError, match=r"bottom\(n\)` must be a whole number >= 0.*n=-1"):
        FreezePolicy.bottom(-1)
    with pytest.raises(TypeError, match="whole number"):
        FreezePolicy.bottom(2.5)
    with pytest.raises(ValueError, match=r"'conv_2'.*Did you mean 'conv2'"):
        FreezePolicy.until("conv_2").apply(backbone)
    with pytest.raises(ValueError, match="matches no backbone layer"):
        FreezePolicy.matching("^block").apply(backbone)
    with pytest.raises(ValueError, match="regular expression"):
        FreezePolicy.matching("(")
    with pytest.raises(ValueError, match="batchnorm"):
        FreezePolicy.all(batchnorm="sometimes")


def test_failed_policy_changes_nothing(backbone):
    FreezePolicy.bottom(3).apply(backbone)
    before = trainable_names(backbone)
    with pytest.raises(ValueError):
        FreezePolicy.bottom(99).apply(backbone)
    with pytest.raises(ValueError, match="has 7 layers"):
        FreezePolicy.bottom(99).check(backbone)  # the check alone, as a schedule's plan does
    with pytest.raises(ValueError, match="'conv3' is not the name of a backbone layer that"):
        FreezePolicy.lora(2, targets=["conv3"]).check(backbone)
    assert trainable_names(backbone) == before


def test_nested_backbone_freezes_inner_layers():
    inner = small_cnn(name="inner")
    inputs = keras.Input((8, 8, 3))
    outer = keras.Model(inputs, keras.layers.Dense(2, name="proj")(inner(inputs)))
    backbone = Backbone.from_model(outer)
    FreezePolicy.bottom(4).apply(backbone)  # outer input, pixels, conv1, bn1
    assert not inner.get_layer("conv1").trainable
    assert inner.get_layer("conv2").trainable
    assert outer.get_layer("proj").trainable


def fit_once(tuner, images, labels):
    tuner.compile(optimizer="sgd", learning_rate=0.1)
    tuner.fit(images, labels, epochs=1, batch_size=8, verbose=0)


def test_batchnorm_inference_mode_keeps_statistics(images, labels):
    model = small_cnn()
    tuner = FineTuner(Backbone.from_model(model), Head.classifier(3), freeze=FreezePolicy.none())
    bn = model.get_layer("bn1")
    mean_before, gamma_before = bn.moving_mean.numpy().copy(), bn.gamma.numpy().copy()
    fit_once(tuner, images * 10 + 5, labels)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), mean_before)  # statistics kept
    assert not np.array_equal(bn.gamma.numpy(), gamma_before)  # but gamma trains


def test_batchnorm_train_mode_updates_statistics(images, labels):
    model = small_cnn()
    tuner = FineTuner(
        Backbone.from_model(model), Head.classifier(3), freeze=FreezePolicy.none(batchnorm="train")
    )
    bn = model.get_layer("bn1")
    before = bn.moving_mean.numpy().copy()
    fit_once(tuner, images * 10 + 5, labels)
    assert not np.allclose(bn.moving_mean.numpy(), before)


def test_batchnorm_freeze_mode_freezes_batchnorm_layers(images, labels):
    model = small_cnn()
    tuner = FineTuner(
        Backbone.from_model(model), Head.classifier(3), freeze=FreezePolicy.none(batchnorm="freeze")
    )
    assert not model.get_layer("bn1").trainable and model.get_layer("conv1").trainable
    bn = model.get_layer("bn1")
    before = [bn.gamma.numpy().copy(), bn.moving_mean.numpy().copy()]
    fit_once(tuner, images * 10 + 5, labels)
    np.testing.assert_array_equal(bn.gamma.numpy(), before[0])
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before[1])


def test_report_is_printable(backbone):
    report = FreezePolicy.bottom(3).apply(backbone)
    text = str(report)
    assert text.startswith("FreezePolicy.bottom(3): trainable layers 4 / 7")
    # A model without transformer blocks counts layers, as it always did.
    assert (report.unit, report.blocks, report.lora_rank, report.adapter_params) == (
        "layers",
        0,
        None,
        0,
    )
    assert report.trainable_fraction == report.trainable_params / (
        report.trainable_params + report.non_trainable_params
    )
    assert "BatchNorm: inference" in text


@pytest.mark.slow
@pytest.mark.parametrize("name, n", [("MobileNetV3Small", 100), ("ResNet50", 143)])
def test_real_architectures_freeze_like_the_tutorial(name, n, labels):
    # Random weights (no download) with BatchNorm in inference mode: nothing normalises the
    # activations, which grow through ResNet50's residual blocks. Seeded, pixels near the
    # ImageNet mean and a gentle step keep the loss finite by construction, not by luck
    # (SGD at 0.1 on raw 0..255 pixels went NaN under TensorFlow 2.20).
    keras.utils.set_random_seed(0)
    backbone = Backbone.from_keras_applications(name, weights=None, input_shape=(32, 32, 3))
    tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.bottom(n))
    model = backbone.model
    # Same as `for layer in base_model.layers[:n]: layer.trainable = False`.
    assert [layer.trainable for layer in model.layers] == [i >= n for i in range(len(model.layers))]
    frozen_before = [w.numpy().copy() for layer in model.layers[:n] for w in layer.weights]
    stats = [x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)]
    stats_before = [x.moving_mean.numpy().copy() for x in stats]
    trainable_before = weights_of(model)
    images = np.random.default_rng(1).uniform(96, 160, (24, 32, 32, 3)).astype("float32")
    tuner.compile(optimizer="sgd", learning_rate=1e-4)
    history = tuner.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    frozen_after = [w.numpy() for layer in model.layers[:n] for w in layer.weights]
    for a, b in zip(frozen_before, frozen_after, strict=True):
        np.testing.assert_array_equal(a, b)
    for layer, before in zip(stats, stats_before, strict=True):  # every BN in inference mode
        np.testing.assert_array_equal(layer.moving_mean.numpy(), before)
    changed = [
        not np.array_equal(a, b) for a, b in zip(trainable_before, weights_of(model), strict=True)
    ]
    assert any(changed)
