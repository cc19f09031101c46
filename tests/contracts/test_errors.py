"""Bad input, caught at the door: every row of the table in docs/robustness.md.

Each case is called as a user would call it and must raise the named builtin exception
with a message naming the argument and what to do; nothing is left half-built.
"""

import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

import finetune_tf
from finetune_tf import Backbone, FineTuner, FreezePolicy, Head, Pretrainer, Stage
from tests._tiny_keras_hub import tiny_preset

DOCS = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "robustness.md")


def backbone():
    inputs = keras.Input((6,), name="x")
    x = keras.layers.Dense(8, name="dense_1")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    return Backbone.from_model(keras.Model(inputs, keras.layers.Dense(5, name="features")(x)))


def tuner(**kwargs):
    return FineTuner(backbone(), Head.classifier(3), **kwargs)


def lora_then(policy):
    return tuner(freeze=policy)


def vit():
    keras_hub = pytest.importorskip("keras_hub")  # the version matrix has none: skipped
    keras.utils.set_random_seed(0)
    model = keras_hub.models.ViTBackbone(
        image_shape=(8, 8, 3), patch_size=4, num_layers=2, num_heads=1, hidden_dim=4, mlp_dim=4
    )
    return Backbone.from_model(model)


def constrained_embedding():
    inputs = keras.Input((5,), dtype="int32", name="ids")
    x = keras.layers.Embedding(20, 4, embeddings_constraint="non_neg", name="emb")(inputs)
    x = keras.layers.GlobalAveragePooling1D(name="pool")(keras.layers.Dense(6, name="d")(x))
    return Backbone.from_model(keras.Model(inputs, x))


def attention_with_adapters():
    inputs = keras.Input((3, 4), name="tokens")
    x = keras.layers.MultiHeadAttention(1, 2, name="attention")(inputs, inputs)
    adapted = Backbone.from_model(keras.Model(inputs, x, name="block"))
    FreezePolicy.lora(2, targets=["query"]).apply(adapted)
    return adapted


def compiled():
    t = tuner(freeze=FreezePolicy.none())
    t.compile()
    return t


class Unbuilt(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def two_inputs():
    a, b = keras.Input((2,), name="a"), keras.Input((2,), name="b")
    return keras.Model([a, b], keras.layers.Concatenate()([a, b]))


def two_outputs():
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    return keras.Model(inputs, [hidden, keras.layers.Dense(2, name="aux")(hidden)])


def regressor(outputs):
    t = FineTuner(backbone(), Head.regressor(outputs))
    t.compile()
    return t


def multilabel(labels):
    t = FineTuner(backbone(), Head.multilabel(labels))
    t.compile()
    return t


def binary():
    t = FineTuner(backbone(), Head.binary())
    t.compile()
    return t


X = np.random.default_rng(0).random((12, 6), dtype=np.float32)
Y = np.arange(12) % 3


def soft_rows(row: int, values) -> np.ndarray:
    """Label-smoothed rows for Y, with `values` in row `row`."""
    y = np.eye(3)[Y] * 0.9 + 0.1 / 3
    y[row] = values
    return y


def with_nan():
    x = X.copy()
    x[4, 2] = np.nan
    return x


def empty_state(tmp):
    """A checkpoint directory whose state.npz is empty (a disk that filled up)."""
    open(os.path.join(tmp, "state.npz"), "wb").close()
    return tmp


class _Stop(Exception):
    pass


def interrupted_fit(tmp):
    """A checkpoint directory holding the state of `fit(epochs=3, batch_size=4)`, killed
    in its second epoch."""

    def die(epoch, logs):
        if epoch == 1:
            raise _Stop

    try:
        compiled().fit(
            X,
            Y,
            epochs=3,
            batch_size=4,
            checkpoint_dir=tmp,
            callbacks=[keras.callbacks.LambdaCallback(on_epoch_begin=die)],
            verbose=0,
        )
    except _Stop:
        pass
    return tmp


def text_file(tmp):
    path = os.path.join(tmp, "notes.txt")
    with open(path, "w") as f:
        f.write("hello")
    return path


def weights_only(tmp):
    path = os.path.join(tmp, "only.weights.h5")
    backbone().model.save_weights(path)
    return path


def grown():
    """A compiled 3-class tuner grown by one class (class 3)."""
    t = compiled()
    t.add_classes(1)
    return t


def binary_with_loss():
    t = FineTuner(backbone(), Head.binary())
    t.compile(loss="binary_crossentropy", metrics=["binary_accuracy"])
    return t


def dataset(x, y, batch_size=4):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)


class Batches(keras.utils.PyDataset):
    """The users' own PyDataset: batches of 4 of `x`, `y`."""

    def __init__(self, x, y):
        super().__init__()
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x) // 4

    def __getitem__(self, index):
        return self.x[index * 4 : index * 4 + 4], self.y[index * 4 : index * 4 + 4]


def batches():
    """A Python generator of (x, y) batches: readable once."""
    for start in range(0, 12, 4):
        yield X[start : start + 4], Y[start : start + 4]


