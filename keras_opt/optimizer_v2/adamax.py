r"""Adamax: Adam with the infinity norm.

With ``t = iterations + 1``::

    m   <- beta_1 * m + (1 - beta_1) * g
    v   <- max(beta_2 * v, |g|)
    var <- var - lr / (1 - beta_1^t) * m / (v + epsilon)

Slots, in this order for all variables: ``"m"``, ``"v"``. Dense updates run
``ResourceApplyAdaMax`` (plain ops for bfloat16, which has no kernel); sparse
updates gather, update and scatter the rows.
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import optimizer_v2


class Adamax(optimizer_v2.OptimizerV2):
    r"""Adamax (Kingma & Ba, 2014, section 7). Slots: ``"m"``, ``"v"``.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      beta_1: decay of the first-moment estimate. Defaults to 0.9.
      beta_2: decay of the weighted infinity norm. Defaults to 0.999.
      epsilon: added to the denominator. Defaults to 1e-7.
      name: prefix of the optimizer's variables. Defaults to ``"Adamax"``.
      **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm``, ``lr``, ``decay``.
    """

    _HAS_AGGREGATE_GRAD = True

    def __init__(
        self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name="Adamax", **kwargs
    ):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)
        self.epsilon = epsilon or 1e-7

    def _create_slots(self, var_list):
        for slot in ("m", "v"):
            for var in var_list:
                self.add_slot(var, slot)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        coef = apply_state[(var_device, var_dtype)]
        local_step = tf.cast(self.iterations + 1, var_dtype)
        beta_1_t = tf.identity(self._get_hyper("beta_1", var_dtype))
        beta_2_t = tf.identity(self._get_hyper("beta_2", var_dtype))
        beta_1_power = tf.pow(beta_1_t, local_step)
        coef.update(
            neg_scaled_lr=-coef["lr_t"] / (1 - beta_1_power),
            epsilon=tf.convert_to_tensor(self.epsilon, var_dtype),
            beta_1_t=beta_1_t,
            beta_1_power=beta_1_power,
            one_minus_beta_1_t=1 - beta_1_t,
            beta_2_t=beta_2_t,
            zero=tf.zeros((), dtype=tf.int64),
        )

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        if var.dtype.base_dtype == tf.bfloat16:
            # TF registers no bfloat16 AdaMax kernel (tf_keras fails there).
            m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
            m_t = m.assign(m * coef["beta_1_t"] + grad * coef["one_minus_beta_1_t"])
            v_t = v.assign(tf.maximum(v * coef["beta_2_t"], tf.abs(grad)))
            return var.assign_add(coef["neg_scaled_lr"] * m_t / (v_t + coef["epsilon"]))
        return tf.raw_ops.ResourceApplyAdaMax(
            var=var.handle,
            m=self.get_slot(var, "m").handle,
            v=self.get_slot(var, "v").handle,
            beta1_power=coef["beta_1_power"],
            lr=coef["lr_t"],
            beta1=coef["beta_1_t"],
            beta2=coef["beta_2_t"],
            epsilon=coef["epsilon"],
            grad=grad,
            use_locking=self._use_locking,
        )

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        coef = self._coefficients(var, apply_state)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        m_slice = tf.gather(m, indices, axis=coef["zero"])
        m_t_slice = m_slice * coef["beta_1_t"] + grad * coef["one_minus_beta_1_t"]
        with tf.control_dependencies([m_t_slice]):
            m_t = self._resource_scatter_update(m, indices, m_t_slice)
        v_slice = tf.gather(v, indices, axis=coef["zero"])
        v_t_slice = tf.maximum(v_slice * coef["beta_2_t"], tf.abs(grad))
        with tf.control_dependencies([v_t_slice]):
            v_t = self._resource_scatter_update(v, indices, v_t_slice)
        var_slice = coef["neg_scaled_lr"] * (m_t_slice / (v_t_slice + coef["epsilon"]))
        with tf.control_dependencies([var_slice]):
            var_update = self._resource_scatter_add(var, indices, var_slice)
        return tf.group(var_update, m_t, v_t)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "beta_1": self._serialize_hyperparameter("beta_1"),
                "beta_2": self._serialize_hyperparameter("beta_2"),
                "epsilon": self.epsilon,
            }
        )
        return config
