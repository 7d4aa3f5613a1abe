"""keras_opt optimizers in Keras 3 ``compile``/``fit``/``save`` (keras_opt.keras).

Oracle: a ``tf.function`` GradientTape loop with the same keras_opt optimizer
on the same model, batches and start weights; ``fit`` must end with the same
weights, ``iter`` and slots bit for bit. Fresh-process loads and
MirroredStrategy run in workers (tests/workers/keras_fit_worker.py).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import keras
import keras_fit_common as common
import numpy as np
import pytest
import tensorflow as tf

import keras_opt
import keras_opt.keras as kk

import dist_utils
from cases import CASES, MODERN_CASES, case_id

# The Keras 3 base features through the adapter: every stage at once, on a classic
# optimizer (sparse Embedding gradients too) and on a modern one.
FEATURE_CASES = [
    (
        "Adam",
        dict(
            learning_rate=0.1,
            weight_decay=0.01,
            use_ema=True,
            ema_momentum=0.9,
            ema_overwrite_frequency=3,
            gradient_accumulation_steps=2,
            loss_scale_factor=4.0,
            global_clipnorm=1.0,
        ),
    ),
    ("Lion", dict(learning_rate=0.01, weight_decay=0.01, gradient_accumulation_steps=2)),
]
ALL_CASES = CASES + MODERN_CASES + FEATURE_CASES


def _make(case):
    name, kwargs = case
    return getattr(keras_opt, name)(**kwargs)


@functools.cache
def _loop_state(case_index: int, epochs: int = 1) -> dict:
    """State after the custom tape loop (the oracle), computed once per case."""
    ref_model = common.build_model(keras)
    ref_opt = _make(ALL_CASES[case_index])
    common.tape_loop(ref_model, ref_opt, epochs=epochs, keras3=True)
    return common.state(ref_model, ref_opt)


def _fit_and_loop(case, steps_per_execution=1, epochs=1, jit_compile=False):
    model = common.build_model(keras)
    adapter = kk.wrap(_make(case))
    common.fit(
        model,
        adapter,
        epochs=epochs,
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    return common.state(model, adapter), _loop_state(ALL_CASES.index(case), epochs)


# ---------------------------------------------------------------- fit parity
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fit_equals_tape_loop(case):
    got, want = _fit_and_loop(case)
    common.assert_same(got, want)
    assert got["iter"] == common.N // common.BATCH


@pytest.mark.parametrize("case", MODERN_CASES + FEATURE_CASES, ids=case_id)
def test_fit_of_modern_optimizers_and_base_features_equals_tape_loop(case):
    """Keras 3 fit runs the no-merge-call path (accumulation's averaging among others)."""
    got, want = _fit_and_loop(case)
    common.assert_same(got, want)
    steps = common.N // common.BATCH
    assert got["iter"] == steps // case[1].get("gradient_accumulation_steps", 1)


@pytest.mark.parametrize("case", MODERN_CASES[::2] + FEATURE_CASES[:1], ids=case_id)
def test_jit_compile_fit_trains_modern_optimizers_and_base_features(case):
    got, want = _fit_and_loop(case, jit_compile=True)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("case", [CASES[1], CASES[4], CASES[13]], ids=case_id)
def test_fit_steps_per_execution_equals_tape_loop(case):
    got, want = _fit_and_loop(case, steps_per_execution=4, epochs=2)
    common.assert_same(got, want)


def test_per_optimizer_classes_take_the_same_arguments():
    for name, kwargs in CASES:
        adapter = getattr(kk, name)(**kwargs)
        assert isinstance(adapter, keras.optimizers.Optimizer)
        assert type(adapter.keras_opt_optimizer) is getattr(keras_opt, name)
        assert adapter.get_config() == getattr(keras_opt, name)(**kwargs).get_config()
    assert set(kk.__all__) >= {"Adam", "SGD", "NonFusedAdam", "wrap", "LossScaleOptimizer"}


def test_adapter_exposes_the_keras_opt_state():
    adapter = kk.Adam(0.1, beta_1=0.8)
    assert adapter.beta_1.numpy() == np.float32(0.8)
    adapter.learning_rate = 0.05
    assert adapter.keras_opt_optimizer.learning_rate.numpy() == np.float32(0.05)
    assert adapter.iterations is adapter.keras_opt_optimizer.iterations


def test_wrap_of_a_user_subclass_trains_like_the_tape_loop(tmp_path):
    model = common.build_model(keras)
    adapter = kk.wrap(common.SignSGD(0.05))
    assert isinstance(adapter, kk.Wrapped)
    common.fit(model, adapter, jit_compile=False)
    ref = common.build_model(keras)
    ref_opt = common.SignSGD(0.05)
    common.tape_loop(ref, ref_opt)
    common.assert_same(common.state(model, adapter), common.state(ref, ref_opt))
    # Saved under keras_opt>Wrapped; the user class comes from custom_objects.
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects={"SignSGD": common.SignSGD})
    assert type(loaded.optimizer.keras_opt_optimizer) is common.SignSGD
    assert loaded.optimizer.iterations.numpy() == 4


