"""Keras 3's base arguments on every optimizer: weight decay, EMA, accumulation, loss scale.

The oracle is ``keras.optimizers`` (Keras 3, TensorFlow backend), run side by
side with keras_opt on the same gradients; variables and ``iterations`` are
compared after every step. The optimizers used are those whose update rule
Keras 3 and tf_keras legacy share; Keras 3 writes some of them with other op
orders (``1 - beta`` folded differently, epsilon outside the square root in
Keras 3's ops vs the fused kernel), so float32 results agree to ~1e-6
relative per step and a few steps stay well inside ``RTOL = 1e-4``. The
features themselves add no such differences: SGD agrees bit for bit (asserted
below for weight decay).

Sparse gradients are checked against the same feature on the equivalent dense
gradient where the math is the same, and against float64 numpy otherwise.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_opt

RTOL = 1e-4
ATOL = 1e-6
STEPS = 5

# (name, kwargs) of optimizers whose Keras 3 update rule is the legacy one.
KERAS3_SHARED = [
    ("SGD", dict(learning_rate=0.1)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    ("Adam", dict(learning_rate=0.05)),
    # Keras 3 adds epsilon inside the square root, legacy outside: a tiny epsilon
    # makes the two rules agree to float32 rounding.
    ("RMSprop", dict(learning_rate=0.01, epsilon=1e-10)),
    ("Adagrad", dict(learning_rate=0.1)),
]


def _ids(cases):
    return [
        n + "".join(f"-{k}={v}" for k, v in kw.items() if k != "learning_rate") for n, kw in cases
    ]


def _grads(step, shapes, sparse=False):
    """Deterministic gradients for ``step``; sparse: IndexedSlices of the matrix with a repeat."""
    rng = np.random.default_rng(100 + step)
    out = []
    for i, shape in enumerate(shapes):
        if sparse and i == 0:
            indices = np.array([step % shape[0], 1, (step + 2) % shape[0], 1], np.int64)
            values = rng.standard_normal((4,) + shape[1:]).astype(np.float32)
            out.append(
                tf.IndexedSlices(
                    tf.constant(values), tf.constant(indices), tf.constant(shape, tf.int64)
                )
            )
        else:
            out.append(tf.constant(rng.standard_normal(shape).astype(np.float32)))
    return out


SHAPES = [(4, 3), (3,)]


def _init(shapes=SHAPES):
    rng = np.random.default_rng(5)
    return [rng.uniform(-1, 1, s).astype(np.float32) for s in shapes]


def _make_step(opt, variables, mode):
    def step(grads):
        opt.apply_gradients(zip(grads, variables))

    return tf.function(step) if mode == "function" else step


def side_by_side(name, kwargs, features, mode, steps=STEPS, check_bitwise=False, on_step=None):
    """Trains keras_opt and Keras 3 on the same gradients; compares every step."""
    mine = [tf.Variable(v, name=f"v{i}") for i, v in enumerate(_init())]
    theirs = [keras.Variable(v, name=f"v{i}") for i, v in enumerate(_init())]
    opt = getattr(keras_opt, name)(**kwargs, **features)
    oracle = getattr(keras.optimizers, name)(**kwargs, **features)
    if on_step is None:
        my_step = _make_step(opt, mine, mode)
        their_step = _make_step(oracle, theirs, mode)
    for step in range(steps):
        grads = _grads(step, SHAPES)
        if on_step is not None:
            on_step(step, opt, oracle, mine, theirs)
            my_step = _make_step(opt, mine, mode)
            their_step = _make_step(oracle, theirs, mode)
        my_step(grads)
        their_step(grads)
        for a, b in zip(mine, theirs):
            want = np.asarray(b.numpy())
            if check_bitwise:
                np.testing.assert_array_equal(a.numpy(), want, err_msg=f"step {step}")
            else:
                np.testing.assert_allclose(
                    a.numpy(), want, rtol=RTOL, atol=ATOL, err_msg=f"step {step}"
                )
        assert int(opt.iterations.numpy()) == int(np.asarray(oracle.iterations)), f"step {step}"
    return opt, oracle, mine, theirs


# --------------------------------------------------------------------- weight decay
@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("case", KERAS3_SHARED, ids=_ids(KERAS3_SHARED))
def test_weight_decay_matches_keras3(case, mode):
    name, kwargs = case
    side_by_side(name, kwargs, dict(weight_decay=0.05), mode)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_weight_decay_sgd_bitwise_with_schedule(mode):
    schedule = dict(
        learning_rate=keras_opt.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5)
    )
    mine = [tf.Variable(v) for v in _init()]
    theirs = [keras.Variable(v) for v in _init()]
    opt = keras_opt.SGD(weight_decay=0.1, **schedule)
    oracle = keras.optimizers.SGD(
        learning_rate=keras.optimizers.schedules.ExponentialDecay(
            0.1, decay_steps=2, decay_rate=0.5
        ),
        weight_decay=0.1,
    )
    my_step, their_step = _make_step(opt, mine, mode), _make_step(oracle, theirs, mode)
    for step in range(STEPS):
        grads = _grads(step, SHAPES)
        my_step(grads)
        their_step(grads)
        for a, b in zip(mine, theirs):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_exclude_from_weight_decay_matches_keras3(mode):
    def exclude(opt_, vars_):
        opt_.exclude_from_weight_decay(var_list=[vars_[1]])

    mine = [tf.Variable(v, name=n) for v, n in zip(_init(), ["kernel", "bias"])]
    theirs = [keras.Variable(v, name=n) for v, n in zip(_init(), ["kernel", "bias"])]
    for opt, variables in (
        (keras_opt.Adam(0.05, weight_decay=0.1), mine),
        (keras.optimizers.Adam(0.05, weight_decay=0.1), theirs),
    ):
        exclude(opt, variables)
        step = _make_step(opt, variables, mode)
        for i in range(STEPS):
            step(_grads(i, SHAPES))
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_exclude_by_name_and_after_first_step_like_keras3(mode):
    """Keras 3 accepts exclusions after training started: they apply from the next step.

    In a traced tf.function the choice was made at trace time, in both libraries,
    so this test retraces (a new step function) after the call, as a user would.
    """

    def on_step(step, opt, oracle, mine, theirs):
        if step == 2:
            opt.exclude_from_weight_decay(var_names=["v1"])
            oracle.exclude_from_weight_decay(var_names=["v1"])

    side_by_side(
        "SGD",
        dict(learning_rate=0.1),
        dict(weight_decay=0.2),
        mode,
        on_step=on_step,
        check_bitwise=True,
    )


def test_exclude_takes_effect_eagerly_and_replaces_previous():
    v = [tf.Variable(np.ones(3, np.float32), name=n) for n in ("w", "b")]
    opt = keras_opt.SGD(1.0, weight_decay=0.5)
    zero = [tf.zeros(3), tf.zeros(3)]
    opt.apply_gradients(zip(zero, v))
    np.testing.assert_array_equal(v[0].numpy(), 0.5)
    opt.exclude_from_weight_decay(var_names=["w"])
    opt.apply_gradients(zip(zero, v))
    np.testing.assert_array_equal(v[0].numpy(), 0.5)
    np.testing.assert_array_equal(v[1].numpy(), 0.25)
    opt.exclude_from_weight_decay(var_list=[v[1]])  # replaces the name exclusion
    opt.apply_gradients(zip(zero, v))
    np.testing.assert_array_equal(v[0].numpy(), 0.25)
    np.testing.assert_array_equal(v[1].numpy(), 0.25)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "Adagrad"])
def test_weight_decay_sparse_decays_only_rows_seen(name, mode):
    """Sparse == the float64 reference: decay the unique rows seen, then the sparse update.

    For SGD (a pure function of the gradient rows) the equivalent is also the dense
    step on the rows seen; for all, rows never seen stay exactly as they were.
    """
    init = np.arange(1, 13, dtype=np.float32).reshape(4, 3) / 10
    var = tf.Variable(init)
    opt = getattr(keras_opt, name)(learning_rate=0.1, weight_decay=0.3)
    reference = getattr(keras_opt, name)(learning_rate=0.1)
    ref_var = tf.Variable(init.astype(np.float64))
    grad = tf.IndexedSlices(
        tf.constant([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]),
        tf.constant([2, 0, 2]),
        tf.constant([4, 3], tf.int64),
    )
    step = _make_step(opt, [var], mode)
    step([grad])
    # float64 reference: decay rows {0, 2} once, then the optimizer's own sparse step.
    rows = np.array([0, 2])
    decayed = ref_var.numpy()
    decayed[rows] -= decayed[rows] * 0.3 * 0.1
    ref_var.assign(decayed)
    reference.apply_gradients(
        [(tf.IndexedSlices(tf.cast(grad.values, tf.float64), grad.indices, (4, 3)), ref_var)]
    )
    np.testing.assert_allclose(var.numpy(), ref_var.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(var.numpy()[[1, 3]], init[[1, 3]])


# ------------------------------------------------------------------------ config
def test_config_unchanged_without_features():
    import tf_keras

    for name in ["SGD", "Adam", "Adagrad", "Adadelta", "Adamax", "Nadam", "RMSprop", "Ftrl"]:
        mine = getattr(keras_opt, name)().get_config()
        legacy = getattr(tf_keras.optimizers.legacy, name)().get_config()
        assert mine.keys() == legacy.keys(), name
        for key in ("weight_decay", "use_ema", "gradient_accumulation_steps"):
            assert key not in mine


FEATURES = dict(
    weight_decay=0.01,
    use_ema=True,
    ema_momentum=0.9,
    ema_overwrite_frequency=3,
    loss_scale_factor=128.0,
    gradient_accumulation_steps=2,
)


@pytest.mark.parametrize("name", ["SGD", "Adam", "Ftrl", "NonFusedAdam"])
def test_config_with_features_round_trips(name):
    opt = getattr(keras_opt, name)(**FEATURES)
    config = opt.get_config()
    for key, value in FEATURES.items():
        assert config[key] == value
        assert getattr(opt, key) == value
    again = type(opt).from_config(config)
    assert again.get_config() == config
    custom = {name: type(opt)}
    assert keras_opt.deserialize(keras_opt.serialize(opt), custom).get_config() == config


# --------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(weight_decay=-0.1), ValueError, "weight_decay"),
        (dict(weight_decay="0.1"), TypeError, "weight_decay"),
        (dict(weight_decay=True), TypeError, "weight_decay"),
        (dict(gradient_accumulation_steps=1), ValueError, "gradient_accumulation_steps"),
        (dict(gradient_accumulation_steps=0), ValueError, "gradient_accumulation_steps"),
        (dict(gradient_accumulation_steps=2.0), TypeError, "gradient_accumulation_steps"),
        (dict(ema_momentum=1.5), ValueError, "ema_momentum"),
        (dict(use_ema=True, ema_momentum=-0.1), ValueError, "ema_momentum"),
        (dict(ema_momentum="high"), TypeError, "ema_momentum"),
        (dict(use_ema=True, ema_overwrite_frequency=0), ValueError, "ema_overwrite_frequency"),
        (dict(use_ema=True, ema_overwrite_frequency=2.5), TypeError, "ema_overwrite_frequency"),
        (dict(weight_decay=float("nan")), ValueError, "weight_decay"),
        (dict(loss_scale_factor=0.0), ValueError, "loss_scale_factor"),
        (dict(loss_scale_factor="2"), TypeError, "loss_scale_factor"),
        (dict(use_ema="yes"), TypeError, "use_ema"),
    ],
)
def test_bad_feature_arguments(kwargs, error, words):
    with pytest.raises(error, match=words):
        keras_opt.Adam(**kwargs)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(var_list=["bias"]), "var_list"),
        (dict(var_list=[tf.constant(1.0)]), "var_list"),
        (dict(var_names="bias"), "var_names"),
        (dict(var_names=[tf.Variable(1.0)]), "var_names"),
        (dict(var_names=[3]), "var_names"),
    ],
)
def test_bad_exclude_from_weight_decay(kwargs, words):
    opt = keras_opt.SGD(weight_decay=0.1)
    with pytest.raises(TypeError, match=words):
        opt.exclude_from_weight_decay(**kwargs)


def test_bad_arguments_in_function_and_graph():
    @tf.function
    def build():
        keras_opt.SGD(gradient_accumulation_steps=1)

    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        build()
    with tf.Graph().as_default():
        with pytest.raises(TypeError, match="weight_decay"):
            keras_opt.SGD(weight_decay=[0.1])
        opt = keras_opt.SGD(weight_decay=0.1)
        with pytest.raises(TypeError, match="var_names"):
            opt.exclude_from_weight_decay(var_names=[1])


# ---------------------------------------------------------- EMA, accumulation, loss scale
def _their_ema(oracle):
    return [np.asarray(a.numpy()) for a in oracle._model_variables_moving_average]


def _ema_side_by_side(name, kwargs, features, mode, steps=STEPS):
    """As side_by_side, also comparing the averages with Keras 3's after every step."""
    mine = [tf.Variable(v) for v in _init()]
    theirs = [keras.Variable(v) for v in _init()]
    opt = getattr(keras_opt, name)(**kwargs, **features)
    oracle = getattr(keras.optimizers, name)(**kwargs, **features)
    my_step, their_step = _make_step(opt, mine, mode), _make_step(oracle, theirs, mode)
    for step in range(steps):
        grads = _grads(step, SHAPES)
        my_step(grads)
        their_step(grads)
        for a, b in zip(mine, theirs):
            np.testing.assert_allclose(
                a.numpy(), b.numpy(), rtol=RTOL, atol=ATOL, err_msg=f"step {step}"
            )
        for var, want in zip(mine, _their_ema(oracle)):
            got = opt.get_slot(var, "ema").numpy()
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"ema, step {step}")
        assert int(opt.iterations.numpy()) == int(np.asarray(oracle.iterations)), f"step {step}"
    return opt, oracle, mine, theirs


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("frequency", [None, 3])
@pytest.mark.parametrize("case", KERAS3_SHARED[1:3], ids=_ids(KERAS3_SHARED[1:3]))
def test_ema_matches_keras3(case, frequency, mode):
    name, kwargs = case
    features = dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=frequency)
    opt, oracle, mine, theirs = _ema_side_by_side(name, kwargs, features, mode)
    opt.finalize_variable_values(mine)
    oracle.finalize_variable_values(theirs)
    for a, b in zip(mine, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("steps_k", [2, 3])
@pytest.mark.parametrize("case", KERAS3_SHARED, ids=_ids(KERAS3_SHARED))
def test_accumulation_matches_keras3(case, steps_k, mode):
    name, kwargs = case
    opt, _, _, _ = side_by_side(
        name, kwargs, dict(gradient_accumulation_steps=steps_k), mode, steps=2 * steps_k + 1
    )
    assert int(opt._grad_accum_iter.numpy()) == 2 * steps_k + 1


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_accumulation_with_schedule_sees_micro_steps_like_keras3(mode):
    """Keras 3 evaluates schedules at its raw (micro-step) counter; so does keras_opt."""
    mine = [tf.Variable(v) for v in _init()]
    theirs = [keras.Variable(v) for v in _init()]
    # Weight decay too: it uses the same (micro-step) learning rate in both.
    features = dict(gradient_accumulation_steps=2, weight_decay=0.1)
    opt = keras_opt.SGD(keras_opt.schedules.ExponentialDecay(0.1, 1, 0.5), **features)
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 1, 0.5)
    oracle = keras.optimizers.SGD(schedule, **features)
    my_step, their_step = _make_step(opt, mine, mode), _make_step(oracle, theirs, mode)
    for step in range(6):
        grads = _grads(step, SHAPES)
        my_step(grads)
        their_step(grads)
        for a, b in zip(mine, theirs):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=f"step {step}")


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_accumulation_sgd_bitwise(mode):
    side_by_side(
        "SGD",
        dict(learning_rate=0.1, momentum=0.9),
        dict(gradient_accumulation_steps=3),
        mode,
        steps=7,
        check_bitwise=True,
    )


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("case", KERAS3_SHARED[:3], ids=_ids(KERAS3_SHARED[:3]))
def test_loss_scale_factor_matches_keras3(case, mode):
    name, kwargs = case
    side_by_side(name, kwargs, dict(loss_scale_factor=64.0), mode)


