"""Hyperparameter values: schedules, callables, tensors and numbers.

A hyperparameter set with ``_set_hyper`` is one of

* a Python number: becomes a scalar ``tf.Variable`` named after the
  hyperparameter when the optimizer creates its weights, so it can be changed
  later (also inside a ``tf.function``) without retracing;
* a tensor or variable: used as given;
* a callable taking no argument: called each time the value is read;
* a learning-rate schedule: called with the step count.

Schedules are ``keras_opt.schedules.LearningRateSchedule`` objects, or any
foreign schedule object (tf_keras's, Keras 3's) that is callable with a step and
has ``get_config``.

``HyperparameterMixin`` holds the optimizer methods that store, create, read,
serialize and expose hyperparameters (``opt.learning_rate = 0.05``).
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import tensorflow as tf

from keras_opt.optimizer_v2 import variables as variables_lib


def _own_schedule_class():
    try:
        from keras_opt.schedules import LearningRateSchedule
    except ImportError:  # the schedules package is optional for the base
        return None
    return LearningRateSchedule


def is_schedule(value: Any) -> bool:
    """True for learning-rate schedule objects (ours or foreign)."""
    own = _own_schedule_class()
    if own is not None and isinstance(value, own):
        return True
    if inspect.isroutine(value) or isinstance(value, (tf.Tensor, tf.Variable, type)):
        return False
    return callable(value) and callable(getattr(value, "get_config", None))


def is_replaceable(value: Any) -> bool:
    """True when setting a new value replaces ``value`` instead of assigning into it."""
    return callable(value) or is_schedule(value) or isinstance(value, (tf.Tensor, numbers.Number))


def serialize_schedule(schedule: Any) -> dict:
    """Config dict of a schedule (ours or foreign), in tf_keras's format."""
    from keras_opt import schedules

    return schedules.serialize(schedule)


def looks_like_serialized_schedule(value: Any) -> bool:
    return isinstance(value, dict) and "class_name" in value and "config" in value


def deserialize_schedule(config: dict, custom_objects: dict | None = None) -> Any:
    from keras_opt import schedules

    return schedules.deserialize(config, custom_objects=custom_objects)


def uses_momentum(momentum: Any) -> bool:
    """Validates a momentum argument; True when it is (or may be) non-zero.

    Numbers must lie in [0, 1]; tensors and callables are taken as momentum on.
    """
    if isinstance(momentum, numbers.Real) and not 0 <= momentum <= 1:
        raise ValueError(
            f"`momentum` must be between [0, 1]. Received: momentum={momentum} "
            f"(of type {type(momentum)})."
        )
    return isinstance(momentum, tf.Tensor) or callable(momentum) or momentum > 0


def _check_assignable(name: str, variable: Any, value: Any) -> None:
    """A fractional number cannot go into an integer hyperparameter variable.

    A hyperparameter keeps the dtype of its first value (as in tf_keras), so
    ``learning_rate=1`` makes an int32 variable; tf_keras then silently
    truncates a later ``0.5`` to 0. keras_opt says so instead.
    """
    dtype = getattr(variable, "dtype", None)
    if dtype is None or not (dtype.is_integer or dtype.is_bool):
        return
    if isinstance(value, numbers.Number) and not isinstance(value, numbers.Integral):
        raise TypeError(
            f"Hyperparameter `{name}` is a {dtype.name} variable (its first value was an "
            f"integer), so it cannot hold {value!r}. Give the first value as a float "
            f"(e.g. {name}=1.0) to make it a float hyperparameter."
        )


