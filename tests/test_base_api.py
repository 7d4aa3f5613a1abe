"""The OptimizerV2 contract beyond the update math: API, errors, config, tracing.

tf_keras legacy is the oracle wherever it defines the behaviour; where keras_opt
deliberately does better (errors raised before any variable changes, a clear
error for an empty gradient list), the test says so.
"""

from __future__ import annotations

import contextlib
import copy
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tf_keras.optimizers import legacy as tf_keras_legacy

import keras_opt
from keras_opt.optimizer_v2 import gradients as gradients_lib

from cases import CASES, MODERN_CASES, MODERN_NAMES, NAMES, case_id


def make_vars(prefix=""):
    return (
        tf.Variable([[1.0, 2.0], [3.0, 4.0]], name=prefix + "w"),
        tf.Variable([0.5, -0.5], name=prefix + "b"),
    )


GRADS = (tf.constant([[0.1, -0.2], [0.3, 0.4]]), tf.constant([0.5, -0.6]))


# ---------------------------------------------------------------- construction
@pytest.mark.parametrize("name", NAMES)
def test_constructor_signature_and_defaults_match_tf_keras(name):
    import inspect

    ours = inspect.signature(getattr(keras_opt, name).__init__)
    theirs = inspect.signature(getattr(tf_keras_legacy, name).__init__)
    assert list(ours.parameters) == list(theirs.parameters)
    for param in ours.parameters.values():
        assert param.default == theirs.parameters[param.name].default, param.name
    assert getattr(keras_opt, name)().get_config() == getattr(tf_keras_legacy, name)().get_config()


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(foo=1.0), TypeError),
        (dict(clipnorm=1.0, global_clipnorm=1.0), ValueError),
        (dict(clipnorm=-1.0), ValueError),
        (dict(clipvalue=-1.0), ValueError),
        (dict(decay=-0.1), ValueError),
    ],
)
def test_invalid_constructor_arguments(kwargs, error):
    with pytest.raises(error) as theirs:
        tf_keras_legacy.SGD(**kwargs)
    with pytest.raises(error) as ours:
        keras_opt.SGD(**kwargs)
    assert str(ours.value).split(".")[0] == str(theirs.value).split(".")[0]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("SGD", dict(momentum=1.5)),
        ("RMSprop", dict(momentum=-0.1)),
        ("Adagrad", dict(initial_accumulator_value=-1.0)),
        ("Ftrl", dict(learning_rate_power=0.5)),
        ("Ftrl", dict(l1_regularization_strength=-1.0)),
        ("Ftrl", dict(l2_shrinkage_regularization_strength=-1.0)),
    ],
)
def test_invalid_optimizer_arguments_raise_value_error_like_tf_keras(name, kwargs):
    with pytest.raises(ValueError):
        getattr(tf_keras_legacy, name)(**kwargs)
    with pytest.raises(ValueError, match=list(kwargs)[0].split("_")[0]):
        getattr(keras_opt, name)(**kwargs)


def test_gradient_transformers_exclude_clipping_options():
    with pytest.raises(ValueError, match="clipnorm"):
        keras_opt.SGD(gradient_transformers=[lambda gv: gv], clipnorm=1.0)


def test_lr_alias_warns_and_sets_learning_rate():
    with pytest.warns(UserWarning, match="lr"):
        opt = keras_opt.SGD(lr=0.3)
    assert opt.get_config()["learning_rate"] == 0.3
    assert opt.lr == opt.learning_rate


# -------------------------------------------------------- hyperparameters
def test_hyperparameter_attributes_read_and_write():
    opt = keras_opt.Adam(learning_rate=0.1)
    w, b = make_vars()
    opt.apply_gradients(zip(GRADS, [w, b]))
    assert isinstance(opt.learning_rate, tf.Variable)
    assert opt.learning_rate.name == "Adam/learning_rate:0"
    opt.learning_rate = 0.05
    assert opt.learning_rate.numpy() == np.float32(0.05)
    opt.lr = 0.02
    assert opt.learning_rate.numpy() == np.float32(0.02)
    assert {"learning_rate", "beta_1", "lr"} <= set(dir(opt))
    with pytest.raises(AttributeError):
        _ = opt.not_a_hyperparameter


