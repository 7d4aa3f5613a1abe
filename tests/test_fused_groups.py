"""keras_opt.kernels.groups: a traced step passes one variable-group handle per fused group.

Inside a ``tf.function`` the fused dense update takes one ``KerasOptVarGroup``
handle instead of one handle per variable and slot (a function's per-call cost
grows with what it captures). These tests check what that must not change,
each against the per-variable path (``fused_kernels=False``, TensorFlow's own
kernels) or against the same fused op with every handle passed
(``KERAS_OPT_FUSED_GROUPS=0``): the numbers; the order of reads and writes of
the group's variables and slots around the update in the same function (also
inside a ``tf.cond`` branch, as LossScaleOptimizer applies); assignments,
``set_weights`` and checkpoint restores between calls of an already traced
step; checkpoint keys; the group's lifetime; bad input to the ops.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
import tensorflow as tf

import keras_opt
from keras_opt import kernels
from keras_opt.kernels import build
from keras_opt.kernels import groups as var_groups

from cases import CASES, case_id

needs_library = pytest.mark.skipif(
    not kernels.status()["available"], reason="keras_opt fused library not available"
)
pytestmark = needs_library

SHAPES = [(), (3,), (5, 4), (257,)]


def make_vars(seed=0, shapes=SHAPES, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [
        tf.Variable(rng.uniform(-1, 1, s).astype(dtype), name=f"v{i}") for i, s in enumerate(shapes)
    ]


def grad_stream(steps, seed=1, shapes=SHAPES, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return [
        [tf.constant(rng.standard_normal(s).astype(dtype)) for s in shapes] for _ in range(steps)
    ]


def state(opt, variables):
    out = {"iter": opt.iterations.numpy()}
    for i, v in enumerate(variables):
        out[f"v{i}"] = v.numpy()
        for slot in opt.get_slot_names():
            out[f"v{i}/{slot}"] = opt.get_slot(v, slot).numpy()
    return out


def assert_same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def make_step(opt, variables, read=None):
    """A traced step; returns ``read``'s value after it when given."""

    @tf.function
    def step(grads):
        opt.apply_gradients(zip(grads, variables))
        return None if read is None else read.read_value()

    return step


def op_types(fn, *args):
    graph = fn.get_concrete_function(*args).graph
    return [op.type for op in graph.get_operations()]


def fused_cases():
    return [
        c
        for c in CASES
        if c[0] not in ("Adamax", "Adadelta") and c[1].get("learning_rate_power", -0.5) == -0.5
    ]


# ------------------------------------------------------------------ captures
def test_traced_step_captures_one_handle_per_group_not_one_per_variable(monkeypatch):
    shapes = [(4,)] * 40
    grads = grad_stream(1, shapes=shapes)[0]

    def captures():
        variables = make_vars(shapes=shapes)
        opt = keras_opt.Adam()

        @tf.function
        def step(grads):
            opt.apply_gradients(zip(grads, variables))

        return len(step.get_concrete_function(grads).captured_inputs), op_types(step, grads)

    n_group, types = captures()
    assert types.count("KerasOptFusedApplyGroup") == 1 and "KerasOptFusedApply" not in types
    monkeypatch.setenv("KERAS_OPT_FUSED_GROUPS", "0")
    n_handles, types = captures()
    assert types.count("KerasOptFusedApply") == 1 and "KerasOptFusedApplyGroup" not in types
    # 40 variables and 80 slots are passed one by one without the group.
    assert n_handles >= 120
    assert n_group <= n_handles - 119


def test_eager_steps_pass_the_handles():
    variables = make_vars()
    opt = keras_opt.Adam()
    opt.apply_gradients(zip(grad_stream(1)[0], variables))
    assert not getattr(opt, "_fused_groups", None)
    assert not var_groups.enabled()