def test_scale_loss_and_minimize():
    opt = keras_opt.SGD(0.1, loss_scale_factor=8.0)
    assert float(opt.scale_loss(tf.constant(2.0))) == 16.0
    assert keras_opt.SGD(0.1).scale_loss(3.0) == 3.0
    # minimize scales the loss it differentiates and unscales the gradient: a plain step.
    var, ref = tf.Variable([1.0, -2.0]), tf.Variable([1.0, -2.0])
    opt.minimize(lambda: tf.reduce_sum(var**2), [var])
    keras_opt.SGD(0.1).minimize(lambda: tf.reduce_sum(ref**2), [ref])
    np.testing.assert_array_equal(var.numpy(), ref.numpy())


COMBINATION = dict(
    weight_decay=0.05,
    use_ema=True,
    ema_momentum=0.9,
    ema_overwrite_frequency=3,
    gradient_accumulation_steps=2,
    loss_scale_factor=16.0,
    global_clipnorm=1.0,
)


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("case", KERAS3_SHARED, ids=_ids(KERAS3_SHARED))
def test_combination_matches_keras3(case, mode):
    name, kwargs = case
    _ema_side_by_side(name, kwargs, COMBINATION, mode, steps=9)


def test_no_retrace_and_unused_features_add_no_variables():
    plain = keras_opt.Adam(0.1)
    var = tf.Variable(np.ones((2, 2), np.float32))
    plain.apply_gradients([(tf.ones((2, 2)), var)])
    assert len(plain.weights) == 3 and plain.get_slot_names() == ["m", "v"]
    assert "grad_accum_iter" not in plain.__dict__
    opt = keras_opt.Adam(0.1, **COMBINATION)
    var2 = tf.Variable(np.ones((2, 2), np.float32))
    opt.build([var2])

    @tf.function
    def step(g):
        opt.apply_gradients([(g, var2)])

    for i in range(5):
        step(tf.fill((2, 2), float(i)))
    assert step.experimental_get_tracing_count() == 1
    assert opt.get_slot_names() == ["m", "v", "ema", "grad_accum"]
    assert int(opt.iterations.numpy()) == 2 and int(opt._grad_accum_iter.numpy()) == 5


