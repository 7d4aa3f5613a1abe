"""keras_opt optimizers for Keras 3 ``compile``/``fit``/``save`` (``tf.keras`` in TF >= 2.16).

Keras 3 accepts only instances of ``keras.optimizers.Optimizer``. This module
gives every keras_opt optimizer a Keras-3-native class with the same
constructor arguments (``keras_opt.keras.Adam(learning_rate=1e-3)``), and
`wrap` turns an existing keras_opt optimizer (a user subclass too) into one::

    model.compile(optimizer=keras_opt.keras.Adam(1e-3), loss="mse")
    model.compile(optimizer=keras_opt.keras.wrap(my_keras_opt_optimizer), loss="mse")

Each adapter hands every step to the keras_opt optimizer inside it
(``adapter.keras_opt_optimizer``), so ``fit`` gives the numbers a custom
``tf.GradientTape`` loop with that optimizer gives. The adapter is
checkpoint-transparent: ``tf.train.Checkpoint`` sees the keras_opt optimizer
(same keys: ``iter``, hyperparameters by name, slots beside their variables),
so checkpoints move between ``fit`` and custom loops and tf_keras legacy models.
For ``.keras`` files, which store optimizer state by position, ``variables``
lists ``iter``, the hyperparameter variables by name, then the slots variable
by variable (slot names in the optimizer's order), each with a unique ``.path``.

The classes are registered with Keras under the package ``keras_opt``
(``"keras_opt>Adam"``): ``compile(optimizer="keras_opt>Adam")`` works, and
``keras.saving.load_model`` finds them once this module is imported.

Keras 3's ``mixed_float16`` compile wraps optimizers in Keras's own loss-scale
optimizer; use `LossScaleOptimizer` here (tf_keras legacy semantics), which
compile does not wrap again.
"""

from __future__ import annotations

import inspect
from typing import Any, Sequence

import tensorflow as tf

import keras_opt as _ko
from keras_opt import serialization as _serialization
from keras_opt.optimizer_v2 import base_arguments as _base_arguments
from keras_opt.optimizer_v2 import hyperparameters as _hyperparameters
from keras_opt.optimizer_v2 import optimizer_v2 as _optimizer_v2
from keras_opt.optimizer_v2 import variables as _variables


def _import_keras():
    try:
        import keras
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError(
            "keras_opt.keras needs Keras 3 (`pip install keras`, or TensorFlow >= 2.16, "
            "whose tf.keras is Keras 3). For tf_keras (Keras 2) models use "
            "keras_opt.tf_keras instead."
        ) from e
    version = getattr(keras, "__version__", "0")
    if int(version.split(".")[0]) < 3:
        raise ImportError(
            f"keras_opt.keras needs Keras 3; the installed keras is {version}. For "
            "Keras 2 (tf_keras) models use keras_opt.tf_keras."
        )
    if keras.backend.backend() != "tensorflow":
        raise ImportError(
            "keras_opt.keras needs Keras's TensorFlow backend (keras_opt's optimizers run "
            f"TensorFlow kernels); the active backend is {keras.backend.backend()!r}. "
            'Set KERAS_BACKEND="tensorflow" before importing keras.'
        )
    return keras


keras = _import_keras()
_KerasLossScaleOptimizer = keras.optimizers.LossScaleOptimizer
PACKAGE = "keras_opt"


def _is_tf_keras_optimizer(obj: Any) -> bool:
    module = type(obj).__module__ or ""
    return module.startswith("tf_keras") or module.startswith("keras_opt.tf_keras")


