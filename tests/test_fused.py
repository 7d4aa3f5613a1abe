"""keras_opt.kernels: fused multi-variable updates equal the per-variable kernels bit for bit.

Differential tests: the same optimizer configuration trains the same variables
with the fused ops (the default) and with ``fused_kernels=False`` (TensorFlow's
per-variable ``ResourceApply*`` kernels and composite ops), and every variable
and slot must be equal with ``np.array_equal`` after several steps: every
configuration of ``cases.CASES``, float16/bfloat16/float32/float64, shapes
0-d, size 1, odd sizes and one large tensor, dense and ``IndexedSlices``
(Adam's exact sparse pass), eagerly and in ``tf.function``. The fallbacks
(XLA, ``KERAS_OPT_FUSED=0``, a subclass, a constraint, no compiler) must
give the same numbers too, and `last_paths` must report which path ran.
MirroredStrategy, the no-compiler install and the lower ISAs run in worker
processes (tests/workers/fused_worker.py).
"""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

import keras_opt
from keras_opt import kernels
from keras_opt.kernels import build, dispatch

import dist_utils
from cases import CASES, case_id

DTYPES = [tf.float16, tf.bfloat16, tf.float32, tf.float64]
SHAPES = [(), (1,), (7,), (5, 3), (1031,)]
LARGE = (517, 1031)  # 533k elements: many parallel chunks, one tensor spanning them
STEPS = 3
HAVE_COMPILER = shutil.which(os.environ.get("CXX") or "g++") is not None


def fused_case(name, kwargs) -> bool:
    """Is this configuration one the fused kernels cover (dense gradients)?"""
    if name in ("Adamax", "Adadelta"):
        return False
    return not (name == "Ftrl" and kwargs.get("learning_rate_power", -0.5) != -0.5)


def train(
    name,
    kwargs,
    dtype,
    fused,
    *,
    function,
    sparse=False,
    shapes=SHAPES,
    steps=STEPS,
    jit=False,
    factory=None,
):
    rng = np.random.default_rng(5)
    variables = [
        tf.Variable(tf.cast(rng.uniform(-1, 1, s), dtype), name=f"v{i}")
        for i, s in enumerate(shapes)
    ]
    if factory is None:
        opt = getattr(keras_opt, name)(fused_kernels=fused, **kwargs)
    else:  # another library's optimizer (the oracle)
        opt = factory(**kwargs)
    rows = shapes[-1][0] if shapes[-1] else 1
    stream = []
    for step in range(steps):
        grads = [tf.cast(rng.standard_normal(s), dtype) for s in shapes]
        if sparse:  # repeated indices; unsorted; one row left out
            idx = np.array([step % rows, rows - 1, 2, rows - 1, 0], np.int64) % rows
            grads[-1] = tf.IndexedSlices(
                tf.cast(rng.standard_normal((len(idx),) + shapes[-1][1:]), dtype),
                tf.constant(idx),
                tf.constant(shapes[-1], tf.int64),
            )
        stream.append(grads)

    def step_fn(grads):
        opt.apply_gradients(zip(grads, variables))

    if function:
        step_fn = tf.function(step_fn, jit_compile=jit or None)
    for grads in stream:
        step_fn(grads)
    state = {"iter": opt.iterations.numpy()}
    for i, v in enumerate(variables):
        state[f"v{i}"] = v.numpy()
        for slot in opt.get_slot_names():
            state[f"v{i}/{slot}"] = opt.get_slot(v, slot).numpy()
    for j, w in enumerate(opt.weights):  # slots again, and e.g. Nadam's momentum cache
        state[f"weight{j}"] = w.numpy()
    return state, kernels.last_paths(opt)