# ------------------------------------------------------------------------- sparse
def _sparse_and_dense_runs(name, kwargs, features, mode, steps=STEPS):
    """The same optimizer on IndexedSlices gradients and on their dense equivalent."""
    runs = []
    for sparse in (True, False):
        variables = [tf.Variable(v) for v in _init()]
        opt = getattr(keras_opt, name)(**kwargs, **features)
        step_fn = _make_step(opt, variables, mode)
        trace = []
        for step in range(steps):
            grads = _grads(step, SHAPES, sparse=True)
            if not sparse:
                grads = [tf.convert_to_tensor(g) for g in grads]
            step_fn(grads)
            trace.append(
                [v.numpy() for v in variables]
                + [opt.get_slot(v, s).numpy() for v in variables for s in opt.get_slot_names()]
            )
        runs.append(trace)
    return runs


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("name", ["SGD", "Adam", "Adagrad"])
def test_accumulation_sparse_equals_dense(name, mode):
    """Accumulating IndexedSlices (scatter-add) == accumulating their dense equivalent.

    The applied step is dense in both (documented in accumulation.py), so the only
    difference is the summation order of repeated indices: ~1 ulp.
    """
    sparse, dense = _sparse_and_dense_runs(
        name, dict(learning_rate=0.1), dict(gradient_accumulation_steps=3), mode
    )
    for step, (a, b) in enumerate(zip(sparse, dense)):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7, err_msg=f"step {step}")


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_loss_scale_factor_sparse_equals_dense_sgd(mode):
    sparse, dense = _sparse_and_dense_runs(
        "SGD", dict(learning_rate=0.1), dict(loss_scale_factor=4.0), mode
    )
    for a, b in zip(sparse, dense):
        for x, y in zip(a, b):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["eager", "function"])
