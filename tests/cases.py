"""The table of optimizer configurations that drives the cross-cutting tests."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

# (class name, constructor kwargs). Learning rates are raised from the defaults so
# that a few steps move the variables visibly.
CASES = [
    ("SGD", dict(learning_rate=0.1)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(learning_rate=0.1)),
    ("Adam", dict(learning_rate=0.1, amsgrad=True)),
    ("Adamax", dict(learning_rate=0.1)),
    ("Nadam", dict(learning_rate=0.1)),
    ("Adagrad", dict(learning_rate=0.1)),
    ("Adadelta", dict(learning_rate=1.0)),
    ("RMSprop", dict(learning_rate=0.1)),
    ("RMSprop", dict(learning_rate=0.1, momentum=0.5)),
    ("RMSprop", dict(learning_rate=0.1, centered=True)),
    ("RMSprop", dict(learning_rate=0.1, momentum=0.5, centered=True)),
    ("Ftrl", dict(learning_rate=0.1)),
    (
        "Ftrl",
        dict(
            learning_rate=0.1,
            learning_rate_power=-0.7,
            l1_regularization_strength=0.01,
            l2_regularization_strength=0.02,
            beta=0.1,
        ),
    ),
    ("Ftrl", dict(learning_rate=0.1, l2_shrinkage_regularization_strength=0.1)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9, decay=0.1)),
    ("Adam", dict(learning_rate=0.1, decay=0.1)),
]

NAMES = sorted({name for name, _ in CASES})

# The modern optimizers (Keras 3's, and TensorFlow Addons' LazyAdam): tf_keras has
# no twin for them, so they are not in CASES (which drives the tf_keras parity
# tests). The cross-cutting tests that need no twin run over CASES + MODERN_CASES.
# Muon trains the matrix of `initial_values` with its Newton-Schulz step and the
# vector with its AdamW step.
MODERN_CASES = [
    ("AdamW", dict(learning_rate=0.1)),
    ("AdamW", dict(learning_rate=0.1, weight_decay=0.05, amsgrad=True)),
    ("Lion", dict(learning_rate=0.1, weight_decay=0.05, use_ema=True, ema_momentum=0.9)),
    ("Lamb", dict(learning_rate=0.1, weight_decay=0.05)),
    ("Adafactor", dict(learning_rate=0.1)),
    ("Muon", dict(learning_rate=0.1)),
    ("LazyAdam", dict(learning_rate=0.1, amsgrad=True)),
]
MODERN_NAMES = sorted({name for name, _ in MODERN_CASES})


def case_id(case) -> str:
    name, kwargs = case
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items() if k != "learning_rate")


VAR_SHAPE = (5, 3)
STEPS = 4


def initial_values(dtype=np.float64):
    """Start values of the two variables every test trains: a matrix and a vector."""
    rng = np.random.default_rng(7)
    return (
        rng.uniform(-1, 1, VAR_SHAPE).astype(dtype),
        rng.uniform(-1, 1, VAR_SHAPE[1:]).astype(dtype),
    )


def gradient_stream(sparse: bool, dtype=np.float64):
    """STEPS steps of gradients: (matrix gradient, vector gradient).

    Sparse matrix gradients are (values, indices) with a repeated index.
    """
    rng = np.random.default_rng(11)
    out = []
    for step in range(STEPS):
        vec = rng.standard_normal(VAR_SHAPE[1:]).astype(dtype)
        if sparse:
            indices = np.array([step % 5, 3, (step + 2) % 5, 3], dtype=np.int64)
            values = rng.standard_normal((4,) + VAR_SHAPE[1:]).astype(dtype)
            out.append(((values, indices), vec))
        else:
            out.append((rng.standard_normal(VAR_SHAPE).astype(dtype), vec))
    return out


def to_tf_grad(grad, dtype):
    if isinstance(grad, tuple):
        values, indices = grad
        return tf.IndexedSlices(
            tf.constant(values, dtype=dtype),
            tf.constant(indices),
            dense_shape=tf.constant(VAR_SHAPE, dtype=tf.int64),
        )
    return tf.constant(grad, dtype=dtype)


def optimizer_state(opt, variables, by_position=False) -> dict:
    """Every value the optimizer and the model hold, by a library-independent key.

    Keys: ``iter``, each variable's name (or ``var<i>`` with ``by_position``) and
    ``<name>/<slot>`` for each of its slots.
    """
    out = {"iter": opt.iterations.numpy()}
    for i, var in enumerate(variables):
        name = f"var{i}" if by_position else var.name.split(":")[0]
        out[name] = var.numpy()
        for slot in opt.get_slot_names():
            if has_slot(opt, var, slot):  # Muon: "velocity" for some variables only
                out[f"{name}/{slot}"] = opt.get_slot(var, slot).numpy()
    return out


def has_slot(opt, var, slot: str) -> bool:
    """Whether ``opt`` (or the keras_opt optimizer inside a wrapper) has this slot for ``var``."""
    from keras_opt.optimizer_v2.variables import var_key

    while True:  # Keras adapters and loss-scale wrappers hold the optimizer with the slots
        opt = getattr(opt, "keras_opt_optimizer", opt)
        if getattr(opt, "inner_optimizer", None) is None:
            break
        opt = opt.inner_optimizer
    return slot in opt._slots.get(var_key(var), {})


def assert_same_state(got: dict, want: dict) -> None:
    """Same keys and bit-for-bit equal values."""
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
