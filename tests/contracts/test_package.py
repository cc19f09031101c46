"""The package as users meet it: imports cleanly, documents and runs its examples."""

import doctest
import importlib
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys
import textwrap

import pytest

import finetune_tf
from finetune_tf import _aliases

MODULES = [
    "finetuner",
    "head",
    "model",
    "model.assembly",
    "model.backbone",
    "model.backbone_sources",
    "model.blocks",
    "model.corruption",
    "model.freeze",
    "model.freeze_report",
    "model.head",
    "model.head.binary",
    "model.head.classifier",
    "model.head.decoder",
    "model.head.capacity",
    "model.head.head",
    "model.head.labels",
    "model.head.losses",
    "model.head.metrics",
    "model.head.multilabel",
    "model.head.projection",
    "model.head.regression",
    "model.head.task",
    "model.head.widening",
    "model.kinds",
    "model.layers",
    "model.lora",
    "model.preprocessing",
    "model.views",
    "model.tuned_model",
    "outputs",
    "outputs.export",
    "outputs.plots",
    "outputs.report",
    "outputs.saving",
    "outputs.tuner_config",
    "runtime",
    "runtime.chief",
    "runtime.devices",
    "runtime.multi_worker",
    "runtime.placement",
    "runtime.precision",
    "runtime.progress",
    "sklearn",
    "sources",
    "sources.allowed_ops",
    "sources.applications",
    "sources.files",
    "sources.hub",
    "sources.hub_handles",
    "sources.keras2_h5",
    "sources.keras_hub",
    "sources.savedmodel_trust",
    "sources.trust",
    "training",
    "training.compile",
    "training.data_checks",
    "training.feature_cache",
    "training.feature_scale",
    "training.feature_store",
    "training.frozen_prefix",
    "training.fit_args",
    "training.growing",
    "training.layerwise",
    "training.loop",
    "training.neighbors",
    "training.plan",
    "training.pretrain",
    "training.lr_finder",
    "training.recipes",
    "training.regularization",
    "training.run_fingerprint",
    "training.run_state",
    "training.seeding",
    "training.stages",
    "training.state_file",
]


def test_every_module_runs_its_examples():
    modules = {
        name.removeprefix("finetune_tf.")
        for _, name, _ in pkgutil.walk_packages(finetune_tf.__path__, "finetune_tf.")
        if not any(part.startswith("_") for part in name.split("."))
    }
    assert modules == set(MODULES)


def test_old_import_paths_of_public_names_still_work():
    from finetune_tf.head import Head  # finetune_tf/head.py before 0.3

    assert Head is finetune_tf.Head
    assert importlib.import_module("finetune_tf.head").Head is finetune_tf.Head
    from finetune_tf.estimators import FineTunerClassifier  # finetune_tf/estimators.py
    from finetune_tf.freeze import FreezePolicy  # finetune_tf/freeze.py
    from finetune_tf.schedule import Stage  # finetune_tf/schedule.py

    assert (FineTunerClassifier, FreezePolicy, Stage) == (
        finetune_tf.FineTunerClassifier,
        finetune_tf.FreezePolicy,
        finetune_tf.Stage,
    )


@pytest.mark.parametrize("old", sorted(_aliases.MOVED))
def test_a_moved_module_is_the_same_module_under_its_old_name(old):
    """Patching or pickling through a 0.2 path must reach the module that runs."""
    moved = importlib.import_module(f"finetune_tf.{old}")
    assert moved is importlib.import_module(_aliases.MOVED[old])
    assert getattr(finetune_tf, old) is moved


def test_the_public_contracts_are_finetune_tf_and_finetune_tf_sklearn():
    import finetune_tf.sklearn

    for name in finetune_tf.sklearn.__all__:
        assert getattr(finetune_tf.sklearn, name) is getattr(finetune_tf, name)


def test_the_wheel_ships_every_subpackage():
    """`pip install .` (the README's first command) installs what pyproject finds."""
    setuptools = pytest.importorskip("setuptools")
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    root = os.path.join(os.path.dirname(finetune_tf.__file__), os.pardir)
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = set(setuptools.find_packages(root, include=include))
    on_disk = {
        os.path.relpath(folder, root).replace(os.sep, ".")
        for folder, _, files in os.walk(os.path.join(root, "finetune_tf"))
        if "__init__.py" in files
    }
    assert on_disk == shipped and len(shipped) > 1


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(f"finetune_tf.{module}")
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    if importlib.util.find_spec("keras_hub") is not None:
        result = doctest.testmod(mod, optionflags=flags)
        assert result.failed == 0
        return
    # Without the keras-hub extra (the version matrix), examples that use it cannot run.
    runner = doctest.DocTestRunner(optionflags=flags)
    for test in doctest.DocTestFinder().find(mod):
        if not any("keras_hub" in example.source for example in test.examples):
            runner.run(test)
    assert runner.failures == 0


def test_every_public_name_has_a_docstring_with_an_example():
    for name in finetune_tf.__all__:
        if name == "__version__":
            continue
        doc = getattr(finetune_tf, name).__doc__ or ""
        assert "Example" in doc and ">>>" in doc, name


def test_import_changes_no_global_state():
    script = textwrap.dedent(
        """
        import json, logging, sys
        import tensorflow as tf, keras
        def state():
            return {
                "policy": keras.config.dtype_policy().name,
                "floatx": keras.config.floatx(),
                "tf_logger": tf.get_logger().level,
                "root_logger": logging.getLogger().level,
                "handlers": len(logging.getLogger().handlers),
                "eager": tf.executing_eagerly(),
                "soft_placement": tf.config.get_soft_device_placement(),
                "intra_threads": tf.config.threading.get_intra_op_parallelism_threads(),
            }
        before = state()
        loaded = set(sys.modules)
        import finetune_tf
        after = state()
        optional = ("tensorflow_hub", "tf_keras", "matplotlib", "sklearn.metrics")
        optional += ("keras_hub", "tensorflow_text")
        heavy = [m for m in optional if m in sys.modules and m not in loaded]
        print(json.dumps({"before": before, "after": after, "heavy": heavy}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["before"] == report["after"]
    # tensorflow_hub and tf_keras load only when a Hub handle is used, keras_hub and
    # tensorflow_text when a KerasHub preset is, matplotlib when a plot is drawn,
    # sklearn.metrics when a report is made: not at import time.
    assert report["heavy"] == []


def test_version_matches_the_package_metadata():
    from importlib.metadata import version

    assert finetune_tf.__version__ == version("finetune_tf")


def test_the_package_ships_its_type_marker_and_extras():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    package = os.path.dirname(finetune_tf.__file__)
    assert os.path.isfile(os.path.join(package, "py.typed"))  # PEP 561: the hints are public
    with open(os.path.join(package, os.pardir, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)
    assert project["tool"]["setuptools"]["package-data"]["finetune_tf"] == ["py.typed"]
    extras = project["project"]["optional-dependencies"]
    assert {"plot", "docs", "test"} <= set(extras)
    assert any(req.startswith("matplotlib") for req in extras["plot"])


def test_the_license_file_is_the_one_the_metadata_names():
    root = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir)
    with open(os.path.join(root, "pyproject.toml")) as f:
        assert 'license = { text = "Apache-2.0" }' in f.read()
    with open(os.path.join(root, "LICENSE")) as f:
        text = f.read()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text and "[yyyy]" not in text
