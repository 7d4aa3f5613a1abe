"""Variable plumbing shared by the optimizer base: keys, unwrapping, creation.

The optimizer accepts every variable a TensorFlow user trains:

* ``tf.Variable`` (resource variables, ``AutoCastVariable`` of mixed precision);
* distributed variables (``MirroredVariable``, ``CachingVariable`` of
  ParameterServerStrategy, the shards of a ``ShardedVariable``);
* Keras 3 ``keras.Variable`` on the TensorFlow backend, which wraps a
  ``tf.Variable`` in ``._value`` and is not itself a ``tf.Variable``.

``unwrap_variable`` maps the Keras 3 wrapper to the ``tf.Variable`` that the raw
training kernels update; ``var_key`` gives the key under which slots are stored,
identical for a variable and every wrapper of it.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import weakref
from typing import Any, Callable

import numpy as np
import tensorflow as tf


def unwrap_variable(var: Any) -> Any:
    """Returns the ``tf.Variable`` behind ``var`` (Keras 3 variables wrap one)."""
    if isinstance(var, tf.Variable):
        return var
    inner = getattr(var, "_value", None)
    if isinstance(inner, tf.Variable):
        _remember_wrapper(inner, var)
        return inner
    return var


def _remember_wrapper(inner: Any, wrapper: Any) -> None:
    """Links ``inner`` (and its replicas) back to its Keras 3 wrapper.

    Keras 3 keeps a variable's ``constraint`` on the wrapper, not on the
    ``tf.Variable`` that the kernels update; `constraint_of` finds it through
    this (weak) link, also for the replica-local variable of a distributed one.
    """
    if not hasattr(wrapper, "constraint"):
        return
    ref = getattr(inner, "_keras_opt_wrapper", None)
    if ref is not None and ref() is wrapper:
        return
    ref = weakref.ref(wrapper)
    for v in (inner, *getattr(inner, "values", ())):
        try:
            v._keras_opt_wrapper = ref
        except AttributeError:  # objects with __slots__
            pass


def constraint_of(var: Any) -> Any:
    """The constraint of ``var``: its own, else its Keras 3 wrapper's (or None)."""
    constraint = getattr(var, "constraint", None)
    if constraint is not None:
        return constraint
    ref = getattr(var, "_keras_opt_wrapper", None)
    wrapper = ref() if ref is not None else None
    return getattr(wrapper, "constraint", None)


def is_variable(var: Any) -> bool:
    """True for objects the optimizer can update in place."""
    var = unwrap_variable(var)
    if isinstance(var, tf.Variable):
        return True
    # Resource-variable look-alikes (e.g. wrappers that delegate `.handle`).
    return isinstance(getattr(var, "dtype", None), tf.DType) and hasattr(var, "handle")


def var_key(var: Any) -> Any:
    """Key under which the slots of ``var`` are stored.

    Replicas and wrappers of one variable share the key of their container; in
    graph mode the variable's shared name is used, eagerly its unique id.
    """
    var = unwrap_variable(var)
    if isinstance(var, tf.__internal__.distribute.ShardedVariable):
        # An unnamed ShardedVariable reports its first shard's unique id; the
        # container's slot entry (see `_create_slots_for_sharded_variables`)
        # would replace that shard's slots (tf_keras then recurses forever in
        # get_slot). Op names cannot contain "(" or ",": no clash with a shard.
        return "ShardedVariable(" + ",".join(str(var_key(s)) for s in var.variables) + ")"
    if hasattr(var, "_distributed_container"):
        var = var._distributed_container()
    elif (
        isinstance(var, tf.__internal__.CompositeTensor)
        and hasattr(var, "handle")
        and hasattr(var.handle, "_distributed_container")
    ):
        var = var.handle._distributed_container()
    if getattr(var, "_in_graph_mode", False):
        return var._shared_name
    return var._unique_id


def variable_dtype(var: Any) -> tf.DType:
    """The dtype a slot of ``var`` takes: the stored dtype, not an autocast one."""
    var = unwrap_variable(var)
    return tf.as_dtype(getattr(var, "true_dtype", None) or var.dtype)


def variable_name(var: Any) -> str:
    """A readable name for error messages."""
    return str(getattr(var, "name", None) or getattr(var, "path", None) or repr(var)[:80])


_NAMED_INITIALIZERS: dict[str, Callable[..., Any]] = {
    "zeros": tf.zeros_initializer(),
    "ones": tf.ones_initializer(),
}


def get_initializer(initializer: Any) -> Any:
    """Resolves ``"zeros"``/``"ones"`` to initializers; callables pass through."""
    if isinstance(initializer, str):
        try:
            return _NAMED_INITIALIZERS[initializer.lower()]
        except KeyError:
            raise ValueError(
                f"Unknown initializer {initializer!r}: expected one of "
                f"{sorted(_NAMED_INITIALIZERS)} or a callable (shape, dtype) -> tensor."
            ) from None
    return initializer


def make_variable(
    name: str,
    shape: Any = None,
    dtype: Any = tf.float32,
    initializer: Any = None,
    trainable: bool = False,
    synchronization: tf.VariableSynchronization = tf.VariableSynchronization.AUTO,
    aggregation: tf.VariableAggregation = tf.VariableAggregation.NONE,
) -> tf.Variable:
    """Getter for ``Trackable._add_variable_with_custom_getter``.

    ``initializer`` is either a value (Python number, array, tensor) or a
    callable ``(shape, dtype) -> tensor``, which includes the checkpoint
    initializer that Trackable substitutes when a restore is pending.
    """
    initializer = get_initializer(initializer)
    if callable(initializer):
        initial_value = functools.partial(initializer, shape, dtype=dtype)
    else:
        # As tf_keras: a value keeps its own dtype (a hyperparameter set to True
        # is a bool variable, 3 an int32 one, np.float64(0.5) a float64 one; a
        # Python float is float32, so the built-in optimizers' hypers are float32).
        initial_value, dtype = initializer, None
    return tf.Variable(
        initial_value=initial_value,
        name=name,
        dtype=dtype,
        trainable=trainable,
        synchronization=synchronization,
        aggregation=aggregation,
    )


