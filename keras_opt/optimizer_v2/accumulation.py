"""The gradient accumulation stage, as Keras 3's ``gradient_accumulation_steps``.

With ``gradient_accumulation_steps=k`` every call of ``apply_gradients`` is a
micro-step, counted by the optimizer weight ``grad_accum_iter`` (int64,
checkpointed). Each variable gets a slot ``"grad_accum"`` (a name no optimizer
uses for its own state; Adagrad's ``"accumulator"`` is its squared-gradient
sum). On micro-steps ``1 .. k-1`` of each group the (aggregated) gradient is
added to the slot and nothing else changes. On the k-th::

    grad = (grad + grad_accum) / k      (Keras 3's expression and rounding)
    then clipping, gradient transformers, weight decay, the update; grad_accum <- 0

``iterations`` counts applied steps only, i.e. Keras 3's ``iterations``
(its raw counter divided by k), which is what the optimizers' bias
corrections and the EMA read. Learning-rate schedules are evaluated at the
micro-step count, as Keras 3 evaluates them at its raw counter; the legacy
``decay`` argument keeps using ``iterations``.

Clipping sees the averaged gradient, as in Keras 3 (tf_keras legacy has no
accumulation). Under a ``tf.distribute`` strategy gradients are all-reduced on
every micro-step (as without accumulation) and the slots hold the same sum on
every replica, so a checkpoint taken mid-group resumes exactly; the choice
between accumulating and applying is one ``tf.cond`` in cross-replica
context, where no ``merge_call`` can be crossed, and the averaging and
clipping of the applied step run per replica with ``call_for_each_replica``
(on the no-merge-call path, e.g. in Keras 3's ``fit``, the stage already runs
per replica and averages directly).

Sparse gradients (``tf.IndexedSlices``) are added into the dense slot with
``ResourceScatterAdd``: an accumulating micro-step costs O(rows in the
gradient), not O(rows of the variable), and the gradient is never densified.
The applied step uses the dense sum (``(grad + grad_accum) / k`` with the
gradient's rows scattered in), so it runs the dense update, as Keras 3 does
(Keras 3 densifies every sparse gradient on every step).

Only the variables of the current call are accumulated, applied and reset: a
variable whose gradient is None on the k-th call keeps its partial sum for the
next group (Keras 3 resets every accumulator on the k-th call, dropping it).
"""

from __future__ import annotations

from typing import Any, Callable

import tensorflow as tf

from keras_opt.optimizer_v2 import variables as variables_lib

SLOT = "grad_accum"
COUNTER = "grad_accum_iter"


def create_weights(opt: Any) -> None:
    """Creates the micro-step counter (once)."""
    if opt.__dict__.get("_grad_accum_iter") is None:
        with tf.init_scope(), opt._distribution_strategy_scope():
            counter = opt.add_weight(
                COUNTER,
                shape=[],
                dtype=tf.int64,
                trainable=False,
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        opt._grad_accum_iter = counter
        opt._weights.append(counter)


def create_slots(opt: Any, var_list: list) -> None:
    for var in var_list:
        opt.add_slot(var, SLOT)


def _average(opt: Any, grads_and_vars: list) -> list:
    """Replica-local: ``(grad + grad_accum) / k``, then the optimizer's gradient stages."""
    steps = opt.gradient_accumulation_steps
    averaged = []
    for grad, var in grads_and_vars:
        accumulated = opt.get_slot(var, SLOT).read_value()
        if isinstance(grad, tf.IndexedSlices):
            total = tf.tensor_scatter_nd_add(
                accumulated, tf.expand_dims(grad.indices, -1), grad.values
            )
        else:
            total = grad + accumulated
        averaged.append((total / steps, var))
    return opt._transform_gradients(averaged)


def _accumulate_one(opt: Any, var: Any, grad: Any) -> Any:
    slot = opt.get_slot(var, SLOT)
    if isinstance(grad, tf.IndexedSlices):
        return tf.raw_ops.ResourceScatterAdd(
            resource=slot.handle, indices=grad.indices, updates=grad.values
        )
    return slot.assign_add(grad, read_value=False)


def _reset_one(opt: Any, var: Any) -> Any:
    slot = opt.get_slot(var, SLOT)
    # tf.zeros of the (static) shape: zeros_like would read the slot first.
    shape = slot.shape if slot.shape.is_fully_defined() else tf.shape(slot)
    return slot.assign(tf.zeros(shape, slot.dtype), read_value=False)


def apply_or_accumulate(
    opt: Any,
    distribution: Any,
    grads_and_vars: list,
    update_all: Callable[[list], list],
) -> tuple[Any, Any]:
    """Cross-replica: accumulate, or average + update + reset on every k-th call.

    ``update_all(grads_and_vars)`` runs the per-variable updates and returns
    their ops. Returns ``(op, is_apply_step)``.
    """
    steps = opt.gradient_accumulation_steps
    is_apply_step = tf.equal((opt._grad_accum_iter + 1) % steps, 0)

    def per_variable(fn, pairs):
        return variables_lib.update_each(distribution, fn, [(v, (g,)) for g, v in pairs])

    def apply_step():
        if tf.distribute.in_cross_replica_context():
            averaged = distribution.extended.call_for_each_replica(
                lambda pairs: _average(opt, pairs), args=(grads_and_vars,)
            )
        else:  # the no-merge-call path (Keras 3's fit, all-GPU MirroredStrategy)
            averaged = _average(opt, grads_and_vars)
        updates = tf.nest.flatten(update_all(averaged))
        with tf.control_dependencies(updates):
            resets = per_variable(lambda var, grad: _reset_one(opt, var), grads_and_vars)
        return tf.group(resets)

    def accumulate_step():
        accumulate_one = lambda var, grad: _accumulate_one(opt, var, grad)  # noqa: E731
        return tf.group(per_variable(accumulate_one, grads_and_vars))

    return tf.cond(is_apply_step, apply_step, accumulate_step), is_apply_step


class AccumulationMixin:
    """The step learning-rate schedules see (Keras 3: its raw counter)."""

    def _schedule_step(self):
        if self.gradient_accumulation_steps:
            create_weights(self)
            return self._grad_accum_iter
        return self.iterations
