"""The weight decay stage: decoupled weight decay, as Keras 3's base optimizer.

With ``weight_decay=wd`` every variable not excluded is decayed right before
its update, after clipping, with the learning rate of this step::

    var <- var - var * wd * lr          (lr: the decayed learning rate ``lr_t``)

(Keras 3 computes the same product, ``(var * wd) * lr``, with the same
rounding.) Sparse gradients (``tf.IndexedSlices``) decay only the rows they
hold, each once however often its index repeats: the legacy sparse update
touches only those rows, and decaying the others would make a sparse step cost
as much as a dense one. Keras 3 densifies sparse gradients, so all rows decay
on every step there; the two agree whenever every row gets a gradient.

``exclude_from_weight_decay(var_list=None, var_names=None)`` behaves as Keras
3's: each call replaces the previous exclusions; ``var_names`` are regular
expressions searched in the variable's name (here the ``tf.Variable`` name,
e.g. ``"dense/kernel:0"``; Keras 3 searches a Keras variable's short name,
``"kernel"``); and, as in Keras 3, it may be called after training started:
eagerly it takes effect at the next step, while a ``tf.function`` already
traced keeps the choice it was traced with (the choice is Python, made at
trace time) until it is traced again.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

import tensorflow as tf

from keras_opt.optimizer_v2 import base_arguments
from keras_opt.optimizer_v2 import variables as variables_lib


def _container(var: Any) -> Any:
    var = variables_lib.unwrap_variable(var)
    if hasattr(var, "_distributed_container"):
        return var._distributed_container()
    handle = getattr(var, "handle", None)
    if handle is not None and hasattr(handle, "_distributed_container"):
        return handle._distributed_container()
    return var


class WeightDecayMixin:
    """OptimizerV2's ``weight_decay``, ``exclude_from_weight_decay`` and per-variable choice."""

    @property
    def weight_decay(self):
        """The weight decay stage's rate (None: the stage is off).

        A subclass that makes ``weight_decay`` a hyperparameter of its own
        (tf_keras style, e.g. TensorFlow Addons' DecoupledWeightDecayExtension
        with ``_set_hyper("weight_decay", ...)``) reads and sets that
        hyperparameter here, as in tf_keras; the base stage stays off for it.
        """
        hyper = self.__dict__.get("_hyper")
        if hyper and "weight_decay" in hyper:
            return self._get_hyper("weight_decay")
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value):
        self._weight_decay = base_arguments.check_weight_decay(value)

    def exclude_from_weight_decay(
        self, var_list: Iterable[Any] | None = None, var_names: Iterable[str] | None = None
    ) -> None:
        """Excludes variables from weight decay (replaces earlier exclusions).

        Args:
          var_list: variables not to decay.
          var_names: regular expressions; a variable whose name contains a match
            (``re.search``) is not decayed, e.g. ``["bias", "norm"]``.
        """
        keys = set()
        if var_list:
            if isinstance(var_list, (str, bytes)) or not isinstance(var_list, Iterable):
                raise TypeError(
                    "`var_list` of `exclude_from_weight_decay` must be a list of variables. "
                    f"Received: {var_list!r:.120}."
                )
            for var in var_list:
                if not variables_lib.is_variable(var):
                    raise TypeError(
                        "`var_list` of `exclude_from_weight_decay` must contain variables "
                        f"only; received {type(var).__name__} {var!r:.80}. Use `var_names` "
                        "to exclude variables by name."
                    )
                keys.add(variables_lib.var_key(var))
        pattern = None
        if var_names:
            if isinstance(var_names, (str, bytes)) or not isinstance(var_names, Iterable):
                raise TypeError(
                    "`var_names` of `exclude_from_weight_decay` must be a list of strings, "
                    f"e.g. ['bias']. Received: {var_names!r:.120}."
                )
            names = list(var_names)
            for name in names:
                if not isinstance(name, str):
                    raise TypeError(
                        "`var_names` of `exclude_from_weight_decay` must contain strings "
                        f"only; received {type(name).__name__} {name!r:.80}. Use "
                        "`var_list` to exclude variables themselves."
                    )
            if names:
                pattern = re.compile("|".join(sorted(set(names))))
        self._exclude_from_weight_decay = keys
        self._exclude_from_weight_decay_pattern = pattern
        self._exclude_from_weight_decay_cache = {}

    def _use_weight_decay(self, var: Any) -> bool:
        """Whether ``var`` (or a replica of it) is decayed."""
        cache = self.__dict__.setdefault("_exclude_from_weight_decay_cache", {})
        key = variables_lib.var_key(var)
        decision = cache.get(key)
        if decision is None:
            pattern = self.__dict__.get("_exclude_from_weight_decay_pattern")
            decision = key not in self.__dict__.get("_exclude_from_weight_decay", ())
            if decision and pattern is not None:
                decision = pattern.search(_container(var).name) is None
            cache[key] = decision
        return decision


def decay(opt: Any, var: Any, grad: Any, apply_state: Any) -> Any:
    """Decays the (replica-local) ``var`` for this step; None when it is not decayed."""
    if not opt._use_weight_decay(var):
        return None
    dtype = var.dtype.base_dtype
    lr = opt._coefficients(var, apply_state)["lr_t"]
    wd = tf.cast(opt._weight_decay, dtype)
    if isinstance(grad, tf.IndexedSlices):
        rows, _ = tf.unique(grad.indices)
        values = tf.gather(var, rows) * wd * lr
        return tf.raw_ops.ResourceScatterSub(resource=var.handle, indices=rows, updates=values)
    return var.assign_sub(var * wd * lr, read_value=False)


def decay_all(opt: Any, distribution: Any, grads_and_vars: list, apply_state: Any, scope) -> list:
    """The decay stage of every (gradient, variable) pair; returns its ops."""

    def decay_one(var, grad):
        op = decay(opt, var, grad, apply_state)
        return tf.no_op() if op is None else op

    ops = variables_lib.update_each(
        distribution, decay_one, [(var, (grad,)) for grad, var in grads_and_vars], scope
    )
    return [op for op in ops if op is not None]
