r"""Adagrad: per-coordinate learning rates from the sum of squared gradients.

::

    accumulator <- accumulator + g^2
    var         <- var - lr * g / (sqrt(accumulator) + epsilon)

Slot: ``"accumulator"``, initialised to ``initial_accumulator_value``. Dense
updates run ``ResourceApplyAdagradV2``, sparse ones ``ResourceSparseApplyAdagradV2``
(plain ops under XLA, which has no kernel for it: see `xla_fallbacks`).
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import optimizer_v2, xla, xla_fallbacks


class Adagrad(optimizer_v2.OptimizerV2):
    r"""Adagrad (Duchi et al., 2011). Slot: ``"accumulator"``.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      initial_accumulator_value: starting value of the accumulators, >= 0.
        Defaults to 0.1.
      epsilon: added to the denominator. Defaults to 1e-7.
      name: prefix of the optimizer's variables. Defaults to ``"Adagrad"``.
      **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm``, ``lr``, ``decay``.
    """

    _HAS_AGGREGATE_GRAD = True
    _WEIGHTS_MAY_LACK_ITERATIONS = True

    def __init__(
        self,
        learning_rate=0.001,
        initial_accumulator_value=0.1,
        epsilon=1e-7,
        name="Adagrad",
        **kwargs,
    ):
        if initial_accumulator_value < 0.0:
            raise ValueError(
                f"initial_accumulator_value must be non-negative: {initial_accumulator_value}"
            )
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._initial_accumulator_value = initial_accumulator_value
        self.epsilon = epsilon or 1e-7

    def _create_slots(self, var_list):
        for var in var_list:
            init = tf.compat.v1.constant_initializer(
                self._initial_accumulator_value, dtype=var.dtype.base_dtype
            )
            self.add_slot(var, "accumulator", init)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        coef = apply_state[(var_device, var_dtype)]
        coef.update(
            epsilon=tf.convert_to_tensor(self.epsilon, var_dtype),
            neg_lr_t=-coef["lr_t"],
            zero=tf.zeros((), dtype=tf.int64),
        )

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config.setdefault("initial_accumulator_value", 0.1)
        return super().from_config(config, custom_objects)

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        return tf.raw_ops.ResourceApplyAdagradV2(
            var=var.handle,
            accum=self.get_slot(var, "accumulator").handle,
            lr=coef["lr_t"],
            epsilon=coef["epsilon"],
            grad=grad,
            use_locking=self._use_locking,
        )

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        coef = self._coefficients(var, apply_state)
        if xla.in_xla_context():  # No XLA kernel for ResourceSparseApplyAdagradV2.
            return xla_fallbacks.sparse_update(
                xla_fallbacks.adagrad_v2,
                [var, self.get_slot(var, "accumulator")],
                grad,
                indices,
                lr=coef["lr_t"],
                epsilon=coef["epsilon"],
            )
        return tf.raw_ops.ResourceSparseApplyAdagradV2(
            var=var.handle,
            accum=self.get_slot(var, "accumulator").handle,
            lr=coef["lr_t"],
            epsilon=coef["epsilon"],
            grad=grad,
            indices=indices,
            use_locking=self._use_locking,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "initial_accumulator_value": self._initial_accumulator_value,
                "epsilon": self.epsilon,
            }
        )
        return config
