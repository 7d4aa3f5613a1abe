"""keras_opt: tf_keras's legacy OptimizerV2 optimizers, TensorFlow-native.

The top level mirrors ``tf.keras.optimizers``: every optimizer class,
``Optimizer`` (the ``OptimizerV2`` base), ``get``, ``serialize``,
``deserialize``, the ``schedules`` subpackage and ``mixed_precision``
(``LossScaleOptimizer``, also exported here).
"""

from keras_opt import mixed_precision, schedules
from keras_opt.mixed_precision import LossScaleOptimizer
from keras_opt.optimizer_v2 import (
    SGD,
    Adadelta,
    Adafactor,
    Adagrad,
    Adam,
    Adamax,
    AdamW,
    Ftrl,
    Lamb,
    LazyAdam,
    Lion,
    Muon,
    Nadam,
    NonFusedAdam,
    OptimizerV2,
    RMSprop,
)
from keras_opt.optimizer_v2.rmsprop import RMSProp
from keras_opt.serialization import convert_to_legacy_optimizer, deserialize, get, serialize

Optimizer = OptimizerV2

__version__ = "0.1.0"

__all__ = [
    "Adadelta",
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "Adamax",
    "Ftrl",
    "Lamb",
    "LazyAdam",
    "Lion",
    "LossScaleOptimizer",
    "Muon",
    "Nadam",
    "NonFusedAdam",
    "Optimizer",
    "OptimizerV2",
    "RMSProp",
    "RMSprop",
    "SGD",
    "convert_to_legacy_optimizer",
    "deserialize",
    "get",
    "mixed_precision",
    "schedules",
    "serialize",
]
