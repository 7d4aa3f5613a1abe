"""SavedModel: a module with variables, a keras_opt optimizer and a train step.

The oracle is the original Python object: after saving, it keeps training, and
the loaded SavedModel (same process, or a fresh process that imports keras_opt)
runs the same steps through its saved `tf.function`; variables, slots and
``iter`` must be bit-for-bit equal. Also: tf_keras's and keras_opt's optimizers
revive as their own types in one process, and the documented route for a model
trained under MirroredStrategy (checkpoint, restore without a strategy,
``build``, save).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from tf_keras.optimizers import legacy as tf_keras_legacy

import keras_opt
from keras_opt.optimizer_v2 import RestoredOptimizer

import dist_utils
from cases import assert_same_state
from cases import optimizer_state as state

LIBS = {"tf_keras": tf_keras_legacy, "keras_opt": keras_opt}
CASES = [
    ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    ("Adam", dict(learning_rate=0.1, amsgrad=True)),
    ("RMSprop", dict(learning_rate=0.1, momentum=0.5, centered=True)),
    ("Ftrl", dict(learning_rate=0.1, l1_regularization_strength=0.01)),
]
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
SIGNATURE = [tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 2], tf.float32)]


class Trainer(tf.Module):
    """An embedding (IndexedSlices gradients) and a kernel (dense gradients)."""

    def __init__(self, opt, seed: int = 0):
        super().__init__()
        rng = np.random.default_rng(seed)
        self.emb = tf.Variable(rng.uniform(-1, 1, (6, 3)).astype(np.float32), name="emb")
        self.kernel = tf.Variable(rng.uniform(-1, 1, (3, 2)).astype(np.float32), name="kernel")
        self.opt = opt

    @property
    def vars(self):
        return [self.emb, self.kernel]

    def loss_and_grads(self, ids, target):
        with tf.GradientTape() as tape:
            pred = tf.gather(self.emb, ids) @ self.kernel
            loss = tf.reduce_mean(tf.square(pred - target))
        return loss, tape.gradient(loss, self.vars)

    @tf.function(input_signature=SIGNATURE)
    def train_step(self, ids, target):
        loss, grads = self.loss_and_grads(ids, target)
        self.opt.apply_gradients(zip(grads, self.vars))
        return loss


def batch(step: int):
    rng = np.random.default_rng(50 + step)
    return (
        tf.constant(rng.integers(0, 6, 4)),
        tf.constant(rng.standard_normal((4, 2)).astype(np.float32)),
    )


def trained_and_saved(lib, case, path, steps=2):
    name, kwargs = case
    trainer = Trainer(getattr(lib, name)(**kwargs))
    if lib is keras_opt:
        trainer.opt.build(trainer.vars)
    for step in range(steps):
        trainer.train_step(*batch(step))
    tf.saved_model.save(trainer, path)
    return trainer


@pytest.mark.parametrize("case", CASES, ids=lambda c: c[0])
def test_reload_in_same_process_continues(case, tmp_path):
    trainer = trained_and_saved(keras_opt, case, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    assert isinstance(loaded.opt, RestoredOptimizer)
    assert loaded.opt.get_slot_names() == trainer.opt.get_slot_names()
    for step in range(2, 5):
        want_loss = trainer.train_step(*batch(step))
        got_loss = loaded.train_step(*batch(step))
        assert got_loss.numpy() == want_loss.numpy()
    assert_same_state(
        state(loaded.opt, [loaded.emb, loaded.kernel]), state(trainer.opt, trainer.vars)
    )
    assert loaded.opt.iter is loaded.opt.iterations and int(loaded.opt.iterations.numpy()) == 5
    assert loaded.opt.learning_rate.numpy() == np.float32(case[1]["learning_rate"])


def test_restored_optimizer_refuses_to_train_and_keeps_its_slots(tmp_path):
    trained_and_saved(keras_opt, CASES[1], str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    before = state(loaded.opt, [loaded.emb, loaded.kernel])
    with pytest.raises(NotImplementedError, match="train step saved with the model"):
        loaded.opt.apply_gradients([(tf.ones([3, 2]), loaded.kernel)])
    with pytest.raises(NotImplementedError, match="config"):
        loaded.opt.get_config()
    assert_same_state(state(loaded.opt, [loaded.emb, loaded.kernel]), before)


def test_tf_keras_and_keras_opt_revive_as_their_own_types(tmp_path):
    """Both libraries register a revived optimizer type; the identifiers differ."""
    loaded = {}
    for lib_name, lib in LIBS.items():
        path = str(tmp_path / lib_name)
        trained_and_saved(lib, CASES[0], path)
        loaded[lib_name] = tf.saved_model.load(path)
    assert isinstance(loaded["keras_opt"].opt, RestoredOptimizer)
    assert isinstance(loaded["tf_keras"].opt, tf_keras_legacy.Optimizer)
    assert not isinstance(loaded["tf_keras"].opt, keras_opt.Optimizer)
    for step in range(2, 4):
        losses = [m.train_step(*batch(step)).numpy() for m in loaded.values()]
        assert losses[0] == losses[1]
    for name in ("emb", "kernel"):
        np.testing.assert_array_equal(
            getattr(loaded["keras_opt"], name).numpy(), getattr(loaded["tf_keras"], name).numpy()
        )


def test_reload_in_fresh_process_continues(tmp_path):
    trainer = trained_and_saved(keras_opt, CASES[1], str(tmp_path / "model"))
    steps = range(2, 5)
    inputs = {}
    for i, step in enumerate(steps):
        ids, target = batch(step)
        inputs[f"ids{i}"], inputs[f"target{i}"] = ids.numpy(), target.numpy()
    np.savez(tmp_path / "inputs.npz", **inputs)
    args = [str(tmp_path / "model"), str(tmp_path / "inputs.npz"), str(tmp_path / "out.npz")]
    dist_utils.run_worker("checkpoint_savedmodel.py", args, timeout_s=180)
    for step in steps:
        trainer.train_step(*batch(step))
    got = dict(np.load(tmp_path / "out.npz"))
    assert got.pop("restored_type") == "RestoredOptimizer"
    assert_same_state(got, state(trainer.opt, trainer.vars))


def test_mirrored_strategy_route_to_savedmodel(tmp_path):
    """README: train under MirroredStrategy, checkpoint, restore without a strategy,
    build, save; the loaded step continues like the mirrored model."""
    strategy = tf.distribute.MirroredStrategy(
        ["/cpu:0"], cross_device_ops=tf.distribute.ReductionToOneDevice()
    )
    name, kwargs = CASES[1]
    with strategy.scope():
        mirrored = Trainer(keras_opt.Adam(**kwargs))

    @tf.function(input_signature=SIGNATURE)
    def mirrored_step(ids, target):
        def replica_step(ids, target):
            _, grads = mirrored.loss_and_grads(ids, target)
            mirrored.opt.apply_gradients(zip(grads, mirrored.vars))

        strategy.run(replica_step, (ids, target))

    for step in range(2):
        mirrored_step(*batch(step))
    path = tf.train.Checkpoint(model=mirrored).save(str(tmp_path / "ckpt"))

    plain = Trainer(keras_opt.Adam(**kwargs), seed=1)  # no strategy
    status = tf.train.Checkpoint(model=plain).restore(path)
    plain.opt.build(plain.vars)  # slots exist (and are restored) before saving
    status.assert_consumed()
    tf.saved_model.save(plain, str(tmp_path / "model"))
    loaded = tf.saved_model.load(str(tmp_path / "model"))
    for step in range(2, 5):
        mirrored_step(*batch(step))
        loaded.train_step(*batch(step))
    assert_same_state(
        state(loaded.opt, [loaded.emb, loaded.kernel]), state(mirrored.opt, mirrored.vars)
    )
