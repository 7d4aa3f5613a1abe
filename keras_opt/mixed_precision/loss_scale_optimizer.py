"""LossScaleOptimizer: tf_keras's legacy loss scaling around a keras_opt optimizer.

float16 has a narrow range: small gradients underflow to zero and large ones
overflow to inf. Loss scaling multiplies the loss by a factor S before
differentiating (so every intermediate gradient is S times larger and clear of
the underflow region) and divides the final gradients by S before the update.

With dynamic scaling (the default) S starts at ``2**15``. A step whose gradients
contain inf or NaN is skipped (only ``iterations`` advances) and S is halved,
never below 1; after ``dynamic_growth_steps`` consecutive finite steps S is
doubled (unless the doubled value would be inf). With ``dynamic=False`` S is a
constant and no step is skipped.

The wrapper is checkpoint-transparent, as tf_keras's: it presents itself to
``tf.train.Checkpoint`` as the inner optimizer (same keys, same slot entries)
plus ``loss_scale/current_loss_scale`` and ``loss_scale/good_steps``. A tf_keras
``LossScaleOptimizer`` checkpoint therefore restores into this one and back, and a
checkpoint of the bare inner optimizer restores into a wrapped one.
"""

from __future__ import annotations

import copy
import math
import numbers
import sys
from typing import Any, Iterable, Sequence

import tensorflow as tf
from tensorflow.python.platform import tf_logging as logging

from keras_opt import serialization
from keras_opt.optimizer_v2 import base_arguments, optimizer_v2
from keras_opt.optimizer_v2 import gradients as gradients_lib

_DEFAULT_INITIAL_SCALE = 2**15
_DEFAULT_GROWTH_STEPS = 2000
_MULTIPLIER = 2.0

_SUPPORTED_STRATEGIES = (
    tf.distribute.MirroredStrategy,
    tf.compat.v1.distribute.MirroredStrategy,
    tf.distribute.MultiWorkerMirroredStrategy,
    tf.compat.v1.distribute.experimental.MultiWorkerMirroredStrategy,
    tf.distribute.OneDeviceStrategy,
    tf.compat.v1.distribute.OneDeviceStrategy,
)
_TPU_STRATEGIES = (
    tf.distribute.TPUStrategy,
    tf.distribute.experimental.TPUStrategy,
    tf.compat.v1.distribute.experimental.TPUStrategy,
)

_USAGE = """
    with tf.GradientTape() as tape:
        loss = compute_loss()
        scaled_loss = opt.get_scaled_loss(loss)
    scaled_grads = tape.gradient(scaled_loss, variables)
    grads = opt.get_unscaled_gradients(scaled_grads)
    opt.apply_gradients(zip(grads, variables))
(or `opt.minimize(loss_fn, variables)`, which does all of it; Keras 3 style:
`opt.scale_loss(loss)`, then `opt.apply(scaled_grads, variables)`)."""


# ----------------------------------------------------------------- helpers
class _Opaque:
    """A box that ``tf.distribute`` passes through ``call_for_each_replica`` as is.

    The inner optimizer must receive the distributed variables themselves in
    each replica, not their per-replica components.
    """

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


def _all_finite(grads: Sequence[Any]) -> tf.Tensor:
    """Scalar bool tensor: True when no gradient holds an inf or a NaN."""
    checks = []
    for grad in grads:
        if grad is None:
            continue
        values = grad.values if isinstance(grad, tf.IndexedSlices) else grad
        checks.append(tf.reduce_all(tf.math.is_finite(values)))
    return tf.reduce_all(checks)


_HALF_DTYPES = (tf.float16, tf.bfloat16)


def _unscale(values: tf.Tensor, reciprocal: tf.Tensor) -> tf.Tensor:
    """``values * reciprocal`` for a float32 scalar ``reciprocal``, in ``values``'s dtype.

    float32 and float64 values multiply by the reciprocal cast to their dtype, as
    tf_keras does. Half-precision values are multiplied in float32 and the
    product is rounded once: tf_keras rounds the reciprocal to the half type
    first, which is exact (and gives the same bits) for a power-of-two scale up to
    2**24, but zeroes every float16 gradient from a scale of 2**25 on (2**-25
    rounds to 0) and is off by up to tens of percent for other scales whose
    reciprocal is a float16 subnormal.
    """
    dtype = values.dtype.base_dtype
    if dtype in _HALF_DTYPES:
        return tf.cast(tf.cast(values, tf.float32) * reciprocal, dtype)
    return values * tf.cast(reciprocal, dtype)


