r"""SGD: gradient descent with optional (Nesterov) momentum.

Without momentum::

    var <- var - lr * g

With momentum (slot ``"momentum"``, the velocity ``v``)::

    v   <- momentum * v - lr * g
    var <- var + v                              (plain)
    var <- var + momentum * v - lr * g          (nesterov=True)
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import hyperparameters, optimizer_v2, xla, xla_fallbacks


class SGD(optimizer_v2.OptimizerV2):
    r"""Gradient descent (with momentum). Slot: ``"momentum"`` when momentum is used.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.01.
      momentum: float in [0, 1] (or tensor/callable) accelerating descent along
        consistent directions and damping oscillations. Defaults to 0.0.
      nesterov: use Nesterov momentum. Defaults to False.
      name: prefix of the optimizer's variables. Defaults to ``"SGD"``.
      **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm``, ``lr``, ``decay``.
    """

    _HAS_AGGREGATE_GRAD = True

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False, name="SGD", **kwargs):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._momentum = hyperparameters.uses_momentum(momentum)
        self._set_hyper("momentum", momentum)
        self.nesterov = nesterov

    def _create_slots(self, var_list):
        if self._momentum:
            for var in var_list:
                self.add_slot(var, "momentum")

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        apply_state[(var_device, var_dtype)]["momentum"] = tf.identity(
            self._get_hyper("momentum", var_dtype)
        )

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        if not self._momentum:
            return tf.raw_ops.ResourceApplyGradientDescent(
                var=var.handle, alpha=coef["lr_t"], delta=grad, use_locking=self._use_locking
            )
        return tf.raw_ops.ResourceApplyKerasMomentum(
            var=var.handle,
            accum=self.get_slot(var, "momentum").handle,
            lr=coef["lr_t"],
            grad=grad,
            momentum=coef["momentum"],
            use_locking=self._use_locking,
            use_nesterov=self.nesterov,
        )

    def _resource_apply_sparse_duplicate_indices(self, grad, var, indices, **kwargs):
        if self._momentum:
            return super()._resource_apply_sparse_duplicate_indices(grad, var, indices, **kwargs)
        # Plain SGD is linear in the gradient: a scatter-add sums duplicates itself.
        coef = self._coefficients(var, kwargs.get("apply_state"))
        return tf.raw_ops.ResourceScatterAdd(
            resource=var.handle, indices=indices, updates=-grad * coef["lr_t"]
        )

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        coef = self._coefficients(var, apply_state)
        if xla.in_xla_context():  # No XLA kernel for ResourceSparseApplyKerasMomentum.
            return xla_fallbacks.sparse_update(
                xla_fallbacks.keras_momentum,
                [var, self.get_slot(var, "momentum")],
                grad,
                indices,
                lr=coef["lr_t"],
                momentum=coef["momentum"],
                nesterov=self.nesterov,
            )
        return tf.raw_ops.ResourceSparseApplyKerasMomentum(
            var=var.handle,
            accum=self.get_slot(var, "momentum").handle,
            lr=coef["lr_t"],
            grad=grad,
            indices=indices,
            momentum=coef["momentum"],
            use_locking=self._use_locking,
            use_nesterov=self.nesterov,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "momentum": self._serialize_hyperparameter("momentum"),
                "nesterov": self.nesterov,
            }
        )
        return config
