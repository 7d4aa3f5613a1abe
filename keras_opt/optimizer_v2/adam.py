r"""Adam and AMSGrad.

With ``t`` the step number (``iterations + 1``) and ``lr`` the learning rate::

    m    <- beta_1 * m + (1 - beta_1) * g
    v    <- beta_2 * v + (1 - beta_2) * g^2
    vhat <- max(vhat, v)                                   (amsgrad only)
    lr_t <- lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    var  <- var - lr_t * m / (sqrt(v or vhat) + epsilon)

Slots, created in this order for all variables: ``"m"``, ``"v"``, then
``"vhat"`` with ``amsgrad=True``. Dense updates run ``ResourceApplyAdam`` /
``ResourceApplyAdamWithAmsgrad`` (plain ops under XLA, which has no AMSGrad kernel:
see `xla_fallbacks`); sparse updates decay ``m`` and ``v`` in full
and scatter-add the new gradient rows, as tf_keras does (TF has no sparse Adam
kernel). ``NonFusedAdam`` is the same optimizer written in plain TensorFlow ops
(``fused=False``), which XLA can compile.
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import optimizer_v2, xla, xla_fallbacks

_EPSILON = 1e-7


class Adam(optimizer_v2.OptimizerV2):
    r"""Adam (Kingma & Ba, 2014), optionally AMSGrad. Slots: ``"m"``, ``"v"``, ``"vhat"``.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      beta_1: decay of the first-moment estimate. Defaults to 0.9.
      beta_2: decay of the second-moment estimate. Defaults to 0.999.
      epsilon: added to the denominator ("epsilon hat" of the paper). Defaults to 1e-7.
      amsgrad: use the running maximum of ``v`` (Reddi et al., 2018). Defaults to False.
      name: prefix of the optimizer's variables. Defaults to ``"Adam"``.
      **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm``, ``lr``, ``decay``.
    """

    _HAS_AGGREGATE_GRAD = True
    _fused = True

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        name="Adam",
        **kwargs,
    ):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)
        self.epsilon = epsilon or _EPSILON
        self.amsgrad = amsgrad

    def _create_slots(self, var_list):
        for slot in ("m", "v", "vhat") if self.amsgrad else ("m", "v"):
            for var in var_list:
                self.add_slot(var, slot)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        coef = apply_state[(var_device, var_dtype)]
        local_step = tf.cast(self.iterations + 1, var_dtype)
        beta_1_t = tf.identity(self._get_hyper("beta_1", var_dtype))
        beta_2_t = tf.identity(self._get_hyper("beta_2", var_dtype))
        beta_1_power = tf.pow(beta_1_t, local_step)
        beta_2_power = tf.pow(beta_2_t, local_step)
        coef.update(
            lr=coef["lr_t"] * (tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)),
            epsilon=tf.convert_to_tensor(self.epsilon, var_dtype),
            beta_1_t=beta_1_t,
            beta_1_power=beta_1_power,
            one_minus_beta_1_t=1 - beta_1_t,
            beta_2_t=beta_2_t,
            beta_2_power=beta_2_power,
            one_minus_beta_2_t=1 - beta_2_t,
        )

    def set_weights(self, weights):
        # Accepts weights saved with amsgrad=True (3n + 1 of them) into amsgrad=False.
        num_vars = (len(self.weights) - 1) // 2
        if len(weights) == 3 * num_vars + 1:
            weights = weights[: len(self.weights)]
        super().set_weights(weights)

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        if not self._fused:
            return self._apply_dense_plain_ops(grad, var, coef)
        args = dict(
            var=var.handle,
            m=self.get_slot(var, "m").handle,
            v=self.get_slot(var, "v").handle,
            beta1_power=coef["beta_1_power"],
            beta2_power=coef["beta_2_power"],
            lr=coef["lr_t"],
            beta1=coef["beta_1_t"],
            beta2=coef["beta_2_t"],
            epsilon=coef["epsilon"],
            grad=grad,
            use_locking=self._use_locking,
        )
        if not self.amsgrad:
            return tf.raw_ops.ResourceApplyAdam(**args)
        if xla.in_xla_context():  # No XLA kernel for ResourceApplyAdamWithAmsgrad.
            return xla_fallbacks.dense_update(
                xla_fallbacks.adam_amsgrad,
                [var, self.get_slot(var, "m"), self.get_slot(var, "v"), self.get_slot(var, "vhat")],
                grad,
                beta1_power=coef["beta_1_power"],
                beta2_power=coef["beta_2_power"],
                lr=coef["lr_t"],
                beta1=coef["beta_1_t"],
                beta2=coef["beta_2_t"],
                epsilon=coef["epsilon"],
            )
        return tf.raw_ops.ResourceApplyAdamWithAmsgrad(
            vhat=self.get_slot(var, "vhat").handle, **args
        )

    def _apply_dense_plain_ops(self, grad, var, coef):
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        alpha = coef["lr_t"] * tf.sqrt(1 - coef["beta_2_power"]) / (1 - coef["beta_1_power"])
        m_t = m.assign_add((grad - m) * (1 - coef["beta_1_t"]))
        v_t = v.assign_add((tf.square(grad) - v) * (1 - coef["beta_2_t"]))
        if self.amsgrad:
            v_t = self.get_slot(var, "vhat").assign(tf.maximum(self.get_slot(var, "vhat"), v_t))
        return var.assign_sub(m_t * alpha / (tf.sqrt(v_t) + coef["epsilon"]), read_value=False)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        # Ops are created in tf_keras's order (see `_decayed_scatter_add`).
        coef = self._coefficients(var, apply_state)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        m_scaled_g_values = grad * coef["one_minus_beta_1_t"]
        m_t = self._decayed_scatter_add(m, coef["beta_1_t"], indices, m_scaled_g_values)
        v_scaled_g_values = grad * grad * coef["one_minus_beta_2_t"]
        v_t = self._decayed_scatter_add(v, coef["beta_2_t"], indices, v_scaled_g_values)
        updated = [m_t, v_t]
        denominator = v_t
        if self.amsgrad:
            v_hat = self.get_slot(var, "vhat")
            v_hat_t = tf.maximum(v_hat, v_t)
            with tf.control_dependencies([v_hat_t]):
                v_hat_t = tf.compat.v1.assign(v_hat, v_hat_t, use_locking=self._use_locking)
            updated.append(v_hat_t)
            denominator = v_hat_t
        v_sqrt = tf.sqrt(denominator)
        var_update = tf.compat.v1.assign_sub(
            var, coef["lr"] * m_t / (v_sqrt + coef["epsilon"]), use_locking=self._use_locking
        )
        return tf.group(var_update, *updated)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "beta_1": self._serialize_hyperparameter("beta_1"),
                "beta_2": self._serialize_hyperparameter("beta_2"),
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
            }
        )
        return config


class NonFusedAdam(Adam):
    r"""Adam computed with plain TensorFlow ops instead of the fused kernel.

    Same arguments, slots, checkpoint keys and (up to float rounding) numbers as
    `Adam`; its dense update can be compiled by XLA.
    """

    _fused = False