def assert_bits_equal(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        a, b = np.asarray(got[key]), np.asarray(want[key])
        assert a.dtype == b.dtype and a.shape == b.shape, key
        # Compare the bits (bfloat16 arrays compare through float64 exactly).
        np.testing.assert_array_equal(a.astype(np.float64), b.astype(np.float64), err_msg=key)


def test_library_builds_and_loads():
    info = kernels.status()
    if not HAVE_COMPILER:
        assert not info["available"] and "compiler" in info["reason"]
        return
    assert info["available"], info["reason"]
    assert info["isa"] in ("sse2", "avx2", "avx512")
    assert os.path.dirname(info["library"]).startswith(build.cache_root())


@pytest.mark.parametrize("function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_dense_equals_per_variable(case, dtype, function):
    name, kwargs = case
    got, paths = train(name, kwargs, dtype, True, function=function)
    want, want_paths = train(name, kwargs, dtype, False, function=function)
    assert_bits_equal(got, want)
    assert want_paths["fused"] == [] and "fused_kernels=False" in want_paths["reason"]
    if HAVE_COMPILER and fused_case(name, kwargs):
        assert len(paths["fused"]) == len(SHAPES) and paths["per_variable"] == [], paths
    else:
        assert paths["fused"] == [] and paths["reason"], paths


# Adam and RMSprop without momentum have a one-pass sparse op; RMSprop with
# momentum keeps TF's sparse kernel (the pair takes the per-variable path).
SPARSE_CASES = [c for c in CASES if c[0] in ("Adam", "RMSprop", "Nadam")]


@pytest.mark.parametrize("function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("case", SPARSE_CASES, ids=[case_id(c) for c in SPARSE_CASES])
def test_sparse_equals_composite(case, dtype, function):
    name, kwargs = case
    shapes = SHAPES[:-1] + [(6, 3)]
    if kwargs.get("momentum") and dtype == tf.bfloat16:
        # TensorFlow has no bfloat16 ResourceSparseApply(Centered)RMSProp kernel:
        # both paths fail alike (the fused ops do not cover RMSprop with momentum).
        for fused in (True, False):
            with pytest.raises((tf.errors.InvalidArgumentError, tf.errors.NotFoundError)):
                train(name, kwargs, dtype, fused, function=function, sparse=True, shapes=shapes)
        return
    got, paths = train(name, kwargs, dtype, True, function=function, sparse=True, shapes=shapes)
    want, _ = train(name, kwargs, dtype, False, function=function, sparse=True, shapes=shapes)
    assert_bits_equal(got, want)
    if HAVE_COMPILER:
        sparse_fused = not kwargs.get("momentum")
        assert len(paths["fused"]) == len(shapes) - (not sparse_fused), paths


LARGE_CASES = [c for c in CASES if fused_case(*c) and "decay" not in c[1]]


@pytest.mark.parametrize("dtype", [tf.bfloat16, tf.float32], ids=lambda d: d.name)
@pytest.mark.parametrize("case", LARGE_CASES, ids=[case_id(c) for c in LARGE_CASES])
def test_large_tensor_equals_per_variable(case, dtype):
    name, kwargs = case
    shapes = [(3,), LARGE, (5,)]
    got, _ = train(name, kwargs, dtype, True, function=False, shapes=shapes, steps=2)
    want, _ = train(name, kwargs, dtype, False, function=False, shapes=shapes, steps=2)
    assert_bits_equal(got, want)


@pytest.mark.parametrize(
    "name,kwargs", [("Adam", {}), ("RMSprop", dict(centered=True)), ("Nadam", {})]
)
def test_large_sparse_equals_composite(name, kwargs):
    shapes = [(3,), (20011, 7)]
    got, _ = train(name, kwargs, tf.float32, True, function=True, sparse=True, shapes=shapes)
    want, _ = train(name, kwargs, tf.float32, False, function=True, sparse=True, shapes=shapes)
    assert_bits_equal(got, want)


@pytest.mark.parametrize("name,kwargs", [("Adam", {}), ("SGD", dict(momentum=0.9))])
def test_xla_falls_back_and_equals(name, kwargs):
    got, paths = train(name, kwargs, tf.float32, True, function=True, jit=True)
    want, _ = train(name, kwargs, tf.float32, False, function=True, jit=True)
    assert_bits_equal(got, want)
    assert paths["fused"] == [] and "XLA" in paths["reason"]


def test_env_var_disables(monkeypatch):
    monkeypatch.setenv("KERAS_OPT_FUSED", "0")
    got, paths = train("Adam", {}, tf.float32, True, function=False)
    assert paths["fused"] == [] and "KERAS_OPT_FUSED=0" in paths["reason"]
    monkeypatch.delenv("KERAS_OPT_FUSED")
    want, _ = train("Adam", {}, tf.float32, False, function=False)
    assert_bits_equal(got, want)


def test_attribute_switch_and_default():
    assert keras_opt.Adam().fused_kernels is True
    opt = keras_opt.Adam(fused_kernels=False)
    assert opt.fused_kernels is False and "fused_kernels" not in opt.get_config()
    assert dispatch.last_paths(opt)["reason"] == "not applied yet"


def test_subclass_override_falls_back():
    class MyAdam(keras_opt.Adam):
        def _resource_apply_dense(self, grad, var, apply_state=None):
            return super()._resource_apply_dense(grad, var, apply_state)

    var = tf.Variable([1.0, 2.0])
    opt = MyAdam()
    opt.apply_gradients([(tf.constant([0.1, 0.2]), var)])
    paths = kernels.last_paths(opt)
    assert paths["fused"] == [] and "no fused kernel" in paths["reason"]


def test_constraint_and_non_cpu_pairs_take_per_variable_path():
    plain = tf.Variable([1.0, 2.0], name="plain")
    constrained = tf.Variable([1.0, 2.0], name="constrained", constraint=lambda x: x * 0.5)
    opt = keras_opt.SGD(0.1, momentum=0.9)
    opt.apply_gradients([(tf.constant([0.1, 0.2]), plain), (tf.constant([0.1, 0.2]), constrained)])
    paths = kernels.last_paths(opt)
    if HAVE_COMPILER:
        assert paths["fused"] == ["plain:0"] and paths["per_variable"] == ["constrained:0"]
        assert "constraint" in paths["reason"]
    ref = keras_opt.SGD(0.1, momentum=0.9, fused_kernels=False)
    p2 = tf.Variable([1.0, 2.0])
    c2 = tf.Variable([1.0, 2.0], constraint=lambda x: x * 0.5)
    ref.apply_gradients([(tf.constant([0.1, 0.2]), p2), (tf.constant([0.1, 0.2]), c2)])
    np.testing.assert_array_equal(plain.numpy(), p2.numpy())
    np.testing.assert_array_equal(constrained.numpy(), c2.numpy())


def test_variable_given_twice_is_updated_twice_like_per_variable():
    results = []
    for fused in (True, False):
        twice = tf.Variable([1.0, 2.0], name="twice")
        once = tf.Variable([3.0, 4.0], name="once")
        opt = keras_opt.SGD(0.1, momentum=0.9, fused_kernels=fused)
        g = tf.constant([1.0, 0.5])
        opt.apply_gradients([(g, twice), (g, once), (g * 2.0, twice)])
        results.append((twice.numpy(), once.numpy(), kernels.last_paths(opt)))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
    if HAVE_COMPILER:
        assert results[0][2]["fused"] == ["once:0"]
        assert results[0][2]["per_variable"] == ["twice:0", "twice:0"]


needs_library = pytest.mark.skipif(not HAVE_COMPILER, reason="no C++ compiler")


@needs_library
def test_op_rejects_a_variable_passed_twice():
    module = build.load()
    var = tf.Variable([1.0, 2.0])
    slot = tf.Variable([0.0, 0.0])
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than once"):
        module.keras_opt_fused_apply(
            var=[var.handle, var.handle],
            slots=[slot.handle, tf.Variable([0.0, 0.0]).handle],
            grad=[tf.constant([1.0, 1.0])] * 2,
            coefs=[tf.constant(0.1), tf.constant(0.9)],
            rule=dispatch.MOMENTUM,
        )
    np.testing.assert_array_equal(var.numpy(), [1.0, 2.0])


@needs_library
def test_op_errors_name_the_problem():
    module = build.load()
    var = tf.Variable([1.0, 2.0], name="shapevar")
    with pytest.raises(tf.errors.InvalidArgumentError, match="shapevar"):
        module.keras_opt_fused_apply(
            var=[var.handle],
            slots=[],
            grad=[tf.constant([1.0])],
            coefs=[tf.constant(0.1)],
            rule=dispatch.SGD,
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="indices"):
        m, v = tf.Variable(tf.zeros([3, 2])), tf.Variable(tf.zeros([3, 2]))
        w = tf.Variable(tf.zeros([3, 2]))
        module.keras_opt_fused_sparse_apply_adam(
            var=w.handle,
            m=m.handle,
            v=v.handle,
            vhat=[],
            m_scaled=tf.ones([1, 2]),
            v_scaled=tf.ones([1, 2]),
            indices=tf.constant([3], tf.int64),
            beta1=0.9,
            beta2=0.999,
            lr=0.1,
            epsilon=1e-7,
        )

    @tf.function
    def bad_in_function():
        module.keras_opt_fused_apply(
            var=[var.handle],
            slots=[],
            grad=[tf.constant([1.0])],
            coefs=[tf.constant(0.1)],
            rule=dispatch.SGD,
        )

    with pytest.raises(tf.errors.InvalidArgumentError, match="same shape"):
        bad_in_function()


@needs_library
def test_copy_on_write_and_copy_on_read():
    """A value read before the step keeps its value; a copy-on-read variable still updates."""
    var = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2))
    ref = tf.Variable(np.arange(6, dtype=np.float32).reshape(3, 2))
    before = var.value()  # shares var's buffer until the update copies it
    var.sparse_read([0])  # puts var in copy-on-read mode
    ref.sparse_read([0])
    opt = keras_opt.Adam(0.1)
    ref_opt = keras_opt.Adam(0.1, fused_kernels=False)
    grad = tf.constant(np.ones((3, 2), np.float32))
    for _ in range(2):
        opt.apply_gradients([(grad, var)])
        ref_opt.apply_gradients([(grad, ref)])
    np.testing.assert_array_equal(before.numpy(), np.arange(6).reshape(3, 2))
    np.testing.assert_array_equal(var.numpy(), ref.numpy())
    assert kernels.last_paths(opt)["fused"]


@pytest.mark.parametrize("name", ["Adam", "RMSprop"])
def test_sparse_update_after_a_lookup_keeps_readers_and_equals_per_variable(name):
    """An embedding lookup (sparse read) puts the table in copy-on-read mode.

    The fused sparse ops then update its rows in place, as TF's sparse kernels
    do (no full copy each step), but still copy a buffer someone holds.
    """
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    var, ref = tf.Variable(values), tf.Variable(values)
    opt = getattr(keras_opt, name)(0.1)
    ref_opt = getattr(keras_opt, name)(0.1, fused_kernels=False)
    grad = tf.IndexedSlices(tf.ones((3, 2)), tf.constant([4, 1, 4]), tf.constant([6, 2]))
    before = values
    for step in range(3):
        var.sparse_read([0, 5])  # the lookup
        ref.sparse_read([0, 5])
        held = var.value() if step == 1 else None  # a reader holding the buffer
        opt.apply_gradients([(grad, var)])
        ref_opt.apply_gradients([(grad, ref)])
        if held is not None:
            np.testing.assert_array_equal(held.numpy(), before)
        before = var.numpy()
    np.testing.assert_array_equal(var.numpy(), ref.numpy())
    for slot in opt.get_slot_names():
        np.testing.assert_array_equal(opt.get_slot(var, slot), ref_opt.get_slot(ref, slot))
    if HAVE_COMPILER:
        assert kernels.last_paths(opt)["fused"]


@needs_library
def test_one_op_per_device_dtype_group():
    vars_ = [tf.Variable(tf.zeros([3], d)) for d in (tf.float32, tf.float16, tf.float32)]
    opt = keras_opt.Adam()

    @tf.function
    def step():
        opt.apply_gradients([(tf.ones([3], v.dtype), v) for v in vars_])

    graph = step.get_concrete_function().graph
    # Inside a tf.function each group passes one variable-group handle.
    fused = [op for op in graph.get_operations() if op.type == "KerasOptFusedApplyGroup"]
    assert sorted(op.get_attr("T").name for op in fused) == ["float16", "float32"]
    assert not [op for op in graph.get_operations() if op.type == "ResourceApplyAdam"]


# ------------------------------------------------------------------ subprocesses
def _worker(mode, env=None, timeout_s=240):
    log = dist_utils.run_worker("fused_worker.py", [mode], timeout_s=timeout_s, env=env)
    line = [ln for ln in log.splitlines() if ln.startswith("RESULT ")]
    assert line, log[-3000:]
    return json.loads(line[-1][len("RESULT ") :])


@needs_library
def test_mirrored_strategy_fused_per_replica_equals_per_variable():
    out = _worker("mirrored")
    assert out["status"]["available"]
    for case in out["cases"]:
        assert case["equal"], case
        # RMSprop with momentum keeps TF's sparse kernel for the IndexedSlices pair.
        left = ["v2:0"] if case["sparse"] and case["kwargs"].get("momentum") else []
        assert case["paths"]["fused"] and case["paths"]["per_variable"] == left, case


def test_without_compiler_falls_back(tmp_path):
    env = {"CXX": str(tmp_path / "no-such-g++"), "KERAS_OPT_KERNEL_CACHE": str(tmp_path / "c")}
    out = _worker("fallback", env=env)
    assert not out["status"]["available"] and "compiler" in out["status"]["reason"]
    for case in out["cases"]:
        assert case["equal"], case
        assert case["paths"]["fused"] == [] and "compiler" in case["paths"]["reason"], case
    assert not os.listdir(tmp_path / "c") if (tmp_path / "c").exists() else True


@needs_library
@pytest.mark.parametrize("isa", ["sse2", "avx2"])
def test_lower_isa_builds_equal(isa):
    out = _worker("isa", env={"KERAS_OPT_FUSED_ISA": isa})
    assert out["status"]["isa"] == isa
    for case in out["cases"]:
        assert case["equal"], case
        assert case["paths"]["fused"], case


# Weight decay (the Keras 3 base feature): the stage decays every variable first,
# then the updates run fused. Oracle: the same optimizer class with an
# `_apply_one` override that only calls the base one, which keeps the
# per-variable order (decay, update; next variable) and the per-variable kernels.
DECAY_CASES = [
    ("Adam", dict(learning_rate=0.1, weight_decay=0.05)),
    ("AdamW", dict(learning_rate=0.1)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9, weight_decay=0.05)),
    ("RMSprop", dict(learning_rate=0.1, weight_decay=0.05)),
    ("Nadam", dict(learning_rate=0.1, weight_decay=0.05)),
]