class HyperparameterMixin:
    """Hyperparameter methods of OptimizerV2 (state lives in ``self._hyper``)."""

    def _set_hyper(self, name: str, value: Any) -> None:
        """Sets hyperparameter ``name``: replaces it, or assigns into its variable."""
        if isinstance(value, tf.__internal__.tracking.Trackable):
            self._track_trackable(value, name, overwrite=True)
        previous = self._hyper.get(name)
        if (
            isinstance(previous, numbers.Number)
            and tf.is_symbolic_tensor(value)
            and not self._hypers_created
            and not variables_lib.in_session_graph()
        ):
            # A number is about to become a variable: create it and assign the
            # tensor, rather than keep a tensor that belongs to a tf.function graph.
            # Eager tensors, variables and TF1-graph tensors (a placeholder learning
            # rate is a common TF1 pattern) replace the number, as in tf_keras.
            with tf.name_scope(self._name):
                self._create_hypers()
            previous = self._hyper[name]
        if name not in self._hyper or is_replaceable(previous) or is_schedule(value):
            self._hyper[name] = value
        else:
            _check_assignable(name, previous, value)
            # In a TF1 graph this runs the assignment in the default session, like
            # tf_keras's backend.set_value; eagerly and in tf.function it assigns.
            variables_lib.assign_now(previous, value)
            self.__dict__.get("_hyper_python_values", {}).pop(name, None)

    def _get_hyper(self, name: str, dtype: tf.DType | None = None):
        """The value of hyperparameter ``name`` (schedules are returned as they are)."""
        if not self._hypers_created:
            self._create_hypers()
        value = self._hyper[name]
        if is_schedule(value):
            return value
        if callable(value):
            value = value()
        if dtype:
            return tf.cast(value, dtype)
        return value

    def _create_hypers(self) -> None:
        """Turns numeric hyperparameters into scalar variables of their own dtype (once)."""
        if self._hypers_created:
            return
        with tf.init_scope(), self._distribution_strategy_scope():
            for name, value in sorted(self._hyper.items()):
                if isinstance(value, (tf.Tensor, tf.Variable)) or callable(value):
                    continue
                self._hyper[name] = self.add_weight(
                    name,
                    shape=[],
                    trainable=False,
                    initializer=value,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
                if isinstance(value, numbers.Number):  # read without a session (TF1)
                    self.__dict__.setdefault("_hyper_python_values", {})[name] = value
        self._hypers_created = True

    def _serialize_hyperparameter(self, name: str):
        """Config value of a hyperparameter: a number, or a schedule's config dict."""
        value = self._hyper[name]
        if is_schedule(value):
            return serialize_schedule(value)
        if callable(value):
            return value()
        if tf.is_tensor(value) or isinstance(value, tf.Variable):
            python_value = self.__dict__.get("_hyper_python_values", {}).get(name)
            return variables_lib.batch_get_value([value], [python_value])[0]
        return value

    def _decayed_lr(self, var_dtype: tf.DType):
        """The learning rate at this step as a tensor of ``var_dtype``.

        Schedules are evaluated at ``_schedule_step()``: ``iterations`` (the count
        before this step's increment), or with gradient accumulation the micro-step
        count; legacy ``decay`` divides by ``1 + decay * iterations``.
        """
        lr_t = self._get_hyper("learning_rate", var_dtype)
        if is_schedule(lr_t):
            local_step = tf.cast(self._schedule_step(), var_dtype)
            lr_t = tf.cast(lr_t(local_step), var_dtype)
        if self._initial_decay > 0.0:
            local_step = tf.cast(self.iterations, var_dtype)
            decay_t = tf.cast(self._initial_decay, var_dtype)
            lr_t = lr_t / (1.0 + decay_t * local_step)
        return lr_t

    def __getattr__(self, name: str):
        # Only called when normal lookup fails: exposes hyperparameters as attributes.
        hyper = self.__dict__.get("_hyper")
        if hyper is not None and name != "_hyper":
            key = "learning_rate" if name == "lr" else name
            if key in hyper:
                return self._get_hyper(key)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __dir__(self):
        names = set(super().__dir__())
        hyper = self.__dict__.get("_hyper", {})
        names |= set(hyper)
        if "learning_rate" in hyper:
            names.add("lr")
        return sorted(names)

    def __setattr__(self, name: str, value: Any):
        if name == "lr":
            name = "learning_rate"
        hyper = self.__dict__.get("_hyper")
        if hyper is not None and name in hyper:
            self._set_hyper(name, value)
        else:
            super().__setattr__(name, value)
