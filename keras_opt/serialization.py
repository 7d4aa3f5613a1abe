"""`get`, `serialize` and `deserialize` for optimizers, as in ``tf.keras.optimizers``."""

from __future__ import annotations

import sys
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


def optimizer_classes() -> dict[str, type]:
    """keras_opt's public optimizer classes by name (the loss-scale wrapper apart).

    The Keras adapter modules (`keras_opt.keras`, `keras_opt.tf_keras`) make one
    class per entry.
    """
    import keras_opt

    out = {}
    for name in dir(keras_opt):
        value = getattr(keras_opt, name)
        if (
            isinstance(value, type)
            and issubclass(value, _opt.OptimizerV2)
            and value is not _opt.OptimizerV2
            and not issubclass(value, keras_opt.LossScaleOptimizer)
            and value.__name__ == name
        ):
            out[name] = value
    return out


def _loss_scale_class(name: Any):
    """keras_opt's LossScaleOptimizer for its names; imported late (it imports this module)."""
    if str(name).lower() not in _LOSS_SCALE_NAMES:
        return None
    from keras_opt.mixed_precision.loss_scale_optimizer import LossScaleOptimizer

    return LossScaleOptimizer


# Frameworks whose `register_keras_serializable` registry is honoured. A class
# registered there was registered after its framework was imported, so a
# framework not in sys.modules has nothing registered and is never imported.
_REGISTRY_FRAMEWORKS = ("tf_keras", "keras")


def _registries():
    for name in _REGISTRY_FRAMEWORKS:
        module = sys.modules.get(name)
        saving = getattr(module, "saving", None)
        if saving is not None and hasattr(saving, "get_registered_object"):
            yield saving


def _registered_name(cls: type) -> str | None:
    """``"package>Name"`` when ``cls`` is registered with tf_keras or Keras 3."""
    for saving in _registries():
        name = saving.get_registered_name(cls)
        if name != cls.__name__ and saving.get_registered_object(name) is cls:
            return name
    return None


def _registered_class(name: Any, custom_objects: dict) -> Any:
    """A keras_opt optimizer class registered under ``name`` (tf_keras or Keras 3)."""
    if not isinstance(name, str):
        return None
    for saving in _registries():
        cls = saving.get_registered_object(name, custom_objects=custom_objects)
        if isinstance(cls, type) and issubclass(cls, _opt.OptimizerV2):
            return cls
    return None


def _check_kwargs(kwargs: dict) -> None:
    # tf_keras's keywords: there is one (legacy) implementation of each optimizer
    # here, so `use_legacy_optimizer` changes nothing.
    unknown = set(kwargs) - {"use_legacy_optimizer", "use_legacy_format"}
    if unknown:
        raise TypeError(f"Invalid keyword arguments: {sorted(unknown)}")


def serialize(optimizer: _opt.OptimizerV2, use_legacy_format: bool = False) -> dict | None:
    """Config dict of ``optimizer``: ``{"module", "class_name", "config", "registered_name"}``.

    A class registered with ``register_keras_serializable`` (tf_keras or Keras 3)
    gets its ``"package>Name"`` as ``registered_name``. ``use_legacy_format=True``
    gives tf_keras's older ``{"class_name", "config"}`` form (the class name is
    then the registered name, as in tf_keras).
    """
    if optimizer is None:
        return None
    if not isinstance(optimizer, _opt.OptimizerV2):
        raise TypeError(
            "`serialize` expects a keras_opt optimizer (an OptimizerV2 instance); received "
            f"{type(optimizer).__name__}."
        )
    cls = type(optimizer)
    builtin = _BUILTIN.get(cls.__name__.lower()) is cls
    registered = None if builtin else (_registered_name(cls) or cls.__name__)
    if use_legacy_format:
        return {"class_name": registered or cls.__name__, "config": optimizer.get_config()}
    return {
        "module": "keras_opt" if builtin else cls.__module__,
        "class_name": cls.__name__,
        "config": optimizer.get_config(),
        "registered_name": registered,
    }


def deserialize(
    config: dict, custom_objects: dict | None = None, use_legacy_format: bool = False, **kwargs
) -> _opt.OptimizerV2:
    """Builds an optimizer from a `serialize` dict (also tf_keras's legacy dicts).

    ``class_name`` is looked up in ``custom_objects`` first, then among the
    classes registered with tf_keras's or Keras 3's ``register_keras_serializable``
    (by ``registered_name``, then ``class_name``), then among the built-in
    optimizers case-insensitively (``LossScaleOptimizer`` included). Both dict
    forms are read whatever ``use_legacy_format`` says; ``use_legacy_optimizer=``
    is accepted as in tf_keras.
    """
    _check_kwargs(kwargs)
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(
            "`deserialize` expects a dict with 'class_name' and 'config' keys; received "
            f"{config!r:.200}."
        )
    custom_objects = custom_objects or {}
    name = config["class_name"]
    cls = custom_objects.get(name) or custom_objects.get(config.get("registered_name"))
    if cls is None:
        cls = _registered_class(config.get("registered_name"), custom_objects)
        cls = cls or _registered_class(name, custom_objects)
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


def get(identifier: Any, **kwargs) -> _opt.OptimizerV2:
    """An optimizer from an instance, a name (``"adam"``, case-insensitive) or a config dict.

    Accepts tf_keras's ``use_legacy_optimizer=`` keyword (see `deserialize`).
    """
    kwargs.pop("use_legacy_optimizer", None)
    if kwargs:
        raise TypeError(f"Invalid keyword arguments: {sorted(kwargs)}")
    if isinstance(identifier, _opt.OptimizerV2):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return deserialize({"class_name": identifier, "config": {}})
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")


# Config keys of tf_keras's and Keras 3's new optimizers that keras_opt optimizers
# do not take. The Keras 3 base features (weight_decay, EMA, loss_scale_factor,
# gradient_accumulation_steps) are kept: keras_opt has them (tf_keras's
# conversion drops them, silently changing the training).
_NEW_OPTIMIZER_KEYS = ("jit_compile", "is_legacy_optimizer")


def convert_to_legacy_optimizer(optimizer: Any) -> _opt.OptimizerV2:
    """The keras_opt (legacy) optimizer equivalent to a tf_keras or Keras 3 optimizer.

    As tf_keras's ``convert_to_legacy_optimizer``: the class is looked up by name
    (``Adam`` -> `keras_opt.Adam`), the config is taken over without the keys
    keras_opt optimizers do not have (``jit_compile``, ``is_legacy_optimizer``);
    a learning-rate schedule becomes the equivalent keras_opt schedule. Unlike
    tf_keras, which drops them, ``weight_decay``, the EMA settings,
    ``loss_scale_factor`` and ``gradient_accumulation_steps`` are kept (keras_opt
    optimizers have them). Slots and other state are not carried over.
    """
    if isinstance(optimizer, _opt.OptimizerV2) or not callable(
        getattr(optimizer, "get_config", None)
    ):
        raise ValueError(
            "`convert_to_legacy_optimizer` should only be called on instances of "
            "tf_keras's or Keras 3's `Optimizer` (not a legacy or keras_opt optimizer); "
            f"received: {type(optimizer).__name__}."
        )
    config = {k: v for k, v in optimizer.get_config().items() if k not in _NEW_OPTIMIZER_KEYS}
    return deserialize({"class_name": type(optimizer).__name__.lower(), "config": config})
