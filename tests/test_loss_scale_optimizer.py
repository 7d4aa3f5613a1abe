"""keras_opt.mixed_precision.LossScaleOptimizer against tf_keras's legacy one, side by side.

Both wrappers train the same variables from the same start values on the same
gradients (a tape loop: get_scaled_loss, get_unscaled_gradients,
apply_gradients). At chosen steps a gradient holds an inf, -inf or NaN. After
every step the loss scale, the counter, ``iterations``, the variables and every
optimizer weight (slots included) must be equal, bit for bit: both libraries
run the same ops. Independently of tf_keras, the loss-scale trajectory is
checked against the documented rule (``expected_trajectory``), and skipped
steps must leave the variables untouched.

MirroredStrategy runs in a subprocess worker (tests/workers/lso_mirrored.py):
logical CPU devices must be configured before TensorFlow initializes.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import tempfile

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tf_keras.optimizers import legacy as tf_keras_legacy
from tf_keras.src.mixed_precision.loss_scale_optimizer import (
    LossScaleOptimizer as TfKerasLSO,
)

import keras_opt
from keras_opt.mixed_precision import loss_scale_optimizer as lso_module

import dist_utils
from cases import MODERN_CASES, case_id

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
LIBS = {
    "keras_opt": (keras_opt, keras_opt.LossScaleOptimizer),
    "tf_keras": (tf_keras_legacy, TfKerasLSO),
}

STEPS = 20
GROWTH = 3
ROWS, COLS = 5, 3
SPARSE_IDS = np.array([1, 4, 1, 0], dtype=np.int64)  # row 1 twice
# step -> (which variable's gradient is poisoned, with what)
INJECT = {3: ("w", np.inf), 4: ("b", np.nan), 9: ("w", -np.inf), 15: ("b", np.inf)}
INNER = [
    ("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(learning_rate=0.1)),
    ("Nadam", dict(learning_rate=0.1)),
    ("Adagrad", dict(learning_rate=0.1)),
    ("Ftrl", dict(learning_rate=0.1, l1_regularization_strength=0.01)),
]


def inner_id(case) -> str:
    return case[0] + ("-momentum" if case[1].get("momentum") else "")


def expected_trajectory(finite_steps, initial_scale, growth_steps):
    """(scale, counter) after each step, from the rule the docs state.

    Finite step: counter + 1; when that reaches ``growth_steps`` the scale
    doubles (if the result is finite in float32) and the counter restarts at 0.
    Non-finite step: scale halves, never below 1; counter 0.
    """
    scale, counter, out = np.float32(initial_scale), 0, []
    for finite in finite_steps:
        if not finite:
            scale, counter = max(scale / np.float32(2), np.float32(1)), 0
        elif counter + 1 >= growth_steps:
            with np.errstate(over="ignore"):
                doubled = scale * np.float32(2)
            scale, counter = (doubled if np.isfinite(doubled) else scale), 0
        else:
            counter += 1
        out.append((float(scale), counter))
    return out


def start_values(dtype):
    rng = np.random.default_rng(3)
    np_dtype = dtype.as_numpy_dtype
    return (
        rng.uniform(-1, 1, (ROWS, COLS)).astype(np.float32).astype(np_dtype),
        rng.uniform(-1, 1, (COLS,)).astype(np.float32).astype(np_dtype),
    )


def gradient_feed(sparse, steps=STEPS, inject=INJECT):
    """Per step (gradient of the matrix or of its SPARSE_IDS rows, gradient of the vector)."""
    rng = np.random.default_rng(5)
    feed = []
    for step in range(steps):
        gw = rng.standard_normal((len(SPARSE_IDS) if sparse else ROWS, COLS)).astype(np.float32)
        gb = rng.standard_normal((COLS,)).astype(np.float32)
        if step in inject:
            target, value = inject[step]
            (gw if target == "w" else gb).flat[1] = value
        feed.append((gw * 0.5, gb * 0.5))
    return feed


class Trainer:
    """One LossScaleOptimizer of one library training ``w`` (matrix) and ``b`` (vector).

    The loss is ``sum(w_rows * gw) + sum(b * gb)``, whose gradients are exactly
    the fed ``gw`` (as IndexedSlices when sparse) and ``gb``.
    """

    def __init__(
        self,
        lib,
        inner=("Adam", dict(learning_rate=0.1)),
        *,
        sparse=False,
        mode="eager",
        dtype=tf.float32,
        lso_kwargs=None,
        feed=None,
    ):
        optimizers, lso_class = LIBS[lib]
        lso_kwargs = dict(dynamic_growth_steps=GROWTH) if lso_kwargs is None else lso_kwargs
        self.opt = lso_class(getattr(optimizers, inner[0])(**inner[1]), **lso_kwargs)
        w0, b0 = start_values(dtype)
        self.w = tf.Variable(w0, name="w")
        self.b = tf.Variable(b0, name="b")
        self.sparse, self.dtype = sparse, dtype
        self.feed = gradient_feed(sparse) if feed is None else feed
        self._step = tf.function(self._train_step) if mode == "function" else self._train_step

    def _train_step(self, gw, gb):
        with tf.GradientTape() as tape:
            rows = tf.gather(self.w, SPARSE_IDS) if self.sparse else self.w
            loss = tf.reduce_sum(rows * gw) + tf.reduce_sum(self.b * gb)
            scaled_loss = self.opt.get_scaled_loss(loss)
        grads = self.opt.get_unscaled_gradients(tape.gradient(scaled_loss, [self.w, self.b]))
        self.opt.apply_gradients(zip(grads, [self.w, self.b]))
        values = [g.values if isinstance(g, tf.IndexedSlices) else g for g in grads]
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in values])

    def step(self, index: int) -> bool:
        gw, gb = self.feed[index]
        return bool(self._step(tf.constant(gw, self.dtype), tf.constant(gb, self.dtype)))

    def snapshot(self) -> dict:
        counter = self.opt.dynamic_counter
        return dict(
            loss_scale=float(self.opt.loss_scale),
            counter=None if counter is None else int(counter.numpy()),
            iterations=int(self.opt.iterations.numpy()),
            w=self.w.numpy().copy(),
            b=self.b.numpy().copy(),
            weight_names=[v.name for v in self.opt.weights],
            weights=[np.array(v) for v in self.opt.get_weights()],
        )


def assert_same_state(ours: dict, theirs: dict, where: str) -> None:
    for key in ("loss_scale", "counter", "iterations", "weight_names"):
        assert ours[key] == theirs[key], f"{where}: {key} {ours[key]} != {theirs[key]}"
    for key in ("w", "b"):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{where}: {key}")
    assert len(ours["weights"]) == len(theirs["weights"]), where
    for name, a, b in zip(ours["weight_names"], ours["weights"], theirs["weights"]):
        np.testing.assert_array_equal(a, b, err_msg=f"{where}: {name}")


def run_side_by_side(steps=STEPS, **kwargs):
    """Trains both libraries step by step, comparing after each step.

    Returns the keras_opt trainer, the per-step finiteness of the fed
    gradients and the per-step snapshots.
    """
    ours, theirs = Trainer("keras_opt", **kwargs), Trainer("tf_keras", **kwargs)
    finite, snapshots = [], []
    for i in range(steps):
        ok = ours.step(i)
        assert theirs.step(i) == ok, f"step {i}: the fed gradients differ in finiteness"
        snap = ours.snapshot()
        assert_same_state(snap, theirs.snapshot(), f"step {i}")
        finite.append(ok)
        snapshots.append(snap)
        if i == 0 and isinstance(ours._step, tf.types.experimental.PolymorphicFunction):
            traces_after_first_step = ours._step.experimental_get_tracing_count()
    if isinstance(ours._step, tf.types.experimental.PolymorphicFunction):
        # The first call creates variables, after which tf.function traces once more
        # (tf_keras alike); later steps must reuse the trace.
        assert ours._step.experimental_get_tracing_count() == traces_after_first_step
        assert traces_after_first_step == theirs._step.experimental_get_tracing_count()
    return ours, finite, snapshots


def assert_follows_rule(opt, finite, snapshots, initial_scale=2.0**15, growth=GROWTH):
    expected = expected_trajectory(finite, initial_scale, growth)
    got = [(s["loss_scale"], s["counter"]) for s in snapshots]
    assert got == expected
    previous = None
    for i, (ok, snap) in enumerate(zip(finite, snapshots)):
        assert snap["iterations"] == i + 1, "skipped steps count in iterations too"
        if previous is not None and not ok:
            np.testing.assert_array_equal(snap["w"], previous["w"], err_msg=f"skipped step {i}")
            np.testing.assert_array_equal(snap["b"], previous["b"], err_msg=f"skipped step {i}")
            for a, b in zip(snap["weights"][1:], previous["weights"][1:]):
                np.testing.assert_array_equal(a, b, err_msg=f"slots on skipped step {i}")
        previous = snap


# ------------------------------------------------------------ single device
# Every inner optimizer eagerly; two of them (one with, one without slots whose
# update reads the step count) also inside a tf.function, where both cond branches
# are traced and the slots are created in the graph.
DYNAMIC_CASES = [(inner, "eager") for inner in INNER] + [
    (inner, "function") for inner in INNER if inner[0] in ("SGD", "Adam")
]


@pytest.mark.parametrize(
    "inner, mode", DYNAMIC_CASES, ids=[f"{inner_id(i)}-{m}" for i, m in DYNAMIC_CASES]
)
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_dynamic_scale_matches_tf_keras(inner, mode, sparse):
    ours, finite, snapshots = run_side_by_side(inner=inner, sparse=sparse, mode=mode)
    assert [i for i, ok in enumerate(finite) if not ok] == sorted(INJECT)
    assert_follows_rule(ours.opt, finite, snapshots)
    scales = [s["loss_scale"] for s in snapshots]
    assert max(scales) > 2.0**15 and min(scales) < 2.0**15, "both growth and shrinking happen"
    assert np.all(np.isfinite(snapshots[-1]["w"])) and np.all(np.isfinite(snapshots[-1]["b"]))


# The modern optimizers have no tf_keras twin. Oracle: the bare optimizer fed the
# fed gradients on the finite steps, and only its step count advanced on the
# skipped ones (the wrapper counts skipped steps in `iterations` too). The loss
# scale is a power of two, so scaling and unscaling are exact: bit for bit.
MODERN_LSO = [(inner, sparse, "eager") for inner in MODERN_CASES for sparse in (False, True)] + [
    (inner, True, "function") for inner in MODERN_CASES if inner[0] in ("AdamW", "Muon", "Lion")
]


@pytest.mark.parametrize(
    "inner, sparse, mode",
    MODERN_LSO,
    ids=[f"{case_id(i)}-{'sparse' if s else 'dense'}-{m}" for i, s, m in MODERN_LSO],
)
def test_wraps_modern_optimizers(inner, sparse, mode):
    ours = Trainer("keras_opt", inner=inner, sparse=sparse, mode=mode)
    bare = getattr(keras_opt, inner[0])(**inner[1])
    w, b = (tf.Variable(v, name=n) for v, n in zip(start_values(tf.float32), "wb"))

    def bare_step(gw, gb):
        if sparse:
            gw = tf.IndexedSlices(gw, tf.constant(SPARSE_IDS), tf.constant([ROWS, COLS], tf.int64))
        bare.apply_gradients([(gw, w), (gb, b)])

    bare_step = tf.function(bare_step) if mode == "function" else bare_step
    finite, snapshots = [], []
    for i in range(STEPS):
        finite.append(ours.step(i))
        snapshots.append(ours.snapshot())
        if finite[-1]:
            bare_step(*(tf.constant(g) for g in ours.feed[i]))
        else:
            bare.iterations.assign_add(1)
        np.testing.assert_array_equal(ours.w.numpy(), w.numpy(), err_msg=f"w after step {i}")
        np.testing.assert_array_equal(ours.b.numpy(), b.numpy(), err_msg=f"b after step {i}")
    assert [i for i, ok in enumerate(finite) if not ok] == sorted(INJECT)
    assert_follows_rule(ours.opt, finite, snapshots)
    inner_weights = ours.opt.inner_optimizer.get_weights()
    assert len(inner_weights) == len(bare.get_weights()) > 1
    for a, c in zip(inner_weights, bare.get_weights()):
        np.testing.assert_array_equal(a, c)


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_half_precision_variables_match_tf_keras(dtype, sparse):
    inner = ("SGD", dict(learning_rate=0.1, momentum=0.5))
    # Gradients up to ~6: times 2**15 they exceed float16's 65504 (not bfloat16's range).
    feed = [(gw * 4, gb * 4) for gw, gb in gradient_feed(sparse)]
    ours, finite, snapshots = run_side_by_side(inner=inner, sparse=sparse, dtype=dtype, feed=feed)
    assert_follows_rule(ours.opt, finite, snapshots)
    assert ours.opt.get_slot(ours.w, "momentum").dtype == dtype
    skipped = [i for i, ok in enumerate(finite) if not ok]
    if dtype == tf.float16:
        # Finite-by-design gradients overflowed after scaling: skipped as well.
        assert set(INJECT) < set(skipped)
    else:
        assert skipped == sorted(INJECT)


@pytest.mark.parametrize(
    "lso_kwargs, inject",
    [
        # Doubling 2**127 gives inf in float32: the scale must stay (counter resets).
        (dict(initial_scale=2.0**127, dynamic_growth_steps=1), {}),
        # Halving stops at 1.
        (dict(initial_scale=4.0, dynamic_growth_steps=5), {i: ("b", np.inf) for i in range(4)}),
    ],
    ids=["no-growth-to-inf", "floor-at-one"],
)
def test_scale_limits_match_tf_keras(lso_kwargs, inject):
    feed = gradient_feed(False, steps=6, inject=inject)
    ours, finite, snapshots = run_side_by_side(steps=6, lso_kwargs=lso_kwargs, feed=feed)
    assert_follows_rule(
        ours.opt, finite, snapshots, lso_kwargs["initial_scale"], lso_kwargs["dynamic_growth_steps"]
    )
    limit = 2.0**127 if inject == {} else 1.0
    assert snapshots[3]["loss_scale"] == limit


def test_fixed_scale_matches_tf_keras():
    """dynamic=False: the scale never changes and no step is skipped, not even a NaN one."""
    lso_kwargs = dict(dynamic=False, initial_scale=128)
    ours, finite, snapshots = run_side_by_side(lso_kwargs=lso_kwargs, inner=INNER[0])
    assert ours.opt.dynamic_counter is None and ours.opt.dynamic_growth_steps is None
    assert {s["loss_scale"] for s in snapshots} == {128.0}
    assert [s["iterations"] for s in snapshots] == list(range(1, STEPS + 1))
    assert not np.all(np.isfinite(snapshots[3]["w"])), "the inf step was applied, as in tf_keras"


def test_minimize_float16_overflow_matches_tf_keras():
    """minimize scales by itself: float16 gradients overflow at 2**15 until the scale drops."""
    results = {}
    for lib, (optimizers, lso_class) in LIBS.items():
        opt = lso_class(optimizers.SGD(learning_rate=0.01), dynamic_growth_steps=GROWTH)
        var = tf.Variable(np.linspace(-2, 2, 6).astype(np.float16))
        history = []
        for step in range(STEPS):
            if step % 2:  # callable loss
                opt.minimize(lambda v=var: tf.reduce_sum(v * v) * 30.0, [var])
            else:  # tensor loss with its tape
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(var * var) * 30.0
                opt.minimize(loss, [var], tape=tape)
            history.append((float(opt.loss_scale), int(opt.dynamic_counter), var.numpy().copy()))
        results[lib] = history
    for step, (a, b) in enumerate(zip(results["keras_opt"], results["tf_keras"])):
        assert a[:2] == b[:2], f"step {step}"
        np.testing.assert_array_equal(a[2], b[2], err_msg=f"step {step}")
    # 60 * |v| * 2**15 overflows float16 (65504) for |v| > 0.033: the scale must fall.
    assert results["keras_opt"][-1][0] < 2.0**15
    assert np.abs(results["keras_opt"][-1][2]).max() < 2.0


@pytest.mark.skipif(
    not hasattr(keras_opt.Optimizer, "get_gradients"), reason="the base has no get_gradients"
)
def test_graph_mode_get_gradients_and_get_updates_match_tf_keras():
    """The TF1-style API inside a tf.function: scaled, unscaled, scale updated."""
    results = {}
    for lib, (optimizers, lso_class) in LIBS.items():
        opt = lso_class(optimizers.SGD(0.1), dynamic_growth_steps=2)
        var = tf.Variable([1.0, -2.0, 3.0])

        @tf.function
        def step(factor, opt=opt, var=var):
            loss = tf.reduce_sum(var * var) * factor
            grads = opt.get_gradients(loss, [var])
            with tf.control_dependencies(opt.get_updates(loss, [var])):
                return grads[0]

        history = []
        for factor in (1.0, np.inf, 1.0, 1.0, 1.0):
            grad = step(tf.constant(factor))
            history.append((grad.numpy(), var.numpy(), float(opt.loss_scale)))
        results[lib] = history
    for (ga, va, sa), (gb, vb, sb) in zip(results["keras_opt"], results["tf_keras"]):
        np.testing.assert_array_equal(ga, gb)
        np.testing.assert_array_equal(va, vb)
        assert sa == sb
    np.testing.assert_array_equal(results["keras_opt"][0][0], [2.0, -4.0, 6.0])
    assert [h[2] for h in results["keras_opt"]] == [2.0**15, 2.0**14, 2.0**14, 2.0**15, 2.0**15]


def test_minimize_tensor_loss_needs_tape():
    opt = keras_opt.LossScaleOptimizer(keras_opt.SGD())
    var = tf.Variable(1.0)
    with pytest.raises(ValueError, match="`tape` is required"):
        opt.minimize(var * 2.0, [var])


# ------------------------------------------------------- scaling helpers
@pytest.mark.parametrize("dtype", [tf.float32, tf.float16, tf.bfloat16, tf.float64])
def test_get_scaled_loss_matches_tf_keras(dtype):
    ours = keras_opt.LossScaleOptimizer(keras_opt.SGD(), initial_scale=96.0)
    theirs = TfKerasLSO(tf_keras_legacy.SGD(), initial_scale=96.0)
    loss = tf.constant(0.3, dtype)
    a, b = ours.get_scaled_loss(loss), theirs.get_scaled_loss(loss)
    assert a.dtype == b.dtype == dtype
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    fa, fb = ours.get_scaled_loss(lambda: loss), theirs.get_scaled_loss(lambda: loss)
    assert callable(fa) and callable(fb)
    np.testing.assert_array_equal(fa().numpy(), fb().numpy())
    np.testing.assert_array_equal(fa().numpy(), a.numpy())
    np.testing.assert_array_equal(ours.scale_loss(loss).numpy(), a.numpy())


ALL_FLOAT_DTYPES = [tf.float32, tf.float64, tf.float16, tf.bfloat16]


@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES, ids=lambda d: d.name)
def test_get_unscaled_gradients_keeps_none_and_indexed_slices(dtype):
    ours = keras_opt.LossScaleOptimizer(keras_opt.SGD())
    theirs = TfKerasLSO(tf_keras_legacy.SGD())
    sparse = tf.IndexedSlices(
        tf.constant([[3.0, 6.0], [9.0, 1.0]], dtype) * 1000,
        tf.constant([2, 0], tf.int64),
        dense_shape=tf.constant([4, 2], tf.int64),
    )
    grads = [None, tf.constant([3.0, -7.0, 0.5], dtype) * 1000, sparse]
    a, b = ours.get_unscaled_gradients(grads), theirs.get_unscaled_gradients(grads)
    assert a[0] is None
    assert isinstance(a[2], tf.IndexedSlices)
    np.testing.assert_array_equal(a[2].indices.numpy(), [2, 0])
    np.testing.assert_array_equal(a[2].dense_shape.numpy(), [4, 2])
    assert a[1].dtype == a[2].values.dtype == dtype
    # A power-of-two scale (2**15 here): tf_keras's bits in every dtype.
    np.testing.assert_array_equal(a[1].numpy(), b[1].numpy())
    np.testing.assert_array_equal(a[2].values.numpy(), b[2].values.numpy())


@pytest.mark.parametrize("dtype", ALL_FLOAT_DTYPES, ids=lambda d: d.name)
def test_unscaling_by_a_non_power_of_two_scale(dtype):
    """1/3 is rounded to float32; half-precision gradients are multiplied in float32."""
    ours = keras_opt.LossScaleOptimizer(keras_opt.SGD(), dynamic=False, initial_scale=3.0)
    theirs = TfKerasLSO(tf_keras_legacy.SGD(), dynamic=False, initial_scale=3.0)
    values = np.array([3.0, -7.0, 0.5, 1000.0], np.float32).astype(dtype.as_numpy_dtype)
    (got,) = ours.get_unscaled_gradients([tf.constant(values)])
    recip = np.float32(1) / np.float32(3)
    if dtype in (tf.float16, tf.bfloat16):
        expected = (values.astype(np.float32) * recip).astype(dtype.as_numpy_dtype)
    else:  # tf_keras's way: the float32 reciprocal cast to the gradient's dtype
        expected = values * np.array(recip).astype(dtype.as_numpy_dtype)
        np.testing.assert_array_equal(
            got.numpy(), theirs.get_unscaled_gradients([tf.constant(values)])[0].numpy()
        )
    np.testing.assert_array_equal(got.numpy(), expected)


def test_float16_gradients_survive_scales_beyond_2_24():
    """tf_keras rounds 1/2**26 to float16 (0) and zeroes the gradients; keras_opt does not."""
    scale = 2.0**26
    ours = keras_opt.LossScaleOptimizer(keras_opt.SGD(), initial_scale=scale)
    theirs = TfKerasLSO(tf_keras_legacy.SGD(), initial_scale=scale)
    scaled = np.array([65504.0, 30000.0, -1000.0], np.float16)
    (got,) = ours.get_unscaled_gradients([tf.constant(scaled)])
    exact = (scaled.astype(np.float64) / scale).astype(np.float16)
    np.testing.assert_array_equal(got.numpy(), exact)
    assert np.all(got.numpy() != 0)
    (their,) = theirs.get_unscaled_gradients([tf.constant(scaled)])
    assert np.all(their.numpy() == 0)


def test_keras3_style_scale_loss_then_apply_equals_tf_keras_loop():
    """scale_loss + apply(scaled grads) is the get_scaled_loss/get_unscaled_gradients loop."""
    w0, _ = start_values(tf.float32)
    target = tf.constant(np.arange(ROWS * COLS, dtype=np.float32).reshape(ROWS, COLS) / 10)
    runs = {}
    for style in ("keras3", "tf_keras"):
        lib = "keras_opt" if style == "keras3" else "tf_keras"
        optimizers, lso_class = LIBS[lib]
        opt = lso_class(optimizers.Adam(0.05), dynamic_growth_steps=2)
        w = tf.Variable(w0)
        for step in range(8):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum((w - target) ** 2) * (np.inf if step == 2 else 1.0)
                if style == "keras3":
                    scaled = opt.scale_loss(loss)
                else:
                    scaled = opt.get_scaled_loss(loss)
            grads = tape.gradient(scaled, [w])
            if style == "keras3":
                opt.apply(grads, [w])
            else:
                opt.apply_gradients(zip(opt.get_unscaled_gradients(grads), [w]))
        runs[style] = (w.numpy(), float(opt.loss_scale), int(opt.iterations))
    np.testing.assert_array_equal(runs["keras3"][0], runs["tf_keras"][0])
    assert runs["keras3"][1:] == runs["tf_keras"][1:]
    opt = keras_opt.LossScaleOptimizer(keras_opt.SGD())
    with pytest.raises(ValueError, match="trainable_variables"):
        opt.apply([tf.constant(1.0)])
    with pytest.raises(ValueError, match="1 gradients for 2 variables"):
        opt.apply([tf.constant(1.0)], [tf.Variable(1.0), tf.Variable(2.0)])


def test_warns_once_when_not_scaled(monkeypatch):
    messages = []
    monkeypatch.setattr(
        lso_module.logging, "warning", lambda msg, *args: messages.append(msg % args)
    )
    opt = keras_opt.LossScaleOptimizer(keras_opt.SGD())
    var = tf.Variable(1.0)
    for _ in range(3):
        opt.apply_gradients([(tf.constant(1.0), var)])
    assert len(messages) == 1 and "get_scaled_loss() and get_unscaled_gradients()" in messages[0]
    messages.clear()
    opt = keras_opt.LossScaleOptimizer(keras_opt.SGD())
    opt.get_scaled_loss(tf.constant(1.0))
    opt.get_unscaled_gradients([tf.constant(1.0)])
    opt.apply_gradients([(tf.constant(1.0), var)])
    assert messages == []


# ------------------------------------------------------- Keras mixed policies
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_tf_keras_mixed_policy_layers(policy):
    """float32 variables (AutoCastVariables) computing in half precision: float32 slots."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 4)).astype(np.float32)
    bad_x = x.copy()
    bad_x[0, 0] = np.inf  # a non-finite forward pass at step 5
    states, finite = {}, []
    tf_keras.mixed_precision.set_global_policy(policy)
    try:
        layers = {lib: tf_keras.layers.Dense(4) for lib in LIBS}
        for layer in layers.values():
            layer.build((None, 3))
        layers["tf_keras"].set_weights(layers["keras_opt"].get_weights())
        opts = {
            lib: lso_class(optimizers.Adam(0.01), dynamic_growth_steps=GROWTH)
            for lib, (optimizers, lso_class) in LIBS.items()
        }
        for step in range(STEPS):
            for lib, layer in layers.items():
                opt = opts[lib]
                with tf.GradientTape() as tape:
                    out = layer(bad_x if step == 5 else x)
                    assert out.dtype == tf.as_dtype(policy.split("_")[1])
                    loss = tf.reduce_mean(tf.square(tf.cast(out, tf.float32) - y))
                    scaled = opt.get_scaled_loss(loss)
                grads = opt.get_unscaled_gradients(tape.gradient(scaled, layer.trainable_weights))
                if lib == "keras_opt":
                    finite.append(all(np.all(np.isfinite(g.numpy())) for g in grads))
                opt.apply_gradients(zip(grads, layer.trainable_weights))
                states[lib] = (
                    float(opt.loss_scale),
                    int(opt.dynamic_counter),
                    [v.numpy() for v in layer.weights],
                    opt.get_weights(),
                )
            a, b = states["keras_opt"], states["tf_keras"]
            assert a[:2] == b[:2], f"step {step}"
            for u, v in zip(a[2] + a[3], b[2] + b[3]):
                np.testing.assert_array_equal(u, v, err_msg=f"step {step}")
        kernel = layers["keras_opt"].kernel
        assert type(kernel).__name__ == "AutoCastVariable"
        for slot in ("m", "v"):
            assert opts["keras_opt"].get_slot(kernel, slot).dtype == tf.float32
        assert not finite[5]
        assert states["keras_opt"][:2] == expected_trajectory(finite, 2.0**15, GROWTH)[-1]
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")


