"""Third-party optimizers written against tf_keras's OptimizerV2 contract.

Each optimizer here is written once, in the style of TensorFlow Addons / Model
Garden code, as a function of the library (``tf_keras.optimizers.legacy`` or
``keras_opt``), and runs on both side by side from the same start, dense and
sparse, eagerly and in ``tf.function``:

* ``MovingAverage``: a wrapper holding an inner optimizer, delegating
  ``_create_slots``/``_prepare_local``/``iterations`` to it and reading its
  ``_dense_apply_args``/``_sparse_apply_args`` (as TFA's averaging wrappers do);
* ``AdamW``: a subclass overriding ``_resource_apply_*`` that decays the weights
  and calls ``super()`` (TFA's ``DecoupledWeightDecayExtension``);
* ``WarmupSignSGD``: bool and int hyperparameters (``tf.logical_and`` on a bool
  hyperparameter, an int step count);
* a class registered with ``register_keras_serializable`` round-tripped through
  ``serialize``/``deserialize``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tf_keras.optimizers import legacy as tf_keras_legacy

import keras_opt

LIBS = {"keras_opt": keras_opt, "tf_keras": tf_keras_legacy}
STEPS = 4


def _coefficients(opt, var, apply_state):
    key = (var.device, var.dtype.base_dtype)
    return (apply_state or {}).get(key) or opt._fallback_apply_state(*key)


def make_optimizers(lib):
    """The three optimizers, subclassing ``lib``'s classes."""

    class MovingAverage(lib.Optimizer):
        def __init__(self, optimizer, average_decay=0.9, name="MovingAverage", **kwargs):
            super().__init__(name, **kwargs)
            self._optimizer = optimizer
            self._track_trackable(optimizer, "inner_optimizer")
            self._set_hyper("average_decay", average_decay)

        @property
        def iterations(self):
            return self._optimizer.iterations

        @iterations.setter
        def iterations(self, variable):
            self._optimizer.iterations = variable

        def _create_hypers(self):
            self._optimizer._create_hypers()
            super()._create_hypers()

        def _create_slots(self, var_list):
            self._optimizer._create_slots(var_list)
            for var in var_list:
                self.add_slot(var, "average", var.read_value())

        def _prepare_local(self, var_device, var_dtype, apply_state):
            self._optimizer._prepare_local(var_device, var_dtype, apply_state)
            apply_state[(var_device, var_dtype)]["average_decay"] = tf.identity(
                self._get_hyper("average_decay", var_dtype)
            )

        def _average(self, var, apply_state):
            decay = _coefficients(self, var, apply_state)["average_decay"]
            average = self.get_slot(var, "average")
            return average.assign(decay * average + (1.0 - decay) * var)

        def _resource_apply_dense(self, grad, var, apply_state=None):
            if "apply_state" in self._optimizer._dense_apply_args:
                train_op = self._optimizer._resource_apply_dense(grad, var, apply_state=apply_state)
            else:
                train_op = self._optimizer._resource_apply_dense(grad, var)
            with tf.control_dependencies([train_op]):
                return self._average(var, apply_state)

        def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
            if "apply_state" in self._optimizer._sparse_apply_args:
                train_op = self._optimizer._resource_apply_sparse(
                    grad, var, indices, apply_state=apply_state
                )
            else:
                train_op = self._optimizer._resource_apply_sparse(grad, var, indices)
            with tf.control_dependencies([train_op]):
                return self._average(var, apply_state)

        def get_config(self):
            config = super().get_config()
            config["average_decay"] = self._serialize_hyperparameter("average_decay")
            return config

    class AdamW(lib.Adam):
        def __init__(self, weight_decay, learning_rate=0.01, name="AdamW", **kwargs):
            super().__init__(learning_rate=learning_rate, name=name, **kwargs)
            self._set_hyper("weight_decay", weight_decay)

        def _prepare_local(self, var_device, var_dtype, apply_state):
            super()._prepare_local(var_device, var_dtype, apply_state)
            apply_state[(var_device, var_dtype)]["wd_t"] = tf.identity(
                self._get_hyper("weight_decay", var_dtype)
            )

        def _resource_apply_dense(self, grad, var, apply_state=None):
            wd = _coefficients(self, var, apply_state)["wd_t"]
            decay = var.assign_sub(wd * var, use_locking=self._use_locking)
            with tf.control_dependencies([decay]):
                return super()._resource_apply_dense(grad, var, apply_state=apply_state)

        def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
            wd = _coefficients(self, var, apply_state)["wd_t"]
            rows = tf.gather(var, indices) * wd
            decay = self._resource_scatter_add(var, indices, -rows)
            with tf.control_dependencies([decay]):
                return super()._resource_apply_sparse(grad, var, indices, apply_state=apply_state)

        def get_config(self):
            config = super().get_config()
            config["weight_decay"] = self._serialize_hyperparameter("weight_decay")
            return config

    class WarmupSignSGD(lib.Optimizer):
        def __init__(self, learning_rate=0.1, use_sign=True, warmup_steps=2, name="WarmupSignSGD"):
            super().__init__(name)
            self._set_hyper("learning_rate", learning_rate)
            self._set_hyper("use_sign", use_sign)
            self._set_hyper("warmup_steps", warmup_steps)

        def _direction(self, grad):
            # Plain gradient during warmup, its sign afterwards (when enabled).
            warm = self.iterations >= tf.cast(self._get_hyper("warmup_steps"), tf.int64)
            signed = tf.logical_and(self._get_hyper("use_sign"), warm)
            return tf.where(signed, tf.sign(grad), grad)

        def _resource_apply_dense(self, grad, var, apply_state=None):
            lr = _coefficients(self, var, apply_state)["lr_t"]
            return var.assign_sub(lr * self._direction(grad))

        def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
            lr = _coefficients(self, var, apply_state)["lr_t"]
            return self._resource_scatter_add(var, indices, -lr * self._direction(grad))

        def get_config(self):
            config = super().get_config()
            for name in ("learning_rate", "use_sign", "warmup_steps"):
                config[name] = self._serialize_hyperparameter(name)
            return config

    return {"MovingAverage": MovingAverage, "AdamW": AdamW, "WarmupSignSGD": WarmupSignSGD}


