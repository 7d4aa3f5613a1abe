"""Gradient stages of the apply pipeline: checking, aggregation, clipping, dedup.

Every function here takes and returns a list of ``(gradient, variable)`` pairs
(except the helpers at the bottom), so that the optimizer's pipeline is a plain
sequence of such stages.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Sequence

import tensorflow as tf
from tensorflow.python.platform import tf_logging as logging

from keras_opt.optimizer_v2 import variables as variables_lib

GradsAndVars = list[tuple[Any, Any]]
GradientStage = Callable[[GradsAndVars], GradsAndVars]


class InvalidGradientError(tf.errors.InvalidArgumentError, ValueError):
    """A gradient or variable that cannot be applied.

    It is a ``tf.errors.InvalidArgumentError`` (what tf_keras's raw kernels raise
    for the same input, only later and after updating the variables before it)
    and a ``ValueError`` (what tf_keras raises for invalid dtypes in
    ``minimize``), so existing handlers of either keep working.
    """

    # AutoGraph re-raises an OpError from a converted function (a user's step in
    # tf.function) as ``type(error)(node_def, op, message, payloads)`` only when
    # `__init__` takes exactly (node_def, op, message); otherwise it turns it into
    # a StagingError. So: that signature, and ``InvalidGradientError(message)``.
    def __init__(self, node_def=None, op=None, message=None, *args):
        if op is None and message is None:
            node_def, message = None, node_def
        tf.errors.InvalidArgumentError.__init__(self, node_def, op, message, *args)

    def __reduce__(self):
        return (type(self), (self.message,))


class NotAVariableError(TypeError, AttributeError):
    """Something other than a variable was paired with a gradient.

    tf_keras raises an ``AttributeError`` here (from deep inside its slot code);
    this is also a ``TypeError``, the natural type for a wrong argument.
    """

    # AutoGraph keeps an error's type inside tf.function only for classes that
    # use `Exception.__init__` (else it raises a StagingError instead).
    __init__ = Exception.__init__


def _format_pair(grad: Any, var: Any) -> str:
    return f"(gradient={grad!r:.120}, variable={variables_lib.variable_name(var)})"


def as_pairs(grads_and_vars: Iterable[Any]) -> GradsAndVars:
    """Materializes ``grads_and_vars`` (a zip is consumed once) as a list of pairs."""
    pairs = []
    for item in grads_and_vars:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise TypeError(
                "`grads_and_vars` must be an iterable of (gradient, variable) pairs; "
                f"got the element {item!r:.200}."
            )
        pairs.append((item[0], item[1]))
    return pairs


def filter_empty_gradients(grads_and_vars: GradsAndVars) -> GradsAndVars:
    """Drops pairs whose gradient is None, with a warning naming those variables.

    Raises ValueError when the list is empty or when every gradient is None:
    an optimizer step that would silently do nothing is almost always a bug.
    """
    if not grads_and_vars:
        raise ValueError(
            "`apply_gradients` received an empty list of (gradient, variable) pairs: "
            "there is nothing to update. Pass at least one pair."
        )
    kept = [(g, v) for g, v in grads_and_vars if g is not None]
    if not kept:
        names = [variables_lib.variable_name(v) for _, v in grads_and_vars]
        raise ValueError(
            f"No gradients provided for any variable: {names}. Every gradient is None; "
            "check that the loss depends on these variables."
        )
    if len(kept) != len(grads_and_vars):
        missing = [variables_lib.variable_name(v) for g, v in grads_and_vars if g is None]
        logging.warning(
            "Gradients do not exist for variables %s when minimizing the loss. "
            "These variables are not updated.",
            missing,
        )
    return kept


def check_gradients(grads_and_vars: GradsAndVars, valid_dtypes: frozenset) -> GradsAndVars:
    """Validates every pair before anything is updated.

    Checks that each variable is a variable of a trainable float dtype and that
    each gradient has the variable's dtype and a compatible (static) shape.
    Returns the pairs with Keras 3 variables unwrapped to their ``tf.Variable``
    and non-tensor gradients (lists, numpy arrays) converted to tensors.
    """
    checked = []
    for grad, var in grads_and_vars:
        if not variables_lib.is_variable(var):
            raise NotAVariableError(
                "`apply_gradients` can only update variables, but a gradient was paired "
                f"with {type(var).__name__} {var!r:.120}. Pass (gradient, tf.Variable) pairs."
            )
        var = variables_lib.unwrap_variable(var)
        name = variables_lib.variable_name(var)
        var_dtype = var.dtype.base_dtype
        if var_dtype not in valid_dtypes:
            raise InvalidGradientError(
                f"Variable {name} has dtype {var_dtype.name}, which this optimizer cannot "
                f"train; expected one of {sorted(d.name for d in valid_dtypes)}."
            )
        if not isinstance(grad, (tf.Tensor, tf.IndexedSlices)) and not tf.is_tensor(grad):
            grad = tf.convert_to_tensor(grad)
        if grad.dtype.base_dtype != var_dtype:
            raise InvalidGradientError(
                f"Gradient for variable {name} has dtype {grad.dtype.name}, expected the "
                f"variable's dtype {var_dtype.name}."
            )
        if isinstance(grad, tf.IndexedSlices):
            if not grad.values.shape[1:].is_compatible_with(var.shape[1:]):
                raise InvalidGradientError(
                    f"Sparse gradient for variable {name} has row shape "
                    f"{grad.values.shape[1:]}, expected {var.shape[1:]} (variable shape "
                    f"{var.shape})."
                )
        elif not grad.shape.is_compatible_with(var.shape):
            raise InvalidGradientError(
                f"Gradient for variable {name} has shape {grad.shape}, expected the "
                f"variable's shape {var.shape}."
            )
        checked.append((grad, var))
    return checked


def all_reduce_sum_gradients(grads_and_vars: GradsAndVars) -> GradsAndVars:
    """Sums gradients across replicas (the default ``gradient_aggregator``)."""
    grads_and_vars = list(grads_and_vars)
    present = [(g, v) for g, v in grads_and_vars if g is not None]
    if not present:
        return grads_and_vars
    context = tf.distribute.get_replica_context()
    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        reduced = context.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in present])
    else:
        reduced = context.merge_call(_batch_reduce_sum, args=(present,))
    reduced_iter = iter(reduced)
    return [(None if g is None else next(reduced_iter), v) for g, v in grads_and_vars]


def _batch_reduce_sum(distribution, grads_and_vars):
    return distribution.extended.batch_reduce_to(tf.distribute.ReduceOp.SUM, grads_and_vars)


def _refuse_central_storage(option: str) -> None:
    strategy = tf.distribute.get_strategy()
    central = (
        tf.distribute.experimental.CentralStorageStrategy,
        tf.compat.v1.distribute.experimental.CentralStorageStrategy,
    )
    if isinstance(strategy, central):
        raise ValueError(
            f"`{option}` is not supported with CentralStorageStrategy (strategy: {strategy})."
        )


def clip_by_value_stage(clipvalue: float) -> GradientStage:
    """Clips each gradient element to [-clipvalue, clipvalue]."""

    def stage(grads_and_vars: GradsAndVars) -> GradsAndVars:
        _refuse_central_storage("clipvalue")
        return [(tf.clip_by_value(g, -clipvalue, clipvalue), v) for g, v in grads_and_vars]

    return stage


def clip_by_norm_stage(clipnorm: float) -> GradientStage:
    """Rescales each gradient so that its L2 norm is at most ``clipnorm``."""

    def stage(grads_and_vars: GradsAndVars) -> GradsAndVars:
        _refuse_central_storage("clipnorm")
        return [(tf.clip_by_norm(g, clipnorm), v) for g, v in grads_and_vars]

    return stage


def clip_by_global_norm_stage(clipnorm: float) -> GradientStage:
    """Rescales all gradients together so that their global norm is at most ``clipnorm``."""

    def stage(grads_and_vars: GradsAndVars) -> GradsAndVars:
        _refuse_central_storage("global_clipnorm")
        grads, variables = zip(*grads_and_vars)
        clipped, _ = tf.clip_by_global_norm(grads, clipnorm)
        return list(zip(clipped, variables))

    return stage


def deduplicate_indexed_slices(
    values: tf.Tensor, indices: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Sums the rows of ``values`` that share an index.

    Returns ``(summed_values, unique_indices)`` with ``unique_indices`` in order
    of first appearance.
    """
    unique_indices, positions = tf.unique(indices)
    summed = tf.math.unsorted_segment_sum(values, positions, tf.shape(unique_indices)[0])
    return summed, unique_indices


def apply_stages(grads_and_vars: GradsAndVars, stages: Sequence[GradientStage]) -> GradsAndVars:
    """Runs the gradient stages in order."""
    for stage in stages:
        grads_and_vars = stage(grads_and_vars)
    return grads_and_vars