def test_keras3_mixed_float16_layer_variables():
    """A Keras 3 layer under mixed_float16 keeps float32 variables; slots are float32.

    The same gradients are fed to tf_keras's LSO on twin float32 tf.Variables.
    """
    import keras

    layer = keras.layers.Dense(4, dtype="mixed_float16")
    layer.build((None, 3))
    twins = [tf.Variable(v.numpy()) for v in layer.trainable_weights]
    ours = keras_opt.LossScaleOptimizer(keras_opt.Adam(0.01), dynamic_growth_steps=GROWTH)
    theirs = TfKerasLSO(tf_keras_legacy.Adam(0.01), dynamic_growth_steps=GROWTH)
    x = np.random.default_rng(2).standard_normal((8, 3)).astype(np.float32)
    for step in range(8):
        with tf.GradientTape() as tape:
            out = layer(x * (np.inf if step == 3 else 1.0))
            assert out.dtype == tf.float16
            loss = tf.reduce_mean(tf.cast(out, tf.float32) ** 2)
            scaled = ours.get_scaled_loss(loss)
        grads = ours.get_unscaled_gradients(tape.gradient(scaled, layer.trainable_weights))
        assert all(g.dtype == tf.float32 for g in grads)
        ours.apply_gradients(zip(grads, layer.trainable_weights))
        theirs.apply_gradients(zip(theirs.get_unscaled_gradients(
            [g * theirs.loss_scale for g in grads]), twins))  # fmt: skip
        for v, twin in zip(layer.trainable_weights, twins):
            np.testing.assert_array_equal(v.numpy(), twin.numpy(), err_msg=f"step {step}")
        assert float(ours.loss_scale) == float(theirs.loss_scale)
    assert ours.get_slot(layer.kernel, "m").dtype == tf.float32
    expected = expected_trajectory([step != 3 for step in range(8)], 2.0**15, GROWTH)[-1]
    assert int(ours.iterations) == 8
    assert (float(ours.loss_scale), int(ours.dynamic_counter)) == expected


