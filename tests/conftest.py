"""Shared fixtures: small models built in memory, never downloaded."""

import json
import os
import select
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def small_cnn(input_shape=(8, 8, 3), name="small_cnn") -> keras.Model:
    """A tiny Keras 3 CNN with BatchNorm: conv1, bn1, relu1, conv2, bn2, features."""
    inputs = keras.Input(input_shape, name="pixels")
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="features")(x)
    return keras.Model(inputs, x, name=name)


def tf_keras_cnn(input_shape=(8, 8, 3)):
    """The same kind of network built with tf_keras (Keras 2), as old pretrained files were."""
    import tf_keras

    inputs = tf_keras.Input(input_shape)
    x = tf_keras.layers.Conv2D(
        4, 3, name="conv1", kernel_regularizer=tf_keras.regularizers.l2(0.01)
    )(inputs)
    x = tf_keras.layers.BatchNormalization(name="bn1")(x)
    x = tf_keras.layers.ReLU(name="relu1")(x)
    x = tf_keras.layers.Dropout(0.5, name="dropout")(x)
    x = tf_keras.layers.Conv2D(6, 3, name="conv2")(x)
    x = tf_keras.layers.GlobalAveragePooling2D(name="features")(x)
    return tf_keras.Model(inputs, x, name="k2cnn")


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.random((24, 8, 8, 3), dtype=np.float32)


@pytest.fixture
def labels():
    return np.arange(24) % 3


@pytest.fixture(scope="session")
def keras2_files(tmp_path_factory):
    """A Keras 2 (tf_keras) model saved as .h5 and as a TF SavedModel directory."""
    import tensorflow as tf

    directory = tmp_path_factory.mktemp("keras2")
    model = tf_keras_cnn()
    h5_path = str(directory / "keras2.h5")
    model.save(h5_path)
    saved_model_dir = str(directory / "saved_model")
    tf.saved_model.save(model, saved_model_dir)
    return {"h5": h5_path, "saved_model": saved_model_dir, "model": model}


def weights_of(model):
    return [w.numpy().copy() for w in model.weights]


LOAD_SERVER = textwrap.dedent(
    f"""
    import json, os, sys
    sys.path.insert(0, {os.path.join(os.path.dirname(__file__), "system", "workers")!r})
    import numpy as np, keras
    import finetune_tf  # registers the layers; nothing else is needed
    from forking import run_forked

    def load(env, path, x_path, out_path):
        os.environ.clear()
        os.environ.update(env)  # the test's environment at this load
        model = keras.models.load_model(path)
        np.save(out_path, model.predict(np.load(x_path), verbose=0))

    for line in sys.stdin:  # one load a line: [environment, model, x.npy, out.npy, log]
        env, path, x_path, out_path, log_path = json.loads(line)
        # A child that has only imported: a fresh process for this one load.
        code = run_forked(log_path, lambda: load(env, path, x_path, out_path))
        print(json.dumps(code), flush=True)
    """
)


class FreshProcesses:
    """Loads a model file in a fresh process and predicts with it there.

    One Python imports numpy, keras and finetune_tf, then forks a child for every load:
    the child has run nothing but those imports (what a new `python -c` would have done
    before loading), and the seconds of importing TensorFlow are paid once a session.
    """

    TIMEOUT = 300

    def __init__(self):
        self.process = None

    def load_and_predict(self, path, x, tmp_path):
        x_path, out_path = str(tmp_path / "x.npy"), str(tmp_path / "out.npy")
        log_path = str(tmp_path / "load.log")
        np.save(x_path, x)
        if self.process is None:
            self.process = subprocess.Popen(
                [sys.executable, "-c", LOAD_SERVER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
            )
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        self.process.stdin.write(json.dumps([env, path, x_path, out_path, log_path]) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], self.TIMEOUT)
        assert ready, f"no answer in {self.TIMEOUT} s"
        line = self.process.stdout.readline()
        assert line, "the loading process died"
        with open(log_path) as log:
            assert json.loads(line) == 0, log.read()[-3000:]
        return np.load(out_path)

    def close(self):
        if self.process is not None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=self.TIMEOUT)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()


