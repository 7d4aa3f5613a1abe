"""Tests of keras_opt.schedules.

Every schedule is compared, at steps spanning several periods (boundaries, staircase
jumps, cycle and warmup ends included), to

* tf_keras's schedule of the same name and config: bit-identical in every dtype, as
  both run the same TF ops in the same order;
* a float64 numpy reference written here from the formulas (restarts are found by
  walking the periods, not by tf_keras's closed form), within a dtype tolerance.

Then: step kinds (Python int, int32/int64 tensors, the int64 ``iterations`` variable)
in eager and ``tf.function``, no retracing, config and serialize round trips (ours and
tf_keras's dicts), custom subclasses, and bad input.
"""

from __future__ import annotations

import functools
import inspect
import json
import math
import warnings

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from keras_opt import schedules

TFK = tf_keras.optimizers.schedules

# --------------------------------------------------------------------------------------
# float64 numpy reference, from the formulas in the docstrings.


def ref_exponential(t, initial_learning_rate, decay_steps, decay_rate, staircase=False):
    p = np.float64(t) / decay_steps
    if staircase:
        p = np.floor(p)
    return initial_learning_rate * np.power(np.float64(decay_rate), p)


def ref_piecewise(t, boundaries, values):
    for b, v in zip(boundaries, values):
        if t <= b:
            return np.float64(v)
    return np.float64(values[-1])


def ref_polynomial(
    t, initial_learning_rate, decay_steps, end_learning_rate=1e-4, power=1.0, cycle=False
):
    t = np.float64(t)
    if cycle:
        horizon = decay_steps * max(1.0, np.ceil(t / decay_steps))
    else:
        t, horizon = min(t, decay_steps), np.float64(decay_steps)
    return (initial_learning_rate - end_learning_rate) * (1 - t / horizon) ** power + (
        end_learning_rate
    )


def ref_inverse_time(t, initial_learning_rate, decay_steps, decay_rate, staircase=False):
    p = np.float64(t) / decay_steps
    if staircase:
        p = np.floor(p)
    return initial_learning_rate / (1 + decay_rate * p)


def ref_cosine(
    t, initial_learning_rate, decay_steps, alpha=0.0, warmup_target=None, warmup_steps=0
):
    def decay(s, from_lr):
        s = min(np.float64(s), decay_steps)
        return from_lr * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * s / decay_steps)) + alpha)

    if warmup_target is None:
        return decay(t, initial_learning_rate)
    if t < warmup_steps:
        return initial_learning_rate + (warmup_target - initial_learning_rate) * t / warmup_steps
    return decay(t - warmup_steps, warmup_target)


def ref_restarts(t, initial_learning_rate, first_decay_steps, t_mul=2.0, m_mul=1.0, alpha=0.0):
    start, length, i = np.float64(0), np.float64(first_decay_steps), 0
    while t >= start + length:  # walk the periods one by one
        start, length, i = start + length, length * t_mul, i + 1
    c = (t - start) / length
    cosine = 0.5 * m_mul**i * (1 + np.cos(np.pi * c))
    return initial_learning_rate * ((1 - alpha) * cosine + alpha)


REFERENCES = {
    "ExponentialDecay": ref_exponential,
    "PiecewiseConstantDecay": ref_piecewise,
    "PolynomialDecay": ref_polynomial,
    "InverseTimeDecay": ref_inverse_time,
    "CosineDecay": ref_cosine,
    "CosineDecayRestarts": ref_restarts,
}

# --------------------------------------------------------------------------------------
# Cases: (id, class name, kwargs, key steps). The steps tested are a grid over
# [0, 1.25 * max(key steps)] plus every key step and its neighbours.

