"""keras_opt optimizers in tf_keras (Keras 2) ``compile``/``fit``/``save`` (keras_opt.tf_keras).

Oracle: the same model trained by ``fit`` with ``tf_keras.optimizers.legacy.X``
from the same start; weights, ``iter`` and slots must be equal bit for bit.
"""

from __future__ import annotations

import json

import keras_fit_common as common
import numpy as np
import pytest
import tf_keras

import keras_opt
import keras_opt.tf_keras as tk

import dist_utils
from cases import CASES, MODERN_CASES, case_id

legacy = tf_keras.optimizers.legacy


def _pair(case):
    name, kwargs = case
    return getattr(tk, name)(**kwargs), getattr(legacy, name)(**kwargs)


def _fit_both(case, epochs=1, sparse=True, **fit_kw):
    ours, theirs = _pair(case)
    states = []
    for opt in (ours, theirs):
        model = common.build_model(tf_keras, sparse=sparse)
        common.fit(model, opt, epochs=epochs, sparse=sparse, **fit_kw)
        states.append(common.state(model, model.optimizer))
    return states


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fit_equals_tf_keras_legacy(case):
    got, want = _fit_both(case)
    common.assert_same(got, want)


@pytest.mark.parametrize(
    "case",
    MODERN_CASES + [("Adagrad", dict(learning_rate=0.1, weight_decay=0.01, use_ema=True,
                                     gradient_accumulation_steps=2))],
    ids=case_id,
)  # fmt: skip
def test_fit_of_modern_optimizers_and_base_features_equals_tape_loop(case):
    """No tf_keras twin: the oracle is a tf_keras tape loop with the same keras_opt optimizer."""
    name, kwargs = case
    model = common.build_model(tf_keras)
    common.fit(model, getattr(tk, name)(**kwargs))
    ref_model, ref_opt = common.build_model(tf_keras), getattr(keras_opt, name)(**kwargs)
    common.tape_loop(ref_model, ref_opt)
    common.assert_same(common.state(model, model.optimizer), common.state(ref_model, ref_opt))


def test_classes_are_keras_opt_and_tf_keras_legacy_optimizers():
    for name, kwargs in CASES:
        opt = getattr(tk, name)(**kwargs)
        assert isinstance(opt, getattr(keras_opt, name))
        assert isinstance(opt, legacy.Optimizer)
        assert opt.get_config() == getattr(keras_opt, name)(**kwargs).get_config()
        # Hyperparameters read as keras_opt's (tf_keras's __getattribute__ is not used).
        assert float(opt.learning_rate.numpy()) == np.float32(kwargs["learning_rate"])


@pytest.mark.parametrize("case", [CASES[1], CASES[3], CASES[13]], ids=case_id)
def test_mixed_float16_fit_equals_tf_keras_legacy(case):
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        got, want = _fit_both(case, epochs=2)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    common.assert_same(got, want)


def test_mixed_float16_with_keras_opt_loss_scaler_equals_tf_keras_legacy():
    tf_keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        ids, _, y = common.data()
        y = y.copy()
        y[8:16] *= 1e4  # the second batch overflows float16: a skipped step
        states = []
        for lso in (
            tk.LossScaleOptimizer(keras_opt.Adam(0.01), dynamic_growth_steps=3),
            tf_keras.mixed_precision.LossScaleOptimizer(legacy.Adam(0.01), dynamic_growth_steps=3),
        ):
            model = common.build_model(tf_keras)
            model.compile(optimizer=lso, loss="mse")
            assert model.optimizer is lso  # not wrapped again by tf_keras
            model.fit(ids, y, batch_size=common.BATCH, epochs=2, shuffle=False, verbose=0)
            out = common.state(model, lso)
            out["loss_scale"] = lso.loss_scale.numpy()
            out["good_steps"] = lso.dynamic_counter.numpy()
            states.append(out)
    finally:
        tf_keras.mixed_precision.set_global_policy("float32")
    common.assert_same(*states)
    # Without a skipped step the scale would have doubled twice in 8 steps.
    assert states[0]["loss_scale"] != 2.0**17


