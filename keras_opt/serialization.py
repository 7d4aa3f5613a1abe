"""`get`, `serialize` and `deserialize` for optimizers, as in ``tf.keras.optimizers``."""

from __future__ import annotations

from typing import Any

from keras_opt import optimizer_v2 as _opt

# Lower-case names accepted by `get` and `deserialize`, as tf.keras accepts them.
_BUILTIN = {
    cls.__name__.lower(): cls
    for cls in (_opt.Adadelta, _opt.Adagrad, _opt.Adam, _opt.Adamax, _opt.Ftrl, _opt.Nadam,
                _opt.RMSprop, _opt.SGD,
                _opt.AdamW, _opt.Adafactor, _opt.Lamb, _opt.LazyAdam, _opt.Lion, _opt.Muon)
}  # fmt: skip
# Keys that tf_keras and Keras 3 configs may carry but that legacy optimizers do not take.
_FOREIGN_KEYS = ("is_legacy_optimizer",)
# tf_keras's names for its legacy loss-scale wrapper (V1 configs load as the same class).
_LOSS_SCALE_NAMES = ("lossscaleoptimizer", "lossscaleoptimizerv1")


def _loss_scale_class(name: Any):
    """keras_opt's LossScaleOptimizer for its names; imported late (it imports this module)."""
    if str(name).lower() not in _LOSS_SCALE_NAMES:
        return None
    from keras_opt.mixed_precision.loss_scale_optimizer import LossScaleOptimizer

    return LossScaleOptimizer


def serialize(optimizer: _opt.OptimizerV2) -> dict | None:
    """Config dict of ``optimizer``: ``{"module", "class_name", "config", "registered_name"}``."""
    if optimizer is None:
        return None
    if not isinstance(optimizer, _opt.OptimizerV2):
        raise TypeError(
            "`serialize` expects a keras_opt optimizer (an OptimizerV2 instance); received "
            f"{type(optimizer).__name__}."
        )
    cls = type(optimizer)
    builtin = _BUILTIN.get(cls.__name__.lower()) is cls
    return {
        "module": "keras_opt" if builtin else cls.__module__,
        "class_name": cls.__name__,
        "config": optimizer.get_config(),
        "registered_name": None if builtin else cls.__name__,
    }


def deserialize(config: dict, custom_objects: dict | None = None) -> _opt.OptimizerV2:
    """Builds an optimizer from a `serialize` dict (also tf_keras's legacy dicts).

    ``class_name`` is looked up in ``custom_objects`` first, then among the
    built-in optimizers case-insensitively (``LossScaleOptimizer`` included).
    """
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "`deserialize` expects a dict with 'class_name' and 'config' keys; received "
            f"{config!r:.200}."
        )
    custom_objects = custom_objects or {}
    name = config["class_name"]
    cls = custom_objects.get(name) or custom_objects.get(config.get("registered_name"))
    if cls is None:
        cls = _BUILTIN.get(str(name).lower()) or _loss_scale_class(name)
    if cls is None:
        raise ValueError(
            f"Unknown optimizer: {name!r}. Valid names are "
            f"{sorted(_BUILTIN) + list(_LOSS_SCALE_NAMES)} (any case), or "
            "pass the class in `custom_objects`."
        )
    kwargs = {k: v for k, v in dict(config.get("config") or {}).items() if k not in _FOREIGN_KEYS}
    return cls.from_config(kwargs, custom_objects=custom_objects)


def get(identifier: Any) -> _opt.OptimizerV2:
    """An optimizer from an instance, a name (``"adam"``, case-insensitive) or a config dict."""
    if isinstance(identifier, _opt.OptimizerV2):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return deserialize({"class_name": identifier, "config": {}})
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")
