"""The OptimizerV2 base class, the classic and the modern optimizers, one module each."""

from keras_opt.optimizer_v2.adadelta import Adadelta
from keras_opt.optimizer_v2.adafactor import Adafactor
from keras_opt.optimizer_v2.adagrad import Adagrad
from keras_opt.optimizer_v2.adam import Adam, NonFusedAdam
from keras_opt.optimizer_v2.adamax import Adamax
from keras_opt.optimizer_v2.adamw import AdamW
from keras_opt.optimizer_v2.ftrl import Ftrl
from keras_opt.optimizer_v2.gradient_descent import SGD
from keras_opt.optimizer_v2.lamb import Lamb
from keras_opt.optimizer_v2.lazy_adam import LazyAdam
from keras_opt.optimizer_v2.lion import Lion
from keras_opt.optimizer_v2.muon import Muon
from keras_opt.optimizer_v2.nadam import Nadam
from keras_opt.optimizer_v2.optimizer_v2 import OptimizerV2
from keras_opt.optimizer_v2.rmsprop import RMSprop
from keras_opt.optimizer_v2.saved_model import RestoredOptimizer  # registers SavedModel type

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
    "Muon",
    "Nadam",
    "NonFusedAdam",
    "OptimizerV2",
    "RMSprop",
    "RestoredOptimizer",
    "SGD",
]
