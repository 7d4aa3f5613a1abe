"""Optimizers driven by learning-rate schedules follow tf_keras legacy step for step."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tf_keras.optimizers import legacy as tf_keras_legacy

import keras_opt

SCHEDULES = {
    "exponential_staircase": (
        "ExponentialDecay",
        dict(initial_learning_rate=0.1, decay_steps=2, decay_rate=0.5, staircase=True),
    ),
    "piecewise": ("PiecewiseConstantDecay", dict(boundaries=[1, 3], values=[0.1, 0.05, 0.01])),
    # Ftrl's kernels need lr > 0: the warmup starts above 0.
    "cosine_warmup": (
        "CosineDecay",
        dict(initial_learning_rate=0.01, decay_steps=4, warmup_target=0.1, warmup_steps=2),
    ),
    "polynomial_cycle": (
        "PolynomialDecay",
        dict(initial_learning_rate=0.1, decay_steps=2, cycle=True),
    ),
}
OPTIMIZERS = [
    ("SGD", dict(momentum=0.9)),
    ("Adam", {}),
    ("Adagrad", {}),
    ("RMSprop", dict(momentum=0.5)),
    ("Ftrl", {}),
    ("SGD", dict(decay=0.5)),  # legacy decay composes with the schedule
]


def trajectory(lib, schedule_lib, opt_case, schedule_case, sparse):
    name, kwargs = opt_case
    cls_name, schedule_kwargs = schedule_case
    schedule = getattr(schedule_lib, cls_name)(**schedule_kwargs)
    opt = getattr(lib, name)(learning_rate=schedule, **kwargs)
    var = tf.Variable(np.linspace(-1.0, 1.0, 6).reshape(3, 2).astype(np.float32))

    @tf.function
    def step(grad):
        opt.apply_gradients([(grad, var)])

    values = []
    rng = np.random.default_rng(5)
    for _ in range(6):
        g = rng.standard_normal((3, 2)).astype(np.float32)
        step(
            tf.IndexedSlices(tf.constant(g[:2]), tf.constant([2, 0])) if sparse else tf.constant(g)
        )
        values.append(var.numpy().copy())
    return opt, values


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
@pytest.mark.parametrize("opt_case", OPTIMIZERS, ids=lambda c: c[0] + "".join(c[1]))
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_schedule_trajectory_matches_tf_keras(schedule, opt_case, sparse):
    ours, our_values = trajectory(
        keras_opt, keras_opt.schedules, opt_case, SCHEDULES[schedule], sparse
    )
    theirs, their_values = trajectory(
        tf_keras_legacy, tf_keras.optimizers.schedules, opt_case, SCHEDULES[schedule], sparse
    )
    for step, (a, b) in enumerate(zip(our_values, their_values)):
        np.testing.assert_array_equal(a, b, err_msg=f"step {step}")
    assert ours.get_config() == theirs.get_config()
    clone = keras_opt.deserialize(keras_opt.serialize(ours))
    assert isinstance(clone.learning_rate, getattr(keras_opt.schedules, SCHEDULES[schedule][0]))
    assert clone.get_config() == ours.get_config()


def test_foreign_tf_keras_schedule_is_accepted_and_serialized():
    schedule = tf_keras.optimizers.schedules.ExponentialDecay(0.1, 2, 0.5)
    _, ours = trajectory(
        keras_opt,
        tf_keras.optimizers.schedules,
        OPTIMIZERS[1],
        ("ExponentialDecay", schedule.get_config()),
        False,
    )
    _, theirs = trajectory(
        tf_keras_legacy,
        tf_keras.optimizers.schedules,
        OPTIMIZERS[1],
        ("ExponentialDecay", schedule.get_config()),
        False,
    )
    np.testing.assert_array_equal(ours[-1], theirs[-1])
    config = keras_opt.Adam(learning_rate=schedule).get_config()
    assert (
        config["learning_rate"]
        == tf_keras_legacy.Adam(learning_rate=schedule).get_config()["learning_rate"]
    )
    assert isinstance(
        keras_opt.Adam.from_config(config).learning_rate, keras_opt.schedules.ExponentialDecay
    )


def test_nadam_refuses_a_schedule_like_tf_keras():
    with pytest.raises(ValueError, match="schedule"):
        keras_opt.Nadam(learning_rate=keras_opt.schedules.ExponentialDecay(0.1, 2, 0.5))
