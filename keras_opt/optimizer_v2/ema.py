"""The EMA stage: exponential moving averages of the variables, as Keras 3's.

With ``use_ema=True`` each trained variable gets a slot ``"ema"`` (a name no
optimizer uses for its own state; checkpoints keep it under
``<var>/.OPTIMIZER_SLOT/<optimizer>/ema``), updated after every call of
``apply_gradients``, after the variables' updates and before ``iterations``
is incremented (the slot starts at the variable's value)::

    m   = 0 if iterations == 0 else ema_momentum      (Keras 3's first-step rule)
    ema = m * ema + (1 - m) * var

and, with ``ema_overwrite_frequency=f``, ``var <- ema`` whenever
``(iterations + 1) % f == 0``. ``iterations`` counts applied steps, so with
gradient accumulation the average is still updated on every call (Keras 3
does the same) and the first-step rule holds for the whole first group of
``gradient_accumulation_steps`` calls.

``finalize_variable_values(var_list)`` copies the averages into the variables
(Keras 3). ``swap_ema_weights(var_list)`` (beyond Keras 3, the use case of
TensorFlow Addons' ``MovingAverage.swap_weights``) is a context manager that
swaps averages and variables on entry and swaps them back on exit, even when
the body raises: evaluate with the averages, keep training with the training
values. Under a ``tf.distribute`` strategy both run in cross-replica context
and swap every replica's copy in place through ``extended.update``.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Iterable, Iterator

import tensorflow as tf

from keras_opt.optimizer_v2 import variables as variables_lib

SLOT = "ema"


def create_slots(opt: Any, var_list: list) -> None:
    """Creates the averages, starting at the variables' values (eagerly; TF1 graphs: 0).

    Keras 3 starts them at zero; its first-step rule overwrites them on the first
    step, so the numbers are the same. Starting at the variable's value makes
    `swap_ema_weights` before any step a no-op, and an average created after a
    checkpoint without one restored the variable starts from the restored value
    rather than from zero.
    """
    for var in var_list:
        initializer = "zeros"
        if tf.executing_eagerly():
            initializer = functools.partial(_current_value, var)
        opt.add_slot(var, SLOT, initializer)


def _current_value(var: Any, shape: Any, dtype: Any) -> Any:
    del shape  # the variable's own
    return tf.cast(tf.identity(var.read_value()), dtype)


def update_averages(opt: Any, distribution: Any, var_list: list) -> list:
    """The EMA update of ``var_list`` (replica-local, under ``extended.update``)."""
    momentum = opt.ema_momentum
    frequency = opt.ema_overwrite_frequency

    def update_one(var):
        average = opt.get_slot(var, SLOT)
        not_first_step = tf.not_equal(opt.iterations, 0)
        m = tf.cast(not_first_step, var.dtype) * momentum
        new = average.assign(m * average + (1 - m) * var)
        if not frequency:
            return new
        overwrite = tf.equal((opt.iterations + 1) % frequency, 0)
        with tf.control_dependencies([new]):
            return tf.cond(
                overwrite,
                lambda: tf.group(var.assign(average, read_value=False)),
                tf.no_op,
            )

    return variables_lib.update_each(distribution, update_one, [(var, ()) for var in var_list])


def _averages(opt: Any, var_list: Iterable[Any]) -> list[tuple[Any, Any]]:
    if not opt.use_ema:
        raise ValueError(
            f"Optimizer {opt._name} was built with use_ema=False: it keeps no moving averages "
            "to swap in. Create it with use_ema=True."
        )
    pairs = []
    for var in tf.nest.flatten(list(var_list)):
        var = variables_lib.unwrap_variable(var)
        slots = opt._slots.get(variables_lib.var_key(var), {})
        if SLOT not in slots:
            raise ValueError(
                f"Variable {variables_lib.variable_name(var)} has no moving average in optimizer "
                f"{opt._name}: it was never trained by it (call `build` or `apply_gradients` "
                "with it first)."
            )
        pairs.append((var, opt.get_slot(var, SLOT)))
    return pairs


def _cross_replica_strategy(opt: Any) -> Any:
    if not tf.distribute.has_strategy() or tf.distribute.in_cross_replica_context():
        return tf.distribute.get_strategy()
    raise RuntimeError(
        "Swapping or finalizing moving averages must run in cross-replica context (outside "
        "`strategy.run`), so that every replica's copy changes together."
    )


def finalize(opt: Any, var_list: Iterable[Any]) -> None:
    """``var <- ema`` for each variable of ``var_list``."""
    if not opt.use_ema:
        return
    with opt._distribution_strategy_scope():
        strategy = _cross_replica_strategy(opt)
        for var, average in _averages(opt, var_list):
            strategy.extended.update(
                var, lambda v, a: v.assign(a, read_value=False), args=(average,), group=False
            )


def _swap(strategy: Any, pairs: list) -> None:
    def swap_one(var, average):
        training_value = tf.identity(var.read_value())
        with tf.control_dependencies([training_value]):
            moved = var.assign(average.read_value(), read_value=False)
        with tf.control_dependencies([moved]):
            return average.assign(training_value, read_value=False)

    for var, average in pairs:
        strategy.extended.update(var, swap_one, args=(average,), group=False)


class EmaMixin:
    """``finalize_variable_values`` and ``swap_ema_weights`` of OptimizerV2."""

    def finalize_variable_values(self, var_list: Iterable[Any]) -> None:
        """Copies the moving averages into ``var_list`` (no-op without ``use_ema``)."""
        finalize(self, var_list)

    @contextlib.contextmanager
    def swap_ema_weights(self, var_list: Iterable[Any]) -> Iterator[None]:
        """Swaps the moving averages into ``var_list`` for the body of a ``with``.

        On exit (also on an exception) the training values go back into the
        variables and the averages back into their slots, unchanged. Swapping is
        exact (values are moved, not recomputed), so it can be nested with
        training steps only outside the ``with``.
        """
        with self._distribution_strategy_scope():
            strategy = _cross_replica_strategy(self)
            pairs = _averages(self, var_list)
            _swap(strategy, pairs)
        try:
            yield
        finally:
            with self._distribution_strategy_scope():
                _swap(tf.distribute.get_strategy(), pairs)
