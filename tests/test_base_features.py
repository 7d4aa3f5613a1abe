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
    ("RMSprop", dict(learning_rate=0.01)),
    ("Adagrad", dict(learning_rate=0.1)),
]


def _ids(cases):
    return [n + "".join(f"-{k}={v}" for k, v in kw.items() if k != "learning_rate") for n, kw in cases]


def _grads(step, shapes, sparse=False):
    """Deterministic gradients for ``step``; sparse: IndexedSlices of the matrix with a repeat."""
    rng = np.random.default_rng(100 + step)
    out = []
    for i, shape in enumerate(shapes):
        if sparse and i == 0:
            indices = np.array([step % shape[0], 1, (step + 2) % shape[0], 1], np.int64)
            values = rng.standard_normal((4,) + shape[1:]).astype(np.float32)
            out.append(
                tf.IndexedSlices(tf.constant(values), tf.constant(indices), tf.constant(shape, tf.int64))
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
                np.testing.assert_allclose(a.numpy(), want, rtol=RTOL, atol=ATOL, err_msg=f"step {step}")
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
        learning_rate=keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=2, decay_rate=0.5),
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

    side_by_side("SGD", dict(learning_rate=0.1), dict(weight_decay=0.2), mode, on_step=on_step,
                 check_bitwise=True)


def test_exclude_takes_effect_eagerly_and_replaces_previous():
    v = [tf.Variable(np.ones(3, np.float32), name="w"), tf.Variable(np.ones(3, np.float32), name="b")]
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
        tf.constant([[1.0, 2.0, 3.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]), tf.constant([2, 0, 2]),
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