def test_hyperparameter_set_inside_tf_function_without_retracing():
    opt = keras_opt.SGD(learning_rate=1.0)
    var = tf.Variable(0.0)
    traces = []

    @tf.function
    def step(lr):  # the first call creates the hyperparameter variables
        traces.append(1)
        opt.learning_rate = lr
        opt.apply_gradients([(tf.constant(1.0), var)])

    for lr in [0.5, 0.25, 0.125]:
        step(tf.constant(lr))
    # tf.function traces again once after a first call that created variables.
    assert len(traces) == 2
    assert var.numpy() == -(0.5 + 0.25 + 0.125)
    assert opt.learning_rate.numpy() == 0.125


def test_callable_and_tensor_hyperparameters():
    scale = tf.Variable(0.5)
    opt = keras_opt.SGD(learning_rate=lambda: scale * 0.2, momentum=tf.constant(0.5))
    var = tf.Variable(1.0)
    opt.apply_gradients([(tf.constant(1.0), var)])
    np.testing.assert_allclose(var.numpy(), 1.0 - 0.1)
    assert float(opt.get_config()["learning_rate"]) == pytest.approx(0.1)


def test_legacy_decay_matches_tf_keras():
    results = []
    for lib in (keras_opt, tf_keras_legacy):
        opt = lib.SGD(learning_rate=0.5, decay=0.5)
        var = tf.Variable(0.0)
        for _ in range(3):
            opt.apply_gradients([(tf.constant(1.0), var)])
        results.append(var.numpy())
    assert results[0] == results[1]
    # lr / (1 + decay * iterations) at iterations 0, 1, 2 (float32 arithmetic).
    assert results[0] == pytest.approx(-(0.5 + 0.5 / 1.5 + 0.5 / 2.0), rel=1e-6)


# --------------------------------------------------------------- weights
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_build_creates_weights_like_first_step(case):
    name, kwargs = case
    built, stepped = getattr(keras_opt, name)(**kwargs), getattr(tf_keras_legacy, name)(**kwargs)
    w1, b1 = make_vars()
    w2, b2 = make_vars()
    built.build([w1, b1])
    with tf.name_scope(stepped._name):  # as inside tf_keras's apply_gradients
        stepped._create_all_weights([w2, b2])
    assert [v.name for v in built.weights] == [v.name for v in stepped.weights]
    assert built.weights[0] is built.iterations and built.iterations.dtype == tf.int64
    for a, b in zip(built.get_weights(), stepped.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_get_and_set_weights_round_trip_and_checks():
    opt = keras_opt.Adam()
    w, b = make_vars()
    opt.apply_gradients(zip(GRADS, [w, b]))
    values = opt.get_weights()
    assert len(values) == 5 and values[0] == 1
    new = [np.array(7, np.int64)] + [np.full_like(v, 0.25) for v in values[1:]]
    opt.set_weights(new)
    assert opt.iterations.numpy() == 7
    np.testing.assert_array_equal(opt.get_slot(w, "m").numpy(), np.full((2, 2), 0.25))

    before = opt.get_weights()
    with pytest.raises(ValueError, match="length 2"):
        opt.set_weights(before[:2])
    bad = list(before)
    bad[-1] = np.zeros((3,))
    with pytest.raises(ValueError, match=r"shape \(2,\).*\(3,\)"):
        opt.set_weights(bad)
    for a, b in zip(opt.get_weights(), before):  # a failed call changes nothing
        np.testing.assert_array_equal(a, b)


def test_slot_names_variables_and_colocation():
    opt = keras_opt.RMSprop(momentum=0.9, centered=True)
    w, b = make_vars()
    opt.apply_gradients(zip(GRADS, [w, b]))
    assert opt.get_slot_names() == ["rms", "momentum", "mg"]
    assert opt.get_slot(w, "rms").name == "RMSprop/w/rms:0"
    assert opt.get_slot(w, "rms").device == w.device
    assert opt.variables() is opt.weights
    assert [v.name for v in opt.weights][:3] == [
        "RMSprop/iter:0",
        "RMSprop/w/rms:0",
        "RMSprop/b/rms:0",
    ]


# ---------------------------------------------------------- bad input
def assert_nothing_changed(opt, variables, snapshot):
    for var, value in zip(variables, snapshot):
        np.testing.assert_array_equal(var.numpy(), value)
    if opt._iterations is not None:
        assert opt.iterations.numpy() == 0


@pytest.mark.parametrize("name", NAMES + MODERN_NAMES)
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_mismatched_gradient_shape_raises_before_any_update(name, mode):
    # tf_keras raises InvalidArgumentError from the kernel of the second variable,
    # after the first one was already updated; keras_opt checks every pair first.
    w, b = make_vars()
    snapshot = [w.numpy(), b.numpy()]
    opt = getattr(keras_opt, name)()

    def step(bad):
        opt.apply_gradients([(GRADS[0], w), (bad, b)])

    if mode == "function":
        step = tf.function(step)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"b:0.*shape \(3,\).*\(2,\)"):
        step(tf.constant([1.0, 2.0, 3.0]))
    assert_nothing_changed(opt, [w, b], snapshot)