# ---------------------------------------------------------------- checkpoints
def checkpoint_of(trainer: Trainer) -> tf.train.Checkpoint:
    return tf.train.Checkpoint(optimizer=trainer.opt, w=trainer.w, b=trainer.b)


def assert_same_values(a: Trainer, b: Trainer, where: str) -> None:
    """Loss scale, counter, iterations, variables and slots (looked up by variable)."""
    sa, sb = a.snapshot(), b.snapshot()
    for key in ("loss_scale", "counter", "iterations"):
        assert sa[key] == sb[key], f"{where}: {key}"
    assert a.opt.get_slot_names() == b.opt.get_slot_names()
    for var_a, var_b in ((a.w, b.w), (a.b, b.b)):
        np.testing.assert_array_equal(var_a.numpy(), var_b.numpy(), err_msg=where)
        for slot in a.opt.get_slot_names():
            np.testing.assert_array_equal(
                a.opt.get_slot(var_a, slot).numpy(),
                b.opt.get_slot(var_b, slot).numpy(),
                err_msg=f"{where}: slot {slot} of {var_a.name}",
            )


@pytest.mark.parametrize("source", ["tf_keras", "keras_opt"])
def test_checkpoint_round_trip_with_tf_keras(tmp_path, source):
    """One library's LSO checkpoint restores into both; all continue as if uninterrupted.

    Restored, keras_opt and tf_keras agree entirely (weights in the same order,
    with the same names); against the uninterrupted run, the values agree.
    """
    saved = Trainer(source, sparse=True)
    for i in range(7):
        saved.step(i)
    path = checkpoint_of(saved).save(str(tmp_path / "ckpt"))
    keys = {name for name, _ in tf.train.list_variables(path)}
    assert {
        "optimizer/loss_scale/current_loss_scale/.ATTRIBUTES/VARIABLE_VALUE",
        "optimizer/loss_scale/good_steps/.ATTRIBUTES/VARIABLE_VALUE",
        "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE",
        "w/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE",
    } <= keys
    assert saved.snapshot()["loss_scale"] != 2.0**15, "the checkpoint holds a changed scale"
    restored = {lib: Trainer(lib, sparse=True) for lib in LIBS}
    statuses = [checkpoint_of(t).restore(path) for t in restored.values()]
    for status in statuses:
        status.assert_existing_objects_matched()
    for i in range(7, 14):
        where = f"before step {i}"
        assert_same_state(restored["keras_opt"].snapshot(), restored["tf_keras"].snapshot(), where)
        for trainer in restored.values():
            assert_same_values(trainer, saved, where)
        for trainer in (saved, *restored.values()):
            trainer.step(i)
    for status in statuses:
        status.assert_consumed()
    assert_same_values(restored["keras_opt"], saved, "end")


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_checkpoint_keys_values_and_object_graph_equal_tf_keras(tmp_path, sparse):
    """Same keys, values and object graph (node order, dependency names, slot links)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    paths, graphs = {}, {}
    for lib in LIBS:
        trainer = Trainer(lib, sparse=sparse)
        for i in range(5):
            trainer.step(i)
        paths[lib] = checkpoint_of(trainer).save(str(tmp_path / lib / "ckpt"))
        graph = trackable_object_graph_pb2.TrackableObjectGraph()
        graph.ParseFromString(
            tf.train.load_checkpoint(paths[lib]).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
        )
        graphs[lib] = graph
    assert graphs["keras_opt"] == graphs["tf_keras"]
    nodes = graphs["keras_opt"].nodes
    (optimizer_id,) = [c.node_id for c in nodes[0].children if c.local_name == "optimizer"]
    optimizer_node = nodes[optimizer_id]
    assert [c.local_name for c in optimizer_node.children][:2] == ["loss_scale", "base_optimizer"]
    listed = {lib: dict(tf.train.list_variables(path)) for lib, path in paths.items()}
    assert listed["keras_opt"] == listed["tf_keras"]
    for name in listed["keras_opt"]:
        if name.startswith("_CHECKPOINTABLE"):
            continue
        a = tf.train.load_variable(paths["keras_opt"], name)
        b = tf.train.load_variable(paths["tf_keras"], name)
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_checkpoint_restored_before_wrapping(tmp_path):
    """Restored into the bare inner optimizer, the loss scale lands when the LSO is built."""
    saved = Trainer("keras_opt")
    for i in range(5):
        saved.step(i)
    path = checkpoint_of(saved).save(str(tmp_path / "ckpt"))
    results = {}
    for lib, (optimizers, lso_class) in LIBS.items():
        inner = optimizers.Adam(0.1)
        checkpoint = tf.train.Checkpoint(optimizer=inner)
        checkpoint.restore(path).expect_partial()
        opt = lso_class(inner, dynamic_growth_steps=GROWTH)
        results[lib] = (float(opt.loss_scale), int(opt.dynamic_counter), int(opt.iterations))
    assert results["keras_opt"] == results["tf_keras"]
    assert results["keras_opt"] == (
        saved.snapshot()["loss_scale"],
        saved.snapshot()["counter"],
        5,
    )


def test_checkpoint_between_plain_and_wrapped_optimizer(tmp_path):
    """Without the loss scale the format is the plain optimizer's: both directions restore."""
    var = tf.Variable([1.0, 2.0])
    plain = keras_opt.Adam(0.1)
    plain.apply_gradients([(tf.constant([0.5, -0.5]), var)])
    path = tf.train.Checkpoint(optimizer=plain, var=var).save(str(tmp_path / "plain"))
    var2 = tf.Variable([0.0, 0.0])
    wrapped = keras_opt.LossScaleOptimizer(keras_opt.Adam(0.1))
    # A plain checkpoint has no loss scale: it keeps its initial value.
    tf.train.Checkpoint(optimizer=wrapped, var=var2).restore(path)
    assert int(wrapped.iterations) == 1 and float(wrapped.loss_scale) == 2.0**15
    np.testing.assert_array_equal(wrapped.get_slot(var2, "m").numpy(), plain.get_slot(var, "m"))
    path = tf.train.Checkpoint(optimizer=wrapped, var=var2).save(str(tmp_path / "wrapped"))
    plain2, var3 = keras_opt.Adam(0.1), tf.Variable([0.0, 0.0])
    tf.train.Checkpoint(optimizer=plain2, var=var3).restore(path).expect_partial()
    assert int(plain2.iterations) == 1
    np.testing.assert_array_equal(plain2.get_slot(var3, "v").numpy(), plain.get_slot(var, "v"))


