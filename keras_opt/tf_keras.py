"""keras_opt optimizers for tf_keras (Keras 2) ``compile``/``fit``/``save``.

tf_keras accepts instances of ``tf_keras.optimizers.legacy.Optimizer``. The
classes here are keras_opt's optimizers that are also such instances (keras_opt
implements that class's whole surface, so keras_opt's code runs every step)::

    model.compile(optimizer=keras_opt.tf_keras.Adam(1e-3), loss="mse")
    model.compile(optimizer=keras_opt.tf_keras.wrap(keras_opt.Adam(1e-3)), loss="mse")

They are registered with tf_keras under the package ``keras_opt``
(``"keras_opt>Adam"``), so ``compile(optimizer="keras_opt>Adam")`` works and
``tf_keras.models.load_model`` rebuilds them once this module is imported.
Under the ``mixed_float16`` policy tf_keras's compile wraps them in its legacy
``LossScaleOptimizer``, as it wraps ``tf_keras.optimizers.legacy`` ones.
"""

from __future__ import annotations

from typing import Any


def _import_tf_keras():
    try:
        import tf_keras
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(
            "keras_opt.tf_keras needs tf_keras (`pip install tf_keras`, the Keras 2 that "
            "TF_USE_LEGACY_KERAS=1 selects). For Keras 3 models use keras_opt.keras."
        ) from e
    return tf_keras


tf_keras = _import_tf_keras()

import keras_opt as _ko  # noqa: E402
from keras_opt import serialization as _serialization  # noqa: E402
from keras_opt.optimizer_v2 import optimizer_v2 as _optimizer_v2  # noqa: E402

_LegacyOptimizer = tf_keras.optimizers.legacy.Optimizer
PACKAGE = "keras_opt"


class _TfKerasMixin:
    """Makes a keras_opt optimizer class a tf_keras legacy optimizer class too."""

    # tf_keras's OptimizerV2 resolves hyperparameters in __getattribute__;
    # keras_opt does it in __getattr__ (only when normal lookup fails).
    __getattribute__ = object.__getattribute__
    # Not tf_keras's exported class: serialize under the registered name.
    _keras_api_names = ()
    _keras_api_names_v1 = ()

    def __repr__(self):
        name = getattr(self, "_name", None) or getattr(self, "inner_optimizer", self)._name
        return (
            f"<keras_opt.tf_keras.{type(self).__name__} {name!r} (a tf_keras / Keras 2 "
            "optimizer; for a Keras 3 model use keras_opt.keras."
            f"{type(self).__name__}(...) or keras_opt.keras.wrap(...))>"
        )


def _make_class(name: str, base: type) -> type:
    cls = type(
        name,
        (_TfKerasMixin, base, _LegacyOptimizer),
        {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"keras_opt.{name} that is also a tf_keras legacy optimizer.\n\n"
            + (base.__doc__ or ""),
        },
    )
    return tf_keras.saving.register_keras_serializable(package=PACKAGE, name=name)(cls)


_CLASSES: dict[type, type] = {}
for _name, _cls in _serialization.optimizer_classes().items():
    globals()[_name] = _CLASSES[_cls] = _make_class(_name, _cls)
del _name, _cls


from tf_keras.src.mixed_precision import loss_scale_optimizer as _tfk_lso  # noqa: E402


class _LossScaleOptimizerMetaclass(
    type(_ko.LossScaleOptimizer), type(_tfk_lso.BaseLossScaleOptimizer)
):
    """Both frameworks' loss-scale metaclasses (each only redirects its own base's calls)."""


class LossScaleOptimizer(
    _TfKerasMixin,
    _ko.LossScaleOptimizer,
    _LegacyOptimizer,
    _tfk_lso.BaseLossScaleOptimizer,
    metaclass=_LossScaleOptimizerMetaclass,
):
    """keras_opt.LossScaleOptimizer as a tf_keras legacy loss-scale optimizer.

    tf_keras's compile under ``mixed_float16`` keeps it as it is (it is a
    ``tf_keras.mixed_precision.LossScaleOptimizer``); the numbers are tf_keras
    legacy's. ``inner_optimizer`` is made a keras_opt.tf_keras optimizer (`wrap`).
    """

    def __init__(
        self, inner_optimizer, dynamic=True, initial_scale=None, dynamic_growth_steps=None
    ):
        if isinstance(inner_optimizer, _optimizer_v2.OptimizerV2) and not isinstance(
            inner_optimizer, _ko.LossScaleOptimizer
        ):
            inner_optimizer = wrap(inner_optimizer)
        _ko.LossScaleOptimizer.__init__(
            self,
            inner_optimizer,
            dynamic=dynamic,
            initial_scale=initial_scale,
            dynamic_growth_steps=dynamic_growth_steps,
        )


LossScaleOptimizer = tf_keras.saving.register_keras_serializable(
    package=PACKAGE, name="LossScaleOptimizer"
)(LossScaleOptimizer)


def _user_class(base: type) -> type:
    """The tf_keras twin of a user subclass of keras_opt.Optimizer (cached)."""
    cls = _CLASSES.get(base)
    if cls is None:
        cls = type(
            base.__name__,
            (_TfKerasMixin, base, _LegacyOptimizer),
            {"__module__": base.__module__, "__qualname__": base.__qualname__},
        )
        _CLASSES[base] = cls
    return cls


def wrap(optimizer: Any):
    """``optimizer`` (a keras_opt optimizer) as a tf_keras legacy optimizer.

    The object itself becomes an instance of its class's tf_keras twin (same
    state, same variables, nothing copied), which it also returns. A user
    subclass is saved under its own class name: pass it in ``custom_objects``
    when loading, as for any custom tf_keras optimizer.
    """
    if isinstance(optimizer, _LegacyOptimizer) and isinstance(optimizer, _optimizer_v2.OptimizerV2):
        return optimizer
    if not isinstance(optimizer, _optimizer_v2.OptimizerV2):
        module = type(optimizer).__module__ or ""
        hint = ""
        if isinstance(optimizer, _LegacyOptimizer):
            hint = " It is already a tf_keras optimizer: pass it to compile as it is."
        elif module.startswith("keras_opt.keras"):
            hint = (
                " It is a Keras 3 adapter: pass its `keras_opt_optimizer` instead, or use "
                "keras_opt.tf_keras classes for tf_keras models."
            )
        elif module.startswith("keras"):
            hint = " Keras 3 optimizers do not work with tf_keras models."
        raise TypeError(
            "keras_opt.tf_keras.wrap expects a keras_opt optimizer (an instance of "
            f"keras_opt.Optimizer, e.g. keras_opt.Adam(1e-3)); received {module}."
            f"{type(optimizer).__name__}.{hint}"
        )
    if isinstance(optimizer, _ko.LossScaleOptimizer):
        raise TypeError(
            "keras_opt.tf_keras.wrap received a keras_opt.LossScaleOptimizer; use "
            "keras_opt.tf_keras.LossScaleOptimizer(inner_optimizer) instead (or no wrapper: "
            "tf_keras's compile adds its legacy loss scaling under mixed_float16)."
        )
    optimizer.__class__ = _user_class(type(optimizer))
    return optimizer


__all__ = sorted(c.__name__ for c in _CLASSES.values()) + ["LossScaleOptimizer", "wrap"]
