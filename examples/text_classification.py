"""Fine-tune a pretrained text encoder on raw strings: a TF Hub encoder or a KerasHub preset.

TF Hub text encoders are SavedModels that take a batch of strings and return a dict with a
`pooled_output` (one vector per text). `Backbone.from_hub(handle, output_key=...)` wraps
one for Keras 3, with its variables trainable layer by layer.

Offline, the example makes such an encoder first: a tf_keras model (hashed words, an
embedding, mean pooling, a dense layer) pretrained on movie reviews and saved with
`tf.saved_model.save`, the way tfhub.dev models were made. It then fine-tunes it on
restaurant reviews (other nouns, the same opinion words) from a few labels, and compares
with the same encoder fine-tuned the same way without pretraining. With a real
encoder, pass its handle: `--handle https://tfhub.dev/google/nnlm-en-dim50/2
--output-key default` (tensorflow_hub downloads and caches it).

The KerasHub route (`--keras-hub`, needs `pip install "finetune_tf[keras-hub]"`) is the
BERT flow: `Backbone.from_preset` puts the preset's tokenizer inside the model, the head
trains first, then the whole encoder with a small learning rate; an accuracy and F1
report, and a saved model that takes raw strings. Offline it builds a tiny BERT preset
(pretrained on the movie reviews, saved with `save_to_preset`); online, pass
`--preset bert_tiny_en_uncased` (KerasHub downloads and caches it).

Run: python examples/text_classification.py [--handle URL_OR_DIR] [--shots 8]
     python examples/text_classification.py --keras-hub [--preset bert_tiny_en_uncased]
"""

# %%
import argparse
import atexit
import os
import shutil
import tempfile

import keras
import numpy as np
import tensorflow as tf

from finetune_tf import Backbone, FineTuner, FreezePolicy, Head

GOOD = ["great", "wonderful", "superb", "delightful", "excellent", "lovely", "brilliant"]
BAD = ["awful", "terrible", "dreadful", "boring", "horrible", "bland", "disappointing"]
MOVIE = ["film", "plot", "acting", "ending", "script", "cast", "soundtrack"]
FOOD = ["soup", "pasta", "service", "dessert", "wine", "staff", "pizza"]
TEMPLATES = ["the {} was {}", "a {} {}", "{} was simply {}", "honestly the {} felt {}"]


def reviews(nouns: list, count: int, rng: np.random.Generator) -> tuple:
    """`count` short reviews about `nouns` and their labels (1: positive)."""
    labels = rng.integers(0, 2, size=count)
    texts = []
    for label in labels:
        template = TEMPLATES[rng.integers(len(TEMPLATES))]
        noun = nouns[rng.integers(len(nouns))]
        opinion = (GOOD if label else BAD)[rng.integers(7)]
        words = (opinion, noun) if template.startswith("a ") else (noun, opinion)
        texts.append(template.format(*words))
    return np.array(texts), labels