def _check_keras_opt(optimizer: Any, what: str) -> _optimizer_v2.OptimizerV2:
    if isinstance(optimizer, Optimizer):
        raise TypeError(
            f"{what} received {type(optimizer).__name__}, which already is a Keras 3 "
            "optimizer (a keras_opt.keras adapter): pass it to compile as it is, or wrap its "
            "`keras_opt_optimizer`."
        )
    if type(optimizer).__module__.startswith("keras_opt.tf_keras"):
        raise TypeError(
            f"{what} received the tf_keras class {type(optimizer).__module__}."
            f"{type(optimizer).__name__}, which is for tf_keras (Keras 2) models. For a "
            "Keras 3 model use keras_opt.keras."
            f"{type(optimizer).__name__}(...) or keras_opt.keras.wrap(keras_opt."
            f"{type(optimizer).__name__}(...))."
        )
    if not isinstance(optimizer, _optimizer_v2.OptimizerV2):
        hint = (
            " A Keras 3 optimizer goes to compile directly; a tf_keras optimizer works "
            "with tf_keras models only."
            if isinstance(optimizer, keras.optimizers.Optimizer)
            or _is_tf_keras_optimizer(optimizer)
            else ""
        )
        raise TypeError(
            f"{what} expects a keras_opt optimizer (an instance of keras_opt.Optimizer, e.g. "
            f"keras_opt.Adam(1e-3)); received {type(optimizer).__module__}."
            f"{type(optimizer).__name__}.{hint}"
        )
    return optimizer


class _VariableFace:
    """A Keras-variable view of one optimizer ``tf.Variable`` for ``.keras`` saving.

    Keras saves and loads optimizer state by position through ``numpy()`` and
    ``assign``; ``path`` is unique within the optimizer.
    """

    def __init__(self, variable: tf.Variable, path: str):
        self._variable = variable
        self.path = path

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def value(self) -> tf.Variable:
        return self._variable

    @property
    def variable(self) -> tf.Variable:
        """The optimizer's ``tf.Variable``."""
        return self._variable

    @property
    def shape(self) -> tuple:
        return tuple(self._variable.shape.as_list())

    @property
    def dtype(self) -> str:
        return self._variable.dtype.base_dtype.name

    @property
    def trainable(self) -> bool:
        return False

    def numpy(self):
        return self._variable.numpy()

    def __array__(self, dtype=None, copy=None):
        value = self._variable.numpy()
        return value if dtype is None else value.astype(dtype)

    def assign(self, value):
        import numpy as np

        value = np.asarray(value)
        if value.shape != self.shape:
            raise ValueError(
                f"Optimizer variable {self.path} has shape {self.shape}; cannot assign a "
                f"value of shape {value.shape}."
            )
        self._variable.assign(value.astype(self._variable.dtype.as_numpy_dtype))
        return self

    def __repr__(self):
        return f"<optimizer variable path={self.path} shape={self.shape} dtype={self.dtype}>"


def _var_path(var: Any, index: int) -> str:
    path = getattr(var, "path", None)
    if not path:
        path = getattr(var, "name", None) or f"variable_{index}"
        path = path.split(":")[0]
    return f"{path}"


