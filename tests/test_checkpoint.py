"""Checkpoints: keras_opt and tf_keras legacy read each other's, and nothing is lost.

The oracle is always the optimizer that never stopped: library A trains, saves a
`tf.train.Checkpoint`, and keeps training; library B restores into fresh
objects and trains the same steps. Variables, every slot and ``iter`` must then
be bit-for-bit equal (both libraries run the same kernels). Both directions,
every optimizer, dense and sparse gradients, eager and `tf.function`, and both
orders: restore into a fresh optimizer (slots created from or after the
checkpoint: deferred restoration) and `build` then restore.

Also here: model variables created at the first step after the restore,
`tf.train.CheckpointManager`, MirroredStrategy, ShardedVariable (the tf_keras
flaw that loses shard slots and keras_opt's fix: in-process with a
ShardedVariable built directly, and under ParameterServerStrategy in
tests/workers/checkpoint_pss.py), mismatched checkpoints, a golden checkpoint
written by tf_keras (tests/make_golden_checkpoint.py), and a training process
killed with SIGKILL and resumed (tests/workers/checkpoint_crash.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tf_keras.optimizers import legacy as tf_keras_legacy

import keras_opt
from keras_opt.optimizer_v2.checkpointing import CheckpointMismatchWarning

from cases import (
    MODERN_CASES,
    assert_same_state,
    case_id,
    gradient_stream,
    initial_values,
    to_tf_grad,
)
from cases import optimizer_state as state

LIBS = {"tf_keras": tf_keras_legacy, "keras_opt": keras_opt}
DIRECTIONS = [("tf_keras", "keras_opt"), ("keras_opt", "tf_keras")]

# One configuration per optimizer, chosen to have the most slots.
CKPT_CASES = [
    ("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    ("Adam", dict(learning_rate=0.1, amsgrad=True)),
    ("Adamax", dict(learning_rate=0.1)),
    ("Nadam", dict(learning_rate=0.1)),
    ("Adagrad", dict(learning_rate=0.1)),
    ("Adadelta", dict(learning_rate=1.0)),
    ("RMSprop", dict(learning_rate=0.1, momentum=0.5, centered=True)),
    ("Ftrl", dict(learning_rate=0.1, l2_shrinkage_regularization_strength=0.1)),
]
BEFORE = 2  # steps trained before the checkpoint (of cases.STEPS)

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
GOLDEN_DIR = os.path.join(TESTS_DIR, "data", "golden_tf_keras_ckpt")
WORKERS = {
    name: os.path.join(TESTS_DIR, "workers", f"checkpoint_{name}.py") for name in ("crash", "pss")
}


def make_variables(start: bool = True):
    w0, b0 = initial_values(np.float32)
    if not start:  # restored values must replace these
        w0, b0 = np.zeros_like(w0), np.zeros_like(b0)
    return (
        tf.Variable(w0, name="w"),
        tf.Variable(w0[::-1].copy(), name="e"),
        tf.Variable(b0, name="b"),
    )


class Model(tf.Module):
    """cases.py's matrix twice (``w``: dense gradients, ``e``: IndexedSlices with a
    repeated index, as an embedding gets) and its vector ``b``."""

    def __init__(self, start: bool = True):
        super().__init__()
        self.w, self.e, self.b = make_variables(start)

    @property
    def vars(self):
        return [self.w, self.e, self.b]


# cases.STEPS steps of (dense gradient of w, sparse gradient of e, gradient of b).
GRADS = [
    (dense_w, sparse_e, grad_b)
    for (dense_w, grad_b), (sparse_e, _) in zip(gradient_stream(False), gradient_stream(True))
]


def make_step(opt, model, mode):
    def step(grad_w, grad_e, grad_b):
        opt.apply_gradients(zip([grad_w, grad_e, grad_b], model.vars))

    return tf.function(step) if mode == "function" else step


def run(step, grads):
    for grad_w, grad_e, grad_b in grads:
        step(
            to_tf_grad(grad_w, tf.float32),
            to_tf_grad(grad_e, tf.float32),
            tf.constant(grad_b, tf.float32),
        )


def build(opt, var_list):
    """`build` for keras_opt; tf_keras legacy has only the private method it wraps."""
    if isinstance(opt, keras_opt.Optimizer):
        opt.build(var_list)
    else:
        with tf.name_scope(opt._name):
            opt._create_all_weights(var_list)


def checkpoint(model, opt):
    return tf.train.Checkpoint(model=model, optimizer=opt)


# ------------------------------------------------------ cross-library round trips
@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Library A's uninterrupted run, once per (library, optimizer config, mode).

    Returns the checkpoint written after BEFORE steps and the state after all
    steps. A runs in the mode B runs in: eager and tf.function results can
    differ in the last bit (Adam and Nadam here, in both libraries).
    """
    cache = {}

    def get(lib_name, case, mode):
        key = (lib_name, repr(case), mode)
        if key not in cache:
            name, kwargs = case
            model, opt = Model(), getattr(LIBS[lib_name], name)(**kwargs)
            step = make_step(opt, model, mode)
            run(step, GRADS[:BEFORE])
            directory = tmp_path_factory.mktemp(f"{lib_name}-{name}-{mode}")
            path = checkpoint(model, opt).save(str(directory / "ckpt"))
            run(step, GRADS[BEFORE:])
            cache[key] = (path, state(opt, model.vars))
        return cache[key]

    return get


