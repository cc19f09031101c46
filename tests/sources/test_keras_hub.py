"""KerasHub presets as backbones: a tiny BERT and a tiny ResNet, saved with `save_to_preset`
and loaded through `Backbone.from_preset`, fine-tune, save, load, export and report
through the same classes as every other source. Offline: nothing is downloaded."""

import pytest

keras_hub = pytest.importorskip("keras_hub")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import finetune_tf  # noqa: E402
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head  # noqa: E402
from finetune_tf.sources.keras_hub import PresetPreprocessor, TokenPooling  # noqa: E402
from tests._tiny_keras_hub import tiny_bert, tiny_gpt2, tiny_resnet  # noqa: E402

GOOD = ["great", "wonderful", "superb", "delightful", "excellent", "lovely", "brilliant"]
BAD = ["awful", "terrible", "dreadful", "boring", "horrible", "bland", "disappointing"]
MOVIE = ["film", "plot", "acting", "ending", "script", "cast", "soundtrack"]
FOOD = ["soup", "pasta", "service", "dessert", "wine", "staff", "pizza"]
TEMPLATES = ["the {} was {}", "a {} {}", "{} was simply {}", "honestly the {} felt {}"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = " ".join(TEMPLATES).replace("{}", " ").split()
VOCABULARY = SPECIAL + sorted(set(GOOD + BAD + MOVIE + FOOD + WORDS))
LENGTH = 8


def reviews(nouns: list, count: int, seed: int) -> tuple:
    """`count` short reviews about `nouns`, labelled 1 when positive."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, size=count)
    texts = []
    for label in labels:
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        noun = nouns[rng.integers(len(nouns))]
        opinion = (GOOD if label else BAD)[rng.integers(7)]
        words = (opinion, noun) if template.startswith("a ") else (noun, opinion)
        texts.append(template.format(*words))
    return np.array(texts), labels


@pytest.fixture(scope="module")
def text_preset(tmp_path_factory):
    """A tiny BERT pre-trained on movie-review sentiment, saved as a KerasHub preset."""
    keras.utils.set_random_seed(0)
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=VOCABULARY)
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(
        tokenizer, sequence_length=LENGTH
    )
    backbone = tiny_bert(len(VOCABULARY), num_heads=2, hidden_dim=16, dropout=0.0)
    texts, labels = reviews(MOVIE, 400, seed=0)
    packed = {name: value.numpy() for name, value in preprocessor(texts).items()}
    outputs = keras.layers.Dense(1, activation="sigmoid")(backbone.output["pooled_output"])
    classifier = keras.Model(backbone.input, outputs)
    classifier.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", jit_compile=False)
    classifier.fit(packed, labels, epochs=4, batch_size=32, verbose=0)
    path = str(tmp_path_factory.mktemp("presets") / "tiny_bert")
    backbone.save_to_preset(path)
    preprocessor.save_to_preset(path)
    return path


@pytest.fixture(scope="module")
def image_preset(tmp_path_factory):
    """A tiny ResNet with random weights and its image converter, saved as a preset."""
    keras.utils.set_random_seed(0)
    backbone = tiny_resnet()
    converter = keras_hub.layers.ResNetImageConverter(image_size=(32, 32), scale=1 / 255)
    path = str(tmp_path_factory.mktemp("presets") / "tiny_resnet")
    backbone.save_to_preset(path)
    converter.save_to_preset(path)
    return path


def few_shot_food(shots: int = 8) -> tuple:
    x, y = reviews(FOOD, 200, seed=1)
    train = np.concatenate([np.flatnonzero(y == c)[:shots] for c in (0, 1)])
    test = np.setdiff1d(np.arange(len(y)), train)
    return x[train], y[train], x[test], y[test]


def tuned(backbone: Backbone, x, y, epochs: int = 15) -> FineTuner:
    tuner = FineTuner(backbone, Head.binary(), freeze=FreezePolicy.none(), seed=0)
    tuner.compile(learning_rate=3e-3)
    tuner.fit(x, y, epochs=epochs, batch_size=16, verbose=0)
    return tuner


def test_a_pretrained_text_preset_fine_tunes_on_raw_strings_and_round_trips(text_preset, tmp_path):
    backbone = Backbone.from_preset(text_preset)
    assert backbone.input_dtype == "string" and backbone.output_shape == (16,)
    assert backbone.source == f"KerasHub preset {text_preset!r}"
    names = [layer.name for layer in backbone.layers]
    assert names[:2] == ["text", "preprocessor"] and "transformer_layer_0" in names

    x_train, y_train, x_test, y_test = few_shot_food()
    tuner = tuned(backbone, x_train, y_train)
    report = tuner.report(x_test, y_test, class_names=["negative", "positive"])
    # The same architecture with KerasHub's random initialisation, same recipe and labels
    # (a third of the steps, to keep the test short: it stays near chance either way).
    scratch = tuned(
        Backbone.from_preset(text_preset, load_weights=False), x_train, y_train, epochs=5
    )
    scratch_accuracy = scratch.report(x_test, y_test)["accuracy"]
    assert report["accuracy"] >= 0.9 > scratch_accuracy + 0.15, (report, scratch_accuracy)

    # .keras file: loads in safe mode (our layers are registered by `import finetune_tf`,
    # Keras imports keras_hub for its own) and predicts from raw strings. (That
    # `import finetune_tf` imports neither keras_hub nor tensorflow_text is checked in
    # tests/contracts/test_package.py's fresh process.)
    # Freeze the encoder (embeddings and pooler stay trainable): the flags must survive
    # the file, including those of the sublayers KerasHub's encoder makes in `build`.
    tuner.set_freeze(FreezePolicy.matching("transformer_layer"))
    path = str(tmp_path / "reviews.keras")
    tuner.save(path)
    texts = ["the pizza was superb", "honestly the staff felt dreadful"]
    expected = tuner.predict(np.array(texts), verbose=0)
    assert expected[0, 0] > 0.5 > expected[1, 0]
    loaded = keras.models.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded(tf.constant(texts)), expected, atol=1e-5)
    # finetune_tf's own safe-mode check accepts KerasHub's registered gelu, and the
    # encoder loads frozen both ways.
    ours = finetune_tf.load_model(path)
    for model in (loaded, ours):
        assert (
            len(model.trainable_weights) == len(tuner.model.trainable_weights) < len(model.weights)
        )

    # SavedModel export: serves raw strings (tensorflow_text registers the tokenizer's ops).
    import tensorflow_text  # noqa: F401

    exported = tf.saved_model.load(tuner.export(str(tmp_path / "serving")))
    served = exported.serve(tf.constant(texts)).numpy()
    np.testing.assert_allclose(served, expected, atol=1e-5)


def test_an_image_preset_fine_tunes_on_raw_images_and_round_trips(image_preset, tmp_path):
    backbone = Backbone.from_preset(image_preset)  # feature maps, as other image backbones give
    assert backbone.input_shape == (None, None, 3) and backbone.output_shape == (8, 8, 64)
    tuner = FineTuner(backbone, Head.classifier(3), freeze=FreezePolicy.bottom(6), seed=0)
    trainable = tuner.freeze_report.trainable_layers  # input, converter, input, pad, conv, bn
    assert "conv1_conv" not in trainable and "stack0_block0_1_conv" in trainable
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(24, 40, 40, 3)).astype("uint8")  # resized to 32x32
    labels = np.arange(24) % 3
    tuner.compile()
    tuner.fit(images, labels, epochs=1, batch_size=8, verbose=0)
    expected = tuner.predict(images[:4], verbose=0)
    assert set(tuner.report(images, labels)) >= {"accuracy"}

    path = str(tmp_path / "images.keras")
    tuner.save(path)
    np.testing.assert_allclose(FineTuner.load(path).predict(images[:4], verbose=0), expected)
    exported = tf.saved_model.load(tuner.export(str(tmp_path / "serving")))
    np.testing.assert_allclose(
        exported.serve(tf.constant(images[:4], tf.float32)), expected, atol=1e-5
    )

    pooled = Backbone.from_preset(image_preset, feature="mean")
    assert pooled.output_shape == (64,)


def test_feature_choices_copies_and_load(text_preset):
    first = Backbone.from_preset(text_preset, feature="first_token", sequence_length=6)
    mean = Backbone.from_preset(text_preset, feature="mean")
    every = Backbone.from_preset(text_preset, feature="all")
    assert (first.output_shape, mean.output_shape, every.output_shape) == (
        (16,),
        (16,),
        (LENGTH, 16),
    )
    texts = tf.constant(["the soup was bland", "a superb film"])
    tokens = every.model(texts).numpy()
    mask = keras_hub.models.TextClassifierPreprocessor.from_preset(text_preset)(texts)
    mask = mask["padding_mask"].numpy()[..., None].astype("float32")
    np.testing.assert_allclose(mean.model(texts), (tokens * mask).sum(1) / mask.sum(1), atol=1e-5)
    np.testing.assert_allclose(first.model(texts), tokens[:, 0], atol=1e-5)
    assert first.model.get_layer("preprocessor").preprocessor.sequence_length == 6

    # A copy (what scikit-learn fits and strategies make) has its own weights and the
    # same tokenizer; Backbone.load recognises a preset directory.
    twin = mean.copy()
    assert twin.model.weights[0] is not mean.model.weights[0]
    np.testing.assert_allclose(twin.model(texts), mean.model(texts), atol=1e-6)
    assert Backbone.load(text_preset).source == mean.source
    for layer in (PresetPreprocessor, TokenPooling):
        assert keras.saving.get_registered_name(layer) == f"finetune_tf>{layer.__name__}"


def test_preset_names_that_need_a_download_fail_clearly_offline(monkeypatch):
    from keras_hub.src.utils import preset_utils

    if preset_utils.kagglehub is None:
        pytest.skip("kagglehub is not installed")

    def offline(*args, **kwargs):  # what kagglehub raises without a network
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(preset_utils.kagglehub, "model_download", offline)
    with pytest.raises(OSError, match=r"bert_tiny_en_uncased.*network.*local preset directory"):
        Backbone.from_preset("bert_tiny_en_uncased")


def test_a_causal_preset_pools_the_mean_and_refuses_first_token(tmp_path):
    # GPT-2's first token attends to nothing else: its vector is the same for every text.
    path = str(tmp_path / "tiny_gpt2")
    gpt2, tokenizer = tiny_gpt2()
    gpt2.save_to_preset(path)  # without its tokenizer: the preprocessor is given
    preprocessor = keras_hub.models.GPT2Preprocessor(tokenizer, sequence_length=8)
    backbone = Backbone.from_preset(path, preprocessor=preprocessor)
    assert backbone.model.get_layer("token_pooling").mode == "mean"
    features = backbone.model(tf.constant(["a", "b b a", "ab ab ab"])).numpy()
    assert not np.allclose(features[0], features[1]) and not np.allclose(features[1], features[2])
    with pytest.raises(ValueError, match="decoder-only"):
        Backbone.from_preset(path, preprocessor=preprocessor, feature="first_token")
    # Its config cannot carry the vocabulary: get_config says so and points to saving.
    with pytest.raises(ValueError, match="vocabulary is an asset.*FineTuner.save"):
        FineTuner(backbone, Head.binary()).get_config()


def test_freeze_policies_see_the_blocks_and_attention_of_a_preset(text_preset):
    # from_preset holds the KerasHub backbone as a plain graph of its layers: bottom(n)
    # still counts its transformer blocks, and lora() takes KerasHub's query/value choice.
    backbone = Backbone.from_preset(text_preset)
    tuner = FineTuner(backbone, Head.classifier(2), freeze=FreezePolicy.bottom(1))
    report = tuner.freeze_report
    assert report.blocks == 1 and "counted in transformer blocks" in str(report)
    trained = {weight.path.split("/")[0] for weight in tuner.model.trainable_weights}
    assert not trained & {"token_embedding", "transformer_layer_0"}
    tuner.set_freeze(FreezePolicy.lora(2))
    adapted = sorted(
        weight.path.rsplit("/", 2)[-2]
        for weight in tuner.model.trainable_weights
        if "lora_kernel" in weight.path
    )
    assert adapted == ["query", "query", "value", "value"]
    with pytest.raises(ValueError, match="block"):
        tuner.set_freeze(FreezePolicy.bottom(2))