class Optimizer(tf.__internal__.tracking.DelegatingTrackableMixin, keras.optimizers.Optimizer):
    """A Keras 3 optimizer that runs a keras_opt optimizer (``keras_opt_optimizer``).

    Build one with the per-optimizer classes (``keras_opt.keras.Adam(...)``) or
    with `wrap`. ``apply``/``apply_gradients`` call the keras_opt optimizer's
    ``apply_gradients``; ``learning_rate``, ``iterations``, clipping options and
    hyperparameters (``beta_1``, ...) read and write the keras_opt optimizer's.
    """

    _keras_opt_class: type | None = None

    def __init__(self, *args: Any, **kwargs: Any):
        cls = type(self)._keras_opt_class
        if cls is None:
            raise TypeError(
                "keras_opt.keras.Optimizer is the base of the adapters: use a per-optimizer "
                "class (keras_opt.keras.Adam(...)) or keras_opt.keras.wrap(optimizer)."
            )
        self._init_adapter(cls(*args, **kwargs))

    def _init_adapter(self, inner: _optimizer_v2.OptimizerV2) -> None:
        # keras.optimizers.Optimizer.__init__ is not called: it would create a second
        # iteration counter and learning rate. Its attributes are set here instead.
        object.__setattr__(self, "_lock", False)
        # No attribute tracking: to checkpoints this object *is* the keras_opt optimizer.
        object.__setattr__(self, "_self_setattr_tracking", False)
        self._keras_opt_optimizer = inner
        tf.__internal__.tracking.DelegatingTrackableMixin.__init__(self, inner)
        base = inner.inner_optimizer if isinstance(inner, _ko.LossScaleOptimizer) else inner
        self.name = base._name
        self.built = False
        self._variables = []
        self._trainable_variables = []
        self._trainable_variables_indices = {}
        self._built_variables: list = []
        self._distribution_strategy = tf.distribute.get_strategy()

    # ----------------------------------------------------------- the optimizer
    @property
    def keras_opt_optimizer(self) -> _optimizer_v2.OptimizerV2:
        """The keras_opt optimizer that applies every step."""
        return self._keras_opt_optimizer

    @property
    def iterations(self) -> tf.Variable:
        return self._keras_opt_optimizer.iterations

    @property
    def learning_rate(self):
        """The current learning rate (a schedule is evaluated at ``iterations``)."""
        return self._current_learning_rate()

    @learning_rate.setter
    def learning_rate(self, value):
        self._keras_opt_optimizer.learning_rate = value

    def _base_optimizer(self) -> _optimizer_v2.OptimizerV2:
        """The optimizer with the update rule (inside a loss-scale wrapper, its inner one)."""
        inner = self._keras_opt_optimizer
        return inner.inner_optimizer if isinstance(inner, _ko.LossScaleOptimizer) else inner

    def _current_learning_rate(self):
        """The rate the next step uses: a schedule at the optimizer's schedule step
        (``iterations``; with gradient accumulation, the micro-step count)."""
        inner = self._base_optimizer()
        value = inner._get_hyper("learning_rate")
        if _hyperparameters.is_schedule(value):
            return value(inner._schedule_step())
        return value

    def exclude_from_weight_decay(self, var_list=None, var_names=None) -> None:
        """The keras_opt optimizer's `exclude_from_weight_decay`."""
        self._base_optimizer().exclude_from_weight_decay(var_list=var_list, var_names=var_names)

    @property
    def clipnorm(self):
        return self._keras_opt_optimizer.clipnorm

    @clipnorm.setter
    def clipnorm(self, value):
        self._keras_opt_optimizer.clipnorm = value

    @property
    def clipvalue(self):
        return self._keras_opt_optimizer.clipvalue

    @clipvalue.setter
    def clipvalue(self, value):
        self._keras_opt_optimizer.clipvalue = value

    @property
    def global_clipnorm(self):
        return self._keras_opt_optimizer.global_clipnorm

    @global_clipnorm.setter
    def global_clipnorm(self, value):
        self._keras_opt_optimizer.global_clipnorm = value

    def __getattr__(self, name: str):
        # Only reached when normal lookup fails: the keras_opt optimizer's
        # hyperparameters and public attributes (beta_1, epsilon, amsgrad, ...).
        inner = self.__dict__.get("_keras_opt_optimizer")
        if inner is not None and not name.startswith("_"):
            return getattr(inner, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # ------------------------------------------------------------------ build
    def build(self, variables: Sequence[Any]) -> None:
        """Creates ``iter``, the hyperparameter variables and the slots of ``variables``."""
        variables = list(variables)
        self._keras_opt_optimizer.build(variables)
        known = {_variables.var_key(v) for v in self._built_variables}
        for var in variables:
            if _variables.var_key(var) not in known:
                known.add(_variables.var_key(var))
                self._built_variables.append(var)
        self.built = True

    @property
    def variables(self) -> list:
        """``iter``, hyperparameter variables by name, other weights (Nadam's momentum
        cache), then the slots variable by variable."""
        inner = self._keras_opt_optimizer
        prefix = self.name
        out = [_VariableFace(inner.iterations, f"{prefix}/iteration")]
        hyper = inner._hyper if inner._hypers_created else {}
        for name in sorted(hyper):
            if isinstance(hyper[name], tf.Variable):
                out.append(_VariableFace(hyper[name], f"{prefix}/{name}"))
        # Other optimizer weights (Nadam's momentum cache), in creation order.
        listed = {id(face.variable) for face in out}
        listed.update(id(s) for slots in inner._slots.values() for s in slots.values())
        for weight in inner.weights:
            if id(weight) not in listed:
                name = weight.name.split(":")[0].rsplit("/", 1)[-1]
                out.append(_VariableFace(weight, f"{prefix}/{name}"))
        slot_names = inner.get_slot_names()
        for index, var in enumerate(self._built_variables):
            slots = inner._slots.get(_variables.var_key(var), {})
            base = _var_path(var, index)
            for slot_name in slot_names:
                slot = slots.get(slot_name)
                if slot is not None:
                    out.append(_VariableFace(slot, f"{prefix}/{base}/{slot_name}"))
        return out

    @property
    def trainable_variables(self) -> list:
        return []

    def set_weights(self, weights) -> None:
        faces = self.variables
        if len(faces) != len(weights):
            raise ValueError(
                f"Optimizer {self.name} has {len(faces)} variables; set_weights received "
                f"{len(weights)} values."
            )
        for face, value in zip(faces, weights):
            face.assign(value)

    def get_weights(self) -> list:
        return [face.numpy() for face in self.variables]

    # ------------------------------------------------------------------- steps
    def apply(self, grads, trainable_variables=None):
        """Applies ``grads`` to ``trainable_variables`` with the keras_opt optimizer."""
        grads = list(grads)
        if trainable_variables is None:
            if not self.built:
                raise ValueError(
                    "`apply` without `trainable_variables` needs a built optimizer: call "
                    "`optimizer.build(trainable_variables)` first, or pass the variables."
                )
            trainable_variables = self._built_variables
        trainable_variables = list(trainable_variables)
        if len(grads) != len(trainable_variables):
            raise ValueError(
                f"`apply` received {len(grads)} gradients for {len(trainable_variables)} "
                "variables; pass one gradient (or None) per variable."
            )
        self._note_variables(trainable_variables)
        return self._keras_opt_optimizer.apply_gradients(zip(grads, trainable_variables))

    def _note_variables(self, trainable_variables) -> None:
        """Builds on first use; later new variables join `variables` (their slots)."""
        if not self.built:
            self.build(trainable_variables)
            return
        known = {_variables.var_key(v) for v in self._built_variables}
        new = [v for v in trainable_variables if _variables.var_key(v) not in known]
        if new:
            self.build(new)

    def apply_gradients(self, grads_and_vars):
        pairs = list(grads_and_vars)
        return self.apply([g for g, _ in pairs], [v for _, v in pairs])

    def scale_loss(self, loss):
        """``loss * loss_scale_factor`` of the keras_opt optimizer (Keras 3's fit calls it)."""
        return self._keras_opt_optimizer.scale_loss(loss)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise ValueError(
            "stateless_apply is not supported by keras_opt optimizers (they update "
            "TensorFlow variables in place)."
        )

    def finalize_variable_values(self, var_list):
        """Copies the EMA averages into ``var_list`` (Keras 3's fit calls it at the end)."""
        self._base_optimizer().finalize_variable_values(var_list)

    # ------------------------------------------------------------ checkpoints
    def get_slot_names(self) -> list[str]:
        return self._keras_opt_optimizer.get_slot_names()

    def get_slot(self, var, slot_name: str):
        return self._keras_opt_optimizer.get_slot(var, slot_name)

    def _create_or_restore_slot_variable(self, *args, **kwargs):
        return self._keras_opt_optimizer._create_or_restore_slot_variable(*args, **kwargs)

    def _restore_slot_variable(self, slot_name, variable, slot_variable):
        return self._keras_opt_optimizer._restore_slot_variable(slot_name, variable, slot_variable)

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict:
        return self._keras_opt_optimizer.get_config()

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None):
        inner = cls._keras_opt_class.from_config(dict(config), custom_objects=custom_objects)
        return _adapter_for(cls, inner)

    def __repr__(self):
        # Shown by tf_keras's "Could not interpret optimizer identifier" error.
        name = type(self._keras_opt_optimizer).__name__
        return (
            f"<keras_opt.keras.{type(self).__name__} {self.name!r} (a Keras 3 optimizer "
            f"around keras_opt.{name}; for a tf_keras model use keras_opt.tf_keras.{name}(...) "
            "or keras_opt.tf_keras.wrap(...))>"
        )