# The modern optimizers (no tf_keras twin) round-trip through keras_opt itself.
ROUND_TRIPS = [(d, c) for d in DIRECTIONS for c in CKPT_CASES] + [
    (("keras_opt", "keras_opt"), c) for c in MODERN_CASES
]


@pytest.mark.parametrize("restore", ["deferred", "build"])
@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize(
    "direction, case", ROUND_TRIPS, ids=[f"{d[0]}-to-{d[1]}-{case_id(c)}" for d, c in ROUND_TRIPS]
)
def test_restore_continues_like_uninterrupted(direction, case, mode, restore, written):
    """Dense (``w``) and sparse (``e``) gradients in each run."""
    path, want = written(direction[0], case, mode)
    name, kwargs = case
    model, opt = Model(start=False), getattr(LIBS[direction[1]], name)(**kwargs)
    if restore == "build":
        build(opt, model.vars)
    status = checkpoint(model, opt).restore(path)
    step = make_step(opt, model, mode)
    run(step, GRADS[BEFORE : BEFORE + 1])
    status.assert_consumed()
    run(step, GRADS[BEFORE + 1 :])
    assert_same_state(state(opt, model.vars), want)
    assert int(want["iter"]) == len(GRADS)
    if direction[1] == "keras_opt":  # no stray or missing optimizer weights
        fresh = getattr(keras_opt, name)(**kwargs)
        fresh.build(Model().vars)
        assert len(opt.weights) == len(fresh.weights)


def test_adam_checkpoint_restores_into_adamw_and_lazy_adam(written):
    """AdamW and LazyAdam keep Adam's slots and hyperparameters: an Adam checkpoint fits.

    AdamW with ``weight_decay=0`` then continues exactly as the uninterrupted Adam
    (the decay stage subtracts ``var * 0``); LazyAdam restores the same values.
    """
    adam_case = CKPT_CASES[1]
    path, want = written("keras_opt", adam_case, "eager")
    model, opt = Model(start=False), keras_opt.AdamW(weight_decay=0.0, **adam_case[1])
    status = checkpoint(model, opt).restore(path)
    step = make_step(opt, model, "eager")
    run(step, GRADS[BEFORE : BEFORE + 1])
    status.assert_consumed()
    run(step, GRADS[BEFORE + 1 :])
    assert_same_state(state(opt, model.vars), want)
    restored = {}
    for cls in (keras_opt.Adam, keras_opt.LazyAdam):
        model, opt = Model(start=False), cls(**adam_case[1])
        opt.build(model.vars)
        checkpoint(model, opt).restore(path).assert_consumed()
        restored[cls.__name__] = opt.get_weights()
    assert len(restored["Adam"]) == len(restored["LazyAdam"]) > 1
    for a, b in zip(restored["Adam"], restored["LazyAdam"]):
        np.testing.assert_array_equal(a, b)


