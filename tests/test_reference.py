"""keras_opt in float64 against the numpy reference of tests/reference.py.

The reference is written from each optimizer's published update rule, so this
checks the math itself, independently of tf_keras (dense and sparse, eager).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras_opt

import reference
from cases import CASES, case_id, gradient_stream, initial_values, to_tf_grad


def dedup(values, indices):
    rows, inverse = np.unique(indices, return_inverse=True)
    summed = np.zeros((len(rows),) + values.shape[1:])
    np.add.at(summed, inverse, values)
    return rows, summed


@pytest.mark.parametrize("case", CASES, ids=case_id)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_matches_numpy_reference(case, sparse):
    name, kwargs = case
    cfg = reference.full_config(name, kwargs)
    opt = getattr(keras_opt, name)(**kwargs)
    w0, b0 = initial_values()
    w, b = tf.Variable(w0, name="w"), tf.Variable(b0, name="b")
    states = [reference.initial_state(name, cfg, w0), reference.initial_state(name, cfg, b0)]
    for t, (grad_w, grad_b) in enumerate(gradient_stream(sparse), start=1):
        opt.apply_gradients([(to_tf_grad(grad_w, tf.float64), w), (tf.constant(grad_b), b)])
        if name == "Nadam":  # one momentum cache shared by all variables, updated once a step
            states[1]["momentum_cache"] = states[0]["momentum_cache"]
        if sparse:
            rows, summed = dedup(*grad_w)
            states[0] = reference.sparse_step(name, states[0], rows, summed, t, cfg)
        else:
            states[0] = reference.dense_step(name, states[0], grad_w, t, cfg)
        cache_after_w = states[0].get("momentum_cache")
        states[1] = reference.dense_step(name, states[1], grad_b, t, cfg)
        if name == "Nadam":
            states[1]["momentum_cache"] = cache_after_w
    for var, state in zip([w, b], states):
        np.testing.assert_allclose(var.numpy(), state["var"], rtol=1e-10, atol=1e-12)
        for slot in opt.get_slot_names():
            np.testing.assert_allclose(
                opt.get_slot(var, slot).numpy(),
                state[slot],
                rtol=1e-10,
                atol=1e-12,
                err_msg=f"slot {slot} of {var.name}",
            )
    if name == "Nadam":
        np.testing.assert_allclose(opt._m_cache.numpy(), states[0]["momentum_cache"], rtol=1e-12)
