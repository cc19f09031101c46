"""The models users actually have, through every entry point.

Sequential (started with keras.Input, or built with build()), functional, nested
functional, a built subclassed model and Keras 2 files, each through from_model /
from_file / Backbone.load, FineTuner fit and predict, a strategy, save and load, export
and the scikit-learn estimators. Models that cannot be a backbone (several inputs or
outputs, an unbuilt model, a whole classifier) get an error or warning naming the fix.
"""

import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetune_tf
from finetune_tf import Backbone, FineTuner, FineTunerClassifier, FreezePolicy, Head


def conv_layers():
    return [
        keras.layers.Conv2D(4, 3, padding="same", name="conv1"),
        keras.layers.BatchNormalization(name="bn1"),
        keras.layers.ReLU(name="relu1"),
        keras.layers.GlobalAveragePooling2D(name="features"),
    ]


@keras.saving.register_keras_serializable(package="tests")
class SubclassedCNN(keras.Model):
    """A subclassed model as users write them (registered, with get_config)."""

    def __init__(self, filters=4, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = keras.layers.Conv2D(filters, 3, padding="same", name="conv1")
        self.bn = keras.layers.BatchNormalization(name="bn1")
        self.pool = keras.layers.GlobalAveragePooling2D(name="features")

    def call(self, inputs, training=None):
        return self.pool(keras.ops.relu(self.bn(self.conv(inputs), training=training)))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


def sequential_with_input():
    return keras.Sequential([keras.Input((8, 8, 3)), *conv_layers()], name="seq_input")


def sequential_built():
    model = keras.Sequential(conv_layers(), name="seq_built")
    model.build((None, 8, 8, 3))
    return model


def functional():
    inputs = keras.Input((8, 8, 3))
    x = inputs
    for layer in conv_layers():
        x = layer(x)
    return keras.Model(inputs, x, name="functional")


def nested():
    inner = sequential_with_input()
    inputs = keras.Input((8, 8, 3))
    return keras.Model(inputs, keras.layers.Dense(5, name="proj")(inner(inputs)), name="nested")


def subclassed():
    model = SubclassedCNN(name="subclassed")
    model(np.zeros((1, 8, 8, 3), "float32"))
    return model


KINDS = {
    "sequential_with_input": sequential_with_input,
    "sequential_built": sequential_built,
    "functional": functional,
    "nested": nested,
    "subclassed": subclassed,
}


@pytest.fixture
def data():
    rng = np.random.default_rng(0)
    return rng.random((24, 8, 8, 3), dtype=np.float32), np.arange(24) % 3


def trains_and_predicts(tuner, data):
    x, y = data
    before = [w.numpy().copy() for w in tuner.backbone.model.trainable_weights]
    tuner.compile(optimizer="adam", learning_rate=1e-2)
    tuner.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert tuner.predict(x, verbose=0).shape == (24, 3)
    after = tuner.backbone.model.trainable_weights
    assert before and any(
        not np.allclose(b, a.numpy()) for b, a in zip(before, after, strict=True)
    ), "the backbone did not train"


@pytest.mark.parametrize("kind", KINDS)
def test_from_model_fits_saves_loads_and_exports(kind, data, tmp_path):
    backbone = Backbone.from_model(KINDS[kind]())
    assert backbone.input_shape == (8, 8, 3)
    assert any(layer.name == "conv1" for layer in backbone.layers)
    tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.none(), seed=0)
    trains_and_predicts(tuner, data)
    x = data[0]
    expected = tuner.predict(x, verbose=0)

    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    np.testing.assert_allclose(
        keras.models.load_model(path).predict(x, verbose=0), expected, atol=1e-5
    )
    np.testing.assert_allclose(
        finetune_tf.load_model(path).predict(x, verbose=0), expected, atol=1e-5
    )

    exported = str(tmp_path / "exported")
    tuner.export(exported)
    serve = tf.saved_model.load(exported).signatures["serving_default"]
    np.testing.assert_allclose(serve(tf.constant(x))["predictions"].numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_freezing_counts_the_layers_of_every_kind(kind):
    backbone = Backbone.from_model(KINDS[kind]())
    report = FreezePolicy.until("conv1").apply(backbone)
    conv = next(layer for layer in backbone.layers if layer.name == "conv1")
    trainable = {id(w) for w in backbone.model.trainable_weights}
    assert not conv.trainable and id(conv.kernel) not in trainable
    assert "conv1" in report.frozen_layers and "bn1" in report.trainable_layers
    assert report.trainable_params == sum(w.numpy().size for w in backbone.model.trainable_weights)
    assert report.trainable_params > 0


@pytest.mark.parametrize("kind", KINDS)
def test_under_a_strategy(kind, data):
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    tuner = FineTuner(
        Backbone.from_model(KINDS[kind]()),
        Head.classifier(3),
        freeze=FreezePolicy.none(),
        strategy=strategy,
    )
    assert tuner.strategy is strategy
    trains_and_predicts(tuner, data)


@pytest.mark.parametrize("kind", KINDS)
def test_scikit_learn_estimator(kind, data):
    x, y = data
    model = KINDS[kind]()
    classifier = FineTunerClassifier(model, head_epochs=3, epochs=1, random_state=0).fit(x, y)
    assert classifier.predict(x).shape == (24,)
    assert set(classifier.predict(x)) <= {0, 1, 2}


@pytest.mark.parametrize("kind", ["sequential_with_input", "functional", "nested"])
@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_from_file_and_backbone_load(kind, suffix, data, tmp_path):
    model = KINDS[kind]()
    path = str(tmp_path / f"pretrained{suffix}")
    model.save(path)
    x = data[0]
    for backbone in (Backbone.from_file(path), Backbone.load(path)):
        np.testing.assert_allclose(
            backbone.model.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5
        )
    trains_and_predicts(
        FineTuner(Backbone.load(path), Head.classifier(3), freeze=FreezePolicy.none()), data
    )


def test_subclassed_model_saved_as_keras_file(data, tmp_path):
    path = str(tmp_path / "subclassed.keras")
    subclassed().save(path)
    backbone = Backbone.from_file(path)
    assert backbone.output_shape == (4,)
    trains_and_predicts(FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.none()), data)