# ------------------------------------------------------------------ numbers
@pytest.mark.parametrize("case", fused_cases(), ids=case_id)
def test_group_equals_handles_and_per_variable(case, monkeypatch):
    name, kwargs = case
    stream = grad_stream(3)

    def run(fused, groups_on):
        monkeypatch.setenv("KERAS_OPT_FUSED_GROUPS", "1" if groups_on else "0")
        variables = make_vars()
        opt = getattr(keras_opt, name)(fused_kernels=fused, **kwargs)

        @tf.function
        def step(grads):
            opt.apply_gradients(zip(grads, variables))

        for grads in stream:
            step(grads)
        kind = "KerasOptFusedApplyGroup" if groups_on else "KerasOptFusedApply"
        assert (kind in op_types(step, stream[0])) == fused
        return state(opt, variables)

    want = run(False, False)
    assert_same(run(True, True), want)
    assert_same(run(True, False), want)


# ------------------------------------------------------------------ ordering
def _ancestors(op):
    seen, todo = set(), [op]
    while todo:
        cur = todo.pop()
        for dep in list(cur.control_inputs) + [t.op for t in cur.inputs]:
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def _reading_step(opt, inner, variables):
    """A step that reads a variable and its slot m before and after applying."""

    @tf.function
    def step(grads):
        v, m = variables[-1], inner.get_slot(variables[-1], "m")
        before = (v.read_value(), m.read_value())
        opt.apply_gradients(zip(grads, variables))
        return before + (v.read_value(), m.read_value())

    return step


@pytest.mark.parametrize("scale", [False, True], ids=["plain", "loss_scale_cond"])
def test_reads_of_members_keep_their_order_around_the_group_update(scale):
    """Reads before the step see the old values, reads after it the new ones."""
    stream = grad_stream(4)
    results = {}
    for fused in (False, True):
        variables = make_vars()
        opt = keras_opt.Adam(fused_kernels=fused)
        inner = opt
        inner.build(variables)
        if scale:  # applies inside a tf.cond branch (finite gradients)
            opt = keras_opt.LossScaleOptimizer(inner)

        step = _reading_step(opt, inner, variables)
        outs = [[t.numpy() for t in step(g)] for g in stream]
        results[fused] = (outs, state(inner, variables))
        if fused:
            graph = step.get_concrete_function(stream[0]).graph
            reads = [op for op in graph.get_operations() if op.type == "ReadVariableOp"]
            # The op that takes the group's handle: the fused op itself, or
            # the If op whose branch holds it.
            (group,) = inner._fused_groups.values()
            group_t = graph.function_captures.by_val_internal[id(group.resource_handle)]
            update = [op for op in graph.get_operations() if any(t is group_t for t in op.inputs)]
            assert len(update) == 1, update
            update = update[0]
            assert update.type == ("If" if scale else "KerasOptFusedApplyGroup")
            ups = _ancestors(update)
            # The two reads of the function body before the step precede the
            # update, the two after it follow it (program order).
            returned = {t.op for t in _outputs(graph)}
            body = [op for op in reads if op in returned]
            assert len(body) == 4, body
            assert body[0] in ups and body[1] in ups
            assert update in _ancestors(body[2]) and update in _ancestors(body[3])
    for got, want in zip(results[True][0], results[False][0]):
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w)
    assert_same(results[True][1], results[False][1])


def _outputs(graph):
    """The tensors the function returns (through Identity ops)."""
    out = []
    for t in graph.outputs:
        while t.op.type == "Identity":
            t = t.op.inputs[0]
        out.append(t)
    return out


def test_weight_decay_assignments_precede_the_group_update():
    stream = grad_stream(3)
    got = {}
    for fused in (False, True):
        variables = make_vars()
        opt = keras_opt.AdamW(weight_decay=0.1, fused_kernels=fused)

        step = make_step(opt, variables, read=variables[0])
        got[fused] = ([step(g).numpy() for g in stream], state(opt, variables))
    for a, b in zip(got[True][0], got[False][0]):
        np.testing.assert_array_equal(a, b)
    assert_same(got[True][1], got[False][1])


