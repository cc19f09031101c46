"""Untrusted model files: nothing in a file runs code on load unless the user trusts it.

Each file carries a payload that would create a marker file; the load must be refused
with a clear error, and the marker must never appear. A control load with
safe_mode=False shows each payload is real.
"""

import glob
import hashlib
import json
import os
import shutil
import sys
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import save_text_encoder

import finetune_tf
from finetune_tf import Backbone, FineTuner, Head, HubLayer
from finetune_tf.sources import trust
from finetune_tf.sources.savedmodel_trust import unsafe_ops


def lambda_model(marker):
    """Dense "switch" then a Lambda whose marshalled bytecode writes `marker`."""
    payload = eval(f"lambda x: (open({marker!r}, 'w').close(), x)[1]")
    inputs = keras.Input((3,))
    x = keras.layers.Dense(3, name="switch")(inputs)
    return keras.Model(inputs, keras.layers.Lambda(payload, name="evil")(x))


def rewrite_config(path, edit):
    """Rewrites config.json inside a .keras archive with `edit(config)`."""
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    config = json.loads(members["config.json"])
    edit(config)
    members["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def layer_config(config, name):
    return next(layer for layer in config["config"]["layers"] if layer["name"] == name)


def switch_off_safe_mode(config):
    """CVE-2025-1550/9906 style: a layer whose activation 'function' disables safe mode
    while the model is being deserialized, so that the Lambda after it loads."""
    layer_config(config, "switch")["config"]["activation"] = {
        "module": "keras.config",
        "class_name": "function",
        "config": "enable_unsafe_deserialization",
        "registered_name": "enable_unsafe_deserialization",
    }


def import_os_system(config):
    layer_config(config, "switch")["config"]["activation"] = {
        "module": "os",
        "class_name": "system",
        "config": {"command": "touch pwned"},
        "registered_name": None,
    }


@pytest.mark.parametrize(
    "edit, message",
    [
        (switch_off_safe_mode, r"function keras\.config\.enable_unsafe_deserialization"),
        (import_os_system, r"object os\.system"),
    ],
)
def test_a_config_that_reaches_outside_keras_is_refused(edit, message, tmp_path):
    marker = str(tmp_path / "pwned")
    path = str(tmp_path / "evil.keras")
    lambda_model(marker).save(path)
    os.remove(marker)  # building the model ran the lambda once
    plain = str(tmp_path / "plain.keras")
    shutil.copy(path, plain)
    rewrite_config(path, edit)
    for load in (finetune_tf.load_model, Backbone.from_file):
        with pytest.raises(ValueError, match=message + r".*could run code.*safe_mode=False"):
            load(path)
    assert not os.path.exists(marker)
    # Control: the Lambda that the edit tries to unlock is a real payload once trusted.
    # (Keras 3.15 refuses enable_unsafe_deserialization by a deny-list of its own; ours is
    # an allow-list checked before Keras runs, so variants it misses are refused too.)
    finetune_tf.load_model(plain, safe_mode=False)(np.ones((1, 3)))
    assert os.path.exists(marker)


def test_a_damaged_or_foreign_keras_file_is_a_clear_error(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"not a Keras archive.*damaged"):
        finetune_tf.load_model(path)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("readme.txt", "no config here")
    with pytest.raises(ValueError, match=r"not a Keras archive.*config\.json"):
        finetune_tf.load_model(path)


class WritesAFile(tf.Module):
    """A SavedModel whose graph writes a file whenever it is called: no Python, just ops."""

    def __init__(self, marker):
        super().__init__()
        self.marker = marker
        self.w = tf.Variable(tf.ones((3, 4)))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def __call__(self, x):
        tf.io.write_file(self.marker, "pwned")
        return tf.matmul(x, self.w)


def test_a_model_file_pointing_at_a_file_writing_saved_model_is_refused(tmp_path):
    marker = str(tmp_path / "pwned")
    saved_model = str(tmp_path / "innocent_looking_savedmodel")
    tf.saved_model.save(WritesAFile(marker), saved_model)
    assert unsafe_ops(saved_model) == ["WriteFile"]
    # The user chose this SavedModel when building, so that is allowed...
    tuner = FineTuner(Backbone.from_hub(saved_model), Head.regressor())
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    if os.path.exists(marker):
        os.remove(marker)
    # ...but a model file that names it is refused in safe mode, by both loaders.
    message = r"innocent_looking_savedmodel.*write files or run Python.*WriteFile.*safe_mode=False"
    with pytest.raises(ValueError, match=message):
        finetune_tf.load_model(path)
    with pytest.raises(ValueError, match=message):
        keras.models.load_model(path)
    assert not os.path.exists(marker)
    # Control: trusted explicitly, it loads and its graph does write the file.
    restored = finetune_tf.load_model(path, safe_mode=False)
    restored(np.ones((1, 3), "float32"))
    assert os.path.exists(marker)


def test_a_clean_saved_model_backbone_still_loads_in_safe_mode(tmp_path):
    saved_model = str(tmp_path / "clean")
    tf.saved_model.save(Scale(), saved_model)  # one matmul (defined below)
    assert unsafe_ops(saved_model) == []
    tuner = FineTuner(Backbone.from_hub(saved_model), Head.regressor())
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(
        keras.models.load_model(path).predict(x, verbose=0), tuner.predict(x, verbose=0)
    )


@keras.saving.register_keras_serializable(package="trust_tests")
class Doubler(keras.layers.Layer):
    """A layer class the user's own code registered."""

    def call(self, x):
        return x * 2.0


def registered_layer_file(tmp_path):
    inputs = keras.Input((3,))
    path = str(tmp_path / "registered.keras")
    keras.Model(inputs, Doubler(name="doubler")(keras.layers.Dense(3, name="switch")(inputs))).save(
        path
    )
    return path


def test_a_layer_class_the_user_registered_loads_in_safe_mode(tmp_path):
    path = registered_layer_file(tmp_path)
    model = finetune_tf.load_model(path)
    assert isinstance(model.get_layer("doubler"), Doubler)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("module", "os", r"object os\.Doubler"),  # a registered name with another module
        ("class_name", "system", r"object .*\.system"),  # ... or another class
    ],
)
def test_a_registered_name_does_not_vouch_for_another_object(field, value, message, tmp_path):
    path = registered_layer_file(tmp_path)
    rewrite_config(path, lambda config: layer_config(config, "doubler").update({field: value}))
    with pytest.raises(ValueError, match=message + r".*could run code"):
        finetune_tf.load_model(path)


