r"""LazyAdam: Adam whose sparse updates touch only the rows seen (TensorFlow Addons' rule).

Dense gradients: exactly `Adam` (the fused ``ResourceApplyAdam`` kernel).
Sparse gradients (``IndexedSlices``, repeated indices summed first), with ``i``
the rows seen, ``t`` the step number and
``lr_t = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)``::

    m[i]    <- beta_1 * m[i] + (1 - beta_1) * g[i]
    v[i]    <- beta_2 * v[i] + (1 - beta_2) * g[i]^2
    vhat[i] <- max(vhat[i], v[i])                                  (amsgrad only)
    var[i]  <- var[i] - lr_t * m[i] / (sqrt(v[i] or vhat[i]) + epsilon)

Other rows of ``m``, ``v`` and ``var`` are left alone, so a step costs in
proportion to the rows seen, not to the table (tf_keras's `Adam` decays all of
``m`` and ``v`` on every sparse step). This is TensorFlow Addons'
``tfa.optimizers.LazyAdam`` update, for embedding tables.

Why a class and not ``Adam(lazy=True)``: `Adam`'s signature and ``get_config``
stay exactly tf_keras legacy's; TensorFlow Addons users find the class they had
(``tfa.optimizers.LazyAdam`` -> ``keras_opt.LazyAdam``); and the variant is
still one flag, not a copy (`LazyAdam` only overrides the sparse update). Slots
and their names are Adam's (``"m"``, ``"v"``, ``"vhat"``), so checkpoints move
between `Adam` and `LazyAdam` both ways.
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import adam, modern


class LazyAdam(adam.Adam):
    r"""Adam with lazy (rows-only) sparse updates. Slots: ``"m"``, ``"v"``, ``"vhat"``.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      beta_1: decay of the first-moment estimate. Defaults to 0.9.
      beta_2: decay of the second-moment estimate. Defaults to 0.999.
      epsilon: added to the denominator. Defaults to 1e-7.
      amsgrad: use the running maximum of ``v`` (rows seen only). Defaults to False.
      name: prefix of the optimizer's variables. Defaults to ``"LazyAdam"``.
      **kwargs: the base arguments (``clipnorm``, ``weight_decay``, ...).
    """

    def __init__(
        self,
        learning_rate=0.001,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        name="LazyAdam",
        **kwargs,
    ):
        super().__init__(learning_rate, beta_1, beta_2, epsilon, amsgrad, name, **kwargs)

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        coef = self._coefficients(var, apply_state)
        m, v = self.get_slot(var, "m"), self.get_slot(var, "v")
        m_t = coef["beta_1_t"] * tf.gather(m, indices) + coef["one_minus_beta_1_t"] * grad
        v_t = coef["beta_2_t"] * tf.gather(v, indices) + coef["one_minus_beta_2_t"] * tf.square(
            grad
        )
        updates = [modern.scatter_update(m, indices, m_t), modern.scatter_update(v, indices, v_t)]
        denominator = v_t
        if self.amsgrad:
            vhat = self.get_slot(var, "vhat")
            denominator = tf.maximum(tf.gather(vhat, indices), v_t)
            updates.append(modern.scatter_update(vhat, indices, denominator))
        step = coef["lr"] * m_t / (tf.sqrt(denominator) + coef["epsilon"])
        updates.append(modern.scatter_sub(var, indices, step))
        return tf.group(*updates)