def test_ema_sparse_against_float64_reference(mode):
    """EMA on a sparse-trained variable == the float64 recurrence over its trajectory."""
    var = tf.Variable(_init()[0])
    opt = keras_opt.Adam(0.1, use_ema=True, ema_momentum=0.7)
    step_fn = _make_step(opt, [var], mode)
    reference = None
    for step in range(STEPS):
        step_fn(_grads(step, SHAPES, sparse=True)[:1])
        value = var.numpy().astype(np.float64)
        reference = value if reference is None else 0.7 * reference + 0.3 * value
        got = opt.get_slot(var, "ema").numpy()
        np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------ EMA swap
@pytest.mark.parametrize("mode", ["eager", "function"])
def test_swap_ema_weights(mode):
    var = tf.Variable(_init()[0])
    opt = keras_opt.SGD(0.1, use_ema=True, ema_momentum=0.5)
    step_fn = _make_step(opt, [var], mode)
    for step in range(3):
        step_fn(_grads(step, SHAPES)[:1])
    trained, average = var.numpy(), opt.get_slot(var, "ema").numpy()
    assert not np.array_equal(trained, average)

    def evaluate():
        with opt.swap_ema_weights([var]):
            inside = tf.identity(var.read_value())
        return inside

    inside = (tf.function(evaluate) if mode == "function" else evaluate)()
    np.testing.assert_array_equal(inside.numpy(), average)
    np.testing.assert_array_equal(var.numpy(), trained)
    np.testing.assert_array_equal(opt.get_slot(var, "ema").numpy(), average)
    with pytest.raises(ZeroDivisionError):
        with opt.swap_ema_weights([var]):
            np.testing.assert_array_equal(var.numpy(), average)
            raise ZeroDivisionError
    np.testing.assert_array_equal(var.numpy(), trained)