def test_keras2_h5_file_through_every_entry_point(keras2_files, data, tmp_path):
    x, y = data
    for backbone in (Backbone.from_file(keras2_files["h5"]), Backbone.load(keras2_files["h5"])):
        np.testing.assert_allclose(
            backbone.model.predict(x, verbose=0),
            keras2_files["model"].predict(x, verbose=0),
            atol=1e-5,
        )
    tuner = FineTuner(keras2_files["h5"], Head.classifier(3), freeze=FreezePolicy.none())
    trains_and_predicts(tuner, data)
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    np.testing.assert_allclose(
        keras.models.load_model(path).predict(x, verbose=0),
        tuner.predict(x, verbose=0),
        atol=1e-5,
    )
    classifier = FineTunerClassifier(keras2_files["h5"], head_epochs=2, epochs=1, random_state=0)
    assert classifier.fit(x, y).predict(x).shape == (24,)


def test_subclassed_model_takes_input_shape_when_never_called(data):
    model = SubclassedCNN()
    backbone = Backbone.from_model(model, input_shape=(8, 8, 3))
    assert backbone.input_shape == (8, 8, 3) and backbone.output_shape == (4,)
    with pytest.raises(ValueError, match=r"input_shape.*subclassed"):
        Backbone.from_model(functional(), input_shape=(8, 8, 3))


def test_unbuilt_models_name_the_fix():
    with pytest.raises(ValueError, match=r"Sequential.*not been built.*keras.Input"):
        Backbone.from_model(keras.Sequential(conv_layers()))
    with pytest.raises(ValueError, match=r"no defined inputs.*input_shape="):
        Backbone.from_model(SubclassedCNN())


