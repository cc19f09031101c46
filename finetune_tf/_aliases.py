"""The module paths of 0.2, kept working after the 0.3 layout moved them.

`from finetune_tf.freeze import FreezePolicy` imports the module that is now
`finetune_tf.model.freeze`: each old name is the same module object (not a
copy), so patching or pickling through it reaches the real one. Only
`finetune_tf` and `finetune_tf.sklearn` are public contracts; these paths
are kept so that imports of public names written against 0.2 run unchanged
(private helpers moved with their code: see CHANGELOG).
"""

from __future__ import annotations

import importlib
import sys
import types

# old module name (under finetune_tf) -> where it lives now
MOVED = {
    "backbone": "finetune_tf.model.backbone",
    "checkpoint": "finetune_tf.training.run_state",
    "data_checks": "finetune_tf.training.data_checks",
    "devices": "finetune_tf.runtime.devices",
    "distribute_compat": "finetune_tf.runtime.multi_worker",
    "estimators": "finetune_tf.sklearn",
    "export": "finetune_tf.outputs.export",
    "feature_cache": "finetune_tf.training.feature_cache",
    "freeze": "finetune_tf.model.freeze",
    "hub": "finetune_tf.sources.hub",
    "layerwise": "finetune_tf.training.layerwise",
    "losses": "finetune_tf.model.head.losses",
    "lr_finder": "finetune_tf.training.lr_finder",
    "metrics": "finetune_tf.model.head.metrics",
    "plots": "finetune_tf.outputs.plots",
    "precision": "finetune_tf.runtime.precision",
    "preprocessing": "finetune_tf.model.preprocessing",
    "progress": "finetune_tf.runtime.progress",
    "report": "finetune_tf.outputs.report",
    "saving": "finetune_tf.outputs.saving",
    "schedule": "finetune_tf.training.stages",
    "seeding": "finetune_tf.training.seeding",
    "tuned_model": "finetune_tf.model.tuned_model",
}


def install(package: types.ModuleType) -> None:
    """Makes `finetune_tf.<old>` import the module now at `MOVED[old]`."""
    for old, new in MOVED.items():
        module = importlib.import_module(new)
        sys.modules[f"{package.__name__}.{old}"] = module
        setattr(package, old, module)
