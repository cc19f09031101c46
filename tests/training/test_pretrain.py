"""Unsupervised pre-training (`Pretrainer`, `Backbone.pretrain`): it learns to reconstruct,
or contrastively (its features then separate the classes better than untrained ones), the
backbone it returns carries the trained weights into a FineTuner, from arrays, tf.data and
image folders, repeatably with a seed, and an interrupted run resumes from checkpoint_dir."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from finetune_tf import Backbone, FineTuner, Head, Pretrainer
from tests.conftest import weights_of
from tests.training.test_checkpoint import Crash, CrashAt


@pytest.fixture(scope="module")
def digits():
    """200 digits, 8x8x1 in [0, 1]."""
    return (load_digits().images[:200] / 16.0).astype("float32")[..., None]


def conv_encoder(seed=0, filters=8):
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name="conv"),
            keras.layers.MaxPooling2D(name="pool"),
        ],
        name="conv_encoder",
    )


def reconstruction_error(pretrainer, x):
    return float(np.mean((pretrainer.model.predict(x, verbose=0) - x) ** 2))


@pytest.fixture(scope="module")
def pretrained(digits):
    """A Sequential conv backbone, before and after 8 epochs of denoising pre-training."""
    backbone = Backbone.from_model(conv_encoder())
    before = weights_of(backbone.model)
    pretrainer = Pretrainer(backbone, seed=1)
    untrained_error = reconstruction_error(pretrainer, digits)
    history = pretrainer.fit(digits, epochs=8, batch_size=16, verbose=0)
    return {
        "backbone": backbone,
        "pretrainer": pretrainer,
        "before": before,
        "history": history,
        "untrained_error": untrained_error,
    }


def test_pretraining_learns_to_reconstruct_and_returns_the_trained_backbone(pretrained, digits):
    pretrainer, history = pretrained["pretrainer"], pretrained["history"]
    losses = history.history["loss"]
    assert losses[-1] < 0.5 * losses[0]
    # Clean digits come back far better than before training.
    assert reconstruction_error(pretrainer, digits) < 0.4 * pretrained["untrained_error"]
    # The backbone given is the one trained, in place, in float32.
    backbone = pretrainer.backbone
    assert backbone is pretrained["backbone"]
    after = weights_of(backbone.model)
    assert all(not np.allclose(a, b) for a, b in zip(after, pretrained["before"], strict=True))
    assert all(w.dtype == "float32" for w in backbone.model.weights)
    assert backbone.input_shape == (8, 8, 1) and backbone.output_shape == (4, 4, 8)


def test_the_pretrained_backbone_fine_tunes_from_its_trained_weights(pretrained, digits):
    backbone = pretrained["backbone"].copy()
    tuner = FineTuner(backbone, Head.classifier(10), seed=0)
    inner = tuner.backbone.model.get_layer("conv").get_weights()[0]
    np.testing.assert_array_equal(inner, pretrained["backbone"].model.get_layer("conv").kernel)
    tuner.compile(learning_rate=1e-2)
    history = tuner.fit(digits, load_digits().target[:200], epochs=2, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_tf_data_drops_labels_a_seed_repeats_and_checkpoint_dir_resumes_a_crash(digits, tmp_path):
    x = digits.reshape(-1, 64)
    labels = np.zeros(len(x), "int64")
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(32)

    def pretrainer_of_a_fresh_process():
        keras.utils.set_random_seed(0)
        inputs = keras.Input((64,))
        features = keras.layers.Dense(16, activation="relu", name="features")(inputs)
        return Pretrainer(
            Backbone.from_model(keras.Model(inputs, features)), method="autoencoder", seed=0
        )

    reference = pretrainer_of_a_fresh_process()
    expected = reference.fit(dataset, epochs=4, verbose=0)
    crashed = pretrainer_of_a_fresh_process()
    with pytest.raises(Crash):
        crashed.fit(dataset, epochs=4, checkpoint_dir=tmp_path, callbacks=[CrashAt(2)], verbose=0)
    resumed = pretrainer_of_a_fresh_process()
    ran = []
    record = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: ran.append(epoch))
    history = resumed.fit(dataset, epochs=4, checkpoint_dir=tmp_path, callbacks=[record], verbose=0)
    assert ran == [2, 3]  # only the interrupted epoch and those after it ran again
    np.testing.assert_allclose(history.history["loss"], expected.history["loss"], rtol=1e-6)
    for a, b in zip(
        weights_of(resumed.backbone.model), weights_of(reference.backbone.model), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    # A vector backbone gets a Dense decoder, and learns to reconstruct the inputs.
    assert reference.model.output_shape == (None, 64)
    assert reference.model.get_layer("decoder_dense") is not None
    losses = expected.history["loss"]
    assert losses[-1] < 0.5 * losses[0]


EPOCHS_CONTRASTIVE = 30


def linear_probe(backbone, x, y):
    """Test accuracy of a logistic regression on the backbone's standardised pooled features
    (trained on the first half, scored on the second)."""
    features = backbone.model.predict(x, verbose=0).mean(axis=(1, 2))  # as the head pools
    features = StandardScaler().fit_transform(features)
    half = len(x) // 2
    probe = LogisticRegression(max_iter=500).fit(features[:half], y[:half])
    return probe.score(features[half:], y[half:])


def test_contrastive_pretraining_learns_features_that_separate_unseen_classes():
    digits = load_digits()
    x = (digits.images[:400] / 16.0).astype("float32")[..., None]
    y = digits.target[:400]
    backbone = Backbone.from_model(conv_encoder(filters=16))
    untrained = linear_probe(backbone, x, y)
    pretrainer = Pretrainer(backbone, method="contrastive", seed=0)
    views = pretrainer.model.get_layer("views")
    assert views is pretrainer.tuner.augmentation and views.paired  # neighbour pairs
    assert pretrainer.model.get_layer("variance_floor").weight == 1.0
    pretrainer.compile(learning_rate=3e-3)  # a short run: a faster rate than the default
    history = pretrainer.fit(
        x, epochs=EPOCHS_CONTRASTIVE, batch_size=128, validation_split=0.1, verbose=0
    )
    losses = history.history["loss"]
    # NT-Xent over 256 views starts near log(255) = 5.5 (plus the variance floor's
    # penalty, below 1) and falls; the last 10% of the inputs validate.
    assert losses[-1] < losses[0] - 0.5
    assert len(history.history["val_loss"]) == EPOCHS_CONTRASTIVE
    trained = linear_probe(pretrainer.backbone, x, y)
    assert trained > untrained + 0.06, (trained, untrained)  # seeded: 0.74 against 0.645
    assert pretrainer.backbone is backbone
    # The last convolution was scaled so that the pooled features spread by about 1.
    assert pretrainer.feature_scale > 1
    features = backbone.model.predict(x[:360], verbose=0).mean(axis=(1, 2))
    np.testing.assert_allclose(features.std(axis=0).mean(), 1.0, rtol=1e-3)


def test_contrastive_pretraining_on_a_dataset_pairs_each_input_with_itself(digits):
    x = digits.reshape(-1, 64)[:64]
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(len(x)))).batch(16)
    inputs = keras.Input((64,))
    backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(8)(inputs)))
    pretrainer = Pretrainer(backbone, method="contrastive", neighbors=3, seed=0)
    pairs = pretrainer._pairs(pretrainer._unlabeled(dataset, "x", 16), 16)
    batch, _ = next(iter(pairs))
    np.testing.assert_array_equal(batch[0::2], x[:16])  # each input, then itself
    np.testing.assert_array_equal(batch[1::2], x[:16])
    history = pretrainer.fit(dataset, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


def test_an_image_folder_a_users_decoder_a_strategy_and_mixed_precision(digits, tmp_path):
    for i, image in enumerate(digits[:32]):
        keras.utils.save_img(tmp_path / f"{i}.png", image * 255, scale=False)
    decoder = keras.Sequential(
        [keras.layers.UpSampling2D(), keras.layers.Conv2D(1, 3, padding="same")], name="mine"
    )
    backbone = Backbone.from_model(conv_encoder(), preprocessing=keras.layers.Rescaling(1 / 255))
    before = weights_of(backbone.model)
    pretrainer = Pretrainer(
        backbone,
        method="masked",
        decoder=decoder,
        strategy=tf.distribute.MirroredStrategy(["/cpu:0"]),
        mixed_precision="mixed_bfloat16",
        seed=0,
    )
    assert pretrainer.tuner.backbone is not backbone  # trained on a placed copy
    history = pretrainer.fit(str(tmp_path), epochs=3, batch_size=16, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert pretrainer.model.get_layer("mine") is decoder
    # The backbone handed back is the user's, in float32, with the copy's trained weights.
    assert pretrainer.backbone is backbone
    trained = [w.numpy() for w in pretrainer.tuner.backbone.model.weights]
    for mine, copy in zip(weights_of(backbone.model), trained, strict=True):
        np.testing.assert_array_equal(mine, copy)
    assert not np.allclose(weights_of(backbone.model)[0], before[0])
    assert all(w.dtype == "float32" for w in backbone.model.weights)


def test_domain_adaptive_pretraining_of_a_saved_model_backbone(keras2_files, images):
    backbone = Backbone.from_file(keras2_files["saved_model"])
    before = weights_of(backbone.model)
    trained = backbone.pretrain(images, epochs=1, batch_size=8, seed=0, verbose=0)
    assert trained is backbone
    after = weights_of(backbone.model)
    changed = [not np.allclose(a, b) for a, b in zip(after, before, strict=True)]
    assert any(changed)
    assert FineTuner(trained, Head.classifier(3)).predict(images, verbose=0).shape == (24, 3)