def _feature_property(name: str) -> property:
    def fget(self):
        return getattr(self._base_optimizer(), name)

    def fset(self, value):
        setattr(self._base_optimizer(), name, value)

    return property(fget, fset, doc=f"The keras_opt optimizer's ``{name}``.")


# Keras 3's base-feature attributes (its fit and callbacks read them) are the
# keras_opt optimizer's.
for _feature in _base_arguments.FEATURE_DEFAULTS:
    setattr(Optimizer, _feature, _feature_property(_feature))
del _feature


def _adapter_for(cls: type, inner: _optimizer_v2.OptimizerV2) -> Optimizer:
    adapter = cls.__new__(cls)
    adapter._init_adapter(inner)
    return adapter


class Wrapped(Optimizer):
    """The adapter `wrap` returns for an optimizer class without its own adapter.

    Its config holds the keras_opt optimizer's serialized config; loading it
    needs that class registered with keras_opt's ``custom_objects`` (pass it to
    ``load_model(custom_objects=...)`` under its class name).
    """

    def __init__(self, optimizer: Any):
        self._init_adapter(_check_keras_opt(optimizer, "keras_opt.keras.Wrapped"))

    def get_config(self) -> dict:
        return {"optimizer": _ko.serialize(self._keras_opt_optimizer)}

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None):
        inner = config["optimizer"]
        return cls(_ko.deserialize(inner, custom_objects=_custom_objects(inner, custom_objects)))