# --------------------------------------------------- changes between calls
def test_assignments_between_calls_are_seen_by_a_traced_step():
    """The group holds the variables, not their buffers."""
    stream = grad_stream(4)
    got = {}
    for fused in (False, True):
        variables = make_vars()
        opt = keras_opt.Adam(fused_kernels=fused)

        step = make_step(opt, variables)
        step(stream[0])
        variables[1].assign(variables[1] * 0.5)
        opt.get_slot(variables[2], "v").assign(tf.fill([5, 4], 2.0))
        step(stream[1])
        weights = opt.get_weights()
        step(stream[2])
        opt.set_weights([w * 0 + 1 if w.ndim else w for w in weights])
        step(stream[3])
        got[fused] = state(opt, variables)
    assert_same(got[True], got[False])


def test_checkpoint_keys_unchanged_and_restore_seen_by_a_traced_step(tmp_path):
    stream = grad_stream(3)
    keys, states = {}, {}
    for fused in (False, True):
        variables = make_vars()
        opt = keras_opt.Adam(fused_kernels=fused)

        step = make_step(opt, variables)
        step(stream[0])
        ckpt = tf.train.Checkpoint(opt=opt, v=variables)
        path = ckpt.write(str(tmp_path / f"ck{fused}"))
        keys[fused] = sorted(k for k, _ in tf.train.list_variables(path))
        step(stream[1])
        ckpt.read(path).assert_consumed()  # back to after step 1, same traced step
        step(stream[2])
        states[fused] = state(opt, variables)
    assert keys[True] == keys[False]
    assert not [k for k in keys[True] if "group" in k]
    assert_same(states[True], states[False])


def test_group_is_dropped_with_its_variables():
    opt = keras_opt.SGD(momentum=0.9)
    variables = make_vars()
    step = make_step(opt, variables)
    step(grad_stream(1)[0])
    assert len(opt._fused_groups) == 1
    del step, variables
    gc.collect()
    assert not opt._fused_groups


def test_groups_are_reused_across_traces():
    opt = keras_opt.Adam()
    variables = make_vars()
    step = make_step(opt, variables)
    step(grad_stream(1)[0])
    step([g * 2 for g in grad_stream(1)[0]])
    make_step(opt, variables)(grad_stream(1)[0])
    assert len(opt._fused_groups) == 1
    # Another variable list is another group.
    make_step(opt, variables[:2])(grad_stream(1)[0][:2])
    assert len(opt._fused_groups) == 2


# ------------------------------------------------------------------ bad input
def test_group_op_checks_its_members_and_names_the_variable():
    module = build.load()
    v = tf.Variable(tf.zeros([3]), name="weights")
    m = tf.Variable(tf.zeros([3]), name="momentum_slot")
    group = module.keras_opt_var_group(members=[v.handle, m.handle], names=["weights", "slot_m"])
    one = tf.constant(1.0)
    with pytest.raises(tf.errors.InvalidArgumentError, match="group has 2 variables"):
        # Adam needs the variable and two slots.
        module.keras_opt_fused_apply_group(
            group=group, grad=[tf.ones([3])], coefs=[one] * 6, rule=0
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"variable weights\): \[3\] \[4\]"):
        module.keras_opt_fused_apply_group(
            group=group, grad=[tf.ones([4])], coefs=[one, one], rule=2
        )
    twice = module.keras_opt_var_group(members=[v.handle, v.handle])
    with pytest.raises(tf.errors.InvalidArgumentError, match="more than once"):
        module.keras_opt_fused_apply_group(
            group=twice, grad=[tf.ones([3])], coefs=[one, one], rule=2
        )
    with pytest.raises(tf.errors.InvalidArgumentError, match="names has 1 entries for 2"):
        module.keras_opt_var_group(members=[v.handle, m.handle], names=["weights"])
    np.testing.assert_array_equal(v.numpy(), np.zeros(3))


