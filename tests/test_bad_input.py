"""Bad input to `apply_gradients`, table-driven, against tf_keras.

Every case runs eagerly, inside a `tf.function` (where AutoGraph re-creates
exceptions and used to turn keras_opt's into `StagingError`) and in a TF1 graph,
for every optimizer, with keras_opt and with tf_keras. keras_opt's error must be
an instance of the type tf_keras raises for the same input (so existing
`except` clauses keep working), its message must name the variable, and no
variable or optimizer weight (`iter`, hyperparameters, slots) may change.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import tensorflow as tf
from tf_keras.optimizers import legacy as tf_keras_legacy

import keras_opt
from keras_opt.optimizer_v2 import gradients as gradients_lib

OPTIMIZERS = ["SGD", "Adam", "Adamax", "Nadam", "Adagrad", "Adadelta", "RMSprop", "Ftrl"]
MODES = ["eager", "tf_function", "tf1_graph"]


def _good():
    # A valid pair goes first: tf_keras updates it before failing on the bad one.
    w = tf.Variable([1.0, 2.0], name="good")
    return w, (tf.constant([0.5, -0.5]), w)


# name -> (function of the good pair returning grads_and_vars, text the message must contain)
CASES = {
    "dense_shape": (
        lambda good: [good, (tf.constant([1.0, 2.0, 3.0]), tf.Variable([1.0, 2.0], name="bad"))],
        "bad",
    ),
    "gradient_dtype": (
        lambda good: [
            good,
            (tf.constant([1.0, 2.0], tf.float64), tf.Variable([1.0, 2.0], name="bad")),
        ],
        "bad",
    ),
    "integer_variable": (
        lambda good: [good, (tf.constant([1, 2]), tf.Variable([1, 2], name="counter"))],
        "counter",
    ),
    "sparse_row_shape": (
        lambda good: [
            good,
            (
                tf.IndexedSlices(tf.ones([1, 3]), tf.constant([0])),
                tf.Variable(tf.ones([2, 2]), name="bad"),
            ),
        ],
        "bad",
    ),
    "tensor_as_variable": (
        lambda good: [good, (tf.constant([1.0, 2.0]), tf.constant([3.0, 4.0]))],
        "Tensor",
    ),
    "numpy_as_variable": (
        lambda good: [good, (tf.constant([1.0, 2.0]), np.array([3.0, 4.0], np.float32))],
        "ndarray",
    ),
    "tensor_instead_of_pair": (lambda good: [good, tf.constant([1.0, 2.0])], "pairs"),
    "variable_instead_of_pair": (lambda good: [good, tf.Variable([1.0, 2.0], name="bare")], "bare"),
    "triple_instead_of_pair": (
        lambda good: [good, (tf.constant([1.0]), tf.Variable([1.0], name="third"), 1)],
        "third",
    ),
    "all_gradients_none": (
        lambda good: [(None, good[1]), (None, tf.Variable([1.0], name="other"))],
        "other",
    ),
}


# tf_keras accepts these (the eager ResourceScatterAdd of SGD's and Adam's
# sparse paths does not check the row shape of a sparse gradient); keras_opt
# refuses them with its documented error.
TF_KERAS_ACCEPTS = {
    (name, "sparse_row_shape", "eager"): gradients_lib.InvalidGradientError
    for name in ("SGD", "Adam")
}


def _run(lib, opt_name, case, mode):
    """Returns (the exception raised, the good variable, the optimizer, values before)."""
    make = CASES[case][0]
    if mode == "tf1_graph":
        with tf.Graph().as_default():
            w, good = _good()
            opt = getattr(lib, opt_name)()
            try:
                op = opt.apply_gradients(make(good))
            except Exception as error:  # noqa: BLE001 - the error is what we compare
                return error, None, None, None
            # tf_keras may build the graph and fail only when it runs.
            with tf.compat.v1.Session() as sess:
                try:
                    sess.run(tf.compat.v1.global_variables_initializer())
                    sess.run(op)
                except Exception as error:  # noqa: BLE001
                    return error, None, None, None
            return None, None, None, None
    w, good = _good()
    opt = getattr(lib, opt_name)()
    if lib is keras_opt:
        opt.build([w])  # slots exist, so the check below covers them
    before = [v.numpy() for v in [w] + list(opt.weights)]
    pairs = make(good)

    def step():
        opt.apply_gradients(pairs)

    try:
        step() if mode == "eager" else tf.function(step)()
    except Exception as error:  # noqa: BLE001
        return error, w, opt, before
    return None, w, opt, before


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_matches_tf_keras_error_type(case, mode):
    for opt_name in OPTIMIZERS:
        expected, *_ = _run(tf_keras_legacy, opt_name, case, mode)
        if expected is None:
            assert (opt_name, case, mode) in TF_KERAS_ACCEPTS, (
                f"tf_keras {opt_name} accepted {case} in {mode}"
            )
            expected = TF_KERAS_ACCEPTS[(opt_name, case, mode)]("")
        error, w, opt, before = _run(keras_opt, opt_name, case, mode)
        assert error is not None, f"keras_opt {opt_name} accepted {case} in {mode}"
        assert isinstance(error, type(expected)), (
            f"{opt_name} {case} {mode}: keras_opt raised {type(error).__mro__}, tf_keras "
            f"raised {type(expected).__name__}: {expected}"
        )
        message = str(error)
        assert message and CASES[case][1] in message, message
        assert "StagingError" not in type(error).__name__
        if w is not None:  # eager and tf.function: nothing changed, not even the good variable
            after = [v.numpy() for v in [w] + list(opt.weights)]
            assert len(after) == len(before)
            for old, new in zip(before, after):
                np.testing.assert_array_equal(old, new)
            assert opt.iterations.numpy() == 0


def _keras_opt_error_classes():
    classes = []
    for _, value in inspect.getmembers(gradients_lib, inspect.isclass):
        if issubclass(value, Exception) and value.__module__ == gradients_lib.__name__:
            classes.append(value)
    return classes


@pytest.mark.parametrize("error_class", _keras_opt_error_classes(), ids=lambda c: c.__name__)
def test_every_keras_opt_error_keeps_its_type_inside_tf_function(error_class):
    # The root cause of item 1: AutoGraph re-creates an exception from its type
    # and falls back to StagingError when it cannot.
    @tf.function
    def raises():
        raise error_class("a message naming variable v:0")

    with pytest.raises(error_class, match="v:0") as info:
        raises()
    assert type(info.value) is error_class
    assert "in user code" in str(info.value)  # AutoGraph's trace was added


def test_error_classes_pickle_and_keep_message():
    import pickle

    for error_class in _keras_opt_error_classes():
        error = pickle.loads(pickle.dumps(error_class("msg about v:0")))
        assert type(error) is error_class and "v:0" in str(error)


# ------------------------------------------------- the rest of the API surface
def _sparse_with_constraint(lib):
    var = tf.Variable(tf.ones([2, 2]), name="constrained", constraint=lambda v: v)
    lib.SGD().apply_gradients([(tf.IndexedSlices(tf.ones([1, 2]), tf.constant([0])), var)])


def _cross_replica(lib):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        var = tf.Variable([1.0], name="mirrored")
        opt = lib.SGD()
    with strategy.scope():  # cross-replica context: not inside strategy.run
        opt.apply_gradients([(tf.constant([1.0]), var)])


def _set_iterations_late(lib):
    opt = lib.SGD()
    _ = opt.iterations
    opt.iterations = tf.Variable(0, dtype=tf.int64)


def _set_weights(lib, weights):
    var = tf.Variable([1.0, 2.0], name="w")
    opt = lib.SGD(momentum=0.9)
    opt.apply_gradients([(tf.constant([1.0, 1.0]), var)])
    opt.set_weights(weights)


def _library(lib):
    # keras_opt's package-level functions, or tf_keras's
    return keras_opt if lib is keras_opt else tf_keras_optimizers()


def tf_keras_optimizers():
    import tf_keras

    return tf_keras.optimizers


# name -> (function of the library, modes it is meaningful in)
API_CASES = {
    "unknown_constructor_kwarg": (lambda lib: lib.SGD(foo=1.0), ["eager"]),
    "negative_clipnorm": (lambda lib: lib.SGD(clipnorm=-1.0), ["eager"]),
    "clipnorm_and_global_clipnorm": (
        lambda lib: lib.SGD(clipnorm=1.0, global_clipnorm=1.0),
        ["eager"],
    ),
    "negative_decay": (lambda lib: lib.Adam(decay=-0.1), ["eager"]),
    "momentum_out_of_range": (lambda lib: lib.SGD(momentum=1.5), ["eager"]),
    "tensor_loss_without_tape": (
        lambda lib: lib.SGD().minimize(tf.constant(1.0), [tf.Variable(1.0)]),
        ["eager", "tf_function"],
    ),
    "set_weights_wrong_length": (lambda lib: _set_weights(lib, [np.int64(1)]), ["eager"]),
    "set_weights_wrong_shape": (
        lambda lib: _set_weights(lib, [np.int64(1), np.zeros(3, np.float32)]),
        ["eager"],
    ),
    "iterations_set_after_creation": (_set_iterations_late, ["eager"]),
    "constraint_with_sparse_gradient": (_sparse_with_constraint, ["eager", "tf_function"]),
    "apply_in_cross_replica_context": (_cross_replica, ["eager"]),
    "get_unknown_identifier": (lambda lib: _library(lib).get(123), ["eager"]),
    "deserialize_unknown_class": (
        lambda lib: _library(lib).deserialize({"class_name": "NoSuchOptimizer", "config": {}}),
        ["eager"],
    ),
}


# tf_keras raises nothing here: its deserialize returns the class name, the
# string "NoSuchOptimizer", in place of an optimizer. keras_opt raises ValueError.
API_TF_KERAS_ACCEPTS = {"deserialize_unknown_class": ValueError}


@pytest.mark.parametrize(
    "case, mode", [(case, mode) for case, (_, modes) in sorted(API_CASES.items()) for mode in modes]
)
def test_api_misuse_matches_tf_keras_error_type(case, mode):
    make, _ = API_CASES[case]
    errors = {}
    for key, lib in (("tf_keras", tf_keras_legacy), ("keras_opt", keras_opt)):

        def run(lib=lib):
            make(lib)

        try:
            run() if mode == "eager" else tf.function(run)()
        except Exception as error:  # noqa: BLE001 - the error is what we compare
            errors[key] = error
    if "tf_keras" not in errors and case in API_TF_KERAS_ACCEPTS:
        errors["tf_keras"] = API_TF_KERAS_ACCEPTS[case]("")
    assert set(errors) == {"tf_keras", "keras_opt"}, errors
    assert isinstance(errors["keras_opt"], type(errors["tf_keras"])), (
        f"keras_opt raised {type(errors['keras_opt']).__mro__}, tf_keras "
        f"{type(errors['tf_keras']).__name__}: {errors['tf_keras']}"
    )
    assert str(errors["keras_opt"])
