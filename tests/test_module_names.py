"""Module-level public names: every tf_keras legacy module's names exist in its keras_opt twin.

Code and tests written for tf_keras import names from the modules, not only from
the package (``loss_scale_optimizer.BaseLossScaleOptimizer``,
``learning_rate_schedule.serialize``, ...). For each module of tf_keras's legacy
optimizer stack, every public name it defines (not the modules and helpers it
imports) must exist in keras_opt's twin, except the deliberate exceptions below,
each with its reason. The tests after the audit check that the names behave as
tf_keras's do.
"""

from __future__ import annotations

import importlib
import inspect
import types

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import keras_opt
from keras_opt.mixed_precision import loss_scale_optimizer as ko_lso
from keras_opt.optimizer_v2 import optimizer_v2 as ko_optimizer_v2
from keras_opt.schedules import learning_rate_schedule as ko_lrs

_OPTIMIZER_MODULES = ["adadelta", "adagrad", "adam", "adamax", "ftrl", "gradient_descent", "nadam",
                      "rmsprop"]  # fmt: skip
TWINS = {
    "tf_keras.src.optimizers.legacy.optimizer_v2": "keras_opt.optimizer_v2.optimizer_v2",
    **{
        f"tf_keras.src.optimizers.legacy.{name}": f"keras_opt.optimizer_v2.{name}"
        for name in _OPTIMIZER_MODULES
    },
    "tf_keras.src.optimizers.schedules.learning_rate_schedule": (
        "keras_opt.schedules.learning_rate_schedule"
    ),
    "tf_keras.src.mixed_precision.loss_scale_optimizer": (
        "keras_opt.mixed_precision.loss_scale_optimizer"
    ),
    "tf_keras.src.optimizers": "keras_opt",
}

# (tf_keras module, name) -> why keras_opt's twin does not have it.
EXCEPTIONS = {
    ("tf_keras.src.mixed_precision.loss_scale_optimizer", "LossScaleOptimizerV3"): (
        "the wrapper of tf_keras's new (non-legacy) optimizers; keras_opt has legacy "
        "optimizers only. BaseLossScaleOptimizer(tf_keras_new_optimizer) returns it."
    ),
    ("tf_keras.src.optimizers", "TFOptimizer"): (
        "wraps a tf.compat.v1.train.Optimizer as a Keras optimizer; not part of the "
        "OptimizerV2 stack keras_opt reimplements"
    ),
    ("tf_keras.src.optimizers", "is_arm_mac"): (
        "tf_keras's switch to legacy optimizers on Apple silicon; keras_opt's optimizers "
        "are all legacy"
    ),
    ("tf_keras.src.optimizers", "serialize_keras_object"): (
        "tf_keras's generic object serialization imported into the module; use "
        "keras_opt.serialize (optimizers) or keras_opt.schedules.serialize"
    ),
    ("tf_keras.src.optimizers", "deserialize_keras_object"): (
        "tf_keras's generic object deserialization imported into the module; use "
        "keras_opt.deserialize"
    ),
    ("tf_keras.src.optimizers", "keras_export"): "tf_keras's API-export decorator",
}


def _public_names(module_name: str) -> list[str]:
    """Public names defined in the module (for a package's __init__: everything public)."""
    module = importlib.import_module(module_name)
    is_package = hasattr(module, "__path__")
    names = []
    for name, value in vars(module).items():
        if name.startswith("_") or isinstance(value, types.ModuleType):
            continue
        defined_here = getattr(value, "__module__", module_name) == module_name
        if is_package or defined_here or not (inspect.isclass(value) or callable(value)):
            names.append(name)
    return sorted(names)


