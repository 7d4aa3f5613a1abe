r"""FTRL-Proximal (McMahan et al., 2013), with L1, L2 and L2-shrinkage.

With ``p = learning_rate_power`` (usually -1/2), ``l2' = l2 + beta / (2 * lr)``
and ``g' = g + 2 * l2_shrinkage * var``::

    accum_new <- accumulator + g^2
    linear    <- linear + g' - (accum_new^-p - accumulator^-p) / lr * var
    quadratic <- accum_new^-p / lr + 2 * l2'
    var       <- (sign(linear) * l1 - linear) / quadratic   if |linear| > l1 else 0
    accumulator <- accum_new

Slots, per variable in this order: ``"accumulator"`` (starting at
``initial_accumulator_value``), ``"linear"``. Updates run
``ResourceApplyFtrl(V2)`` / ``ResourceSparseApplyFtrl(V2)`` (V2 when
``l2_shrinkage_regularization_strength > 0``); sparse updates use plain ops under XLA,
which has no kernel for them (see `xla_fallbacks`).
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import optimizer_v2, xla, xla_fallbacks


class Ftrl(optimizer_v2.OptimizerV2):
    r"""FTRL-Proximal. Slots: ``"accumulator"``, ``"linear"``.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      learning_rate_power: <= 0; -0.5 is the usual Adagrad-like power.
      initial_accumulator_value: >= 0, starting value of the accumulators.
      l1_regularization_strength: >= 0.
      l2_regularization_strength: >= 0 (stabilisation penalty).
      name: prefix of the optimizer's variables. Defaults to ``"Ftrl"``.
      l2_shrinkage_regularization_strength: >= 0, magnitude penalty added to
        the gradient.
      beta: float, added as ``beta / (2 * lr)`` to the L2 strength. Defaults to 0.
      **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm``, ``decay``.
    """

    def __init__(
        self,
        learning_rate=0.001,
        learning_rate_power=-0.5,
        initial_accumulator_value=0.1,
        l1_regularization_strength=0.0,
        l2_regularization_strength=0.0,
        name="Ftrl",
        l2_shrinkage_regularization_strength=0.0,
        beta=0.0,
        **kwargs,
    ):
        super().__init__(name, **kwargs)
        checks = {
            "initial_accumulator_value": (initial_accumulator_value, 1),
            "learning_rate_power": (learning_rate_power, -1),
            "l1_regularization_strength": (l1_regularization_strength, 1),
            "l2_regularization_strength": (l2_regularization_strength, 1),
            "l2_shrinkage_regularization_strength": (l2_shrinkage_regularization_strength, 1),
        }
        for arg, (value, sign) in checks.items():
            if sign * value < 0.0:
                requirement = "positive or zero" if sign > 0 else "negative or zero"
                raise ValueError(f"`{arg}` needs to be {requirement}. Received: {arg}={value}.")
        self._set_hyper("learning_rate", learning_rate)
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("learning_rate_power", learning_rate_power)
        self._set_hyper("l1_regularization_strength", l1_regularization_strength)
        self._set_hyper("l2_regularization_strength", l2_regularization_strength)
        self._set_hyper("beta", beta)
        self._initial_accumulator_value = initial_accumulator_value
        self._l2_shrinkage_regularization_strength = l2_shrinkage_regularization_strength

    def _create_slots(self, var_list):
        for var in var_list:
            init = tf.compat.v1.constant_initializer(
                self._initial_accumulator_value, dtype=var.dtype.base_dtype
            )
            self.add_slot(var, "accumulator", init)
            self.add_slot(var, "linear")

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        coef = apply_state[(var_device, var_dtype)]
        for name in (
            "learning_rate_power",
            "l1_regularization_strength",
            "l2_regularization_strength",
            "beta",
        ):
            coef[name] = tf.identity(self._get_hyper(name, var_dtype))
        coef["l2_shrinkage_regularization_strength"] = tf.cast(
            self._l2_shrinkage_regularization_strength, var_dtype
        )

    def _kernel_args(self, grad, var, apply_state):
        coef = self._coefficients(var, apply_state)
        args = dict(
            var=var.handle,
            accum=self.get_slot(var, "accumulator").handle,
            linear=self.get_slot(var, "linear").handle,
            grad=grad,
            lr=coef["lr_t"],
            l1=coef["l1_regularization_strength"],
            l2=coef["l2_regularization_strength"] + coef["beta"] / (2.0 * coef["lr_t"]),
            lr_power=coef["learning_rate_power"],
            use_locking=self._use_locking,
        )
        if self._l2_shrinkage_regularization_strength > 0.0:
            args["l2_shrinkage"] = coef["l2_shrinkage_regularization_strength"]
        return args

    def _resource_apply_dense(self, grad, var, apply_state=None):
        args = self._kernel_args(grad, var, apply_state)
        kernel = (
            tf.raw_ops.ResourceApplyFtrlV2
            if "l2_shrinkage" in args
            else tf.raw_ops.ResourceApplyFtrl
        )
        return kernel(**args)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        args = self._kernel_args(grad, var, apply_state)
        if xla.in_xla_context():  # No XLA kernel for ResourceSparseApplyFtrl(V2).
            return xla_fallbacks.sparse_update(
                xla_fallbacks.ftrl,
                [var, self.get_slot(var, "accumulator"), self.get_slot(var, "linear")],
                grad,
                indices,
                lr=args["lr"],
                l1=args["l1"],
                l2=args["l2"],
                lr_power=args["lr_power"],
                l2_shrinkage=args.get("l2_shrinkage"),
            )
        kernel = (
            tf.raw_ops.ResourceSparseApplyFtrlV2
            if "l2_shrinkage" in args
            else tf.raw_ops.ResourceSparseApplyFtrl
        )
        return kernel(indices=indices, **args)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "initial_accumulator_value": self._initial_accumulator_value,
                "learning_rate_power": self._serialize_hyperparameter("learning_rate_power"),
                "l1_regularization_strength": self._serialize_hyperparameter(
                    "l1_regularization_strength"
                ),
                "l2_regularization_strength": self._serialize_hyperparameter(
                    "l2_regularization_strength"
                ),
                "beta": self._serialize_hyperparameter("beta"),
                "l2_shrinkage_regularization_strength": self._l2_shrinkage_regularization_strength,
            }
        )
        return config
