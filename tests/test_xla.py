"""Every optimizer under ``tf.function(jit_compile=True)`` (what Keras's ``fit`` does).

Some fused kernels have no XLA kernel (``ResourceApplyAdamWithAmsgrad`` and the
sparse KerasMomentum, AdagradV2, Adadelta, RMSProp, CenteredRMSProp, Ftrl and
FtrlV2 kernels); inside XLA the optimizers emit the plain-op twins of
``keras_opt.optimizer_v2.xla_fallbacks`` instead. For every configuration of the
optimizer table (plus NonFusedAdam), dense and sparse (``IndexedSlices`` with a
repeated index), float32 and float64, a few steps compiled by XLA are compared
with the same steps in a plain ``tf.function`` -- the raw kernels, bit-identical
to tf_keras (tests/test_parity.py) -- so XLA training equals tf_keras training
to float rounding.

Why not bit for bit: XLA fuses each update into one kernel and may reassociate
and contract (FMA) the arithmetic, and its own kernels for the ops it does
support (e.g. ``ResourceApplyKerasMomentum``) are XLA's formulas, not Eigen's.
Each value must agree within ``_ULPS`` units of rounding of its array's scale::

    |xla - ref| <= _ULPS * eps * (|ref| + max|ref|)

The array-scale term covers entries that are a cancellation of larger terms
(momentum, FTRL's ``linear``). Measured on CPU over every case here (4 steps):
the largest error is 2.4 such units in float32 and 2.75 in float64; ``_ULPS = 32``
leaves a wide margin while a wrong formula (errors of order 1e-2) still fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import keras_opt
from keras_opt.optimizer_v2 import xla

from cases import (
    CASES,
    MODERN_CASES,
    case_id,
    gradient_stream,
    initial_values,
    optimizer_state,
    to_tf_grad,
)

XLA_CASES = CASES + [
    ("NonFusedAdam", dict(learning_rate=0.1)),
    ("NonFusedAdam", dict(learning_rate=0.1, amsgrad=True)),
]

_ULPS = 32


def raw_kernels_without_xla(name: str, kwargs: dict, sparse: bool) -> set:
    """The raw ops this configuration runs outside XLA that XLA cannot compile."""
    ops = set()
    if name == "Adam" and kwargs.get("amsgrad"):  # the vector's gradient is dense
        ops.add("ResourceApplyAdamWithAmsgrad")
    if not sparse:
        return ops
    if name == "SGD" and kwargs.get("momentum"):
        ops.add("ResourceSparseApplyKerasMomentum")
    elif name == "Adagrad":
        ops.add("ResourceSparseApplyAdagradV2")
    elif name == "Adadelta":
        ops.add("ResourceSparseApplyAdadelta")
    elif name == "RMSprop" and kwargs.get("momentum"):
        centered = kwargs.get("centered")
        ops.add("ResourceSparseApplyCenteredRMSProp" if centered else "ResourceSparseApplyRMSProp")
    elif name == "Ftrl":
        shrinkage = kwargs.get("l2_shrinkage_regularization_strength")
        ops.add("ResourceSparseApplyFtrlV2" if shrinkage else "ResourceSparseApplyFtrl")
    return ops


def op_types(concrete_function) -> set:
    """Op types of a traced function, its nested functions included."""
    graph_def = concrete_function.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for function in graph_def.library.function:
        types |= {node.op for node in function.node_def}
    return types


def train(name, kwargs, sparse, dtype, jit_compile, wrap=None):
    """Runs the gradient stream through one traced step; returns (state, weights, op types).

    The reference is the per-variable raw kernels (tf_keras's): the fused
    multi-variable ops, which equal them bit for bit (tests/test_fused.py), are
    switched off so that the traced ops can be checked.
    """
    opt = getattr(keras_opt, name)(fused_kernels=False, **kwargs)
    if wrap is not None:
        opt = wrap(opt)
    w0, b0 = initial_values(dtype.as_numpy_dtype)
    variables = [tf.Variable(w0, name="w"), tf.Variable(b0, name="b")]

    @tf.function(jit_compile=jit_compile)
    def step(grad_w, grad_b):
        opt.apply_gradients(zip([grad_w, grad_b], variables))

    traces = []
    for grad_w, grad_b in gradient_stream(sparse, dtype.as_numpy_dtype):
        args = (to_tf_grad(grad_w, dtype), tf.constant(grad_b, dtype=dtype))
        step(*args)
        traces.append(step.experimental_get_tracing_count())
    # The first call traces (twice: it creates the slots); later steps reuse it.
    assert traces[1:] == traces[:1] * (len(traces) - 1)
    traced = op_types(step.get_concrete_function(*args))
    return optimizer_state(opt, variables, by_position=True), opt.get_weights(), traced


def assert_close(got, want, key):
    got, want = np.asarray(got), np.asarray(want)
    if not np.issubdtype(want.dtype, np.floating):  # the iteration counter
        np.testing.assert_array_equal(got, want, err_msg=key)
        return
    eps = np.finfo(want.dtype).eps
    scale = np.max(np.abs(want)) if want.size else 0.0
    denominator = np.maximum(eps * (np.abs(want) + scale), np.finfo(want.dtype).tiny)
    units = float(np.max(np.abs(got - want) / denominator, initial=0.0))
    assert units <= _ULPS, (
        f"{key}: XLA differs from the raw kernels by {units:.3g} units of rounding "
        f"(allowed {_ULPS})"
    )


@pytest.mark.parametrize("case", XLA_CASES, ids=case_id)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64], ids=["float32", "float64"])
def test_xla_matches_raw_kernels(case, sparse, dtype):
    name, kwargs = case
    got, got_weights, xla_ops = train(name, kwargs, sparse, dtype, jit_compile=True)
    want, want_weights, plain_ops = train(name, kwargs, sparse, dtype, jit_compile=False)

    assert sorted(got) == sorted(want)  # the same slots
    assert got["iter"] == want["iter"] == len(gradient_stream(sparse))
    for key in set(want) - {"iter"}:
        assert got[key].dtype == want[key].dtype == dtype.as_numpy_dtype, key
        assert_close(got[key], want[key], key)
    assert len(got_weights) == len(want_weights)  # every weight (e.g. Nadam's momentum_cache)
    for i, (a, b) in enumerate(zip(got_weights, want_weights)):
        assert_close(a, b, f"weight {i}")
    # Training moved the variables: the comparison is not between two no-ops.
    assert not np.allclose(want["var0"], initial_values(dtype.as_numpy_dtype)[0])

    # Outside XLA the raw kernels still run (parity with tf_keras unchanged);
    # inside XLA the ones it cannot compile are replaced by plain ops.
    fallbacks = raw_kernels_without_xla(name, kwargs, sparse)
    assert fallbacks <= plain_ops, (fallbacks, plain_ops)
    assert not fallbacks & xla_ops, fallbacks & xla_ops
    if sparse and fallbacks - {"ResourceApplyAdamWithAmsgrad"}:
        assert {"ResourceGather", "ResourceScatterUpdate"} <= xla_ops


# The modern optimizers and every base-feature stage at once (weight decay, EMA,
# accumulation's tf.cond, loss_scale_factor, global clipping) under XLA.
STAGE_CASES = MODERN_CASES + [
    (
        "Adam",
        dict(learning_rate=0.1, weight_decay=0.05, use_ema=True, gradient_accumulation_steps=2,
             loss_scale_factor=2.0, global_clipnorm=1.0),
    ),
    ("Ftrl", dict(learning_rate=0.1, weight_decay=0.05, gradient_accumulation_steps=2)),
]  # fmt: skip


@pytest.mark.parametrize("case", STAGE_CASES, ids=case_id)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_xla_modern_optimizers_and_base_features(case, sparse):
    name, kwargs = case
    got, _, _ = train(name, kwargs, sparse, tf.float32, jit_compile=True)
    want, _, _ = train(name, kwargs, sparse, tf.float32, jit_compile=False)
    assert sorted(got) == sorted(want)
    assert got.pop("iter") == want.pop("iter")
    for key in want:
        assert_close(got[key], want[key], key)
    assert not np.allclose(want["var0"], initial_values(np.float32)[0])


FALLBACK_CASES = [
    (case, sparse)
    for case in XLA_CASES
    for sparse in (False, True)
    if case[0] != "NonFusedAdam" and raw_kernels_without_xla(*case, sparse)
]


@pytest.mark.parametrize(
    "case,sparse",
    FALLBACK_CASES,
    ids=[case_id(c) + ("-sparse" if s else "-dense") for c, s in FALLBACK_CASES],
)
def test_raw_kernels_do_not_compile_without_fallback(case, sparse, monkeypatch):
    """Measures the need: with the XLA test switched off, XLA rejects the raw kernel.

    If a TensorFlow release adds the XLA kernel, this fails and the fallback
    for that kernel can be dropped.
    """
    monkeypatch.setattr(xla, "in_xla_context", lambda: False)
    name, kwargs = case
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        train(name, kwargs, sparse, tf.float32, jit_compile=True)
    assert any(op in str(info.value) for op in raw_kernels_without_xla(name, kwargs, sparse))


@pytest.mark.parametrize(
    "case",
    [("Adagrad", dict(learning_rate=0.1)), ("Adam", dict(learning_rate=0.1, amsgrad=True))],
    ids=case_id,
)
def test_xla_inside_loss_scale_optimizer(case):
    """The inner update runs in a cond branch of the loss-scale wrapper: still XLA context."""
    name, kwargs = case
    got, _, xla_ops = train(
        name, kwargs, True, tf.float32, jit_compile=True, wrap=keras_opt.LossScaleOptimizer
    )
    want, _, plain_ops = train(
        name, kwargs, True, tf.float32, jit_compile=False, wrap=keras_opt.LossScaleOptimizer
    )
    assert sorted(got) == sorted(want)
    assert got.pop("iter") == want.pop("iter")
    for key in want:
        assert_close(got[key], want[key], key)
    fallbacks = raw_kernels_without_xla(name, kwargs, True)
    assert fallbacks <= plain_ops and not fallbacks & xla_ops


def test_nested_function_under_jit_uses_fallback():
    """A plain tf.function called from a jit-compiled one is compiled by XLA too."""
    opt = keras_opt.SGD(0.1, momentum=0.9)
    var = tf.Variable(np.ones((4, 2), np.float32))
    grad = tf.IndexedSlices(tf.ones((2, 2)), tf.constant([0, 2]), tf.constant([4, 2]))

    @tf.function
    def inner():
        opt.apply_gradients([(grad, var)])

    @tf.function(jit_compile=True)
    def outer():
        inner()

    outer()
    outer()
    # v1 = -0.1, v2 = 0.9 * v1 - 0.1 = -0.19; rows 0 and 2 moved by v1 + v2.
    expected = np.ones((4, 2), np.float32)
    expected[[0, 2]] += np.float32(-0.1) + np.float32(-0.19)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-6)