@pytest.mark.parametrize("function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", DECAY_CASES, ids=[case_id(c) for c in DECAY_CASES])
def test_weight_decay_then_fused_equals_per_variable_order(case, sparse, function, monkeypatch):
    name, kwargs = case
    shapes = SHAPES[:-1] + [(6, 3)]
    got, paths = train(name, kwargs, tf.float32, True, function=function, sparse=sparse,
                       shapes=shapes)  # fmt: skip
    base = getattr(keras_opt, name)

    class Interleaved(base):
        def _apply_one(self, var, grad, apply_state):
            return super()._apply_one(var, grad, apply_state)

    monkeypatch.setattr(keras_opt, name, Interleaved)
    want, want_paths = train(name, kwargs, tf.float32, True, function=function, sparse=sparse,
                             shapes=shapes)  # fmt: skip
    assert_bits_equal(got, want)
    assert want_paths["fused"] == [] and "_apply_one" in want_paths["reason"]
    if HAVE_COMPILER:
        assert paths["fused"], paths  # the dense variables at least


# Nadam: the dense rule and the sparse one-pass op against the per-variable
# composite ops and tf_keras legacy Nadam (the oracle the composite ops equal).
# beta_2=0.99: with the default 0.999 (1.0 in bfloat16) bfloat16 runs into 0/0.
NADAM_KWARGS = dict(learning_rate=0.1, beta_2=0.99, epsilon=1e-3, schedule_decay=0.01)