def uncounted():
    """A dataset whose length TensorFlow does not know (a filter)."""
    return dataset(X, Y).unbatch().filter(lambda x, y: True).batch(4)


def user_loss():
    """A tuner compiled with a loss of the user's: its targets are its own business,
    except NaN."""
    t = tuner()
    t.compile(loss="categorical_crossentropy")
    return t


def one_hot_with_nan():
    y = np.eye(3, dtype=np.float32)[Y]
    y[5, 1] = np.nan
    return y


def unzipped_keras_model(tmp):
    inputs = keras.Input((4,))
    path = os.path.join(tmp, "model_dir")
    keras.Model(inputs, keras.layers.Dense(3)(inputs)).save(path, zipped=False)
    return path


# A directory no process can write in, root included (sysfs is read-only).
UNWRITABLE = "/sys/finetune_tf_cannot_write_here"


# id, call (given a temporary directory), exception, words the message must contain
CASES = [
    ("backbone-type", lambda d: Backbone.load(42), TypeError, r"Received.*42"),
    (
        "backbone-missing-file",
        lambda d: Backbone.from_file(f"{d}/nope.keras"),
        FileNotFoundError,
        r"`path`.*does not exist",
    ),
    (
        "backbone-not-a-model",
        lambda d: Backbone.from_file(text_file(d)),
        ValueError,
        r"`path`.*not a supported model file.*\.keras",
    ),
    (
        "backbone-unknown-layer",
        lambda d: Backbone.from_model(backbone().model, output_layer="dense1"),
        ValueError,
        r"dense1.*Did you mean 'dense_1'",
    ),
    (
        "backbone-unknown-application",
        lambda d: Backbone.from_keras_applications("ResNet5O"),
        ValueError,
        r"ResNet5O.*Did you mean 'ResNet50'",
    ),
    (
        "hub-handle-unresolvable",
        lambda d: Backbone.from_hub(f"{d}/no_such_model"),
        FileNotFoundError,
        r"handle.*no_such_model",
    ),
    (
        "preset-unknown-name",
        lambda d: Backbone.from_preset("bert_tiny_en_uncasd"),
        ValueError,
        r"`preset`='bert_tiny_en_uncasd' is not a KerasHub preset.*Did you mean 'bert_tiny_en_unc",
    ),
    (
        "preset-missing-directory",
        lambda d: Backbone.from_preset(f"{d}/no_such_preset"),
        FileNotFoundError,
        r"`preset`=.*no_such_preset' does not exist.*save_to_preset",
    ),
    (
        "preset-not-a-preset",
        lambda d: Backbone.from_preset(d),
        FileNotFoundError,
        r"`preset`=.*not a KerasHub preset: it has no config.json",
    ),
    (
        "preset-feature",
        lambda d: Backbone.from_preset(d, feature="cls"),
        ValueError,
        r"`Backbone.from_preset\(feature\)` must be one of 'pooled'.*Received: feature='cls'",
    ),
    (
        "preset-feature-unavailable",
        lambda d: Backbone.from_preset(tiny_preset(d, "image"), feature="first_token"),
        ValueError,
        r"`feature`='first_token' is not available.*Use one of 'mean' or 'all'",
    ),
    (
        "preset-sequence-length-for-images",
        lambda d: Backbone.from_preset(tiny_preset(d, "image"), sequence_length=64),
        ValueError,
        r"`sequence_length`=64 applies to text presets.*Remove sequence_length",
    ),
    (
        "preset-text-without-preprocessor",
        lambda d: Backbone.from_preset(tiny_preset(d, "text"), preprocessor=False),
        ValueError,
        r"several inputs.*'padding_mask'.*preprocessor=True",
    ),
    (
        "preset-unexpected-argument",
        lambda d: Backbone.from_preset("bert_tiny_en_uncased", output_layer="pooled_dense"),
        TypeError,
        r"unexpected keyword arguments \['output_layer'\].*load_weights and dtype.*feature=",
    ),
    (
        "preset-sequence-length-with-own-preprocessor",
        lambda d: Backbone.from_preset(
            "bert_tiny_en_uncased", preprocessor=keras.layers.Identity(), sequence_length=8
        ),
        ValueError,
        r"`sequence_length`=8 applies to the preset's own preprocessor.*Set sequence_length",
    ),
    (
        "preset-sequence-length-too-long",
        lambda d: Backbone.from_preset(tiny_preset(d, "text"), sequence_length=64),
        ValueError,
        r"`sequence_length`=64 is longer.*max_sequence_length=8.*sequence_length <= 8",
    ),
    (
        "preset-causal-first-token",
        lambda d: Backbone.from_preset(tiny_preset(d, "causal"), feature="first_token"),
        ValueError,
        r"'first_token' is constant.*GPT2Backbone.*decoder-only.*feature='mean'",
    ),
    (
        "preset-causal-no-classifier-preprocessor",
        lambda d: Backbone.from_preset(tiny_preset(d, "causal")),
        ValueError,
        r"no text classifier preprocessor.*GPT2Backbone.*`preprocessor=`",
    ),
    (
        "preset-unzipped-keras-model",
        lambda d: Backbone.from_preset(unzipped_keras_model(d)),
        ValueError,
        r"Keras model saved unzipped.*not a KerasHub preset.*keras.models.load_model",
    ),
    (
        "preset-name-in-load",
        lambda d: Backbone.load("bert_tiny_en_uncased"),
        ValueError,
        r"KerasHub preset name.*Backbone.from_preset\('bert_tiny_en_uncased'\)",
    ),
    (
        "preset-get-config-tokenizer",
        lambda d: Backbone.from_preset(tiny_preset(d, "text")).get_config(),
        ValueError,
        r"get_config cannot describe.*vocabulary is an asset.*FineTuner.save",
    ),
    (
        "preset-export-tflite-text",
        lambda d: FineTuner(Backbone.from_preset(tiny_preset(d, "text")), Head.binary()).export(
            f"{d}/m.tflite", format="tflite"
        ),
        ValueError,
        r"format='tflite' cannot export a model that takes raw strings.*format='saved_model'",
    ),
    (
        "load-missing",
        lambda d: finetune_tf.load_model(f"{d}/gone.keras"),
        FileNotFoundError,
        r"`filepath`.*does not exist",
    ),
    (
        "load-directory",
        lambda d: finetune_tf.load_model(d),
        ValueError,
        r"`filepath`.*is a directory.*Backbone.from_file",
    ),
    (
        "load-weights-only",
        lambda d: finetune_tf.load_model(weights_only(d)),
        ValueError,
        r"weights-only.*load_weights",
    ),
    (
        "load-not-a-model",
        lambda d: finetune_tf.load_model(text_file(d)),
        ValueError,
        r"`filepath`.*unsupported extension",
    ),
    ("head-num-classes", lambda d: Head.classifier(0), ValueError, r"num_classes.*0"),
    ("head-dropout", lambda d: Head.classifier(3, dropout=1.5), ValueError, r"dropout.*1\.5"),
    (
        "head-pooling",
        lambda d: Head.classifier(3, pooling="median"),
        ValueError,
        r"pooling.*median",
    ),
    (
        "head-hidden-units",
        lambda d: Head.classifier(3, hidden_units=(0,)),
        ValueError,
        r"hidden_units",
    ),
    ("freeze-negative", lambda d: FreezePolicy.bottom(-1), ValueError, r"bottom.*-1"),
    (
        "freeze-beyond-layers",
        lambda d: tuner(freeze=FreezePolicy.bottom(50)),
        ValueError,
        r"50.*layers",
    ),
    (
        "freeze-unknown-layer",
        lambda d: tuner(freeze=FreezePolicy.until("dense1")),
        ValueError,
        r"dense1.*Did you mean 'dense_1'",
    ),
    (
        "freeze-bad-pattern",
        lambda d: FreezePolicy.matching("conv[").apply(backbone()),
        ValueError,
        r"pattern.*conv\[",
    ),
    (
        "freeze-batchnorm",
        lambda d: FreezePolicy.all(batchnorm="maybe"),
        ValueError,
        r"batchnorm.*maybe",
    ),
    (
        "freeze-blocks-unlisted",
        lambda d: FreezePolicy.top(1).apply(vit()),
        ValueError,
        r"top\(k\)` counts transformer blocks.*ViTBackbone.*FreezePolicy\.until.*lora",
    ),
    (
        "freeze-lora-constraint",
        lambda d: FreezePolicy.lora(2, targets=["d", "emb"]).apply(constrained_embedding()),
        ValueError,
        r"cannot adapt the layer 'emb'.*`embeddings_constraint`.*targets=",
    ),
    ("freeze-lora-rank", lambda d: FreezePolicy.lora(0), ValueError, r"lora\(rank\).*rank=0"),
    (
        "freeze-lora-alpha",
        lambda d: FreezePolicy.lora(4, alpha=-1),
        ValueError,
        r"lora\(alpha\).*alpha=-1",
    ),
    (
        "freeze-lora-targets-type",
        lambda d: FreezePolicy.lora(4, targets=[1]),
        TypeError,
        r"lora\(targets\).*targets=\[1\]",
    ),
    (
        "freeze-lora-unknown-target",
        lambda d: tuner(freeze=FreezePolicy.lora(4, targets=["dense1"])),
        ValueError,
        r"'dense1'.*Did you mean 'dense_1'.*'features'",
    ),
    (
        "freeze-lora-other-rank",
        lambda d: lora_then(FreezePolicy.lora(2)).set_freeze(FreezePolicy.lora(4)),
        ValueError,
        r"rank=4.*already has adapters of rank 2.*merge",
    ),
    (
        "merge-lora-without-adapters",
        lambda d: tuner().merge_lora(),
        ValueError,
        r"merge_lora\(\)` found no LoRA adapters.*FreezePolicy\.lora",
    ),
    (
        "backbone-copy-lora",
        lambda d: attention_with_adapters().copy(),
        ValueError,
        r"Backbone 'block' cannot be copied.*LoRA adapters.*merge_lora",
    ),
    (
        "merge-lora-type",
        lambda d: finetune_tf.merge_lora("model.keras"),
        TypeError,
        r"merge_lora\(model\)` expects a keras\.Model.*str",
    ),
    (
        "tuner-head-type",
        lambda d: FineTuner(backbone(), "dense"),
        TypeError,
        r"`head`.*Head\.classifier",
    ),
    (
        "tuner-freeze-type",
        lambda d: FineTuner(backbone(), Head.classifier(3), freeze="all"),
        TypeError,
        r"`freeze`.*FreezePolicy",
    ),
    ("tuner-jit-compile", lambda d: tuner(jit_compile="yes"), ValueError, r"jit_compile.*yes"),
    ("tuner-seed", lambda d: tuner(seed="42"), TypeError, r"seed.*'42'"),
    (
        "tuner-precision",
        lambda d: tuner(mixed_precision="fp16"),
        ValueError,
        r"mixed_precision.*fp16",
    ),
    ("tuner-memory-growth", lambda d: tuner(memory_growth="yes"), TypeError, r"memory_growth.*yes"),
    ("tuner-strategy", lambda d: tuner(strategy="gpu"), TypeError, r"strategy.*gpu"),
    (
        "compile-optimizer",
        lambda d: tuner().compile(optimizer="adamm"),
        ValueError,
        r"adamm.*Did you mean 'adam'",
    ),
    (
        "compile-loss",
        lambda d: tuner().compile(loss="categorical_crossentropyy"),
        ValueError,
        r"categorical_crossentropyy.*Did you mean",
    ),
    (
        "compile-learning-rate",
        lambda d: tuner().compile(learning_rate=0),
        ValueError,
        r"learning_rate.*0",
    ),
    (
        "compile-backbone-l2",
        lambda d: tuner().compile(backbone_l2=-1e-4),
        ValueError,
        r"`FineTuner.compile\(backbone_l2\)` must be a finite number >= 0.*backbone_l2=-0.0001",
    ),
    (
        "compile-backbone-l1-type",
        lambda d: tuner().compile(backbone_l1="1e-5"),
        TypeError,
        r"`FineTuner.compile\(backbone_l1\)` must be a finite number >= 0.*'1e-5' of type str",
    ),
    (
        "fit-before-compile",
        lambda d: tuner().fit(X, Y),
        RuntimeError,
        r"before `compile\(\)`.*tuner\.compile",
    ),
    (
        "fit-labels-out-of-range",
        lambda d: compiled().fit(X, Y + 1),
        ValueError,
        r"`y`.*0\.\.2.*`y\[2\]` = 3.*num_classes",
    ),
    (
        "fit-one-hot-width",
        lambda d: compiled().fit(X, np.eye(4)[Y]),
        ValueError,
        r"`y`.*shape \(12, 4\).*\(n, 3\)",
    ),
    (
        "fit-string-labels",
        lambda d: compiled().fit(X, np.array(list("abcabcabcabc"))),
        ValueError,
        r"`y`.*LabelEncoder",
    ),
    (
        "fit-length-mismatch",
        lambda d: compiled().fit(X, Y[:10]),
        ValueError,
        r"12 inputs but 10 labels",
    ),
    ("fit-empty", lambda d: compiled().fit(X[:0], Y[:0]), ValueError, r"empty `x`"),
    ("fit-sample-shape", lambda d: compiled().fit(X[:, :4], Y), ValueError, r"`x`.*\(4,\).*\(6,\)"),
    (
        "fit-nan-inputs",
        lambda d: compiled().fit(with_nan(), Y),
        ValueError,
        r"`x`.*NaN.*index \(4, 2\).*nan_to_num",
    ),
    (
        "fit-regression-target-shape",
        lambda d: regressor(2).fit(X, Y),
        ValueError,
        r"`y` has shape \(12,\).*2-output regression head.*\(n, 2\)",
    ),
    (
        "fit-multilabel-targets-range",
        lambda d: multilabel(3).fit(X, np.full((12, 3), 2.0)),
        ValueError,
        r"`y` has multi-label targets outside \[0, 1\].*`y\[0\]` = \[2\., 2\., 2\.\]",
    ),
    (
        "fit-soft-rows-nan",
        lambda d: compiled().fit(X, soft_rows(3, [np.nan, 0.5, 0.5])),
        ValueError,
        r"`y` has target rows that are not probability distributions.*`y\[3\]` = "
        r"\[nan, 0\.5, 0\.5\] holds NaN or inf.*isfinite",
    ),
    (
        "fit-soft-rows-negative",
        lambda d: compiled().fit(X, soft_rows(3, [-0.2, 0.6, 0.6])),
        ValueError,
        r"`y`.*`y\[3\]` = .*has a negative entry.*np\.clip",
    ),
    (
        "fit-soft-rows-sum",
        lambda d: compiled().fit(X, soft_rows(3, [0.5, 0.2, 0.0])),
        ValueError,
        r"`y`.*`y\[3\]` = .*sums to 0\.7.*within 0\.001.*y / y\.sum\(axis=-1, keepdims=True\)",
    ),
    (
        "fit-binary-targets-range",
        lambda d: binary().fit(X, np.where(np.arange(12) == 3, 1.3, Y % 2)),
        ValueError,
        r"`y` has binary targets outside \[0, 1\].*`y\[3\]` = 1\.3.*np\.clip",
    ),
    (
        "fit-empty-schedule",
        lambda d: tuner().fit(X, Y, schedule=[]),
        ValueError,
        r"`schedule`.*non-empty",
    ),
    ("stage-no-epochs", lambda d: Stage(0), ValueError, r"epochs.*0"),
    (
        "fit-schedule-and-epochs",
        lambda d: tuner().fit(X, Y, schedule=[Stage(1)], epochs=3),
        ValueError,
        r"`epochs`.*Stage\(epochs",
    ),
    (
        "fine-tune-epochs",
        lambda d: tuner().fine_tune(X, Y, epochs="many"),
        ValueError,
        r"epochs.*many",
    ),
    (
        "fit-checkpoint-dir-file",
        lambda d: compiled().fit(X, Y, checkpoint_dir=text_file(d)),
        ValueError,
        r"`checkpoint_dir`.*is a file",
    ),
    (
        "fit-checkpoint-dir-empty-state",
        lambda d: compiled().fit(X, Y, checkpoint_dir=empty_state(d)),
        ValueError,
        r"`checkpoint_dir`.*cannot be read.*state\.npz' \(0 bytes.*Delete the directory",
    ),
    (
        "fit-checkpoint-dir-other-run",
        lambda d: compiled().fit(X, Y, epochs=3, batch_size=6, checkpoint_dir=interrupted_fit(d)),
        ValueError,
        r"`checkpoint_dir`.*different training run.*batch_size \(saved: 4, now: 6\).*same data",
    ),
    (
        "fit-epochs-zero",
        lambda d: compiled().fit(X, Y, epochs=0),
        ValueError,
        r"`FineTuner.fit\(epochs\)` must be a whole number >= 1.*epochs=0",
    ),
    (
        "fit-epochs-float",
        lambda d: compiled().fit(X, Y, epochs=2.5),
        TypeError,
        r"`FineTuner.fit\(epochs\)` must be a whole number.*epochs=2.5 of type float",
    ),
    (
        "fit-epochs-string",
        lambda d: compiled().fit(X, Y, epochs="3"),
        TypeError,
        r"`FineTuner.fit\(epochs\)`.*epochs='3' of type str",
    ),
    (
        "fit-batch-size-zero",
        lambda d: compiled().fit(X, Y, batch_size=0),
        ValueError,
        r"`FineTuner.fit\(batch_size\)` must be a whole number >= 1 or None.*batch_size=0",
    ),
    (
        "fit-batch-size-float",
        lambda d: compiled().fit(X, Y, batch_size=2.5),
        TypeError,
        r"`FineTuner.fit\(batch_size\)`.*batch_size=2.5 of type float",
    ),
    (
        "fit-steps-per-epoch-zero",
        lambda d: compiled().fit(X, Y, steps_per_epoch=0),
        ValueError,
        r"`FineTuner.fit\(steps_per_epoch\)` must be a whole number >= 1",
    ),
    (
        "fit-validation-freq-zero",
        lambda d: compiled().fit(X, Y, validation_split=0.25, validation_freq=0),
        ValueError,
        r"`FineTuner.fit\(validation_freq\)` must be a whole number >= 1",
    ),
    (
        "fit-unknown-argument",
        lambda d: compiled().fit(X, Y, epoch=3),
        TypeError,
        r"`FineTuner.fit\(\)` got an unexpected keyword argument 'epoch'.*Did you mean 'epochs'",
    ),
    (
        "fit-initial-epoch",
        lambda d: compiled().fit(X, Y, epochs=3, initial_epoch=4),
        ValueError,
        r"`FineTuner.fit\(initial_epoch\)` must be at most `epochs`.*initial_epoch=4",
    ),
    (
        "fit-verbose",
        lambda d: compiled().fit(X, Y, verbose=-1),
        ValueError,
        r"`FineTuner.fit\(verbose\)` must be a whole number >= 0 or \"auto\".*verbose=-1",
    ),
    (
        "fit-validation-split-one",
        lambda d: compiled().fit(X, Y, validation_split=1.0),
        ValueError,
        r"`FineTuner.fit\(validation_split\)` must be a number in \[0, 1\).*validation_data",
    ),
    (
        "fit-validation-split-leaves-nothing",
        lambda d: compiled().fit(X, Y, validation_split=0.95),
        ValueError,
        r"`validation_split`=0.95 of 12 examples leaves none to train on",
    ),
    (
        "fit-class-weight-type",
        lambda d: compiled().fit(X, Y, class_weight=[1.0, 2.0, 1.0]),
        TypeError,
        r"`FineTuner.fit\(class_weight\)` must be a dict.*compute_class_weight",
    ),
    (
        "fit-class-weight-negative",
        lambda d: compiled().fit(X, Y, class_weight={0: 1.0, 1: -2.0, 2: 1.0}),
        ValueError,
        r"`FineTuner.fit\(class_weight\[1\]\)` must be a finite number >= 0.*=-2.0",
    ),
    (
        "fit-callbacks-type",
        lambda d: compiled().fit(X, Y, callbacks=[print]),
        TypeError,
        r"`FineTuner.fit\(callbacks\)` must be a list of keras.callbacks.Callback",
    ),
    (
        "fit-strings-for-numbers",
        lambda d: compiled().fit(X.astype(str), Y),
        TypeError,
        r"`x` holding strings.*float32 numbers.*astype\('float32'\)",
    ),
    (
        "fit-object-array",
        lambda d: compiled().fit(X.astype(object), Y),
        TypeError,
        r"`x` as a NumPy array of Python objects.*dtype='float32'",
    ),
    (
        "fit-dataset-labels-range",
        lambda d: compiled().fit(dataset(X, Y + 3)),
        ValueError,
        r"first batch of `x` \(a tf.data.Dataset.*`y` has labels outside the integer range 0..2",
    ),
    (
        "fit-dataset-nan",
        lambda d: compiled().fit(dataset(with_nan(), Y, batch_size=6)),
        ValueError,
        r"first batch of `x` \(a tf.data.Dataset.*got `x` with 1 NaN or inf",
    ),
    (
        "fit-pydataset-labels-range",
        lambda d: compiled().fit(Batches(X, Y - 1)),
        ValueError,
        r"first batch of `x` \(a PyDataset, x\[0\].*`y` has labels outside the integer range 0..2",
    ),
    (
        "evaluate-dataset-labels-range",
        lambda d: compiled().evaluate(dataset(X, Y + 3)),
        ValueError,
        r"first batch of `x` \(a tf.data.Dataset.*`y` has labels outside",
    ),
    (
        "fit-checkpoint-dir-empty",
        lambda d: compiled().fit(X, Y, checkpoint_dir=""),
        ValueError,
        r"`checkpoint_dir` is an empty path",
    ),
    (
        "fit-checkpoint-dir-unwritable",
        lambda d: compiled().fit(X, Y, checkpoint_dir=UNWRITABLE),
        PermissionError,
        r"`checkpoint_dir`=.* cannot be written.*directory you can write to",
    ),
    (
        "feature-cache-directory-unwritable",
        lambda d: finetune_tf.FeatureCache(directory=UNWRITABLE),
        PermissionError,
        r"`FeatureCache\(directory\)`=.* cannot be written",
    ),
    (
        "schedule-stage-optimizer",
        lambda d: tuner().fit(
            X, Y, schedule=[Stage(1, FreezePolicy.all()), Stage(1, optimizer="adamm")]
        ),
        ValueError,
        r"Stage 'stage_2' \(stage 2 of 2\): Unknown optimizer='adamm'.*Nothing was trained",
    ),
    (
        "schedule-stage-freeze",
        lambda d: tuner().fit(
            X, Y, schedule=[Stage(1), Stage(1, FreezePolicy.until("dense1"), name="tune")]
        ),
        ValueError,
        r"Stage 'tune'.*layer_name='dense1'.*Did you mean 'dense_1'.*Nothing was trained",
    ),
    (
        "schedule-cosine-after-cosine",
        lambda d: tuner().fit(
            X, Y, schedule=[Stage(1, lr_schedule="cosine"), Stage(1, lr_schedule="cosine")]
        ),
        ValueError,
        r"Stage 'stage_2' has warmup_epochs/lr_schedule but no float learning rate.*CosineDecay",
    ),
    (
        "schedule-warmup-unknown-length",
        lambda d: tuner().fit(uncounted(), schedule=[Stage(2, warmup_epochs=1)]),
        ValueError,
        r"need the number of steps per epoch.*steps_per_epoch",
    ),
    (
        "stage-learning-rate",
        lambda d: Stage(1, learning_rate="1e-4"),
        ValueError,
        r"`Stage\(learning_rate\)` must be a finite number > 0.*'1e-4' of type str",
    ),
    (
        "fine-tune-learning-rate",
        lambda d: tuner().fine_tune(X, Y, fine_tune_learning_rate="1e-4"),
        ValueError,
        r"`FineTuner.fine_tune\(fine_tune_learning_rate\)` must be a finite number > 0",
    ),
    (
        "fine-tune-backbone-l2",
        lambda d: tuner().fine_tune(X, Y, backbone_l2=-1),
        ValueError,
        r"`FineTuner.fine_tune\(backbone_l2\)` must be a finite number >= 0 or None",
    ),
    (
        "fine-tune-generator",
        lambda d: tuner().fine_tune(batches()),
        ValueError,
        r"`x` is a Python generator, which can be read only once.*2 stages.*from_generator",
    ),
    (
        "tuner-seed-too-large",
        lambda d: tuner(seed=2**70),
        ValueError,
        r"`seed` must be a whole number in \[0, 4294967295\].*32-bit",
    ),
    (
        "head-too-large",
        lambda d: FineTuner(backbone(), Head.classifier(10**9)),
        ValueError,
        r"predictions layer would be a Dense kernel of 5 x 1000000000.*num_classes",
    ),
    (
        "find-learning-rate-epochs",
        lambda d: compiled().find_learning_rate(X, Y, steps=5, epochs=2, verbose=0),
        TypeError,
        r"`find_learning_rate\(\)` sets epochs, verbose itself.*Remove epochs=, verbose=",
    ),
    (
        "fit-shuffle",
        lambda d: compiled().fit(X, Y, shuffle="yes"),
        ValueError,
        r"`FineTuner.fit\(shuffle\)` must be one of True, False or 'batch'.*shuffle='yes'",
    ),
    (
        "fit-class-weight-key",
        lambda d: compiled().fit(X, Y, class_weight={"cat": 2.0}),
        TypeError,
        r"Each entry of `FineTuner.fit\(class_weight\)` must be a whole number >= 0.*'cat'",
    ),
    (
        "fit-validation-split-string",
        lambda d: compiled().fit(X, Y, validation_split="0.2"),
        TypeError,
        r"`FineTuner.fit\(validation_split\)` must be a number in \[0, 1\).*'0.2' of type str",
    ),
    (
        "fit-steps-per-epoch-float",
        lambda d: compiled().fit(X, Y, steps_per_epoch=2.5),
        TypeError,
        r"`FineTuner.fit\(steps_per_epoch\)` must be a whole number.*2.5 of type float",
    ),
    (
        "fit-initial-epoch-negative",
        lambda d: compiled().fit(X, Y, epochs=2, initial_epoch=-1),
        ValueError,
        r"`FineTuner.fit\(initial_epoch\)` must be a whole number >= 0.*initial_epoch=-1",
    ),
    (
        "fit-user-loss-nan-labels",
        lambda d: user_loss().fit(X, one_hot_with_nan()),
        ValueError,
        r"`FineTuner.fit` got `y` with 1 NaN or inf values",
    ),
    (
        "schedule-stage-optimizer-type",
        lambda d: tuner().fit(X, Y, schedule=[Stage(1, optimizer=3)]),
        TypeError,
        r"Stage 'stage_1' \(stage 1 of 1\): `optimizer` must be a name such as 'adam'",
    ),
    (
        "feature-cache-directory-type",
        lambda d: finetune_tf.FeatureCache(directory=3),
        TypeError,
        r"`FeatureCache\(directory\)`.*directory path.*Received.*3",
    ),
    (
        "feature-cache-directory-file",
        lambda d: compiled().fit(
            X, Y, feature_cache=finetune_tf.FeatureCache(directory=text_file(d))
        ),
        ValueError,
        r"`FeatureCache\(directory\)`.*is a file",
    ),
    (
        "feature-cache-dtype",
        lambda d: finetune_tf.FeatureCache(dtype="int8"),
        ValueError,
        r"`FeatureCache\(dtype\)` must be one of None, 'float16' or 'bfloat16'.*int8",
    ),
    (
        "feature-cache-disk-limit",
        lambda d: finetune_tf.FeatureCache(disk_limit=-1),
        ValueError,
        r"`FeatureCache\(disk_limit\)` must be a whole number >= 0.*disk_limit=-1",
    ),
    ("save-format", lambda d: tuner().save(f"{d}/model.h5"), ValueError, r"`filepath`.*\.keras"),
    (
        "save-missing-directory",
        lambda d: tuner().save(f"{d}/no/dir/m.keras"),
        FileNotFoundError,
        r"`filepath`.*Create",
    ),
    (
        "backbone-sequential-unbuilt",
        lambda d: Backbone.from_model(keras.Sequential([keras.layers.Dense(4)])),
        ValueError,
        r"Sequential model that has not been built.*keras.Input",
    ),
    (
        "backbone-subclassed-unbuilt",
        lambda d: Backbone.from_model(Unbuilt()),
        ValueError,
        r"no defined inputs.*input_shape=",
    ),
    (
        "backbone-input-shape-not-subclassed",
        lambda d: Backbone.from_model(backbone().model, input_shape=(6,)),
        ValueError,
        r"`input_shape` is for subclassed models",
    ),
    (
        "backbone-two-inputs",
        lambda d: Backbone.from_model(two_inputs()),
        ValueError,
        r"2 inputs.*takes one.*Wrap it",
    ),
    (
        "backbone-two-outputs",
        lambda d: Backbone.from_model(two_outputs()),
        ValueError,
        r"2 outputs.*output_layer='hidden'",
    ),
    (
        "grow-regression-head",
        lambda d: regressor(1).add_classes(2),
        ValueError,
        r"widens classification.*no classes.*Head.regressor",
    ),
    (
        "grow-no-class",
        lambda d: tuner().add_classes(0),
        ValueError,
        r"at least one class.*new=0",
    ),
    (
        "grow-duplicate-names",
        lambda d: tuner().add_classes(["cat", "cat"]),
        ValueError,
        r"`FineTuner.add_classes\(new\)` names 'cat' more than once",
    ),
    (
        "grow-name-taken",
        lambda d: tuner(class_names=["a", "b", "c"]).add_classes(["b"]),
        ValueError,
        r"'b', which is already a class",
    ),
    (
        "grow-count-for-named-tuner",
        lambda d: tuner(class_names=["a", "b", "c"]).add_classes(2),
        ValueError,
        r"got a count.*Pass the new classes' names",
    ),
    (
        "class-names-count",
        lambda d: tuner(class_names=["a", "b"]),
        ValueError,
        r"`class_names` has 2 names, but the head has 3 classes",
    ),
    (
        "fit-new-classes-not-grown",
        lambda d: compiled().fit_new_classes(X, Y),
        ValueError,
        r"has not grown.*add_classes",
    ),
    (
        "fit-new-classes-label-range",
        lambda d: grown().fit_new_classes(X, Y + 2),
        ValueError,
        r"`y` with class ids outside 0..3",
    ),
    (
        "fit-new-classes-memory-new-class",
        lambda d: grown().fit_new_classes(X[:2], [3, 3], memory=(X, Y + 1)),
        ValueError,
        r"`memory\[1\]` with class ids outside 0..2",
    ),
    (
        "fit-new-classes-dataset",
        lambda d: grown().fit_new_classes(dataset(X, Y), None),
        TypeError,
        r"takes `x` as an array.*Received: _BatchDataset",
    ),
    (
        "fit-new-classes-sample-weight",
        lambda d: grown().fit_new_classes(X[:2], [3, 3], sample_weight=np.ones(2)),
        ValueError,
        r"weighs the examples itself.*no `sample_weight`",
    ),
    (
        "fit-new-classes-length",
        lambda d: grown().fit_new_classes(X[:5], [3, 3]),
        ValueError,
        r"one label in `y` per example in `x`.*Received: 5 examples and 2 labels",
    ),
    (
        "grow-binary-own-loss",
        lambda d: binary_with_loss().add_classes(1),
        ValueError,
        r"turns this binary head into a softmax.*loss of its own.*loss=\"auto\"",
    ),
    (
        "pretrain-method",
        lambda d: Pretrainer(backbone(), method="mae"),
        ValueError,
        r"`Pretrainer\(method\)`.*'autoencoder'.*method='mae'",
    ),
    (
        "pretrain-noise",
        lambda d: Pretrainer(backbone(), method="masked", noise=1.5),
        ValueError,
        r"`Pretrainer\(noise\)`.*noise=1\.5",
    ),
    (
        "pretrain-labels",
        lambda d: Pretrainer(backbone()).fit(X, Y),
        ValueError,
        r"without labels.*pretrainer\.fit\(x\)",
    ),
    (
        "pretrain-pair",
        lambda d: Pretrainer(backbone()).fit((X, Y)),
        ValueError,
        r"`x` as a pair of arrays.*fit\(x_train\)",
    ),
    (
        "pretrain-decoder-shape",
        lambda d: Pretrainer(backbone(), decoder=keras.layers.Dense(3)),
        ValueError,
        r"`decoder` maps.*\(3,\).*\(6,\)",
    ),
    (
        "pretrain-contrastive-decoder",
        lambda d: Pretrainer(backbone(), method="contrastive", decoder=keras.layers.Dense(6)),
        ValueError,
        r"`decoder`.*method='contrastive'.*projection head.*decoder=None",
    ),
    (
        "pretrain-neighbors-method",
        lambda d: Pretrainer(backbone(), method="denoising", neighbors=5),
        ValueError,
        r"`Pretrainer\(neighbors\)`.*method='contrastive' only.*neighbors=5",
    ),
    (
        "pretrain-neighbors-negative",
        lambda d: Pretrainer(backbone(), method="contrastive", neighbors=-1),
        ValueError,
        r"`Pretrainer\(neighbors\)`.*>= 0.*neighbors=-1",
    ),
    (
        "pretrain-views-type",
        lambda d: Pretrainer(backbone(), method="contrastive", views={"shift": 0.1}),
        TypeError,
        r"`Pretrainer\(views\)`.*TwoViews.*dict",
    ),
    (
        "pretrain-folder-missing",
        lambda d: Pretrainer(backbone()).fit(f"{d}/no_images"),
        FileNotFoundError,
        r"`x`=.*no_images.*not a folder",
    ),
    (
        "export-over-other-directory",
        lambda d: tuner().export(d),
        ValueError,
        r"`path`.*not a SavedModel directory",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_at_the_door(case, tmp_path):
    if case[0].startswith("preset-"):
        pytest.importorskip("keras_hub")  # the keras-hub extra (not in the version matrix)
    _, call, exception, words = case
    with pytest.raises(exception) as info:
        call(str(tmp_path))
    assert type(info.value) is exception  # the builtin type itself, not a subclass
    assert re.search(words, str(info.value), re.S), str(info.value)


def test_the_docs_table_lists_every_case():
    with open(DOCS) as f:
        docs = f.read()
    documented = set(re.findall(r"^\| `([a-z0-9-]+)` \|", docs, re.M))
    assert documented == {c[0] for c in CASES}
    assert len(documented) >= 30
