"""Learning-rate schedules, value for value and config for config those of tf_keras.

A schedule maps the optimizer's step count ``t`` (a Python int, an int32/int64
tensor, or the optimizer's ``iterations`` variable) to a scalar learning rate whose
dtype is that of ``initial_learning_rate`` (float16, float32 or float64). Each
schedule runs the same TF ops in the same order as its tf_keras counterpart, so the
values are bit-identical, and it is safe to call inside a ``tf.function`` with the
step a tensor: no Python control flow depends on the step value, so nothing retraces
as the step advances.

Unlike tf_keras, arguments given as Python numbers or lists are checked when the
schedule is built (``decay_steps > 0``, rates ``>= 0``, sorted boundaries, ...):
a bad configuration fails at construction with a ``ValueError`` naming the argument,
instead of producing ``nan`` or ``inf`` thousands of steps later. Tensor arguments
are accepted as tf_keras accepts them, without checks.

``serialize`` / ``deserialize`` live in ``keras_opt.schedules.serialization``; this
module has them too (tf_keras code imports them from here), as well as tf_keras's
experimental ``LinearCosineDecay`` and ``NoisyLinearCosineDecay``.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf


class LearningRateSchedule:
    """Base class of learning-rate schedules: ``lr = schedule(step)``.

    A subclass implements ``__call__(step)``, returning a scalar tensor, and
    ``get_config()``, returning the keyword arguments that rebuild it (plain Python
    values, so the dict can be written as JSON). ``from_config(config)`` calls
    ``cls(**config)``. Register a subclass with :func:`register_schedule` so that
    :func:`deserialize` finds it by name.
    """

    def __call__(self, step: Any) -> tf.Tensor:
        raise NotImplementedError(
            f"Learning rate schedule {type(self).__name__!r} must override `__call__(self, step)`."
        )

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(
            f"Learning rate schedule {type(self).__name__!r} must override "
            "`get_config()` to be serializable."
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LearningRateSchedule:
        """Builds the schedule from the dict returned by ``get_config()``."""
        return cls(**config)


# --------------------------------------------------------------------------------------
# Construction-time checks (Python numbers and lists only; tensors pass unchecked).


def _is_number(value: Any) -> bool:
    """True for Python and numpy real scalars (not bools, not tensors)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_number(
    schedule: str, arg: str, value: Any, *, positive: bool = False, why: str = ""
) -> None:
    """Raises ValueError when the number ``value`` is negative (or ``<= 0``), or NaN."""
    if not _is_number(value):
        return
    ok = value > 0 if positive else value >= 0  # False for NaN too.
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(
            f"{schedule}: `{arg}` must be a number {bound}, got {arg}={value!r}." + why
        )


def _static_dtype(value: Any) -> tf.DType | None:
    """The dtype ``tf.convert_to_tensor(value)`` gives, without building a tensor."""
    if isinstance(value, (bool, np.bool_)):
        return tf.bool
    if isinstance(value, (np.generic, np.ndarray)):  # before float: np.float64 is a float
        return tf.as_dtype(value.dtype)
    if isinstance(value, int):
        return tf.int32 if -(2**31) <= value < 2**31 else tf.int64
    if isinstance(value, float):
        return tf.float32
    dtype = getattr(value, "dtype", None)
    if dtype is None:
        return None
    try:
        return tf.as_dtype(dtype).base_dtype
    except TypeError:
        return None


