"""The protected OptimizerV2 surface that tools and custom optimizers call.

Horovod's ``DistributedOptimizer``, moving-average wrappers and custom
optimizers subclass OptimizerV2 and call or override its underscore methods.
Each test here runs the same code against keras_opt and tf_keras legacy and
compares what happens: hook order, names, values, logged warnings and error
messages. The wrappers below are written for these tests after the structure
of such tools (dynamic subclasses, delegation to an inner optimizer); they are
not copies of any tool's code.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tf_keras.optimizers import legacy as tf_keras_legacy
from tf_keras.src.optimizers.legacy import adam as tf_keras_adam
from tf_keras.src.optimizers.legacy import optimizer_v2 as tf_keras_optimizer_v2

import keras_opt
from keras_opt.optimizer_v2 import optimizer_v2 as keras_opt_optimizer_v2

from cases import NAMES, STEPS, VAR_SHAPE, gradient_stream, initial_values

v1 = tf.compat.v1
LIBS = {"keras_opt": keras_opt, "tf_keras": tf_keras_legacy}
BASES = {"keras_opt": keras_opt.Optimizer, "tf_keras": tf_keras_legacy.Optimizer}
MODULES = {"keras_opt": keras_opt_optimizer_v2, "tf_keras": tf_keras_optimizer_v2}
SCHEDULES = {"keras_opt": keras_opt.schedules, "tf_keras": tf_keras.optimizers.schedules}


def both(function):
    """``{"keras_opt": function("keras_opt"), "tf_keras": function("tf_keras")}``."""
    return {key: function(key) for key in LIBS}


def assert_all_equal(results: dict, what: str = "") -> None:
    ours, theirs = results["keras_opt"], results["tf_keras"]
    assert len(ours) == len(theirs), what
    for i, (a, b) in enumerate(zip(ours, theirs)):
        np.testing.assert_array_equal(a, b, err_msg=f"{what} [{i}]")


def make_vars():
    w0, b0 = initial_values(np.float32)
    return (
        tf.Variable(w0, name="w"),
        tf.Variable(w0[::-1].copy(), name="e"),
        tf.Variable(b0, name="b"),
    )


def grads_for_step(step: int):
    """Dense w, IndexedSlices (repeated index) e, dense b gradients of one step."""
    dense = gradient_stream(sparse=False, dtype=np.float32)[step]
    values, indices = gradient_stream(sparse=True, dtype=np.float32)[step][0]
    sparse = tf.IndexedSlices(
        tf.constant(values), tf.constant(indices), tf.constant(VAR_SHAPE, tf.int64)
    )
    return [tf.constant(dense[0]), sparse, tf.constant(dense[1])]


# ------------------------------------------------------------- names and keys
def test_module_level_var_key_and_slot_key_match_tf_keras():
    var = tf.Variable([1.0], name="var")
    assert keras_opt_optimizer_v2._var_key(var) == tf_keras_optimizer_v2._var_key(var)
    graph = tf.Graph()
    with graph.as_default():
        graph_var = tf.Variable([1.0], name="scope/var")
        for module in MODULES.values():
            assert module._var_key(graph_var) == "scope/var"
            assert module._get_slot_key_from_var(graph_var, "m") == "scope/var/m"


def test_exact_variable_names():
    for key, lib in LIBS.items():
        var = tf.Variable([1.0, 2.0], name="var")
        opt = lib.Adam(amsgrad=True)
        opt.apply_gradients([(tf.constant([0.1, 0.2]), var)])
        assert [v.name for v in opt.weights] == [
            "Adam/iter:0",
            "Adam/var/m:0",
            "Adam/var/v:0",
            "Adam/var/vhat:0",
        ], key
        assert opt._hyper["learning_rate"].name == "Adam/learning_rate:0", key


def test_has_aggregate_grad_flags_match_tf_keras():
    pairs = [(keras_opt.Optimizer, tf_keras_legacy.Optimizer)]
    pairs += [(getattr(keras_opt, name), getattr(tf_keras_legacy, name)) for name in NAMES]
    pairs.append((keras_opt.NonFusedAdam, tf_keras_adam.NonFusedAdam))
    for ours, theirs in pairs:
        assert ours._HAS_AGGREGATE_GRAD is theirs._HAS_AGGREGATE_GRAD, ours.__name__


# ------------------------------------------------------------ iterations
def test_iterations_setter_like_tf_keras():
    def run(key):
        opt = LIBS[key].SGD(learning_rate=0.1)
        counter = tf.Variable(5, dtype=tf.int64, name="shared_step")
        opt.iterations = counter
        var = tf.Variable([1.0])
        opt.apply_gradients([(tf.constant([1.0]), var)])
        assert opt.iterations is counter and opt.weights[0] is counter
        with pytest.raises(RuntimeError) as error:
            opt.iterations = tf.Variable(0, dtype=tf.int64)
        return int(counter.numpy()), str(error.value).split(". Here")[0]

    results = both(run)
    message = (
        "Cannot set `iterations` to a new Variable after the Optimizer weights have been created"
    )
    assert results["keras_opt"] == results["tf_keras"] == (6, message)


# ------------------------------------------------------------ hyperparameters
def test_get_and_set_hyper_like_tf_keras():
    def run(key):
        lib = LIBS[key]
        out = []
        opt = lib.SGD(learning_rate=0.1)
        opt._set_hyper("extra", 0.3)  # a new hyperparameter: a number until created
        out.append(opt._hyper["extra"])
        value = opt._get_hyper("extra", tf.float64)  # creates every hyper variable
        out += [value.dtype.name, float(value), opt._hyper["extra"].name]
        created = opt._hyper["learning_rate"]
        opt._set_hyper("learning_rate", 0.5)  # assigned into the same variable
        out += [opt._hyper["learning_rate"] is created, float(created.numpy())]
        opt._set_hyper("learning_rate", tf.constant(0.25))
        out.append(float(created.numpy()))
        schedule = SCHEDULES[key].ExponentialDecay(0.1, 10, 0.5)
        opt._set_hyper("learning_rate", schedule)  # a schedule replaces the variable
        out.append(opt._get_hyper("learning_rate") is schedule)
        # An eager tensor or a variable set before creation is kept as given.
        fresh = lib.SGD(learning_rate=0.1)
        tensor = tf.constant(0.2)
        fresh.learning_rate = tensor
        given = tf.Variable(0.7, name="given_momentum")
        fresh._set_hyper("momentum", given)
        fresh.apply_gradients([(tf.constant([1.0]), tf.Variable([1.0]))])
        out += [fresh._hyper["learning_rate"] is tensor, fresh._hyper["momentum"] is given]
        out.append(sorted(fresh._trackable_children()))  # the variable is tracked by name
        return out

    results = both(run)
    assert results["keras_opt"] == results["tf_keras"]
    assert results["keras_opt"][:4] == [0.3, "float64", pytest.approx(0.3), "extra:0"]


def test_track_trackable_adds_a_checkpoint_dependency(tmp_path):
    def run(key):
        opt = LIBS[key].Adam(learning_rate=0.1)
        extra = tf.Variable(3.0, name="extra")
        opt._track_trackable(extra, "extra_state")
        var = tf.Variable([1.0, 2.0], name="var")
        opt.apply_gradients([(tf.constant([0.5, 0.5]), var)])
        path = tf.train.Checkpoint(optimizer=opt, var=var).save(str(tmp_path / key / "ckpt"))
        extra.assign(-1.0)
        tf.train.Checkpoint(optimizer=opt, var=var).restore(path).assert_consumed()
        keys = [name for name, _ in tf.train.list_variables(path)]
        return float(extra.numpy()), sorted(opt._trackable_children()), sorted(keys)

    results = both(run)
    assert results["keras_opt"] == results["tf_keras"]
    assert results["keras_opt"][0] == 3.0
    assert "extra_state" in results["keras_opt"][1]


# ----------------------------------------------------------- gradient hooks
def test_compute_gradients_like_tf_keras():
    def run(key):
        opt = LIBS[key].SGD()
        w, e, b = make_vars()
        unused = tf.Variable(1.0, name="unused")

        def loss():
            return tf.reduce_sum(w * w) + tf.reduce_sum(tf.gather(e, [0, 0, 2]))

        pairs = opt._compute_gradients(loss, [w, e, unused])
        assert [v for _, v in pairs] == [w, e, unused]
        kinds = [type(g).__name__ if g is not None else None for g, _ in pairs]
        values = [tf.convert_to_tensor(g).numpy() for g, _ in pairs[:2]]
        with tf.GradientTape() as tape:
            tensor_loss = loss()
        taped = opt._compute_gradients(tensor_loss, [w], tape=tape)
        with pytest.raises(ValueError) as error:
            opt._compute_gradients(tensor_loss, [w])
        return kinds, values, taped[0][0].numpy(), str(error.value).split(".")[0]

    results = both(run)
    ours, theirs = results["keras_opt"], results["tf_keras"]
    assert ours[0] == theirs[0] == ["EagerTensor", "IndexedSlices", None]
    assert_all_equal({k: r[1] + [r[2]] for k, r in results.items()}, "gradients")
    assert ours[3] == theirs[3] == "`tape` is required when a `Tensor` loss is passed"


def recording(base):
    """A subclass of ``base`` (SGD with momentum) that logs every pipeline hook."""

    class Recording(base):
        def __init__(self, log, **kwargs):
            super().__init__(**kwargs)
            self.log = log

        def _create_slots(self, var_list):
            self.log.append(("_create_slots", len(var_list)))
            super()._create_slots(var_list)

        def _create_slots_for_sharded_variables(self, var_list):
            self.log.append(("_create_slots_for_sharded_variables", len(var_list)))
            super()._create_slots_for_sharded_variables(var_list)

        def _prepare(self, var_list):
            self.log.append(("_prepare", len(var_list)))
            return super()._prepare(var_list)

        def _transform_unaggregated_gradients(self, grads_and_vars):
            self.log.append(("_transform_unaggregated_gradients", len(grads_and_vars)))
            return super()._transform_unaggregated_gradients(grads_and_vars)

        def _aggregate_gradients(self, grads_and_vars):
            self.log.append(("_aggregate_gradients", len(grads_and_vars)))
            # Visible in the result: a stand-in for an all-reduce over two workers.
            return [(_halve(g), v) for g, v in super()._aggregate_gradients(grads_and_vars)]

        def _transform_gradients(self, grads_and_vars):
            self.log.append(("_transform_gradients", len(grads_and_vars)))
            return super()._transform_gradients(grads_and_vars)

        def _distributed_apply(self, distribution, grads_and_vars, apply_state, name):
            self.log.append(("_distributed_apply", len(grads_and_vars), sorted(apply_state)))
            return super()._distributed_apply(distribution, grads_and_vars, apply_state, name)

        def _resource_apply_dense(self, grad, var, apply_state=None):
            self.log.append(("_resource_apply_dense", var.name))
            return super()._resource_apply_dense(grad, var, apply_state=apply_state)

        def _resource_apply_sparse_duplicate_indices(self, grad, var, indices, **kwargs):
            self.log.append(("_resource_apply_sparse_duplicate_indices", var.name))
            return super()._resource_apply_sparse_duplicate_indices(grad, var, indices, **kwargs)

        def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
            self.log.append(("_resource_apply_sparse", var.name, int(tf.size(indices))))
            return super()._resource_apply_sparse(grad, var, indices, apply_state=apply_state)

    return Recording


@pytest.mark.parametrize("aggregate", [True, False])
def test_apply_gradients_calls_the_hooks_like_tf_keras(aggregate):
    def run(key):
        log = []
        opt = recording(LIBS[key].SGD)(log, learning_rate=0.1, momentum=0.9)
        variables = make_vars()
        for step in range(2):
            opt.apply_gradients(
                zip(grads_for_step(step), variables), experimental_aggregate_gradients=aggregate
            )
        return log, [v.numpy() for v in variables]

    results = both(run)
    (ours, our_values), (theirs, their_values) = results["keras_opt"], results["tf_keras"]
    # tf_keras calls _create_slots (and the sharded-variable hook) on every
    # apply_gradients with the whole variable list; keras_opt calls them only
    # for variables that have no slots yet. Slot creation is idempotent, so
    # the results are the same; the rest of the sequence is identical.
    creation = ("_create_slots", "_create_slots_for_sharded_variables")
    assert [c for c in ours if c[0] in creation] == [c for c in theirs if c[0] in creation][:2]
    assert [c for c in ours if c[0] not in creation] == [c for c in theirs if c[0] not in creation]
    assert (
        ("_aggregate_gradients", 3) in ours
        if aggregate
        else all(c[0] != "_aggregate_gradients" for c in ours)
    )
    assert_all_equal({"keras_opt": our_values, "tf_keras": their_values}, "variables")


def test_create_slots_for_sharded_variables_like_tf_keras():
    def run(key):
        shards = [
            tf.Variable(np.ones((2, 3), np.float32), name="table/part_0"),
            tf.Variable(np.ones((1, 3), np.float32), name="table/part_1"),
        ]
        table = tf.__internal__.distribute.ShardedVariable(shards, name="table")
        opt = LIBS[key].Adam(learning_rate=0.1)
        opt.apply_gradients([(tf.ones((2, 3)), shards[0]), (tf.ones((1, 3)), shards[1])])
        slot = opt.get_slot(table, "m")
        assert isinstance(slot, tf.__internal__.distribute.ShardedVariable)
        assert [s is opt.get_slot(shard, "m") for s, shard in zip(slot.variables, shards)] == [
            True,
            True,
        ]
        return [s.name for s in slot.variables], slot.name, [s.numpy() for s in slot.variables]

    results = both(run)
    assert results["keras_opt"][:2] == results["tf_keras"][:2]
    assert_all_equal({k: r[2] for k, r in results.items()}, "slot values")


# -------------------------------------------------------------- logging
class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_none_gradient_warning_is_logged_through_tensorflow_logging():
    def run(key):
        handler = _Records()
        tf.get_logger().addHandler(handler)
        try:
            w, _, b = make_vars()
            LIBS[key].SGD().apply_gradients([(tf.ones(VAR_SHAPE), w), (None, b)])
        finally:
            tf.get_logger().removeHandler(handler)
        return [m for m in handler.messages if "Gradients do not exist" in m]

    results = both(run)
    for messages in results.values():
        assert len(messages) == 1
        assert messages[0].startswith(
            "Gradients do not exist for variables ['b:0'] when minimizing the loss."
        )


# ------------------------------------------------------------ error messages
def _error(key, action):
    with pytest.raises(Exception) as info:
        action(LIBS[key])
    return info.type, str(info.value)


def _set_weights_with_wrong_length(lib):
    opt = lib.SGD()
    opt.apply_gradients([(tf.ones([2]), tf.Variable([1.0, 2.0]))])
    opt.set_weights([np.int64(1), np.zeros(2)])


def _set_weights_with_wrong_shape(lib):
    opt = lib.SGD(momentum=0.5)
    opt.apply_gradients([(tf.ones([2]), tf.Variable([1.0, 2.0]))])
    opt.set_weights([np.int64(1), np.zeros(3)])


def _missing_update_rule(lib):
    class Incomplete(lib.Optimizer):
        def get_config(self):
            return super().get_config()

    Incomplete(name="incomplete").apply_gradients([(tf.ones([2]), tf.Variable([1.0, 2.0]))])


def _on_read_trainable(lib):
    lib.SGD().add_weight(
        "x", shape=[], trainable=True, synchronization=tf.VariableSynchronization.ON_READ
    )


def _sparse_with_constraint(lib):
    var = tf.Variable(tf.ones((3, 2)), constraint=lambda x: x)
    grad = tf.IndexedSlices(tf.ones((1, 2)), tf.constant([0]), tf.constant([3, 2]))
    lib.SGD().apply_gradients([(grad, var)])


ERRORS = {
    # case: (action, error type, the phrase or phrases that tools and tests match
    # on, present in both libraries' messages)
    "no gradient at all": (
        lambda lib: lib.SGD().apply_gradients([(None, tf.Variable(1.0, name="v"))]),
        ValueError,
        "No gradients provided for any variable",
    ),
    "tensor loss without tape": (
        lambda lib: lib.SGD().minimize(tf.constant(1.0), [tf.Variable(1.0)]),
        ValueError,
        "`tape` is required when a `Tensor` loss is passed",
    ),
    "unknown keyword": (
        lambda lib: lib.SGD(foo=1),
        TypeError,
        "Unexpected keyword argument passed to optimizer: foo",
    ),
    "both clip norms": (
        lambda lib: lib.SGD(clipnorm=1.0, global_clipnorm=1.0),
        ValueError,
        "Cannot accept both `clipnorm` and `global_clipnorm`",
    ),
    "clipping with transformers": (
        lambda lib: lib.SGD(gradient_transformers=[lambda gv: gv], clipvalue=1.0),
        ValueError,
        "`clipvalue` cannot be set when `gradient_transformers` is set",
    ),
    "negative decay": (
        lambda lib: lib.SGD(decay=-1.0),
        ValueError,
        "decay",
    ),
    "set_weights length": (
        _set_weights_with_wrong_length,
        ValueError,
        "You called `set_weights(weights)` on optimizer SGD",
    ),
    "set_weights shape": (
        _set_weights_with_wrong_shape,
        ValueError,
        "not compatible with provided weight shape (3,)",
    ),
    "invalid dtype": (
        lambda lib: lib.SGD()._assert_valid_dtypes([tf.Variable(1, name="count")]),
        ValueError,
        ("Invalid type ", " for count:0, expected: "),
    ),
    "missing update rule": (
        _missing_update_rule,
        NotImplementedError,
        "`_resource_apply_dense` must be implemented in subclasses.",
    ),
    "ON_READ trainable weight": (
        _on_read_trainable,
        ValueError,
        "Synchronization value can be set to VariableSynchronization.ON_READ only for "
        "non-trainable variables",
    ),
    "constraint with sparse gradient": (
        _sparse_with_constraint,
        RuntimeError,
        "Cannot use a constraint function on a sparse variable",
    ),
    "Nadam with a schedule": (
        lambda lib: lib.Nadam(
            learning_rate=SCHEDULES[
                "keras_opt" if lib is keras_opt else "tf_keras"
            ].ExponentialDecay(0.1, 10, 0.5)
        ),
        ValueError,
        "The Nadam optimizer does not support",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_error_messages_tools_match_on(case):
    action, error_type, phrases = ERRORS[case]
    for key in LIBS:
        raised, message = _error(key, action)
        assert issubclass(raised, error_type), (key, raised)
        for phrase in [phrases] if isinstance(phrases, str) else phrases:
            assert phrase in " ".join(message.split()), (key, message)


def test_get_gradients_none_error_matches_tf_keras():
    def run(key):
        graph = tf.Graph()
        with graph.as_default():
            w = tf.Variable([1.0], name="w")
            unused = tf.Variable([1.0], name="unused")
            with pytest.raises(ValueError) as error:
                LIBS[key].SGD().get_gradients(tf.reduce_sum(w * w), [w, unused])
        return str(error.value)

    for message in both(run).values():
        assert message.startswith("Variable <tf.Variable 'unused:0' shape=(1,) dtype=float32>")
        assert "has `None` for gradient." in message


# -------------------------------------------------------------- NonFusedAdam
def _train_nonfused(cls, amsgrad, jit_compile):
    w, e, _ = make_vars()
    opt = cls(learning_rate=0.1, amsgrad=amsgrad)
    x = tf.constant([1.0, -2.0, 0.5])

    @tf.function(jit_compile=jit_compile)
    def step(scale):
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(tf.linalg.matvec(w, x * scale) - 1.0))
            loss += tf.reduce_sum(tf.gather(e, [1, 3, 1]) * x * scale)
        grads = tape.gradient(loss, [w, e])
        assert isinstance(grads[1], tf.IndexedSlices)
        opt.apply_gradients(zip(grads, [w, e]))

    for i in range(STEPS):
        step(tf.constant(1.0 + i))
    return opt, [w.numpy(), e.numpy()] + opt.get_weights()


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_non_fused_adam_compiles_with_xla_and_matches_tf_keras(amsgrad):
    ours, our_values = _train_nonfused(keras_opt.NonFusedAdam, amsgrad, jit_compile=True)
    theirs, their_values = _train_nonfused(tf_keras_adam.NonFusedAdam, amsgrad, jit_compile=False)
    assert [v.name for v in ours.weights] == [v.name for v in theirs.weights]
    assert ours.get_config() == theirs.get_config()
    assert our_values[0].dtype == np.float32
    # tf_keras XLA-compiles its per-variable updates; keras_opt's plain ops are
    # compiled here as part of the whole step. Same formulas, float32 rounding.
    for a, b in zip(our_values, their_values):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    assert not np.array_equal(our_values[1], make_vars()[1].numpy())
    # And it agrees with the fused Adam kernel.
    _, fused_values = _train_nonfused(keras_opt.Adam, amsgrad, jit_compile=False)
    for a, b in zip(our_values, fused_values):
        np.testing.assert_allclose(a, b, rtol=2e-6, atol=1e-7)
    assert keras_opt.NonFusedAdam is keras_opt.optimizer_v2.NonFusedAdam


# ------------------------------------------------------------ custom optimizer
def make_custom_optimizer(base):
    """A custom optimizer written once against tf_keras's OptimizerV2 contract.

    Overrides only ``__init__``, ``_create_slots``, ``_resource_apply_dense``,
    ``_resource_apply_sparse`` and ``get_config``; reads coefficients the way
    tf_keras's own optimizers do (``apply_state`` or ``_fallback_apply_state``)::

        accum <- accum + g^2
        mom   <- beta * mom + g / (sqrt(accum) + epsilon)
        var   <- var - lr * mom
    """

    class ScaledMomentum(base):
        def __init__(self, learning_rate=0.1, beta=0.5, epsilon=1e-3, name="ScaledMomentum", **kw):
            super().__init__(name, **kw)
            self._set_hyper("learning_rate", kw.get("lr", learning_rate))
            self._set_hyper("beta", beta)
            self.epsilon = epsilon

        def _create_slots(self, var_list):
            for var in var_list:
                self.add_slot(var, "accum", initializer="ones")
            for var in var_list:
                self.add_slot(var, "mom")

        def _coefficients_of(self, var, apply_state):
            device, dtype = var.device, var.dtype.base_dtype
            return (apply_state or {}).get((device, dtype)) or self._fallback_apply_state(
                device, dtype
            )

        def _resource_apply_dense(self, grad, var, apply_state=None):
            coefficients = self._coefficients_of(var, apply_state)
            beta = self._get_hyper("beta", var.dtype.base_dtype)
            accum = self.get_slot(var, "accum")
            mom = self.get_slot(var, "mom")
            accum_t = accum.assign_add(tf.square(grad))
            mom_t = mom.assign(beta * mom + grad / (tf.sqrt(accum_t) + self.epsilon))
            return var.assign_sub(coefficients["lr_t"] * mom_t).op

        def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
            coefficients = self._coefficients_of(var, apply_state)
            beta = self._get_hyper("beta", var.dtype.base_dtype)
            accum = self.get_slot(var, "accum")
            mom = self.get_slot(var, "mom")
            accum_t = self._resource_scatter_add(accum, indices, tf.square(grad))
            scaled = grad / (tf.sqrt(tf.gather(accum_t, indices)) + self.epsilon)
            decayed = mom.assign(beta * mom)
            with tf.control_dependencies([decayed]):
                mom_t = self._resource_scatter_add(mom, indices, scaled)
            return var.assign_sub(coefficients["lr_t"] * mom_t).op

        def get_config(self):
            config = super().get_config()
            config.update(
                learning_rate=self._serialize_hyperparameter("learning_rate"),
                beta=self._serialize_hyperparameter("beta"),
                epsilon=self.epsilon,
            )
            return config

    return ScaledMomentum


def _train_custom(key, mode):
    cls = make_custom_optimizer(BASES[key])
    if mode == "graph":
        graph = tf.Graph()
        with graph.as_default():
            opt = cls(learning_rate=0.1, beta=0.5)
            variables = make_vars()
            train = [opt.apply_gradients(zip(grads_for_step(s), variables)) for s in range(STEPS)]
            init = v1.global_variables_initializer()
        with v1.Session(graph=graph) as session:
            session.run(init)
            for op in train:  # one apply op per step, each with its gradients
                session.run(op)
            values = session.run(list(variables) + opt.weights)
            config = opt.get_config()
        return opt, values, config
    opt = cls(learning_rate=0.1, beta=0.5)
    variables = make_vars()

    def step(grads):
        opt.apply_gradients(zip(grads, variables))

    if mode == "function":
        step = tf.function(step)
    for s in range(STEPS):
        step(grads_for_step(s))
    return opt, [v.numpy() for v in variables] + opt.get_weights(), opt.get_config()


@pytest.mark.parametrize("mode", ["eager", "function", "graph"])
def test_custom_optimizer_runs_unchanged_on_keras_opt(mode):
    results = both(lambda key: _train_custom(key, mode))
    (ours, our_values, our_config), (theirs, their_values, their_config) = (
        results["keras_opt"],
        results["tf_keras"],
    )
    assert [v.name for v in ours.weights] == [v.name for v in theirs.weights]
    assert ours.get_slot_names() == theirs.get_slot_names() == ["accum", "mom"]
    assert our_config == their_config
    assert_all_equal({"keras_opt": our_values, "tf_keras": their_values}, mode)
    start = [v.numpy() for v in make_vars()]
    for a, b in zip(our_values[:3], start):
        assert not np.array_equal(a, b)
    clone = type(ours).from_config(our_config)
    assert type(clone) is type(ours) and clone.get_config() == our_config


def test_custom_optimizer_against_a_numpy_step():
    """One dense step of the custom optimizer, by hand in float64."""
    opt = make_custom_optimizer(keras_opt.Optimizer)(learning_rate=0.1, beta=0.5, epsilon=1e-3)
    var = tf.Variable([1.0, -2.0], dtype=tf.float64)
    grad = np.array([0.5, 3.0])
    for _ in range(2):
        opt.apply_gradients([(tf.constant(grad), var)])
    accum, mom, expected = np.ones(2), np.zeros(2), np.array([1.0, -2.0])
    for _ in range(2):
        accum = accum + grad**2
        mom = 0.5 * mom + grad / (np.sqrt(accum) + 1e-3)
        # lr and beta live in float32 variables (tf_keras does the same).
        expected = expected - np.float64(np.float32(0.1)) * mom
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-12)


# ------------------------------------------------- tools that wrap optimizers
def distributed_optimizer(optimizer, allreduce):
    """A Horovod-style wrapper: a dynamic subclass of ``type(optimizer)``.

    It declares ``_HAS_AGGREGATE_GRAD``, reduces gradients in
    ``_compute_gradients`` and ``get_gradients``, keeps the optimizer's class
    name and is rebuilt with ``from_config(get_config())``.
    """

    class _Distributed(type(optimizer)):
        _HAS_AGGREGATE_GRAD = True

        def __init__(self, **kwargs):
            super(self.__class__, self).__init__(**kwargs)
            self._name = "Distributed" + self.__class__.__base__.__name__
            self.reduced = 0

        def _reduce(self, grads):
            self.reduced += 1
            return [None if g is None else allreduce(g) for g in grads]

        def _compute_gradients(self, loss, var_list, grad_loss=None, tape=None):
            tape = tf.GradientTape() if tape is None else tape
            pairs = super(self.__class__, self)._compute_gradients(
                loss, var_list, grad_loss, tape=tape
            )
            grads, weights = zip(*pairs)
            return list(zip(self._reduce(grads), weights))

        def get_gradients(self, loss, params):
            return self._reduce(super(self.__class__, self).get_gradients(loss, params))

        def _aggregate_gradients(self, grads_and_vars):
            return super(self.__class__, self)._aggregate_gradients(grads_and_vars)

        def apply_gradients(self, *args, **kwargs):
            return super(self.__class__, self).apply_gradients(*args, **kwargs)

    cls = type(type(optimizer).__name__, (type(optimizer),), dict(_Distributed.__dict__))
    return cls.from_config(optimizer.get_config())


def _halve(grad):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * 0.5, grad.indices, grad.dense_shape)
    return grad * 0.5


def _horovod_style(key, mode):
    lib = LIBS[key]
    base = lib.Adam(learning_rate=0.1)
    if mode == "graph":
        graph = tf.Graph()
        with graph.as_default():
            opt = distributed_optimizer(base, _halve)
            w, e, b = make_vars()
            loss = tf.reduce_sum(w * w) + tf.reduce_sum(tf.gather(e, [0, 4, 0])) + tf.reduce_sum(b)
            updates = opt.get_updates(loss, [w, e, b])
            init = v1.global_variables_initializer()
        with v1.Session(graph=graph) as session:
            session.run(init)
            for _ in range(STEPS):
                session.run(updates)
            values = session.run([w, e, b] + opt.weights)
            config = opt.get_config()
    else:
        opt = distributed_optimizer(base, _halve)
        w, e, b = make_vars()
        for _ in range(STEPS):
            opt.minimize(
                lambda: tf.reduce_sum(w * w) + tf.reduce_sum(tf.gather(e, [0, 4, 0])),  # noqa: B023
                [w, e],
            )
        values = [w.numpy(), e.numpy(), b.numpy()] + opt.get_weights()
        config = opt.get_config()
    return opt, values, config


@pytest.mark.parametrize("mode", ["eager", "graph"])
def test_horovod_style_wrapper(mode):
    results = both(lambda key: _horovod_style(key, mode))
    ours, theirs = results["keras_opt"][0], results["tf_keras"][0]
    assert type(ours).__name__ == "Adam" and isinstance(ours, keras_opt.Adam)
    assert ours.reduced == theirs.reduced == (STEPS if mode == "eager" else 1)
    assert results["keras_opt"][2] == results["tf_keras"][2]
    assert results["keras_opt"][2]["name"] == "DistributedAdam"
    assert [v.name for v in ours.weights] == [v.name for v in theirs.weights]
    assert_all_equal({k: r[1] for k, r in results.items()}, mode)


def moving_average(base):
    """An EMA wrapper (``base`` subclass) that delegates the update to an inner optimizer.

    It hands its hooks (`_create_slots`, `_create_hypers`, `_prepare_local`,
    `_resource_apply_*`) to the inner optimizer, shares its step counter through
    ``_iterations``, tracks it with `_track_trackable`, and keeps an ``average``
    slot: ``average <- decay * average + (1 - decay) * var`` after each update.
    """

    class MovingAverage(base):
        def __init__(self, optimizer, average_decay=0.5, name="MovingAverage", **kwargs):
            super().__init__(name, **kwargs)
            self._optimizer = optimizer
            self._track_trackable(optimizer, "inner_optimizer")
            self._set_hyper("average_decay", average_decay)

        def _create_hypers(self):
            self._optimizer._create_hypers()
            super()._create_hypers()

        def _create_slots(self, var_list):
            self._optimizer._create_slots(var_list)
            for var in var_list:
                self.add_slot(var, "average", var.read_value())

        def _prepare_local(self, var_device, var_dtype, apply_state):
            self._optimizer._prepare_local(var_device, var_dtype, apply_state)

        def apply_gradients(self, grads_and_vars, name=None, **kwargs):
            self._optimizer._iterations = self.iterations
            return super().apply_gradients(grads_and_vars, name, **kwargs)

        def _average(self, var, update):
            average = self.get_slot(var, "average")
            decay = self._get_hyper("average_decay", var.dtype.base_dtype)
            with tf.control_dependencies([update]):
                return average.assign(decay * average + (1.0 - decay) * var, read_value=False)

        def _resource_apply_dense(self, grad, var, apply_state=None):
            update = self._optimizer._resource_apply_dense(grad, var, apply_state=apply_state)
            return tf.group(update, self._average(var, update))

        def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
            update = self._optimizer._resource_apply_sparse(
                grad, var, indices, apply_state=apply_state
            )
            return tf.group(update, self._average(var, update))

        @property
        def weights(self):
            return self._weights + self._optimizer.weights

        def get_config(self):
            config = super().get_config()
            config["average_decay"] = self._serialize_hyperparameter("average_decay")
            return config

    return MovingAverage


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_moving_average_wrapper(mode):
    def run(key):
        opt = moving_average(BASES[key])(LIBS[key].Adam(learning_rate=0.1))
        variables = make_vars()

        def step(grads):
            opt.apply_gradients(zip(grads, variables))

        if mode == "function":
            step = tf.function(step)
        for s in range(STEPS):
            step(grads_for_step(s))
        average = opt.get_slot(variables[0], "average").numpy()
        return opt, [v.numpy() for v in variables] + opt.get_weights(), average

    results = both(run)
    ours, theirs = results["keras_opt"][0], results["tf_keras"][0]
    assert [v.name for v in ours.weights] == [v.name for v in theirs.weights]
    assert ours._optimizer.iterations is ours.iterations
    assert int(ours.iterations.numpy()) == STEPS
    assert_all_equal({k: r[1] for k, r in results.items()}, mode)
    # The average trails the variable: the wrapper's own update really ran.
    w_now, average = results["keras_opt"][1][0], results["keras_opt"][2]
    assert not np.array_equal(average, w_now)
    assert not np.array_equal(average, make_vars()[0].numpy())
