"""OptimizerV2: the base class of keras_opt's optimizers.

A faithful reimplementation of tf_keras's legacy ``OptimizerV2`` contract:
hyperparameters (``_set_hyper``/``_get_hyper``), slot variables
(``add_slot``/``get_slot``), coefficients computed once per (device, dtype) in
``_prepare_local``, the ``_resource_apply_dense``/``_resource_apply_sparse``
hooks, ``apply_gradients`` under ``tf.distribute``, and the checkpoint object
graph (``iter``, hyperparameter variables by name, slot variables by slot name).

``apply_gradients`` runs one fixed sequence of stages (the ones marked * run
only when their Keras 3 base argument is set, each from a module of its own)::

    pairs       check pairs, drop None gradients, validate dtypes and shapes
    weights     create iterations, hyperparameter variables and slots (once)
    prepare     coefficients per (device, dtype)
    unscale*    gradients / loss_scale_factor               (loss_scale_factor.py)
    aggregate   _transform_unaggregated_gradients, then _aggregate_gradients
    accumulate* every call but each k-th: grad_accum += grad, stop here;
                on the k-th: grad = (grad + grad_accum) / k  (accumulation.py)
    transform   _gradient_stages(): clipvalue, clipnorm, global_clipnorm,
                gradient_transformers
    apply       per variable, under merge_call / extended.update:
                weight decay* var -= var * weight_decay * lr_t (weight_decay.py),
                _resource_apply_dense or _resource_apply_sparse_duplicate_indices,
                then the variable's constraint; grad_accum* <- 0
    ema*        ema = m * ema + (1 - m) * var; every f-th step var <- ema (ema.py)
    finish      iterations += 1 (with accumulation: on the k-th call only;
                grad_accum_iter += 1 on every call)

Later features hook into a stage instead of rewriting the method: a gradient
transformation appends to ``_gradient_stages()``, per-variable work goes into
``_apply_one``, and work after all variables are updated goes before the
iteration increment in ``_distributed_apply``. With none of the starred
arguments set, the traced graph, the numbers, the config and the checkpoint
are tf_keras legacy's.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import numbers
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf
from tensorflow.python.util import tf_inspect

from keras_opt.kernels import dispatch as fused_dispatch
from keras_opt.kernels import groups as fused_groups
from keras_opt.optimizer_v2 import (
    accumulation,
    base_arguments,
    checkpointing,
    ema,
    hyperparameters,
    loss_scale_factor,
    slots,
)
from keras_opt.optimizer_v2 import gradients as gradients_lib
from keras_opt.optimizer_v2 import variables as variables_lib
from keras_opt.optimizer_v2 import weight_decay as weight_decay_lib
from keras_opt.optimizer_v2.legacy_names import (  # noqa: F401  (tf_keras's module names)
    NullContextmanager,
    name_scope_only_in_function_or_graph,
)

_DEFAULT_VALID_DTYPES = frozenset(
    [tf.float16, tf.bfloat16, tf.float32, tf.float64, tf.complex64, tf.complex128]
)
_ALLOWED_KWARGS = ("clipnorm", "clipvalue", "lr", "decay", "global_clipnorm", "fused_kernels")
_NAME_COUNTS: dict[str, itertools.count] = {}

deduplicate_indexed_slices = gradients_lib.deduplicate_indexed_slices

# The optimizer's Python code has no tensor-dependent control flow: AutoGraph
# would only slow tracing down by converting it (tf_keras is on AutoGraph's
# do-not-convert list for the same reason).
_no_autograph = tf.autograph.experimental.do_not_convert


def _snake_case(name: str) -> str:
    out = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(ch.lower())
    return "".join(out)


@contextlib.contextmanager
def _name_scope_in_graph(name: str):
    """A name scope in graphs and functions only (eager ops need none)."""
    if tf.executing_eagerly():
        yield
    else:
        with tf.name_scope(name):
            yield


class OptimizerV2(
    hyperparameters.HyperparameterMixin,
    slots.SlotMixin,
    weight_decay_lib.WeightDecayMixin,
    ema.EmaMixin,
    accumulation.AccumulationMixin,
    loss_scale_factor.LossScaleFactorMixin,
    tf.__internal__.tracking.Trackable,
):
    """Base class for keras_opt optimizers (tf_keras legacy ``OptimizerV2``).

    Subclasses set their hyperparameters with ``_set_hyper`` in ``__init__`` and
    implement ``_create_slots``, ``_resource_apply_dense``,
    ``_resource_apply_sparse`` (or ``_resource_apply_sparse_duplicate_indices``)
    and ``get_config``; ``_prepare_local`` computes per-(device, dtype)
    coefficients once per step.

    Args:
      name: name of the optimizer; prefixes its variables' names.
      gradient_aggregator: function of a list of (gradient, variable) pairs that
        combines gradients across replicas; defaults to an all-reduce sum.
      gradient_transformers: functions of a list of (gradient, variable) pairs
        applied after aggregation and clipping.
      **kwargs: ``clipvalue``, ``clipnorm``, ``global_clipnorm`` (gradient
        clipping, at most one of the two norms), ``lr`` (deprecated alias of
        ``learning_rate``) and ``decay`` (legacy inverse-time decay of the
        learning rate: ``lr / (1 + decay * iterations)``); and Keras 3's base
        arguments (see base_arguments.py): ``weight_decay``, ``use_ema``,
        ``ema_momentum``, ``ema_overwrite_frequency``, ``loss_scale_factor``,
        ``gradient_accumulation_steps``.
    """

    _HAS_AGGREGATE_GRAD = False
    # Accept `set_weights` lists saved without `iterations` (older Keras formats).
    _WEIGHTS_MAY_LACK_ITERATIONS = False

    def __init__(
        self,
        name: str,
        gradient_aggregator: Callable | None = None,
        gradient_transformers: Sequence[Callable] | None = None,
        **kwargs: Any,
    ):
        features = base_arguments.pop_feature_arguments(kwargs)
        for key, value in kwargs.items():
            if key not in _ALLOWED_KWARGS:
                raise TypeError(
                    f"Unexpected keyword argument passed to optimizer: {key}. "
                    "Allowed kwargs are "
                    f"{set(_ALLOWED_KWARGS) | set(base_arguments.FEATURE_DEFAULTS)}."
                )
            if isinstance(value, numbers.Number) and value < 0:
                raise ValueError(f"Expected {key} >= 0, received: {value}")
            if key == "lr":
                warnings.warn(
                    "The `lr` argument is deprecated, use `learning_rate` instead.",
                    stacklevel=3,
                )
        self._use_locking = True
        for key, value in features.items():
            setattr(self, key, value)
        self._init_set_name(name)
        self._hyper: dict[str, Any] = {}
        self._slots: dict[Any, dict[str, Any]] = {}
        self._slot_names: list[str] = []
        self._weights: list[tf.Variable] = []
        self._iterations = None
        self._deferred_slot_restorations: dict[str, dict[Any, list]] = {}
        self._vars_with_slots: set = set()
        # Checkpoint bookkeeping (see checkpointing.py): slot names a checkpoint
        # held per variable key, slot names requested while creating slots, and
        # the ShardedVariables that get_slot composes from shard slots.
        self._checkpoint_slot_names: dict[Any, set] = {}
        self._slot_requests: dict[Any, set] | None = None
        self._sharded_slots: dict[tuple, Any] = {}
        decay = kwargs.pop("decay", 0.0)
        if decay < 0.0:
            raise ValueError(f"decay cannot be less than 0. Received: decay={decay}.")
        self._initial_decay = decay
        self._hypers_created = False
        self._distribution_strategy = (
            tf.distribute.get_strategy() if tf.distribute.has_strategy() else None
        )
        self.gradient_aggregator = gradient_aggregator or gradients_lib.all_reduce_sum_gradients
        self.gradient_transformers = list(gradient_transformers or [])
        self.clipnorm = kwargs.pop("clipnorm", None)
        self.global_clipnorm = kwargs.pop("global_clipnorm", None)
        if self.clipnorm is not None and self.global_clipnorm is not None:
            raise ValueError(
                "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
                f"`clipnorm`={self.clipnorm}, `global_clipnorm`={self.global_clipnorm}."
            )
        self.clipvalue = kwargs.pop("clipvalue", None)
        # False: never use keras_opt.kernels' fused multi-variable ops.
        self.fused_kernels = bool(kwargs.pop("fused_kernels", True))

    def __deepcopy__(self, memo):
        result = type(self).__new__(type(self))
        memo[id(self)] = result
        for key, value in self.__dict__.items():
            if key != "_distribution_strategy":
                object.__setattr__(result, key, copy.deepcopy(value, memo))
        object.__setattr__(result, "_distribution_strategy", self._distribution_strategy)
        return result

    # ------------------------------------------------------------------ clipping
    def _check_clip_option(self, option: str, value: Any) -> Any:
        if value is not None and self.__dict__.get("gradient_transformers"):
            raise ValueError(
                f"`{option}` cannot be set when `gradient_transformers` is set. Instead, "
                "use the `gradient_transformers` to specify clipping and other "
                f"transformations. Received: val={value}, "
                f"gradient_transformers={self.gradient_transformers}."
            )
        return value

    @property
    def clipnorm(self) -> float | None:
        """If set, each gradient is clipped to this L2 norm."""
        return self._clipnorm

    @clipnorm.setter
    def clipnorm(self, value):
        self._clipnorm = self._check_clip_option("clipnorm", value)

    @property
    def global_clipnorm(self) -> float | None:
        """If set, all gradients are clipped together to this global norm."""
        return self._global_clipnorm

    @global_clipnorm.setter
    def global_clipnorm(self, value):
        self._global_clipnorm = self._check_clip_option("global_clipnorm", value)

    @property
    def clipvalue(self) -> float | None:
        """If set, each gradient element is clipped to [-clipvalue, clipvalue]."""
        return self._clipvalue

    @clipvalue.setter
    def clipvalue(self, value):
        self._clipvalue = self._check_clip_option("clipvalue", value)

    def _gradient_stages(self) -> list[gradients_lib.GradientStage]:
        """The transformations applied after aggregation, in order."""
        stages = []
        if self._clipvalue is not None:
            stages.append(gradients_lib.clip_by_value_stage(self._clipvalue))
        if self._clipnorm is not None:
            stages.append(gradients_lib.clip_by_norm_stage(self._clipnorm))
        if self._global_clipnorm is not None:
            stages.append(gradients_lib.clip_by_global_norm_stage(self._global_clipnorm))
        stages.extend(self.gradient_transformers)
        return stages

    # ------------------------------------------------------- gradient hooks
    def _transform_loss(self, loss):
        """Called in `minimize` on the loss before differentiating it."""
        return self.scale_loss(loss)

    def _get_gradients(self, tape, loss, var_list, grad_loss=None):
        """Called in `minimize` to compute the gradients of the loss."""
        grads = tape.gradient(loss, var_list, grad_loss)
        return list(zip(grads, var_list))

    def _transform_unaggregated_gradients(self, grads_and_vars):
        """Called in `apply_gradients` before aggregation across replicas."""
        return grads_and_vars

    def _aggregate_gradients(self, grads_and_vars):
        """Aggregates gradients across replicas with `gradient_aggregator`."""
        return self.gradient_aggregator(grads_and_vars)

    def _transform_gradients(self, grads_and_vars):
        """Called in `apply_gradients` after aggregation: runs the gradient stages."""
        return gradients_lib.apply_stages(grads_and_vars, self._gradient_stages())

    # ------------------------------------------------------- public training API
    @_no_autograph
    def minimize(self, loss, var_list, grad_loss=None, name=None, tape=None):
        """Computes the gradients of ``loss`` and applies them to ``var_list``.

        ``loss`` is a zero-argument callable, or a tensor computed under ``tape``;
        ``var_list`` a list of variables or a callable returning one (for models
        that create their variables on the first call).
        """
        grads_and_vars = self._compute_gradients(
            loss, var_list=var_list, grad_loss=grad_loss, tape=tape
        )
        return self.apply_gradients(grads_and_vars, name=name)

    def _compute_gradients(self, loss, var_list, grad_loss=None, tape=None):
        """First half of `minimize`: (gradient, variable) pairs, gradients may be None."""
        if not callable(loss) and tape is None:
            raise ValueError(
                "`tape` is required when a `Tensor` loss is passed. "
                f"Received: loss={loss}, tape={tape}."
            )
        tape = tape if tape is not None else tf.GradientTape()
        if callable(loss):
            with tape:
                if not callable(var_list):
                    tape.watch(var_list)
                loss = loss()
                if callable(var_list):
                    var_list = var_list()
        with tape:
            loss = self._transform_loss(loss)
        var_list = tf.nest.flatten(var_list)
        with tf.name_scope(self._name + "/gradients"):
            grads_and_vars = self._get_gradients(tape, loss, var_list, grad_loss)
        self._assert_valid_dtypes(
            [v for g, v in grads_and_vars if g is not None and v.dtype != tf.resource]
        )
        return grads_and_vars

    @_no_autograph
    def get_gradients(self, loss, params) -> list:
        """Symbolic gradients of the tensor ``loss`` for ``params`` (TF1 graphs).

        The legacy graph-mode API (Horovod's wrapper overrides it): gradients
        come from ``tf.compat.v1.gradients`` in the graph of ``loss``, so this
        works in a ``tf.compat.v1`` graph or inside a ``tf.function``, not
        eagerly. Raises ValueError naming the variable when a gradient is None.
        """
        params = tf.nest.flatten(params)
        if tf.is_tensor(loss) and not tf.is_symbolic_tensor(loss):
            raise RuntimeError(
                "`get_gradients` differentiates a symbolic loss with tf.compat.v1.gradients, "
                "which eager execution does not support. Eagerly, compute gradients with "
                "tf.GradientTape, or call `minimize(loss_fn, var_list)`."
            )
        with _graph_of([loss]).as_default(), tf.name_scope(self._name + "/gradients"):
            grads = tf.compat.v1.gradients(loss, params)
        for grad, param in zip(grads, params):
            if grad is None:
                raise ValueError(
                    f"Variable {param} has `None` for gradient. The loss does not depend on "
                    "it through differentiable ops (ops such as argmax, round or casts to "
                    "integers have no gradient); remove it from `params` or make the loss "
                    "differentiable in it."
                )
        return grads

    @_no_autograph
    def get_updates(self, loss, params) -> list:
        """``[apply_gradients(...)]`` for the gradients of ``loss`` (TF1 graphs)."""
        params = tf.nest.flatten(params)
        grads_and_vars = list(zip(self.get_gradients(loss, params), params))
        self._assert_valid_dtypes(
            [v for g, v in grads_and_vars if g is not None and v.dtype != tf.resource]
        )
        return [self.apply_gradients(grads_and_vars)]

    @_no_autograph
    def apply_gradients(
        self,
        grads_and_vars: Iterable[tuple[Any, Any]],
        name: str | None = None,
        experimental_aggregate_gradients: bool = True,
    ):
        """Applies gradients to variables and increments `iterations`.

        Under a ``tf.distribute`` strategy gradients are summed across replicas,
        unless ``experimental_aggregate_gradients=False`` (then they are used as
        given). Every pair is checked before any variable changes: a wrong dtype
        or shape raises and leaves all variables as they were.
        """
        grads_and_vars = gradients_lib.as_pairs(grads_and_vars)
        grads_and_vars = gradients_lib.filter_empty_gradients(grads_and_vars)
        grads_and_vars = gradients_lib.check_gradients(grads_and_vars, self._valid_dtypes())
        var_list = [v for _, v in grads_and_vars]
        with tf.name_scope(self._name):
            with tf.init_scope():
                self._create_all_weights(var_list)
            if not grads_and_vars:  # as tf_keras: a no-op (all layers frozen)
                return tf.no_op()
            if tf.distribute.in_cross_replica_context():
                raise RuntimeError(
                    "`apply_gradients() cannot be called in cross-replica context. Use "
                    "`tf.distribute.Strategy.run` to enter replica context."
                )
            strategy = tf.distribute.get_strategy()
            if not experimental_aggregate_gradients and isinstance(
                strategy,
                (
                    tf.compat.v1.distribute.experimental.ParameterServerStrategy,
                    tf.distribute.experimental.ParameterServerStrategy,
                    tf.distribute.experimental.CentralStorageStrategy,
                    tf.compat.v1.distribute.experimental.CentralStorageStrategy,
                ),
            ):
                raise NotImplementedError(
                    "`experimental_aggregate_gradients=False` is not supported for "
                    f"ParameterServerStrategy and CentralStorageStrategy. Used: {strategy}."
                )
            apply_state = self._prepare(var_list)
            if self.loss_scale_factor is not None:
                grads_and_vars = loss_scale_factor.unscale(self, grads_and_vars)
            if experimental_aggregate_gradients:
                grads_and_vars = self._transform_unaggregated_gradients(grads_and_vars)
                grads_and_vars = self._aggregate_gradients(grads_and_vars)
            if not self.gradient_accumulation_steps:
                # With accumulation, the stages run on the averaged gradient.
                grads_and_vars = self._transform_gradients(grads_and_vars)
            return tf.__internal__.distribute.interim.maybe_merge_call(
                functools.partial(self._distributed_apply, apply_state=apply_state),
                strategy,
                grads_and_vars,
                name=name,
            )

    def _distributed_apply(self, distribution, grads_and_vars, apply_state, name):
        """Applies each gradient under ``distribution.extended.update``."""
        update_all = functools.partial(self._update_all, distribution, apply_state=apply_state)
        increment = 1
        with _name_scope_in_graph(name or self._name):
            if self.gradient_accumulation_steps:
                update_op, is_apply_step = accumulation.apply_or_accumulate(
                    self, distribution, grads_and_vars, update_all
                )
                update_ops = [update_op]
                increment = tf.cast(is_apply_step, tf.int64)
            else:
                update_ops = update_all(grads_and_vars)
            if self.use_ema:
                with tf.control_dependencies(update_ops):
                    update_ops = ema.update_averages(
                        self, distribution, [v for _, v in grads_and_vars]
                    )
            symbolic = any(_is_symbolic(op) for op in update_ops)
            if not tf.executing_eagerly() or symbolic:
                graph = _graph_of(update_ops)
                with graph.as_default(), tf.control_dependencies([tf.group(update_ops)]):
                    return self._finish_step(increment, read_value=False)
            return self._finish_step(increment)

    def _update_all(self, distribution, grads_and_vars, apply_state):
        """Updates every variable; returns the update ops.

        The pairs the fused kernels cover get one op per (device, dtype)
        (`keras_opt.kernels`); the others run `_apply_one` each. With
        ``weight_decay`` (and the base `_apply_one`), the decay stage runs first
        for every variable, then the updates: the same numbers as decaying each
        variable right before its own update, and the updates can be fused.
        """
        eager_outside = tf.compat.v1.executing_eagerly_outside_functions()

        def scope(var):
            return _name_scope_in_graph("update" if eager_outside else "update_" + var.op.name)

        apply_one = functools.partial(self._apply_one, apply_state=apply_state)
        decays = []
        if self._weight_decay is not None and type(self)._apply_one is OptimizerV2._apply_one:
            decays = weight_decay_lib.decay_all(
                self, distribution, grads_and_vars, apply_state, scope
            )
            apply_one = functools.partial(self._apply_update, apply_state=apply_state)
        # A TF1 graph has no automatic control dependencies: the updates wait explicitly.
        with tf.control_dependencies(decays if not tf.executing_eagerly() else None):
            update_ops, grads_and_vars = fused_dispatch.apply_fused(
                self, distribution, grads_and_vars, apply_state
            )
            update_ops += variables_lib.update_each(
                distribution, apply_one, [(var, (grad,)) for grad, var in grads_and_vars], scope
            )
        return update_ops

    def _finish_step(self, increment, read_value=True):
        """``iterations += increment`` (and, with accumulation, the micro-step count += 1)."""
        if not self.gradient_accumulation_steps:
            return self.iterations.assign_add(increment, read_value=read_value)
        counted = self._grad_accum_iter.assign_add(1, read_value=False)
        with tf.control_dependencies([counted]):
            return self.iterations.assign_add(increment, read_value=read_value)

    def _apply_one(self, var, grad, apply_state):
        """Updates one (replica-local) variable: weight decay stage, then the update."""
        decayed = None
        if self._weight_decay is not None:
            decayed = weight_decay_lib.decay(self, var, grad, apply_state)
        if decayed is None:
            return self._apply_update(var, grad, apply_state)
        with tf.control_dependencies([decayed]):
            return self._apply_update(var, grad, apply_state)

    def _apply_update(self, var, grad, apply_state):
        """Updates one (replica-local) variable with its gradient."""
        if isinstance(var, tf.Tensor):
            raise NotImplementedError(
                f"Updating a `Tensor` is not implemented. Received: var={var}."
            )
        kwargs = {}
        constraint = variables_lib.constraint_of(var)
        if isinstance(grad, tf.IndexedSlices):
            if constraint is not None:
                raise RuntimeError(
                    f"Cannot use a constraint function on a sparse variable: variable "
                    f"{var.name} has constraint {constraint} and received IndexedSlices."
                )
            if "apply_state" in self._sparse_apply_args:
                kwargs["apply_state"] = apply_state
            return self._resource_apply_sparse_duplicate_indices(
                grad.values, var, grad.indices, **kwargs
            )
        if "apply_state" in self._dense_apply_args:
            kwargs["apply_state"] = apply_state
        update_op = self._resource_apply_dense(grad, var, **kwargs)
        if constraint is None:
            return update_op
        with tf.control_dependencies([update_op]):
            return var.assign(constraint(var))

    @functools.cached_property
    def _dense_apply_args(self) -> list[str]:
        """Argument names of `_resource_apply_dense` (tf_keras's cached list)."""
        return tf_inspect.getfullargspec(self._resource_apply_dense).args

    @functools.cached_property
    def _sparse_apply_args(self) -> list[str]:
        """Argument names of `_resource_apply_sparse` (wrappers read their inner's)."""
        return tf_inspect.getfullargspec(self._resource_apply_sparse).args

    @_no_autograph
    def build(self, var_list: Iterable[Any]) -> None:
        """Creates `iterations`, the hyperparameter variables and the slots of ``var_list``.

        Optional: `apply_gradients` does this on its first call. Building ahead
        lets a checkpoint restore into existing slots, and a SavedModel include them.
        """
        var_list = [variables_lib.unwrap_variable(v) for v in tf.nest.flatten(var_list)]
        # A ShardedVariable is trained through its shards (as under ParameterServerStrategy).
        var_list = [
            shard
            for v in var_list
            for shard in (v.variables if checkpointing.is_sharded(v) else [v])
        ]
        with tf.name_scope(self._name), tf.init_scope():
            self._create_all_weights(var_list)

    # ------------------------------------------------------------------- weights
    @property
    def iterations(self) -> tf.Variable:
        """The number of steps this optimizer has applied (int64 variable ``iter``)."""
        if self._iterations is None:
            with tf.init_scope(), self._distribution_strategy_scope():
                self._iterations = self.add_weight(
                    "iter",
                    shape=[],
                    dtype=tf.int64,
                    trainable=False,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                )
            self._weights.append(self._iterations)
        return self._iterations

    @iterations.setter
    def iterations(self, variable: tf.Variable):
        if self._iterations is not None:
            raise RuntimeError(
                "Cannot set `iterations` to a new Variable after the Optimizer weights have "
                f"been created. Here it is attempting to set `iterations` to {variable}."
            )
        self._iterations = variable
        self._weights.append(self._iterations)

    def add_weight(
        self,
        name: str,
        shape,
        dtype=None,
        initializer="zeros",
        trainable=None,
        synchronization=tf.VariableSynchronization.AUTO,
        aggregation=tf.VariableAggregation.NONE,
    ) -> tf.Variable:
        """Creates a variable tracked by name in checkpoints (``iter``, hyperparameters)."""
        if synchronization == tf.VariableSynchronization.ON_READ:
            if trainable:
                raise ValueError(
                    "Synchronization value can be set to VariableSynchronization.ON_READ "
                    "only for non-trainable variables."
                )
            trainable = False
        elif trainable is None:
            trainable = True
        return self._add_variable_with_custom_getter(
            name=name,
            shape=shape,
            getter=variables_lib.make_variable,
            overwrite=True,
            initializer=initializer,
            dtype=tf.as_dtype(dtype or tf.float32),
            trainable=trainable,
            synchronization=synchronization,
            aggregation=aggregation,
        )

    def _create_all_weights(self, var_list):
        """Creates iterations, hyperparameters and any slots not created yet."""
        _ = self.iterations
        self._create_hypers()
        if self.gradient_accumulation_steps:
            accumulation.create_weights(self)
        new_vars = [v for v in var_list if variables_lib.var_key(v) not in self._vars_with_slots]
        if new_vars:
            with checkpointing.recording_slot_requests(self) as requests:
                self._create_slots(new_vars)
                if self.use_ema:
                    ema.create_slots(self, new_vars)
                if self.gradient_accumulation_steps:
                    accumulation.create_slots(self, new_vars)
            checkpointing.check_new_slots(self, new_vars, requests)
            self._create_slots_for_sharded_variables(new_vars)
            self._vars_with_slots.update(variables_lib.var_key(v) for v in new_vars)
            checkpointing.restore_sharded_slots(self, new_vars)

    @property
    def weights(self) -> list[tf.Variable]:
        """The optimizer's variables in creation order (``iter`` first)."""
        return self._weights

    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        if save_type == "savedmodel":
            # The fused kernels' variable groups a saved step captures
            # (keras_opt.kernels.groups); checkpoints do not list them.
            children.update(fused_groups.savedmodel_children(self))
        return children

    def variables(self) -> list[tf.Variable]:
        """The optimizer's variables in creation order (``iter`` first)."""
        return self._weights

    def get_weights(self) -> list:
        """Values of `weights` as numpy arrays."""
        return variables_lib.batch_get_value(self.weights)

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Sets `weights` from numpy arrays; checks length and every shape first.

        Optimizers whose saved weights predate the iteration count
        (``_WEIGHTS_MAY_LACK_ITERATIONS``) also accept a list without it.
        """
        params = self.weights
        if self._WEIGHTS_MAY_LACK_ITERATIONS and len(params) == len(weights) + 1:
            weights = [np.array(0)] + list(weights)
        if len(params) != len(weights):
            raise ValueError(
                f"You called `set_weights(weights)` on optimizer {self._name} with a weight "
                f"list of length {len(weights)}, but the optimizer was expecting "
                f"{len(params)} weights. Provided weights: {str(weights)[:50]}..."
            )
        if not params:
            return
        pairs = []
        for param, value in zip(params, weights):
            shape = tuple(tf.TensorShape(param.shape).as_list())
            value_shape = tuple(np.shape(value))
            if shape != value_shape:
                raise ValueError(
                    f"Optimizer weight {param.name} has shape {shape}, not compatible with "
                    f"provided weight shape {value_shape}."
                )
            pairs.append((param, value))
        variables_lib.batch_set_value(pairs)
        self.__dict__.pop("_hyper_python_values", None)  # no longer the values

    # ------------------------------------------------------------------- prepare
    def _prepare(self, var_list):
        """Computes coefficients once per (device, dtype) of ``var_list``."""
        keys = set()
        for var in var_list:
            devices = (
                var._devices if isinstance(var, tf.distribute.DistributedValues) else [var.device]
            )
            for device in devices:
                keys.add((device, var.dtype.base_dtype))
        apply_state = {}
        for device, dtype in keys:
            apply_state[(device, dtype)] = {}
            with tf.device(device):
                self._prepare_local(device, dtype, apply_state)
        return apply_state

    def _prepare_local(self, var_device, var_dtype, apply_state):
        """Fills ``apply_state[(var_device, var_dtype)]`` (subclasses extend it)."""
        if "learning_rate" in self._hyper:
            lr_t = tf.identity(self._decayed_lr(var_dtype))
            apply_state[(var_device, var_dtype)]["lr_t"] = lr_t

    def _fallback_apply_state(self, var_device, var_dtype):
        """Coefficients for callers that do not pass ``apply_state`` through."""
        apply_state = {(var_device, var_dtype): {}}
        self._prepare_local(var_device, var_dtype, apply_state)
        return apply_state[(var_device, var_dtype)]

    def _coefficients(self, var, apply_state) -> dict:
        """The coefficients prepared for ``var``'s (device, dtype)."""
        device, dtype = var.device, var.dtype.base_dtype
        return (apply_state or {}).get((device, dtype)) or self._fallback_apply_state(device, dtype)

    # ------------------------------------------------------------- update hooks
    def _resource_apply_dense(self, grad, handle, apply_state):
        """Updates ``handle`` with the dense gradient ``grad`` (subclasses)."""
        raise NotImplementedError("`_resource_apply_dense` must be implemented in subclasses.")

    def _resource_apply_sparse_duplicate_indices(self, grad, handle, indices, **kwargs):
        """Sparse update with possibly repeated ``indices``: sums them, then applies."""
        summed_grad, unique_indices = deduplicate_indexed_slices(values=grad, indices=indices)
        return self._resource_apply_sparse(summed_grad, handle, unique_indices, **kwargs)

    def _resource_apply_sparse(self, grad, handle, indices, apply_state):
        """Updates rows ``indices`` (unique) of ``handle`` with ``grad`` (subclasses)."""
        raise NotImplementedError("`_resource_apply_sparse` Must be implemented in subclasses.")

    def _resource_scatter_add(self, x, i, v):
        with tf.control_dependencies(
            [tf.raw_ops.ResourceScatterAdd(resource=x.handle, indices=i, updates=v)]
        ):
            return x.value()

    def _decayed_scatter_add(self, slot, decay, indices, values):
        """``slot <- slot * decay``, then ``slot[indices] += values``; returns the new value.

        The composite sparse paths (Adam, Nadam, RMSprop) decay a slot in full and
        add the gradient rows, as tf_keras does. Callers compute ``values`` before
        calling, which keeps tf_keras's op order (needed for bit-for-bit results
        inside tf.function, where graph rewrites depend on it).
        """
        decayed = tf.compat.v1.assign(slot, slot * decay, use_locking=self._use_locking)
        with tf.control_dependencies([decayed]):
            return self._resource_scatter_add(slot, indices, values)

    def _resource_scatter_update(self, x, i, v):
        with tf.control_dependencies(
            [tf.raw_ops.ResourceScatterUpdate(resource=x.handle, indices=i, updates=v)]
        ):
            return x.value()

    # ------------------------------------------------------------------- config
    def get_config(self) -> dict:
        """The constructor arguments of this optimizer (subclasses extend it)."""
        config = {"name": self._name}
        if self.clipnorm is not None:
            config["clipnorm"] = self.clipnorm
        if self.clipvalue is not None:
            config["clipvalue"] = self.clipvalue
        if self.global_clipnorm is not None:
            config["global_clipnorm"] = self.global_clipnorm
        config.update(base_arguments.feature_config(self))
        return config

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None):
        """Rebuilds an optimizer from `get_config` output (schedules as dicts)."""
        config = dict(config)
        if "lr" in config:
            config["learning_rate"] = config.pop("lr")
        for key, value in config.items():
            if hyperparameters.looks_like_serialized_schedule(value):
                config[key] = hyperparameters.deserialize_schedule(value, custom_objects)
        return cls(**config)

    # ---------------------------------------------------------------- helpers
    def _init_set_name(self, name, zero_based=True):
        if name:
            self._name = name
            return
        base = _snake_case(type(self).__name__)
        index = next(_NAME_COUNTS.setdefault(base, itertools.count(0 if zero_based else 1)))
        self._name = base if index == 0 else f"{base}_{index}"

    def _assert_valid_dtypes(self, tensors):
        valid = self._valid_dtypes()
        for tensor in tensors:
            dtype = tensor.dtype.base_dtype
            if dtype not in valid:
                raise gradients_lib.InvalidGradientError(
                    f"Invalid type {dtype.name} for {tensor.name}, expected: "
                    f"{sorted(d.name for d in valid)}."
                )

    def _valid_dtypes(self):
        """Dtypes of variables and gradients this optimizer accepts."""
        return _DEFAULT_VALID_DTYPES

    def _call_if_callable(self, param):
        return param() if callable(param) else param

    @contextlib.contextmanager
    def _distribution_strategy_scope(self):
        """Enters the strategy this optimizer was created under, if not inside one."""
        if self._distribution_strategy and not tf.distribute.has_strategy():
            with self._distribution_strategy.scope():
                yield
        else:
            yield


# Module-level names that tools import from tf_keras's optimizer_v2 module.
_var_key = variables_lib.var_key


def _get_slot_key_from_var(var, slot_name: str) -> str:
    """``"<variable key>/<slot name>"`` (graph mode: the variable's shared name)."""
    return f"{_var_key(var)}/{slot_name}"


def _is_symbolic(value) -> bool:
    # `tf.is_symbolic_tensor`, not `type(tf.constant(0))` at import: creating a
    # tensor at import would initialize TensorFlow's context and forbid logical
    # device and collective configuration after `import keras_opt`.
    return isinstance(value, tf.Operation) or tf.is_symbolic_tensor(value)


def _graph_of(ops):
    for op in ops:
        graph = getattr(op, "graph", None)
        if graph is not None:
            return graph
    return tf.compat.v1.get_default_graph()


def __getattr__(name: str):
    # tf_keras defines RestoredOptimizer in this module; ours lives in saved_model.py,
    # which imports this module, so it is looked up on first access.
    if name == "RestoredOptimizer":
        from keras_opt.optimizer_v2.saved_model import RestoredOptimizer

        return RestoredOptimizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