def test_a_lambda_inside_a_registered_layer_is_still_refused(tmp_path):
    path = registered_layer_file(tmp_path)

    def nest_lambda(config):
        layer_config(config, "doubler")["config"]["activation"] = {
            "class_name": "Lambda",
            "config": {"name": "evil"},
        }

    rewrite_config(path, nest_lambda)
    with pytest.raises(ValueError, match=r"Lambda layer 'evil'"):
        finetune_tf.load_model(path)


# --- Issue 17: SavedModel graphs on an allow-list of ops that compute --------------------


def tuned_file_naming(saved_model, tmp_path, markers):
    """A saved FineTuner whose backbone is the SavedModel at `saved_model` (the user chose
    it when building, so that is allowed); whatever building wrote is removed."""
    tuner = FineTuner(Backbone.from_hub(saved_model), Head.regressor())
    path = str(tmp_path / "tuned.keras")
    tuner.save(path)
    remove_markers(markers)
    return path


def remove_markers(markers):
    for marker in markers():
        if os.path.isdir(marker):
            shutil.rmtree(marker)
        else:
            os.remove(marker)


class Writer(tf.Module):
    """A SavedModel whose graph writes files through `write(self.marker, x)` when called."""

    def __init__(self, marker, write):
        super().__init__()
        self.marker, self.write = marker, write
        self.w = tf.Variable(tf.ones((3, 4)))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def __call__(self, x):
        with tf.control_dependencies([self.write(self.marker, x)]):
            return tf.matmul(x, self.w)


