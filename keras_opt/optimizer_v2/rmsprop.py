r"""RMSprop, optionally centered and with momentum.

::

    rms <- rho * rms + (1 - rho) * g^2
    mg  <- rho * mg + (1 - rho) * g                      (centered)
    d   <- rms - mg^2 if centered else rms
    mom <- momentum * mom + lr * g / sqrt(d + epsilon)   (momentum > 0)
    var <- var - mom                                     (momentum > 0)
    var <- var - lr * g / (sqrt(d) + epsilon)            (momentum == 0)

Note the two epsilon placements: inside the square root with momentum (TF's
``ResourceApply(Centered)RMSProp`` kernels), outside without (plain ops), as in
tf_keras. Slots, each for all variables in this order: ``"rms"``, then
``"momentum"`` when momentum is used, then ``"mg"`` when centered.
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import hyperparameters, optimizer_v2, xla, xla_fallbacks


class RMSprop(optimizer_v2.OptimizerV2):
    r"""RMSprop (Hinton, 2012). Slots: ``"rms"``, ``"momentum"``, ``"mg"``.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      rho: discount of the gradient history. Defaults to 0.9.
      momentum: float in [0, 1] (or tensor/callable). Defaults to 0.0.
      epsilon: conditioning constant. Defaults to 1e-7.
      centered: normalise by the estimated variance instead of the second moment.
      name: prefix of the optimizer's variables. Defaults to ``"RMSprop"``.
      **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm``, ``lr``, ``decay``.
    """

    _HAS_AGGREGATE_GRAD = True
    _WEIGHTS_MAY_LACK_ITERATIONS = True

    def __init__(
        self,
        learning_rate=0.001,
        rho=0.9,
        momentum=0.0,
        epsilon=1e-7,
        centered=False,
        name="RMSprop",
        **kwargs,
    ):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("rho", rho)
        self._momentum = hyperparameters.uses_momentum(momentum)
        self._set_hyper("momentum", momentum)
        self.epsilon = epsilon or 1e-7
        self.centered = centered

    def _create_slots(self, var_list):
        slots = ["rms"] + ["momentum"] * self._momentum + ["mg"] * bool(self.centered)
        for slot in slots:
            for var in var_list:
                self.add_slot(var, slot)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        coef = apply_state[(var_device, var_dtype)]
        rho = tf.identity(self._get_hyper("rho", var_dtype))
        coef.update(
            neg_lr_t=-coef["lr_t"],
            epsilon=tf.convert_to_tensor(self.epsilon, var_dtype),
            rho=rho,
            momentum=tf.identity(self._get_hyper("momentum", var_dtype)),
            one_minus_rho=1.0 - rho,
        )

    def _kernel_args(self, grad, var, coef):
        args = dict(
            var=var.handle,
            ms=self.get_slot(var, "rms").handle,
            mom=self.get_slot(var, "momentum").handle,
            lr=coef["lr_t"],
            rho=coef["rho"],
            momentum=coef["momentum"],
            epsilon=coef["epsilon"],
            grad=grad,
            use_locking=self._use_locking,
        )
        if self.centered:
            args["mg"] = self.get_slot(var, "mg").handle
        return args

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        rms = self.get_slot(var, "rms")
        if self._momentum:
            kernel = (
                tf.raw_ops.ResourceApplyCenteredRMSProp
                if self.centered
                else tf.raw_ops.ResourceApplyRMSProp
            )
            return kernel(**self._kernel_args(grad, var, coef))
        rms_t = coef["rho"] * rms + coef["one_minus_rho"] * tf.square(grad)
        rms_t = tf.compat.v1.assign(rms, rms_t, use_locking=self._use_locking)
        denom_t = rms_t
        if self.centered:
            mg = self.get_slot(var, "mg")
            mg_t = coef["rho"] * mg + coef["one_minus_rho"] * grad
            mg_t = tf.compat.v1.assign(mg, mg_t, use_locking=self._use_locking)
            denom_t = rms_t - tf.square(mg_t)
        var_t = var - coef["lr_t"] * grad / (tf.sqrt(denom_t) + coef["epsilon"])
        return tf.compat.v1.assign(var, var_t, use_locking=self._use_locking).op

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        coef = self._coefficients(var, apply_state)
        if self._momentum and xla.in_xla_context():
            # No XLA kernel for ResourceSparseApply(Centered)RMSProp.
            slots = [self.get_slot(var, "rms"), self.get_slot(var, "momentum")]
            rule = xla_fallbacks.rmsprop
            if self.centered:
                slots.insert(0, self.get_slot(var, "mg"))
                rule = xla_fallbacks.centered_rmsprop
            return xla_fallbacks.sparse_update(
                rule,
                [var] + slots,
                grad,
                indices,
                lr=coef["lr_t"],
                rho=coef["rho"],
                momentum=coef["momentum"],
                epsilon=coef["epsilon"],
            )
        if self._momentum:
            kernel = (
                tf.raw_ops.ResourceSparseApplyCenteredRMSProp
                if self.centered
                else tf.raw_ops.ResourceSparseApplyRMSProp
            )
            return kernel(indices=indices, **self._kernel_args(grad, var, coef))
        # Ops are created in tf_keras's order (see `_decayed_scatter_add`).
        rms = self.get_slot(var, "rms")
        rms_scaled_g_values = grad * grad * coef["one_minus_rho"]
        rms_t = self._decayed_scatter_add(rms, coef["rho"], indices, rms_scaled_g_values)
        rms_slice = tf.gather(rms_t, indices)
        denom_slice = rms_slice
        updated = [rms_t]
        if self.centered:
            mg = self.get_slot(var, "mg")
            mg_scaled_g_values = grad * coef["one_minus_rho"]
            mg_t = self._decayed_scatter_add(mg, coef["rho"], indices, mg_scaled_g_values)
            mg_slice = tf.gather(mg_t, indices)
            denom_slice = rms_slice - tf.square(mg_slice)
            updated.append(mg_t)
        var_update = self._resource_scatter_add(
            var, indices, coef["neg_lr_t"] * grad / (tf.sqrt(denom_slice) + coef["epsilon"])
        )
        return tf.group(var_update, *updated)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "rho": self._serialize_hyperparameter("rho"),
                "momentum": self._serialize_hyperparameter("momentum"),
                "epsilon": self.epsilon,
                "centered": self.centered,
            }
        )
        return config


RMSProp = RMSprop