def _unscale_gradient(grad, reciprocal):
    """`_unscale` for a dense gradient or the values of an IndexedSlices one."""
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(
            _unscale(grad.values, reciprocal), grad.indices, dense_shape=grad.dense_shape
        )
    return _unscale(grad, reciprocal)


def _op_or_tensor(value):
    """The op behind ``value`` in a graph (cond branches return ops), the value eagerly."""
    return value if tf.executing_eagerly() else value.op


def _assign_if_finite(var: tf.Variable, value: tf.Tensor):
    return tf.cond(tf.math.is_finite(value), lambda: _op_or_tensor(var.assign(value)), tf.no_op)


def strategy_supports_loss_scaling() -> bool:
    """True when the current strategy (if any) supports loss scaling, as in tf_keras.

    Loss scaling needs one variable copy per compute replica: no strategy,
    MirroredStrategy, MultiWorkerMirroredStrategy or OneDeviceStrategy.
    """
    if not tf.distribute.has_strategy():
        return True
    return isinstance(tf.distribute.get_strategy(), _SUPPORTED_STRATEGIES)


def _check_strategy() -> None:
    """Loss scaling needs one variable copy per compute replica (Mirrored-style)."""
    if strategy_supports_loss_scaling():
        return
    strategy = tf.distribute.get_strategy()
    if isinstance(strategy, _TPU_STRATEGIES):
        raise ValueError(
            "LossScaleOptimizer does not support TPUStrategy: TPUs train in bfloat16, "
            "which has float32's range and needs no loss scaling. Use the inner optimizer "
            "directly."
        )
    raise ValueError(
        f"LossScaleOptimizer does not support {type(strategy).__name__}: gradients would "
        "be unscaled once per compute replica instead of once per variable copy. Supported: "
        "MirroredStrategy, MultiWorkerMirroredStrategy, OneDeviceStrategy, or no strategy."
    )


def _positive_scale(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, tf.Tensor, tf.Variable)):
        raise TypeError(
            f"`initial_scale` must be a positive number; received {value!r} "
            f"({type(value).__name__})."
        )
    scale = float(value)
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"`initial_scale` must be a finite number > 0; received {scale}.")
    return scale


def _growth_steps(value: Any) -> int:
    integral = isinstance(value, numbers.Integral) or (
        isinstance(value, float) and value.is_integer()
    )
    if isinstance(value, bool) or not integral:
        raise TypeError(
            f"`dynamic_growth_steps` must be an integer >= 1; received {value!r} "
            f"({type(value).__name__})."
        )
    if int(value) < 1:
        raise ValueError(f"`dynamic_growth_steps` must be an integer >= 1; received {value}.")
    return int(value)


# ----------------------------------------------------------- dynamic state
class _DynamicLossScaleState(tf.__internal__.tracking.Trackable):
    """The dynamic loss scale's two variables and its update rule.

    Checkpointed as ``current_loss_scale`` (float32) and ``good_steps`` (int64,
    the count of consecutive finite steps since the scale last changed; the name
    is tf_keras's, kept for checkpoint compatibility). The variables are never
    aggregated across replicas: every replica computes the same update.
    """

    def __init__(self, initial_loss_scale: float, growth_steps: int, multiplier: float):
        self._initial_loss_scale = float(initial_loss_scale)
        self._growth_steps = int(growth_steps)
        self._multiplier = float(multiplier)
        with tf.init_scope():
            self._current_loss_scale = self._make_variable(
                "current_loss_scale", self._initial_loss_scale, tf.float32
            )
            self._counter = self._make_variable("good_steps", 0, tf.int64)

    def _make_variable(self, name: str, initial_value, dtype: tf.DType) -> tf.Variable:
        variable = tf.Variable(
            initial_value=initial_value,
            name=name,
            dtype=dtype,
            trainable=False,
            synchronization=tf.VariableSynchronization.AUTO,
            aggregation=tf.VariableAggregation.NONE,
        )
        # Tracking by name also applies a checkpoint restore already waiting for it.
        self._track_trackable(variable, name)
        return variable

    @property
    def initial_loss_scale(self) -> float:
        return self._initial_loss_scale

    @property
    def growth_steps(self) -> int:
        return self._growth_steps

    @property
    def multiplier(self) -> float:
        return self._multiplier

    @property
    def current_loss_scale(self) -> tf.Variable:
        """The loss scale, a float32 variable."""
        return self._current_loss_scale

    @property
    def counter(self) -> tf.Variable:
        """Consecutive finite steps since the last change of the scale (int64 variable)."""
        return self._counter

    def __call__(self) -> tf.Tensor:
        return tf.convert_to_tensor(self._current_loss_scale)

    def update(self, grads: Sequence[Any]):
        """Updates the scale from this step's (aggregated, unscaled) gradients.

        Returns ``(update_op, is_finite)``; the step is to be applied only when
        ``is_finite``. In a cross-replica context each replica checks its own
        gradients: they were all-reduced, so every replica sees the same inf or
        NaN, and the first replica's answer stands for all.
        """
        grads = tf.nest.flatten(grads)
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            strategy = tf.distribute.get_strategy()
            per_replica = strategy.extended.call_for_each_replica(_all_finite, args=(grads,))
            is_finite = strategy.experimental_local_results(per_replica)[0]
        else:
            is_finite = _all_finite(grads)

        def on_finite():
            def grow():
                return tf.group(
                    _assign_if_finite(
                        self._current_loss_scale, self._current_loss_scale * self._multiplier
                    ),
                    self._counter.assign(0),
                )

            return tf.cond(
                self._counter + 1 >= self._growth_steps,
                grow,
                lambda: _op_or_tensor(self._counter.assign_add(1)),
            )

        def on_non_finite():
            shrunk = tf.maximum(self._current_loss_scale / self._multiplier, 1)
            return tf.group(self._counter.assign(0), self._current_loss_scale.assign(shrunk))

        update_op = tf.cond(is_finite, on_finite, on_non_finite)
        return update_op, is_finite


