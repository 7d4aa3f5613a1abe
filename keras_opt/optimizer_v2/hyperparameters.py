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
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any

import tensorflow as tf


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