@pytest.mark.parametrize("tf_keras_module", sorted(TWINS))
def test_twin_module_has_every_public_name(tf_keras_module):
    twin = importlib.import_module(TWINS[tf_keras_module])
    reference = importlib.import_module(tf_keras_module)
    names = _public_names(tf_keras_module)
    assert names, tf_keras_module
    missing = []
    for name in names:
        if (tf_keras_module, name) in EXCEPTIONS:
            assert not hasattr(twin, name), f"{name} exists now: drop its exception"
            continue
        if not hasattr(twin, name):
            missing.append(name)
            continue
        theirs, ours = getattr(reference, name), getattr(twin, name)
        # Same kind of object: a class for a class, a function for a function.
        assert inspect.isclass(theirs) == inspect.isclass(ours), name
        assert callable(theirs) == callable(ours), name
    assert not missing, f"{TWINS[tf_keras_module]} lacks {missing}"


def test_exceptions_name_real_tf_keras_names():
    for module_name, name in EXCEPTIONS:
        assert hasattr(importlib.import_module(module_name), name), (module_name, name)


# ------------------------------------------------------------- behaviour
def test_base_loss_scale_optimizer_builds_the_right_wrapper():
    import keras

    cases = [
        (keras_opt.SGD(0.1), keras_opt.LossScaleOptimizer),
        (tf_keras.optimizers.legacy.SGD(0.1), tf_keras.mixed_precision.LossScaleOptimizer),
        (tf_keras.optimizers.SGD(0.1), tf_keras.mixed_precision.LossScaleOptimizer),
        (keras.optimizers.SGD(0.1), keras.optimizers.LossScaleOptimizer),
    ]
    for inner, expected in cases:
        wrapper = ko_lso.BaseLossScaleOptimizer(inner, dynamic_growth_steps=10)
        assert isinstance(wrapper, expected), type(wrapper)
        assert isinstance(wrapper, ko_lso.BaseLossScaleOptimizer)
        assert wrapper.inner_optimizer is inner
    assert not isinstance(keras_opt.SGD(), ko_lso.BaseLossScaleOptimizer)
    assert issubclass(keras_opt.LossScaleOptimizer, ko_lso.BaseLossScaleOptimizer)
    with pytest.raises(TypeError, match="inner_optimizer"):
        ko_lso.BaseLossScaleOptimizer(object())
    with pytest.raises(TypeError):  # tf_keras raises the same type
        tf_keras.mixed_precision.LossScaleOptimizer(object())
    # The wrapper keras_opt builds trains like the one it names.
    var = tf.Variable([1.0, 2.0])
    wrapper = ko_lso.BaseLossScaleOptimizer(keras_opt.SGD(1.0), dynamic=False, initial_scale=8)
    wrapper.apply_gradients([(tf.constant([0.5, 0.5]), var)])
    np.testing.assert_array_equal(var.numpy(), [0.5, 1.5])


def test_strategy_supports_loss_scaling_matches_tf_keras():
    from tf_keras.src.mixed_precision import loss_scale_optimizer as tk_lso

    ours, theirs = ko_lso.strategy_supports_loss_scaling, tk_lso.strategy_supports_loss_scaling
    assert ours() is theirs() is True
    for strategy in (
        tf.distribute.OneDeviceStrategy("/cpu:0"),
        tf.distribute.MirroredStrategy(["/cpu:0"]),
    ):
        with strategy.scope():
            assert ours() == theirs()
    adam = keras_opt.Adam()
    adam.build([tf.Variable([1.0])])
    assert ko_lso.FakeOptimizerForRestoration(adam).get_slot_names() == ["m", "v"]