class _TF22SlotRestorer(tf.__internal__.tracking.Trackable):
    """Tracked as ``base_optimizer``, as tf_keras does, for TF 2.2-era checkpoints.

    Those checkpoints recorded the wrapped optimizer under ``base_optimizer``;
    slot values found there are handed to the inner optimizer. It owns no
    variables, so it adds nothing to new checkpoints' values.
    """

    def __init__(self, optimizer):
        self._optimizer = optimizer

    def get_slot_names(self):
        return self._optimizer.get_slot_names()

    def _create_or_restore_slot_variable(self, *args, **kwargs):
        return self._optimizer._create_or_restore_slot_variable(*args, **kwargs)


# tf_keras's name for the same thing (TF 2.2 checkpoints' ``base_optimizer``).
FakeOptimizerForRestoration = _TF22SlotRestorer


def _foreign_loss_scale_classes() -> tuple:
    """tf_keras's and Keras 3's loss-scale optimizer classes, if those are imported."""
    classes = []
    tf_keras = sys.modules.get("tf_keras")
    if tf_keras is not None:
        classes.append(tf_keras.mixed_precision.LossScaleOptimizer)
    keras = sys.modules.get("keras")
    keras_lso = getattr(getattr(keras, "optimizers", None), "LossScaleOptimizer", None)
    if isinstance(keras_lso, type):
        classes.append(keras_lso)
    return tuple(classes)


class LossScaleOptimizerMetaclass(type):
    """Makes ``BaseLossScaleOptimizer(inner)`` build the loss-scale optimizer for ``inner``.

    As tf_keras's: constructing the base picks the wrapper that fits the inner
    optimizer. A keras_opt optimizer gets keras_opt's `LossScaleOptimizer`; a
    tf_keras optimizer tf_keras's, a Keras 3 optimizer Keras 3's (those
    frameworks are already imported when one of their optimizers exists).
    ``isinstance(x, BaseLossScaleOptimizer)`` holds for all of them.
    """

    def __call__(cls, inner_optimizer, *args, **kwargs):
        if cls is not BaseLossScaleOptimizer:
            return super().__call__(inner_optimizer, *args, **kwargs)
        if isinstance(inner_optimizer, optimizer_v2.OptimizerV2):
            return LossScaleOptimizer(inner_optimizer, *args, **kwargs)
        module = type(inner_optimizer).__module__.split(".")[0]
        if module == "tf_keras" and "tf_keras" in sys.modules:
            wrapper = sys.modules["tf_keras"].mixed_precision.LossScaleOptimizer
            return wrapper(inner_optimizer, *args, **kwargs)
        keras = sys.modules.get("keras")
        if keras is not None and isinstance(inner_optimizer, keras.optimizers.Optimizer):
            return keras.optimizers.LossScaleOptimizer(inner_optimizer, *args, **kwargs)
        raise TypeError(
            '"inner_optimizer" must be an optimizer (keras_opt, tf_keras or Keras 3), but '
            f"got: {inner_optimizer!r:.200}."
        )

    def __instancecheck__(cls, instance) -> bool:
        if super().__instancecheck__(instance):
            return True
        return cls is BaseLossScaleOptimizer and isinstance(instance, _foreign_loss_scale_classes())


