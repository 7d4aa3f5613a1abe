"""Keras 3's base-optimizer arguments, accepted by every OptimizerV2 subclass.

``weight_decay``, ``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency``,
``loss_scale_factor`` and ``gradient_accumulation_steps`` arrive through
``**kwargs`` (as ``clipnorm`` does), are validated here and stored on the
optimizer under Keras 3's attribute names. Their defaults mean "feature off",
and an optimizer built without them has tf_keras legacy's ``get_config``
exactly: a key is only added when its feature is used.

Validation is stricter than Keras 3's where Keras 3 accepts nonsense silently
(a negative or string ``weight_decay``, ``gradient_accumulation_steps=0``, a
float step count); the error types are Keras 3's where it has one
(``ValueError`` for out-of-range values) and ``TypeError`` for a wrong type.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

FEATURE_DEFAULTS: dict[str, Any] = {
    "weight_decay": None,
    "use_ema": False,
    "ema_momentum": 0.99,
    "ema_overwrite_frequency": None,
    "loss_scale_factor": None,
    "gradient_accumulation_steps": None,
}


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_weight_decay(value: Any) -> Any:
    if value is None:
        return None
    if not _is_real(value):
        raise TypeError(
            f"`weight_decay` must be a non-negative number or None. Received: "
            f"weight_decay={value!r} of type {type(value).__name__}."
        )
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"`weight_decay` must be a finite number >= 0 or None. Received: weight_decay={value}."
        )
    return value


def _check_use_ema(value: Any) -> bool:
    if not isinstance(value, (bool, numbers.Integral)) or value not in (0, 1):
        raise TypeError(f"`use_ema` must be True or False. Received: use_ema={value!r}.")
    return bool(value)


def _check_ema_momentum(value: Any) -> Any:
    if not _is_real(value):
        raise TypeError(
            f"`ema_momentum` must be a number in the range [0, 1]. Received: "
            f"ema_momentum={value!r} of type {type(value).__name__}."
        )
    if not 0 <= value <= 1:
        raise ValueError(
            f"`ema_momentum` must be in the range [0, 1]. Received: ema_momentum={value}."
        )
    return value


def _check_ema_overwrite_frequency(value: Any) -> Any:
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(
            "`ema_overwrite_frequency` must be an integer >= 1 or None. Received: "
            f"ema_overwrite_frequency={value!r} of type {type(value).__name__}."
        )
    if value < 1:
        raise ValueError(
            "`ema_overwrite_frequency` must be an integer >= 1 or None. Received: "
            f"ema_overwrite_frequency={value!r}."
        )
    return int(value)


def _check_loss_scale_factor(value: Any) -> Any:
    if value is None:
        return None
    if not _is_real(value):
        raise TypeError(
            f"`loss_scale_factor` must be a positive number or None. Received: "
            f"loss_scale_factor={value!r} of type {type(value).__name__}."
        )
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            "`loss_scale_factor` must be a finite number > 0 or None. Received: "
            f"loss_scale_factor={value}."
        )
    return value


def _check_gradient_accumulation_steps(value: Any) -> Any:
    if value is None:
        return None
    if not _is_int(value):
        raise TypeError(
            "`gradient_accumulation_steps` must be an integer >= 2 or None. Received: "
            f"gradient_accumulation_steps={value!r} of type {type(value).__name__}."
        )
    if value < 2:
        raise ValueError(
            "`gradient_accumulation_steps` must be an integer >= 2. Received: "
            f"gradient_accumulation_steps={value}"
        )
    return int(value)


_CHECKS = {
    "weight_decay": check_weight_decay,
    "use_ema": _check_use_ema,
    "ema_momentum": _check_ema_momentum,
    "ema_overwrite_frequency": _check_ema_overwrite_frequency,
    "loss_scale_factor": _check_loss_scale_factor,
    "gradient_accumulation_steps": _check_gradient_accumulation_steps,
}


def pop_feature_arguments(kwargs: dict) -> dict[str, Any]:
    """Removes the feature arguments from ``kwargs``; returns them validated, with defaults."""
    return {key: check(kwargs.pop(key, FEATURE_DEFAULTS[key])) for key, check in _CHECKS.items()}


def feature_config(opt: Any) -> dict[str, Any]:
    """The ``get_config`` entries of the features ``opt`` uses (none when it uses none)."""
    config: dict[str, Any] = {}
    if opt._weight_decay is not None:
        config["weight_decay"] = opt._weight_decay
    if opt.use_ema:
        config["use_ema"] = True
        config["ema_momentum"] = opt.ema_momentum
        config["ema_overwrite_frequency"] = opt.ema_overwrite_frequency
    if opt.loss_scale_factor is not None:
        config["loss_scale_factor"] = opt.loss_scale_factor
    if opt.gradient_accumulation_steps is not None:
        config["gradient_accumulation_steps"] = opt.gradient_accumulation_steps
    return config