def test_swap_ema_weights_errors():
    var = tf.Variable(1.0)
    with pytest.raises(ValueError, match="use_ema"):
        with keras_opt.SGD(use_ema=False).swap_ema_weights([var]):
            pass
    with pytest.raises(ValueError, match="never trained"):
        with keras_opt.SGD(use_ema=True).swap_ema_weights([var]):
            pass


# ---------------------------------------------------------------------- checkpoints
def _train(opt, variables, start, stop, mode="function"):
    step_fn = _make_step(opt, variables, mode)
    for step in range(start, stop):
        step_fn(_grads(step, SHAPES, sparse=True))


def _full_state(opt, variables):
    out = {"iter": opt.iterations.numpy()}
    counter = opt.__dict__.get("_grad_accum_iter")
    if counter is not None:
        out["grad_accum_iter"] = counter.numpy()
    for i, var in enumerate(variables):
        out[f"var{i}"] = var.numpy()
        for slot in opt.get_slot_names():
            out[f"var{i}/{slot}"] = opt.get_slot(var, slot).numpy()
    return out


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("stop_at", [4, 5])
def test_checkpoint_round_trip_mid_accumulation_with_ema(tmp_path, stop_at, mode):
    """Saved mid-group (k=3) and restored into fresh objects: bit-exact continuation."""
    features = dict(COMBINATION, gradient_accumulation_steps=3)
    total = 9
    variables = [tf.Variable(v) for v in _init()]
    opt = keras_opt.Adam(0.05, **features)
    _train(opt, variables, 0, stop_at, mode)
    path = tf.train.Checkpoint(v=variables, optimizer=opt).save(str(tmp_path / "ckpt"))
    _train(opt, variables, stop_at, total, mode)
    want = _full_state(opt, variables)

    restored = [tf.Variable(np.zeros_like(v)) for v in _init()]
    opt2 = keras_opt.Adam(0.05, **features)
    opt2.build(restored)
    tf.train.Checkpoint(v=restored, optimizer=opt2).restore(path).assert_consumed()
    assert int(opt2._grad_accum_iter.numpy()) == stop_at
    _train(opt2, restored, stop_at, total, mode)
    got = _full_state(opt2, restored)
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize("build_first", [True, False])
def test_legacy_checkpoint_restores_into_optimizer_with_features(tmp_path, build_first):
    """A tf_keras checkpoint (no feature slots) restores m, v and iter; the new slots
    start fresh: grad_accum at zero, the average at the variable's value (the restored
    one when the slots are created after the restore)."""
    import warnings

    import tf_keras

    variables = [tf.Variable(v) for v in _init()]
    legacy = tf_keras.optimizers.legacy.Adam(0.05)
    for step in range(3):
        legacy.apply_gradients(zip(_grads(step, SHAPES), variables))
    path = tf.train.Checkpoint(v=variables, optimizer=legacy).save(str(tmp_path / "legacy"))

    restored = [tf.Variable(np.zeros_like(v)) for v in _init()]
    opt = keras_opt.Adam(0.05, **COMBINATION)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if build_first:
            opt.build(restored)
        status = tf.train.Checkpoint(v=restored, optimizer=opt).restore(path)
        if not build_first:
            opt.build(restored)  # the slots are created now, from the deferred values
    # The new slots and the micro-step counter are not in the checkpoint: partial.
    status.assert_nontrivial_match()
    messages = [str(w.message) for w in caught]
    assert not any("grad_accum" in m for m in messages), messages
    if not build_first:  # m and v came from the checkpoint, ema did not: said once per var
        assert sum("'ema'" in m for m in messages) == len(restored), messages
    assert int(opt.iterations.numpy()) == 3
    for var, legacy_var in zip(restored, variables):
        np.testing.assert_array_equal(var.numpy(), legacy_var.numpy())
        for slot in ("m", "v"):
            np.testing.assert_array_equal(
                opt.get_slot(var, slot).numpy(), legacy.get_slot(legacy_var, slot).numpy()
            )
        np.testing.assert_array_equal(opt.get_slot(var, "grad_accum").numpy(), 0.0)
        start = np.zeros_like(var.numpy()) if build_first else var.numpy()
        np.testing.assert_array_equal(opt.get_slot(var, "ema").numpy(), start)
    assert int(opt._grad_accum_iter.numpy()) == 0