# -------------------------------------------------------------------- config
@pytest.mark.parametrize(
    "lso_kwargs",
    [dict(), dict(dynamic_growth_steps=7, initial_scale=64), dict(dynamic=False, initial_scale=8)],
    ids=["default", "dynamic", "fixed"],
)
def test_config_round_trip_and_tf_keras_config(lso_kwargs):
    ours = keras_opt.LossScaleOptimizer(keras_opt.Adam(0.25, beta_1=0.8), **lso_kwargs)
    theirs = TfKerasLSO(tf_keras_legacy.Adam(0.25, beta_1=0.8), **lso_kwargs)
    config, their_config = ours.get_config(), theirs.get_config()
    assert (
        set(config)
        == set(their_config)
        == {
            "inner_optimizer",
            "dynamic",
            "initial_scale",
            "dynamic_growth_steps",
        }
    )
    for key in ("dynamic", "initial_scale", "dynamic_growth_steps"):
        assert config[key] == their_config[key]
    assert config["inner_optimizer"]["config"] == their_config["inner_optimizer"]["config"]
    rebuilt = [
        keras_opt.LossScaleOptimizer.from_config(config),
        keras_opt.LossScaleOptimizer.from_config(their_config),
        keras_opt.deserialize(keras_opt.serialize(ours)),
        keras_opt.deserialize(tf_keras.optimizers.serialize(theirs)),
        keras_opt.get(tf_keras.optimizers.serialize(theirs)),
    ]
    for opt in rebuilt:
        assert type(opt) is keras_opt.LossScaleOptimizer
        assert type(opt.inner_optimizer) is keras_opt.Adam
        assert opt.get_config() == config
    # tf_keras reads keras_opt's config too.
    assert TfKerasLSO.from_config(copy.deepcopy(config)).get_config() == their_config


