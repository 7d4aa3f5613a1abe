r"""Lamb (You et al., 2019): Adam moments scaled by a layer-wise trust ratio.

With ``t`` the step number (``iterations + 1``) and ``lr`` the learning rate::

    m      <- m + (1 - beta_1) * (g - m)
    v      <- v + (1 - beta_2) * (g^2 - v)
    u      <- (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
    ratio  <- ||var|| / ||u||     if ||var|| > 0 and ||u|| > 0,   else 1
    var    <- var - ratio * lr * u

(``||.||`` is the Frobenius norm of the whole variable.) Slots: ``"m"``, ``"v"``.
Keras 3's numbers (``keras.optimizers.Lamb``); the base arguments
(``weight_decay``, ...) come from the base, ``weight_decay`` defaulting to None.

Sparse gradients (``IndexedSlices``) are summed into a dense gradient of that
variable and the dense step runs: the trust ratio needs the norms of the whole
variable and the whole update, and ``m`` and ``v`` decay in every row.
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import modern, optimizer_v2


class Lamb(modern.DensifySparseMixin, optimizer_v2.OptimizerV2):
    r"""Lamb optimizer. Slots: ``"m"``, ``"v"``.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      beta_1: decay of the first-moment estimate. Defaults to 0.9.
      beta_2: decay of the second-moment estimate. Defaults to 0.999.
      epsilon: added to the denominator. Defaults to 1e-7.
      name: prefix of the optimizer's variables. Defaults to ``"Lamb"``.
      **kwargs: the base arguments (``weight_decay``, ``clipnorm``, ...).
    """

    _HAS_AGGREGATE_GRAD = True

    def __init__(
        self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, name="Lamb", **kwargs
    ):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)
        self.epsilon = epsilon

    def _create_slots(self, var_list):
        for slot in ("m", "v"):
            for var in var_list:
                self.add_slot(var, slot)

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        local_step = tf.cast(self.iterations + 1, var_dtype)
        beta_1 = tf.identity(self._get_hyper("beta_1", var_dtype))
        beta_2 = tf.identity(self._get_hyper("beta_2", var_dtype))
        apply_state[(var_device, var_dtype)].update(
            one_minus_beta_1=1.0 - beta_1,
            one_minus_beta_2=1.0 - beta_2,
            one_minus_beta_1_power=1.0 - tf.pow(beta_1, local_step),
            one_minus_beta_2_power=1.0 - tf.pow(beta_2, local_step),
            epsilon=tf.convert_to_tensor(self.epsilon, var_dtype),
        )

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        m_t = m.assign_add((grad - m) * coef["one_minus_beta_1"], use_locking=self._use_locking)
        v_t = v.assign_add(
            (tf.square(grad) - v) * coef["one_minus_beta_2"], use_locking=self._use_locking
        )
        update = (m_t / coef["one_minus_beta_1_power"]) / (
            tf.sqrt(v_t / coef["one_minus_beta_2_power"]) + coef["epsilon"]
        )
        w_norm = tf.sqrt(tf.reduce_sum(tf.square(var)))
        u_norm = tf.sqrt(tf.reduce_sum(tf.square(update)))
        one = tf.ones([], var.dtype)
        ratio = tf.where(w_norm > 0, tf.where(u_norm > 0, w_norm / u_norm, one), one)
        return var.assign_sub(
            ratio * coef["lr_t"] * update, use_locking=self._use_locking, read_value=False
        )

    def get_config(self):
        return modern.keras3_config(
            self,
            super().get_config(),
            {
                "beta_1": self._serialize_hyperparameter("beta_1"),
                "beta_2": self._serialize_hyperparameter("beta_2"),
                "epsilon": self.epsilon,
            },
        )