# ------------------------------------------------------------- registration
def test_registered_names():
    assert keras.saving.get_registered_name(kk.Adam) == "keras_opt>Adam"
    model = common.build_model(keras)
    model.compile(optimizer="keras_opt>Adam", loss="mse")
    assert isinstance(model.optimizer, kk.Adam)
    got = keras.optimizers.get("keras_opt>RMSprop")
    assert type(got) is kk.RMSprop
    config = keras.optimizers.serialize(kk.Ftrl(0.3, l1_regularization_strength=0.1))
    assert config["registered_name"] == "keras_opt>Ftrl"
    back = keras.optimizers.deserialize(config)
    assert type(back) is kk.Ftrl
    assert back.get_config() == keras_opt.Ftrl(0.3, l1_regularization_strength=0.1).get_config()


def test_import_keras_opt_imports_no_keras():
    # TensorFlow 2.21 itself imports Keras 3 (for tf.keras); keras_opt must add
    # no Keras module, nor import tf_keras, nor its own adapter modules.
    code = (
        "import sys, tensorflow; before = set(sys.modules); import keras_opt; "
        "bad = [m for m in set(sys.modules) - before if m.split('.')[0] in "
        "('keras', 'tf_keras') or m in ('keras_opt.keras', 'keras_opt.tf_keras')]; "
        "bad += [m for m in ('tf_keras',) if m in sys.modules]; "
        "print('imported:', bad); sys.modules['tf_keras'] = None\n"
        "try:\n    import keras_opt.tf_keras\n"
        "except ImportError as e:\n    print('ImportError:', e)\n"
        "sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=dist_utils.worker_env(),
        cwd=dist_utils.REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Without tf_keras, keras_opt.tf_keras says what to install and what to use instead.
    assert "ImportError: keras_opt.tf_keras needs tf_keras (`pip install tf_keras`" in result.stdout
    assert "For Keras 3 models use keras_opt.keras" in result.stdout


# ------------------------------------------------------------------- XLA
@pytest.mark.parametrize("case", common.save_cases(CASES), ids=case_id)
def test_jit_compile_fit_trains(case):
    # One fit trains the embedding (sparse IndexedSlices gradient) and the Dense
    # layers (dense gradients); the cases are one per optimizer and kernel-changing
    # option. Kernels without an XLA kernel (AMSGrad, sparse momentum, Adagrad,
    # ...) run through the plain-op fallbacks of issue 13 item 7.
    got, want = _fit_and_loop(case, jit_compile=True)
    assert got["iter"] == want["iter"] == 4
    for key in want:
        # XLA may fuse and reorder float ops: equal to float32 rounding.
        np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-5, err_msg=key)


# ---------------------------------------------------------- save and resume
def test_save_after_one_epoch_resumes_in_a_fresh_process(tmp_path):
    want = {}
    cases = common.save_cases(CASES)
    for i, case in enumerate(cases):
        model = common.build_model(keras)
        adapter = kk.wrap(_make(case))
        common.fit(model, adapter, epochs=1, jit_compile=False)
        model.save(str(tmp_path / f"c{i:02d}.keras"))
        common.fit(model, None, epochs=2, initial_epoch=1)  # uninterrupted: same process
        want[i] = common.state(model, adapter)
    dist_utils.run_worker("keras_fit_worker.py", ["resume", "keras", str(tmp_path)], timeout_s=240)
    for i, case in enumerate(cases):
        got = dict(np.load(tmp_path / f"c{i:02d}.npz"))
        assert str(got.pop("optimizer_class")) == f"keras_opt.keras.{case[0]}"
        try:
            common.assert_same(got, want[i])
        except AssertionError as e:
            raise AssertionError(f"{case_id(case)}: {e}") from None


