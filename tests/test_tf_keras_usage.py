"""tf_keras usage patterns that keras_opt's other tests did not try, against tf_keras.

* a sparse gradient given as ``tf.IndexedSlices`` of numpy arrays (AMSGrad and
  the rest), in a TF1 graph and eagerly;
* a warmup-only ``CosineDecay`` (``decay_steps=0``), as tf_keras's own tests use it;
* a slot made with ``add_slot(var, name, shape=...)`` restored from a checkpoint
  into a fresh optimizer.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
from tf_keras.optimizers import legacy as tf_keras_legacy

import keras_opt

LIBS = {"keras_opt": keras_opt, "tf_keras": tf_keras_legacy}
v1 = tf.compat.v1

SPARSE_CASES = {
    "Adam-amsgrad": lambda lib: lib.Adam(0.1, amsgrad=True),
    "Adam": lambda lib: lib.Adam(0.1),
    "Adagrad": lambda lib: lib.Adagrad(0.1),
    "RMSprop-centered": lambda lib: lib.RMSprop(0.1, centered=True),
    "SGD-momentum": lambda lib: lib.SGD(0.1, momentum=0.9),
}
ROWS = [
    (np.array([[1.0, -2.0], [0.5, 0.5]], np.float32), np.array([2, 0])),
    (np.array([[-1.0, 3.0], [0.25, 1.0]], np.float32), np.array([2, 2])),  # duplicates
]


@pytest.mark.parametrize("name", sorted(SPARSE_CASES))
def test_numpy_indexed_slices_in_tf1_graph(name):
    results = {}
    for key, lib in LIBS.items():
        with tf.Graph().as_default() as graph:
            var = tf.Variable(np.ones((3, 2), np.float32), name="embedding")
            opt = SPARSE_CASES[name](lib)
            train = [opt.apply_gradients([(tf.IndexedSlices(v, i), var)]) for v, i in ROWS]
            with v1.Session(graph=graph) as session:
                session.run(v1.global_variables_initializer())
                for op in train:
                    session.run(op)
                results[key] = session.run([var] + opt.weights)
    assert len(results["keras_opt"]) == len(results["tf_keras"])
    for a, b in zip(results["keras_opt"], results["tf_keras"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("mode", ["eager", "tf_function"])
def test_numpy_indexed_slices_eagerly(mode):
    results = {}
    for key, lib in LIBS.items():
        var = tf.Variable(np.ones((3, 2), np.float32), name="embedding")
        opt = lib.Adam(0.1, amsgrad=True)

        def step(values, indices, opt=opt, var=var):
            opt.apply_gradients([(tf.IndexedSlices(values, indices), var)])

        for values, indices in ROWS:
            step(values, indices) if mode == "eager" else tf.function(step)(values, indices)
        results[key] = [var.numpy()] + [w.numpy() for w in opt.weights]
    for a, b in zip(results["keras_opt"], results["tf_keras"]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(initial_learning_rate=0.1, decay_steps=0, warmup_target=1.0, warmup_steps=5),
        dict(
            initial_learning_rate=0.0, decay_steps=0, warmup_target=0.5, warmup_steps=3, alpha=0.1
        ),
    ],
)
def test_warmup_only_cosine_decay_matches_tf_keras(kwargs):
    ours = keras_opt.schedules.CosineDecay(**kwargs)
    theirs = tf_keras.optimizers.schedules.CosineDecay(**kwargs)
    steps = range(kwargs["warmup_steps"] + 3)  # past the warmup: tf_keras's NaN, too
    np.testing.assert_array_equal(
        [ours(s).numpy() for s in steps], [theirs(s).numpy() for s in steps]
    )
    assert ours.get_config() == theirs.get_config()
    # Still refused: no warmup, so 0/0 at every step.
    with pytest.raises(ValueError, match="decay_steps"):
        keras_opt.schedules.CosineDecay(0.1, 0)
    with pytest.raises(ValueError, match="decay_steps"):
        keras_opt.schedules.CosineDecay(0.1, 0, warmup_target=1.0, warmup_steps=0)


def _make_stat_optimizer(lib):
    class RunningStat(lib.Optimizer):
        """Keeps a per-variable statistic of its own shape (like a sketch or a histogram)."""

        def __init__(self, learning_rate=0.1, name="RunningStat"):
            super().__init__(name)
            self._set_hyper("learning_rate", learning_rate)

        def _create_slots(self, var_list):
            for var in var_list:
                self.add_slot(var, "stat", initializer="ones", shape=[3])

        def _resource_apply_dense(self, grad, var, apply_state=None):
            stat = self.get_slot(var, "stat")
            update_stat = stat.assign(stat * 0.5 + tf.reduce_sum(grad))
            with tf.control_dependencies([update_stat]):
                return var.assign_sub(self._get_hyper("learning_rate", var.dtype) * grad)

        def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
            raise NotImplementedError

        def get_config(self):
            return super().get_config()

    return RunningStat


@pytest.mark.parametrize(
    "build_first", [False, True], ids=["restore_then_step", "build_then_restore"]
)
def test_slot_with_its_own_shape_restores_into_a_fresh_optimizer(tmp_path, build_first):
    results = {}
    for key, lib in LIBS.items():
        cls = _make_stat_optimizer(lib)
        var = tf.Variable([1.0, 2.0], name="w")
        opt = cls()
        for _ in range(2):
            opt.apply_gradients([(tf.constant([1.0, 3.0]), var)])
        path = tf.train.Checkpoint(var=var, opt=opt).save(str(tmp_path / key / "ckpt"))
        fresh_var, fresh = tf.Variable([0.0, 0.0], name="w"), cls()
        if build_first:
            fresh._create_all_weights([fresh_var])
        tf.train.Checkpoint(var=fresh_var, opt=fresh).restore(path)
        restored = fresh.get_slot(fresh_var, "stat").numpy()  # was KeyError 'Variable_NNNN'
        fresh.apply_gradients([(tf.constant([1.0, 1.0]), fresh_var)])
        results[key] = (restored, fresh.get_slot(fresh_var, "stat").numpy(), fresh_var.numpy())
    # stat starts at 1 and becomes 0.5 * stat + sum(grad) = 0.5 * stat + 4 twice: 4.5, 6.25.
    np.testing.assert_array_equal(results["keras_opt"][0], [6.25] * 3)
    for a, b in zip(results["keras_opt"], results["tf_keras"]):
        np.testing.assert_array_equal(a, b)
