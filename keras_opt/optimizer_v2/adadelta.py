r"""Adadelta: step sizes from running averages of squared gradients and updates.

::

    accum_grad <- rho * accum_grad + (1 - rho) * g^2
    update     <- sqrt(accum_var + epsilon) / sqrt(accum_grad + epsilon) * g
    accum_var  <- rho * accum_var + (1 - rho) * update^2
    var        <- var - lr * update

Slots, in this order for all variables: ``"accum_grad"``, ``"accum_var"``.
Dense updates run ``ResourceApplyAdadelta``, sparse ones ``ResourceSparseApplyAdadelta``
(plain ops under XLA, which has no kernel for it: see `xla_fallbacks`).
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import optimizer_v2, xla, xla_fallbacks


class Adadelta(optimizer_v2.OptimizerV2):
    r"""Adadelta (Zeiler, 2012). Slots: ``"accum_grad"``, ``"accum_var"``.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      rho: decay rate of the running averages. Defaults to 0.95.
      epsilon: conditioning constant. Defaults to 1e-7.
      name: prefix of the optimizer's variables. Defaults to ``"Adadelta"``.
      **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm``, ``lr``, ``decay``.
    """

    _HAS_AGGREGATE_GRAD = True
    _WEIGHTS_MAY_LACK_ITERATIONS = True

    def __init__(self, learning_rate=0.001, rho=0.95, epsilon=1e-7, name="Adadelta", **kwargs):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("rho", rho)
        self.epsilon = epsilon or 1e-7

    def _create_slots(self, var_list):
        for slot in ("accum_grad", "accum_var"):
            for var in var_list:
                self.add_slot(var, slot)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        apply_state[(var_device, var_dtype)].update(
            epsilon=tf.convert_to_tensor(self.epsilon, var_dtype),
            rho=tf.identity(self._get_hyper("rho", var_dtype)),
        )

    def _kernel_args(self, grad, var, apply_state):
        coef = self._coefficients(var, apply_state)
        return dict(
            var=var.handle,
            accum=self.get_slot(var, "accum_grad").handle,
            accum_update=self.get_slot(var, "accum_var").handle,
            lr=coef["lr_t"],
            rho=coef["rho"],
            epsilon=coef["epsilon"],
            grad=grad,
            use_locking=self._use_locking,
        )

    def _resource_apply_dense(self, grad, var, apply_state=None):
        return tf.raw_ops.ResourceApplyAdadelta(**self._kernel_args(grad, var, apply_state))

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        if xla.in_xla_context():  # No XLA kernel for ResourceSparseApplyAdadelta.
            coef = self._coefficients(var, apply_state)
            return xla_fallbacks.sparse_update(
                xla_fallbacks.adadelta,
                [var, self.get_slot(var, "accum_grad"), self.get_slot(var, "accum_var")],
                grad,
                indices,
                lr=coef["lr_t"],
                rho=coef["rho"],
                epsilon=coef["epsilon"],
            )
        return tf.raw_ops.ResourceSparseApplyAdadelta(
            indices=indices, **self._kernel_args(grad, var, apply_state)
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "rho": self._serialize_hyperparameter("rho"),
                "epsilon": self.epsilon,
            }
        )
        return config