@pytest.mark.parametrize(
    "loss_scale",
    [
        {"class_name": "DynamicLossScale", "config": {"initial_loss_scale": 8.0,
                                                      "increment_period": 5, "multiplier": 2.0}},
        {"class_name": "FixedLossScale", "config": {"loss_scale_value": 16.0}},
    ],
    ids=["dynamic", "fixed"],
)  # fmt: skip
def test_tf23_config_format(loss_scale):
    config = {"optimizer": {"class_name": "SGD", "config": {"learning_rate": 0.5}},
              "loss_scale": loss_scale}  # fmt: skip
    ours = keras_opt.LossScaleOptimizer.from_config(copy.deepcopy(config)).get_config()
    theirs = TfKerasLSO.from_config(copy.deepcopy(config)).get_config()
    for key in ("dynamic", "initial_scale", "dynamic_growth_steps"):
        assert ours[key] == theirs[key]
    assert ours["inner_optimizer"]["config"] == theirs["inner_optimizer"]["config"]


def test_schedule_inner_optimizer_config_round_trip():
    schedule = keras_opt.schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
    opt = keras_opt.LossScaleOptimizer(keras_opt.SGD(schedule))
    rebuilt = keras_opt.deserialize(keras_opt.serialize(opt))
    assert rebuilt.get_config() == opt.get_config()
    assert isinstance(rebuilt.learning_rate, keras_opt.schedules.ExponentialDecay)