def test_savedmodel_of_a_step_with_a_group_loads_and_continues(tmp_path):
    """The group is exported with the model and rebuilt from the restored variables."""

    class Module(tf.Module):
        def __init__(self):
            super().__init__()
            self.v = make_vars()
            self.opt = keras_opt.Adam(learning_rate=0.1)

        @tf.function(input_signature=[[tf.TensorSpec(s, tf.float32) for s in SHAPES]])
        def train(self, grads):
            self.opt.apply_gradients(zip(grads, self.v))
            return self.v[-1].read_value()

    stream = grad_stream(4)
    module = Module()
    module.train(stream[0])
    assert "KerasOptFusedApplyGroup" in op_types(module.train)
    tf.saved_model.save(module, str(tmp_path / "m"))
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    for grads in stream[1:]:
        np.testing.assert_array_equal(loaded.train(grads).numpy(), module.train(grads).numpy())
    for a, b in zip(loaded.v, module.v):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # The checkpoint part of the SavedModel has no group either.
    keys = [k for k, _ in tf.train.list_variables(str(tmp_path / "m" / "variables" / "variables"))]
    assert not [k for k in keys if "group" in k]


class ServingModel(tf.Module):
    """One variable, its SGD optimizer and a serving function that reads it."""

    def __init__(self):
        super().__init__()
        self.w = make_vars(shapes=[(3, 2)])[0]
        self.opt = keras_opt.SGD(learning_rate=0.1)

    @tf.function(input_signature=[tf.TensorSpec([None, 3], tf.float32)])
    def serve(self, x):
        return x @ self.w


def test_savedmodel_with_the_optimizer_serves_where_keras_opt_is_absent(tmp_path):
    """A model saved with its optimizer (which built a group in a traced step) but
    without the step loads and serves in a process that never imports keras_opt:
    the group adds no keras_opt op to the SavedModel unless a saved function uses it.
    (Plain SGD: TensorFlow's loader restores slot variables through the revived
    optimizer's ``add_slot``, which a process without keras_opt, or without
    tf_keras for tf_keras's optimizers, does not have.)"""
    import dist_utils

    model = ServingModel()
    step = make_step(model.opt, [model.w])  # a standalone traced step, not saved
    step([tf.ones([3, 2])])
    assert model.opt._fused_groups
    tf.saved_model.save(model, str(tmp_path / "m"))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    np.save(tmp_path / "x.npy", x)
    dist_utils.run_worker(
        "serve_without_keras_opt.py",
        [str(tmp_path / "m"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        timeout_s=120,
    )
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), model.serve(tf.constant(x)).numpy())


def test_a_copied_optimizer_starts_without_groups():
    """copy.deepcopy(optimizer) works as in tf_keras; the copy's groups would hold
    the original's variables, so it has none until its own step is traced."""
    import copy

    variables = make_vars()
    opt = keras_opt.Adam()
    make_step(opt, variables)(grad_stream(1)[0])
    twin = copy.deepcopy(opt)
    assert len(opt._fused_groups) == 1 and not twin._fused_groups
    # Made eagerly even though the step was being traced: it keeps no graph alive.
    from tensorflow.python.eager import context

    (group,) = opt._fused_groups.values()
    assert group._destruction_context is context.eager_mode


def test_savedmodel_with_a_group_loads_where_the_library_cannot_be_built(tmp_path, monkeypatch):
    """keras_opt imported but no op library (e.g. no compiler on the serving machine):
    the model loads and serves; only a step that runs fused ops would need it."""

    model = ServingModel()
    make_step(model.opt, [model.w])([tf.ones([3, 2])])
    tf.saved_model.save(model, str(tmp_path / "m"))
    monkeypatch.setattr(build, "load", lambda: None)
    loaded = tf.saved_model.load(str(tmp_path / "m"))
    x = tf.ones([2, 3])
    np.testing.assert_array_equal(loaded.serve(x).numpy(), model.serve(x).numpy())