def test_load_model_without_the_import_fails_clearly(tmp_path):
    model = common.build_model(keras)
    common.fit(model, kk.Adam(0.1), jit_compile=False)
    path = str(tmp_path / "m.keras")
    model.save(path)
    out = str(tmp_path / "out.json")
    dist_utils.run_worker("keras_fit_worker.py", ["noimport", "keras", path, out], timeout_s=120)
    with open(out) as f:
        result = json.load(f)
    assert "loaded" not in result, f"loaded silently as {result.get('loaded')}"
    assert result["error_type"] == "TypeError"
    assert "keras_opt.keras" in result["message"] and "keras_opt>Adam" in result["message"]


def test_custom_loop_checkpoint_restores_into_compiled_model(tmp_path):
    case = ("Adam", dict(learning_rate=0.1, amsgrad=True))
    loop_model = common.build_model(keras)
    loop_opt = _make(case)
    common.tape_loop(loop_model, loop_opt, epochs=1)
    path = tf.train.Checkpoint(model=loop_model, optimizer=loop_opt).write(str(tmp_path / "ck"))
    common.tape_loop(loop_model, loop_opt, epochs=1)  # the uninterrupted second epoch

    model = common.build_model(keras, seed=5)  # other start weights: all restored
    adapter = kk.wrap(_make(case))
    model.compile(optimizer=adapter, loss="mse", jit_compile=False)
    adapter.build(model.trainable_variables)
    tf.train.Checkpoint(model=model, optimizer=adapter).read(path).assert_consumed()
    common.fit(model, None, epochs=2, initial_epoch=1)
    common.assert_same(common.state(model, adapter), common.state(loop_model, loop_opt))
    # And the checkpoint keys of fit and of the custom loop are the same.
    fit_path = tf.train.Checkpoint(model=model, optimizer=adapter).write(str(tmp_path / "fit"))
    keys = lambda p: sorted(k for k, _ in tf.train.list_variables(p))  # noqa: E731
    assert keys(fit_path) == keys(path)


def test_variables_are_listed_in_a_fixed_order_with_unique_paths():
    model = common.build_model(keras)
    adapter = kk.Adam(0.1)
    model.compile(optimizer=adapter, loss="mse")
    adapter.build(model.trainable_variables)
    paths = [v.path for v in adapter.variables]
    assert len(set(paths)) == len(paths)
    hypers = ["beta_1", "beta_2", "decay", "learning_rate"]
    slots = [f"{v.path}/{s}" for v in model.trainable_variables for s in ("m", "v")]
    assert paths == ["Adam/iteration"] + [f"Adam/{h}" for h in hypers] + [
        f"Adam/{s}" for s in slots
    ]
    inner = adapter.keras_opt_optimizer
    assert adapter.variables[0].value is inner.iterations
    assert adapter.variables[-1].value is inner.get_slot(model.trainable_variables[-1], "v")


# ------------------------------------------------------------------ callbacks
def test_learning_rate_scheduler_and_reduce_on_plateau_change_the_lr_used(tmp_path):
    lrs = [0.1, 0.05, 0.025]
    model = common.build_model(keras)
    adapter = kk.SGD(0.1, momentum=0.5)
    scheduler = keras.callbacks.LearningRateScheduler(lambda epoch, lr: lrs[epoch])
    history = common.fit(model, adapter, epochs=3, callbacks=[scheduler], jit_compile=False)
    np.testing.assert_allclose(history.history["learning_rate"], lrs, rtol=1e-6)
    ref = common.build_model(keras)
    ref_opt = keras_opt.SGD(0.1, momentum=0.5)
    common.tape_loop(ref, ref_opt, epochs=3, lr_per_epoch=lrs)
    common.assert_same(common.state(model, adapter), common.state(ref, ref_opt))
    # The changed learning rate survives save and load.
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    assert float(loaded.optimizer.learning_rate.numpy()) == np.float32(0.025)

    # ReduceLROnPlateau: min_delta so large that every epoch is a plateau.
    model = common.build_model(keras)
    adapter = kk.Adam(0.1)
    reduce = keras.callbacks.ReduceLROnPlateau(
        monitor="loss", factor=0.5, patience=0, min_delta=1e9
    )
    common.fit(model, adapter, epochs=3, callbacks=[reduce], jit_compile=False)
    ref = common.build_model(keras)
    ref_opt = keras_opt.Adam(0.1)
    # Epoch 0 sets the best loss; after epochs 1 and 2 the rate halves.
    common.tape_loop(ref, ref_opt, epochs=3, lr_per_epoch=[0.1, 0.1, 0.05])
    assert float(adapter.learning_rate.numpy()) == np.float32(0.025)
    common.assert_same(common.state(model, adapter), common.state(ref, ref_opt))