@pytest.mark.parametrize(
    "make, error, match",
    [
        (lambda: keras_opt.Lion(beta_1=0.0), ValueError, "beta_1.*Received: beta_1=0.0"),
        (lambda: keras_opt.Lion(beta_1=1.5), ValueError, "beta_1.*Received: beta_1=1.5"),
        (lambda: keras_opt.AdamW(weight_decay=None), ValueError, "weight_decay=None"),
        (lambda: keras_opt.AdamW(weight_decay=-0.1), ValueError, "weight_decay=-0.1"),
        (lambda: keras_opt.Lamb(weight_decay="0.1"), TypeError, "weight_decay='0.1'"),
        (lambda: keras_opt.Muon(exclude_layers="dense"), TypeError, "exclude_layers.*'dense'"),
        (lambda: keras_opt.Muon(exclude_layers=[3]), TypeError, "exclude_layers.*3"),
        (lambda: keras_opt.Muon(ns_steps=-1), ValueError, "ns_steps.*-1"),
        (lambda: keras_opt.Muon(adam_weight_decay=-1.0), ValueError, "adam_weight_decay.*-1.0"),
        (lambda: keras_opt.Adafactor(clip_threshold=0.0), ValueError, "clip_threshold.*0.0"),
    ],
)
def test_modern_invalid_constructor_arguments(make, error, match):
    with pytest.raises(error, match=match):
        make()


