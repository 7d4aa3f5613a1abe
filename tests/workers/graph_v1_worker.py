"""Trains with eager execution disabled for the whole process (TF1 style).

Run by tests/test_graph_mode.py in its own process, because
``tf.compat.v1.disable_eager_execution()`` cannot be undone. keras_opt and
tf_keras legacy train copies of the same variables in the one default graph and
session; every step their values must be equal. Prints ``OK`` last on success
and exits non-zero (with a traceback) on any mismatch.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

tf.compat.v1.disable_eager_execution()

from tf_keras.optimizers import legacy as tf_keras_legacy  # noqa: E402

import keras_opt  # noqa: E402

from cases import STEPS, VAR_SHAPE, gradient_stream, initial_values  # noqa: E402

v1 = tf.compat.v1
CONFIGS = [
    ("Adam", dict(learning_rate=0.1, amsgrad=True)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    ("RMSprop", dict(learning_rate=0.1, centered=True)),
    ("Nadam", dict(learning_rate=0.1)),
]


def main() -> None:
    assert not tf.executing_eagerly()
    gw = v1.placeholder(tf.float32, VAR_SHAPE)
    gv = v1.placeholder(tf.float32, (None,) + VAR_SHAPE[1:])
    gi = v1.placeholder(tf.int64, [None])
    w0, _ = initial_values(np.float32)
    pairs = []
    for name, kwargs in CONFIGS:
        trained = []
        for lib in (keras_opt, tf_keras_legacy):
            with tf.name_scope(f"{lib.__name__.split('.')[0]}_{name}"):
                w = tf.Variable(w0, name="w")
                e = tf.Variable(w0[::-1].copy(), name="e")
            opt = getattr(lib, name)(**kwargs)

            def loss(w=w, e=e):
                return tf.reduce_sum(w * gw) + tf.reduce_sum(tf.gather(e, gi) * gv)

            op = opt.minimize(loss, [w, e])
            trained.append((opt, op, [w, e]))
        pairs.append((name, trained))
    train = tf.group([op for _, trained in pairs for _, op, _ in trained])
    dense = gradient_stream(sparse=False, dtype=np.float32)
    sparse = gradient_stream(sparse=True, dtype=np.float32)
    with v1.Session() as session:
        session.run(v1.global_variables_initializer())
        for step in range(STEPS):
            if step == 2:
                # Hyperparameter changes run in the default session.
                for _, trained in pairs:
                    for opt, _, _ in trained:
                        opt.learning_rate = 0.05
            values, indices = sparse[step][0]
            session.run(train, {gw: dense[step][0], gv: values, gi: indices})
            for name, ((ours, _, our_vars), (theirs, _, their_vars)) in pairs:
                a = session.run(our_vars + ours.weights)
                b = session.run(their_vars + theirs.weights)
                for x, y in zip(a, b):
                    np.testing.assert_array_equal(x, y, err_msg=f"{name} step {step + 1}")
                for x, y in zip(ours.get_weights(), theirs.get_weights()):
                    np.testing.assert_array_equal(x, y)
                assert ours.get_config() == theirs.get_config(), name
        for name, ((ours, _, our_vars), _) in pairs:
            assert session.run(ours.iterations) == STEPS, name
            assert not np.array_equal(session.run(our_vars[1]), w0[::-1]), name
    print("OK")


if __name__ == "__main__":
    main()