def test_wrap_trains_like_the_class_and_keeps_the_object():
    opt = keras_opt.Adam(0.1)
    wrapped = tk.wrap(opt)
    assert wrapped is opt and isinstance(opt, legacy.Optimizer)
    model = common.build_model(tf_keras)
    common.fit(model, wrapped)
    ref = common.build_model(tf_keras)
    common.fit(ref, legacy.Adam(0.1))
    common.assert_same(common.state(model, wrapped), common.state(ref, ref.optimizer))


def test_wrap_of_a_user_subclass_trains_like_a_tape_loop():
    model = common.build_model(tf_keras)
    opt = tk.wrap(common.SignSGD(0.05))
    assert isinstance(opt, common.SignSGD) and isinstance(opt, legacy.Optimizer)
    common.fit(model, opt)
    ref = common.build_model(tf_keras)
    ref_opt = common.SignSGD(0.05)
    common.tape_loop(ref, ref_opt)
    common.assert_same(common.state(model, opt), common.state(ref, ref_opt))


def test_registered_names():
    assert tf_keras.saving.get_registered_name(tk.Adam) == "keras_opt>Adam"
    model = common.build_model(tf_keras)
    model.compile(optimizer="keras_opt>Adam", loss="mse")
    assert type(model.optimizer) is tk.Adam
    assert type(tf_keras.optimizers.get("keras_opt>Ftrl")) is tk.Ftrl
    config = tf_keras.optimizers.serialize(tk.RMSprop(0.3, centered=True))
    back = tf_keras.optimizers.deserialize(config)
    assert (
        type(back) is tk.RMSprop
        and back.get_config() == tk.RMSprop(0.3, centered=True).get_config()
    )


def test_h5_save_after_one_epoch_resumes_in_a_fresh_process(tmp_path):
    want = {}
    cases = common.save_cases(CASES)
    for i, case in enumerate(cases):
        model = common.build_model(tf_keras)
        common.fit(model, _pair(case)[0], epochs=1)
        model.save(str(tmp_path / f"c{i:02d}.h5"))
        uninterrupted = common.build_model(tf_keras)
        common.fit(uninterrupted, _pair(case)[1], epochs=2)  # tf_keras legacy, in one go
        want[i] = common.state(uninterrupted, uninterrupted.optimizer)
    dist_utils.run_worker(
        "keras_fit_worker.py", ["resume", "tf_keras", str(tmp_path)], timeout_s=240
    )
    for i, case in enumerate(cases):
        got = dict(np.load(tmp_path / f"c{i:02d}.npz"))
        assert str(got.pop("optimizer_class")) == f"keras_opt.tf_keras.{case[0]}"
        try:
            common.assert_same(got, want[i])
        except AssertionError as e:
            raise AssertionError(f"{case_id(case)}: {e}") from None


def test_h5_load_without_the_import_fails_clearly(tmp_path):
    model = common.build_model(tf_keras)
    common.fit(model, tk.Adam(0.1))
    path = str(tmp_path / "m.h5")
    model.save(path)
    out = str(tmp_path / "out.json")
    dist_utils.run_worker("keras_fit_worker.py", ["noimport", "tf_keras", path, out], timeout_s=120)
    with open(out) as f:
        result = json.load(f)
    assert "loaded" not in result, f"loaded silently as {result.get('loaded')}"
    assert "keras_opt>Adam" in result["message"]