CLASSES = {key: make_optimizers(lib) for key, lib in LIBS.items()}
BUILDERS = {
    "MovingAverage(Adam)": lambda lib, c: c["MovingAverage"](lib.Adam(0.05), average_decay=0.8),
    "MovingAverage(SGD momentum)": lambda lib, c: c["MovingAverage"](lib.SGD(0.1, momentum=0.9)),
    "AdamW": lambda lib, c: c["AdamW"](weight_decay=0.01, learning_rate=0.05),
    "WarmupSignSGD": lambda lib, c: c["WarmupSignSGD"](learning_rate=0.1, use_sign=True),
}


def _gradients(sparse: bool):
    rng = np.random.default_rng(7)
    for _ in range(STEPS):
        dense = rng.normal(size=(4, 3)).astype(np.float32)
        if sparse:
            yield tf.IndexedSlices(tf.constant(dense[:2]), tf.constant([3, 1]), tf.constant([4, 3]))
        else:
            yield tf.constant(dense)


def _train(key, builder, sparse, mode):
    lib = LIBS[key]
    opt = BUILDERS[builder](lib, CLASSES[key])
    var = tf.Variable(np.arange(12, dtype=np.float32).reshape(4, 3) / 10.0, name="w")

    def step(grad):
        opt.apply_gradients([(grad, var)])

    if mode == "tf_function":
        step = tf.function(step)
    for grad in _gradients(sparse):
        step(grad)
    slots = {name: opt.get_slot(var, name).numpy() for name in opt.get_slot_names()}
    return opt, var.numpy(), slots