def test_mismatched_sparse_row_shape():
    w, _ = make_vars()
    grad = tf.IndexedSlices(tf.constant([[1.0, 2.0, 3.0]]), tf.constant([0]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="row shape"):
        keras_opt.Adagrad().apply_gradients([(grad, w)])


@pytest.mark.parametrize(
    "grad", [tf.constant([1.0, 2.0], tf.float64), tf.constant([1, 2])], ids=["float64", "int32"]
)
def test_wrong_gradient_dtype(grad):
    _, b = make_vars()
    with pytest.raises(tf.errors.InvalidArgumentError):
        tf_keras_legacy.Adam().apply_gradients([(grad, b)])
    with pytest.raises(tf.errors.InvalidArgumentError, match=f"b:0.*{grad.dtype.name}.*float32"):
        keras_opt.Adam().apply_gradients([(grad, b)])


def test_integer_variable_is_refused_with_its_name():
    counter = tf.Variable([1, 2], name="counter")
    with pytest.raises(ValueError, match="counter:0.*int32"):
        keras_opt.SGD().apply_gradients([(tf.constant([1, 2]), counter)])
    with pytest.raises(tf.errors.InvalidArgumentError):
        keras_opt.SGD().apply_gradients([(tf.constant([1, 2]), counter)])


def test_gradient_for_a_tensor_is_refused():
    with pytest.raises(AttributeError):  # what tf_keras raises
        tf_keras_legacy.Adam().apply_gradients([(tf.constant([1.0]), tf.constant([1.0]))])
    with pytest.raises(TypeError, match="can only update variables"):
        keras_opt.Adam().apply_gradients([(tf.constant([1.0]), tf.constant([1.0]))])
    with pytest.raises(AttributeError):
        keras_opt.Adam().apply_gradients([(tf.constant([1.0]), tf.constant([1.0]))])


def test_malformed_pairs():
    w, _ = make_vars()
    with pytest.raises(TypeError, match="pairs"):
        keras_opt.SGD().apply_gradients([w])


@pytest.mark.parametrize("eager", [True, False], ids=["eager", "tf_function"])
def test_empty_list_is_a_no_op_like_tf_keras(eager):
    # tf_keras returns a no-op (a Keras fit with every layer frozen calls this):
    # the optimizer's weights are created, nothing else changes.
    results = {}
    for lib in (keras_opt, tf_keras_legacy):
        opt = lib.SGD(learning_rate=0.5)

        def step(opt=opt):
            opt.apply_gradients([])

        step() if eager else tf.function(step)()
        results[lib.__name__] = ([w.name for w in opt.weights], opt.get_weights())
    ko, tfk = results["keras_opt"], results[tf_keras_legacy.__name__]
    assert ko[0] == tfk[0] == ["SGD/iter:0"]
    assert ko[1] == tfk[1] == [0]


def test_all_none_gradients_and_partial_none(caplog):
    w, b = make_vars()
    with pytest.raises(ValueError, match="No gradients provided for any variable"):
        keras_opt.SGD().apply_gradients([(None, w), (None, b)])
    opt = keras_opt.SGD(learning_rate=1.0)
    opt.apply_gradients([(GRADS[0], w), (None, b)])
    np.testing.assert_array_equal(b.numpy(), [0.5, -0.5])
    np.testing.assert_allclose(w.numpy(), [[0.9, 2.2], [2.7, 3.6]])


def test_error_types_are_both_tf_and_python_errors():
    error = gradients_lib.InvalidGradientError("message")
    assert isinstance(error, tf.errors.InvalidArgumentError) and isinstance(error, ValueError)
    assert error.message == "message"
    assert issubclass(gradients_lib.NotAVariableError, TypeError)


def test_error_types_survive_autograph():
    """Inside a user's tf.function (converted by AutoGraph) the errors keep their types."""
    w, _ = make_vars()
    opt = keras_opt.SGD()

    @tf.function
    def not_a_variable():
        opt.apply_gradients([(GRADS[0], tf.constant(GRADS[0]))])

    with pytest.raises(gradients_lib.NotAVariableError, match="only update variables"):
        not_a_variable()

    @tf.function
    def wrong_dtype():
        opt.apply_gradients([(tf.cast(GRADS[0], tf.float64), w)])

    with pytest.raises(gradients_lib.InvalidGradientError, match="w:0.*float64"):
        wrong_dtype()


# --------------------------------------------------------- training API
def test_minimize_with_callable_loss_and_callable_var_list():
    results = []
    for lib in (keras_opt, tf_keras_legacy):
        opt = lib.Adam(learning_rate=0.1)
        w, b = make_vars()

        def loss():
            return tf.reduce_sum(tf.square(tf.linalg.matvec(w, b) - 1.0))  # noqa: B023

        for _ in range(3):
            opt.minimize(loss, var_list=lambda: [w, b])  # noqa: B023
        results.append([w.numpy(), b.numpy()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


def test_minimize_with_tensor_loss_requires_tape():
    opt = keras_opt.SGD()
    w, _ = make_vars()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(w)
    with pytest.raises(ValueError, match="tape"):
        opt.minimize(loss, [w])
    opt.minimize(loss, [w], tape=tape)
    assert opt.iterations.numpy() == 1


@pytest.mark.parametrize(
    "clip", [dict(clipvalue=0.15), dict(clipnorm=0.2), dict(global_clipnorm=0.3)]
)
def test_clipping_matches_tf_keras(clip):
    results = []
    for lib in (keras_opt, tf_keras_legacy):
        opt = lib.SGD(learning_rate=1.0, **clip)
        w, b = make_vars()
        opt.apply_gradients(zip(GRADS, [w, b]))
        results.append([w.numpy(), b.numpy()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)
    assert not np.allclose(results[0][1], np.array([0.5, -0.5]) - GRADS[1].numpy())


def test_gradient_transformers_and_aggregator_are_called_in_order():
    calls = []

    def aggregator(grads_and_vars):
        calls.append("aggregate")
        return grads_and_vars

    def double(grads_and_vars):
        calls.append("transform")
        return [(2.0 * g, v) for g, v in grads_and_vars]

    opt = keras_opt.SGD(
        learning_rate=1.0, gradient_aggregator=aggregator, gradient_transformers=[double]
    )
    var = tf.Variable(0.0)
    opt.apply_gradients([(tf.constant(1.0), var)])
    assert calls == ["aggregate", "transform"] and var.numpy() == -2.0


@pytest.mark.parametrize("mode", ["eager", "tf_function"])
def test_default_aggregation_all_reduces_only_under_a_strategy(monkeypatch, mode):
    # With one replica (no strategy) the gradient sum is the gradient: no
    # all_reduce, so no IdentityN over every gradient (one op per gradient when
    # eager). Under a strategy the reduction still runs. Values as tf_keras.
    calls = []
    real = tf.distribute.ReplicaContext.all_reduce

    def spy(self, reduce_op, value, options=None):
        calls.append(len(value))
        return real(self, reduce_op, value, options)

    real_batch = gradients_lib._batch_reduce_sum

    def batch_spy(distribution, grads_and_vars):  # the merge_call path of some strategies
        calls.append(len(grads_and_vars))
        return real_batch(distribution, grads_and_vars)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", spy)
    monkeypatch.setattr(gradients_lib, "_batch_reduce_sum", batch_spy)
    grads = [tf.constant([0.5, -1.0]), tf.IndexedSlices(tf.constant([[2.0]]), tf.constant([1]))]
    results = []
    for make in (keras_opt.Adam, tf_keras_legacy.Adam):
        for scope in (None, tf.distribute.MirroredStrategy(["/cpu:0"])):
            with scope.scope() if scope else contextlib.nullcontext():
                vs = [tf.Variable([1.0, 2.0]), tf.Variable([[3.0], [4.0]])]
                opt = make(learning_rate=0.1)

                def step(opt=opt, vs=vs):
                    opt.apply_gradients(zip(grads, vs))

                def call(step=step, scope=scope):
                    scope.run(step) if scope else step()

                calls.clear()
                for _ in range(2):  # a new tf.function each time
                    tf.function(call)() if mode == "tf_function" else call()
                if make is keras_opt.Adam and scope:  # once per step (or per trace)
                    assert calls and set(calls) == {2}, calls
                elif make is keras_opt.Adam:
                    assert calls == []
                results.append([v.numpy() for v in vs])
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


def test_constraint_applied_after_dense_update_and_refused_for_sparse():
    var = tf.Variable([1.0, -1.0], constraint=lambda x: tf.clip_by_value(x, 0.0, 0.5))
    keras_opt.SGD(learning_rate=1.0).apply_gradients([(tf.constant([-1.0, 1.0]), var)])
    np.testing.assert_array_equal(var.numpy(), [0.5, 0.0])
    grad = tf.IndexedSlices(tf.constant([1.0]), tf.constant([0]))
    with pytest.raises(RuntimeError, match="constraint"):
        keras_opt.SGD().apply_gradients([(grad, var)])


def test_apply_gradients_in_cross_replica_context_raises():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        var = tf.Variable(1.0)
        opt = keras_opt.SGD()
    with strategy.scope(), pytest.raises(RuntimeError, match="cross-replica"):
        opt.apply_gradients([(tf.constant(1.0), var)])


@pytest.mark.parametrize("case", [("Adam", {})] + MODERN_CASES, ids=case_id)
@pytest.mark.parametrize("build_first", [True, False])
def test_one_hundred_steps_trace_once(build_first, case):
    name, kwargs = case
    opt = getattr(keras_opt, name)(**kwargs)
    w, b = make_vars()
    traces = []
    if build_first:
        opt.build([w, b])

    @tf.function
    def step(gw, gb):
        traces.append(1)
        opt.apply_gradients([(gw, w), (gb, b)])

    for i in range(100):
        step(GRADS[0] * float(i), GRADS[1])
    # Without `build`, the first call creates the optimizer's variables and
    # tf.function traces once more after it (tf_keras behaves the same).
    assert len(traces) == (1 if build_first else 2) and opt.iterations.numpy() == 100


# ------------------------------------------------------ other variable kinds
def test_keras3_variables_train_like_tf_variables():
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    kv = keras.Variable(np.array([[1.0, 2.0], [3.0, 4.0]], np.float32), name="kernel")
    tv, _ = make_vars()
    for var in (kv, tv):
        opt = keras_opt.Adam(learning_rate=0.1)
        opt.apply_gradients([(GRADS[0], var)])
        opt.apply_gradients([(GRADS[0], var)])
    np.testing.assert_array_equal(np.asarray(kv.numpy()), tv.numpy())
    assert opt.get_slot(tv, "m") is not None
    keras_opt_opt = keras_opt.SGD(momentum=0.5)
    keras_opt_opt.apply_gradients([(GRADS[0], kv)])
    assert keras_opt_opt.get_slot(kv, "momentum") is keras_opt_opt.get_slot(kv._value, "momentum")


def test_tf_keras_layer_variables():
    results = []
    for lib in (keras_opt, tf_keras_legacy):
        tf_keras.utils.set_random_seed(3)
        layer = tf_keras.layers.Dense(2)
        layer.build((None, 3))
        x = tf.constant([[1.0, 2.0, 3.0]])
        opt = lib.RMSprop(learning_rate=0.1)
        for _ in range(2):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(layer(x) ** 2)
            grads = tape.gradient(loss, layer.trainable_variables)
            opt.apply_gradients(zip(grads, layer.trainable_variables))
        results.append([v.numpy() for v in layer.trainable_variables])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------- custom optimizer
class PlainMomentum(keras_opt.Optimizer):
    """A subclass written against the tf_keras contract, without apply_state."""

    def __init__(self, learning_rate=0.1, name="PlainMomentum", **kwargs):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", learning_rate)

    def _create_slots(self, var_list):
        for var in var_list:
            self.add_slot(var, "velocity")

    def _resource_apply_dense(self, grad, var):
        velocity = self.get_slot(var, "velocity")
        lr = self._get_hyper("learning_rate", var.dtype)
        new_velocity = velocity.assign(0.5 * velocity + grad)
        return var.assign_sub(lr * new_velocity)

    def _resource_apply_sparse(self, grad, var, indices):
        return self._resource_apply_dense(tf.scatter_nd(indices[:, None], grad, tf.shape(var)), var)

    def get_config(self):
        config = super().get_config()
        config["learning_rate"] = self._serialize_hyperparameter("learning_rate")
        return config


def test_custom_optimizer_without_apply_state():
    opt = PlainMomentum()
    var = tf.Variable([1.0, 1.0])
    opt.apply_gradients([(tf.constant([1.0, 2.0]), var)])
    opt.apply_gradients([(tf.IndexedSlices(tf.constant([1.0, 1.0]), tf.constant([1, 1])), var)])
    # velocity: [1, 2] then 0.5 * [1, 2] + [0, 2] = [0.5, 3]
    np.testing.assert_allclose(var.numpy(), [1.0 - 0.1 - 0.05, 1.0 - 0.2 - 0.3])
    clone = keras_opt.deserialize(
        keras_opt.serialize(opt), custom_objects={"PlainMomentum": PlainMomentum}
    )
    assert isinstance(clone, PlainMomentum) and clone.get_config() == opt.get_config()


# ------------------------------------------------------------ registry, config
@pytest.mark.parametrize("name", NAMES)
def test_get_by_name_is_case_insensitive(name):
    for spelling in (name, name.lower(), name.upper()):
        opt = keras_opt.get(spelling)
        assert type(opt) is getattr(keras_opt, name)
        assert (
            opt.get_config()
            == tf_keras.optimizers.get(spelling, use_legacy_optimizer=True).get_config()
        )


def test_get_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="adam.*sgd"):
        keras_opt.get("adamx")
    with pytest.raises(ValueError, match="Could not interpret"):
        keras_opt.get(42)
    opt = keras_opt.SGD()
    assert keras_opt.get(opt) is opt


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_config_round_trip_and_tf_keras_configs(case):
    name, kwargs = case
    opt = getattr(keras_opt, name)(clipnorm=0.5, **kwargs)
    config = keras_opt.serialize(opt)
    assert config["class_name"] == name and config["module"] == "keras_opt"
    clone = keras_opt.deserialize(config)
    assert type(clone) is type(opt) and clone.get_config() == opt.get_config()
    theirs = getattr(tf_keras_legacy, name)(clipnorm=0.5, **kwargs)
    assert opt.get_config() == theirs.get_config()
    from_theirs = keras_opt.deserialize(tf_keras.optimizers.serialize(theirs))
    assert from_theirs.get_config() == opt.get_config()


@pytest.mark.parametrize("case", MODERN_CASES, ids=case_id)
def test_modern_config_round_trip_and_keras3_configs(case):
    """Keras 3's config keys in Keras 3's order; configs move between the libraries."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    name, kwargs = case
    opt = getattr(keras_opt, name)(clipnorm=0.5, **kwargs)
    config = keras_opt.serialize(opt)
    assert config["class_name"] == name and config["module"] == "keras_opt"
    clone = keras_opt.deserialize(config)
    assert type(clone) is type(opt) and clone.get_config() == opt.get_config()
    for spelling in (name, name.lower(), name.upper()):
        assert type(keras_opt.get(spelling)) is type(opt)
    if name == "LazyAdam":  # TensorFlow Addons' class: tf_keras legacy Adam's config
        assert opt.get_config() == dict(keras_opt.Adam(clipnorm=0.5, **kwargs).get_config(),
                                        name="LazyAdam")  # fmt: skip
        return
    theirs = getattr(keras.optimizers, name)(clipnorm=0.5, **kwargs)
    assert list(opt.get_config()) == list(theirs.get_config())
    from_theirs = keras_opt.deserialize(keras.optimizers.serialize(theirs))
    assert type(from_theirs) is type(opt)
    for key, value in from_theirs.get_config().items():
        if isinstance(value, float):  # Keras 3 reports its float32 learning rate
            assert value == pytest.approx(opt.get_config()[key], rel=1e-7), key
        elif key != "name":
            assert value == opt.get_config()[key], key


@pytest.mark.parametrize("case", MODERN_CASES, ids=case_id)
def test_modern_build_creates_weights_like_first_step(case):
    name, kwargs = case
    built, stepped = getattr(keras_opt, name)(**kwargs), getattr(keras_opt, name)(**kwargs)
    w1, b1 = make_vars()
    w2, b2 = make_vars()
    built.build([w1, b1])
    stepped.apply_gradients(zip([tf.zeros_like(GRADS[0]), tf.zeros_like(GRADS[1])], [w2, b2]))
    assert [v.name for v in built.weights] == [v.name for v in stepped.weights]
    assert [v.shape for v in built.weights] == [v.shape for v in stepped.weights]
    assert built.weights[0] is built.iterations


def test_deepcopy_keeps_hyperparameters():
    opt = keras_opt.Adam(learning_rate=0.2)
    clone = copy.deepcopy(opt)
    assert clone.get_config() == opt.get_config() and clone is not opt
