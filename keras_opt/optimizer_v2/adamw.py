r"""AdamW (Loshchilov & Hutter, 2019): Adam with decoupled weight decay.

With ``t`` the step number, ``lr`` the learning rate and ``wd`` the weight decay::

    var  <- var - var * wd * lr                 (the base's weight decay stage)
    m    <- beta_1 * m + (1 - beta_1) * g
    v    <- beta_2 * v + (1 - beta_2) * g^2
    vhat <- max(vhat, v)                                   (amsgrad only)
    var  <- var - lr * sqrt(1 - beta_2^t) / (1 - beta_1^t) * m / (sqrt(v or vhat) + epsilon)

Slots: Adam's (``"m"``, ``"v"``, ``"vhat"`` with amsgrad), with Adam's
hyperparameter variables, so an `Adam` checkpoint restores into `AdamW` (and
back). The update is `Adam`'s: dense gradients run the fused
``ResourceApplyAdam`` kernel after the decay stage; sparse gradients take
Adam's sparse path (``m`` and ``v`` decay in full), and the decay stage decays
the rows seen only (see weight_decay.py; Keras 3 densifies and decays every
row). ``exclude_from_weight_decay`` works as in Keras 3. Keras 3's numbers
(``keras.optimizers.AdamW``), Keras 3's constructor and ``get_config`` keys.
"""

from __future__ import annotations

from keras_opt.optimizer_v2 import adam, modern, optimizer_v2


class AdamW(adam.Adam):
    r"""AdamW optimizer. Slots: ``"m"``, ``"v"``, ``"vhat"`` (amsgrad).

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      weight_decay: decoupled weight decay (a number >= 0). Defaults to 0.004.
      beta_1: decay of the first-moment estimate. Defaults to 0.9.
      beta_2: decay of the second-moment estimate. Defaults to 0.999.
      epsilon: added to the denominator. Defaults to 1e-7.
      amsgrad: use the running maximum of ``v``. Defaults to False.
      name: prefix of the optimizer's variables. Defaults to ``"AdamW"``.
      **kwargs: the other base arguments (``clipnorm``, ``use_ema``, ...).
    """

    def __init__(
        self,
        learning_rate=0.001,
        weight_decay=0.004,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-7,
        amsgrad=False,
        name="AdamW",
        **kwargs,
    ):
        if weight_decay is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
        super().__init__(
            learning_rate,
            beta_1,
            beta_2,
            epsilon,
            amsgrad,
            name,
            weight_decay=weight_decay,
            **kwargs,
        )

    def get_config(self):
        return modern.keras3_config(
            self,
            optimizer_v2.OptimizerV2.get_config(self),
            {
                "beta_1": self._serialize_hyperparameter("beta_1"),
                "beta_2": self._serialize_hyperparameter("beta_2"),
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
            },
        )