def test_swap_before_any_step_is_a_no_op():
    var = tf.Variable(_init()[0])
    opt = keras_opt.Adam(0.1, use_ema=True)
    opt.build([var])
    with opt.swap_ema_weights([var]):
        np.testing.assert_array_equal(var.numpy(), _init()[0])
    np.testing.assert_array_equal(var.numpy(), _init()[0])


@pytest.mark.parametrize("target", ["keras_opt", "tf_keras"])
def test_checkpoint_with_features_restores_into_legacy_optimizer(tmp_path, target):
    import tf_keras

    variables = [tf.Variable(v) for v in _init()]
    opt = keras_opt.Adam(0.05, **COMBINATION)
    _train(opt, variables, 0, 4, "eager")
    path = tf.train.Checkpoint(v=variables, optimizer=opt).save(str(tmp_path / "features"))

    restored = [tf.Variable(np.zeros_like(v)) for v in _init()]
    plain = (keras_opt.Adam if target == "keras_opt" else tf_keras.optimizers.legacy.Adam)(0.05)
    plain.build(restored) if target == "keras_opt" else plain._create_all_weights(restored)
    if target == "keras_opt":
        # The feature slots are reported as values this optimizer does not use.
        warning = keras_opt.optimizer_v2.checkpointing.CheckpointMismatchWarning
        with pytest.warns(warning, match="ema"):
            tf.train.Checkpoint(v=restored, optimizer=plain).restore(path).expect_partial()
    else:
        tf.train.Checkpoint(v=restored, optimizer=plain).restore(path).expect_partial()
    assert int(plain.iterations.numpy()) == int(opt.iterations.numpy()) == 2
    for var, source in zip(restored, variables):
        np.testing.assert_array_equal(var.numpy(), source.numpy())
        for slot in ("m", "v"):
            np.testing.assert_array_equal(
                plain.get_slot(var, slot).numpy(), opt.get_slot(source, slot).numpy()
            )


# ------------------------------------------------------------- MirroredStrategy worker
@pytest.fixture(scope="module")
def mirrored_results(tmp_path_factory):
    import dist_utils

    out = tmp_path_factory.mktemp("base_features_mirrored")
    dist_utils.run_worker("base_features_mirrored.py", [str(out)], timeout_s=240)
    import json

    with open(out / "base_features.json") as f:
        meta = json.load(f)
    return meta, dict(np.load(out / "base_features.npz"))


MIRRORED_KEYS = [f"{c}/{m}" for c in ("accumulation", "ema", "all") for m in ("eager", "function")]


