"""The OptimizerV2 base class and the classic optimizers, one module each."""

from keras_opt.optimizer_v2.adadelta import Adadelta
from keras_opt.optimizer_v2.adagrad import Adagrad
from keras_opt.optimizer_v2.adam import Adam, NonFusedAdam
from keras_opt.optimizer_v2.adamax import Adamax
from keras_opt.optimizer_v2.ftrl import Ftrl
from keras_opt.optimizer_v2.gradient_descent import SGD
from keras_opt.optimizer_v2.nadam import Nadam
from keras_opt.optimizer_v2.optimizer_v2 import OptimizerV2
from keras_opt.optimizer_v2.rmsprop import RMSprop
from keras_opt.optimizer_v2.saved_model import RestoredOptimizer  # registers SavedModel type

__all__ = [
    "Adadelta",
    "Adagrad",
    "Adam",
    "Adamax",
    "Ftrl",
    "Nadam",
    "NonFusedAdam",
    "OptimizerV2",
    "RMSprop",
    "RestoredOptimizer",
    "SGD",
]