# Models that create their variables on the first call. tf_keras layers build
# under `tf.init_scope`, so the slots are created from the checkpoint right away.
# A tf.Module that creates variables inside the first tf.function call does so
# under tf.function's variable creator: the optimizer then keeps the slot values
# (`_deferred_slot_restorations`) until its slots exist.
def keras_model(seed):
    tf_keras.utils.set_random_seed(seed)
    return tf_keras.Sequential([tf_keras.layers.Embedding(6, 3), tf_keras.layers.Dense(2)])


LAYER_INPUTS = [
    (tf.constant([[1, 4, 4]]), tf.constant([[[0.5, -1.0]] * 3])),
    (tf.constant([[0, 4, 2]]), tf.constant([[[1.0, 0.25]] * 3])),
    (tf.constant([[5, 1, 1]]), tf.constant([[[-0.5, 2.0]] * 3])),
    (tf.constant([[2, 3, 1]]), tf.constant([[[0.0, 1.5]] * 3])),
]


class LazyModel(tf.Module):
    """`Model`'s variables, created on the first step."""

    def __init__(self, start: bool = True):
        super().__init__()
        self.start, self.w, self.e, self.b = start, None, None, None

    @property
    def vars(self):
        return [self.w, self.e, self.b]

    def build(self):
        if self.w is None:
            self.w, self.e, self.b = make_variables(self.start)


def lazy_step(opt, model, mode):
    def step(grads):
        model.build()
        opt.apply_gradients(zip(grads, model.vars))

    step = tf.function(step) if mode == "function" else step

    def run_all(steps):
        for grad_w, grad_e, grad_b in steps:
            grads = (to_tf_grad(grad_w, tf.float32), to_tf_grad(grad_e, tf.float32))
            step(grads + (tf.constant(grad_b, tf.float32),))

    return run_all


def layers_step(opt, model, mode):
    def step(ids, target):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(ids) - target))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))

    step = tf.function(step) if mode == "function" else step

    def run_all(inputs):
        for ids, target in inputs:
            step(ids, target)

    return run_all


LAZY = {
    "tf_keras_layers": (keras_model, layers_step, LAYER_INPUTS),
    "tf_module": (lambda seed: LazyModel(start=seed == 1), lazy_step, GRADS),
}


@pytest.mark.parametrize(
    "kind, mode",
    [("tf_keras_layers", "eager"), ("tf_keras_layers", "function"), ("tf_module", "function")],
)
@pytest.mark.parametrize("direction", DIRECTIONS, ids=lambda d: f"{d[0]}-to-{d[1]}")
def test_restore_before_model_variables_exist(direction, kind, mode, tmp_path):
    writer, reader = (LIBS[name] for name in direction)
    name, kwargs = CKPT_CASES[1]
    make_model, make_runner, inputs = LAZY[kind]
    model_a, opt_a = make_model(1), getattr(writer, name)(**kwargs)
    run_a = make_runner(opt_a, model_a, mode)
    run_a(inputs[:BEFORE])
    path = checkpoint(model_a, opt_a).save(str(tmp_path / "ckpt"))
    run_a(inputs[BEFORE:])

    model_b, opt_b = make_model(2), getattr(reader, name)(**kwargs)
    status = checkpoint(model_b, opt_b).restore(path)
    make_runner(opt_b, model_b, mode)(inputs[BEFORE:])
    status.assert_consumed()
    variables = model_a.trainable_variables
    assert len(variables) == 3  # (Embedding, Dense kernel and bias, or w, e and b)
    assert_same_state(
        state(opt_b, model_b.trainable_variables, by_position=True),
        state(opt_a, variables, by_position=True),
    )


@pytest.mark.parametrize("writer", ["tf_keras", "keras_opt"])
def test_checkpoint_manager_round_trip(writer, tmp_path):
    name, kwargs = CKPT_CASES[6]
    grads = GRADS
    model_a, opt_a = Model(), getattr(LIBS[writer], name)(**kwargs)
    manager_a = tf.train.CheckpointManager(checkpoint(model_a, opt_a), str(tmp_path), 2)
    step_a = make_step(opt_a, model_a, "function")
    for i, grad in enumerate(grads):
        run(step_a, [grad])
        if i == BEFORE - 1:
            manager_a.save(checkpoint_number=opt_a.iterations)
    model_b, opt_b = Model(start=False), keras_opt.RMSprop(**kwargs)
    manager_b = tf.train.CheckpointManager(checkpoint(model_b, opt_b), str(tmp_path), 2)
    assert manager_b.latest_checkpoint.endswith(f"ckpt-{BEFORE}")
    status = manager_b.checkpoint.restore(manager_b.latest_checkpoint)
    step_b = make_step(opt_b, model_b, "function")
    run(step_b, grads[BEFORE:])
    status.assert_consumed()
    assert_same_state(state(opt_b, model_b.vars), state(opt_a, model_a.vars))


