r"""Nadam: Adam with Nesterov momentum (Dozat, 2015), tf_keras legacy variant.

With ``t = iterations + 1`` and the momentum schedule
``mu_t = beta_1 * (1 - 0.5 * 0.96^(decay * t))`` (``decay`` is the legacy
``schedule_decay``, 0.004), the running product ``mu_prod_t = prod(mu_1..mu_t)``
kept in the ``momentum_cache`` weight::

    m     <- beta_1 * m + (1 - beta_1) * g
    v     <- beta_2 * v + (1 - beta_2) * g^2
    m_bar <- (1 - mu_t) * g / (1 - mu_prod_t) + mu_{t+1} * m / (1 - mu_prod_t * mu_{t+1})
    var   <- var - lr * m_bar / (sqrt(v / (1 - beta_2^t)) + epsilon)

Weights: ``momentum_cache`` (scalar, in ``weights`` after ``iter``), then the
slots ``"m"`` and ``"v"`` in this order for all variables. TF has no Nadam
kernel: updates are composed of plain ops as in tf_keras.
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import hyperparameters, optimizer_v2


class Nadam(optimizer_v2.OptimizerV2):
    r"""Nadam. Weight ``momentum_cache``; slots ``"m"``, ``"v"``.

    Args:
      learning_rate: float, tensor or callable (not a schedule, as in tf_keras).
        Defaults to 0.001.
      beta_1: decay of the first-moment estimate. Defaults to 0.9.
      beta_2: decay of the second-moment estimate. Defaults to 0.999.
      epsilon: added to the denominator. Defaults to 1e-7.
      name: prefix of the optimizer's variables. Defaults to ``"Nadam"``.
      **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm``, ``lr``, and
        ``schedule_decay`` (momentum schedule decay, default 0.004).
    """

    _HAS_AGGREGATE_GRAD = True

    def __init__(
        self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name="Nadam", **kwargs
    ):
        # The momentum schedule decay is stored as the legacy `decay`.
        kwargs["decay"] = kwargs.pop("schedule_decay", 0.004)
        learning_rate = kwargs.get("lr", learning_rate)
        if hyperparameters.is_schedule(learning_rate):
            raise ValueError(
                "The Nadam optimizer does not support learning-rate schedules as the "
                f"learning rate (got {type(learning_rate).__name__})."
            )
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", learning_rate)
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)
        self.epsilon = epsilon or 1e-7
        self._m_cache = None

    def _create_slots(self, var_list):
        if self._m_cache is None:
            self._m_cache = self.add_weight(
                "momentum_cache",
                shape=[],
                dtype=var_list[0].dtype.base_dtype,
                initializer="ones",
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            self._weights.append(self._m_cache)
        for slot in ("m", "v"):
            for var in var_list:
                self.add_slot(var, slot)

    def _prepare(self, var_list):
        # Read the cache once, before any (device, dtype) updates it.
        self._m_cache_read = tf.identity(self._m_cache)
        return super()._prepare(var_list)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        lr_t = tf.identity(self._get_hyper("learning_rate", var_dtype))
        beta_1_t = tf.identity(self._get_hyper("beta_1", var_dtype))
        beta_2_t = tf.identity(self._get_hyper("beta_2", var_dtype))
        local_step = tf.cast(self.iterations + 1, var_dtype)
        next_step = tf.cast(self.iterations + 2, var_dtype)
        decay_base = tf.cast(0.96, var_dtype)
        m_t = beta_1_t * (1.0 - 0.5 * tf.pow(decay_base, self._initial_decay * local_step))
        m_t_1 = beta_1_t * (1.0 - 0.5 * tf.pow(decay_base, self._initial_decay * next_step))
        m_schedule_new = tf.cast(self._m_cache_read, var_dtype) * m_t
        if var_dtype is self._m_cache.dtype:
            m_schedule_new = tf.identity(
                tf.compat.v1.assign(self._m_cache, m_schedule_new, use_locking=self._use_locking)
            )
        m_schedule_next = m_schedule_new * m_t_1
        apply_state[(var_device, var_dtype)] = dict(
            lr_t=lr_t,
            neg_lr_t=-lr_t,
            epsilon=tf.convert_to_tensor(self.epsilon, var_dtype),
            beta_1_t=beta_1_t,
            beta_2_t=beta_2_t,
            m_t=m_t,
            m_t_1=m_t_1,
            one_minus_beta_1_t=1 - beta_1_t,
            one_minus_beta_2_t=1 - beta_2_t,
            one_minus_m_t=1.0 - m_t,
            m_schedule_new=m_schedule_new,  # for the fused kernel (keras_opt.kernels)
            one_minus_m_schedule_new=1.0 - m_schedule_new,
            one_minus_m_schedule_next=1.0 - m_schedule_next,
            v_t_prime_denominator=1.0 - tf.pow(beta_2_t, local_step),
        )

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        g_prime = grad / coef["one_minus_m_schedule_new"]
        m_t = coef["beta_1_t"] * m + coef["one_minus_beta_1_t"] * grad
        m_t = tf.compat.v1.assign(m, m_t, use_locking=self._use_locking)
        m_t_prime = m_t / coef["one_minus_m_schedule_next"]
        v_t = coef["beta_2_t"] * v + coef["one_minus_beta_2_t"] * tf.square(grad)
        v_t = tf.compat.v1.assign(v, v_t, use_locking=self._use_locking)
        v_t_prime = v_t / coef["v_t_prime_denominator"]
        m_t_bar = coef["one_minus_m_t"] * g_prime + coef["m_t_1"] * m_t_prime
        var_t = var - coef["lr_t"] * m_t_bar / (tf.sqrt(v_t_prime) + coef["epsilon"])
        return tf.compat.v1.assign(var, var_t, use_locking=self._use_locking).op

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        coef = self._coefficients(var, apply_state)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        # Ops are created in tf_keras's order (see `_decayed_scatter_add`).
        g_prime = grad / coef["one_minus_m_schedule_new"]
        m_scaled_g_values = grad * coef["one_minus_beta_1_t"]
        m_t = self._decayed_scatter_add(m, coef["beta_1_t"], indices, m_scaled_g_values)
        m_t_slice = tf.gather(m_t, indices)
        m_t_prime = m_t_slice / coef["one_minus_m_schedule_next"]
        m_t_bar = coef["one_minus_m_t"] * g_prime + coef["m_t_1"] * m_t_prime
        v_scaled_g_values = grad * grad * coef["one_minus_beta_2_t"]
        v_t = self._decayed_scatter_add(v, coef["beta_2_t"], indices, v_scaled_g_values)
        v_t_slice = tf.gather(v_t, indices)
        v_t_prime = v_t_slice / coef["v_t_prime_denominator"]
        denominator = tf.sqrt(v_t_prime) + coef["epsilon"]
        var_update = self._resource_scatter_add(
            var, indices, coef["neg_lr_t"] * m_t_bar / denominator
        )
        return tf.group(var_update, m_t_bar, v_t)

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