def legacy_save(marker, x):
    return tf.raw_ops.Save(filename=marker, tensor_names=["x"], data=[x])


def dataset_to_tfrecord(marker, x):
    records = tf.data.Dataset.from_tensors(tf.strings.as_string(tf.reduce_sum(x)))
    return tf.data.experimental.TFRecordWriter(marker).write(records)


def dataset_cache(marker, x):
    cached = tf.data.Dataset.from_tensors(x).cache(marker)
    return cached.reduce(0.0, lambda total, batch: total + tf.reduce_sum(batch))


@pytest.mark.parametrize(
    "write, op",
    [
        (legacy_save, "Save"),
        (dataset_to_tfrecord, "DatasetToTFRecord"),
        (dataset_cache, "CacheDatasetV2"),
    ],
)
def test_a_saved_model_that_writes_files_when_called_is_refused(write, op, tmp_path):
    marker = str(tmp_path / "pwned")
    markers = lambda: glob.glob(marker + "*")  # noqa: E731 - the cache writes marker.index, ...
    saved_model = str(tmp_path / "innocent_looking_savedmodel")
    tf.saved_model.save(Writer(marker, write), saved_model)
    assert op in unsafe_ops(saved_model)
    path = tuned_file_naming(saved_model, tmp_path, markers)
    message = rf"`handle`=.*innocent_looking_savedmodel.*{op}.*ALLOWED_OPS.*safe_mode=False"
    for load in (finetune_tf.load_model, keras.models.load_model):
        with pytest.raises(ValueError, match=message):
            load(path)
    assert not markers()
    # Control: trusted explicitly, it loads and its graph does write.
    finetune_tf.load_model(path, safe_mode=False).predict(np.ones((1, 3), "float32"), verbose=0)
    assert markers()


class WritesWhenLoaded(tf.saved_model.experimental.TrackableResource):
    """A resource whose initializer, run by tf.saved_model.load itself, writes a file."""

    def __init__(self, marker):
        self.marker = marker
        super().__init__()

    def _create_resource(self):
        return tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64)

    def _initialize(self):
        return tf.raw_ops.Save(filename=self.marker, tensor_names=["x"], data=[1.0])