def test_mirrored_strategy_deferred_restore(tmp_path):
    """Under a strategy, slots restored into fresh objects are MirroredVariables."""
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    name, kwargs = CKPT_CASES[1]
    grads = GRADS

    def make(lib, start):
        with strategy.scope():
            model, opt = Model(start), getattr(lib, name)(**kwargs)

        @tf.function
        def step(*grads):
            strategy.run(lambda *g: opt.apply_gradients(zip(g, model.vars)), grads)

        return model, opt, step

    model_a, opt_a, step_a = make(tf_keras_legacy, True)
    run(step_a, grads[:BEFORE])
    path = checkpoint(model_a, opt_a).save(str(tmp_path / "ckpt"))
    run(step_a, grads[BEFORE:])
    model_b, opt_b, step_b = make(keras_opt, False)
    with strategy.scope():
        status = checkpoint(model_b, opt_b).restore(path)
    run(step_b, grads[BEFORE:])
    status.assert_consumed()
    assert isinstance(opt_b.get_slot(model_b.w, "m"), tf.distribute.DistributedValues)
    assert_same_state(state(opt_b, model_b.vars), state(opt_a, model_a.vars))


# ----------------------------------------------------------------- ShardedVariable
# ParameterServerStrategy with a variable_partitioner gives the model a
# ShardedVariable and the optimizer its shards; the checkpoint holds the full
# variable and its full slots. The same objects, built directly (shards named as
# the strategy names them), reproduce what happens on restore without a cluster.
SHARD_ROWS = (3, 2)


class ShardedModel(tf.Module):
    def __init__(self, start: bool = True):
        super().__init__()
        rng = np.random.default_rng(3 if start else 4)
        shards = [
            tf.Variable(rng.uniform(-1, 1, (rows, 2)).astype(np.float32), name=f"emb/part_{i}")
            for i, rows in enumerate(SHARD_ROWS)
        ]
        self.emb = tf.__internal__.distribute.ShardedVariable(shards, name="emb")


SHARD_GRADS = [
    # (sparse gradient of shard 0, dense gradient of shard 1)
    (([[1.0, -2.0], [0.5, 0.5]], [2, 0]), [[0.25, 1.0], [-1.0, 0.5]]),
    (([[-1.0, 0.5], [2.0, 1.0]], [1, 1]), [[1.5, -0.5], [0.5, 0.25]]),
    (([[0.5, 0.5], [-0.5, 1.5]], [0, 2]), [[-0.25, 1.0], [1.0, -1.0]]),
]


def sharded_step(opt, model, mode):
    def step(values, indices, dense):
        shard_0, shard_1 = model.emb.variables
        sparse = tf.IndexedSlices(values, indices, tf.constant([SHARD_ROWS[0], 2]))
        opt.apply_gradients([(sparse, shard_0), (dense, shard_1)])

    return tf.function(step) if mode == "function" else step


def run_sharded(step, grads):
    for (values, indices), dense in grads:
        step(tf.constant(values), tf.constant(indices), tf.constant(dense))