def test_learning_rate_schedule_module_serialize_and_experimental_schedules():
    from tf_keras.src.optimizers.schedules import learning_rate_schedule as tk_lrs

    for ours, theirs in [
        (ko_lrs.ExponentialDecay(0.1, 10, 0.5), tk_lrs.ExponentialDecay(0.1, 10, 0.5)),
        (ko_lrs.LinearCosineDecay(0.1, 20, num_periods=2.0, alpha=0.1),
         tk_lrs.LinearCosineDecay(0.1, 20, num_periods=2.0, alpha=0.1)),
        (ko_lrs.NoisyLinearCosineDecay(0.1, 20, seed=5),
         tk_lrs.NoisyLinearCosineDecay(0.1, 20, seed=5)),
    ]:  # fmt: skip
        config = ko_lrs.serialize(ours)
        assert config["config"] == tk_lrs.serialize(theirs)["config"]
        assert type(ko_lrs.deserialize(config)) is type(ours)
        assert type(ko_lrs.deserialize(tk_lrs.serialize(theirs))) is type(ours)
        assert type(tk_lrs.deserialize(config)) is type(theirs)
        values = []
        for schedule in (ours, theirs):
            tf.random.set_seed(11)  # the noisy schedule draws with tf.random.normal, seeded
            values.append([schedule(step).numpy() for step in range(25)])
        np.testing.assert_array_equal(values[0], values[1])
    # No noise: the noisy schedule is the linear cosine one.
    quiet = ko_lrs.NoisyLinearCosineDecay(0.1, 20, initial_variance=0.0)
    plain = ko_lrs.LinearCosineDecay(0.1, 20)
    np.testing.assert_array_equal(
        [quiet(s).numpy() for s in range(22)], [plain(s).numpy() for s in range(22)]
    )


def test_optimizer_v2_module_helpers():
    assert ko_optimizer_v2.RestoredOptimizer is keras_opt.optimizer_v2.RestoredOptimizer
    with ko_optimizer_v2.NullContextmanager(1, key=2) as entered:
        assert entered is None
    with ko_optimizer_v2.name_scope_only_in_function_or_graph("scope"):
        assert tf.constant(1.0).numpy() == 1.0  # eagerly a no-op

    @tf.function
    def scoped():
        with ko_optimizer_v2.name_scope_only_in_function_or_graph("scope"):
            return tf.identity(1.0, name="x")

    graph = scoped.get_concrete_function().graph
    assert any(op.name.startswith("scope/") for op in graph.get_operations())


def test_convert_to_legacy_optimizer_matches_tf_keras():
    from tf_keras.src import optimizers as tk_optimizers

    new = tf_keras.optimizers.Adam(0.3, beta_1=0.8, amsgrad=True, weight_decay=0.1)
    ours = keras_opt.convert_to_legacy_optimizer(new)
    theirs = tk_optimizers.convert_to_legacy_optimizer(new)
    assert type(ours) is keras_opt.Adam
    # The same, except that keras_opt keeps the weight decay tf_keras drops.
    assert ours.get_config() == {**theirs.get_config(), "weight_decay": 0.1}
    assert "weight_decay" not in theirs.get_config()
    # Keras 3's optimizers: every base feature carried over, the class by name.
    import keras

    new3 = keras.optimizers.AdamW(0.01, weight_decay=0.2, use_ema=True, ema_momentum=0.9,
                                  gradient_accumulation_steps=3, loss_scale_factor=2.0)  # fmt: skip
    ours3 = keras_opt.convert_to_legacy_optimizer(new3)
    assert type(ours3) is keras_opt.AdamW
    for key in ("weight_decay", "use_ema", "ema_momentum", "gradient_accumulation_steps",
                "loss_scale_factor"):  # fmt: skip
        assert ours3.get_config()[key] == new3.get_config()[key], key
    with pytest.raises(ValueError):
        keras_opt.convert_to_legacy_optimizer(keras_opt.Adam())
    with pytest.raises(ValueError):
        tk_optimizers.convert_to_legacy_optimizer(tf_keras.optimizers.legacy.Adam())


def test_import_keras_opt_does_not_import_tf_keras_or_keras():
    # tf_keras (and Keras 3) are imported lazily, only where they are needed:
    # `import keras_opt` adds neither to what `import tensorflow` already imported.
    import os
    import subprocess
    import sys

    code = (
        "import sys; import tensorflow; names = ('tf_keras', 'keras'); "
        "before = {m for m in names if m in sys.modules}; "
        "import keras_opt; after = {m for m in names if m in sys.modules}; "
        "print(sorted(after - before))"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[]", out.stdout + out.stderr
