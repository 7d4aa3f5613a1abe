r"""Muon: Newton–Schulz orthogonalised momentum for matrices, AdamW for the rest.

A variable takes the **AdamW step** when it is not 2-D, or when
``exclude_embeddings`` and its name contains ``"embedding"`` (any case), or
when one of the regular expressions in ``exclude_layers`` matches its name
(``re.search``). Its name is Keras 3's ``variable.path`` where the variable has
one (``keras.Variable``), else its ``name`` without the ``":0"`` suffix
(``tf.Variable``, tf_keras layer variables such as ``"dense/kernel"``): unlike
Keras 3, Muon trains plain TensorFlow variables.

**Muon step** (2-D ``var`` of shape ``[p, q]``, slot ``"momentum"``)::

    m   <- m + (g + (momentum - 1) * m)                 (= momentum * m + g)
    G   <- g + momentum * m      if nesterov,    else m
    X   <- G^T if p > q else G;   X <- X / (||X||_F + 1e-7)
    ns_steps times:  A <- X X^T;  X <- muon_a X + (muon_b A + muon_c A A) X
    O   <- X^T if p > q else X
    var <- var - lr * O * sqrt(max(p, q)) * rms_rate     (no last factors if rms_rate is None)

**AdamW step** (slots ``"momentum"`` and ``"velocity"``), with
``lr_a = lr * adam_lr_ratio`` and ``t`` the step number::

    m   <- m + (1 - adam_beta_1) * (g - m)
    v   <- v + (1 - adam_beta_2) * (g^2 - v)
    var <- var - lr_a * sqrt(1 - adam_beta_2^t) / (1 - adam_beta_1^t) * m / (sqrt(v) + epsilon)

**Weight decay** (decoupled, before the step, with the learning rate ``lr``
not scaled by ``adam_lr_ratio``): ``var <- var - var * wd * lr`` with
``wd = adam_weight_decay`` for AdamW variables and ``wd = weight_decay`` for
Muon ones (skipped where the rate is None, or for variables excluded with
``exclude_from_weight_decay``), as Keras 3's ``Muon`` does — also when
``weight_decay`` is None.

Slots: ``"momentum"`` for every variable, ``"velocity"`` for AdamW variables
only. Keras 3's numbers (``keras.optimizers.Muon``).

Sparse gradients (``IndexedSlices``) are summed into a dense gradient of that
variable and the dense step runs: the Newton–Schulz iteration multiplies whole
matrices, and the AdamW step decays ``m`` and ``v`` in every row as Keras 3's
dense step does.
"""

from __future__ import annotations

import numbers
import re

import tensorflow as tf

from keras_opt.optimizer_v2 import modern, optimizer_v2
from keras_opt.optimizer_v2 import variables as variables_lib


def variable_path(var) -> str:
    """Keras 3's ``path`` where the variable has one, else its name without ``":0"``."""
    path = getattr(var, "path", None)
    if isinstance(path, str) and path:
        return path
    name = str(getattr(var, "name", ""))
    return name[:-2] if name.endswith(":0") else name


def _check_patterns(exclude_layers) -> list[str]:
    """``exclude_layers`` as a list of regular expressions (None: none)."""
    if exclude_layers is None:
        return []
    if isinstance(exclude_layers, (str, bytes)) or not isinstance(exclude_layers, (list, tuple)):
        raise TypeError(
            "`exclude_layers` must be a list of regular expressions (strings), e.g. "
            f"['attention']. Received: exclude_layers={exclude_layers!r:.120}."
        )
    for pattern in exclude_layers:
        if not isinstance(pattern, str):
            raise TypeError(
                "`exclude_layers` must contain strings (regular expressions) only. "
                f"Received: {pattern!r:.80} of type {type(pattern).__name__} in "
                f"exclude_layers={exclude_layers!r:.120}."
            )
        re.compile(pattern)  # a malformed expression fails here, not at the first step
    return list(exclude_layers)


