"""Could this file run code? The config checks finetune_tf makes before loading one.

A model config (in a `.keras` archive or an `.h5` file) is allowed in safe mode only
when every object it names is, by what it is, part of a model: a class that is a Keras
layer, model, operation, initializer, regularizer, constraint, loss, metric, optimizer,
learning-rate schedule or dtype policy, and a function that is one of Keras'
activations, losses or metrics. Lambda layers (marshalled Python bytecode), Python
lambdas and anything else (`keras.config.set_epsilon`, `eval`, `os.system`) are refused.
The config is read with a size and a depth limit. Keras' legacy `.h5` loader ignores
`safe_mode` (CVE-2025-9905), so `.h5` files are only safe through these checks.

A SavedModel runs no Python, but its graph runs whatever ops it holds: its ops are
checked against `ALLOWED_OPS` (ops that compute, re-exported here from
`sources.allowed_ops`) by `sources.savedmodel_trust.unsafe_ops`.
"""

from __future__ import annotations

import importlib
import inspect
import json
import sys
import zipfile

import keras

from finetune_tf.sources.allowed_ops import ALLOWED_OPS
from finetune_tf.sources.keras2_h5 import keras2_fix

__all__ = [
    "ALLOWED_OPS",  # the name error messages and docs/robustness.md give the allow-list
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "check_h5_file",
    "check_keras_archive",
]

# A model's config.json is a few KiB to a few MiB; more than this is refused unread.
MAX_CONFIG_BYTES = 64 * 2**20
# How deeply a config may nest (a model ten levels deep nests about 100 levels).
MAX_CONFIG_DEPTH = 256

# What a class named in a config must be (its code is Keras', a library's registered with
# Keras, or the user's own, already imported; the file only gives it arguments).
_MODELLING_BASES = (
    keras.layers.Layer,
    keras.losses.Loss,
    keras.metrics.Metric,
    keras.initializers.Initializer,
    keras.regularizers.Regularizer,
    keras.constraints.Constraint,
    keras.optimizers.Optimizer,
    keras.optimizers.schedules.LearningRateSchedule,
    keras.DTypePolicy,
)
# Keras' own tensor operations (`keras.ops.add` in a functional model is a
# `keras.src.ops.numpy.Add`); Layer derives from it too.
try:
    from keras.src.ops.operation import Operation as _OPERATION
except ImportError:  # pragma: no cover - every supported Keras has it
    _OPERATION = keras.layers.Layer
# Where Keras looks up a function saved under module "builtins" (its serialization_lib).
_FUNCTION_KINDS = ("activations", "losses", "metrics")
_BUILTIN_KINDS = (
    "activations",
    "constraints",
    "initializers",
    "losses",
    "metrics",
    "optimizers",
    "regularizers",
)
# Values Keras rebuilds as data, not as objects that run.
_DATA_CLASS_NAMES = frozenset(
    {
        "__keras_tensor__",
        "__tensor__",
        "__numpy__",
        "__bytes__",
        "__ellipsis__",
        "__slice__",
        "__typespec__",
    }
)
# Packages whose modules Keras itself imports to find a class.
_KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")


def _modelling_functions() -> set:
    """The functions of `keras.activations`, `keras.losses` and `keras.metrics` (their
    lookup helpers `get`, `serialize` and `deserialize` excepted)."""
    found = set()
    for kind in _FUNCTION_KINDS:
        module = getattr(keras, kind)
        for name in dir(module):
            obj = getattr(module, name)
            if inspect.isfunction(obj) and name not in ("get", "serialize", "deserialize"):
                found.add(obj)
    return found


_FUNCTIONS = _modelling_functions()
# KerasHub's own activations, by registered name -> (module, name). Keras imports
# keras_hub (and so registers them) when it rebuilds the KerasHub layers that use them,
# e.g. a BERT encoder kept as a plain functional graph by `Backbone.from_preset`.
_KERAS_HUB_FUNCTIONS = {
    f"{package}>gelu_approximate": ("keras_hub.src.utils.keras_utils", "gelu_approximate")
    for package in ("keras_hub", "keras_nlp")
}


def _attribute(module: str, name: str):
    """`module.name` as Keras would find it, importing nothing but Keras' own packages."""
    mod = sys.modules.get(module)
    if mod is None and module.split(".")[0] in _KERAS_PACKAGES:
        try:
            mod = importlib.import_module(module)
        except Exception:  # noqa: BLE001 - not importable: Keras could not load it either
            return None
    return None if mod is None else vars(mod).get(name, getattr(mod, name, None))


def _registered(name):
    if not isinstance(name, str):
        return None
    try:
        return keras.saving.get_registered_object(name)
    except Exception:  # noqa: BLE001
        return None


