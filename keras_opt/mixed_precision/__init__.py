"""Mixed precision for keras_opt optimizers: tf_keras's legacy loss scaling.

``LossScaleOptimizer`` wraps a keras_opt optimizer, scales the loss so that
float16 gradients neither underflow nor (with a dynamic scale) stay overflowed,
and skips the steps whose gradients are not finite.
"""

from keras_opt.mixed_precision.loss_scale_optimizer import LossScaleOptimizer

__all__ = ["LossScaleOptimizer"]