class _StopAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            raise RuntimeError("interrupted")


def test_backup_and_restore_keeps_lr_and_state(tmp_path):
    lrs = [0.1, 0.05, 0.025]

    def sched():
        return keras.callbacks.LearningRateScheduler(lambda e, lr: lrs[e] if e != 2 else lr * 0.5)

    backup_dir = str(tmp_path / "backup")
    model = common.build_model(keras)
    with pytest.raises(RuntimeError, match="interrupted"):
        common.fit(
            model,
            kk.Adam(0.1),
            epochs=3,
            callbacks=[sched(), keras.callbacks.BackupAndRestore(backup_dir), _StopAt(2)],
            jit_compile=False,
        )
    resumed = common.build_model(keras, seed=9)
    adapter = kk.Adam(0.1)
    common.fit(
        resumed,
        adapter,
        epochs=3,
        callbacks=[sched(), keras.callbacks.BackupAndRestore(backup_dir)],
        jit_compile=False,
    )
    ref = common.build_model(keras)
    ref_opt = keras_opt.Adam(0.1)
    common.tape_loop(ref, ref_opt, epochs=3, lr_per_epoch=lrs)
    common.assert_same(common.state(resumed, adapter), common.state(ref, ref_opt))


def test_tensorboard_collects_the_learning_rate(tmp_path):
    model = common.build_model(keras)
    adapter = kk.RMSprop(0.01)
    common.fit(model, adapter, jit_compile=False)
    adapter.learning_rate = 0.004
    callback = keras.callbacks.TensorBoard(str(tmp_path / "tb"))
    callback.set_model(model)
    # What TensorBoard writes at each epoch end (its learning-rate hook).
    assert callback._collect_learning_rate({}) == {"learning_rate": float(np.float32(0.004))}


def test_tensorboard_logs_the_learning_rate(tmp_path):
    pytest.importorskip(
        "tensorboard", reason="keras.callbacks.TensorBoard writes through tensorboard"
    )
    model = common.build_model(keras)
    logdir = str(tmp_path / "tb")
    common.fit(
        model,
        kk.RMSprop(0.01),
        epochs=2,
        callbacks=[keras.callbacks.TensorBoard(logdir)],
        jit_compile=False,
    )
    values = []
    for root, _, files in os.walk(logdir):
        for name in files:
            if "events" not in name:
                continue
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                for v in event.summary.value:
                    if "learning_rate" in v.tag:
                        values.append(float(tf.make_ndarray(v.tensor)))
    assert values and all(abs(v - 0.01) < 1e-7 for v in values), values


def test_model_summary_counts_optimizer_variables(capsys):
    model = common.build_model(keras)
    common.fit(model, kk.Adam(0.1), jit_compile=False)
    model.summary()
    n_model = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
    # iter + 4 hyperparameters + m and v of every weight.
    assert f"Optimizer params: {1 + 4 + 2 * n_model}" in capsys.readouterr().out


# ---------------------------------------------------------------- distribution
def test_mirrored_strategy_equals_one_device(tmp_path):
    out = str(tmp_path / "mirrored.npz")
    dist_utils.run_worker("keras_fit_worker.py", ["mirrored", out], timeout_s=240)
    got = np.load(out)
    for name, _ in common.MIRRORED_CASES:
        for where in ("inside", "outside"):
            np.testing.assert_allclose(
                got[f"{name}/{where}"], got[f"{name}/one"], rtol=1e-5, atol=1e-6, err_msg=name
            )
            assert got[f"{name}/{where}/iter"] == 2 * common.N // common.BATCH


