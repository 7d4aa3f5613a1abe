"""keras_opt against tf_keras legacy, side by side, from identical start values.

Every configuration of the optimizer table, dense and sparse (IndexedSlices with
a repeated index), eager and tf.function, float32 and float64 (float16 and
bfloat16 dense): variables, every optimizer weight (values and names),
get_config, slot names and iterations must be equal. The same raw ops run in
both libraries, so equality is exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from tf_keras.optimizers import legacy as tf_keras_legacy

import keras_opt

from cases import CASES, case_id, gradient_stream, initial_values, to_tf_grad


def train(lib, name, kwargs, sparse, mode, dtype):
    opt = getattr(lib, name)(**kwargs)
    w0, b0 = initial_values()
    w = tf.Variable(w0.astype(dtype.as_numpy_dtype), name="w")
    b = tf.Variable(b0.astype(dtype.as_numpy_dtype), name="b")

    def step(grad_w, grad_b):
        opt.apply_gradients([(grad_w, w), (grad_b, b)])

    if mode == "function":
        step = tf.function(step)
    for grad_w, grad_b in gradient_stream(sparse):
        step(to_tf_grad(grad_w, dtype), tf.constant(grad_b, dtype=dtype))
    return opt, [w, b]


def assert_same_training(name, kwargs, sparse, mode, dtype):
    ours, our_vars = train(keras_opt, name, kwargs, sparse, mode, dtype)
    theirs, their_vars = train(tf_keras_legacy, name, kwargs, sparse, mode, dtype)
    for a, b in zip(our_vars, their_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"variable {a.name}")
    assert [w.name for w in ours.weights] == [w.name for w in theirs.weights]
    for a, b in zip(ours.get_weights(), theirs.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert ours.get_slot_names() == theirs.get_slot_names()
    assert ours.get_config() == theirs.get_config()
    assert int(ours.iterations.numpy()) == int(theirs.iterations.numpy())
    # The variables actually moved: the comparison is not between two no-ops.
    assert not np.array_equal(
        our_vars[0].numpy(), initial_values()[0].astype(our_vars[0].dtype.as_numpy_dtype)
    )


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
def test_matches_tf_keras(case, sparse, mode, dtype):
    name, kwargs = case
    assert_same_training(name, kwargs, sparse, mode, dtype)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_tf_keras_float16(case):
    name, kwargs = case
    assert_same_training(name, kwargs, sparse=False, mode="eager", dtype=tf.float16)


# TF has no CPU bfloat16 kernel for AdaMax (tf_keras raises). In bfloat16 the
# default beta_2 = 0.999 rounds to 1.0, so 1 - beta_2**t = 0: Adam's step is 0 and
# Nadam divides by 0 (in tf_keras and here alike); those cases use beta_2 = 0.99.
NO_BFLOAT16_KERNEL = ("Adamax",)
BFLOAT16_PARITY = [
    (name, dict(kwargs, beta_2=0.99) if name in ("Adam", "Nadam") else kwargs)
    for name, kwargs in CASES
    if name not in NO_BFLOAT16_KERNEL
]


@pytest.mark.parametrize("case", BFLOAT16_PARITY, ids=case_id)
def test_matches_tf_keras_bfloat16(case):
    name, kwargs = case
    assert_same_training(name, kwargs, sparse=False, mode="eager", dtype=tf.bfloat16)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in NO_BFLOAT16_KERNEL], ids=case_id)
def test_bfloat16_where_tf_has_no_kernel(case):
    """keras_opt trains bfloat16 Adamax with plain ops where tf_keras cannot."""
    name, kwargs = case
    with pytest.raises(tf.errors.InvalidArgumentError, match="No OpKernel"):
        train(tf_keras_legacy, name, kwargs, False, "eager", tf.bfloat16)
    _, ours = train(keras_opt, name, kwargs, False, "eager", tf.bfloat16)
    _, exact = train(keras_opt, name, kwargs, False, "eager", tf.float64)
    for a, b in zip(ours, exact):
        # bfloat16 keeps 8 significant bits: a relative rounding of 2**-8 per operation.
        np.testing.assert_allclose(a.numpy().astype(np.float64), b.numpy(), atol=0.05)
