r"""Lion (Chen et al., 2023): the sign of an interpolated momentum.

With ``lr`` the learning rate and ``m`` the slot ``"momentum"``::

    var <- var - lr * sign(beta_1 * m + (1 - beta_1) * g)
    m   <- beta_2 * m + (1 - beta_2) * g

Keras 3's numbers (``keras.optimizers.Lion``); decoupled weight decay and the
other Keras 3 base arguments come from the base (``weight_decay`` defaults to
None, as in Keras 3).

Sparse gradients (``IndexedSlices``) update only the rows seen, ``var`` and
``m`` alike: each row's step depends only on its own gradient and momentum.
Rows without a gradient are left as they are (the dense step with a zero
gradient row would still move them by ``lr * sign(beta_1 * m)`` and decay their
``m``): the lazy rule, as for embedding tables.
"""

from __future__ import annotations

import numbers

import tensorflow as tf

from keras_opt.optimizer_v2 import modern, optimizer_v2


class Lion(optimizer_v2.OptimizerV2):
    r"""Lion optimizer. Slot: ``"momentum"``.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      beta_1: interpolation between the momentum and the gradient for the
        step's sign, in (0, 1]. Defaults to 0.9.
      beta_2: decay of the momentum. Defaults to 0.99.
      name: prefix of the optimizer's variables. Defaults to ``"Lion"``.
      **kwargs: the base arguments (``weight_decay``, ``clipnorm``,
        ``clipvalue``, ``global_clipnorm``, ``use_ema``, ...).
    """

    _HAS_AGGREGATE_GRAD = True

    def __init__(self, learning_rate=0.001, beta_1=0.9, beta_2=0.99, name="Lion", **kwargs):
        if isinstance(beta_1, numbers.Number) and not 0 < beta_1 <= 1:
            raise ValueError(
                "Argument `beta_1` must be in the (0, 1] range. Otherwise, the optimizer "
                f"degenerates to SignSGD. Received: beta_1={beta_1}."
            )
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)

    def _create_slots(self, var_list):
        for var in var_list:
            self.add_slot(var, "momentum")

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        beta_1 = tf.identity(self._get_hyper("beta_1", var_dtype))
        beta_2 = tf.identity(self._get_hyper("beta_2", var_dtype))
        apply_state[(var_device, var_dtype)].update(
            beta_1=beta_1,
            one_minus_beta_1=1.0 - beta_1,
            beta_2=beta_2,
            one_minus_beta_2=1.0 - beta_2,
        )

    def _new_values(self, m, grad, coef):
        step = coef["lr_t"] * tf.sign(m * coef["beta_1"] + grad * coef["one_minus_beta_1"])
        return step, m * coef["beta_2"] + grad * coef["one_minus_beta_2"]

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        m = self.get_slot(var, "momentum")
        step, m_t = self._new_values(m.read_value(), grad, coef)
        return tf.group(
            var.assign_sub(step, use_locking=self._use_locking, read_value=False),
            m.assign(m_t, use_locking=self._use_locking, read_value=False),
        )

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        coef = self._coefficients(var, apply_state)
        m = self.get_slot(var, "momentum")
        step, m_t = self._new_values(tf.gather(m, indices), grad, coef)
        return tf.group(
            modern.scatter_sub(var, indices, step), modern.scatter_update(m, indices, m_t)
        )

    def get_config(self):
        return modern.keras3_config(
            self,
            super().get_config(),
            {
                "beta_1": self._serialize_hyperparameter("beta_1"),
                "beta_2": self._serialize_hyperparameter("beta_2"),
            },
        )