class BaseLossScaleOptimizer(metaclass=LossScaleOptimizerMetaclass):
    """The common base of loss-scale optimizers, as in tf_keras.

    Use it in ``isinstance`` checks, or call it with any optimizer to get the
    loss-scale optimizer that wraps it (see `LossScaleOptimizerMetaclass`).
    """


# ------------------------------------------------------------------ the optimizer
class LossScaleOptimizer(
    tf.__internal__.tracking.DelegatingTrackableMixin,
    optimizer_v2.OptimizerV2,
    BaseLossScaleOptimizer,
):
    """Wraps a keras_opt optimizer and scales the loss to avoid float16 underflow.

    tf_keras's legacy ``tf.keras.mixed_precision.LossScaleOptimizer`` for keras_opt
    optimizers, with the same numbers, config and checkpoint format.

    ``minimize`` scales the loss, unscales the gradients and updates the scale by
    itself. With a ``tf.GradientTape``, scale the loss with `get_scaled_loss`,
    unscale the gradients with `get_unscaled_gradients`, then call
    `apply_gradients`, which updates the scale and skips the step if any gradient
    is inf or NaN (then only ``iterations`` advances). Keras 3's names also work:
    `scale_loss`, then `apply` with the *scaled* gradients (it unscales them).

    Under ``MirroredStrategy`` and ``MultiWorkerMirroredStrategy`` the gradients
    are all-reduced before the finiteness check, so an inf on any replica skips
    the step on every replica.

    Hyperparameters of the inner optimizer (``learning_rate``/``lr``, ``beta_1``,
    ``decay``, ...) read and write through this object; other attributes (such
    as Adam's ``epsilon``) belong to ``inner_optimizer``. ``iterations``, slots,
    ``weights``, clipping options and ``build`` are the inner optimizer's.

    Args:
      inner_optimizer: the keras_opt optimizer (an ``OptimizerV2``) to wrap. It
        can be wrapped by one LossScaleOptimizer only.
      dynamic: whether the scale adapts (True) or stays at ``initial_scale``.
      initial_scale: the starting scale; defaults to ``2**15`` when dynamic, and
        is required when ``dynamic=False``.
      dynamic_growth_steps: consecutive finite steps after which a dynamic scale
        doubles; defaults to 2000. Only with ``dynamic=True``.
    """

    _HAS_AGGREGATE_GRAD = True

    def __init__(
        self,
        inner_optimizer: optimizer_v2.OptimizerV2,
        dynamic: bool = True,
        initial_scale: float | None = None,
        dynamic_growth_steps: int | None = None,
    ):
        if not isinstance(inner_optimizer, optimizer_v2.OptimizerV2):
            raise TypeError(
                "`inner_optimizer` must be a keras_opt optimizer (an instance of "
                "keras_opt.Optimizer, e.g. keras_opt.Adam()); received "
                f"{type(inner_optimizer).__module__}.{type(inner_optimizer).__name__}. "
                "tf_keras optimizers go in tf_keras.mixed_precision.LossScaleOptimizer."
            )
        if not isinstance(dynamic, bool):
            raise TypeError(
                f"`dynamic` must be a bool (True or False); received {dynamic!r}. The second "
                "argument is no longer a loss scale: pass `initial_scale=` for a fixed scale."
            )
        if isinstance(inner_optimizer, LossScaleOptimizer):
            raise TypeError(
                "A LossScaleOptimizer cannot wrap another LossScaleOptimizer; wrap its "
                "`inner_optimizer` instead, or use the one you have."
            )
        _check_strategy()
        if getattr(inner_optimizer, "_is_wrapped_by_loss_scale_optimizer", False):
            # Two wrappers would both claim the inner optimizer's checkpoint entries.
            raise ValueError(
                f"The optimizer {inner_optimizer._name!r} is already wrapped by a "
                "LossScaleOptimizer; an optimizer can be wrapped by only one."
            )
        if dynamic:
            scale = _positive_scale(
                _DEFAULT_INITIAL_SCALE if initial_scale is None else initial_scale
            )
            steps = _growth_steps(
                _DEFAULT_GROWTH_STEPS if dynamic_growth_steps is None else dynamic_growth_steps
            )
        else:
            if initial_scale is None:
                raise ValueError(
                    "`initial_scale` is required when `dynamic=False`: it is the fixed loss "
                    "scale (for example initial_scale=1024)."
                )
            if dynamic_growth_steps is not None:
                raise ValueError(
                    "`dynamic_growth_steps` must be None when `dynamic=False` (a fixed scale "
                    f"never grows); received {dynamic_growth_steps}."
                )
            scale = _positive_scale(initial_scale)

        self._optimizer = inner_optimizer
        inner_optimizer._is_wrapped_by_loss_scale_optimizer = True
        # OptimizerV2.__init__ is not called: every optimizer attribute lives on the
        # inner optimizer, and to a checkpoint this object *is* the inner optimizer.
        tf.__internal__.tracking.DelegatingTrackableMixin.__init__(self, inner_optimizer)
        if dynamic:
            self._loss_scale = _DynamicLossScaleState(scale, steps, _MULTIPLIER)
            self._track_trackable(self._loss_scale, "loss_scale")
        else:
            self._loss_scale = scale
        self._loss_has_been_scaled = False
        self._gradients_have_been_unscaled = False
        self._warned_about_scaling = False
        self._track_trackable(_TF22SlotRestorer(inner_optimizer), "base_optimizer")

    # --------------------------------------------------------------- loss scale
    @property
    def dynamic(self) -> bool:
        """Whether the loss scale adapts during training."""
        return isinstance(self._loss_scale, _DynamicLossScaleState)

    @property
    def loss_scale(self) -> tf.Tensor:
        """The current loss scale, a float32 scalar tensor."""
        if self.dynamic:
            return tf.convert_to_tensor(self._loss_scale.current_loss_scale)
        return tf.convert_to_tensor(self._loss_scale)

    @property
    def dynamic_counter(self) -> tf.Variable | None:
        """Consecutive finite steps since the scale last changed (None if not dynamic).

        When it would reach `dynamic_growth_steps` the scale doubles and the
        counter restarts at 0; a non-finite step also resets it.
        """
        return self._loss_scale.counter if self.dynamic else None

    @property
    def initial_scale(self) -> float:
        """The starting loss scale (the only one when `dynamic` is False)."""
        return self._loss_scale.initial_loss_scale if self.dynamic else self._loss_scale

    @property
    def dynamic_growth_steps(self) -> int | None:
        """Finite steps between doublings of the scale (None if not dynamic)."""
        return self._loss_scale.growth_steps if self.dynamic else None

    @property
    def inner_optimizer(self) -> optimizer_v2.OptimizerV2:
        """The wrapped optimizer."""
        return self._optimizer

    def get_scaled_loss(self, loss: Any) -> Any:
        """``loss`` multiplied by the loss scale (cast to the loss's dtype).

        ``loss`` is a tensor, or a zero-argument callable returning one (then a
        callable is returned). Only needed with a ``tf.GradientTape``;
        `minimize` scales by itself. Pair it with `get_unscaled_gradients`.
        """
        self._loss_has_been_scaled = True
        if callable(loss):

            def scaled_loss():
                value = loss()
                return value * tf.cast(self.loss_scale, value.dtype)

            return scaled_loss
        return loss * tf.cast(self.loss_scale, loss.dtype)

    def get_unscaled_gradients(self, grads: Sequence[Any]) -> list:
        """Each gradient times ``1 / loss_scale``; None stays None, IndexedSlices stay sparse.

        The reciprocal is computed in float32 (as in tf_keras). float16 and
        bfloat16 gradients are unscaled in float32 and rounded once, which gives
        tf_keras's bits for power-of-two scales (every scale a dynamic scale
        takes from the default start) and keeps float16 gradients from being
        zeroed once the scale passes 2**24, as they are in tf_keras.
        """
        self._gradients_have_been_unscaled = True
        reciprocal = 1.0 / self.loss_scale
        return [None if g is None else _unscale_gradient(g, reciprocal) for g in grads]

    def scale_loss(self, loss: Any) -> Any:
        """Keras 3's name for `get_scaled_loss`.

        As in Keras 3, pass the resulting gradients, still scaled, to `apply`;
        `apply_gradients` keeps tf_keras's contract (unscaled gradients).
        """
        return self.get_scaled_loss(loss)

    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None):
        """Keras 3's ``apply``: unscales ``grads`` (of a `scale_loss` loss) and applies them."""
        if trainable_variables is None:
            raise ValueError(
                "`apply` needs `trainable_variables`: keras_opt optimizers do not remember "
                "a variable list. Call `opt.apply(grads, variables)`."
            )
        grads, trainable_variables = list(grads), list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"`apply` received {len(grads)} gradients for {len(trainable_variables)} "
                "variables; pass one gradient (or None) per variable."
            )
        unscaled = self.get_unscaled_gradients(grads)
        return self.apply_gradients(zip(unscaled, trainable_variables))

    # ------------------------------------------------------------- training API
    def _compute_gradients(self, loss, var_list, grad_loss=None, tape=None):
        if not callable(loss) and tape is None:
            raise ValueError(
                "`tape` is required when a `Tensor` loss is passed. "
                f"Received: loss={loss}, tape={tape}."
            )
        tape = tf.GradientTape() if tape is None else tape
        with tape:
            loss = self.get_scaled_loss(loss)
        grads_and_vars = self._optimizer._compute_gradients(
            loss, var_list, grad_loss=grad_loss, tape=tape
        )
        grads = self.get_unscaled_gradients([g for g, _ in grads_and_vars])
        return list(zip(grads, [v for _, v in grads_and_vars]))

    def get_gradients(self, loss, params) -> list:
        """The inner optimizer's `get_gradients` of the scaled loss, unscaled (TF1 graphs).

        ``get_updates`` (inherited) calls this and then `apply_gradients`, so it
        scales, unscales and updates the loss scale too.
        """
        loss = self.get_scaled_loss(loss)
        grads = self._optimizer.get_gradients(loss, params)
        return self.get_unscaled_gradients(grads)

    def _warn_if_not_scaled(self) -> None:
        """Logs (once) that the loss or the gradients were not scaled in a tape loop."""
        if self._warned_about_scaling:
            return
        scaled, unscaled = self._loss_has_been_scaled, self._gradients_have_been_unscaled
        if scaled and unscaled:
            return
        if not scaled and not unscaled:
            missing = "get_scaled_loss() and get_unscaled_gradients() were"
        elif not scaled:
            missing = "get_scaled_loss() was"
        else:
            missing = "get_unscaled_gradients() was"
        logging.warning(
            "LossScaleOptimizer.apply_gradients() was called, but %s not called first: "
            "training without loss scaling (or with scaled gradients) usually hurts the "
            "model. The usual loop is:%s",
            missing,
            _USAGE,
        )
        self._warned_about_scaling = True

    @optimizer_v2._no_autograph
    def apply_gradients(
        self,
        grads_and_vars: Iterable[tuple[Any, Any]],
        name: str | None = None,
        experimental_aggregate_gradients: bool = True,
    ):
        """Updates the loss scale; applies the gradients if all are finite.

        The gradients must already be unscaled (`get_unscaled_gradients`). On a
        step with an inf or NaN gradient the variables and slots keep their
        values and only ``iterations`` advances. Under a strategy the gradients
        are all-reduced first (unless ``experimental_aggregate_gradients=False``),
        so all replicas take the same decision.
        """
        if tf.distribute.in_cross_replica_context():
            raise ValueError(
                "apply_gradients() must be called in a replica context: call it inside "
                "`strategy.run(...)`."
            )
        # Checked again here: the optimizer is often built outside the strategy scope.
        _check_strategy()
        self._warn_if_not_scaled()
        grads_and_vars = gradients_lib.as_pairs(grads_and_vars)
        grads_and_vars = gradients_lib.filter_empty_gradients(grads_and_vars)
        grads_and_vars = gradients_lib.check_gradients(
            grads_and_vars, self._optimizer._valid_dtypes()
        )
        if experimental_aggregate_gradients:
            # Aggregate here, not in the inner optimizer: an inf on one replica
            # must reach every replica so that they all skip the step together.
            grads_and_vars = self._optimizer._transform_unaggregated_gradients(grads_and_vars)
            grads_and_vars = self._optimizer._aggregate_gradients(grads_and_vars)
        grads = [g for g, _ in grads_and_vars]
        variables = _Opaque([v for _, v in grads_and_vars])

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            update_op, finite = self._update_loss_scale(grads)
            applied = tf.__internal__.smart_cond.smart_cond(
                finite,
                lambda: self._apply_to_inner(grads, variables, name),
                self._skip_step,
            )
            return tf.group(applied, update_op)
        return tf.distribute.get_replica_context().merge_call(
            self._apply_cross_replica, args=(grads, variables, name)
        )

    def _apply_cross_replica(self, distribution, grads, variables, name):
        update_op, finite = self._update_loss_scale(grads)

        def apply_fn():
            return distribution.extended.call_for_each_replica(
                self._apply_to_inner, args=(grads, variables, name)
            )

        # The cond runs in cross-replica context: a replica-context cond cannot hold
        # a branch that calls merge_call, as the inner apply_gradients does.
        applied = tf.__internal__.smart_cond.smart_cond(finite, apply_fn, self._skip_step)
        return tf.group(applied, update_op)

    def _update_loss_scale(self, grads):
        if self.dynamic:
            return self._loss_scale.update(grads)
        return tf.no_op(), True

    def _apply_to_inner(self, grads, variables: _Opaque, name):
        # Already aggregated above: the inner optimizer must not sum again.
        return self._optimizer.apply_gradients(
            list(zip(grads, variables.value)), name=name, experimental_aggregate_gradients=False
        )

    def _skip_step(self):
        if getattr(self._optimizer, "gradient_accumulation_steps", None):
            # With gradient accumulation (a Keras 3 feature) `iterations` counts
            # applied groups and the micro-step counter the gradients taken: a
            # skipped micro-step is neither, as in Keras 3's loss scaler.
            return tf.no_op()
        # The inner apply_gradients (which counts steps) does not run: count here,
        # as tf_keras legacy does.
        return self._optimizer.iterations.assign_add(1, read_value=False)

    # ------------------------------------------------------------------- config
    def get_config(self) -> dict:
        """tf_keras's keys: ``inner_optimizer`` (serialized), ``dynamic``,
        ``initial_scale``, ``dynamic_growth_steps``."""
        return {
            "inner_optimizer": serialization.serialize(self._optimizer),
            "dynamic": self.dynamic,
            "initial_scale": self.initial_scale,
            "dynamic_growth_steps": self.dynamic_growth_steps,
        }

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None):
        """Rebuilds from `get_config` output, tf_keras's, or a TF <= 2.3 ``loss_scale`` config."""
        config = dict(config)
        if "loss_scale" in config:
            config.update(_from_v1_loss_scale(config.pop("loss_scale")))
            config["inner_optimizer"] = config.pop("optimizer")
        if "inner_optimizer" not in config:
            raise ValueError(
                "A LossScaleOptimizer config needs an 'inner_optimizer' entry (a serialized "
                f"optimizer); received keys {sorted(config)}."
            )
        inner = config.pop("inner_optimizer")
        if not isinstance(inner, optimizer_v2.OptimizerV2):
            inner = serialization.deserialize(inner, custom_objects=custom_objects)
        return cls(inner, **config)

    # ------------------------------------------------ delegation to the inner optimizer
    @property
    def iterations(self) -> tf.Variable:
        """The inner optimizer's step counter (skipped steps count too)."""
        return self._optimizer.iterations

    @iterations.setter
    def iterations(self, variable):
        self._optimizer.iterations = variable

    @property
    def learning_rate(self):
        return self._optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self._optimizer.learning_rate = value

    @property
    def lr(self):
        return self._optimizer.learning_rate

    @lr.setter
    def lr(self, value):
        self._optimizer.learning_rate = value

    @property
    def clipnorm(self):
        return self._optimizer.clipnorm

    @clipnorm.setter
    def clipnorm(self, value):
        self._optimizer.clipnorm = value

    @property
    def global_clipnorm(self):
        return self._optimizer.global_clipnorm

    @global_clipnorm.setter
    def global_clipnorm(self, value):
        self._optimizer.global_clipnorm = value

    @property
    def clipvalue(self):
        return self._optimizer.clipvalue

    @clipvalue.setter
    def clipvalue(self, value):
        self._optimizer.clipvalue = value

    @property
    def weights(self) -> list[tf.Variable]:
        """The inner optimizer's variables (the loss scale's are not among them)."""
        return self._optimizer.weights

    def variables(self) -> list[tf.Variable]:
        return self._optimizer.variables()

    def get_weights(self) -> list:
        return self._optimizer.get_weights()

    def set_weights(self, weights: Sequence[Any]) -> None:
        return self._optimizer.set_weights(weights)

    def build(self, var_list: Iterable[Any]) -> None:
        """Creates the inner optimizer's variables and slots for ``var_list``."""
        return self._optimizer.build(var_list)

    def get_slot_names(self) -> list[str]:
        return self._optimizer.get_slot_names()

    def get_slot(self, var, slot_name: str):
        return self._optimizer.get_slot(var, slot_name)

    def add_slot(self, var, slot_name: str, initializer="zeros", shape=None):
        return self._optimizer.add_slot(var, slot_name, initializer, shape=shape)

    def _create_all_weights(self, var_list):
        return self._optimizer._create_all_weights(var_list)

    def _aggregate_gradients(self, grads_and_vars):
        return self._optimizer._aggregate_gradients(grads_and_vars)

    def _valid_dtypes(self):
        return self._optimizer._valid_dtypes()

    # The Keras 3 base features (weight decay, EMA, accumulation, loss_scale_factor)
    # are the inner optimizer's: their methods act on it (attributes: see below).
    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """The inner optimizer's `exclude_from_weight_decay`."""
        self._optimizer.exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    def finalize_variable_values(self, var_list) -> None:
        """The inner optimizer's `finalize_variable_values` (copies EMA averages in)."""
        self._optimizer.finalize_variable_values(var_list)

    def swap_ema_weights(self, var_list):
        """The inner optimizer's `swap_ema_weights` context manager."""
        return self._optimizer.swap_ema_weights(var_list)

    def _restore_slot_variable(self, slot_name, variable, slot_variable):
        return self._optimizer._restore_slot_variable(slot_name, variable, slot_variable)

    def _create_or_restore_slot_variable(self, *args, **kwargs):
        return self._optimizer._create_or_restore_slot_variable(*args, **kwargs)

    def __getattr__(self, name: str):
        # Only reached when normal lookup fails: hyperparameters of the inner optimizer.
        inner = self.__dict__.get("_optimizer")
        if inner is not None and name not in ("_optimizer", "_hyper"):
            key = "learning_rate" if name == "lr" else name
            if key in inner._hyper:
                return inner._get_hyper(key)
        raise AttributeError(f"'{type(self).__name__}' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any):
        if name == "lr":
            name = "learning_rate"
        inner = self.__dict__.get("_optimizer")
        if (
            inner is not None
            and name in inner._hyper
            and name not in self.__dict__
            and not any(name in klass.__dict__ for klass in type(self).__mro__)
        ):
            inner._set_hyper(name, value)
        else:
            object.__setattr__(self, name, value)

    def __dir__(self):
        names = set(super().__dir__())
        inner = self.__dict__.get("_optimizer")
        if inner is not None:
            names |= set(inner._hyper)
            if "learning_rate" in inner._hyper:
                names.add("lr")
        return sorted(names)

    def __deepcopy__(self, memo):
        result = type(self).__new__(type(self))
        memo[id(self)] = result
        for key, value in self.__dict__.items():
            object.__setattr__(result, key, copy.deepcopy(value, memo))
        return result


def _from_v1_loss_scale(loss_scale: Any) -> dict:
    """Constructor arguments from a TF <= 2.3 ``FixedLossScale``/``DynamicLossScale`` config."""
    if isinstance(loss_scale, numbers.Real) and not isinstance(loss_scale, bool):
        return {"dynamic": False, "initial_scale": float(loss_scale)}
    if isinstance(loss_scale, str) and loss_scale == "dynamic":
        return {"dynamic": True}
    if not isinstance(loss_scale, dict) or "class_name" not in loss_scale:
        raise ValueError(
            "Cannot read the 'loss_scale' entry of this TF <= 2.3 LossScaleOptimizer "
            f"config: {loss_scale!r:.200}."
        )
    kind, args = loss_scale["class_name"], dict(loss_scale.get("config") or {})
    if kind == "FixedLossScale":
        return {"dynamic": False, "initial_scale": float(args["loss_scale_value"])}
    if kind == "DynamicLossScale":
        multiplier = float(args.get("multiplier", _MULTIPLIER))
        if multiplier != _MULTIPLIER:
            raise ValueError(
                "Only a DynamicLossScale with multiplier 2 can be converted to a "
                f"LossScaleOptimizer; this config has multiplier {multiplier}."
            )
        return {
            "dynamic": True,
            "initial_scale": float(args.get("initial_loss_scale", _DEFAULT_INITIAL_SCALE)),
            "dynamic_growth_steps": int(args.get("increment_period", _DEFAULT_GROWTH_STEPS)),
        }
    raise ValueError(
        f"Unknown loss scale class {kind!r} in a TF <= 2.3 LossScaleOptimizer config; "
        "expected 'FixedLossScale' or 'DynamicLossScale'."
    )


def _inner_feature(name: str) -> property:
    def fget(self):
        return getattr(self._optimizer, name)

    def fset(self, value):
        setattr(self._optimizer, name, value)

    return property(fget, fset, doc=f"The inner optimizer's ``{name}``.")


for _feature in base_arguments.FEATURE_DEFAULTS:
    setattr(LossScaleOptimizer, _feature, _inner_feature(_feature))
del _feature