# ----------------------------------------------------------------- constraints
def test_constraints_are_respected_in_fit_and_custom_loop():
    for constraint in (True, False):
        model = common.build_model(keras, sparse=False, constraint=constraint)
        adapter = kk.SGD(0.5)
        common.fit(model, adapter, epochs=2, sparse=False, jit_compile=False)
        ref = common.build_model(keras, sparse=False, constraint=constraint)
        ref_opt = keras_opt.SGD(0.5)
        common.tape_loop(ref, ref_opt, epochs=2, sparse=False)
        common.assert_same(common.state(model, adapter), common.state(ref, ref_opt))
        kernel_min = float(np.min(model.layers[1].kernel.numpy()))
        if constraint:
            assert kernel_min >= 0.0
        else:
            assert kernel_min < 0.0  # the data drive the kernel negative without it


# -------------------------------------------------------------- mixed precision
def test_mixed_float16_with_keras_opt_loss_scaler_matches_custom_loop():
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    try:
        ids, _, y = common.data()
        y = y.copy()
        y[8:16] *= 1e4  # the second batch overflows float16 at the start scale
        model = common.build_model(keras)
        adapter = kk.LossScaleOptimizer(keras_opt.Adam(0.01), dynamic_growth_steps=1000)
        model.compile(optimizer=adapter, loss="mse", jit_compile=False)
        assert model.optimizer is adapter  # not wrapped again by Keras
        model.fit(ids, y, batch_size=common.BATCH, epochs=2, shuffle=False, verbose=0)

        ref = common.build_model(keras)
        ref_opt = keras_opt.LossScaleOptimizer(keras_opt.Adam(0.01), dynamic_growth_steps=1000)
        mse = keras.losses.MeanSquaredError()

        @tf.function
        def step(xb, yb):
            with tf.GradientTape() as tape:
                loss = ref_opt.get_scaled_loss(mse(yb, ref(xb, training=True)))
            grads = tape.gradient(loss, ref.trainable_variables)
            ref_opt.apply(grads, ref.trainable_variables)

        for _ in range(2):
            for i in range(0, common.N, common.BATCH):
                step(tf.constant(ids[i : i + 8]), tf.constant(y[i : i + 8]))
        common.assert_same(common.state(model, adapter), common.state(ref, ref_opt))
        assert float(adapter.loss_scale) == float(ref_opt.loss_scale)
        assert float(adapter.loss_scale) < 2.0**15  # at least one step was skipped
        assert adapter.iterations.numpy() == 8
    finally:
        keras.config.set_dtype_policy(policy)


# ------------------------------------------------------------------ bad input
def test_wrap_rejects_what_is_not_a_keras_opt_optimizer():
    with pytest.raises(TypeError, match="expects a keras_opt optimizer.*Keras 3 optimizer goes"):
        kk.wrap(keras.optimizers.Adam())
    with pytest.raises(TypeError, match="expects a keras_opt optimizer"):
        kk.wrap("adam")
    with pytest.raises(TypeError, match="already is a Keras 3 optimizer"):
        kk.wrap(kk.Adam())


def test_tf_keras_classes_are_refused_with_keras3():
    import keras_opt.tf_keras as tk

    with pytest.raises(TypeError, match="for tf_keras .* use keras_opt.keras.Adam"):
        kk.wrap(tk.Adam())
    model = common.build_model(keras)
    # Keras 3's own error shows the object; its repr says what to use instead.
    with pytest.raises(ValueError, match="keras_opt.keras.Adam"):
        model.compile(optimizer=tk.Adam(), loss="mse")


# ------------------------------------------------------------------ main job
def test_main_job_fit_part_equals_the_custom_loop(capsys):
    from keras_opt import demo, demo_fit

    feats, tokens, labels = demo.make_data()
    full = (tf.constant(feats), tf.constant(tokens), tf.constant(labels))
    batches = demo.make_batches(feats, tokens, labels, 6)
    diffs = demo_fit.run(
        ["Adam", "Ftrl"], demo.OPTIMIZERS, demo.initial_weights(), batches, full, demo.forward
    )
    assert diffs == {"Adam": 0.0, "Ftrl": 0.0}
    assert "bit-for-bit for 2/2" in capsys.readouterr().out