def _custom_objects(config: dict, custom_objects: dict | None) -> dict:
    """``custom_objects`` plus the classes Keras knows for ``config``'s names.

    Keras passes ``load_model(custom_objects=...)`` through a scope, not as an
    argument: `keras.saving.get_registered_object` sees that scope.
    """
    objects = dict(custom_objects or {})
    for key in ("class_name", "registered_name"):
        name = config.get(key)
        if name and name not in objects:
            found = keras.saving.get_registered_object(name)
            if found is not None:
                objects[name] = found
    return objects


def _make_adapter_class(name: str, inner_cls: type) -> type:
    def __init__(self, *args, **kwargs):
        self._init_adapter(inner_cls(*args, **kwargs))

    __init__.__signature__ = inspect.signature(inner_cls.__init__)
    __init__.__doc__ = inner_cls.__init__.__doc__
    cls = type(
        name,
        (Optimizer,),
        {
            "__init__": __init__,
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": f"Keras 3 adapter of keras_opt.{name} (same arguments).\n\n"
            + (inner_cls.__doc__ or ""),
            "_keras_opt_class": inner_cls,
        },
    )
    return keras.saving.register_keras_serializable(package=PACKAGE, name=name)(cls)


_ADAPTERS: dict[type, type] = {}
for _name, _cls in _serialization.optimizer_classes().items():
    globals()[_name] = _ADAPTERS[_cls] = _make_adapter_class(_name, _cls)
del _name, _cls
Wrapped = keras.saving.register_keras_serializable(package=PACKAGE, name="Wrapped")(Wrapped)


def wrap(optimizer: Any) -> Optimizer:
    """A Keras 3 optimizer that trains with ``optimizer`` (a keras_opt optimizer).

    A keras_opt built-in optimizer gets its class's adapter (saved as
    ``keras_opt>Adam``); a subclass of ``keras_opt.Optimizer`` gets `Wrapped`;
    a ``keras_opt.LossScaleOptimizer`` gets `LossScaleOptimizer`. The optimizer
    is used, not copied: its state is the adapter's.
    """
    if isinstance(optimizer, _ko.LossScaleOptimizer):
        return LossScaleOptimizer._from_keras_opt(optimizer)
    optimizer = _check_keras_opt(optimizer, "keras_opt.keras.wrap")
    cls = _ADAPTERS.get(type(optimizer))
    if cls is None:
        return Wrapped(optimizer)
    return _adapter_for(cls, optimizer)