@pytest.mark.parametrize("fmt", ["keras", "savedmodel"])
def test_other_formats_behave_as_tf_keras_legacy(tmp_path, fmt):
    """tf_keras's `.keras` and SavedModel: whatever the legacy optimizer gets, keras_opt gets."""
    outcomes = []
    for opt in _pair(("Adam", dict(learning_rate=0.1))):
        model = common.build_model(tf_keras)
        common.fit(model, opt)
        path = str(tmp_path / f"{type(opt).__module__.split('.')[0]}") + (
            ".keras" if fmt == "keras" else ""
        )
        model.save(path) if fmt == "keras" else model.save(path, save_format="tf")
        loaded = tf_keras.models.load_model(path)
        common.fit(loaded, None, epochs=2, initial_epoch=1)
        outcomes.append(common.state(loaded, loaded.optimizer))
    common.assert_same(outcomes[0], outcomes[1])


def test_learning_rate_scheduler_changes_the_lr_used_and_survives_save(tmp_path):
    lrs = [0.1, 0.05, 0.025]
    states = []
    for opt in _pair(("SGD", dict(learning_rate=0.1, momentum=0.5))):
        model = common.build_model(tf_keras)
        scheduler = tf_keras.callbacks.LearningRateScheduler(lambda epoch, lr: lrs[epoch])
        common.fit(model, opt, epochs=3, callbacks=[scheduler])
        states.append(common.state(model, opt))
        assert float(opt.learning_rate.numpy()) == np.float32(0.025)
    common.assert_same(*states)
    path = str(tmp_path / "m.h5")
    model.save(path)
    assert float(tf_keras.models.load_model(path).optimizer.learning_rate.numpy()) == np.float32(
        0.025
    )


def test_backup_and_restore_resumes_like_tf_keras_legacy(tmp_path):
    class StopAt(tf_keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 2:
                raise RuntimeError("interrupted")

    states = []
    for lib_name, opt_fn in (("ours", lambda: tk.Adam(0.1)), ("legacy", lambda: legacy.Adam(0.1))):
        backup = tf_keras.callbacks.BackupAndRestore(str(tmp_path / lib_name))
        scheduler = tf_keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
        with pytest.raises(RuntimeError, match="interrupted"):
            common.fit(
                common.build_model(tf_keras),
                opt_fn(),
                epochs=3,
                callbacks=[scheduler, backup, StopAt()],
            )
        model = common.build_model(tf_keras, seed=9)
        common.fit(model, opt_fn(), epochs=3, callbacks=[scheduler, backup])
        states.append(common.state(model, model.optimizer))
    common.assert_same(*states)
    # Restored (the resumed models started from other weights): as uninterrupted.
    scheduler = tf_keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    model = common.build_model(tf_keras)
    common.fit(model, legacy.Adam(0.1), epochs=3, callbacks=[scheduler])
    common.assert_same(states[0], common.state(model, model.optimizer))


def test_mirrored_strategy_equals_tf_keras_legacy(tmp_path):
    out = str(tmp_path / "mirrored.npz")
    dist_utils.run_worker("keras_fit_worker.py", ["tf_keras_mirrored", out], timeout_s=240)
    got = np.load(out)
    for name, _ in common.MIRRORED_CASES:
        np.testing.assert_array_equal(
            got[f"{name}/keras_opt"], got[f"{name}/tf_keras"], err_msg=name
        )
        assert got[f"{name}/keras_opt/iter"] == 2 * common.N // common.BATCH


def test_bad_input():
    import keras

    import keras_opt.keras as kk

    with pytest.raises(TypeError, match="expects a keras_opt optimizer.*Keras 3 optimizers do not"):
        tk.wrap(keras.optimizers.Adam())
    with pytest.raises(TypeError, match="Keras 3 adapter"):
        tk.wrap(kk.Adam())
    with pytest.raises(TypeError, match="expects a keras_opt optimizer.*already a tf_keras"):
        tk.wrap(legacy.Adam())
    with pytest.raises(TypeError, match="expects a keras_opt optimizer"):
        tk.wrap("adam")
    model = common.build_model(tf_keras)
    # tf_keras's own error shows the object; the adapter's repr says what to use.
    with pytest.raises(ValueError, match="keras_opt.tf_keras.Adam"):
        model.compile(optimizer=kk.Adam(), loss="mse")