def _check_piecewise(boundaries: Any, values: Any) -> None:
    name = "PiecewiseConstantDecay"
    if len(boundaries) != len(values) - 1:
        raise ValueError(
            f"{name}: `values` must have exactly one more entry than `boundaries` "
            f"(values[0] applies up to boundaries[0], values[-1] after boundaries[-1]). "
            f"Got {len(boundaries)} boundaries {boundaries!r} and {len(values)} "
            f"values {values!r}."
        )
    if len(boundaries) == 0:
        raise ValueError(
            f"{name}: `boundaries` must hold at least one step, got boundaries=[]. "
            "For a constant learning rate pass a number instead of a schedule."
        )
    if not isinstance(boundaries, (list, tuple)) or not isinstance(values, (list, tuple)):
        return
    b_dtypes = [_static_dtype(b) for b in boundaries]
    kinds = {("int" if d.is_integer else "float") for d in b_dtypes if d is not None}
    if len(kinds) > 1 or any(d is not None and d.is_bool for d in b_dtypes):
        raise ValueError(
            f"{name}: `boundaries` must all have the same type (all ints, like the step "
            f"counter, or all floats), got boundaries={boundaries!r} with dtypes "
            f"{[d.name if d else '?' for d in b_dtypes]}."
        )
    if all(_is_number(b) for b in boundaries):
        for i, (lo, hi) in enumerate(zip(boundaries[:-1], boundaries[1:])):
            if not lo < hi:
                raise ValueError(
                    f"{name}: `boundaries` must be strictly increasing, but "
                    f"boundaries[{i}]={lo!r} >= boundaries[{i + 1}]={hi!r} "
                    f"in boundaries={boundaries!r}."
                )
    v_dtypes = [_static_dtype(v) for v in values]
    known = {d for d in v_dtypes if d is not None}
    if len(known) > 1:
        raise ValueError(
            f"{name}: `values` must all have the same dtype (the learning rate's), got "
            f"values={values!r} with dtypes {[d.name if d else '?' for d in v_dtypes]}. "
            "Write them all as floats, e.g. 1.0 rather than 1."
        )
    for i, v in enumerate(values):
        _check_number(name, f"values[{i}]", v, why=" Learning rates cannot be negative.")


_STEPS_WHY = " It is a number of steps; the schedule divides by it."
_RATE_WHY = " Learning rates cannot be negative."


# --------------------------------------------------------------------------------------
# Schedules.


