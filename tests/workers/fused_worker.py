"""Worker for tests/test_fused.py: fused kernels where a fresh process is needed.

Modes (argv[1]); each prints one line ``RESULT <json>`` and exits 0:

* ``mirrored``: two logical CPUs, MirroredStrategy; trains each optimizer in
  tf.function (strategy.run) with the fused kernels and without; reports
  whether variables and slots are equal on every replica and which path ran.
* ``fallback``: the library is expected to be unavailable (the test points
  CXX at a missing compiler and the cache at an empty directory); reports
  status() and whether the default path equals ``fused_kernels=False``.
* ``isa``: KERAS_OPT_FUSED_ISA is set by the test; reports the ISA the op
  picked and whether fused equals per-variable for every rule and dtype.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tensorflow as tf

MODE = sys.argv[1]
if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras_opt  # noqa: E402
from keras_opt import kernels  # noqa: E402

CONFIGS = [
    ("Adam", dict(learning_rate=0.1)),
    ("Adam", dict(learning_rate=0.1, amsgrad=True)),
    ("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True)),
    ("Adagrad", dict(learning_rate=0.1)),
    ("RMSprop", dict(learning_rate=0.1)),
    ("RMSprop", dict(learning_rate=0.1, momentum=0.5, centered=True)),
    ("Ftrl", dict(learning_rate=0.1, l2_shrinkage_regularization_strength=0.1)),
    ("Nadam", dict(learning_rate=0.1, beta_2=0.99)),
]
# MirroredStrategy's gradient all-reduce fails on 0-d gradients (in TensorFlow's
# batch_reduce_to, with or without the fused kernels): no () under `mirrored`.
SHAPES = [(1,), (7,), (5, 3)] if MODE == "mirrored" else [(), (1,), (7,), (5, 3)]


def train(name, kwargs, dtype, fused, sparse=False, strategy=None, steps=3):
    rng = np.random.default_rng(3)
    scope = strategy.scope() if strategy else _null()
    with scope:
        variables = [
            tf.Variable(tf.cast(rng.uniform(-1, 1, s), dtype), name=f"v{i}")
            for i, s in enumerate(SHAPES)
        ]
        opt = getattr(keras_opt, name)(fused_kernels=fused, **kwargs)
    grads = []
    for step in range(steps):
        gs = [tf.cast(rng.standard_normal(s), dtype) for s in SHAPES]
        if sparse:
            gs[-1] = tf.IndexedSlices(
                tf.cast(rng.standard_normal((3, 3)), dtype),
                tf.constant([step % 5, 2, 2], tf.int64),
                tf.constant([5, 3], tf.int64),
            )
        grads.append(gs)

    def apply(gs):
        if strategy is None:
            opt.apply_gradients(zip(gs, variables))
            return
        # Under the strategy the gradients come from a tape in the replica
        # function (d/dv sum(v * g) = g exactly; a gather gives IndexedSlices).
        with tf.GradientTape() as tape:
            loss = 0.0
            for v, g in zip(variables, gs):
                if isinstance(g, tf.IndexedSlices):
                    loss += tf.reduce_sum(tf.gather(v, g.indices) * g.values)
                else:
                    loss += tf.reduce_sum(v * g)
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

    @tf.function
    def step_fn(gs):
        if strategy is None:
            apply(gs)
        else:
            strategy.run(apply, args=(gs,))

    for gs in grads:
        step_fn(gs)
    state = []
    for v in variables:
        values = strategy.experimental_local_results(v) if strategy else [v]
        state += [x.numpy() for x in values]
        for slot in opt.get_slot_names():
            s = opt.get_slot(v, slot)
            values = strategy.experimental_local_results(s) if strategy else [s]
            state += [x.numpy() for x in values]
    for w in opt.weights:  # also Nadam's momentum cache
        values = strategy.experimental_local_results(w) if strategy else [w]
        state += [x.numpy() for x in values]
    return state, kernels.last_paths(opt)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def same(a, b):
    return len(a) == len(b) and all(
        np.array_equal(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(a, b)
    )


def main():
    out = {"status": kernels.status(), "cases": []}
    if MODE == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        for name, kwargs in CONFIGS:
            for sparse in (False, True) if name in ("Adam", "RMSprop", "Nadam") else (False,):
                a, paths = train(name, kwargs, tf.float32, True, sparse, strategy)
                b, _ = train(name, kwargs, tf.float32, False, sparse, strategy)
                out["cases"].append(
                    dict(
                        name=name,
                        kwargs=kwargs,
                        sparse=sparse,
                        equal=same(a, b),
                        paths=paths,
                        n=len(a),
                    )
                )
    elif MODE == "fallback":
        for name, kwargs in CONFIGS[:3]:
            a, paths = train(name, kwargs, tf.float32, True)
            b, _ = train(name, kwargs, tf.float32, False)
            out["cases"].append(dict(name=name, equal=same(a, b), paths=paths))
    elif MODE == "isa":
        for name, kwargs in CONFIGS:
            for dtype in (tf.float16, tf.bfloat16, tf.float32, tf.float64):
                # (TF has no bfloat16 sparse RMSprop-with-momentum kernel.)
                sparse = name in ("Adam", "Nadam") or (
                    name == "RMSprop" and "momentum" not in kwargs
                )
                a, paths = train(name, kwargs, dtype, True, sparse=sparse)
                b, _ = train(name, kwargs, dtype, False, sparse=sparse)
                out["cases"].append(
                    dict(name=name, dtype=dtype.name, equal=same(a, b), paths=paths)
                )
    print("RESULT " + json.dumps(out, default=str), flush=True)


if __name__ == "__main__":
    main()