def _function_problem(config: dict) -> str | None:
    """Why a `{"class_name": "function", ...}` entry is refused, or None if it names one
    of Keras' activations, losses or metrics (checked the way Keras resolves it)."""
    name, module = config.get("config"), config.get("module")
    label = f"function {module}.{name}" if module else f"function {name}"
    if not isinstance(name, str):
        return label
    known = _KERAS_HUB_FUNCTIONS.get(name)  # Keras saves these as config=registered name
    if known is not None and module == "builtins":
        found = _registered(name)
        if found is None or (getattr(found, "__module__", None), found.__name__) == known:
            return None
    candidates = []
    for key in (name, config.get("registered_name")):  # Keras' registry wins, by either
        found = _registered(key)
        if found is not None:
            candidates.append(found)
    if module in (None, "builtins"):
        kinds = [getattr(keras, kind, None) for kind in _BUILTIN_KINDS]
        target = next((getattr(k, name) for k in kinds if hasattr(k, name)), None)
    elif isinstance(module, str) and module.split(".")[0] == "keras":
        target = _attribute(module, name)
    else:
        target = None
    if not candidates:
        candidates.append(target)
    if all(c in _FUNCTIONS for c in candidates) and (target is None or target in _FUNCTIONS):
        return None
    return label


def _ours(module) -> bool:
    """Whether `module` is (or was, in an older layout) one of finetune_tf's."""
    return isinstance(module, str) and module.split(".")[0] == "finetune_tf"


def _class_problem(config: dict) -> str | None:
    """Why an entry naming a class is refused, or None if the class Keras would use is
    a modelling class (see `_MODELLING_BASES`)."""
    class_name, module = config["class_name"], config.get("module")
    label = f"object {module}.{class_name}" if module else f"object {class_name}"
    registered_name = config.get("registered_name", class_name)
    found = _registered(registered_name)
    if found is not None:
        found_module = getattr(found, "__module__", None) or ""
        moved_here = _ours(module) and _ours(found_module)  # a file of 0.2's layout
        if module is not None and (
            (found_module != module and not moved_here)
            or getattr(found, "__name__", None) != class_name
        ):
            return label  # a registered name does not vouch for another object
        cls = found
    elif module is None:
        return None  # Keras resolves it in its own table of that kind (layers, ...)
    elif isinstance(module, str):
        cls = _attribute(module, class_name)
    else:
        return label
    if isinstance(cls, type) and issubclass(cls, (*_MODELLING_BASES, _OPERATION)):
        return None
    return label


