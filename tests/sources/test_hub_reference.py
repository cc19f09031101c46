"""HubLayer against the reference, hub.KerasLayer under tf_keras, on the same SavedModels.

Each side loads the SavedModel on its own (separate variables, same starting values).
"""

import numpy as np
import pytest
import tensorflow as tf

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, HubLayer


@pytest.fixture(scope="session")
def mobilenet_dir(tmp_path_factory):
    """A real architecture exported the way tfhub.dev feature vectors were: tf_keras, then
    tf.saved_model.save."""
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    model = tf_keras.applications.MobileNetV2(
        input_shape=(32, 32, 3), alpha=0.35, include_top=False, weights=None, pooling="avg"
    )
    path = str(tmp_path_factory.mktemp("hub") / "mobilenet_v2")
    tf.saved_model.save(model, path)
    return {"path": path, "model": model}


def reference_layer(path):
    import tensorflow_hub as hub

    return hub.KerasLayer(path, trainable=True)


def batch(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, shape).astype("float32")


def test_same_outputs_and_trainable_variables(mobilenet_dir):
    ours, ref = HubLayer(mobilenet_dir["path"]), reference_layer(mobilenet_dir["path"])
    x = batch((4, 32, 32, 3))
    for training in (False, True):  # training mode: batch statistics inside the SavedModel
        np.testing.assert_allclose(
            ours(x, training=training).numpy(), ref(x, training=training).numpy(), atol=1e-4
        )
    ref_names = sorted(v.name.split(":")[0] for v in ref.trainable_weights)
    ours_trainable = sorted(
        name
        for name, w in zip(ours.restored_variable_names, ours.weights, strict=True)
        if w.trainable
    )
    assert ours_trainable == ref_names
    assert len(ours.non_trainable_weights) == len(ref.non_trainable_weights)


def test_same_regularization_loss(keras2_files):
    import tf_keras

    x = batch((4, 8, 8, 3))
    ref = reference_layer(keras2_files["saved_model"])
    inputs = tf_keras.Input((8, 8, 3))
    ref_model = tf_keras.Model(inputs, ref(inputs))
    ref_model(x, training=True)
    ours = HubLayer(keras2_files["saved_model"])
    ours(x, training=True)
    assert len(ours.losses) == len(ref_model.losses) == 1
    np.testing.assert_allclose(float(ours.losses[0]), float(ref_model.losses[0]), rtol=1e-6)


def test_same_weights_after_one_sgd_step(mobilenet_dir):
    x, y = batch((8, 32, 32, 3), seed=1), np.arange(8) % 3
    head = batch((mobilenet_dir["model"].output_shape[-1], 3), seed=2) * 0.1

    def sgd_step(layer, variables):
        with tf.GradientTape() as tape:
            features = layer(x, training=True)
            logits = tf.matmul(features, head)
            loss = tf.reduce_mean(
                tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
            )
        grads = tape.gradient(loss, variables)
        for variable, grad in zip(variables, grads, strict=True):
            variable.assign_sub(0.5 * grad)

    ref = reference_layer(mobilenet_dir["path"])
    sgd_step(ref, ref.trainable_weights)
    ours = HubLayer(mobilenet_dir["path"])
    initial = [w.numpy().copy() for w in ours.weights]  # as loaded, before the step
    sgd_step(ours, ours.trainable_weights)
    ref_by_name = {v.name.split(":")[0]: v.numpy() for v in ref.weights}
    moved = 0
    for name, weight, start in zip(
        ours.restored_variable_names, ours.weights, initial, strict=True
    ):
        np.testing.assert_allclose(weight.numpy(), ref_by_name[name], atol=1e-5, err_msg=name)
        moved += not np.allclose(weight.numpy(), start)
    assert moved > len(ours.weights) // 2  # the step really moved the weights (and BN stats)


def test_layers_follow_the_architecture_and_freeze_like_it(mobilenet_dir):
    backbone = Backbone.from_hub(mobilenet_dir["path"])
    groups = [layer.name for layer in backbone.layers[1:]]
    expected = [layer.name for layer in mobilenet_dir["model"].layers if layer.weights]
    assert groups == expected  # one group per tf_keras layer with weights, in order
    n = 40
    tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.bottom(n))
    assert len(tuner.freeze_report.frozen_layers) == n
    frozen = [w for layer in backbone.layers[1:n] for w in layer.weights]
    trained = [w for layer in backbone.layers[n:] for w in layer.trainable_weights]
    assert frozen and trained
    before_frozen = [w.numpy().copy() for w in frozen]
    before_trained = [w.numpy().copy() for w in trained]
    tuner.compile(optimizer="sgd", learning_rate=0.1)
    tuner.fit(batch((16, 32, 32, 3)), np.arange(16) % 3, epochs=1, verbose=0)
    for w, before in zip(frozen, before_frozen, strict=True):
        np.testing.assert_array_equal(w.numpy(), before)
    assert any(
        not np.array_equal(w.numpy(), before)
        for w, before in zip(trained, before_trained, strict=True)
    )


def test_batchnorm_groups_follow_the_batchnorm_option(mobilenet_dir):
    backbone = Backbone.from_hub(mobilenet_dir["path"])
    FreezePolicy.none(batchnorm="freeze").apply(backbone)
    bn_groups = [g for g in backbone.layers[1:] if g.is_batchnorm]
    assert bn_groups and not any(g.trainable for g in bn_groups)
    assert all(g.trainable for g in backbone.layers[1:] if not g.is_batchnorm)


def test_frozen_groups_survive_save_and_load(mobilenet_dir, tmp_path):
    import finetune_tf

    backbone = Backbone.from_hub(mobilenet_dir["path"])
    tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.top(10))
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    restored = finetune_tf.load_model(path)
    hub_layer = restored.get_layer("backbone").backbone.layers[-1]
    assert [g.trainable for g in hub_layer.variable_groups] == [
        g.trainable for g in backbone.layers[1:]
    ]
