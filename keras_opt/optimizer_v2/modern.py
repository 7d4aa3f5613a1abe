"""Pieces shared by the modern optimizers (Keras 3's AdamW, Adafactor, Lamb, Lion, Muon).

* ``keras3_config``: ``get_config`` with Keras 3's keys, in Keras 3's order (the
  base arguments always present, at their defaults when unused), so a config
  moves between ``keras.optimizers.X`` and ``keras_opt.X``.
* ``DensifySparseMixin``: for optimizers whose update of a row depends on the
  whole variable (a norm, a mean over rows, a matrix product), an
  ``IndexedSlices`` gradient is summed into a dense gradient of that one
  variable and the dense update runs (weight decay included, on every row).
  Nothing else is densified.
* ``scatter_sub`` / ``scatter_update``: row updates by the raw resource kernels.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import tensorflow as tf

# Keras 3's base-optimizer config keys after "name" and "learning_rate", with
# the defaults of `keras.optimizers.Optimizer`.
KERAS3_BASE_KEYS = (
    ("weight_decay", None),
    ("clipnorm", None),
    ("global_clipnorm", None),
    ("clipvalue", None),
    ("use_ema", False),
    ("ema_momentum", 0.99),
    ("ema_overwrite_frequency", None),
    ("loss_scale_factor", None),
    ("gradient_accumulation_steps", None),
)


def keras3_config(opt: Any, base_config: dict, own: dict) -> dict:
    """Keras 3's config layout: name, learning_rate, base keys, then ``own``.

    ``base_config`` is `OptimizerV2.get_config`'s dict (it holds the base keys
    that are set); the others come from the optimizer's attributes or Keras 3's
    defaults. Legacy ``decay`` is kept only when used (Keras 3 has no such key).
    """
    config = {
        "name": base_config["name"],
        "learning_rate": opt._serialize_hyperparameter("learning_rate"),
    }
    for key, default in KERAS3_BASE_KEYS:
        config[key] = base_config.get(key, getattr(opt, key, default))
    for key, value in base_config.items():  # anything else the base adds
        config.setdefault(key, value)
    if opt._initial_decay:
        config["decay"] = opt._initial_decay
    config.update(own)
    return config


def check_number(name: str, value: Any, minimum: float, inclusive: bool = True) -> Any:
    """``value`` if it is a real number ``>= minimum`` (``>`` if not ``inclusive``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise TypeError(
            f"`{name}` must be a number. Received: {name}={value!r} of type {type(value).__name__}."
        )
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        bound = ">=" if inclusive else ">"
        raise ValueError(
            f"`{name}` must be a finite number {bound} {minimum}. Received: {name}={value}."
        )
    return value


def densify(values: tf.Tensor, indices: tf.Tensor, var: Any) -> tf.Tensor:
    """The dense gradient of ``var`` for rows ``values`` at ``indices`` (repeats summed)."""
    num_rows = tf.shape(var, out_type=indices.dtype)[0]
    return tf.math.unsorted_segment_sum(values, indices, num_rows)


class DensifySparseMixin:
    """Sparse gradients are summed into a dense gradient of that variable only.

    The gradient is densified before the per-variable stages, so the weight
    decay stage decays every row, as the dense step (and Keras 3) does.
    """

    def _apply_one(self, var, grad, apply_state):
        if isinstance(grad, tf.IndexedSlices):
            grad = densify(grad.values, grad.indices, var)
        return super()._apply_one(var, grad, apply_state)

    def _resource_apply_sparse_duplicate_indices(self, grad, handle, indices, **kwargs):
        return self._resource_apply_dense(densify(grad, indices, handle), handle, **kwargs)

    def _resource_apply_sparse(self, grad, handle, indices, apply_state=None):
        return self._resource_apply_dense(
            densify(grad, indices, handle), handle, apply_state=apply_state
        )


def scatter_sub(var: Any, indices: tf.Tensor, updates: tf.Tensor) -> tf.Operation:
    """``var[indices] -= updates`` (unique indices)."""
    return tf.raw_ops.ResourceScatterSub(resource=var.handle, indices=indices, updates=updates)


def scatter_update(var: Any, indices: tf.Tensor, updates: tf.Tensor) -> tf.Operation:
    """``var[indices] = updates`` (unique indices)."""
    return tf.raw_ops.ResourceScatterUpdate(resource=var.handle, indices=indices, updates=updates)


def rms(x: tf.Tensor) -> tf.Tensor:
    """Root mean square of all entries of ``x``."""
    return tf.sqrt(tf.reduce_mean(tf.square(x)))