def _unsafe_objects(config) -> list[str]:
    """What in a model config could run code on load or when called: Lambda layers
    (marshalled Python bytecode), Python lambdas, and any class or function that is not
    a modelling one (e.g. `keras.config.enable_unsafe_deserialization` or
    `keras.config.set_epsilon` as an activation, CVE-2025-1550/9906). Iterative, and
    refuses (as a finding) a config nested deeper than `MAX_CONFIG_DEPTH`."""
    found = []
    stack = [(config, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_CONFIG_DEPTH:
            raise _TooDeep
        if isinstance(value, dict):
            class_name = value.get("class_name")
            if isinstance(class_name, str):
                inner = value.get("config")
                if class_name.endswith("Lambda"):
                    name = inner.get("name", class_name) if isinstance(inner, dict) else class_name
                    found.append(f"Lambda layer {name!r}")
                elif class_name == "__lambda__":
                    found.append("a Python lambda")
                elif class_name == "function":
                    problem = _function_problem(value)
                    if problem:
                        found.append(problem)
                elif class_name not in _DATA_CLASS_NAMES:
                    problem = _class_problem(value)
                    if problem:
                        found.append(problem)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return found


class _TooDeep(Exception):
    pass


def _parse_config(raw, path: str, argname: str, what: str):
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(
            f"Refusing to load `{argname}`={path!r}: its {what} is nested too deeply to "
            f"read (more than {MAX_CONFIG_DEPTH} levels; a real model's config nests far "
            "less). The file is damaged or crafted."
        ) from None


def _refuse_unsafe(config, path: str, argname: str, why: str) -> None:
    try:
        unsafe = _unsafe_objects(config)
    except _TooDeep:
        raise ValueError(
            f"Refusing to load `{argname}`={path!r}: its model config is nested more than "
            f"{MAX_CONFIG_DEPTH} levels deep (a real model's config nests far less). The "
            "file is damaged or crafted."
        ) from None
    if unsafe:
        raise ValueError(
            f"Refusing to load `{argname}`={path!r}: its config holds "
            f"{', '.join(sorted(set(unsafe)))}, which could run code{why}: safe mode "
            "allows only Keras layers, models, operations, initializers, regularizers, "
            "constraints, losses, metrics, optimizers and schedules (Keras', or classes "
            "your code registered), and Keras' activation, loss and metric functions. If "
            "you trust the file's author, pass safe_mode=False."
        )


def _too_big(path, argname, what, size) -> ValueError:
    return ValueError(
        f"Refusing to load `{argname}`={path!r}: its {what} is {size:,} bytes, more than "
        f"finetune_tf reads in safe mode (MAX_CONFIG_BYTES = {MAX_CONFIG_BYTES:,}; a real "
        "model's config is a few MiB at most). The file is damaged or crafted; if you "
        "trust its author, pass safe_mode=False."
    )


def check_keras_archive(path: str, argname: str = "filepath", compile: bool = True) -> None:
    """Raises ValueError if a `.keras` archive is not one, or its config could run code.

    `config.json` is read only if it inflates to at most `MAX_CONFIG_BYTES`. Without
    `compile`, its `compile_config` is not checked: Keras does not read it then.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("config.json")
            if info.file_size > MAX_CONFIG_BYTES:
                raise _too_big(path, argname, "config.json", info.file_size)
            with archive.open(info) as member:
                raw = member.read(MAX_CONFIG_BYTES + 1)  # whatever the header claims
            if len(raw) > MAX_CONFIG_BYTES:
                raise _too_big(path, argname, "config.json", len(raw))
            config = _parse_config(raw, path, argname, "config.json")
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as error:
        raise _not_an_archive(path, argname, error) from None
    except ValueError as error:
        if str(error).startswith("Refusing"):
            raise
        raise _not_an_archive(path, argname, error) from None
    if not compile and isinstance(config, dict):
        config = {key: value for key, value in config.items() if key != "compile_config"}
    _refuse_unsafe(config, path, argname, " on load or when the model runs")


def _not_an_archive(path, argname, error) -> ValueError:
    return ValueError(
        f"`{argname}`={path!r} is not a Keras archive (a .keras file is a zip archive "
        f"holding config.json; {type(error).__name__}: {error}). It may be damaged or "
        "be another kind of file."
    )


def check_h5_file(path: str, argname: str = "filepath", compile: bool = True) -> None:
    """Raises ValueError if the `.h5` model file would run Python code when loaded.

    A fixed-size `model_config` attribute larger than `MAX_CONFIG_BYTES` is refused
    unread; a variable-length one (HDF5 stores it uncompressed, in the file) is refused
    once read.
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "model_config" not in f.attrs:
                raw = None
            else:
                attribute = h5py.h5a.open(f.id, b"model_config")
                size = attribute.get_storage_size()
                if size > MAX_CONFIG_BYTES:
                    raise _too_big(path, argname, "model_config attribute", size)
                raw = f.attrs["model_config"]
            version = f.attrs.get("keras_version")
            training = f.attrs.get("training_config")  # Keras compiles from it, unguarded
            if training is not None and len(training) > MAX_CONFIG_BYTES:
                raise _too_big(path, argname, "training_config attribute", len(training))
    except OSError as error:
        raise ValueError(
            f"`{argname}`={path!r} is not a readable HDF5 file ({error}). Expected a Keras "
            "model saved with model.save('model.h5')."
        ) from error
    if raw is None:
        raise ValueError(
            f"`{argname}`={path!r} holds no model config: it is a weights-only .h5 file. "
            "Build the architecture and call model.load_weights() on it, or pass a "
            "full-model file saved with model.save('model.h5')."
        )
    if hasattr(raw, "tobytes") and not isinstance(raw, (bytes, str)):
        raw = raw.tobytes() if raw.dtype.kind == "S" else str(raw)
    if len(raw) > MAX_CONFIG_BYTES:
        raise _too_big(path, argname, "model_config attribute", len(raw))
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    config = _parse_config(raw, path, argname, "model_config attribute")
    if isinstance(version, bytes):
        version = version.decode("utf-8", errors="replace")
    if str(version).startswith("2.") and isinstance(config, dict):
        try:
            config = keras2_fix(config)  # what `load_keras_file` loads from a Keras 2 file
        except RecursionError:
            pass  # nested too deep: refused below as such
    _refuse_unsafe(config, path, argname, " (Keras' .h5 loader ignores safe_mode)")
    if training is not None and compile:
        if isinstance(training, bytes):
            training = training.decode("utf-8", errors="replace")
        training = _parse_config(str(training), path, argname, "training_config attribute")
        _refuse_unsafe(training, path, argname, " (Keras compiles .h5 models unguarded)")