class ExponentialDecay(LearningRateSchedule):
    r"""Exponential decay.

    .. math::
        p = t / \text{decay\_steps} \quad (\lfloor p \rfloor \text{ if staircase}),
        \qquad \text{lr}(t) = \text{initial\_learning\_rate} \cdot
        \text{decay\_rate}^{\,p}

    Args:
      initial_learning_rate: float or scalar float tensor; its dtype is the result's.
      decay_steps: number of steps per decay period, ``> 0``.
      decay_rate: factor applied per period, ``>= 0``.
      staircase: if True, decay in whole periods (a step function).
      name: name scope of the ops. Defaults to ``"ExponentialDecay"``.
    """

    def __init__(
        self,
        initial_learning_rate: Any,
        decay_steps: Any,
        decay_rate: Any,
        staircase: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        _check_number(cls, "initial_learning_rate", initial_learning_rate, why=_RATE_WHY)
        _check_number(cls, "decay_steps", decay_steps, positive=True, why=_STEPS_WHY)
        _check_number(cls, "decay_rate", decay_rate, why=" A negative base makes the rate NaN.")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    def __call__(self, step: Any) -> tf.Tensor:
        with tf.name_scope(self.name or "ExponentialDecay") as name:
            initial_learning_rate = tf.convert_to_tensor(
                self.initial_learning_rate, name="initial_learning_rate"
            )
            dtype = initial_learning_rate.dtype
            decay_steps = tf.cast(self.decay_steps, dtype)
            decay_rate = tf.cast(self.decay_rate, dtype)
            p = tf.cast(step, dtype) / decay_steps
            if self.staircase:
                p = tf.floor(p)
            return tf.multiply(initial_learning_rate, tf.pow(decay_rate, p), name=name)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class PiecewiseConstantDecay(LearningRateSchedule):
    r"""Piecewise-constant learning rate.

    .. math::
        \text{lr}(t) = \begin{cases}
          v_0 & t \le b_0 \\
          v_i & b_{i-1} < t \le b_i \\
          v_n & t > b_{n-1}
        \end{cases}

    for ``boundaries = [b_0, ..., b_{n-1}]`` and ``values = [v_0, ..., v_n]``.

    Args:
      boundaries: strictly increasing steps, all ints (or all floats); each is cast
        to the step's dtype.
      values: ``len(boundaries) + 1`` learning rates, all of one dtype, ``>= 0``.
      name: name scope of the ops. Defaults to ``"PiecewiseConstant"``.
    """

    def __init__(
        self, boundaries: Sequence[Any], values: Sequence[Any], name: str | None = None
    ) -> None:
        super().__init__()
        _check_piecewise(boundaries, values)
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step: Any) -> tf.Tensor:
        with tf.name_scope(self.name or "PiecewiseConstant"):
            boundaries = [tf.convert_to_tensor(b) for b in tf.nest.flatten(self.boundaries)]
            values = [tf.convert_to_tensor(v) for v in tf.nest.flatten(self.values)]
            x = tf.convert_to_tensor(step)
            for i, b in enumerate(boundaries):
                if b.dtype.base_dtype != x.dtype.base_dtype:
                    boundaries[i] = tf.cast(b, x.dtype.base_dtype)
            pred_fn_pairs = [
                (x <= boundaries[0], lambda: values[0]),
                (x > boundaries[-1], lambda: values[-1]),
            ]
            for low, high, v in zip(boundaries[:-1], boundaries[1:], values[1:-1]):
                pred_fn_pairs.append(((x > low) & (x <= high), lambda v=v: v))
            return tf.case(pred_fn_pairs, lambda: values[0], exclusive=True)

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    r"""Polynomial decay from ``initial_learning_rate`` to ``end_learning_rate``.

    .. math::
        \text{lr}(t) = (\eta_0 - \eta_{end}) \cdot (1 - t' / T)^{\text{power}}
        + \eta_{end}

    Without ``cycle``, ``t' = min(t, decay_steps)`` and ``T = decay_steps`` (the rate
    stays at ``end_learning_rate`` after ``decay_steps``). With ``cycle``, ``t' = t``
    and ``T = decay_steps * max(1, ceil(t / decay_steps))``: the decay restarts, each
    time over a longer horizon.

    Args:
      initial_learning_rate: float or scalar float tensor, ``>= 0``.
      decay_steps: ``> 0``.
      end_learning_rate: ``>= 0``. Defaults to ``1e-4``.
      power: exponent, ``>= 0``. Defaults to ``1.0`` (linear).
      cycle: whether to restart after ``decay_steps``.
      name: name scope of the ops. Defaults to ``"PolynomialDecay"``.
    """

    def __init__(
        self,
        initial_learning_rate: Any,
        decay_steps: Any,
        end_learning_rate: Any = 0.0001,
        power: Any = 1.0,
        cycle: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        _check_number(cls, "initial_learning_rate", initial_learning_rate, why=_RATE_WHY)
        _check_number(cls, "decay_steps", decay_steps, positive=True, why=_STEPS_WHY)
        _check_number(cls, "end_learning_rate", end_learning_rate, why=_RATE_WHY)
        _check_number(
            cls,
            "power",
            power,
            why=" A negative power makes the rate inf at decay_steps.",
        )
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = name

    def __call__(self, step: Any) -> tf.Tensor:
        with tf.name_scope(self.name or "PolynomialDecay") as name:
            initial_learning_rate = tf.convert_to_tensor(
                self.initial_learning_rate, name="initial_learning_rate"
            )
            dtype = initial_learning_rate.dtype
            end_learning_rate = tf.cast(self.end_learning_rate, dtype)
            power = tf.cast(self.power, dtype)
            t = tf.cast(step, dtype)
            decay_steps = tf.cast(self.decay_steps, dtype)
            if self.cycle:
                # tf_keras divides by the raw ``self.decay_steps``, which fails for a
                # tensor ``decay_steps``; the cast value is the same number otherwise.
                multiplier = tf.where(tf.equal(t, 0), 1.0, tf.math.ceil(t / decay_steps))
                decay_steps = tf.multiply(decay_steps, multiplier)
            else:
                t = tf.minimum(t, decay_steps)
            p = tf.divide(t, decay_steps)
            return tf.add(
                tf.multiply(initial_learning_rate - end_learning_rate, tf.pow(1 - p, power)),
                end_learning_rate,
                name=name,
            )

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class InverseTimeDecay(LearningRateSchedule):
    r"""Inverse-time decay.

    .. math::
        p = t / \text{decay\_steps} \quad (\lfloor p \rfloor \text{ if staircase}),
        \qquad \text{lr}(t) = \frac{\text{initial\_learning\_rate}}
        {1 + \text{decay\_rate} \cdot p}

    Args:
      initial_learning_rate: float or scalar float tensor, ``>= 0``.
      decay_steps: ``> 0``.
      decay_rate: ``>= 0``.
      staircase: if True, decay in whole periods.
      name: name scope of the ops. Defaults to ``"InverseTimeDecay"``.
    """

    def __init__(
        self,
        initial_learning_rate: Any,
        decay_steps: Any,
        decay_rate: Any,
        staircase: bool = False,
        name: str | None = None,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        _check_number(cls, "initial_learning_rate", initial_learning_rate, why=_RATE_WHY)
        _check_number(cls, "decay_steps", decay_steps, positive=True, why=_STEPS_WHY)
        _check_number(
            cls,
            "decay_rate",
            decay_rate,
            why=" A negative rate makes the denominator 0.",
        )
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = name

    def __call__(self, step: Any) -> tf.Tensor:
        with tf.name_scope(self.name or "InverseTimeDecay") as name:
            initial_learning_rate = tf.convert_to_tensor(
                self.initial_learning_rate, name="initial_learning_rate"
            )
            dtype = initial_learning_rate.dtype
            decay_steps = tf.cast(self.decay_steps, dtype)
            decay_rate = tf.cast(self.decay_rate, dtype)
            p = tf.cast(step, dtype) / decay_steps
            if self.staircase:
                p = tf.floor(p)
            one = tf.cast(tf.constant(1), dtype)
            denom = tf.add(one, tf.multiply(decay_rate, p))
            return tf.divide(initial_learning_rate, denom, name=name)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class CosineDecay(LearningRateSchedule):
    r"""Cosine decay, with an optional linear warmup before it.

    Without warmup (``warmup_target is None``), with ``t' = min(t, decay_steps)``:

    .. math::
        \text{lr}(t) = \eta_0 \cdot \Big((1 - \alpha) \cdot
        \tfrac12\big(1 + \cos(\pi\, t' / \text{decay\_steps})\big) + \alpha\Big)

    With warmup, ``t' = min(t, warmup_steps + decay_steps)``; for ``t' < warmup_steps``
    the rate rises linearly, ``η0 + (warmup_target - η0) · t' / warmup_steps``, then
    decays as above from ``warmup_target`` with ``t' - warmup_steps`` in place of ``t'``.

    Args:
      initial_learning_rate: float or scalar float tensor, ``>= 0``.
      decay_steps: length of the cosine decay, ``> 0``.
      alpha: final rate as a fraction of the decayed-from rate, ``>= 0``.
      name: name scope of the ops. Defaults to ``"CosineDecay"``.
      warmup_target: rate reached at the end of warmup, ``>= 0``; None: no warmup.
      warmup_steps: length of the warmup, ``>= 0``.
    """

    def __init__(
        self,
        initial_learning_rate: Any,
        decay_steps: Any,
        alpha: Any = 0.0,
        name: str | None = None,
        warmup_target: Any = None,
        warmup_steps: Any = 0,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        _check_number(cls, "initial_learning_rate", initial_learning_rate, why=_RATE_WHY)
        # decay_steps=0 with a warmup is a warmup-only schedule (tf_keras's own
        # tests use it): meaningful for every step before the end of the warmup.
        warmup_only = warmup_target is not None and not (
            _is_number(warmup_steps) and warmup_steps <= 0
        )
        _check_number(cls, "decay_steps", decay_steps, positive=not warmup_only, why=_STEPS_WHY)
        _check_number(cls, "alpha", alpha, why=" A negative alpha makes the final rate negative.")
        _check_number(cls, "warmup_target", warmup_target, why=_RATE_WHY)
        _check_number(cls, "warmup_steps", warmup_steps, why=" It is a number of steps.")
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = name
        self.warmup_steps = warmup_steps
        self.warmup_target = warmup_target

    def _decay(
        self, t: tf.Tensor, decay_steps: tf.Tensor, from_lr: tf.Tensor, dtype: tf.DType
    ) -> tf.Tensor:
        # ``self.alpha`` enters uncast, as in tf_keras: (1 - alpha) is a Python number.
        with tf.name_scope(self.name or "CosineDecay"):
            completed_fraction = t / decay_steps
            pi = tf.constant(math.pi, dtype=dtype)
            cosine_decayed = 0.5 * (1.0 + tf.cos(pi * completed_fraction))
            decayed = (1 - self.alpha) * cosine_decayed + self.alpha
            return tf.multiply(from_lr, decayed)

    def _warmup(
        self,
        t: tf.Tensor,
        warmup_steps: tf.Tensor,
        target: tf.Tensor,
        initial: tf.Tensor,
    ) -> tf.Tensor:
        with tf.name_scope(self.name or "CosineDecay"):
            completed_fraction = t / warmup_steps
            total_step_delta = target - initial
            return total_step_delta * completed_fraction + initial

    def __call__(self, step: Any) -> tf.Tensor:
        with tf.name_scope(self.name or "CosineDecay"):
            initial_learning_rate = tf.convert_to_tensor(
                self.initial_learning_rate, name="initial_learning_rate"
            )
            dtype = initial_learning_rate.dtype
            decay_steps = tf.cast(self.decay_steps, dtype)
            t = tf.cast(step, dtype)
            if self.warmup_target is None:
                t = tf.minimum(t, decay_steps)
                return self._decay(t, decay_steps, initial_learning_rate, dtype)
            warmup_target = tf.cast(self.warmup_target, dtype)
            warmup_steps = tf.cast(self.warmup_steps, dtype)
            t = tf.minimum(t, decay_steps + warmup_steps)
            return tf.cond(
                t < warmup_steps,
                lambda: self._warmup(t, warmup_steps, warmup_target, initial_learning_rate),
                lambda: self._decay(t - warmup_steps, decay_steps, warmup_target, dtype),
            )

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class CosineDecayRestarts(LearningRateSchedule):
    r"""Cosine decay with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Period ``i`` (from 0) lasts ``first_decay_steps · t_mul^i`` steps and starts at
    ``initial_learning_rate · m_mul^i``. With ``f = t / first_decay_steps``, the
    period index and the fraction ``c`` of it completed are

    .. math::
        i = \lfloor f \rfloor,\ c = f - i \quad (t_{mul} = 1); \qquad
        i = \Big\lfloor \frac{\log(1 - f (1 - t_{mul}))}{\log t_{mul}} \Big\rfloor,\
        c = \frac{f - \frac{1 - t_{mul}^i}{1 - t_{mul}}}{t_{mul}^i} \quad (t_{mul} \ne 1)

    .. math::
        \text{lr}(t) = \eta_0 \cdot \Big((1 - \alpha) \cdot
        \tfrac12\, m_{mul}^i \big(1 + \cos(\pi c)\big) + \alpha\Big)

    With ``0 < t_mul < 1`` the periods shrink and sum to
    ``first_decay_steps / (1 - t_mul)`` steps, after which the value is NaN (as in
    tf_keras); such a schedule warns when built.

    Args:
      initial_learning_rate: float or scalar float tensor, ``>= 0``.
      first_decay_steps: length of the first period, ``> 0``.
      t_mul: factor on the period length at each restart, ``> 0``. Defaults to 2.
      m_mul: factor on the restart rate at each restart, ``>= 0``. Defaults to 1.
      alpha: minimum rate as a fraction of ``initial_learning_rate``, ``>= 0``.
      name: name scope of the ops. Defaults to ``"SGDRDecay"``.
    """

    def __init__(
        self,
        initial_learning_rate: Any,
        first_decay_steps: Any,
        t_mul: Any = 2.0,
        m_mul: Any = 1.0,
        alpha: Any = 0.0,
        name: str | None = None,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        _check_number(cls, "initial_learning_rate", initial_learning_rate, why=_RATE_WHY)
        _check_number(cls, "first_decay_steps", first_decay_steps, positive=True, why=_STEPS_WHY)
        _check_number(
            cls,
            "t_mul",
            t_mul,
            positive=True,
            why=" The period length is multiplied by it.",
        )
        _check_number(cls, "m_mul", m_mul, why=_RATE_WHY)
        _check_number(cls, "alpha", alpha, why=" A negative alpha makes the rate negative.")
        if _is_number(t_mul) and t_mul < 1 and _is_number(first_decay_steps):
            warnings.warn(
                f"{cls}: t_mul={t_mul!r} < 1 shrinks each period; the schedule is NaN from "
                f"step {first_decay_steps / (1 - t_mul):g} on "
                "(first_decay_steps / (1 - t_mul)).",
                stacklevel=2,
            )
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self._t_mul = t_mul
        self._m_mul = m_mul
        self.alpha = alpha
        self.name = name

    def __call__(self, step: Any) -> tf.Tensor:
        with tf.name_scope(self.name or "SGDRDecay") as name:
            initial_learning_rate = tf.convert_to_tensor(
                self.initial_learning_rate, name="initial_learning_rate"
            )
            dtype = initial_learning_rate.dtype
            first_decay_steps = tf.cast(self.first_decay_steps, dtype)
            alpha = tf.cast(self.alpha, dtype)
            t_mul = tf.cast(self._t_mul, dtype)
            m_mul = tf.cast(self._m_mul, dtype)
            completed_fraction = tf.cast(step, dtype) / first_decay_steps

            def compute_step(fraction: tf.Tensor, geometric: bool):
                if geometric:
                    i_restart = tf.floor(
                        tf.math.log(1.0 - fraction * (1.0 - t_mul)) / tf.math.log(t_mul)
                    )
                    sum_r = (1.0 - t_mul**i_restart) / (1.0 - t_mul)
                    fraction = (fraction - sum_r) / t_mul**i_restart
                else:
                    i_restart = tf.floor(fraction)
                    fraction -= i_restart
                return i_restart, fraction

            i_restart, completed_fraction = tf.cond(
                tf.equal(t_mul, 1.0),
                lambda: compute_step(completed_fraction, geometric=False),
                lambda: compute_step(completed_fraction, geometric=True),
            )
            m_fac = m_mul**i_restart
            cosine_decayed = (
                0.5 * m_fac * (1.0 + tf.cos(tf.constant(math.pi, dtype=dtype) * completed_fraction))
            )
            decayed = (1 - alpha) * cosine_decayed + alpha
            return tf.multiply(initial_learning_rate, decayed, name=name)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self._t_mul,
            "m_mul": self._m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }


class LinearCosineDecay(LearningRateSchedule):
    r"""Linear cosine decay (Bello et al., 2017), tf_keras's ``experimental`` schedule.

    With ``t' = min(t, decay_steps)``:

    .. math::
        \text{lr}(t) = \eta_0 \Big(\big(\alpha + \tfrac{\text{decay\_steps} - t'}
        {\text{decay\_steps}}\big) \cdot \tfrac12\big(1 + \cos(2\pi\, n\, t' /
        \text{decay\_steps})\big) + \beta\Big)

    with ``n = num_periods``.
    """

    def __init__(
        self,
        initial_learning_rate: Any,
        decay_steps: Any,
        num_periods: Any = 0.5,
        alpha: Any = 0.0,
        beta: Any = 0.001,
        name: str | None = None,
    ) -> None:
        super().__init__()
        cls = type(self).__name__
        _check_number(cls, "initial_learning_rate", initial_learning_rate, why=_RATE_WHY)
        _check_number(cls, "decay_steps", decay_steps, positive=True, why=_STEPS_WHY)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.num_periods = num_periods
        self.alpha = alpha
        self.beta = beta
        self.name = name

    def _linear_cosine(self, step: Any, noise: Callable | None = None) -> tf.Tensor:
        with tf.name_scope(self.name or type(self).__name__) as name:
            initial_learning_rate = tf.convert_to_tensor(
                self.initial_learning_rate, name="initial_learning_rate"
            )
            dtype = initial_learning_rate.dtype
            decay_steps = tf.cast(self.decay_steps, dtype)
            if noise is not None:
                initial_variance = tf.cast(self.initial_variance, dtype)
                variance_decay = tf.cast(self.variance_decay, dtype)
            num_periods = tf.cast(self.num_periods, dtype)
            alpha = tf.cast(self.alpha, dtype)
            beta = tf.cast(self.beta, dtype)
            t = tf.minimum(tf.cast(step, dtype), decay_steps)
            linear_decayed = (decay_steps - t) / decay_steps
            if noise is not None:
                std = tf.sqrt(initial_variance / tf.pow(1.0 + t, variance_decay))
                linear_decayed = linear_decayed + noise(linear_decayed.shape, std)
            fraction = 2.0 * num_periods * (t / decay_steps)
            cosine_decayed = 0.5 * (1.0 + tf.cos(tf.constant(math.pi, dtype=dtype) * fraction))
            decayed = (alpha + linear_decayed) * cosine_decayed + beta
            return tf.multiply(initial_learning_rate, decayed, name=name)

    def __call__(self, step: Any) -> tf.Tensor:
        return self._linear_cosine(step)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "num_periods": self.num_periods,
            "alpha": self.alpha,
            "beta": self.beta,
            "name": self.name,
        }


class NoisyLinearCosineDecay(LinearCosineDecay):
    r"""`LinearCosineDecay` with Gaussian noise added to the linear term.

    The noise has variance ``initial_variance / (1 + t')**variance_decay``. As in
    tf_keras, it is drawn with ``tf.random.normal`` (float32), seeded with
    ``seed``, ``seed + 1``, ... on successive calls when ``seed`` is given.
    """

    def __init__(
        self,
        initial_learning_rate: Any,
        decay_steps: Any,
        initial_variance: Any = 1.0,
        variance_decay: Any = 0.55,
        num_periods: Any = 0.5,
        alpha: Any = 0.0,
        beta: Any = 0.001,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(initial_learning_rate, decay_steps, num_periods, alpha, beta, name)
        _check_number(type(self).__name__, "initial_variance", initial_variance)
        self.initial_variance = initial_variance
        self.variance_decay = variance_decay
        self.seed = seed
        self._next_seed = seed

    def _noise(self, shape: Any, std: tf.Tensor) -> tf.Tensor:
        seed = self._next_seed
        if seed is not None:
            self._next_seed = seed + 1
        return tf.random.normal(shape, stddev=std, dtype=tf.float32, seed=seed)

    def __call__(self, step: Any) -> tf.Tensor:
        return self._linear_cosine(step, noise=self._noise)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            initial_variance=self.initial_variance,
            variance_decay=self.variance_decay,
            seed=self.seed,
        )
        # tf_keras's key order
        order = ["initial_learning_rate", "decay_steps", "initial_variance", "variance_decay",
                 "num_periods", "alpha", "beta", "seed", "name"]  # fmt: skip
        return {key: config[key] for key in order}


def serialize(learning_rate_schedule: Any, use_legacy_format: bool = False) -> dict[str, Any]:
    """tf_keras's ``learning_rate_schedule.serialize`` (see keras_opt.schedules.serialization)."""
    from keras_opt.schedules import serialization

    return serialization.serialize(learning_rate_schedule, use_legacy_format=use_legacy_format)


def deserialize(
    config: Any, custom_objects: Mapping[str, Any] | None = None, use_legacy_format: bool = False
) -> Any:
    """tf_keras's ``learning_rate_schedule.deserialize`` (see keras_opt.schedules.serialization)."""
    from keras_opt.schedules import serialization

    return serialization.deserialize(
        config, custom_objects=custom_objects, use_legacy_format=use_legacy_format
    )