class LossScaleOptimizer(Optimizer, _KerasLossScaleOptimizer):
    """tf_keras's legacy dynamic loss scaling (``keras_opt.LossScaleOptimizer``) for Keras 3.

    ``compile`` under the ``mixed_float16`` policy keeps it as it is (it is a
    ``keras.optimizers.LossScaleOptimizer``), so the scale and the skipped steps
    follow tf_keras legacy: a step with an inf or NaN gradient changes no
    variable and no slot, halves the scale and still advances ``iterations``.

    Args:
      inner_optimizer: a keras_opt optimizer or a keras_opt.keras adapter.
      dynamic, initial_scale, dynamic_growth_steps: as ``keras_opt.LossScaleOptimizer``.
    """

    def __init__(
        self,
        inner_optimizer: Any,
        dynamic: bool = True,
        initial_scale: float | None = None,
        dynamic_growth_steps: int | None = None,
        name: str | None = None,
    ):
        if isinstance(inner_optimizer, Optimizer):
            inner_optimizer = inner_optimizer.keras_opt_optimizer
        inner = _check_keras_opt(inner_optimizer, "keras_opt.keras.LossScaleOptimizer")
        lso = _ko.LossScaleOptimizer(
            inner,
            dynamic=dynamic,
            initial_scale=initial_scale,
            dynamic_growth_steps=dynamic_growth_steps,
        )
        self._init_adapter(lso)

    @classmethod
    def _from_keras_opt(cls, lso: Any) -> LossScaleOptimizer:
        adapter = cls.__new__(cls)
        adapter._init_adapter(lso)
        return adapter

    @property
    def inner_optimizer(self) -> Optimizer:
        """The wrapped optimizer as a keras_opt.keras adapter."""
        return wrap(self._keras_opt_optimizer.inner_optimizer)

    @property
    def dynamic(self) -> bool:
        return self._keras_opt_optimizer.dynamic

    @property
    def loss_scale(self):
        return self._keras_opt_optimizer.loss_scale

    @property
    def initial_scale(self):
        return self._keras_opt_optimizer.initial_scale

    @property
    def dynamic_growth_steps(self):
        return self._keras_opt_optimizer.dynamic_growth_steps

    @property
    def variables(self) -> list:
        """The inner optimizer's variables, then the loss scale and its step counter."""
        lso = self._keras_opt_optimizer
        inner = wrap(lso.inner_optimizer)
        inner._built_variables = self._built_variables
        out = inner.variables
        if lso.dynamic:
            state = lso._loss_scale
            out.append(_VariableFace(state.current_loss_scale, f"{self.name}/loss_scale"))
            out.append(_VariableFace(state.counter, f"{self.name}/good_steps"))
        return out

    def scale_loss(self, loss):
        return self._keras_opt_optimizer.get_scaled_loss(loss)

    def apply(self, grads, trainable_variables=None):
        """Unscales ``grads`` (of a `scale_loss` loss), updates the scale, applies or skips."""
        grads = list(grads)
        if trainable_variables is None:
            trainable_variables = self._built_variables
        trainable_variables = list(trainable_variables)
        self._note_variables(trainable_variables)
        return self._keras_opt_optimizer.apply(grads, trainable_variables)

    def get_config(self) -> dict:
        return self._keras_opt_optimizer.get_config()

    @classmethod
    def from_config(cls, config: dict, custom_objects: dict | None = None):
        objects = _custom_objects(config.get("inner_optimizer") or {}, custom_objects)
        return cls._from_keras_opt(_ko.LossScaleOptimizer.from_config(dict(config), objects))


LossScaleOptimizer = keras.saving.register_keras_serializable(
    package=PACKAGE, name="LossScaleOptimizer"
)(LossScaleOptimizer)


def __getattr__(name: str):
    raise AttributeError(
        f"module 'keras_opt.keras' has no attribute {name!r}; its optimizers are "
        f"{sorted(c.__name__ for c in _ADAPTERS.values())}, LossScaleOptimizer, wrap."
    )


__all__ = sorted(c.__name__ for c in _ADAPTERS.values()) + [
    "LossScaleOptimizer",
    "Optimizer",
    "Wrapped",
    "wrap",
]
