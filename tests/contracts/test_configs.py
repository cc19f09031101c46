"""Every object a user can save has a complete config: one check serves them all."""

import keras
import pytest
import tensorflow as tf
from conftest import assert_round_trips

import finetune_tf  # noqa: F401 (registers the Keras objects)
from finetune_tf import (
    ApplicationPreprocessing,
    Backbone,
    BackboneLayer,
    FreezePolicy,
    Head,
    HubLayer,
    InputAdapter,
    LabelAccuracy,
    LabelCrossentropy,
    LayerwiseOptimizer,
    Stage,
    TunedModel,
)
from finetune_tf.model.corruption import Corruption
from finetune_tf.model.head.projection import NTXent, VarianceFloor
from finetune_tf.model.views import TwoViews
from finetune_tf.sources.keras_hub import PresetPreprocessor, TokenPooling
from finetune_tf.training.growing import GrowthLoss
from finetune_tf.training.layerwise import ScaledSchedule
from finetune_tf.training.stages import stage_learning_rate


def hub_layer(tmp_path):
    class Scale(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return x * self.w

    tf.saved_model.save(Scale(), str(tmp_path))
    return HubLayer(str(tmp_path), trainable=False)


def tuned_model():
    inputs = keras.Input((4,))
    return TunedModel(inputs, keras.layers.Dense(2, name="predictions")(inputs), name="tuned")


def backbone_model():
    inputs = keras.Input((4,))
    return keras.Model(inputs, keras.layers.Dense(3, name="features")(inputs), name="bb")


# One maker for every Keras object finetune_tf registers (the test below checks the list).
MAKERS = {
    "finetune_tf>ApplicationPreprocessing": lambda tmp: ApplicationPreprocessing("resnet50"),
    "finetune_tf>BackboneLayer": lambda tmp: BackboneLayer(backbone_model(), False),
    "finetune_tf>Corruption": lambda tmp: Corruption("masked", rate=0.3, patch_size=3, seed=1),
    "finetune_tf>HubLayer": hub_layer,
    "finetune_tf>GrowthLoss": lambda tmp: GrowthLoss(5, 3, temperature=3.0, weight=0.5),
    "finetune_tf>InputAdapter": lambda tmp: InputAdapter((16, 16, 3), channels="repeat"),
    "finetune_tf>LabelAccuracy": lambda tmp: LabelAccuracy(from_logits=True),
    "finetune_tf>LabelCrossentropy": lambda tmp: LabelCrossentropy(from_logits=True),
    "finetune_tf>NTXent": lambda tmp: NTXent(temperature=0.5),
    "finetune_tf>LayerwiseOptimizer": lambda tmp: LayerwiseOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9), [("bb/features/kernel", 0.5)]
    ),
    "finetune_tf>PresetPreprocessor": lambda tmp: PresetPreprocessor(
        keras.layers.Rescaling(1 / 255.0), name="preprocessor"
    ),
    "finetune_tf>ScaledSchedule": lambda tmp: ScaledSchedule(
        keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5), 0.25
    ),
    "finetune_tf>TokenPooling": lambda tmp: TokenPooling("first_token"),
    "finetune_tf>TunedModel": lambda tmp: tuned_model(),
    "finetune_tf>TwoViews": lambda tmp: TwoViews(
        noise=0.2, shift=0.1, rotation=0.0, paired=True, seed=2
    ),
    "finetune_tf>VarianceFloor": lambda tmp: VarianceFloor(weight=0.5, target=2.0),
    "finetune_tf>_LinearWarmup": lambda tmp: stage_learning_rate(
        Stage(4, warmup_epochs=1), 1e-3, 10
    ),
    "finetune_tf>label_accuracy": None,  # a function: nothing to configure
}


def test_every_registered_keras_object_has_a_maker_here():
    registered = {
        name for name in keras.saving.get_custom_objects() if name.startswith("finetune_tf>")
    }
    assert registered == set(MAKERS)


@pytest.mark.parametrize("name", sorted(name for name, make in MAKERS.items() if make))
def test_registered_keras_objects_round_trip(name, tmp_path):
    assert_round_trips(MAKERS[name](tmp_path))


@pytest.mark.parametrize(
    "obj",
    [
        Head.classifier(5, hidden_units=(16,), dropout=0.2),
        Head.multilabel(3, logits=True, weight_decay=1e-4),
        FreezePolicy.matching("^block", train=True, batchnorm="train"),
        FreezePolicy.until("features", inclusive=False),
        Stage(3, FreezePolicy.top(2), 1e-4, optimizer="sgd", lr_schedule="cosine", name="t"),
    ],
    ids=repr,
)
def test_finetune_tf_objects_round_trip(obj):
    assert_round_trips(obj)


def test_a_backbone_config_rebuilds_its_architecture():
    backbone = Backbone.from_model(backbone_model(), preprocessing="tf")
    again = Backbone.from_config(backbone.get_config())
    assert again.output_shape == backbone.output_shape
    assert [type(layer) for layer in again.model.layers] == [
        type(layer) for layer in backbone.model.layers
    ]
    assert again.model.get_layer("features").units == 3
    assert isinstance(again.preprocessing, ApplicationPreprocessing)
