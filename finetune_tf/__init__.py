"""finetune_tf: fine-tune pretrained TensorFlow models with a Keras-style API.

Examples:
    >>> from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
    >>> head = Head.classifier(num_classes=5, dropout=0.2)
    >>> policy = FreezePolicy.bottom(100)
"""

import sys

from finetune_tf import _aliases
from finetune_tf.finetuner import FineTuner
from finetune_tf.model.backbone import Backbone, BackboneLayer
from finetune_tf.model.freeze import FreezePolicy, FreezeReport
from finetune_tf.model.head import Head
from finetune_tf.model.head.losses import LabelCrossentropy
from finetune_tf.model.head.metrics import LabelAccuracy
from finetune_tf.model.lora import merge_lora
from finetune_tf.model.preprocessing import ApplicationPreprocessing, InputAdapter
from finetune_tf.model.tuned_model import TunedModel
from finetune_tf.outputs.plots import plot_confusion_matrix, plot_history
from finetune_tf.outputs.report import Report
from finetune_tf.outputs.saving import load_model
from finetune_tf.runtime import devices as _devices
from finetune_tf.sklearn import BackboneFeatures, FineTunerClassifier, FineTunerRegressor
from finetune_tf.sources.hub import HubLayer
from finetune_tf.training.feature_cache import FeatureCache
from finetune_tf.training.layerwise import LayerwiseOptimizer
from finetune_tf.training.lr_finder import LRFinderResult
from finetune_tf.training.pretrain import Pretrainer
from finetune_tf.training.stages import Stage, gradual_unfreezing

__version__ = "0.2.0"

_aliases.install(sys.modules[__name__])  # the module paths of 0.2 (see _aliases)

if _devices.tf_config_workers() > 1 and not _devices.runtime_started():
    # TensorFlow accepts a MultiWorkerMirroredStrategy only before its runtime
    # starts, so a worker gets its strategy now; FineTuner(strategy="auto") uses it.
    _devices.multi_worker_strategy()

__all__ = [
    "ApplicationPreprocessing",
    "Backbone",
    "BackboneFeatures",
    "BackboneLayer",
    "FeatureCache",
    "FineTuner",
    "FineTunerClassifier",
    "FineTunerRegressor",
    "FreezePolicy",
    "FreezeReport",
    "Head",
    "HubLayer",
    "InputAdapter",
    "LabelAccuracy",
    "LabelCrossentropy",
    "LayerwiseOptimizer",
    "LRFinderResult",
    "Pretrainer",
    "Report",
    "Stage",
    "TunedModel",
    "__version__",
    "gradual_unfreezing",
    "load_model",
    "merge_lora",
    "plot_confusion_matrix",
    "plot_history",
]