@pytest.mark.parametrize("function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_nadam_fused_equals_per_variable_and_tf_keras(dtype, sparse, function):
    import tf_keras

    shapes = SHAPES[:-1] + [(6, 3)] if sparse else SHAPES
    run = dict(function=function, sparse=sparse, shapes=shapes)
    got, paths = train("Nadam", NADAM_KWARGS, dtype, True, **run)
    want, _ = train("Nadam", NADAM_KWARGS, dtype, False, **run)
    oracle, _ = train(
        "Nadam", NADAM_KWARGS, dtype, None, factory=tf_keras.optimizers.legacy.Nadam, **run
    )
    assert_bits_equal(got, want)
    assert_bits_equal(want, oracle)
    assert all(np.isfinite(np.asarray(x, np.float64)).all() for x in got.values())
    if HAVE_COMPILER:
        assert paths["fused"] == [f"v{i}:0" for i in range(len(shapes))], paths
        assert paths["per_variable"] == [], paths


@pytest.mark.parametrize("function", [False, True], ids=["eager", "function"])
def test_nadam_momentum_cache_updated_once_per_step_with_two_dtype_groups(function):
    """Two (device, dtype) groups: the cache (first variable's dtype) advances once a step."""
    import tf_keras

    results = []
    for factory in (None, lambda **kw: keras_opt.Nadam(fused_kernels=False, **kw),
                    tf_keras.optimizers.legacy.Nadam):  # fmt: skip
        rng = np.random.default_rng(2)
        dtypes = (tf.float32, tf.float16, tf.float32, tf.float64)
        vs = [tf.Variable(tf.cast(rng.uniform(-1, 1, 5), d)) for d in dtypes]
        opt = keras_opt.Nadam(**NADAM_KWARGS) if factory is None else factory(**NADAM_KWARGS)
        stream = [[tf.cast(rng.standard_normal(5), d) for d in dtypes] for _ in range(4)]

        def step(gs, opt=opt, vs=vs):
            opt.apply_gradients(zip(gs, vs))

        if function:
            step = tf.function(step)
        for gs in stream:
            step(gs)
        assert opt.weights[1].name.startswith("Nadam/momentum_cache")
        state = [opt.weights[1].numpy()] + [v.numpy() for v in vs]
        state += [opt.get_slot(v, s).numpy() for v in vs for s in ("m", "v")]
        results.append((state, kernels.last_paths(opt)))
    # The cache after 4 steps: prod of mu_t = beta_1 * (1 - 0.5 * 0.96^(decay * t)).
    mu = [0.9 * (1 - 0.5 * 0.96 ** (0.01 * t)) for t in range(1, 5)]
    np.testing.assert_allclose(results[0][0][0], np.prod(mu), rtol=1e-6)
    for other in results[1:]:
        for a, b in zip(results[0][0], other[0]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if HAVE_COMPILER:
        assert len(results[0][1]["fused"]) == 4 and results[0][1]["per_variable"] == []
    assert results[1][1]["fused"] == []


def test_nadam_subclass_overriding_the_update_falls_back():
    class Overrides(keras_opt.Nadam):
        def _prepare_local(self, var_device, var_dtype, apply_state):
            super()._prepare_local(var_device, var_dtype, apply_state)

    class SparseOverride(keras_opt.Nadam):
        def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
            return super()._resource_apply_sparse(grad, var, indices, apply_state)

    dense, table = tf.Variable([1.0, 2.0], name="dense"), tf.Variable(tf.ones([4, 2]), name="t")
    grads = [
        tf.constant([0.1, 0.2]),
        tf.IndexedSlices(tf.ones([1, 2]), tf.constant([2]), tf.constant([4, 2])),
    ]
    opt = Overrides()
    opt.apply_gradients(zip(grads, [dense, table]))
    assert kernels.last_paths(opt)["fused"] == []
    assert "no fused kernel" in kernels.last_paths(opt)["reason"]
    opt = SparseOverride()
    opt.apply_gradients(zip(grads, [dense, table]))
    paths = kernels.last_paths(opt)
    if HAVE_COMPILER:  # the dense variable still runs fused
        assert paths["fused"] == ["dense:0"] and paths["per_variable"] == ["t:0"], paths
        assert "sparse gradient" in paths["reason"]


@needs_library
def test_nadam_graph_has_one_fused_op_per_group_and_no_composite_update():
    vars_ = [tf.Variable(tf.zeros([3], d)) for d in (tf.float32, tf.float16, tf.float32)]
    table = tf.Variable(tf.zeros([4, 2]))
    opt = keras_opt.Nadam()

    @tf.function
    def step():
        grads = [(tf.ones([3], v.dtype), v) for v in vars_]
        rows = tf.IndexedSlices(tf.ones([2, 2]), tf.constant([1, 3]), tf.constant([4, 2]))
        opt.apply_gradients(grads + [(rows, table)])

    ops = step.get_concrete_function().graph.get_operations()
    fused = [op for op in ops if op.type == "KerasOptFusedApplyGroup"]
    assert sorted(op.get_attr("T").name for op in fused) == ["float16", "float32"]
    assert all(op.get_attr("rule") == dispatch.NADAM for op in fused)
    assert len([op for op in ops if op.type == "KerasOptFusedSparseApplyNadam"]) == 1
    assert not [op for op in ops if op.type in ("ResourceScatterAdd", "Sqrt")]


@needs_library
def test_sparse_nadam_op_errors_name_the_problem():
    module = build.load()
    w, m, v = (tf.Variable(tf.zeros([3, 2]), name=n) for n in ("w", "m", "v"))
    scalars = dict(
        beta1=0.9,
        beta2=0.999,
        one_minus_m_schedule_next=0.5,
        v_t_prime_denominator=0.1,
        m_t_1=0.4,
        neg_lr=-0.1,
        epsilon=1e-7,
    )
    rows = dict(g_term=tf.ones([1, 2]), m_scaled=tf.ones([1, 2]), v_scaled=tf.ones([1, 2]))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"indices\[0\] = 3"):
        module.keras_opt_fused_sparse_apply_nadam(
            var=w.handle, m=m.handle, v=v.handle, indices=tf.constant([3]), **rows, **scalars
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="g_term, m_scaled and v_scaled"):
        module.keras_opt_fused_sparse_apply_nadam(
            var=w.handle,
            m=m.handle,
            v=v.handle,
            indices=tf.constant([0, 1], tf.int64),
            **rows,
            **scalars,
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than once"):
        module.keras_opt_fused_sparse_apply_nadam(
            var=w.handle, m=m.handle, v=w.handle, indices=tf.constant([0]), **rows, **scalars
        )
    for x in (w, m, v):
        np.testing.assert_array_equal(x.numpy(), np.zeros([3, 2]))


LION_KWARGS = dict(learning_rate=0.05, beta_1=0.8, beta_2=0.95)


@pytest.mark.parametrize("function", [False, True], ids=["eager", "function"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
def test_lion_fused_equals_per_variable(dtype, sparse, function):
    """Dense Lion is one fused rule; a sparse Lion step (lazy rows) stays per variable."""
    shapes = SHAPES[:-1] + [(6, 3)] if sparse else SHAPES
    run = dict(function=function, sparse=sparse, shapes=shapes)
    got, paths = train("Lion", LION_KWARGS, dtype, True, **run)
    want, _ = train("Lion", LION_KWARGS, dtype, False, **run)
    assert_bits_equal(got, want)
    if HAVE_COMPILER:
        dense = [f"v{i}:0" for i in range(len(shapes) - (1 if sparse else 0))]
        assert paths["fused"] == dense, paths
        assert paths["per_variable"] == ([f"v{len(shapes) - 1}:0"] if sparse else []), paths


@pytest.mark.parametrize("function", [False, True], ids=["eager", "function"])
def test_lion_with_weight_decay_equals_per_variable(function):
    kwargs = dict(LION_KWARGS, weight_decay=0.1)
    got, paths = train("Lion", kwargs, tf.float32, True, function=function)
    want, _ = train("Lion", kwargs, tf.float32, False, function=function)
    assert_bits_equal(got, want)
    if HAVE_COMPILER:
        assert not paths["per_variable"], paths


def _single_step(opt, var, function):
    def step(grad):
        opt.apply_gradients([(grad, var)])

    return tf.function(step) if function else step


@pytest.mark.parametrize("function", [False, True], ids=["eager", "function"])
def test_lion_sign_of_zero_and_nan_like_tf_sign(function):
    """tf.sign gives +0 for -0 and +0, and NaN for NaN: the fused rule too (bits)."""
    init = np.array([1.0, -0.0, 0.0, 2.0, -3.0], np.float32)
    grads = [
        np.array([np.nan, -0.0, 0.0, 1.0, -1.0], np.float32),
        np.array([1.0, -0.0, -0.0, -2.0, 0.5], np.float32),
    ]
    out = {}
    for fused in (True, False):
        var = tf.Variable(init)
        opt = keras_opt.Lion(fused_kernels=fused, **LION_KWARGS)
        step = _single_step(opt, var, function)
        for g in grads:
            step(tf.constant(g))
        out[fused] = (var.numpy(), opt.get_slot(var, "momentum").numpy())
        if fused and HAVE_COMPILER:
            assert kernels.last_paths(opt)["fused"] == [var.name]
    for a, b in zip(out[True], out[False]):
        np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))
    assert np.isnan(out[True][0][0])
