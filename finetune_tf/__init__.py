"""finetune_tf: fine-tune pretrained TensorFlow models with a Keras-style API.

Examples:
    >>> from finetune_tf import Backbone, FineTuner, FreezePolicy, Head
    >>> head = Head.classifier(num_classes=5, dropout=0.2)
    >>> policy = FreezePolicy.bottom(100)
"""

from finetune_tf import devices as _devices
from finetune_tf.backbone import Backbone, BackboneLayer
from finetune_tf.estimators import BackboneFeatures, FineTunerClassifier, FineTunerRegressor
from finetune_tf.feature_cache import FeatureCache
from finetune_tf.finetuner import FineTuner
from finetune_tf.freeze import FreezePolicy, FreezeReport
from finetune_tf.hub import HubLayer
from finetune_tf.layerwise import LayerwiseOptimizer
from finetune_tf.losses import LabelCrossentropy
from finetune_tf.lr_finder import LRFinderResult
from finetune_tf.metrics import LabelAccuracy
from finetune_tf.model.head import Head
from finetune_tf.plots import plot_confusion_matrix, plot_history
from finetune_tf.preprocessing import ApplicationPreprocessing, InputAdapter
from finetune_tf.report import Report
from finetune_tf.saving import load_model
from finetune_tf.schedule import Stage, gradual_unfreezing
from finetune_tf.tuned_model import TunedModel

__version__ = "0.2.0"

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
    "Report",
    "Stage",
    "TunedModel",
    "__version__",
    "gradual_unfreezing",
    "load_model",
    "plot_confusion_matrix",
    "plot_history",
]