# ----------------------------------------------------------------- delegation
def test_delegates_hyperparameters_and_state_like_tf_keras():
    ours = keras_opt.LossScaleOptimizer(keras_opt.Adam(0.1, beta_1=0.8, epsilon=1e-5))
    theirs = TfKerasLSO(tf_keras_legacy.Adam(0.1, beta_1=0.8, epsilon=1e-5))
    for opt in (ours, theirs):
        assert float(opt.beta_1) == pytest.approx(0.8)
        assert float(opt.lr) == float(opt.learning_rate) == pytest.approx(0.1)
        opt.beta_1 = 0.7
        opt.lr = 0.2
        assert float(opt.inner_optimizer.beta_1) == pytest.approx(0.7)
        assert float(opt.inner_optimizer.learning_rate) == pytest.approx(0.2)
        with pytest.raises(AttributeError, match="epsilon"):
            _ = opt.epsilon  # not a hyperparameter: not delegated
        opt.epsilon = 1.0
        assert opt.inner_optimizer.epsilon == 1e-5
        assert {"beta_1", "beta_2", "learning_rate", "lr", "decay"} <= set(dir(opt))
        opt.clipnorm = 2.0
        assert opt.inner_optimizer.clipnorm == 2.0
        assert opt.iterations is opt.inner_optimizer.iterations
    var = tf.Variable([1.0, 2.0])
    ours.build([var])
    assert ours.weights == ours.inner_optimizer.weights and len(ours.weights) == 3
    assert ours.variables() == ours.inner_optimizer.variables()
    assert ours.get_slot_names() == ["m", "v"]
    assert ours.get_slot(var, "m") is ours.inner_optimizer.get_slot(var, "m")
    ours.set_weights([np.int64(4), np.ones(2), np.full(2, 2.0)])
    assert int(ours.iterations) == 4
    np.testing.assert_array_equal(ours.get_weights()[2], [2.0, 2.0])
    assert ours.inner_optimizer._is_wrapped_by_loss_scale_optimizer