CASES = [
    (
        "exp",
        "ExponentialDecay",
        dict(initial_learning_rate=0.1, decay_steps=10, decay_rate=0.9),
        [40],
    ),
    (
        "exp-staircase",
        "ExponentialDecay",
        dict(initial_learning_rate=0.5, decay_steps=7, decay_rate=0.5, staircase=True),
        [7, 14, 21, 28],
    ),
    ("pw-1", "PiecewiseConstantDecay", dict(boundaries=[5], values=[1.0, 0.1]), [5]),
    (
        "pw-3",
        "PiecewiseConstantDecay",
        dict(boundaries=[10, 20, 40], values=[1.0, 0.5, 0.1, 0.01]),
        [10, 20, 40],
    ),
    ("poly", "PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=20), [20]),
    (
        "poly-sqrt",
        "PolynomialDecay",
        dict(initial_learning_rate=1.0, decay_steps=16, end_learning_rate=0.01, power=0.5),
        [16],
    ),
    (
        "poly-cycle",
        "PolynomialDecay",
        dict(initial_learning_rate=0.1, decay_steps=10, power=2.0, cycle=True),
        [10, 20, 30, 40],
    ),
    (
        "poly-rising",
        "PolynomialDecay",
        dict(initial_learning_rate=0.01, decay_steps=12, end_learning_rate=0.1),
        [12],
    ),
    (
        "inv",
        "InverseTimeDecay",
        dict(initial_learning_rate=0.1, decay_steps=5, decay_rate=0.5),
        [30],
    ),
    (
        "inv-staircase",
        "InverseTimeDecay",
        dict(initial_learning_rate=0.1, decay_steps=6, decay_rate=2.0, staircase=True),
        [6, 12, 18],
    ),
    ("cos", "CosineDecay", dict(initial_learning_rate=0.1, decay_steps=20), [20]),
    ("cos-alpha", "CosineDecay", dict(initial_learning_rate=1.0, decay_steps=16, alpha=0.1), [16]),
    (
        "cos-warmup",
        "CosineDecay",
        dict(initial_learning_rate=0.0, decay_steps=20, warmup_target=0.1, warmup_steps=8),
        [8, 28],
    ),
    (
        "cos-warmup-alpha",
        "CosineDecay",
        dict(
            initial_learning_rate=0.01, decay_steps=10, alpha=0.2, warmup_target=1.0, warmup_steps=5
        ),
        [5, 15],
    ),
    (
        "sgdr",
        "CosineDecayRestarts",
        dict(initial_learning_rate=0.1, first_decay_steps=10),
        [10, 30, 70],
    ),
    (
        "sgdr-tmul1",
        "CosineDecayRestarts",
        dict(initial_learning_rate=1.0, first_decay_steps=8, t_mul=1.0, m_mul=0.5),
        [8, 16, 24, 32],
    ),
    (
        "sgdr-tmul1.5",
        "CosineDecayRestarts",
        dict(initial_learning_rate=0.1, first_decay_steps=10, t_mul=1.5, m_mul=0.8, alpha=0.1),
        [10, 25, 47.5],
    ),
]
CASE_IDS = [c[0] for c in CASES]
DTYPES = [np.float16, np.float32, np.float64]
# |ours - reference| <= TOL[dtype] * (largest learning rate of the schedule).
TOL = {np.float16: 4e-3, np.float32: 1e-6, np.float64: 1e-13}


def steps_for(key_steps):
    top = int(math.ceil(1.25 * max(key_steps)))
    steps = set(range(0, top + 1, max(1, top // 12)))
    for k in key_steps:
        steps |= {int(math.floor(k)) - 1, int(math.floor(k)), int(math.ceil(k)), int(k) + 1}
    return sorted(s for s in steps if s >= 0)


def with_dtype(kwargs, dtype):
    """kwargs with the learning rates that set the schedule's dtype as numpy scalars."""
    kwargs = dict(kwargs)
    if "values" in kwargs:
        kwargs["values"] = [dtype(v) for v in kwargs["values"]]
    else:
        kwargs["initial_learning_rate"] = dtype(kwargs["initial_learning_rate"])
    return kwargs


def scale_of(kwargs):
    rates = [kwargs.get(k) or 0 for k in ("initial_learning_rate", "end_learning_rate")]
    rates.append(kwargs.get("warmup_target") or 0)
    return max(rates + list(kwargs.get("values", [])))


def evaluate(schedule, steps):
    return np.array([schedule(s).numpy() for s in steps])


@functools.cache
def ours_values(case_id, dtype):
    _, cls, kwargs, key_steps = CASES[CASE_IDS.index(case_id)]
    return evaluate(getattr(schedules, cls)(**with_dtype(kwargs, dtype)), steps_for(key_steps))


# --------------------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_bit_identical_to_tf_keras(case, dtype):
    case_id, cls, kwargs, key_steps = case
    theirs = evaluate(getattr(TFK, cls)(**with_dtype(kwargs, dtype)), steps_for(key_steps))
    ours = ours_values(case_id, dtype)
    assert ours.dtype == theirs.dtype == dtype
    np.testing.assert_array_equal(ours, theirs)


def effective_kwargs(cls, kwargs, dtype):
    """The numbers a schedule of ``dtype`` really computes with.

    The initial rate (and PiecewiseConstantDecay's values) are given in ``dtype``. Other
    float hyperparameters pass through ``tf.cast(python_float, dtype)``, which first
    makes a float32 tensor: a float64 schedule uses float32(decay_rate), etc. That is
    tf_keras's behaviour, kept for bit-identity. CosineDecay's ``alpha`` is the
    exception: ``(1 - alpha)`` is computed in Python and converted directly.
    """
    cast = {"decay_rate", "end_learning_rate", "power", "warmup_target", "t_mul", "m_mul"}
    if cls == "CosineDecayRestarts":
        cast.add("alpha")
    bound = inspect.signature(getattr(schedules, cls)).bind(**kwargs)
    bound.apply_defaults()
    out = {}
    for key, value in bound.arguments.items():
        if key == "name":
            continue
        if key == "initial_learning_rate":
            value = float(dtype(value))
        elif key in cast and value is not None:
            value = float(dtype(np.float32(value)))
        out[key] = value
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_float64_reference(case, dtype):
    case_id, cls, kwargs, key_steps = case
    ref_kwargs = effective_kwargs(cls, kwargs, dtype)
    steps = steps_for(key_steps)
    expected = np.array([REFERENCES[cls](s, **ref_kwargs) for s in steps])
    np.testing.assert_allclose(
        ours_values(case_id, dtype), expected, rtol=0, atol=TOL[dtype] * scale_of(kwargs)
    )


def test_reference_spot_values():
    """Hand-derived values pin the references themselves."""
    assert ref_exponential(20, 0.1, 10, 0.9) == pytest.approx(0.1 * 0.81)
    assert ref_piecewise(10, [10, 20], [1.0, 0.5, 0.1]) == 1.0
    assert ref_piecewise(11, [10, 20], [1.0, 0.5, 0.1]) == 0.5
    assert ref_polynomial(15, 0.1, 10, 0.0, 1.0, cycle=True) == pytest.approx(0.025)
    assert ref_inverse_time(10, 0.1, 5, 0.5) == pytest.approx(0.05)
    assert ref_cosine(10, 1.0, 20) == pytest.approx(0.5)
    assert ref_cosine(4, 0.0, 20, warmup_target=1.0, warmup_steps=8) == pytest.approx(0.5)
    assert ref_restarts(30, 1.0, 10, t_mul=2.0, m_mul=0.5) == pytest.approx(0.25)
    assert ref_restarts(20, 1.0, 10) == pytest.approx(0.5)


# Step kinds, eager and tf.function. Under tf.function Grappler may rewrite the graph
# (the last bit can differ from eager), so each is compared to tf_keras run the same way.
STEP_KINDS = {
    "int32": lambda s: tf.constant(s, tf.int32),
    "int64": lambda s: tf.constant(s, tf.int64),
    "int64-variable": lambda s: tf.Variable(s, dtype=tf.int64),
}


# Python ints in eager mode are covered above; a Python int given to a tf.function
# retraces at each new value (TF's rule), so it is no case.
KIND_MODES = [("int32", "eager"), ("int64-variable", "eager")] + [
    (k, "function") for k in ("int32", "int64", "int64-variable")
]
# One case per class, the ones with the most branches.
RICH_IDS = [
    "exp-staircase",
    "pw-3",
    "poly-cycle",
    "inv-staircase",
    "cos-warmup-alpha",
    "sgdr-tmul1.5",
]
RICH = [CASES[CASE_IDS.index(i)] for i in RICH_IDS]


@pytest.mark.parametrize("kind, mode", KIND_MODES, ids=[f"{k}-{m}" for k, m in KIND_MODES])
@pytest.mark.parametrize("case", RICH, ids=RICH_IDS)
def test_step_kinds_and_modes(case, kind, mode):
    case_id, cls, kwargs, key_steps = case
    ours, theirs = getattr(schedules, cls)(**kwargs), getattr(TFK, cls)(**kwargs)
    if mode == "function":
        ours, theirs = tf.function(ours), tf.function(theirs)
    steps = [STEP_KINDS[kind](s) for s in steps_for(key_steps)[::4]]
    got = evaluate(ours, steps)
    np.testing.assert_array_equal(got, evaluate(theirs, steps))
    scale = scale_of(kwargs)
    expected = ours_values(case_id, np.float32)[::4]
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOL[np.float32] * scale)


@pytest.mark.parametrize("case", RICH, ids=RICH_IDS)
def test_no_retrace_as_iterations_advance(case):
    _, cls, kwargs, _ = case
    schedule = getattr(schedules, cls)(**kwargs)
    iterations = tf.Variable(0, dtype=tf.int64, name="iter")
    traces = []

    @tf.function
    def learning_rate(step):
        traces.append(1)
        return schedule(step)

    for _ in range(50):
        iterations.assign_add(1)
        learning_rate(iterations)
    assert len(traces) == 1
    assert learning_rate(iterations).numpy() == pytest.approx(schedule(50).numpy(), rel=1e-6)


def test_tensor_arguments_are_accepted():
    s = schedules.ExponentialDecay(tf.constant(0.1, tf.float64), tf.constant(10), 0.9)
    assert s(10).dtype == tf.float64
    assert s(10).numpy() == pytest.approx(0.09)
    pw = schedules.PiecewiseConstantDecay(
        [tf.constant(5, tf.int64)], [tf.constant(1.0), tf.constant(0.5)]
    )
    assert pw(tf.constant(6, tf.int64)).numpy() == 0.5
    # tf_keras's cycle branch fails for a tensor decay_steps; ours does not.
    poly = schedules.PolynomialDecay(0.1, tf.constant(10), end_learning_rate=0.0, cycle=True)
    assert poly(15).numpy() == pytest.approx(0.025)


def test_shrinking_restarts_warn():
    with pytest.warns(UserWarning, match=r"NaN from step 20"):
        schedules.CosineDecayRestarts(1.0, 10, t_mul=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schedules.CosineDecayRestarts(1.0, 10, t_mul=1.0)


# --------------------------------------------------------------------------------------
# Config and serialization.


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_get_config_round_trip(case):
    case_id, cls, kwargs, key_steps = case
    schedule = getattr(schedules, cls)(**kwargs, name="lr")
    config = schedule.get_config()
    assert config == getattr(TFK, cls)(**kwargs, name="lr").get_config()
    clone = type(schedule).from_config(config)
    assert clone.get_config() == config
    np.testing.assert_array_equal(
        evaluate(clone, steps_for(key_steps)), ours_values(case_id, np.float32)
    )


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_serialize_matches_tf_keras_and_round_trips(case):
    _, cls, kwargs, _ = case
    ours = getattr(schedules, cls)(**kwargs)
    theirs = getattr(TFK, cls)(**kwargs)
    config = schedules.serialize(ours)
    assert config == TFK.serialize(theirs)
    assert (
        config == tf_keras.optimizers.legacy.SGD(learning_rate=theirs).get_config()["learning_rate"]
    )
    assert schedules.serialize(ours, use_legacy_format=True) == TFK.serialize(
        theirs, use_legacy_format=True
    )
    # ours -> JSON -> ours
    clone = schedules.deserialize(json.loads(json.dumps(config)))
    assert type(clone) is type(ours)
    assert clone.get_config() == ours.get_config()
    # a foreign (tf_keras) schedule serializes to the same dict
    assert schedules.serialize(theirs) == config
    # ours -> tf_keras: the dict also loads into tf_keras
    assert type(TFK.deserialize(config)) is type(theirs)


@pytest.mark.parametrize("legacy", [False, True], ids=["dict", "legacy-dict"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_deserialize_tf_keras_dict(case, legacy):
    case_id, cls, kwargs, key_steps = case
    config = TFK.serialize(getattr(TFK, cls)(**kwargs), use_legacy_format=legacy)
    schedule = schedules.deserialize(config)
    assert type(schedule) is getattr(schedules, cls)
    np.testing.assert_array_equal(
        evaluate(schedule, steps_for(key_steps)), ours_values(case_id, np.float32)
    )


def test_deserialize_other_keras_dicts():
    # As written by Keras 3 (whose default names differ) ...
    keras3 = {
        "module": "keras.optimizers.schedules",
        "class_name": "CosineDecay",
        "config": {
            "initial_learning_rate": 0.1,
            "decay_steps": 10,
            "alpha": 0.0,
            "name": "CosineDecay",
            "warmup_target": None,
            "warmup_steps": 0,
        },
        "registered_name": None,
    }
    assert isinstance(schedules.deserialize(keras3), schedules.CosineDecay)
    # ... and by a serializer that records the defining module of a tf_keras schedule.
    internal = dict(keras3, module="tf_keras.src.optimizers.schedules.learning_rate_schedule")
    assert isinstance(schedules.deserialize(internal), schedules.CosineDecay)
    own = dict(keras3, module="keras_opt.schedules")
    assert isinstance(schedules.deserialize(own), schedules.CosineDecay)


def test_tensor_config_round_trips():
    schedule = schedules.ExponentialDecay(tf.constant(0.1, tf.float64), 10, 0.9)
    config = schedules.serialize(schedule)
    assert config == TFK.serialize(TFK.ExponentialDecay(tf.constant(0.1, tf.float64), 10, 0.9))
    assert config["config"]["initial_learning_rate"]["class_name"] == "__tensor__"
    clone = schedules.deserialize(json.loads(json.dumps(config)))
    assert clone(5).dtype == tf.float64
    assert clone(5).numpy() == schedule(5).numpy()


def test_deserialize_returns_a_schedule_unchanged():
    schedule = schedules.CosineDecay(0.1, 10)
    assert schedules.deserialize(schedule) is schedule


class WarmupThenConstant(schedules.LearningRateSchedule):
    """lr = peak * min(1, t / warmup): a user-defined schedule."""

    def __init__(self, peak, warmup):
        self.peak = peak
        self.warmup = warmup

    def __call__(self, step):
        t = tf.cast(step, tf.float32)
        return self.peak * tf.minimum(1.0, t / self.warmup)

    def get_config(self):
        return {"peak": self.peak, "warmup": self.warmup}


def test_custom_schedule_round_trips_by_registered_name():
    @schedules.register_schedule(package="my_project")
    class Registered(WarmupThenConstant):
        pass

    config = schedules.serialize(Registered(0.1, 4))
    assert config["registered_name"] == "my_project>Registered"
    assert config["module"] == __name__
    for form in (config, schedules.serialize(Registered(0.1, 4), use_legacy_format=True)):
        clone = schedules.deserialize(json.loads(json.dumps(form)))
        assert type(clone) is Registered
        assert clone(2).numpy() == pytest.approx(0.05)


def test_register_schedule_plain_decorator_and_bad_class():
    @schedules.register_schedule
    class Plain(WarmupThenConstant):
        pass

    assert schedules.serialize(Plain(1.0, 2))["registered_name"] == "Custom>Plain"
    with pytest.raises(TypeError, match="get_config"):
        schedules.register_schedule(int)


def test_custom_schedule_with_custom_objects():
    config = schedules.serialize(WarmupThenConstant(0.1, 4))
    assert config["registered_name"] == "WarmupThenConstant"
    with pytest.raises(ValueError, match=r"Unknown .*WarmupThenConstant.*ExponentialDecay"):
        schedules.deserialize(config)
    clone = schedules.deserialize(config, custom_objects={"WarmupThenConstant": WarmupThenConstant})
    assert type(clone) is WarmupThenConstant


def test_unknown_names_list_the_known_ones():
    # (LinearCosineDecay, once the example here, is now known: see test_module_names.py.)
    with pytest.raises(ValueError, match=r"'NoSuchDecay'.*CosineDecay, CosineDecayRestarts"):
        schedules.deserialize({"class_name": "NoSuchDecay", "config": {}})
    with pytest.raises(ValueError, match="from module 'my_pkg'"):
        schedules.deserialize({"module": "my_pkg", "class_name": "CosineDecay", "config": {}})
    with pytest.raises(TypeError, match="'class_name' and 'config'"):
        schedules.deserialize("ExponentialDecay")


def test_base_class_contract():
    class NoConfig(schedules.LearningRateSchedule):
        def __call__(self, step):
            return tf.constant(0.1)

    with pytest.raises(NotImplementedError, match="NoConfig.*get_config"):
        schedules.serialize(NoConfig())
    with pytest.raises(NotImplementedError, match="__call__"):
        schedules.LearningRateSchedule()(0)
    with pytest.raises(TypeError, match="schedule instance"):
        schedules.serialize(0.1)


# --------------------------------------------------------------------------------------
# Bad input fails at construction.

BAD = [
    (
        "ExponentialDecay",
        dict(initial_learning_rate=0.1, decay_steps=0, decay_rate=0.9),
        "decay_steps.*> 0",
    ),
    (
        "ExponentialDecay",
        dict(initial_learning_rate=0.1, decay_steps=-5, decay_rate=0.9),
        "decay_steps=-5",
    ),
    (
        "ExponentialDecay",
        dict(initial_learning_rate=-0.1, decay_steps=5, decay_rate=0.9),
        "initial_learning_rate",
    ),
    (
        "ExponentialDecay",
        dict(initial_learning_rate=0.1, decay_steps=5, decay_rate=-0.9),
        "decay_rate",
    ),
    (
        "ExponentialDecay",
        dict(initial_learning_rate=float("nan"), decay_steps=5, decay_rate=0.9),
        "nan",
    ),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=0), "decay_steps"),
    (
        "PolynomialDecay",
        dict(initial_learning_rate=0.1, decay_steps=5, end_learning_rate=-1.0),
        "end_learning_rate",
    ),
    ("PolynomialDecay", dict(initial_learning_rate=0.1, decay_steps=5, power=-1.0), "power"),
    (
        "InverseTimeDecay",
        dict(initial_learning_rate=0.1, decay_steps=0.0, decay_rate=0.5),
        "decay_steps",
    ),
    (
        "InverseTimeDecay",
        dict(initial_learning_rate=0.1, decay_steps=5, decay_rate=-0.5),
        "decay_rate",
    ),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=0), "decay_steps"),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=5, alpha=-0.1), "alpha"),
    (
        "CosineDecay",
        dict(initial_learning_rate=0.1, decay_steps=5, warmup_target=-1.0, warmup_steps=2),
        "warmup_target",
    ),
    (
        "CosineDecay",
        dict(initial_learning_rate=0.1, decay_steps=5, warmup_target=1.0, warmup_steps=-2),
        "warmup_steps",
    ),
    (
        "CosineDecayRestarts",
        dict(initial_learning_rate=0.1, first_decay_steps=0),
        "first_decay_steps",
    ),
    (
        "CosineDecayRestarts",
        dict(initial_learning_rate=0.1, first_decay_steps=5, t_mul=0.0),
        "t_mul",
    ),
    (
        "CosineDecayRestarts",
        dict(initial_learning_rate=0.1, first_decay_steps=5, m_mul=-1.0),
        "m_mul",
    ),
    (
        "PiecewiseConstantDecay",
        dict(boundaries=[10, 20], values=[1.0, 0.5]),
        "one more entry.*2 boundaries.*2 values",
    ),
    ("PiecewiseConstantDecay", dict(boundaries=[10], values=[1.0, 0.5, 0.1]), "one more entry"),
    ("PiecewiseConstantDecay", dict(boundaries=[], values=[1.0]), "at least one"),
    (
        "PiecewiseConstantDecay",
        dict(boundaries=[20, 10], values=[1.0, 0.5, 0.1]),
        r"increasing.*boundaries\[0\]=20",
    ),
    (
        "PiecewiseConstantDecay",
        dict(boundaries=[10, 10], values=[1.0, 0.5, 0.1]),
        "strictly increasing",
    ),
    (
        "PiecewiseConstantDecay",
        dict(boundaries=[10, 20.5], values=[1.0, 0.5, 0.1]),
        "same type.*int32.*float32",
    ),
    (
        "PiecewiseConstantDecay",
        dict(boundaries=[10, 20], values=[1, 0.5, 0.1]),
        "same dtype.*int32",
    ),
    (
        "PiecewiseConstantDecay",
        dict(boundaries=[10, 20], values=[1.0, np.float64(0.5), 0.1]),
        "float64",
    ),
    ("PiecewiseConstantDecay", dict(boundaries=[10, 20], values=[1.0, -0.5, 0.1]), r"values\[1\]"),
]


@pytest.mark.parametrize(
    "cls, kwargs, match", BAD, ids=[f"{c}-{'-'.join(map(str, k.values()))}" for c, k, _ in BAD]
)
def test_bad_input_raises_at_construction(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        getattr(schedules, cls)(**kwargs)


BUILTIN_NAMES = [
    "ExponentialDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "InverseTimeDecay",
    "CosineDecay",
    "CosineDecayRestarts",
]


def test_public_names():
    assert sorted(schedules.__all__) == sorted(
        [*BUILTIN_NAMES, "LearningRateSchedule", "serialize", "deserialize", "register_schedule"]
    )


@pytest.mark.parametrize("name", BUILTIN_NAMES)
def test_signature_matches_tf_keras(name):
    ours, theirs = getattr(schedules, name), getattr(TFK, name)
    assert issubclass(ours, schedules.LearningRateSchedule)
    ours_params = inspect.signature(ours.__init__).parameters.values()
    theirs_params = inspect.signature(theirs.__init__).parameters.values()
    assert [(p.name, p.default) for p in ours_params] == [
        (p.name, p.default) for p in theirs_params
    ]