def in_session_graph() -> bool:
    """True while building a TF1 graph (``tf.Graph().as_default()`` or eager disabled).

    Ops built there only take effect when a ``tf.compat.v1.Session`` runs them;
    inside a ``tf.function`` (also one traced in such a graph) they run with the
    function, so this is False there.
    """
    return not tf.compat.v1.executing_eagerly_outside_functions() and not tf.inside_function()


def _default_session(what: str) -> tf.compat.v1.Session:
    session = tf.compat.v1.get_default_session()
    if session is None:
        raise RuntimeError(
            f"Cannot {what} in TF1 graph mode without a default session: keras_opt reads and "
            "writes variables of a tf.compat.v1 graph through tf.compat.v1.get_default_session(). "
            "Call it inside `with tf.compat.v1.Session(graph=...) as session:` or "
            "`with session.as_default():`."
        )
    return session


def _assign_op(var: Any, ndim: int):
    """A cached (placeholder, assign op) pair for ``var``, so repeated sets add no ops."""
    cached = getattr(var, "_keras_opt_assign", None)
    if cached is not None and cached[0].shape.rank == ndim:
        return cached
    with var.graph.as_default():
        placeholder = tf.compat.v1.placeholder(var.dtype.base_dtype, shape=[None] * ndim)
        cached = (placeholder, var.assign(placeholder, read_value=False))
    try:
        var._keras_opt_assign = cached
    except AttributeError:  # objects with __slots__: no caching
        pass
    return cached


def _tf_keras_session(variables: list[Any]) -> Any:
    """The session tf_keras code reads these variables with, if tf_keras is installed.

    That is ``tf_keras.backend.get_session()`` in the variables' graph (it also
    initializes variables not initialized yet, as it does for the user's Keras
    code), so the values agree with what that code sees. tf_keras is imported
    here only, never by ``import keras_opt``.
    """
    if importlib.util.find_spec("tf_keras") is None:
        return None
    # tf_keras's optimizers register their variables with `track_variable`, so
    # that its session initializes them on first use; keras_opt's do the same here.
    from tf_keras.src import backend

    with variables[0].graph.as_default():
        for var in variables:
            backend.track_variable(var)
        return backend.get_session(list(variables))


def batch_get_value(variables: list[Any], python_values: list[Any] | None = None) -> list:
    """Reads variables as numpy arrays, eagerly or through a session.

    In a TF1 graph: the default session; without one, tf_keras's session (as
    tf_keras reads them); without tf_keras, ``python_values`` (the Python
    numbers the variables were created from and never changed since, None
    where unknown) when all are known; otherwise a RuntimeError.
    """
    if not variables:
        return []
    if in_session_graph():
        session = tf.compat.v1.get_default_session() or _tf_keras_session(variables)
        if session is None:
            if python_values is not None and all(v is not None for v in python_values):
                return [
                    np.asarray(value, dtype=var.dtype.base_dtype.as_numpy_dtype)[()]
                    for var, value in zip(variables, python_values)
                ]
            session = _default_session("read variables")
        return session.run(list(variables))
    return [v.numpy() for v in variables]


def batch_set_value(pairs: list[tuple[Any, Any]]) -> None:
    """Assigns numpy values to variables, eagerly or through the default session.

    In a TF1 graph the assignments run at once in the default session (as
    tf_keras's ``backend.batch_set_value`` does), through one placeholder and
    assign op per variable that later calls reuse.
    """
    if in_session_graph():
        session = _default_session("set variables")
        ops, feed = [], {}
        for var, value in pairs:
            value = np.asarray(value, dtype=var.dtype.base_dtype.as_numpy_dtype)
            placeholder, op = _assign_op(var, value.ndim)
            ops.append(op)
            feed[placeholder] = value
        session.run(ops, feed_dict=feed)
        return
    for var, value in pairs:
        var.assign(np.asarray(value, dtype=var.dtype.as_numpy_dtype))


def assign_now(var: Any, value: Any) -> None:
    """Assigns ``value`` (number, array or tensor) to ``var`` so that it takes effect.

    Eagerly and in ``tf.function`` this is ``var.assign``. In a TF1 graph an
    assign op would do nothing until a session runs it, so it is run now in the
    default session (a tensor value is evaluated there).
    """
    if not in_session_graph():
        var.assign(tf.cast(value, var.dtype) if tf.is_tensor(value) else value)
    elif tf.is_tensor(value):
        with var.graph.as_default():
            op = var.assign(tf.cast(value, var.dtype), read_value=False)
        _default_session("set variables").run(op)
    else:
        batch_set_value([(var, value)])


def update_each(distribution: Any, fn: Callable, var_args: Any, scope: Callable | None = None):
    """``fn(var, *args)`` for each ``(var, args)``, under ``distribution.extended.update``.

    Each call runs colocated with its variable (once per replica of a mirrored
    variable), inside ``scope(var)`` if given. Returns the update ops as one
    flat list (in a TF1 graph `update` returns a tuple per variable).
    """
    ops = []
    for var, args in var_args:
        with distribution.extended.colocate_vars_with(var):
            with scope(var) if scope is not None else contextlib.nullcontext():
                update = distribution.extended.update(var, fn, args=tuple(args), group=False)
            ops.extend(tf.nest.flatten(update))
    return ops