@pytest.mark.parametrize("mode", ["eager", "tf_function"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("builder", sorted(BUILDERS))
def test_third_party_optimizer_side_by_side(builder, sparse, mode):
    ko_opt, ko_var, ko_slots = _train("keras_opt", builder, sparse, mode)
    tk_opt, tk_var, tk_slots = _train("tf_keras", builder, sparse, mode)
    # The same raw ops in the same order: equal up to graph rewrites (exact eagerly).
    tol = dict(rtol=0, atol=0) if mode == "eager" else dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ko_var, tk_var, **tol)
    assert sorted(ko_slots) == sorted(tk_slots)
    for name in ko_slots:
        np.testing.assert_allclose(ko_slots[name], tk_slots[name], **tol, err_msg=name)
    assert ko_opt.iterations.numpy() == tk_opt.iterations.numpy() == STEPS
    assert ko_opt.get_config() == tk_opt.get_config()


def test_a_weight_decay_hyperparameter_of_a_subclass_is_its_own():
    """TFA-style ``_set_hyper("weight_decay", ...)``: the attribute reads and sets it.

    keras_opt's own ``weight_decay`` argument (the base's decay stage) must not
    shadow it, and the stage stays off, so the subclass decays exactly once.
    """
    got = {}
    for key in ("keras_opt", "tf_keras"):
        opt = BUILDERS["AdamW"](LIBS[key], CLASSES[key])
        first = float(tf.convert_to_tensor(opt.weight_decay))
        opt.weight_decay = 0.02
        got[key] = (first, float(tf.convert_to_tensor(opt.weight_decay)), opt.get_config())
    assert got["keras_opt"] == got["tf_keras"]
    assert got["keras_opt"][:2] == (np.float32(0.01), np.float32(0.02))
    assert BUILDERS["AdamW"](keras_opt, CLASSES["keras_opt"])._weight_decay is None


def test_hyperparameters_keep_their_dtype_like_tf_keras():
    hypers = dict(flag=True, count=3, rate=0.5, double=np.float64(0.25), big=2**40)
    dtypes = {}
    for key in LIBS:
        opt = CLASSES[key]["WarmupSignSGD"]()
        for name, value in hypers.items():
            opt._set_hyper(name, value)
        opt._create_hypers()
        dtypes[key] = {name: opt._hyper[name].dtype for name in hypers}
        assert opt._get_hyper("count").numpy() == 3 and opt._get_hyper("flag").numpy()
        assert opt.get_config()["warmup_steps"] == 2  # an int reads back as an int
        assert isinstance(opt.get_config()["warmup_steps"], (int, np.integer))
    assert dtypes["keras_opt"] == dtypes["tf_keras"]
    assert dtypes["keras_opt"] == {
        "flag": tf.bool, "count": tf.int32, "rate": tf.float32, "double": tf.float64,
        "big": tf.int64,
    }  # fmt: skip
    # The built-in optimizers' hyperparameters (Python floats) stay float32.
    opt = keras_opt.Adam()
    opt._create_hypers()
    assert {v.dtype for v in opt._hyper.values() if isinstance(v, tf.Variable)} == {tf.float32}


def test_apply_args_are_cached_like_tf_keras():
    for key, lib in LIBS.items():
        adam, ftrl = lib.Adam(), lib.Ftrl()
        assert adam._dense_apply_args == ["self", "grad", "var", "apply_state"], key
        assert adam._sparse_apply_args == ["self", "grad", "var", "indices", "apply_state"], key
        assert ftrl._dense_apply_args is ftrl._dense_apply_args  # computed once per instance
    wrapper = CLASSES["keras_opt"]["MovingAverage"](keras_opt.SGD())
    assert keras_opt.SGD()._dense_apply_args == tf_keras_legacy.SGD()._dense_apply_args
    assert "apply_state" in wrapper._optimizer._sparse_apply_args


@pytest.mark.parametrize("framework", ["tf_keras", "keras"])
def test_registered_custom_optimizer_round_trips_through_serialize(framework):
    register = (
        tf_keras.saving.register_keras_serializable
        if framework == "tf_keras"
        else pytest.importorskip("keras").saving.register_keras_serializable
    )
    package = f"third_party_{framework}"
    classes = {}
    for key in LIBS:
        base = CLASSES[key]["AdamW"]
        # One registered name per library: both registries map a name to one class.
        classes[key] = register(package=f"{package}_{key}")(
            type("RegisteredAdamW", (base,), {"__module__": __name__})
        )
    ko = classes["keras_opt"](weight_decay=0.02, learning_rate=0.3)
    config = keras_opt.serialize(ko)
    assert config["registered_name"] == f"{package}_keras_opt>RegisteredAdamW"
    assert config["class_name"] == "RegisteredAdamW"
    restored = keras_opt.deserialize(config)
    assert type(restored) is classes["keras_opt"]
    assert restored.get_config() == ko.get_config()
    assert type(keras_opt.get(config, use_legacy_optimizer=True)) is classes["keras_opt"]
    legacy = keras_opt.serialize(ko, use_legacy_format=True)
    restored = keras_opt.deserialize(legacy, use_legacy_format=True)
    assert type(restored) is classes["keras_opt"]
    if framework == "tf_keras":  # tf_keras writes the same dicts for its twin
        tk = classes["tf_keras"](weight_decay=0.02, learning_rate=0.3)
        tk_config = tf_keras.optimizers.serialize(tk)
        assert tk_config["registered_name"] == f"{package}_tf_keras>RegisteredAdamW"
        assert tk_config["config"] == config["config"]
        tk_legacy = tf_keras.optimizers.serialize(tk, use_legacy_format=True)
        assert set(tk_legacy) == set(legacy) == {"class_name", "config"}
        assert tk_legacy["class_name"].split(">")[1] == legacy["class_name"].split(">")[1]


def test_serialization_keywords_and_errors():
    config = keras_opt.serialize(keras_opt.Adam(0.2))
    assert isinstance(keras_opt.deserialize(config, use_legacy_optimizer=True), keras_opt.Adam)
    assert isinstance(keras_opt.get("adam", use_legacy_optimizer=False), keras_opt.Adam)
    with pytest.raises(TypeError, match="Invalid keyword"):
        keras_opt.get("adam", bogus=1)
    with pytest.raises(TypeError, match="Invalid keyword"):
        tf_keras.optimizers.get("adam", bogus=1)  # the same type in tf_keras
    with pytest.raises(ValueError, match="Unknown optimizer"):
        keras_opt.deserialize({"class_name": "NotRegistered", "config": {}})


@pytest.mark.parametrize("mode", ["eager", "tf_function"])
def test_a_fraction_into_an_integer_hyperparameter_raises(mode):
    """tf_keras truncates 0.5 to 0 in an int32 learning rate; keras_opt says why it can't."""
    opt = keras_opt.SGD(learning_rate=1)
    var = tf.Variable([1.0])
    opt.apply_gradients([(tf.constant([1.0]), var)])
    assert opt._get_hyper("learning_rate").dtype == tf.int32  # as in tf_keras

    def set_rate():
        opt.learning_rate = 0.5

    with pytest.raises(TypeError, match="learning_rate.*int32.*learning_rate=1.0"):
        tf.function(set_rate)() if mode == "tf_function" else set_rate()
    opt.learning_rate = 2  # an integer still fits
    assert int(opt._get_hyper("learning_rate").numpy()) == 2
