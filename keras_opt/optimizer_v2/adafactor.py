r"""Adafactor (Shazeer & Stern, 2018): factored second moments.

With ``t`` the step number (``iterations + 1``), ``lr`` the learning rate and
``rms(x) = sqrt(mean(x^2))`` over all entries::

    rho     <- min(lr, 1 / sqrt(t))
    alpha   <- max(epsilon_2, rms(var)) * rho
    beta    <- 1 - t^beta_2_decay
    G       <- g^2 + epsilon_1
    rank >= 2 (the last two axes factored; slots "r" and "c"):
      r     <- beta * r + (1 - beta) * mean(G, axis=-1)          shape var.shape[:-1]
      c     <- beta * c + (1 - beta) * mean(G, axis=-2)          shape var.shape[:-2] + [n]
      v     =  (r / mean(r, axis=-1))[..., :, None] * c[..., None, :]   (not stored)
    rank < 2 (slot "v", shape of var):
      v     <- beta * v + (1 - beta) * G
    u       <- g / sqrt(v)
    var     <- var - alpha * u / max(1, rms(u) / clip_threshold)

Slots: ``"r"`` and ``"c"`` for variables of rank >= 2 (no full-size second
moment is kept: that is the point of factoring; Keras 3 also stores the
recomposed ``v``, which it never reads back), ``"v"`` for rank 0 and 1.
Keras 3's numbers (``keras.optimizers.Adafactor``). As in Keras 3,
``relative_step=True`` clamps a constant learning rate to ``1/sqrt(t)``, which
``rho`` does anyway: the flag changes no number.

Sparse gradients (``IndexedSlices``) are summed into a dense gradient of that
variable and the dense step runs: the factored moments are means over rows and
columns, and ``rms(u)`` and ``rms(var)`` span the whole variable.
"""

from __future__ import annotations

import tensorflow as tf

from keras_opt.optimizer_v2 import modern, optimizer_v2


class Adafactor(modern.DensifySparseMixin, optimizer_v2.OptimizerV2):
    r"""Adafactor optimizer. Slots: ``"r"``, ``"c"`` (rank >= 2) or ``"v"`` (rank < 2).

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      beta_2_decay: exponent of the second-moment decay ``1 - t^beta_2_decay``.
        Defaults to -0.8.
      epsilon_1: added to the squared gradient. Defaults to 1e-30.
      epsilon_2: lower bound of the parameter scale ``rms(var)``. Defaults to 1e-3.
      clip_threshold: the update is scaled down to at most this RMS. Defaults to 1.0.
      relative_step: clamp a constant learning rate to ``1/sqrt(t)``. Defaults to True.
      name: prefix of the optimizer's variables. Defaults to ``"Adafactor"``.
      **kwargs: the base arguments (``weight_decay``, ``clipnorm``, ...).
    """

    _HAS_AGGREGATE_GRAD = True

    def __init__(
        self,
        learning_rate=0.001,
        beta_2_decay=-0.8,
        epsilon_1=1e-30,
        epsilon_2=1e-3,
        clip_threshold=1.0,
        relative_step=True,
        name="Adafactor",
        **kwargs,
    ):
        modern.check_number("clip_threshold", clip_threshold, 0.0, inclusive=False)
        modern.check_number("epsilon_1", epsilon_1, 0.0)
        modern.check_number("epsilon_2", epsilon_2, 0.0)
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self.beta_2_decay = beta_2_decay
        self.epsilon_1 = epsilon_1
        self.epsilon_2 = epsilon_2
        self.clip_threshold = clip_threshold
        self.relative_step = relative_step

    def _create_slots(self, var_list):
        for var in var_list:
            shape = tf.TensorShape(var.shape)
            if shape.rank >= 2:
                self.add_slot(var, "r", shape=shape[:-1])
                self.add_slot(var, "c", shape=shape[:-2].concatenate(shape[-1:]))
            else:
                self.add_slot(var, "v")

    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        coef = apply_state[(var_device, var_dtype)]
        local_step = tf.cast(self.iterations + 1, var_dtype)
        # `relative_step` would clamp lr to 1/sqrt(t) first: the same minimum.
        rho = tf.minimum(coef["lr_t"], 1.0 / tf.sqrt(local_step))
        beta = 1.0 - tf.pow(local_step, tf.convert_to_tensor(self.beta_2_decay, var_dtype))
        coef.update(
            rho=rho,
            beta=beta,
            one_minus_beta=1.0 - beta,
            epsilon_1=tf.convert_to_tensor(self.epsilon_1, var_dtype),
            epsilon_2=tf.convert_to_tensor(self.epsilon_2, var_dtype),
            clip_threshold=tf.convert_to_tensor(self.clip_threshold, var_dtype),
        )

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        alpha = tf.maximum(coef["epsilon_2"], modern.rms(var)) * coef["rho"]
        grad_sq = tf.square(grad) + coef["epsilon_1"]
        beta, one_minus_beta = coef["beta"], coef["one_minus_beta"]
        if var.shape.rank >= 2:
            r, c = self.get_slot(var, "r"), self.get_slot(var, "c")
            r_t = r.assign(
                beta * r + one_minus_beta * tf.reduce_mean(grad_sq, axis=-1),
                use_locking=self._use_locking,
            )
            c_t = c.assign(
                beta * c + one_minus_beta * tf.reduce_mean(grad_sq, axis=-2),
                use_locking=self._use_locking,
            )
            r_norm = r_t / tf.reduce_mean(r_t, axis=-1, keepdims=True)
            v_t = tf.expand_dims(r_norm, -1) * tf.expand_dims(c_t, -2)
        else:
            v = self.get_slot(var, "v")
            v_t = v.assign(beta * v + one_minus_beta * grad_sq, use_locking=self._use_locking)
        u = grad / tf.sqrt(v_t)
        u_hat = u / tf.maximum(tf.ones([], var.dtype), modern.rms(u) / coef["clip_threshold"])
        return var.assign_sub(alpha * u_hat, use_locking=self._use_locking, read_value=False)

    def get_config(self):
        return modern.keras3_config(
            self,
            super().get_config(),
            {
                "beta_2_decay": self.beta_2_decay,
                "epsilon_1": self.epsilon_1,
                "epsilon_2": self.epsilon_2,
                "clip_threshold": self.clip_threshold,
                "relative_step": self.relative_step,
            },
        )
