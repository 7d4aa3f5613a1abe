"""``serialize`` / ``deserialize`` of learning-rate schedules, in tf_keras's dict format.

::

    {"module": "keras.optimizers.schedules", "class_name": "ExponentialDecay",
     "config": {...}, "registered_name": None}

``deserialize`` also reads the older ``{"class_name": ..., "config": ...}`` form and
the dicts tf_keras and Keras 3 write for their own schedules (mapped by class name
onto ours). ``register_schedule`` makes a user-defined subclass round-trip by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import numpy as np
import tensorflow as tf

from keras_opt.schedules.learning_rate_schedule import (
    CosineDecay,
    CosineDecayRestarts,
    ExponentialDecay,
    InverseTimeDecay,
    LearningRateSchedule,
    LinearCosineDecay,
    NoisyLinearCosineDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
)

# The module tf_keras (and Keras 3) write into the config of a built-in schedule.
_PUBLIC_MODULE = "keras.optimizers.schedules"
# Top-level packages whose schedule dicts map onto our built-in classes by name.
_KERAS_PACKAGES = ("keras", "tf_keras", "keras_opt")

_T = TypeVar("_T", bound=type)

_BUILTINS: dict[str, type] = {
    c.__name__: c
    for c in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        InverseTimeDecay,
        CosineDecay,
        CosineDecayRestarts,
        LinearCosineDecay,
        NoisyLinearCosineDecay,
    )
}
_REGISTRY: dict[str, type] = {}  # "package>Name" -> class
_REGISTERED_NAMES: dict[type, str] = {}  # class -> "package>Name"


def register_schedule(
    cls: _T | None = None, *, package: str = "Custom", name: str | None = None
) -> _T | Callable[[_T], _T]:
    """Registers a schedule class under ``"package>name"`` so ``deserialize`` finds it.

    Use as ``@register_schedule`` or ``@register_schedule(package="my_project")``.
    ``name`` defaults to the class name. Registering a name again replaces the class
    (a redefined class in a notebook keeps working). This is the counterpart of
    ``keras.saving.register_keras_serializable``, and writes the same
    ``registered_name`` into the config.
    """

    def decorator(klass: _T) -> _T:
        if not isinstance(klass, type) or not callable(getattr(klass, "get_config", None)):
            raise TypeError(
                "register_schedule expects a class with `get_config` (a subclass of "
                f"keras_opt.schedules.LearningRateSchedule), got {klass!r}."
            )
        if not callable(getattr(klass, "from_config", None)):
            raise TypeError(f"register_schedule: {klass.__name__} has no `from_config`.")
        key = f"{package}>{name or klass.__name__}"
        _REGISTRY[key] = klass
        _REGISTERED_NAMES[klass] = key
        return klass

    if cls is not None:
        return decorator(cls)
    return decorator


def _encode(value: Any) -> Any:
    """A config value as tf_keras writes it: tensors and arrays as tagged dicts."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_encode(v) for v in value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (tf.Tensor, tf.Variable)):
        return {
            "class_name": "__tensor__",
            "config": {"value": value.numpy().tolist(), "dtype": value.dtype.name},
        }
    if isinstance(value, (np.ndarray, np.generic)):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            return {
                "class_name": "__numpy__",
                "config": {"value": value.tolist(), "dtype": value.dtype.name},
            }
        return value.item()
    if isinstance(value, tf.DType):
        return value.name
    if callable(value) and callable(getattr(value, "get_config", None)):
        return serialize(value)  # a schedule inside a schedule's config
    return value


