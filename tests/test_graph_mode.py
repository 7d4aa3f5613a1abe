"""keras_opt in TF1 graph mode (``tf.compat.v1`` graphs and sessions), against tf_keras.

Each test builds its own ``tf.Graph`` and runs it in a ``tf.compat.v1.Session``,
so eager execution stays on for the rest of the test process. keras_opt and
tf_keras legacy build the same ops in the same kind of graph, so after every
session step their variables and optimizer weights must be equal bit for bit.

Decisions checked here (see also the README):

* Setting a hyperparameter whose variable exists (``opt.learning_rate = 0.05``)
  runs the assignment at once in the default session, like tf_keras's
  ``backend.set_value``; without a default session keras_opt raises a
  RuntimeError that says what to do (tf_keras would assign in a private Keras
  session that the user's session never sees).
* ``get_weights``/``set_weights``/``get_config`` read and write through the
  default session, and never initialize variables behind the user's back:
  ``tf.compat.v1.global_variables_initializer()`` covers the optimizer's
  variables (they are in the global collection). Without a default session,
  ``get_weights``/``get_config`` read through ``tf_keras.backend.get_session()``
  as tf_keras does (so they agree with the user's Keras code); without tf_keras,
  hyperparameters still equal to their Python numbers need no session.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest
import tensorflow as tf
from tf_keras.optimizers import legacy as tf_keras_legacy

import keras_opt
from keras_opt import kernels
from keras_opt.optimizer_v2 import variables as variables_lib

import dist_utils
from cases import CASES, NAMES, STEPS, VAR_SHAPE, case_id, gradient_stream, initial_values

LIBS = {"keras_opt": keras_opt, "tf_keras": tf_keras_legacy}
v1 = tf.compat.v1

# One configuration per optimizer plus the variants that take another kernel or
# code path in the update (Nesterov momentum, AMSGrad, centered RMSprop with
# momentum, FTRL with regularization). Legacy decay, the remaining momentum
# variants and FTRL shrinkage change no graph-mode behaviour and are covered
# eagerly and in tf.function by test_parity.py.
GRAPH_CASES = [
    case
    for case in CASES
    if case_id(case)
    in {
        "SGD",
        "SGD-momentum=0.9-nesterov=True",
        "Adam",
        "Adam-amsgrad=True",
        "Adamax",
        "Nadam",
        "Adagrad",
        "Adadelta",
        "RMSprop",
        "RMSprop-momentum=0.5-centered=True",
        "Ftrl-learning_rate_power=-0.7-l1_regularization_strength=0.01"
        "-l2_regularization_strength=0.02-beta=0.1",
    }
]
assert len(GRAPH_CASES) == 11

# (KerasOptFusedSparseApply: keras_opt.kernels' one-pass sparse Adam.)
SPARSE_OP_TYPES = ("ResourceSparseApply", "ResourceScatter", "KerasOptFusedSparseApply")


def _steps():
    """STEPS steps of (dense matrix gradient, (sparse values, indices), vector gradient)."""
    dense = gradient_stream(sparse=False, dtype=np.float32)
    sparse = gradient_stream(sparse=True, dtype=np.float32)
    return [(d[0], s[0], d[1]) for d, s in zip(dense, sparse)]


class GraphRun:
    """One graph and session training one optimizer configuration two ways.

    Variables ``w`` (dense gradient), ``e`` (IndexedSlices gradient with a
    repeated index) and ``b`` (dense) are trained by ``apply_gradients`` on
    placeholders fed each step, and a second copy by ``minimize`` on a loss whose
    gradients are the same values (``e`` through ``tf.gather``, so TensorFlow
    itself produces the IndexedSlices).
    """

    def __init__(self, lib, name: str, kwargs: dict):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.gw = v1.placeholder(tf.float32, VAR_SHAPE, name="grad_w")
            self.gv = v1.placeholder(tf.float32, (None,) + VAR_SHAPE[1:], name="grad_e_values")
            self.gi = v1.placeholder(tf.int64, [None], name="grad_e_indices")
            self.gb = v1.placeholder(tf.float32, VAR_SHAPE[1:], name="grad_b")
            self.sets = {}
            self.optimizers = {}
            self.ops = {}
            for method in ("apply", "minimize"):
                with tf.name_scope(method):
                    w0, b0 = initial_values(np.float32)
                    variables = [
                        tf.Variable(w0, name="w"),
                        tf.Variable(w0[::-1].copy(), name="e"),
                        tf.Variable(b0, name="b"),
                    ]
                self.sets[method] = variables
                self.optimizers[method] = getattr(lib, name)(**kwargs)
            w, e, b = self.sets["apply"]
            sparse_grad = tf.IndexedSlices(self.gv, self.gi, tf.constant(VAR_SHAPE, tf.int64))
            self.ops["apply"] = self.optimizers["apply"].apply_gradients(
                [(self.gw, w), (sparse_grad, e), (self.gb, b)]
            )
            w, e, b = self.sets["minimize"]

            def loss():
                return (
                    tf.reduce_sum(w * self.gw)
                    + tf.reduce_sum(tf.gather(e, self.gi) * self.gv)
                    + tf.reduce_sum(b * self.gb)
                )

            self.ops["minimize"] = self.optimizers["minimize"].minimize(loss, [w, e, b])
            self.train = tf.group(list(self.ops.values()))
            self.init = v1.global_variables_initializer()
            self.global_names = {v.name for v in v1.global_variables()}
            self.trainable_names = {v.name for v in v1.trainable_variables()}
        self.session = v1.Session(graph=self.graph)
        self.session.run(self.init)

    def tracked(self) -> list:
        out = []
        for method in ("apply", "minimize"):
            out += self.sets[method] + self.optimizers[method].weights
        return out

    def step(self, grad_w, sparse, grad_b) -> list[np.ndarray]:
        values, indices = sparse
        self.session.run(
            self.train, {self.gw: grad_w, self.gv: values, self.gi: indices, self.gb: grad_b}
        )
        return self.session.run(self.tracked())


@pytest.mark.parametrize("case", GRAPH_CASES, ids=case_id)
def test_session_training_matches_tf_keras(case):
    name, kwargs = case
    runs = {key: GraphRun(lib, name, kwargs) for key, lib in LIBS.items()}
    ours, theirs = runs["keras_opt"], runs["tf_keras"]
    try:
        for method in ("apply", "minimize"):
            assert isinstance(ours.ops[method], tf.Operation)
            assert type(ours.ops[method]) is type(theirs.ops[method])
        assert [v.name for v in ours.tracked()] == [v.name for v in theirs.tracked()]
        # The optimizer's variables are global (so the usual initializer covers
        # them) and not trainable, exactly as tf_keras's.
        assert ours.global_names == theirs.global_names
        assert ours.trainable_names == theirs.trainable_names
        for method in ("apply", "minimize"):
            for weight in ours.optimizers[method].weights:
                assert weight.name in ours.global_names
                assert weight.name not in ours.trainable_names
        # Both training paths really took the sparse kernels for `e`.
        for method in ("apply", "minimize"):
            sparse_ops = [
                op
                for op in ours.graph.get_operations()
                if f"update_{method}/e/" in op.name and op.type.startswith(SPARSE_OP_TYPES)
            ]
            assert sparse_ops, f"no sparse update op for {method}/e"
        start = ours.session.run(ours.tracked())
        for step, grads in enumerate(_steps()):
            our_values, their_values = ours.step(*grads), theirs.step(*grads)
            for var, a, b in zip(ours.tracked(), our_values, their_values):
                np.testing.assert_array_equal(a, b, err_msg=f"{var.name} after step {step + 1}")
            for method in ("apply", "minimize"):
                iterations = ours.optimizers[method].iterations
                assert ours.session.run(iterations) == step + 1
        for var, a, b in zip(ours.tracked(), start, our_values):
            if not var.name.startswith(("apply/", "minimize/")):
                continue
            assert not np.array_equal(a, b), f"{var.name} did not move"
        # apply_gradients on the fed gradients and minimize on the loss agree:
        # d(sum(w * g))/dw is g, and tf.gather's gradient is IndexedSlices of the
        # fed rows. (Up to float32 rounding: the two graphs differ around the
        # update, and TensorFlow's graph optimizer may rewrite them differently.)
        half = len(our_values) // 2
        for a, b in zip(our_values[:half], our_values[half:]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    finally:
        for run in runs.values():
            run.session.close()


# ----------------------------------------------------------- get_updates etc.
def _loss_graph(lib, name):
    """A graph with a dense ``w`` and an embedding ``e`` read through tf.gather."""
    graph = tf.Graph()
    with graph.as_default():
        w0, _ = initial_values(np.float32)
        w = tf.Variable(w0, name="w")
        e = tf.Variable(w0 * 0.5, name="e")
        x = v1.placeholder(tf.float32, VAR_SHAPE[1:], name="x")
        ids = v1.placeholder(tf.int64, [None], name="ids")
        loss = tf.reduce_sum(tf.square(tf.linalg.matvec(w, x) - 1.0)) + tf.reduce_sum(
            tf.square(tf.gather(e, ids) * x)
        )
        opt = getattr(lib, name)(learning_rate=0.1)
    return graph, opt, loss, [w, e], (x, ids)


@pytest.mark.parametrize("name", ["Adam", "SGD", "Adagrad", "Ftrl"])
def test_get_updates_matches_tf_keras(name):
    results = {}
    rng = np.random.default_rng(3)
    feeds = [
        (rng.standard_normal(VAR_SHAPE[1:]).astype(np.float32), np.array([1, 4, 1]))
        for _ in range(STEPS)
    ]
    for key, lib in LIBS.items():
        graph, opt, loss, params, (x, ids) = _loss_graph(lib, name)
        with graph.as_default():
            updates = opt.get_updates(loss, params)
            init = v1.global_variables_initializer()
        assert isinstance(updates, list) and len(updates) == 1
        assert isinstance(updates[0], tf.Operation)
        with v1.Session(graph=graph) as session:
            session.run(init)
            trace = []
            for x_value, ids_value in feeds:
                session.run(updates, {x: x_value, ids: ids_value})
                trace.append(session.run(params + opt.weights))
        results[key] = trace
    for step, (ours, theirs) in enumerate(zip(results["keras_opt"], results["tf_keras"])):
        for a, b in zip(ours, theirs):
            np.testing.assert_array_equal(a, b, err_msg=f"step {step + 1}")


def test_get_gradients_types_values_and_none_error():
    values = {}
    for key, lib in LIBS.items():
        graph, opt, loss, (w, e), (x, ids) = _loss_graph(lib, "SGD")
        with graph.as_default():
            grads = opt.get_gradients(loss, [w, e])
            assert isinstance(grads[0], tf.Tensor)
            assert isinstance(grads[1], tf.IndexedSlices)
            assert grads[0].name.startswith("SGD/gradients/")
            unused = tf.Variable(1.0, name="unused")
            with pytest.raises(ValueError, match="Variable .*unused.* has `None` for gradient"):
                opt.get_gradients(loss, [w, unused])
            # An argmax has no gradient: the error names the variable.
            with pytest.raises(ValueError, match="Variable .*'w:0'.* has `None` for gradient"):
                opt.get_gradients(tf.cast(tf.argmax(tf.reshape(w, [-1])), tf.float32), [w])
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            feed = {x: [1.0, 2.0, 3.0], ids: [0, 2, 0]}
            values[key] = session.run([grads[0], grads[1].values, grads[1].indices], feed)
    for a, b in zip(values["keras_opt"], values["tf_keras"]):
        np.testing.assert_array_equal(a, b)


def test_get_gradients_inside_tf_function_and_not_eagerly():
    opt = keras_opt.SGD(learning_rate=0.1)
    w = tf.Variable([1.0, 2.0])

    @tf.function
    def step():
        loss = tf.reduce_sum(w * w)
        opt.get_updates(loss, [w])
        return opt.get_gradients(loss, [w])[0]

    # d(sum w^2)/dw = 2 w, for the w the loss was computed from (before the update).
    np.testing.assert_allclose(step().numpy(), [2.0, 4.0])
    np.testing.assert_allclose(w.numpy(), [0.8, 1.6])  # w - 0.1 * 2 w
    with pytest.raises(RuntimeError, match="eager execution"):
        opt.get_gradients(tf.reduce_sum(w * w), [w])


# ------------------------------------------------------- coefficient ops
def _op_histogram(graph):
    return collections.Counter(op.type for op in graph.get_operations())


def _two_applies(lib, name, num_float32, kwargs=None):
    """Op types added by the first and the second apply_gradients of one graph."""
    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.Variable(tf.ones(VAR_SHAPE), name=f"v{i}") for i in range(num_float32)]
        variables.append(tf.Variable(tf.ones(VAR_SHAPE[1:], tf.float64), name="d"))
        grads = [tf.ones_like(v) for v in variables]
        grads[0] = tf.IndexedSlices(
            tf.ones((2,) + VAR_SHAPE[1:]), tf.constant([0, 0], tf.int64), tf.constant(VAR_SHAPE)
        )
        opt = getattr(lib, name)(**(kwargs or {}))
        before = _op_histogram(graph)
        opt.apply_gradients(zip(grads, variables))
        first = _op_histogram(graph)
        opt.apply_gradients(zip(grads, variables))
        second = _op_histogram(graph)
    return first - before, second - first


@pytest.mark.parametrize("name", NAMES)
def test_apply_gradients_builds_the_same_ops_as_tf_keras(name):
    # The per-variable path (keras_opt.kernels' fused ops are checked in test_fused.py).
    ours = _two_applies(keras_opt, name, 3, dict(fused_kernels=False))
    theirs = _two_applies(tf_keras_legacy, name, 3)
    assert ours[0] == theirs[0], "first apply_gradients (creates the weights)"
    assert ours[1] == theirs[1], "second apply_gradients"


def test_one_coefficient_set_per_device_and_dtype_per_apply():
    # Adam computes beta_1^t and beta_2^t once per (device, dtype) in _prepare:
    # two float dtypes -> 4 Pow ops per apply_gradients call, however many
    # variables share them (tf_keras does the same; it is checked above).
    for num_float32 in (2, 8):
        first, second = _two_applies(keras_opt, "Adam", num_float32, dict(fused_kernels=False))
        assert first["Pow"] == 4 and second["Pow"] == 4, num_float32
        # The dense variables (all but v0) use the fused kernel, one op each.
        assert second["ResourceApplyAdam"] == num_float32
        # keras_opt.kernels: one multi-variable op per (device, dtype) instead.
        first, second = _two_applies(keras_opt, "Adam", num_float32)
        assert first["Pow"] == 4 and second["Pow"] == 4, num_float32
        if kernels.status()["available"]:
            assert second["KerasOptFusedApply"] == 2 and not second["ResourceApplyAdam"]


# --------------------------------------------------- weights and hyperparameters
def _graph_adam(lib, learning_rate=0.1):
    graph = tf.Graph()
    with graph.as_default():
        w = tf.Variable(initial_values(np.float32)[0], name="w")
        opt = lib.Adam(learning_rate=learning_rate)
        grad = v1.placeholder(tf.float32, VAR_SHAPE)
        train = opt.apply_gradients([(grad, w)])
        init = v1.global_variables_initializer()
    return graph, opt, w, grad, train, init


def test_get_and_set_weights_through_the_default_session():
    weights = {}
    grads = [g for g, _ in gradient_stream(sparse=False, dtype=np.float32)]
    for key, lib in LIBS.items():
        graph, opt, w, grad, train, init = _graph_adam(lib)
        with v1.Session(graph=graph) as session:
            session.run(init)
            for value in grads[:2]:
                session.run(train, {grad: value})
            weights[key] = opt.get_weights()
            assert [np.shape(x) for x in weights[key]] == [(), VAR_SHAPE, VAR_SHAPE]
            if lib is keras_opt:
                new = [np.int64(7), np.full(VAR_SHAPE, 0.25), np.full(VAR_SHAPE, 0.5)]
                opt.set_weights(new)
                count = len(graph.get_operations())
                opt.set_weights(new)  # the placeholders and assign ops are reused
                assert len(graph.get_operations()) == count
                for a, b in zip(opt.get_weights(), new):
                    np.testing.assert_array_equal(a, b)
                assert session.run(opt.iterations) == 7
                with pytest.raises(ValueError, match="shape"):
                    opt.set_weights([np.int64(1), np.zeros((2, 2)), np.zeros(VAR_SHAPE)])
        if lib is keras_opt:
            with graph.as_default(), pytest.raises(RuntimeError, match="default session"):
                opt.set_weights(weights[key])
    for a, b in zip(weights["keras_opt"], weights["tf_keras"]):
        np.testing.assert_array_equal(a, b)


def test_without_default_session_reads_through_tf_keras_session():
    # An optimizer built in a TF1 graph, no session anywhere: tf_keras reads its
    # config and weights through its backend session (initializing them there);
    # keras_opt reads through that same session, so the values agree.
    results = {}
    for key, lib in LIBS.items():
        graph, opt, *_ = _graph_adam(lib)
        with graph.as_default():
            results[key] = (opt.get_config(), opt.get_weights())
    assert results["keras_opt"][0] == results["tf_keras"][0]
    assert len(results["keras_opt"][1]) == len(results["tf_keras"][1]) == 3
    for a, b in zip(results["keras_opt"][1], results["tf_keras"][1]):
        np.testing.assert_array_equal(a, b)


def test_without_tf_keras_and_session_config_reads_python_values(monkeypatch):
    # Without tf_keras and without a default session, hyperparameters still equal
    # to the Python numbers they were created from need no session; the rest
    # raises the clear error.
    monkeypatch.setattr(variables_lib, "_tf_keras_session", lambda variables: None)
    graph, opt, *_ = _graph_adam(keras_opt)
    _, tfk_opt, _, _, _, tfk_init = _graph_adam(LIBS["tf_keras"])
    with v1.Session(graph=tfk_opt.iterations.graph) as session:
        session.run(tfk_init)
        expected = tfk_opt.get_config()
    with graph.as_default():
        config = opt.get_config()
        assert config == expected
        assert type(config["learning_rate"]) is type(expected["learning_rate"])
        with pytest.raises(RuntimeError, match="default session"):
            opt.get_weights()
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            opt.learning_rate = 0.5  # changed: the Python value no longer holds
        with pytest.raises(RuntimeError, match="default session"):
            opt.get_config()


def test_uninitialized_optimizer_variables_are_not_initialized_implicitly():
    graph, opt, _, grad, train, init = _graph_adam(keras_opt)
    with v1.Session(graph=graph) as session:
        # TensorFlow names one of the uninitialized optimizer variables.
        with pytest.raises(tf.errors.FailedPreconditionError, match="Adam/"):
            opt.get_weights()
        session.run(v1.variables_initializer(opt.variables()))
        assert opt.get_weights()[0] == 0


def test_setting_a_hyperparameter_takes_effect_in_the_session():
    trace = {}
    grads = [g for g, _ in gradient_stream(sparse=False, dtype=np.float32)]
    for key, lib in LIBS.items():
        graph, opt, w, grad, train, init = _graph_adam(lib)
        with v1.Session(graph=graph) as session:
            session.run(init)
            session.run(train, {grad: grads[0]})
            opt.learning_rate = 0.05
            opt.beta_1 = 0.5
            assert session.run(opt._get_hyper("learning_rate")) == np.float32(0.05)
            config = opt.get_config()
            assert config["learning_rate"] == np.float32(0.05) and config["beta_1"] == 0.5
            session.run(train, {grad: grads[1]})
            trace[key] = session.run([w] + opt.weights)
        if lib is keras_opt:
            with graph.as_default(), pytest.raises(RuntimeError, match="default session"):
                opt.learning_rate = 0.01
    for a, b in zip(trace["keras_opt"], trace["tf_keras"]):
        np.testing.assert_array_equal(a, b)
    # The change mattered: training on at 0.1 gives other values.
    graph, opt, w, grad, train, init = _graph_adam(keras_opt)
    with v1.Session(graph=graph) as session:
        session.run(init)
        for value in grads[:2]:
            session.run(train, {grad: value})
        assert not np.array_equal(session.run(w), trace["keras_opt"][0])


def test_placeholder_learning_rate_is_fed_each_step():
    # TF1 pattern: a placeholder set as the learning rate before the first step
    # replaces the number (it does not become a variable), as in tf_keras.
    trace = {}
    grads = [g for g, _ in gradient_stream(sparse=False, dtype=np.float32)]
    rates = [0.1, 0.01, 0.5, 0.0]
    for key, lib in LIBS.items():
        graph = tf.Graph()
        with graph.as_default():
            w = tf.Variable(initial_values(np.float32)[0], name="w")
            opt = lib.SGD(momentum=0.5)
            rate = v1.placeholder(tf.float32, [], name="rate")
            opt.learning_rate = rate
            grad = v1.placeholder(tf.float32, VAR_SHAPE)
            train = opt.apply_gradients([(grad, w)])
            init = v1.global_variables_initializer()
        assert opt._hyper["learning_rate"] is rate
        with v1.Session(graph=graph) as session:
            session.run(init)
            values = []
            for value, lr in zip(grads, rates):
                session.run(train, {grad: value, rate: lr})
                values.append(session.run(w))
        trace[key] = values
        # lr = 0 in the last step: only momentum moved w.
        assert not np.array_equal(values[-1], values[-2])
    for a, b in zip(trace["keras_opt"], trace["tf_keras"]):
        np.testing.assert_array_equal(a, b)


def test_exact_variable_names_in_a_graph():
    for lib in LIBS.values():
        graph = tf.Graph()
        with graph.as_default():
            var = tf.Variable(tf.ones([2]), name="var")
            opt = lib.Adam()
            opt.apply_gradients([(tf.ones([2]), var)])
            names = [v.name for v in v1.global_variables()]
        assert [v.name for v in opt.weights] == ["Adam/iter:0", "Adam/var/m:0", "Adam/var/v:0"]
        assert names == [
            "var:0",
            "Adam/iter:0",
            "Adam/beta_1:0",
            "Adam/beta_2:0",
            "Adam/decay:0",
            "Adam/learning_rate:0",
            "Adam/var/m:0",
            "Adam/var/v:0",
        ]


# ----------------------------------------- a whole process in TF1 graph mode
def test_eager_execution_disabled_process():
    """``tf.compat.v1.disable_eager_execution()`` is process-global: its own process."""
    log = dist_utils.run_worker(
        "graph_v1_worker.py", timeout_s=240, env={"CUDA_VISIBLE_DEVICES": ""}
    )
    assert "OK" in log.splitlines(), log[-2000:]
