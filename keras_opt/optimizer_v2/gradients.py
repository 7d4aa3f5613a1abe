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


# Why the error classes below look the way they do: a `tf.function` runs the
# traced Python code under AutoGraph, and AutoGraph re-creates every exception
# raised there (to append the trace of the user's code to the message) from the
# original's type. It can do that for an `OpError` subclass whose ``__init__``
# takes exactly ``(node_def, op, message)`` (called with the payloads as a 4th
# argument) and for a class whose ``__init__`` is ``Exception.__init__``; any
# other class becomes an ``AutoGraph StagingError``, so the user's
# ``except ValueError`` never fires. Each class here is rebuildable that way,
# and tests/test_bad_input.py raises every one inside a tf.function.


class InvalidGradientError(tf.errors.InvalidArgumentError, ValueError, TypeError):
    """A gradient or variable that cannot be applied (wrong shape or dtype).

    For the same input tf_keras raises, depending on the optimizer and on
    eager or graph execution, ``tf.errors.InvalidArgumentError`` (its kernels,
    eagerly, after updating the variables before the bad one), ``ValueError``
    (shape inference in a graph) or ``TypeError`` (dtype checks in a graph, or
    an integer variable). This error is all three, so existing handlers of any
    of them keep working.

    ``InvalidGradientError(message)`` is the short form; the ``(node_def, op,
    message, *payloads)`` form is ``OpError``'s, which AutoGraph uses.
    """

    def __init__(self, node_def=None, op=None, message=None, *args):
        if message is None and op is None and isinstance(node_def, str):
            node_def, message = None, node_def
        tf.errors.InvalidArgumentError.__init__(self, node_def, op, message, *args)

    def __reduce__(self):
        return (type(self), (None, None, self.message))


class NotAVariableError(NotImplementedError, TypeError, AttributeError):
    """Something other than a variable was paired with a gradient.

    tf_keras raises ``NotImplementedError`` ("Updating a `Tensor` is not
    implemented") or, for optimizers with slots, an ``AttributeError`` from deep
    inside its slot code; this is both, and a ``TypeError``, the natural type
    for a wrong argument.
    """

    __init__ = Exception.__init__  # rebuildable by AutoGraph (see above)


class NotAPairError(
    tf.errors.OperatorNotAllowedInGraphError, NotImplementedError, ValueError, AttributeError
):
    """An element of ``grads_and_vars`` is not a ``(gradient, variable)`` pair.

    tf_keras unpacks each element: a tensor or variable in place of a pair
    raises ``NotImplementedError``, ``AttributeError`` or ``TypeError`` eagerly
    and ``OperatorNotAllowedInGraphError`` (iterating a symbolic tensor) in a
    graph; a tuple of the wrong length raises ``ValueError``. This is all of them.
    """

    __init__ = Exception.__init__  # rebuildable by AutoGraph (see above)


def _format_pair(grad: Any, var: Any) -> str:
    return f"(gradient={grad!r:.120}, variable={variables_lib.variable_name(var)})"


def as_pairs(grads_and_vars: Iterable[Any]) -> GradsAndVars:
    """Materializes ``grads_and_vars`` (a zip is consumed once) as a list of pairs."""
    pairs = []
    for item in grads_and_vars:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise NotAPairError(
                "`grads_and_vars` must be an iterable of (gradient, variable) pairs; "
                f"got the element {item!r:.200}."
            )
        pairs.append((item[0], item[1]))
    return pairs


def filter_empty_gradients(grads_and_vars: GradsAndVars) -> GradsAndVars:
    """Drops pairs whose gradient is None, with a warning naming those variables.

    An empty list stays empty (tf_keras's ``apply_gradients([])`` is a no-op,
    e.g. for a model whose layers are all frozen). Raises ValueError when every
    gradient is None, naming the variables.
    """
    if not grads_and_vars:
        logging.warning(
            "`apply_gradients` received no (gradient, variable) pairs; nothing is updated "
            "and `iterations` does not change."
        )
        return []
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
        if isinstance(grad, tf.IndexedSlices):
            grad = _indexed_slices_of_tensors(grad)
        elif not tf.is_tensor(grad):
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


def _indexed_slices_of_tensors(grad: tf.IndexedSlices) -> tf.IndexedSlices:
    """``grad`` with numpy (or list) values, indices and dense shape made tensors.

    tf_keras accepts ``tf.IndexedSlices(numpy_values, numpy_indices)``; its
    ``dtype`` is then a numpy dtype, which the checks and kernels cannot use.
    """
    parts = [grad.values, grad.indices, grad.dense_shape]
    if all(p is None or tf.is_tensor(p) for p in parts):
        return grad
    values, indices, dense_shape = (
        p if p is None or tf.is_tensor(p) else tf.convert_to_tensor(p) for p in parts
    )
    return tf.IndexedSlices(values, indices, dense_shape)


def all_reduce_sum_gradients(grads_and_vars: GradsAndVars) -> GradsAndVars:
    """Sums gradients across replicas (the default ``gradient_aggregator``)."""
    grads_and_vars = list(grads_and_vars)
    present = [(g, v) for g, v in grads_and_vars if g is not None]
    if not present:
        return grads_and_vars
    if not tf.distribute.has_strategy():
        # One replica: the sum is the gradient itself. The default strategy's
        # all_reduce would add an IdentityN over every gradient and variable (a
        # custom_gradient), run op by op when eager: on 1000 variables ~12 ms of
        # an eager step, ~0.2 ms of a traced one.
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