def _decode(value: Any) -> Any:
    """Inverse of ``_encode`` for tensors and arrays (other dicts are left as they are)."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_decode(v) for v in value)
    if isinstance(value, dict):
        tag = value.get("class_name")
        if tag == "__tensor__":
            return tf.constant(value["config"]["value"], dtype=value["config"]["dtype"])
        if tag == "__numpy__":
            return np.array(value["config"]["value"], dtype=value["config"]["dtype"])
        if "class_name" in value and "config" in value:
            return value  # a nested object: its owner's from_config deserializes it
        return {k: _decode(v) for k, v in value.items()}
    return value


def _is_keras_module(module: str | None) -> bool:
    return not module or module.split(".")[0] in _KERAS_PACKAGES


def serialize(schedule: Any, use_legacy_format: bool = False) -> dict[str, Any]:
    """The config dict of a schedule, in tf_keras's format.

    A built-in schedule (ours, tf_keras's or Keras 3's) gives
    ``{"module": "keras.optimizers.schedules", "class_name": ..., "config": ...,
    "registered_name": None}``, exactly what a tf_keras legacy optimizer writes into
    its ``get_config()``. Any other schedule gives its class's module (None for
    ``__main__``) and its registered name (see ``register_schedule``; the class name
    when unregistered). With ``use_legacy_format=True`` the result is the older
    ``{"class_name": ..., "config": ...}``, the class name being the registered name.
    """
    if not callable(getattr(schedule, "get_config", None)) or isinstance(schedule, type):
        raise TypeError(
            "serialize expects a learning-rate schedule instance (an object with "
            f"`get_config()`), got {schedule!r} of type {type(schedule).__name__}."
        )
    cls = type(schedule)
    config = _encode(schedule.get_config())
    builtin = _BUILTINS.get(cls.__name__) is cls or (
        cls.__name__ in _BUILTINS
        and cls.__module__.split(".")[0] in ("keras", "tf_keras")
        and cls.__module__.endswith("optimizers.schedules.learning_rate_schedule")
    )
    if use_legacy_format:
        name = cls.__name__ if builtin else _REGISTERED_NAMES.get(cls, cls.__name__)
        return {"class_name": name, "config": config}
    if builtin:
        return {
            "module": _PUBLIC_MODULE,
            "class_name": cls.__name__,
            "config": config,
            "registered_name": None,
        }
    module = None if cls.__module__ == "__main__" else cls.__module__
    return {
        "module": module,
        "class_name": cls.__name__,
        "config": config,
        "registered_name": _REGISTERED_NAMES.get(cls, cls.__name__),
    }


def _resolve(config: Mapping[str, Any], custom_objects: Mapping[str, Any]) -> type:
    class_name = config["class_name"]
    registered_name = config.get("registered_name")
    keys = [k for k in (registered_name, class_name) if k]
    for table in (custom_objects, _REGISTRY):
        for key in keys:
            if key in table:
                return table[key]
    if class_name in _BUILTINS and _is_keras_module(config.get("module")):
        return _BUILTINS[class_name]
    known = sorted(_BUILTINS) + sorted(_REGISTRY) + sorted(custom_objects)
    where = f" from module {config['module']!r}" if config.get("module") else ""
    raise ValueError(
        f"Unknown learning-rate schedule {class_name!r}{where}"
        + (f" (registered_name={registered_name!r})" if registered_name else "")
        + f". Known schedules: {', '.join(known)}. Register a custom class with "
        "@keras_opt.schedules.register_schedule, or pass it in "
        "custom_objects={'" + class_name + "': TheClass}."
    )


def deserialize(
    config: Any,
    custom_objects: Mapping[str, Any] | None = None,
    use_legacy_format: bool = False,
) -> Any:
    """Rebuilds a schedule from a dict made by ``serialize`` (or by tf_keras / Keras 3).

    Reads both ``{"module", "class_name", "config", "registered_name"}`` and the older
    ``{"class_name", "config"}``, whatever ``use_legacy_format`` says (it is accepted
    for tf_keras compatibility). The class is looked up, in order, in
    ``custom_objects`` and the ``register_schedule`` registry (by registered name, then
    class name), then among the built-in schedules by class name when ``module`` is
    absent or belongs to keras, tf_keras or keras_opt: a tf_keras or Keras 3
    ``ExponentialDecay`` comes back as ``keras_opt.schedules.ExponentialDecay``.
    Tensors and arrays stored as ``__tensor__`` / ``__numpy__`` dicts are rebuilt.
    A schedule instance is returned as it is.
    """
    del use_legacy_format  # both formats are read
    if isinstance(config, LearningRateSchedule):
        return config
    if not isinstance(config, Mapping) or "class_name" not in config:
        raise TypeError(
            "deserialize expects a dict with 'class_name' and 'config' keys (as written "
            f"by serialize), got {config!r}."
        )
    cls = _resolve(config, dict(custom_objects or {}))
    inner = _decode(dict(config.get("config") or {}))
    return cls.from_config(inner)