def build_encoder(dim: int = 16):
    """A tf_keras text encoder: strings in, {"pooled_output", "sequence_output"} out."""
    import tf_keras

    class TextEncoder(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.embed = tf_keras.layers.Embedding(1000, dim, name="embedding")
            self.dense = tf_keras.layers.Dense(dim, activation="tanh", name="encoder_dense")

        def call(self, texts, training=False):
            words = tf.strings.split(tf.strings.lower(texts))
            ids = tf.strings.to_hash_bucket_fast(words, 1000)
            embedded = self.embed(ids)
            return {
                "pooled_output": self.dense(tf.reduce_mean(embedded, axis=1)),
                "sequence_output": embedded.to_tensor(),
            }

    return TextEncoder()


def export_encoder(path: str, rng: np.random.Generator, pretrain: bool = True) -> str:
    """Saves the encoder as a Hub-format SavedModel, pretrained on movie reviews or not."""
    import tf_keras

    tf_keras.utils.set_random_seed(int(rng.integers(2**31)))
    encoder = build_encoder()
    texts, labels = reviews(MOVIE, 600, rng)
    inputs = tf_keras.Input((), dtype=tf.string)
    outputs = tf_keras.layers.Dense(1, activation="sigmoid")(encoder(inputs)["pooled_output"])
    classifier = tf_keras.Model(inputs, outputs)
    if pretrain:
        classifier.compile("adam", "binary_crossentropy", metrics=["accuracy"])
        classifier.fit(texts, labels, epochs=30, batch_size=32, verbose=0)
    serve = tf.function(lambda x: encoder(x), input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(encoder, path, signatures={"serving_default": serve})
    return path


def main(
    handle: str | None = None,
    output_key: str = "pooled_output",
    shots: int = 8,
    head_epochs: int = 30,
    epochs: int | str = "auto",
    seed: int = 0,
    workdir: str | None = None,
) -> dict:
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if workdir is None:  # a temporary directory, removed when the script ends
        workdir = tempfile.mkdtemp(prefix="finetune_tf_text_")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    if handle is None:
        handle = export_encoder(os.path.join(workdir, "text_encoder"), rng)
        print(f"pretrained a text encoder on movie reviews and exported it to {handle}")

    # %% The new task: restaurant reviews, `shots` labelled examples per class.
    x_pool, y_pool = reviews(FOOD, 400, rng)
    train = np.concatenate([np.flatnonzero(y_pool == c)[:shots] for c in (0, 1)])
    test = np.setdiff1d(np.arange(len(y_pool)), train)
    x_train, y_train, x_test, y_test = x_pool[train], y_pool[train], x_pool[test], y_pool[test]

    # %% Fine-tune the pretrained encoder: the head first, then the encoder's layers.
    tuner = fine_tune(handle, output_key, x_train, y_train, head_epochs, epochs, seed)
    report = tuner.report(x_test, y_test, class_names=["negative", "positive"])
    print(report)

    # %% The baseline: the same encoder untrained, the same recipe and labels.
    untrained = export_encoder(os.path.join(workdir, "untrained_encoder"), rng, pretrain=False)
    baseline = fine_tune(untrained, "pooled_output", x_train, y_train, head_epochs, epochs, seed)
    scratch = baseline.report(x_test, y_test)["accuracy"]
    print(
        f"restaurant reviews, {shots} labels per class:\n"
        f"  fine-tuned pretrained encoder: {report['accuracy']:.1%}\n"
        f"  same encoder, not pretrained:  {scratch:.1%}"
    )
    path = os.path.join(workdir, "reviews.keras")
    tuner.save(path)
    predictions = tuner.predict(["the pizza was superb", "honestly the staff felt rude"], verbose=0)
    print(f"saved {path}; P(positive) for two new reviews: {np.round(predictions[:, 0], 2)}")
    return {"fine_tuned": report["accuracy"], "scratch": scratch}


# %% The KerasHub route: a BERT preset, its tokenizer inside the model.
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_tiny_bert_preset(path: str, rng: np.random.Generator, epochs: int = 4) -> str:
    """A tiny BERT pretrained on movie reviews, saved as a KerasHub preset directory
    (what `save_to_preset` writes for `bert_tiny_en_uncased`, in miniature)."""
    import keras_hub

    words = " ".join(TEMPLATES).replace("{}", " ").split() + GOOD + BAD + MOVIE + FOOD
    tokenizer = keras_hub.models.BertTokenizer(vocabulary=SPECIAL_TOKENS + sorted(set(words)))
    preprocessor = keras_hub.models.BertTextClassifierPreprocessor(tokenizer, sequence_length=8)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=tokenizer.vocabulary_size(),
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=8,
        dropout=0.0,
    )
    texts, labels = reviews(MOVIE, 400, rng)
    packed = {name: value.numpy() for name, value in preprocessor(texts).items()}
    outputs = keras.layers.Dense(1, activation="sigmoid")(backbone.output["pooled_output"])
    pretraining = keras.Model(backbone.input, outputs)
    pretraining.compile(keras.optimizers.Adam(1e-2), "binary_crossentropy", jit_compile=False)
    pretraining.fit(packed, labels, epochs=epochs, batch_size=32, verbose=0)
    backbone.save_to_preset(path)
    preprocessor.save_to_preset(path)
    return path


def keras_hub_main(
    preset: str | None = None,
    shots: int = 8,
    head_epochs: int = 30,
    epochs: int | str = "auto",
    sequence_length: int | None = None,
    seed: int = 0,
    workdir: str | None = None,
) -> dict:
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="finetune_tf_text_")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    if preset is None:
        preset = save_tiny_bert_preset(os.path.join(workdir, "tiny_bert"), rng)
        print(f"pretrained a tiny BERT on movie reviews and saved it as a preset in {preset}")
    x_pool, y_pool = reviews(FOOD, 400, rng)
    train = np.concatenate([np.flatnonzero(y_pool == c)[:shots] for c in (0, 1)])
    test = np.setdiff1d(np.arange(len(y_pool)), train)

    # %% The tokenizer, the encoder and the feature (BERT's pooled output) in one backbone.
    backbone = Backbone.from_preset(preset, sequence_length=sequence_length)
    print(backbone)
    tuner = FineTuner(backbone, Head.binary(dropout=0.1), freeze=FreezePolicy.none(), seed=seed)
    # The head first, then every layer with a small learning rate (BERT's recipe).
    tuner.fine_tune(
        x_pool[train],
        y_pool[train],
        head_epochs=head_epochs,
        epochs=epochs,
        fine_tune_learning_rate=5e-5,
        verbose=0,
    )

    # %% Accuracy and F1 on the held-out reviews; the saved model takes raw strings.
    report = tuner.report(x_pool[test], y_pool[test], class_names=["negative", "positive"])
    print(report)
    f1 = report["macro avg"]["f1"]
    print(
        f"KerasHub preset, {shots} labels per class: accuracy {report['accuracy']:.1%}, F1 {f1:.3f}"
    )
    path = os.path.join(workdir, "reviews_bert.keras")
    tuner.save(path)
    loaded = keras.models.load_model(path)
    predictions = loaded.predict(tf.constant(["the pizza was superb"]), verbose=0)
    print(f"saved {path}; reloaded, P(positive | 'the pizza was superb') = {predictions[0, 0]:.2f}")
    return {"accuracy": report["accuracy"], "f1": f1, "path": path}


