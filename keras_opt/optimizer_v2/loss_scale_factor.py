"""The loss-scale stage: Keras 3's fixed ``loss_scale_factor``.

``scale_loss(loss)`` returns ``loss * loss_scale_factor``; ``apply_gradients``
divides every gradient by the factor first, before aggregation across
replicas, clipping and everything else, as Keras 3 does (so that clipping
thresholds and weight decay see unscaled gradients). ``minimize`` scales the
loss it differentiates, so it stays a plain descent step. For a dynamic loss
scale use ``keras_opt.mixed_precision.LossScaleOptimizer``.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf


def unscale(opt: Any, grads_and_vars: list) -> list:
    """Divides each gradient (dense or IndexedSlices values) by the factor."""
    scale = opt.loss_scale_factor
    out = []
    for grad, var in grads_and_vars:
        if isinstance(grad, tf.IndexedSlices):
            grad = tf.IndexedSlices(grad.values / scale, grad.indices, grad.dense_shape)
        else:
            grad = grad / scale
        out.append((grad, var))
    return out


class LossScaleFactorMixin:
    """``scale_loss`` of OptimizerV2."""

    def scale_loss(self, loss: Any) -> Any:
        """``loss * loss_scale_factor`` (``loss`` itself when no factor is set)."""
        if self.loss_scale_factor is not None:
            return loss * self.loss_scale_factor
        return loss