@pytest.mark.parametrize("key", MIRRORED_KEYS)
def test_mirrored_matches_one_device(mirrored_results, key):
    """2 replicas (IndexedSlices + dense gradients) == one device on the summed gradient.

    All-reduce sums exactly what the one-device run sums, so the runs agree bit for
    bit, at every step, for variables, slots (m, v, ema, grad_accum) and counters.
    """
    import dist_utils

    meta, arrays = mirrored_results
    dist_utils.worker_result(meta, key)
    prefix = f"{key}/mirrored/"
    mirrored = {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}
    assert any("/grad_accum@" in k or "/ema@" in k for k in mirrored)
    for name, value in mirrored.items():
        one = arrays[f"{key}/one/{name}"]
        for replica in range(value.shape[0]):
            np.testing.assert_array_equal(
                value[replica], one[0], err_msg=f"{name} replica {replica}"
            )


@pytest.mark.parametrize("key", [k for k in MIRRORED_KEYS if not k.startswith("accumulation")])
def test_mirrored_swap_and_finalize(mirrored_results, key):
    import dist_utils

    meta, arrays = mirrored_results
    dist_utils.worker_result(meta, key)
    for i in range(2):
        get = lambda what, i=i: arrays[f"{key}/swap/{i}/{what}"]  # noqa: E731
        np.testing.assert_array_equal(get("inside"), get("averages"))
        np.testing.assert_array_equal(get("after"), get("before"))
        np.testing.assert_array_equal(get("after_avg"), get("averages"))
        np.testing.assert_array_equal(get("finalized"), get("averages"))
        assert not np.array_equal(get("before"), get("averages"))