class Muon(modern.DensifySparseMixin, optimizer_v2.OptimizerV2):
    r"""Muon optimizer. Slots: ``"momentum"``, and ``"velocity"`` for AdamW variables.

    Args:
      learning_rate: float, tensor, callable or schedule. Defaults to 0.001.
      adam_beta_1, adam_beta_2: Adam's betas for the AdamW step. Defaults 0.9, 0.999.
      adam_weight_decay: decoupled weight decay of AdamW variables. Defaults to 0.004.
      epsilon: Adam's epsilon. Defaults to 1e-7.
      weight_decay: decoupled weight decay of Muon variables. Defaults to 0.004.
      exclude_layers: regular expressions; matching variables take the AdamW step.
      exclude_embeddings: variables named ``*embedding*`` take the AdamW step.
        Defaults to True.
      muon_a, muon_b, muon_c: Newton–Schulz coefficients. Defaults 3.4445, -4.7750, 2.0315.
      adam_lr_ratio: learning-rate factor of the AdamW step. Defaults to 1.
      momentum: momentum of the Muon step. Defaults to 0.95.
      ns_steps: Newton–Schulz iterations. Defaults to 5.
      nesterov: Nesterov momentum for the Muon step. Defaults to True.
      rms_rate: update scale ``sqrt(max(p, q)) * rms_rate`` (Moonlight); None: none.
        Defaults to 0.2.
      name: prefix of the optimizer's variables. Defaults to ``"Muon"``.
      **kwargs: the other base arguments (``clipnorm``, ``use_ema``, ...).
    """

    _HAS_AGGREGATE_GRAD = True

    def __init__(
        self,
        learning_rate=0.001,
        adam_beta_1=0.9,
        adam_beta_2=0.999,
        adam_weight_decay=0.004,
        epsilon=1e-7,
        weight_decay=0.004,
        name="Muon",
        exclude_layers=None,
        exclude_embeddings=True,
        muon_a=3.4445,
        muon_b=-4.7750,
        muon_c=2.0315,
        adam_lr_ratio=1,
        momentum=0.95,
        ns_steps=5,
        nesterov=True,
        rms_rate=0.2,
        **kwargs,
    ):
        if adam_weight_decay is not None:
            modern.check_number("adam_weight_decay", adam_weight_decay, 0.0)
        exclude_layers = _check_patterns(exclude_layers)
        if not isinstance(ns_steps, numbers.Integral) or isinstance(ns_steps, bool) or ns_steps < 0:
            raise ValueError(
                f"`ns_steps` must be an integer >= 0. Received: ns_steps={ns_steps!r}."
            )
        super().__init__(name, weight_decay=weight_decay, **kwargs)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self.adam_beta_1 = adam_beta_1
        self.adam_beta_2 = adam_beta_2
        self.adam_weight_decay = adam_weight_decay
        self.epsilon = epsilon
        self.exclude_layers = exclude_layers
        self.exclude_embeddings = exclude_embeddings
        self.muon_a = muon_a
        self.muon_b = muon_b
        self.muon_c = muon_c
        self.adam_lr_ratio = adam_lr_ratio
        self.momentum = momentum
        self.ns_steps = int(ns_steps)
        self.nesterov = nesterov
        self.rms_rate = rms_rate
        # var_key -> name seen in `apply_gradients` / `build` (before Keras 3
        # variables are unwrapped to their tf.Variable, which has no `.path`).
        self._variable_paths: dict = {}

    # ------------------------------------------------------------ which step
    def _note_paths(self, var_list):
        for var in var_list:
            if var is not None and variables_lib.is_variable(var):
                self._variable_paths.setdefault(variables_lib.var_key(var), variable_path(var))

    def apply_gradients(self, grads_and_vars, name=None, experimental_aggregate_gradients=True):
        grads_and_vars = list(grads_and_vars)
        self._note_paths(pair[1] for pair in grads_and_vars if isinstance(pair, (tuple, list)))
        return super().apply_gradients(grads_and_vars, name, experimental_aggregate_gradients)

    def build(self, var_list):
        self._note_paths(tf.nest.flatten(var_list))
        return super().build(var_list)

    def uses_adamw(self, var) -> bool:
        """Whether ``var`` takes the AdamW step (see the module docstring)."""
        if len(var.shape) != 2:
            return True
        path = self._variable_paths.get(variables_lib.var_key(var)) or variable_path(var)
        if self.exclude_embeddings and "embedding" in path.lower():
            return True
        return any(re.search(pattern, path) for pattern in self.exclude_layers)

    def _create_slots(self, var_list):
        for var in var_list:
            self.add_slot(var, "momentum")
        for var in var_list:
            if self.uses_adamw(var):
                self.add_slot(var, "velocity")

    def weight_decay_rate(self, var):
        """The decoupled weight-decay rate of ``var``: ``adam_weight_decay`` or ``weight_decay``."""
        return self.adam_weight_decay if self.uses_adamw(var) else self.weight_decay

    def _apply_one(self, var, grad, apply_state):
        # Keras 3's Muon decay: a rate per variable, applied even when
        # `weight_decay` is None (the base stage only knows `weight_decay`).
        if isinstance(grad, tf.IndexedSlices):
            grad = modern.densify(grad.values, grad.indices, var)
        rate = self.weight_decay_rate(var)
        if rate is None or not self._use_weight_decay(var):
            return self._apply_update(var, grad, apply_state)
        lr = self._coefficients(var, apply_state)["lr_t"]
        decayed = var.assign_sub(var * tf.cast(rate, var.dtype.base_dtype) * lr, read_value=False)
        with tf.control_dependencies([decayed]):
            return self._apply_update(var, grad, apply_state)

    # ---------------------------------------------------------------- steps
    def _prepare_local(self, var_device, var_dtype, apply_state):
        super()._prepare_local(var_device, var_dtype, apply_state)
        coef = apply_state[(var_device, var_dtype)]
        local_step = tf.cast(self.iterations + 1, var_dtype)
        beta_1_power = tf.pow(tf.convert_to_tensor(self.adam_beta_1, var_dtype), local_step)
        beta_2_power = tf.pow(tf.convert_to_tensor(self.adam_beta_2, var_dtype), local_step)
        adam_lr = coef["lr_t"] * tf.convert_to_tensor(self.adam_lr_ratio, var_dtype)
        coef["adam_alpha"] = adam_lr * tf.sqrt(1 - beta_2_power) / (1 - beta_1_power)

    def _resource_apply_dense(self, grad, var, apply_state=None):
        coef = self._coefficients(var, apply_state)
        if self.uses_adamw(var):
            return self._adamw_step(grad, var, coef)
        return self._muon_step(grad, var, coef)

    def _adamw_step(self, grad, var, coef):
        m, v = self.get_slot(var, "momentum"), self.get_slot(var, "velocity")
        m_t = m.assign_add((grad - m) * (1 - self.adam_beta_1), use_locking=self._use_locking)
        v_t = v.assign_add(
            (tf.square(grad) - v) * (1 - self.adam_beta_2), use_locking=self._use_locking
        )
        step = m_t * coef["adam_alpha"] / (tf.sqrt(v_t) + self.epsilon)
        return var.assign_sub(step, use_locking=self._use_locking, read_value=False)

    def _muon_step(self, grad, var, coef):
        m = self.get_slot(var, "momentum")
        m_t = m.assign_add(grad + m * (self.momentum - 1), use_locking=self._use_locking)
        direction = grad + self.momentum * m_t if self.nesterov else m_t
        step = coef["lr_t"] * self.newton_schulz(direction)
        if self.rms_rate is not None:
            rows, cols = var.shape
            step = step * (max(rows, cols) ** 0.5) * self.rms_rate
        return var.assign_sub(step, use_locking=self._use_locking, read_value=False)

    def newton_schulz(self, x: tf.Tensor) -> tf.Tensor:
        """The quintic Newton–Schulz iteration of a 2-D ``x`` (≈ U V^T of its SVD)."""
        transpose = x.shape[0] > x.shape[1]
        if transpose:
            x = tf.transpose(x)
        x = x / (tf.norm(x) + 1e-7)
        for _ in range(self.ns_steps):
            a = tf.matmul(x, x, transpose_b=True)
            b = self.muon_b * a + tf.matmul(self.muon_c * a, a)
            x = self.muon_a * x + tf.matmul(b, x)
        return tf.transpose(x) if transpose else x

    def get_config(self):
        return modern.keras3_config(
            self,
            super().get_config(),
            {
                "adam_beta_1": self.adam_beta_1,
                "adam_beta_2": self.adam_beta_2,
                "epsilon": self.epsilon,
                "exclude_layers": list(self.exclude_layers),
                "muon_a": self.muon_a,
                "muon_b": self.muon_b,
                "muon_c": self.muon_c,
                "adam_lr_ratio": self.adam_lr_ratio,
                "momentum": self.momentum,
                "ns_steps": self.ns_steps,
                "nesterov": self.nesterov,
                "exclude_embeddings": self.exclude_embeddings,
                "adam_weight_decay": self.adam_weight_decay,
                "rms_rate": self.rms_rate,
            },
        )