def test_variables_trained_after_build_join_the_saved_state():
    model = common.build_model(keras)
    adapter = kk.Adagrad(0.1)
    dense_vars = model.trainable_variables[1:]
    adapter.build(dense_vars)
    before = len(adapter.variables)
    grads = [tf.ones_like(v) for v in model.trainable_variables]
    adapter.apply(grads, model.trainable_variables)
    faces = adapter.variables
    assert len(faces) == before + 1  # the embedding's accumulator
    assert faces[-1].value is adapter.get_slot(model.trainable_variables[0], "accumulator")


def test_tf_keras_legacy_checkpoint_restores_into_keras3_fit_optimizer(tmp_path):
    """A tf_keras legacy optimizer's checkpoint (custom loop) restores into the adapter."""
    import tf_keras

    tf_model = common.build_model(tf_keras)
    tf_opt = tf_keras.optimizers.legacy.Adam(0.1, amsgrad=True)
    common.tape_loop(tf_model, tf_opt)
    path = tf.train.Checkpoint(optimizer=tf_opt, weights=list(tf_model.trainable_variables)).write(
        str(tmp_path / "ck")
    )
    model = common.build_model(keras, seed=5)
    adapter = kk.Adam(0.1, amsgrad=True)
    model.compile(optimizer=adapter, loss="mse")
    adapter.build(model.trainable_variables)
    tf.train.Checkpoint(optimizer=adapter, weights=list(model.trainable_variables)).read(
        path
    ).assert_consumed()
    common.assert_same(common.state(model, adapter), common.state(tf_model, tf_opt))


def test_loss_scale_optimizer_saves_and_loads_its_scale(tmp_path):
    model = common.build_model(keras)
    adapter = kk.LossScaleOptimizer(keras_opt.Adam(0.01), initial_scale=64.0)
    common.fit(model, adapter, jit_compile=False)
    paths = [v.path for v in adapter.variables]
    assert paths[-2:] == ["Adam/loss_scale", "Adam/good_steps"]
    model.save(str(tmp_path / "m.keras"))
    loaded = keras.models.load_model(str(tmp_path / "m.keras"))
    assert type(loaded.optimizer) is kk.LossScaleOptimizer
    assert loaded.optimizer.get_config() == adapter.get_config()
    for got, want in zip(loaded.optimizer.variables, adapter.variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy(), err_msg=want.path)
    assert float(loaded.optimizer.loss_scale) == 64.0 and int(loaded.optimizer.iterations) == 4


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(loss_scale_factor=4.0),
        dict(use_ema=True, ema_momentum=0.5),
        dict(weight_decay=0.1),
        dict(weight_decay=0.1, exclude="bias"),
    ],
    ids=lambda kw: "-".join(kw),
)
def test_base_features_in_fit_equal_keras3_optimizers(kwargs):
    """Keras 3's fit with keras_opt.keras.SGD(feature) and keras.optimizers.SGD(feature).

    fit calls ``scale_loss`` (loss_scale_factor), ``finalize_variable_values`` at the
    end (EMA) and the optimizer's ``exclude_from_weight_decay``; plain SGD runs the same
    float32 arithmetic in both libraries, so the weights agree to rounding.
    """
    kwargs = dict(kwargs)
    exclude = kwargs.pop("exclude", None)
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(8, 3)
    y = x @ np.array([[1.0], [-2.0], [0.5]], np.float32) + 3.0
    weights = []
    for opt in (kk.SGD(0.1, **kwargs), keras.optimizers.SGD(0.1, **kwargs)):
        if exclude:
            opt.exclude_from_weight_decay(var_names=[exclude])
        model = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(1, kernel_initializer="ones")]
        )
        model.compile(optimizer=opt, loss="mse")
        model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0)
        weights.append(model.get_weights())
        assert opt.use_ema == kwargs.get("use_ema", False)
    for got, want in zip(*weights):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_adapter_learning_rate_is_the_one_the_next_step_uses():
    """With accumulation, a schedule runs on the micro-step count (as in Keras 3)."""
    schedule = keras_opt.schedules.ExponentialDecay(1.0, 1, 0.5)
    adapter = kk.SGD(schedule, gradient_accumulation_steps=2)
    var = tf.Variable(0.0)
    for _ in range(4):
        adapter.apply([tf.constant(1.0)], [var])
    inner = adapter.keras_opt_optimizer
    assert float(adapter.learning_rate) == float(inner._decayed_lr(tf.float32)) == 0.5**4