def test_deepcopy_is_independent():
    opt = keras_opt.LossScaleOptimizer(keras_opt.SGD(0.1), dynamic_growth_steps=5)
    clone = copy.deepcopy(opt)
    assert clone.inner_optimizer is not opt.inner_optimizer
    clone.dynamic_counter.assign(3)
    assert int(opt.dynamic_counter) == 0 and int(clone.dynamic_counter) == 3
    assert clone.get_config() == opt.get_config()


# --------------------------------------------------------------------- errors
def test_constructor_errors_match_tf_keras():
    def both(make):
        errors = []
        for optimizers, lso_class in LIBS.values():
            with pytest.raises(Exception) as info:
                make(optimizers, lso_class)
            errors.append(info)
        return errors

    cases = [
        (lambda o, c: c(c(o.SGD())), TypeError, "cannot wrap another LossScaleOptimizer"),
        (lambda o, c: c(o.SGD(), "dynamic"), TypeError, "must be a bool"),
        (lambda o, c: c(o.SGD(), dynamic=False), ValueError, "initial_scale"),
        (
            lambda o, c: c(o.SGD(), dynamic=False, initial_scale=2, dynamic_growth_steps=3),
            ValueError,
            "dynamic_growth_steps",
        ),
    ]
    for make, error, message in cases:
        ours, theirs = both(make)
        assert ours.type is theirs.type is error
        assert message in str(ours.value)
    inner = keras_opt.SGD()
    keras_opt.LossScaleOptimizer(inner)
    with pytest.raises(ValueError, match="already wrapped"):
        keras_opt.LossScaleOptimizer(inner)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(initial_scale=-1.0), ValueError, "finite number > 0"),
        (dict(initial_scale=float("inf")), ValueError, "finite number > 0"),
        (dict(initial_scale="big"), TypeError, "positive number"),
        (dict(dynamic_growth_steps=0), ValueError, "integer >= 1"),
        (dict(dynamic_growth_steps=2.5), TypeError, "integer >= 1"),
    ],
)
def test_invalid_scale_arguments_raise(kwargs, error, message):
    """keras_opt rejects what tf_keras silently accepts (a negative scale, zero growth steps)."""
    with pytest.raises(error, match=message):
        keras_opt.LossScaleOptimizer(keras_opt.SGD(), **kwargs)