def test_several_inputs_or_outputs_name_the_fix():
    a, b = keras.Input((4,), name="a"), keras.Input((4,), name="b")
    two_inputs = keras.Model([a, b], keras.layers.Concatenate()([a, b]))
    with pytest.raises(ValueError, match=r"2 inputs.*takes one.*Wrap it"):
        Backbone.from_model(two_inputs)
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    two_outputs = keras.Model(inputs, [hidden, keras.layers.Dense(2, name="aux")(hidden)])
    with pytest.raises(ValueError, match=r"2 outputs.*'hidden'.*output_layer="):
        Backbone.from_model(two_outputs)
    # The fix the message names works.
    assert Backbone.from_model(two_outputs, output_layer="hidden").output_shape == (3,)


def test_saved_model_with_several_outputs_names_output_key(tmp_path):
    class TwoOutputs(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones((3, 5)))

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return {"pooled": tf.matmul(x, self.w), "sequence": x * 2.0}

    path = str(tmp_path / "two_outputs")
    tf.saved_model.save(TwoOutputs(), path)
    with pytest.raises(ValueError, match=r"2 outputs.*'pooled', 'sequence'.*output_key="):
        Backbone.from_file(path)
    with pytest.raises(ValueError, match=r"output_key="):
        Backbone.from_hub(path)
    assert Backbone.from_file(path, output_key="pooled").output_shape == (5,)


def test_a_whole_classifier_warns_and_names_the_layer_to_cut_at(tmp_path):
    classifier = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            *conv_layers(),
            keras.layers.Dropout(0.2, name="top_dropout"),
            keras.layers.Dense(10, activation="softmax", name="predictions"),
        ]
    )
    with pytest.warns(UserWarning, match=r"softmax.*'predictions'.*output_layer='features'"):
        Backbone.from_model(classifier)
    path = str(tmp_path / "classifier.keras")
    classifier.save(path)
    with pytest.warns(UserWarning, match=r"output_layer='features'"):
        Backbone.from_file(path)
    with warnings.catch_warnings():  # cut where the warning says: no warning
        warnings.simplefilter("error", UserWarning)
        assert Backbone.from_model(classifier, output_layer="features").output_shape == (4,)


def test_strategy_copy_of_a_sequential_keeps_its_weights():
    model = sequential_with_input()
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        placed = Backbone.from_model(model).placed(strategy)
    assert placed.model is not model
    for a, b in zip(placed.model.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_keras_applications_classifier_is_cut_below_its_classifier_layers():
    """MobileNetV3Small's top ends logits (a 1x1 conv) -> flatten -> softmax activation: the
    suggested cut gives the 1024 pre-logits features, not the 1000 classes."""
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV3Small(weights=None, include_top=True)
    with pytest.warns(UserWarning, match=r"softmax") as caught:
        Backbone.from_model(model)
    (cut,) = re.findall(r"output_layer='([^']+)'", str(caught[0].message))
    assert Backbone.from_model(model, output_layer=cut).output_shape == (1, 1, 1024)


class TutorialNet(keras.Model):
    """The tutorial pattern: no get_config, an __init__ without **kwargs, not registered."""

    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3, name="conv1")
        self.pool = keras.layers.GlobalAveragePooling2D(name="features")

    def call(self, inputs):
        return self.pool(self.conv(inputs))


def test_a_subclassed_model_without_config_trains_and_says_what_copying_needs(data):
    model = TutorialNet()
    model(np.zeros((1, 8, 8, 3), "float32"))
    trains_and_predicts(
        FineTuner(Backbone.from_model(model), Head.classifier(3), freeze=FreezePolicy.none()),
        data,
    )
    x, y = data
    for copying in (
        lambda: Backbone.from_model(model).copy(),
        lambda: FineTunerClassifier(model, head_epochs=1, epochs=1).fit(x, y),
        lambda: FineTuner(
            model, Head.classifier(3), strategy=tf.distribute.MirroredStrategy(["/cpu:0"])
        ),
    ):
        with pytest.raises(ValueError, match=r"TutorialNet cannot be rebuilt.*get_config\(\)"):
            copying()