def fine_tune(handle, output_key, x, y, head_epochs, epochs, seed) -> FineTuner:
    tuner = FineTuner(
        Backbone.from_hub(handle, output_key=output_key),
        Head.binary(dropout=0.1),
        freeze=FreezePolicy.none(),
        seed=seed,
    )
    tuner.fine_tune(x, y, head_epochs=head_epochs, epochs=epochs, verbose=0)
    return tuner


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handle", help="a Hub URL or SavedModel directory (default: build one)")
    parser.add_argument("--output-key", default="pooled_output")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--head-epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", help="keep the model files here (default: a temp dir)")
    parser.add_argument("--keras-hub", action="store_true", help="the KerasHub preset route")
    parser.add_argument(
        "--preset", help="a KerasHub preset name or directory (implies --keras-hub)"
    )
    parser.add_argument("--epochs", default="auto", help="fine-tuning epochs (default: auto)")
    parser.add_argument("--sequence-length", type=int, help="tokens per text (KerasHub route)")
    args = parser.parse_args()
    epochs = args.epochs if args.epochs == "auto" else int(args.epochs)
    if args.keras_hub or args.preset:
        keras_hub_main(
            args.preset,
            args.shots,
            args.head_epochs,
            epochs,
            args.sequence_length,
            seed=args.seed,
            workdir=args.workdir,
        )
    else:
        main(
            args.handle,
            args.output_key,
            args.shots,
            args.head_epochs,
            epochs,
            seed=args.seed,
            workdir=args.workdir,
        )