# ------------------------------------------------------------------- kill and resume
def test_sigkill_mid_accumulation_and_resume_equals_uninterrupted(tmp_path):
    """tests/workers/checkpoint_crash.py --features: SIGKILLed after step 6 (its last
    checkpoint, at call 4, is mid-group: groups of 3 calls), resumed in a new process:
    bit-exact with a run never killed."""
    import os
    import signal
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "workers", "checkpoint_crash.py")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    flags = ["--steps", "11", "--every", "4", "--features"]

    def run(name, run_dir, *extra):
        args = ["--dir", str(tmp_path / run_dir), "--out", str(tmp_path / f"{name}.npz")]
        return subprocess.run(
            [sys.executable, "-u", script, *args, *flags, *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=150,
        )

    full = run("full", "full_run")
    assert full.returncode == 0, full.stderr[-3000:]
    crash = run("crash", "run", "--die-after", "6")
    assert crash.returncode == -signal.SIGKILL, crash.stderr[-3000:]
    assert "step 6" in crash.stdout and not (tmp_path / "crash.npz").exists()
    assert tf.train.latest_checkpoint(str(tmp_path / "run")).endswith("-4")
    resume = run("resume", "run")
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert "resumed at step 4" in resume.stdout
    got, want = np.load(tmp_path / "resume.npz"), np.load(tmp_path / "full.npz")
    assert sorted(got.files) == sorted(want.files)
    assert any(k.endswith("/grad_accum") for k in want.files)
    assert any(k.endswith("/ema") for k in want.files)
    for key in want.files:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert int(want["step"]) == 11 and int(want["iter"]) == 11 // 3


# ------------------------------------------------------------------------ TF1 graphs
def test_features_in_tf1_graph_equal_eager():
    """A tf.compat.v1 graph + Session runs the same stages (the tf.conds included)."""
    features = dict(COMBINATION, gradient_accumulation_steps=3)
    eager_vars = [tf.Variable(v) for v in _init()]
    eager_opt = keras_opt.Adam(0.05, **features)
    graph_values = []
    numpy_grads = [[g.numpy() for g in _grads(step, SHAPES)] for step in range(7)]
    with tf.Graph().as_default() as graph:
        variables = [tf.compat.v1.Variable(v, use_resource=True) for v in _init()]
        opt = keras_opt.Adam(0.05, **features)
        grads = [tf.compat.v1.placeholder(tf.float32, s) for s in SHAPES]
        train_op = opt.apply_gradients(zip(grads, variables))
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for step in range(7):
                feed = dict(zip(grads, numpy_grads[step]))
                sess.run(train_op, feed)
                graph_values.append(sess.run(variables + [opt.iterations]))
    for step in range(7):
        eager_opt.apply_gradients(zip(_grads(step, SHAPES), eager_vars))
        for got, want in zip(graph_values[step], [v.numpy() for v in eager_vars]):
            np.testing.assert_array_equal(got, want, err_msg=f"step {step}")
        assert graph_values[step][-1] == int(eager_opt.iterations.numpy())


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_unused_features_leave_the_traced_graph_as_it_was(sparse):
    """No stage leaves a trace when unused: the traced step has tf_keras legacy's ops.

    Oracle: the same Adam step traced with tf_keras's legacy Adam (the op-type
    histogram; node names differ by the captured variables' ids). keras_opt runs
    with ``fused_kernels=False`` here, the per-variable kernels tf_keras runs.
    Spelling out the features' defaults gives the same graph as not giving them.
    """
    import collections

    from tf_keras.optimizers import legacy as tf_keras_legacy

    def op_types(opt):
        v = tf.Variable(np.ones((4, 3), np.float32), name="w")
        grad = (tf.IndexedSlices(tf.ones((2, 3)), tf.constant([0, 2]), tf.constant([4, 3]))
                if sparse else tf.ones((4, 3)))  # fmt: skip

        @tf.function
        def step(g):
            opt.apply_gradients([(g, v)])

        graph = step.get_concrete_function(grad).graph.as_graph_def()
        return collections.Counter(n.op for n in graph.node), opt

    ours, opt = op_types(keras_opt.Adam(0.1, fused_kernels=False))
    # Without a strategy keras_opt skips the one-replica all_reduce (an IdentityN
    # over the gradients, and an Identity each); tf_keras skips it too with a
    # pass-through gradient_aggregator.
    theirs, _ = op_types(tf_keras_legacy.Adam(0.1, gradient_aggregator=lambda gv: gv))
    assert ours == theirs
    with_all_reduce, _ = op_types(tf_keras_legacy.Adam(0.1))
    assert with_all_reduce["IdentityN"] == ours["IdentityN"] + (0 if sparse else 1)
    defaults = keras_opt.optimizer_v2.base_arguments.FEATURE_DEFAULTS
    explicit, _ = op_types(keras_opt.Adam(0.1, fused_kernels=False, **defaults))
    assert explicit == ours
    assert len(opt.weights) == 3  # iter, m, v: no feature weights or slots


# ------------------------------------------------- inside a LossScaleOptimizer
@pytest.mark.parametrize("mode", ["eager", "tf_function"])
def test_loss_scale_optimizer_skips_a_micro_step_without_counting_it(mode):
    """An inf micro-step under accumulation counts nowhere (Keras 3's loss scaler).

    Oracle: the same optimizer, unwrapped, fed only the finite gradients: the
    dynamic loss scaler (``apply_gradients`` takes unscaled gradients, so its
    scale does not enter the update) must leave no trace of the skipped call in
    variables, slots, ``iterations`` or the micro-step count.
    """
    grads = [np.array([0.5, -1.0], np.float32), np.array([np.inf, 1.0], np.float32),
             np.array([0.25, 0.5], np.float32), np.array([1.0, 2.0], np.float32),
             np.array([-0.5, 0.5], np.float32)]  # fmt: skip
    finite = [g for g in grads if np.isfinite(g).all()]

    def run(wrapped, stream):
        var = tf.Variable([1.0, 2.0])
        inner = keras_opt.Adam(0.1, gradient_accumulation_steps=2, use_ema=True)
        opt = keras_opt.LossScaleOptimizer(inner, initial_scale=1.0) if wrapped else inner

        def step(g):
            opt.apply_gradients([(g, var)])

        step = tf.function(step) if mode == "tf_function" else step
        for g in stream:
            step(tf.constant(g))
        return var.numpy(), inner.get_slot(var, "ema").numpy(), inner.get_slot(var, "m").numpy(), \
            int(inner.iterations.numpy()), int(inner._grad_accum_iter.numpy())  # fmt: skip

    got, want = run(True, grads), run(False, finite)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    assert want[3:] == (2, 4)


def test_loss_scale_optimizer_forwards_the_feature_methods_and_attributes():
    inner = keras_opt.SGD(0.5, weight_decay=0.1, use_ema=True, ema_momentum=0.5)
    lso = keras_opt.LossScaleOptimizer(inner, dynamic=False, initial_scale=1.0)
    kernel, bias = tf.Variable([1.0], name="kernel"), tf.Variable([1.0], name="bias")
    lso.exclude_from_weight_decay(var_names=["bias"])
    assert (lso.use_ema, lso.ema_momentum, lso.weight_decay) == (True, 0.5, 0.1)
    for _ in range(2):
        lso.apply_gradients([(tf.constant([0.0]), kernel), (tf.constant([0.0]), bias)])
    # Zero gradients: only weight decay moves the kernel, (1 - 0.1 * 0.5) per step.
    np.testing.assert_allclose(kernel.numpy(), [0.95**2], rtol=1e-6)
    np.testing.assert_array_equal(bias.numpy(), [1.0])
    average = inner.get_slot(kernel, "ema").numpy().copy()
    with lso.swap_ema_weights([kernel]):
        np.testing.assert_array_equal(kernel.numpy(), average)
    np.testing.assert_allclose(kernel.numpy(), [0.95**2], rtol=1e-6)
    lso.finalize_variable_values([kernel])
    np.testing.assert_array_equal(kernel.numpy(), average)
