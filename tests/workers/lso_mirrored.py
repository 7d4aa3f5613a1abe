"""MirroredStrategy worker: keras_opt's and tf_keras's LossScaleOptimizer side by side.

Run by tests/test_loss_scale_optimizer.py as ``lso_mirrored.py OUT_DIR [CONFIG ...]``
(all configurations when none is named; names as ``config_name`` makes them). The
CPU is split into 2 logical devices before TensorFlow initializes (the pytest
process cannot: TensorFlow is already initialized there).

Under one MirroredStrategy over the 2 devices, both libraries train the same
two variables (a matrix with dense or IndexedSlices gradients, and a vector)
for STEPS steps in a tape loop (get_scaled_loss, get_unscaled_gradients,
apply_gradients), with Adam inside a dynamic loss scale that grows every
GROWTH finite steps. Each replica feeds its own gradients; at the steps in
INJECT one replica's gradient holds an inf or a NaN, so the all-reduced
gradient is non-finite on every replica and every replica must skip the step.

Configurations: eager and tf.function, dense and sparse, the merge_call path
(how MirroredStrategy runs on CPUs) and the path without merge_call (how it
runs on GPUs, simulated with ``extended._use_merge_call = lambda: False``).

After every step the worker records, per replica, the loss scale, the counter,
``iterations``, both variables and every slot, into OUT_DIR/lso_mirrored.npz;
OUT_DIR/lso_mirrored.json lists the configurations, errors and timings. The
test asserts on them.
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import time
import traceback

# A hard deadline even if a collective hangs: dump the stacks and exit.
faulthandler.dump_traceback_later(float(os.environ.get("LSO_WORKER_DEADLINE_S", "240")), exit=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

REPLICAS = 2
_cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    _cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(REPLICAS)]
)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tf_keras.optimizers import legacy as tf_keras_legacy  # noqa: E402
from tf_keras.src.mixed_precision.loss_scale_optimizer import (  # noqa: E402
    LossScaleOptimizer as TfKerasLSO,
)

import keras_opt  # noqa: E402

STEPS = 20
GROWTH = 3
ROWS, COLS = 5, 3
SPARSE_IDS = np.array([0, 3, 3, 1], dtype=np.int64)  # a repeated row
# step -> (replica whose gradient is poisoned, value, which variable)
INJECT = {2: (0, np.inf, "w"), 6: (1, np.nan, "b"), 7: (0, -np.inf, "w"), 13: (1, np.inf, "b")}
LIBS = {
    "keras_opt": (keras_opt, keras_opt.LossScaleOptimizer),
    "tf_keras": (tf_keras_legacy, TfKerasLSO),
}
CONFIGS = [
    dict(function=function, sparse=sparse, merge_call=merge_call)
    for merge_call in (True, False)
    for function in (False, True)
    for sparse in (False, True)
]


def config_name(config: dict) -> str:
    return "{}-{}-{}".format(
        "function" if config["function"] else "eager",
        "sparse" if config["sparse"] else "dense",
        "merge_call" if config["merge_call"] else "no_merge_call",
    )


def start_values():
    rng = np.random.default_rng(3)
    return (
        rng.uniform(-1, 1, (ROWS, COLS)).astype(np.float32),
        rng.uniform(-1, 1, (COLS,)).astype(np.float32),
    )


def gradient_feed(sparse: bool):
    """Per step and replica: (matrix gradient or its rows, vector gradient)."""
    rng = np.random.default_rng(5)
    feed = []
    for step in range(STEPS):
        per_replica = []
        for replica in range(REPLICAS):
            w_shape = (len(SPARSE_IDS), COLS) if sparse else (ROWS, COLS)
            gw = rng.standard_normal(w_shape).astype(np.float32)
            gb = rng.standard_normal((COLS,)).astype(np.float32)
            poisoned = INJECT.get(step)
            if poisoned and poisoned[0] == replica:
                target = gw if poisoned[2] == "w" else gb
                target.flat[1] = poisoned[1]
            per_replica.append((gw, gb))
        feed.append(per_replica)
    return feed


def local(value):
    return [np.array(v.numpy()) for v in strategy.experimental_local_results(value)]


def train(lib_name: str, config: dict) -> dict:
    lib, lso_class = LIBS[lib_name]
    w0, b0 = start_values()
    with strategy.scope():
        w = tf.Variable(w0, name="w")
        b = tf.Variable(b0, name="b")
        opt = lso_class(lib.Adam(learning_rate=0.05), dynamic_growth_steps=GROWTH)
    sparse = config["sparse"]

    def replica_step(gw, gb):
        with tf.GradientTape() as tape:
            if sparse:
                loss = tf.reduce_sum(tf.gather(w, SPARSE_IDS) * gw)
            else:
                loss = tf.reduce_sum(w * gw)
            loss += tf.reduce_sum(b * gb)
            scaled_loss = opt.get_scaled_loss(loss)
        grads = opt.get_unscaled_gradients(tape.gradient(scaled_loss, [w, b]))
        opt.apply_gradients(zip(grads, [w, b]))

    def step(gw, gb):
        strategy.run(replica_step, args=(gw, gb))

    if config["function"]:
        step = tf.function(step)
    feed = gradient_feed(sparse)
    records: dict[str, list] = {}

    def record(key, value):
        records.setdefault(key, []).append(np.stack(local(value)))

    for step_feed in feed:
        gw = strategy.experimental_distribute_values_from_function(
            lambda ctx, f=step_feed: tf.constant(f[ctx.replica_id_in_sync_group][0])
        )
        gb = strategy.experimental_distribute_values_from_function(
            lambda ctx, f=step_feed: tf.constant(f[ctx.replica_id_in_sync_group][1])
        )
        step(gw, gb)
        record("loss_scale", opt._loss_scale.current_loss_scale)
        record("counter", opt.dynamic_counter)
        record("iterations", opt.iterations)
        record("w", w)
        record("b", b)
        for var_name, var in (("w", w), ("b", b)):
            for slot in opt.get_slot_names():
                try:
                    record(f"slot_{var_name}_{slot}", opt.get_slot(var, slot))
                except KeyError:  # slots not created yet (skipped first steps, eagerly)
                    records.setdefault(f"slot_{var_name}_{slot}", []).append(
                        np.full((REPLICAS,) + tuple(var.shape), np.nan, np.float32)
                    )
    out = {key: np.stack(values) for key, values in records.items()}
    out["weight_names"] = np.array([v.name for v in opt.weights])
    out["variable_types"] = np.array([type(w).__name__, type(opt.iterations).__name__])
    return out


def main(out_dir: str, selected: list[str]) -> None:
    global strategy
    strategy = tf.distribute.MirroredStrategy(devices=[f"/cpu:{i}" for i in range(REPLICAS)])
    arrays = {}
    meta = {
        "configs": [],
        "errors": {},
        "seconds": {},
        "steps": STEPS,
        "growth": GROWTH,
        "inject": {str(step): [r, str(value), var] for step, (r, value, var) in INJECT.items()},
        "replicas": strategy.num_replicas_in_sync,
    }
    unknown = set(selected) - {config_name(c) for c in CONFIGS}
    if unknown:
        raise SystemExit(f"unknown configurations {sorted(unknown)}")
    for config in CONFIGS:
        name = config_name(config)
        if selected and name not in selected:
            continue
        meta["configs"].append(name)
        if not config["merge_call"]:
            strategy.extended._use_merge_call = lambda: False
        try:
            for lib_name in LIBS:
                start = time.perf_counter()
                try:
                    result = train(lib_name, config)
                except Exception:  # recorded for the test to report
                    meta["errors"][f"{name}/{lib_name}"] = traceback.format_exc()[-3000:]
                    continue
                meta["seconds"][f"{name}/{lib_name}"] = round(time.perf_counter() - start, 2)
                for key, value in result.items():
                    arrays[f"{name}/{lib_name}/{key}"] = value
        finally:
            strategy.extended.__dict__.pop("_use_merge_call", None)
    np.savez(os.path.join(out_dir, "lso_mirrored.npz"), **arrays)
    with open(os.path.join(out_dir, "lso_mirrored.json"), "w") as f:
        json.dump(meta, f, indent=1)


strategy: tf.distribute.MirroredStrategy

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