def sharded_state(opt, model):
    out = {"iter": opt.iterations.numpy(), "emb": model.emb.numpy()}
    for slot in opt.get_slot_names():
        out[f"emb/{slot}"] = opt.get_slot(model.emb, slot).numpy()
    return out


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("case", [CKPT_CASES[1], CKPT_CASES[4]], ids=lambda c: c[0])
def test_sharded_slots_restored_before_slots_exist(case, mode, tmp_path):
    name, kwargs = case
    results = {}
    for lib_name, lib in LIBS.items():
        model_a, opt_a = ShardedModel(), getattr(lib, name)(**kwargs)
        step_a = sharded_step(opt_a, model_a, mode)
        run_sharded(step_a, SHARD_GRADS[:2])
        path = checkpoint(model_a, opt_a).save(str(tmp_path / lib_name / "ckpt"))
        saved = sharded_state(opt_a, model_a)
        run_sharded(step_a, SHARD_GRADS[2:])

        model_b, opt_b = ShardedModel(start=False), getattr(lib, name)(**kwargs)
        status = checkpoint(model_b, opt_b).restore(path)
        step_b = sharded_step(opt_b, model_b, mode)
        run_sharded(step_b, SHARD_GRADS[2:])
        results[lib_name] = (status, saved, opt_a, model_a, opt_b, model_b)

    # keras_opt: every shard slot restored, training continues bit-for-bit.
    status, _, opt_a, model_a, opt_b, model_b = results["keras_opt"]
    status.assert_consumed()
    assert_same_state(sharded_state(opt_b, model_b), sharded_state(opt_a, model_a))
    assert len(opt_b.weights) == len(opt_a.weights)

    # tf_keras (the known flaw): the restored value went into a stray full-size
    # variable, and the shard slots started from their initial values.
    status, saved, opt_a, model_a, opt_b, model_b = results["tf_keras"]
    slot = opt_b.get_slot_names()[0]
    fresh, fresh_opt = ShardedModel(start=False), getattr(tf_keras_legacy, name)(**kwargs)
    with tf.name_scope(fresh_opt._name):
        fresh_opt._create_all_weights(fresh.emb.variables)
    initial = fresh_opt.get_slot(fresh.emb, slot).numpy()
    stray = [w for w in opt_b.weights if w.name.startswith("emb/") or "ShardedVariable" in w.name]
    assert stray and any(np.array_equal(w.numpy(), saved[f"emb/{slot}"]) for w in stray)
    assert len(opt_b.weights) > len(opt_a.weights)
    # One step from the initial slot value, not from the saved one.
    one_step, one_opt = ShardedModel(start=False), getattr(tf_keras_legacy, name)(**kwargs)
    one_opt.iterations.assign(BEFORE)
    run_sharded(sharded_step(one_opt, one_step, "eager"), SHARD_GRADS[2:])
    np.testing.assert_array_equal(
        opt_b.get_slot(model_b.emb, slot).numpy(), one_opt.get_slot(one_step.emb, slot).numpy()
    )
    assert not np.array_equal(initial, saved[f"emb/{slot}"])


def test_sharded_build_then_restore(tmp_path):
    name, kwargs = CKPT_CASES[1]
    model_a, opt_a = ShardedModel(), keras_opt.Adam(**kwargs)
    step_a = sharded_step(opt_a, model_a, "function")
    run_sharded(step_a, SHARD_GRADS[:2])
    path = checkpoint(model_a, opt_a).save(str(tmp_path / "ckpt"))
    run_sharded(step_a, SHARD_GRADS[2:])
    model_b, opt_b = ShardedModel(start=False), keras_opt.Adam(**kwargs)
    opt_b.build([model_b.emb])  # a ShardedVariable is built through its shards
    status = checkpoint(model_b, opt_b).restore(path)
    status.assert_consumed()  # get_slot returns the object the checkpoint bound
    run_sharded(sharded_step(opt_b, model_b, "function"), SHARD_GRADS[2:])
    assert_same_state(sharded_state(opt_b, model_b), sharded_state(opt_a, model_a))


def test_parameter_server_strategy_sharded_restore(tmp_path):
    """The real setting (tests/workers/checkpoint_pss.py): an in-process cluster,
    a sharded embedding, Adam restored before its slots exist."""
    out = tmp_path / "pss.json"
    proc = start_worker(WORKERS["pss"], [str(out), str(tmp_path)], str(tmp_path / "pss.log"))
    wait_worker(proc, time.monotonic() + 180, str(tmp_path / "pss.log"))
    results = json.loads(out.read_text())
    ours, theirs = results["keras_opt"], results["tf_keras"]
    assert ours["same_keys"] and ours["consumed"] and all(ours["equal"].values()), ours
    # No stray variables (names of slots restored eagerly lack the "Adam/" scope, as in tf_keras).
    assert len(ours["weights"]) == len(ours["uninterrupted_weights"])
    # tf_keras: the shard slots started over, so training diverged.
    assert not theirs["equal"]["emb/m"] and not theirs["equal"]["emb"], theirs
    assert len(theirs["weights"]) > len(theirs["uninterrupted_weights"])