def test_wrapping_a_foreign_optimizer_raises():
    with pytest.raises(TypeError, match="tf_keras.mixed_precision.LossScaleOptimizer"):
        keras_opt.LossScaleOptimizer(tf_keras_legacy.SGD())
    with pytest.raises(TypeError, match="keras_opt optimizer"):
        keras_opt.LossScaleOptimizer("sgd")


def test_apply_gradients_in_cross_replica_context_raises():
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    with strategy.scope():
        var = tf.Variable(1.0)
        opt = keras_opt.LossScaleOptimizer(keras_opt.SGD())
        with pytest.raises(ValueError, match="replica context"):
            opt.apply_gradients([(tf.constant(1.0), var)])
    # In replica context it works, as a one-replica strategy.
    strategy.run(lambda: opt.apply_gradients([(tf.constant(1.0), var)]))
    assert int(opt.iterations) == 1


def test_unsupported_strategy_raises_like_tf_keras():
    strategy = tf.distribute.experimental.CentralStorageStrategy()
    with strategy.scope():
        for optimizers, lso_class in LIBS.values():
            with pytest.raises(ValueError, match="CentralStorageStrategy"):
                lso_class(optimizers.SGD())


def test_bad_gradient_named_before_any_change():
    opt = keras_opt.LossScaleOptimizer(keras_opt.SGD())
    var = tf.Variable([1.0, 2.0], name="kernel")
    with pytest.raises(ValueError, match="kernel"):
        opt.apply_gradients([(tf.constant([1.0, 2.0, 3.0]), var)])
    assert float(opt.loss_scale) == 2.0**15 and int(opt.dynamic_counter) == 0


# ---------------------------------------------------------- MirroredStrategy
# A fractional design over the worker's axes: each value of each axis occurs twice.
MIRRORED_CONFIGS = [
    "eager-dense-merge_call",
    "function-sparse-merge_call",
    "function-dense-no_merge_call",
    "eager-sparse-no_merge_call",
]


@pytest.fixture(scope="module")
def mirrored_results():
    with tempfile.TemporaryDirectory() as out:
        dist_utils.run_worker(
            "lso_mirrored.py",
            [out, *MIRRORED_CONFIGS],
            timeout_s=180,
            env={"LSO_WORKER_DEADLINE_S": "170"},
        )
        with open(os.path.join(out, "lso_mirrored.json")) as f:
            meta = json.load(f)
        with np.load(os.path.join(out, "lso_mirrored.npz")) as data:
            arrays = {key: data[key] for key in data.files}
    return meta, arrays


@pytest.mark.parametrize("config", MIRRORED_CONFIGS)
def test_mirrored_strategy_matches_tf_keras(mirrored_results, config):
    meta, arrays = mirrored_results
    errors = {k: v for k, v in meta["errors"].items() if k.startswith(config + "/")}
    assert not errors, errors
    assert meta["replicas"] == 2
    ours = {k.split("/")[-1]: v for k, v in arrays.items() if k.startswith(config + "/keras_opt/")}
    theirs = {k.split("/")[-1]: v for k, v in arrays.items() if k.startswith(config + "/tf_keras/")}
    assert set(ours) == set(theirs) and ours
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=f"{config}: {key}")
    assert list(ours["variable_types"]) == ["MirroredVariable", "MirroredVariable"]
    # Every replica holds the same values at every step: an inf on one replica
    # (the worker poisons one replica's gradient only) was skipped everywhere.
    for key, value in ours.items():
        if key not in ("weight_names", "variable_types"):
            np.testing.assert_array_equal(value[:, 0], value[:, 1], err_msg=f"{config}: {key}")
    skipped = sorted(int(step) for step in meta["inject"])
    finite = [step not in skipped for step in range(meta["steps"])]
    expected = expected_trajectory(finite, 2.0**15, meta["growth"])
    assert [
        (float(s), int(c)) for s, c in zip(ours["loss_scale"][:, 0], ours["counter"][:, 0])
    ] == (expected)
    assert list(ours["iterations"][:, 0]) == list(range(1, meta["steps"] + 1))
    for step in skipped:
        for key in ("w", "b"):
            np.testing.assert_array_equal(ours[key][step], ours[key][step - 1])
    assert not np.array_equal(ours["w"][-1], ours["w"][0])


# ------------------------------------------------------------------- example
def test_float16_example_trains_only_with_loss_scaling():
    """examples/float16_training.py: without scaling the gradients underflow to zero."""
    path = os.path.join(REPO, "examples", "float16_training.py")
    if not os.path.exists(path):  # Bazel runs the tests without examples/ in the runfiles
        pytest.skip(f"{path} is not available here")
    spec = importlib.util.spec_from_file_location("float16_training_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.compare(steps=120)
    plain, scaled = result["without_scaling"], result["with_scaling"]
    assert plain["initial_loss"] == scaled["initial_loss"]
    assert plain["final_zero_gradient_fraction"] == 1.0, "float16 gradients underflowed"
    assert scaled["zero_gradient_fraction"] == 0.0
    assert scaled["final_loss"] < plain["final_loss"] / 100
    assert scaled["loss_scale"] == 2.0**15