@pytest.fixture(scope="session")
def load_and_predict_elsewhere():
    """`load_and_predict_elsewhere(path, x, tmp_path)`: the predictions of the model file
    at `path` for `x`, loaded with `keras.models.load_model` after `import finetune_tf`
    in a fresh process."""
    processes = FreshProcesses()
    yield processes.load_and_predict
    processes.close()


def save_text_encoder(path):
    """A string-input text encoder with a vocabulary table, exported as Hub text models were:
    a tf_keras model returning a dict (`pooled_output`, `sequence_output`), saved with
    tf.saved_model.save."""
    import tensorflow as tf
    import tf_keras

    tf_keras.backend.clear_session()  # the same scope names however many were built before
    vocab = ["good", "bad", "great", "awful", "movie", "film"]

    class TextEncoder(tf_keras.Model):
        def __init__(self):
            super().__init__()
            self.table = tf.lookup.StaticHashTable(
                tf.lookup.KeyValueTensorInitializer(
                    vocab, tf.range(1, len(vocab) + 1, dtype=tf.int64)
                ),
                0,
            )
            self.embed = tf_keras.layers.Embedding(len(vocab) + 1, 8, name="embedding")
            self.dense = tf_keras.layers.Dense(4, activation="tanh", name="encoder_dense")

        def call(self, inputs, training=False):
            ids = self.table.lookup(tf.strings.split(tf.strings.lower(inputs)))
            embedded = self.embed(ids)
            return {
                "pooled_output": self.dense(tf.reduce_mean(embedded, axis=1)),
                "sequence_output": embedded.to_tensor(),
            }

    tf_keras.utils.set_random_seed(0)
    model = TextEncoder()
    model(tf.constant(["good movie"]))
    serve = tf.function(lambda x: model(x), input_signature=[tf.TensorSpec([None], tf.string)])
    tf.saved_model.save(model, path, signatures={"serving_default": serve})
    return path


def assert_round_trips(obj):
    """`obj.get_config()` is plain JSON, and `from_config` (and, for Keras objects, Keras'
    own serialization) gives back an object with the same config. Returns the copy."""
    import json

    def as_json(config):  # tuples become lists, as in a file
        return json.loads(json.dumps(config))

    config = as_json(obj.get_config())  # a TypeError for what a file cannot hold
    again = type(obj).from_config(config)
    assert as_json(again.get_config()) == config, type(obj).__name__
    is_keras = isinstance(
        obj,
        (
            keras.layers.Layer,
            keras.losses.Loss,
            keras.metrics.Metric,
            keras.optimizers.Optimizer,
            keras.optimizers.schedules.LearningRateSchedule,
        ),
    )
    if is_keras:
        revived = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(revived) is type(obj)
        assert as_json(revived.get_config()) == config
    return again


# The xdist workers get whole files (--dist loadfile) in collection order
# (--no-loadscope-reorder); these files take longest, so they go first, longest first,
# and the many short files fill in at the end, where a long one would leave the other
# worker idle. Only the order changes: every file still runs, each test the same way.
LONGEST_FILES_FIRST = (
    "test_estimators.py",
    "system/test_examples.py",
    "system/test_notebook.py",
    "outputs/test_saving.py",
    "sources/test_hub_reference.py",
    "training/test_checkpoint.py",
    "system/test_long_sessions.py",
    "system/test_crash.py",
    "system/test_distribute.py",
    "training/test_schedule.py",
    "contracts/test_properties.py",
)


def pytest_collection_modifyitems(config, items):
    tests = os.path.dirname(os.path.abspath(__file__))

    def rank(item):
        path = os.path.relpath(str(item.path), tests).replace(os.sep, "/")
        if path in LONGEST_FILES_FIRST:
            return LONGEST_FILES_FIRST.index(path)
        return len(LONGEST_FILES_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the other files, as collected