# ----------------------------------------------------------------------- mismatches
def train_and_save(lib, name, kwargs, path):
    model, opt = Model(), getattr(lib, name)(**kwargs)
    run(make_step(opt, model, "eager"), GRADS[:BEFORE])
    return checkpoint(model, opt).save(path)


def restore_and_continue(lib, name, kwargs, path):
    model, opt = Model(start=False), getattr(lib, name)(**kwargs)
    status = checkpoint(model, opt).restore(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(make_step(opt, model, "eager"), GRADS[BEFORE:])
    status.expect_partial()
    return model, opt, status, [w for w in caught if w.category is CheckpointMismatchWarning]


@pytest.mark.parametrize("writer", ["tf_keras", "keras_opt"])
@pytest.mark.parametrize(
    "pair",
    [
        (("Adam", dict(learning_rate=0.1)), ("SGD", dict(learning_rate=0.1))),
        (("Adam", dict(learning_rate=0.1)), ("SGD", dict(learning_rate=0.1, momentum=0.9))),
        (("SGD", dict(learning_rate=0.1, momentum=0.9)), ("Adam", dict(learning_rate=0.1))),
    ],
    ids=["Adam-to-SGD", "Adam-to-SGDmomentum", "SGDmomentum-to-Adam"],
)
def test_other_optimizer_class(writer, pair, tmp_path):
    """Values restore as in tf_keras; foreign slots are named and not kept."""
    (saved_name, saved_kwargs), (name, kwargs) = pair
    path = train_and_save(LIBS[writer], saved_name, saved_kwargs, str(tmp_path / "ckpt"))
    theirs, their_opt, _, _ = restore_and_continue(tf_keras_legacy, name, kwargs, path)
    ours, our_opt, _, caught = restore_and_continue(keras_opt, name, kwargs, path)
    for a, b in zip(ours.vars, theirs.vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert our_opt.iterations.numpy() == their_opt.iterations.numpy() == len(GRADS)

    foreign = sorted({"Adam": ["m", "v"], "SGD": ["momentum"]}[saved_name])
    # tf_keras keeps the other optimizer's slots as slots of its own.
    assert set(foreign) <= set(their_opt.get_slot_names())
    # keras_opt: only its own slots, and a warning naming variable and slots.
    fresh = getattr(keras_opt, name)(**kwargs)
    fresh.build(Model().vars)
    assert our_opt.get_slot_names() == fresh.get_slot_names()
    assert [w.name for w in our_opt.weights] == [w.name for w in fresh.weights]
    messages = [str(w.message) for w in caught]
    for var in ("w:0", "e:0", "b:0"):
        assert any(var in m and str(foreign) in m for m in messages), messages


def test_foreign_slot_into_built_optimizer_warns_at_restore(tmp_path):
    path = train_and_save(tf_keras_legacy, "Adam", dict(learning_rate=0.1), str(tmp_path / "c"))
    model, opt = Model(start=False), keras_opt.SGD(learning_rate=0.1, momentum=0.9)
    opt.build(model.vars)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = checkpoint(model, opt).restore(path)
    messages = sorted(str(w.message) for w in caught if w.category is CheckpointMismatchWarning)
    assert len(messages) == 6  # m and v, of w, e and b
    for slot, var in [(slot, var) for slot in "mv" for var in "web"]:
        assert any(f"['{slot}'] of variable {var}:0" in m and "['momentum']" in m for m in messages)
    # TensorFlow's own checks fail, as for tf_keras (SGD's momentum is not in the file).
    with pytest.raises(AssertionError):
        status.assert_consumed()
    status.expect_partial()
    assert opt.get_slot_names() == ["momentum"]


def test_missing_slots_are_named(tmp_path):
    """Adam into Adam(amsgrad): m and v restored, vhat starts at zero, as in tf_keras."""
    path = train_and_save(keras_opt, "Adam", dict(learning_rate=0.1), str(tmp_path / "c"))
    kwargs = dict(learning_rate=0.1, amsgrad=True)
    theirs, their_opt, _, _ = restore_and_continue(tf_keras_legacy, "Adam", kwargs, path)
    ours, our_opt, _, caught = restore_and_continue(keras_opt, "Adam", kwargs, path)
    assert_same_state(state(our_opt, ours.vars), state(their_opt, theirs.vars))
    assert any("['vhat']" in str(w.message) and "w:0" in str(w.message) for w in caught)


@pytest.mark.parametrize("built", [False, True], ids=["fresh", "built"])
def test_shape_mismatch(built, tmp_path):
    path = train_and_save(tf_keras_legacy, "Adam", dict(learning_rate=0.1), str(tmp_path / "c"))
    outcome = {}
    for lib_name, lib in LIBS.items():
        var = tf.Variable(np.zeros((4, 3), np.float32), name="w")
        model = tf.Module()
        model.w = var
        opt = lib.Adam(learning_rate=0.1)
        if built:
            build(opt, [var])
        # TensorFlow names the model variable, for both libraries.
        with pytest.raises(ValueError, match=r"shape \(5, 3\).*shape \(4, 3\) and name w:0"):
            checkpoint(model, opt).restore(path)
        try:
            opt.apply_gradients([(tf.ones((4, 3)), var)])
            outcome[lib_name] = None
        except (ValueError, tf.errors.InvalidArgumentError) as error:
            outcome[lib_name] = (type(error), str(error), [tuple(w.shape) for w in opt.weights])
    if built:
        # The existing (4, 3) slots were not touched by the failed restore.
        assert outcome == {"tf_keras": None, "keras_opt": None}
        return
    # tf_keras made (5, 3) slots from the checkpoint; its kernel then fails.
    assert outcome["tf_keras"][0] is tf.errors.InvalidArgumentError
    assert (5, 3) in outcome["tf_keras"][2]
    # keras_opt never made a slot of the wrong shape and names the slot and both shapes.
    kind, message, shapes = outcome["keras_opt"]
    assert kind is ValueError and (5, 3) not in shapes
    assert "Adam/w/m:0" in message and "[5, 3]" in message and "[4, 3]" in message


# -------------------------------------------------------------- golden checkpoint
def golden_model(entry):
    model = tf.Module()
    for var_name, spec in entry["variables"].items():
        zeros = np.zeros(spec["shape"], np.float32)
        setattr(model, var_name, tf.Variable(zeros, name=var_name))
    return model


with open(os.path.join(GOLDEN_DIR, "expected.json")) as _f:
    GOLDEN = json.load(_f)


@pytest.mark.parametrize("key", sorted(GOLDEN["optimizers"]))
def test_golden_tf_keras_checkpoint(key):
    """A checkpoint tf_keras wrote (tests/make_golden_checkpoint.py) keeps loading."""
    entry = GOLDEN["optimizers"][key]
    model = golden_model(entry)
    opt = getattr(keras_opt, entry["class"])(**entry["config"])
    root = tf.train.Checkpoint(**{key: tf.train.Checkpoint(model=model, optimizer=opt)})
    status = root.restore(os.path.join(GOLDEN_DIR, GOLDEN["prefix"]))
    variables = [getattr(model, n) for n in entry["variables"]]
    opt.build(variables)
    status.assert_existing_objects_matched().expect_partial()  # the other parts are not read
    assert opt.get_config() == entry["get_config"]
    assert int(opt.iterations.numpy()) == entry["iter"]
    for var_name, spec in entry["variables"].items():
        var = getattr(model, var_name)
        np.testing.assert_array_equal(var.numpy(), np.float32(spec["value"]), err_msg=var_name)
        assert sorted(spec["slots"]) == sorted(opt.get_slot_names())
        for slot, value in spec["slots"].items():
            np.testing.assert_array_equal(
                opt.get_slot(var, slot).numpy(), np.float32(value), err_msg=f"{var_name}/{slot}"
            )
    # One more step, as tf_keras took it when it wrote the file.
    grads = [
        tf.IndexedSlices(
            tf.constant(entry["next_grads"][n]["values"], tf.float32),
            tf.constant(entry["next_grads"][n]["indices"]),
            tf.constant(entry["variables"][n]["shape"]),
        )
        if "indices" in entry["next_grads"][n]
        else tf.constant(entry["next_grads"][n]["values"], tf.float32)
        for n in entry["variables"]
    ]
    opt.apply_gradients(zip(grads, variables))
    for var_name, var in zip(entry["variables"], variables):
        np.testing.assert_array_equal(
            var.numpy(), np.float32(entry["after_next_step"][var_name]), err_msg=var_name
        )


# ------------------------------------------------------------------- crash test
def start_worker(script, args, log_path):
    """Starts a worker script in its own process group; stderr goes to ``log_path``."""
    log = open(log_path, "w")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(TESTS_DIR), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.Popen(
        [sys.executable, "-u", script, *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        start_new_session=True,
    )
    proc.log = log
    return proc


def kill_group(proc):
    """Kills the worker's whole process group if it still runs, and reaps it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()
    for stream in (proc.stdout, proc.log):
        if stream and not stream.closed:
            stream.close()


def wait_worker(proc, deadline, log_path):
    """Waits for a worker until ``deadline``; its stdout, or the test fails with its log."""
    try:
        out, _ = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        kill_group(proc)
        pytest.fail(f"worker passed its deadline:\n{open(log_path).read()[-3000:]}")
    proc.log.close()
    assert proc.returncode == 0, open(log_path).read()[-3000:]
    return out


def kill_after_step(proc, step, deadline):
    """SIGKILLs ``proc``'s group once it reports a step >= ``step``; returns that step."""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            return None  # the worker ended first
        if line.startswith("step ") and int(line.split()[1]) >= step:
            os.killpg(proc.pid, signal.SIGKILL)
            return int(line.split()[1])
    return None


CRASH_STEPS, CRASH_EVERY = 24, 4


@pytest.mark.parametrize("modern", [False, True], ids=["adam", "modern_cases"])
def test_sigkill_and_resume_equals_uninterrupted(modern, tmp_path):
    """Killed after a random step past a checkpoint, resumed: equal to never killed.

    ``modern_cases``: one model per cases.MODERN_CASES optimizer, in one process.
    """
    deadline = time.monotonic() + 240
    kill_after = int(np.random.default_rng(2024).integers(CRASH_EVERY + 1, CRASH_STEPS - 4))
    flags = ["--steps", str(CRASH_STEPS), "--every", str(CRASH_EVERY)] + ["--modern"] * modern
    logs = {name: str(tmp_path / f"{name}.log") for name in ("full", "crash", "resume")}

    def start(name, run_dir):
        args = ["--dir", str(tmp_path / run_dir), "--out", str(tmp_path / f"{name}.npz")]
        return start_worker(WORKERS["crash"], args + flags, logs[name])

    procs = [start("full", "full_run"), start("crash", "run")]
    try:
        full, crash = procs
        killed_at = kill_after_step(crash, kill_after, deadline)
        crash.wait(timeout=30)
        assert killed_at is not None, open(logs["crash"]).read()[-3000:]
        assert crash.returncode == -signal.SIGKILL
        assert not os.path.exists(tmp_path / "crash.npz")
        latest = tf.train.latest_checkpoint(str(tmp_path / "run"))
        resumed_from = int(latest.rsplit("-", 1)[1])
        assert CRASH_EVERY <= resumed_from <= killed_at < CRASH_STEPS

        procs.append(start("resume", "run"))
        resumed_out = wait_worker(procs[-1], deadline, logs["resume"])
        wait_worker(full, deadline, logs["full"])
    finally:
        for proc in procs:
            kill_group(proc)
    assert f"resumed at step {resumed_from}" in resumed_out
    got, want = np.load(tmp_path / "resume.npz"), np.load(tmp_path / "full.npz")
    assert sorted(got.files) == sorted(want.files) and len(want.files) > 3
    for key in want.files:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    iters = [key for key in want.files if key.endswith("iter")]
    assert len(iters) == (len(MODERN_CASES) if modern else 1)
    assert all(int(want[key]) == CRASH_STEPS for key in iters)