class Scale(tf.Module):
    """A clean SavedModel: one matmul."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(tf.ones((3, 4)))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def __call__(self, x):
        return tf.matmul(x, self.w)


class CleanWithWritingResource(tf.Module):
    def __init__(self, marker):
        super().__init__()
        self.resource = WritesWhenLoaded(marker)
        self.w = tf.Variable(tf.ones((3, 4)))

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def __call__(self, x):
        return tf.matmul(x, self.w)


def test_a_saved_model_that_writes_files_while_loading_is_refused_before_it_loads(tmp_path):
    marker = str(tmp_path / "pwned")
    markers = lambda: glob.glob(marker + "*")  # noqa: E731
    saved_model = str(tmp_path / "loads_and_writes")
    tf.saved_model.save(CleanWithWritingResource(marker), saved_model)
    assert unsafe_ops(saved_model) == ["Save"]  # found in the initializer function
    path = tuned_file_naming(saved_model, tmp_path, markers)
    with pytest.raises(ValueError, match=r"loads_and_writes.*Save.*safe_mode=False"):
        finetune_tf.load_model(path)
    assert not markers()  # refused before tf.saved_model.load ran the initializer
    # Control: the write happens during load_model itself, before any predict.
    finetune_tf.load_model(path, safe_mode=False)
    assert markers()


def printing_module(stream):
    class Prints(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            tf.print(x, output_stream=stream)
            return x

    return Prints()


def test_print_to_a_file_is_refused_and_to_stderr_allowed(tmp_path):
    for stream, found in [("file://" + str(tmp_path / "log"), True), (sys.stderr, False)]:
        path = str(tmp_path / f"prints_{found}")
        tf.saved_model.save(printing_module(stream), path)
        assert bool(unsafe_ops(path)) is found, unsafe_ops(path)


def test_a_checkpoint_function_exposed_as_a_method_is_refused(tmp_path):
    """The save function may hold SaveV2 (with a path of the file's choosing, as a
    constant); bound by the object graph to `__call__`, every call would write. A file
    edited that way is refused; the file as TensorFlow wrote it is not."""
    from tensorflow.core.protobuf import saved_model_pb2

    class Scaled(tf.Module):
        def __init__(self):
            super().__init__()
            self.v = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return x * self.v

    path = str(tmp_path / "scaled")
    tf.saved_model.save(Scaled(), path)
    assert unsafe_ops(path) == []
    pb = os.path.join(path, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        saved.ParseFromString(f.read())
    graph = saved.meta_graphs[0]
    save_fn = next(
        fn.signature.name
        for fn in graph.graph_def.library.function
        if "traced_save" in fn.signature.name
    )
    for node in graph.object_graph_def.nodes:
        if node.WhichOneof("kind") == "bare_concrete_function":
            node.bare_concrete_function.concrete_function_name = save_fn
    with open(pb, "wb") as f:
        f.write(saved.SerializeToString())
    assert unsafe_ops(path) == [f"the checkpoint function {save_fn} exposed as a callable"]


class Vocabulary(tf.Module):
    """A table read from a vocabulary file, as Hub text models hold one (an asset)."""

    def __init__(self, vocab_file):
        super().__init__()
        init = tf.lookup.TextFileInitializer(
            vocab_file,
            tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE,
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
        )
        self.table = tf.lookup.StaticHashTable(init, -1)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def __call__(self, words):
        return self.table.lookup(words)


def test_a_table_may_read_its_own_assets_only(tmp_path):
    """A vocabulary file among the SavedModel's assets is read; the same table bound to a
    file name that is not an asset (any path the file chose: ~/.ssh/id_rsa read into a
    table whose lookups reveal it) is refused."""
    from tensorflow.core.protobuf import saved_model_pb2

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\nc\n")
    path = str(tmp_path / "vocabulary")
    tf.saved_model.save(Vocabulary(str(vocab)), path)
    assert unsafe_ops(path) == []
    pb = os.path.join(path, "saved_model.pb")
    saved = saved_model_pb2.SavedModel()
    with open(pb, "rb") as f:
        saved.ParseFromString(f.read())
    objects = saved.meta_graphs[0].object_graph_def
    kinds = [node.WhichOneof("kind") for node in objects.nodes]
    not_an_asset = kinds.index("constant")
    for function in objects.concrete_functions.values():
        for i, node_id in enumerate(function.bound_inputs):
            if kinds[node_id] == "asset":
                function.bound_inputs[i] = not_an_asset
    with open(pb, "wb") as f:
        f.write(saved.SerializeToString())
    assert unsafe_ops(path) == [
        "InitializeTableFromTextFileV2 reading a file that is not one of the SavedModel's assets"
    ]


class HubStyle(tf.Module):
    """What tfhub.dev modules hold: `training`, BatchNorm-like state, dropout, einsum, gelu,
    a vocabulary file read into a table, regularization losses."""

    def __init__(self, vocab_file):
        super().__init__()
        self.w = tf.Variable(tf.ones((3, 4)))
        self.mean = tf.Variable(tf.zeros(4), trainable=False)
        self.vocab = tf.saved_model.Asset(vocab_file)
        self.table = tf.lookup.StaticVocabularyTable(
            tf.lookup.TextFileInitializer(
                vocab_file,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            1,
        )
        self.regularization_losses = [
            tf.function(lambda: 0.01 * tf.reduce_sum(self.w**2), input_signature=[])
        ]

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32), tf.TensorSpec([], tf.bool)])
    def __call__(self, x, training=False):
        y = tf.einsum("bi,ij->bj", x, self.w)
        if training:
            self.mean.assign(0.9 * self.mean + 0.1 * tf.reduce_mean(y, 0))
            y = tf.nn.dropout(y, 0.1)
        else:
            y = y - self.mean
        return tf.nn.softmax(tf.math.erf(y) + tf.nn.gelu(y))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def tokenize(self, s):
        words = tf.strings.split(tf.strings.regex_replace(tf.strings.lower(s), "[^a-z ]", ""))
        return self.table.lookup(words).to_tensor()


def test_real_models_hold_only_allowed_ops(tmp_path, keras2_files):
    """The allow-list was derived from real exported models; these must keep passing it."""
    layers = keras.layers
    exported = {}

    def keras3(name, build, shape, dtype="float32"):
        inputs = keras.Input(shape, dtype=dtype)
        model = keras.Model(inputs, build(inputs))
        exported[name] = str(tmp_path / name)
        model.export(exported[name], verbose=False)

    keras3(
        "dense_bn_dropout",
        lambda x: layers.Dense(3)(layers.Dropout(0.2)(layers.BatchNormalization()(x))),
        (5,),
    )
    keras3("conv", lambda x: layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(x)), (8, 8, 3))
    recurrent = [layers.Embedding(20, 8), layers.LSTM(4, return_sequences=True), layers.GRU(4)]
    keras3("rnn", lambda x: recurrent[2](recurrent[1](recurrent[0](x))), (7,))
    lookup = layers.StringLookup(vocabulary=["a", "b", "c"])
    keras3("string_lookup", lambda x: layers.Embedding(5, 3)(lookup(x)), (4,), "string")
    exported["tf_keras_cnn"] = keras2_files["saved_model"]
    exported["text_encoder"] = save_text_encoder(str(tmp_path / "text_encoder"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\nc\n")
    module = HubStyle(str(vocab))
    exported["hub_style"] = str(tmp_path / "hub_style")
    tf.saved_model.save(
        module,
        exported["hub_style"],
        signatures={"serving_default": module.__call__.get_concrete_function()},
    )
    assert {name: unsafe_ops(path) for name, path in exported.items()} == {
        name: [] for name in exported
    }
    assert HubLayer(exported["hub_style"])(np.ones((2, 3), "float32")).shape == (2, 4)


# --- Issue 17: a safe load never touches the network -------------------------------------


@pytest.fixture
def hub_server(tmp_path):
    """A loopback HTTP server serving a SavedModel as .tar.gz; records every request."""
    import http.server
    import tarfile
    import threading

    saved_model = str(tmp_path / "served")
    tf.saved_model.save(Scale(), saved_model)
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(saved_model, arcname=".")
    requests = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            requests.append(self.path)
            data = archive.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/model.tar.gz"
    yield {"url": url, "requests": requests, "saved_model": saved_model}
    server.shutdown()
    server.server_close()


def set_handle(config, handle):
    """Points every HubLayer in a model config at `handle`."""
    stack = [config]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            if value.get("class_name") == "HubLayer":
                value["config"]["handle"] = handle
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)


def test_a_safe_load_never_downloads_a_handle(hub_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "tfhub_cache"))
    url = hub_server["url"]
    path = str(tmp_path / "tuned.keras")
    FineTuner(Backbone.from_hub(hub_server["saved_model"]), Head.regressor()).save(path)
    rewrite_config(path, lambda config: set_handle(config, url))
    message = rf"download `handle`='{url}'.*not in tensorflow_hub's cache.*safe_mode=False"
    for load in (finetune_tf.load_model, keras.models.load_model, FineTuner.load):
        with pytest.raises(ValueError, match=message):
            load(path)
    assert hub_server["requests"] == []
    assert not os.path.exists(tmp_path / "tfhub_cache" / hashlib.sha1(url.encode()).hexdigest())
    # Control: trusted, the same file downloads the handle (so the refusal was real)...
    x = np.ones((2, 3), "float32")
    expected = finetune_tf.load_model(path, safe_mode=False).predict(x, verbose=0)
    assert hub_server["requests"]
    # ... and once it is in the cache, a safe load serves it from there, offline.
    hub_server["requests"].clear()
    np.testing.assert_allclose(finetune_tf.load_model(path).predict(x, verbose=0), expected)
    assert hub_server["requests"] == []


# --- Issue 17: a config may name only modelling objects ----------------------------------


def function(module, name, registered_name=None):
    return {
        "module": module,
        "class_name": "function",
        "config": name,
        "registered_name": name if registered_name is None else registered_name,
    }


BYPASSES = {
    "keras.config.set_epsilon": function("keras.config", "set_epsilon"),
    "keras.src path": function("keras.src.backend.config", "set_epsilon"),
    "keras.utils.get_file": function("keras.utils", "get_file"),
    "keras.saving.load_model": function("keras.saving", "load_model"),
    "builtins eval": function("builtins", "eval"),
    "builtins exec": function("builtins", "exec"),
    "builtins getattr": function("builtins", "getattr"),
    "builtins get (keras.activations.get)": function("builtins", "get"),
    "keras.activations.deserialize": function("keras.activations", "deserialize"),
    "a function named as a class": {
        "module": "keras.config",
        "class_name": "set_epsilon",
        "config": {"value": 0.5},
        "registered_name": None,
    },
    "a non-modelling class": {
        "module": "keras.src.utils.progbar",
        "class_name": "Progbar",
        "config": {"target": 1},
        "registered_name": None,
    },
    "a Python lambda": {"class_name": "__lambda__", "config": {"code": "", "defaults": None}},
}


def nested_model_file(tmp_path):
    """A functional model holding a Sequential (layer 'inner_dense' inside), compiled with
    function losses and metrics: everything a safe load must still accept."""
    inner = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(3, name="inner_dense")], name="inner"
    )
    inputs = keras.Input((3,))
    x = keras.layers.Dense(3, activation=keras.activations.gelu, name="switch")(inputs)
    model = keras.Model(inputs, inner(x))
    model.compile(loss=keras.losses.mean_squared_error, metrics=[keras.metrics.mean_absolute_error])
    path = str(tmp_path / "nested.keras")
    model.save(path)
    return path


def put_in_nested_activation(entry):
    def edit(config):
        inner = layer_config(config, "inner")
        inner["config"]["layers"][-1]["config"]["activation"] = entry

    return edit


def put_in_loss(entry):
    def edit(config):
        config["compile_config"]["loss"] = entry

    return edit


@pytest.mark.parametrize("where", [put_in_nested_activation, put_in_loss])
@pytest.mark.parametrize("bypass", list(BYPASSES), ids=list(BYPASSES))
def test_a_config_naming_anything_but_a_modelling_object_is_refused(bypass, where, tmp_path):
    path = nested_model_file(tmp_path)
    assert finetune_tf.load_model(path).predict(np.ones((1, 3)), verbose=0).shape == (1, 3)
    rewrite_config(path, where(BYPASSES[bypass]))
    epsilon = keras.config.epsilon()
    with pytest.raises(ValueError, match=r"`filepath`=.*could run code.*safe_mode=False"):
        finetune_tf.load_model(path)
    assert keras.config.epsilon() == epsilon


# --- Issue 17: bounded reads ---------------------------------------------------------------


def handmade_archive(path, config_bytes):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": keras.version()}))
        archive.writestr("config.json", config_bytes)


def test_a_config_that_inflates_past_the_limit_is_refused_unread(tmp_path):
    path = str(tmp_path / "bomb.keras")
    padding = b" " * (trust.MAX_CONFIG_BYTES + 1)
    handmade_archive(path, b'{"class_name": "Functional", "config": {}}' + padding)
    del padding
    assert os.path.getsize(path) < 2**20  # a small file...
    with pytest.raises(ValueError, match=r"`filepath`=.*config\.json.*MAX_CONFIG_BYTES"):
        finetune_tf.load_model(path)  # ... refused from its zip header, before inflating


@pytest.mark.parametrize("depth", [3000, trust.MAX_CONFIG_DEPTH + 10])
def test_a_config_nested_too_deep_is_a_value_error(depth, tmp_path):
    path = str(tmp_path / "deep.keras")
    handmade_archive(path, ('{"a": ' * depth + "1" + "}" * depth).encode())
    with pytest.raises(ValueError, match=r"`filepath`=.*nested.*deep"):
        finetune_tf.load_model(path)


def test_an_h5_config_too_big_or_too_deep_is_a_value_error(tmp_path, monkeypatch):
    import h5py

    deep = str(tmp_path / "deep.h5")
    with h5py.File(deep, "w") as f:
        f.attrs["model_config"] = "[" * 3000 + "]" * 3000
    with pytest.raises(ValueError, match=r"`filepath`=.*nested.*deep"):
        finetune_tf.load_model(deep)
    big = str(tmp_path / "big.h5")
    with h5py.File(big, "w") as f:
        f.attrs["model_config"] = np.bytes_(b"[" + b" " * 4096 + b"]")  # fixed-size
    monkeypatch.setattr(trust, "MAX_CONFIG_BYTES", 1024)
    with pytest.raises(ValueError, match=r"`filepath`=.*model_config.*MAX_CONFIG_BYTES"):
        finetune_tf.load_model(big)


def test_a_file_saved_with_the_0_2_module_paths_loads_in_safe_mode(tmp_path):
    """0.2 wrote `"module": "finetune_tf.backbone"` etc.; the classes moved, the files stay."""
    inputs = keras.Input((4,))
    backbone = Backbone.from_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)))
    tuner = FineTuner(backbone, Head.classifier(3))
    tuner.compile()
    path = str(tmp_path / "tuned_0_2.keras")
    tuner.save(path)
    old = {
        "finetune_tf.model.layers": "finetune_tf.backbone",
        "finetune_tf.model.tuned_model": "finetune_tf.tuned_model",
        "finetune_tf.model.head.losses": "finetune_tf.losses",
        "finetune_tf.model.head.metrics": "finetune_tf.metrics",
    }
    renamed = []

    def to_0_2(node):
        if isinstance(node, dict):
            if node.get("module") in old:
                node["module"] = old[node["module"]]
                renamed.append(node["class_name"])
            for value in node.values():
                to_0_2(value)
        elif isinstance(node, list):
            for value in node:
                to_0_2(value)

    rewrite_config(path, to_0_2)
    assert {"BackboneLayer", "TunedModel"} <= set(renamed)
    x = np.ones((2, 4), "float32")
    restored = finetune_tf.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), tuner.predict(x, verbose=0))
    # Only finetune_tf's own moved modules: a foreign module is still refused.
    assert (
        trust._class_problem(
            {
                "module": "finetune_tf.backbone",
                "class_name": "BackboneLayer",
                "registered_name": "finetune_tf>BackboneLayer",
            }
        )
        is None
    )
    assert trust._class_problem(
        {
            "module": "evil.backbone",
            "class_name": "BackboneLayer",
            "registered_name": "finetune_tf>BackboneLayer",
        }
    )


def test_a_backbone_the_user_chose_is_copied_whatever_its_graph_holds(tmp_path):
    """Copies (strategies, mixed precision, every scikit-learn fit) are not loads of a file."""
    marker = str(tmp_path / "written")
    saved_model = str(tmp_path / "writes")
    tf.saved_model.save(WritesAFile(marker), saved_model)
    backbone = Backbone.from_hub(saved_model)
    twin = backbone.copy()
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(twin.model(x), backbone.model(x))


def test_a_saved_model_using_tf_roll_is_allowed(tmp_path):
    class Rolls(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
        def __call__(self, x):
            return tf.roll(x, shift=1, axis=1)

    path = str(tmp_path / "rolls")
    tf.saved_model.save(Rolls(), path)
    assert unsafe_ops(path) == []
