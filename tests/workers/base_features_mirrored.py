"""MirroredStrategy worker for Keras 3's base features (accumulation, EMA, weight decay...).

Run by tests/test_base_features.py as ``base_features_mirrored.py OUT_DIR``. The CPU
is split into 2 logical devices before TensorFlow initializes. For each
configuration and mode (eager / tf.function), keras_opt trains the same
variables under a 2-replica MirroredStrategy, replica r receiving its own
gradients (dense, and an IndexedSlices one with a repeated index), and on one
device with the gradient the all-reduce produces (their sum). After every step
the variables, the optimizer's slots and counters are recorded for both, and
for the distributed run the values of every replica. Finally ``swap_ema_weights``
and ``finalize_variable_values`` run under the strategy. Results go to
OUT_DIR/base_features.npz and OUT_DIR/base_features.json.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import numpy as np
import tensorflow as tf

CONFIGS = {
    "accumulation": ("Adam", dict(learning_rate=0.05, gradient_accumulation_steps=2)),
    "ema": ("SGD", dict(learning_rate=0.1, momentum=0.9, use_ema=True, ema_overwrite_frequency=3)),
    "all": (
        "Adam",
        dict(
            learning_rate=0.05,
            gradient_accumulation_steps=3,
            weight_decay=0.1,
            use_ema=True,
            ema_momentum=0.8,
            loss_scale_factor=8.0,
            global_clipnorm=1.0,
        ),
    ),
}
STEPS = 7
SHAPES = {"embedding": (6, 3), "kernel": (3, 2)}


def replica_grads(step: int, replica: int) -> dict:
    rng = np.random.default_rng(1000 * step + replica)
    indices = np.array([step % 6, 2, (step + replica) % 6, 2], np.int64)
    return {
        "embedding": (rng.standard_normal((4, 3)).astype(np.float32), indices),
        "kernel": rng.standard_normal((3, 2)).astype(np.float32),
    }


def as_tf(grads: dict) -> list:
    values, indices = grads["embedding"]
    return [
        tf.IndexedSlices(
            tf.constant(values), tf.constant(indices), tf.constant(SHAPES["embedding"], tf.int64)
        ),
        tf.constant(grads["kernel"]),
    ]


def summed(step: int, replicas: int) -> list:
    """The all-reduced gradient: the sum of the replicas' (IndexedSlices: concatenation)."""
    parts = [replica_grads(step, r) for r in range(replicas)]
    values = np.concatenate([p["embedding"][0] for p in parts])
    indices = np.concatenate([p["embedding"][1] for p in parts])
    kernel = tf.add_n([tf.constant(p["kernel"]) for p in parts])
    return [
        tf.IndexedSlices(
            tf.constant(values), tf.constant(indices), tf.constant(SHAPES["embedding"], tf.int64)
        ),
        kernel,
    ]


def initial() -> dict:
    rng = np.random.default_rng(3)
    return {k: rng.uniform(-1, 1, s).astype(np.float32) for k, s in SHAPES.items()}


def components(value) -> list:
    if isinstance(value, tf.distribute.DistributedValues):
        return [np.asarray(v.numpy()) for v in value.values]
    return [np.asarray(value.numpy())]


def state(opt, variables: list) -> dict:
    out = {}
    for var in variables:
        name = var.name.split(":")[0].split("/")[-1]
        out[name] = components(var)
        for slot in opt.get_slot_names():
            out[f"{name}/{slot}"] = components(opt.get_slot(var, slot))
    out["iterations"] = components(opt.iterations)
    counter = getattr(opt, "_grad_accum_iter", None)
    if counter is not None:
        out["grad_accum_iter"] = components(counter)
    return out


def train(keras_opt, strategy, name, kwargs, mode, record):
    values = initial()
    with strategy.scope():
        variables = [tf.Variable(values[k], name=k) for k in SHAPES]
        opt = getattr(keras_opt, name)(**kwargs)
    distributed = strategy.num_replicas_in_sync > 1

    def replica_step(step):
        if distributed:
            ctx = tf.distribute.get_replica_context()
            grads = tf.nest.map_structure(
                lambda *xs: tf.switch_case(
                    ctx.replica_id_in_sync_group, [lambda x=x: x for x in xs]
                ),
                *[as_tf(replica_grads(step, r)) for r in range(2)],
                expand_composites=True,
            )
        else:
            grads = summed(step, 2)
        opt.apply_gradients(zip(grads, variables))

    def one_step(step):
        if distributed:
            strategy.run(replica_step, args=(step,))
        else:
            replica_step(step)

    steps = {}
    for step in range(STEPS):
        if mode == "function":
            if step not in steps:
                steps[step] = tf.function(lambda s=step: one_step(s))
            steps[step]()
        else:
            one_step(step)
        for key, value in state(opt, variables).items():
            record[f"{key}@{step}"] = value
    return opt, variables


def main(out_dir: str) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras_opt

    arrays: dict[str, np.ndarray] = {}
    meta: dict = {}
    for config, (name, kwargs) in CONFIGS.items():
        for mode in ("eager", "function"):
            key = f"{config}/{mode}"
            try:
                tf.distribute.MirroredStrategy._collective_key_base += 100000
                mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
                one_device = tf.distribute.get_strategy()
                for label, strategy in (("mirrored", mirrored), ("one", one_device)):
                    record: dict = {}
                    opt, variables = train(keras_opt, strategy, name, kwargs, mode, record)
                    for k, comps in record.items():
                        arrays[f"{key}/{label}/{k}"] = np.stack(comps)
                    if opt.use_ema and label == "mirrored":
                        before = [components(v) for v in variables]
                        averages = [components(opt.get_slot(v, "ema")) for v in variables]
                        with opt.swap_ema_weights(variables):
                            inside = [components(v) for v in variables]
                        after = [components(v) for v in variables]
                        after_avg = [components(opt.get_slot(v, "ema")) for v in variables]
                        for i in range(len(variables)):
                            arrays[f"{key}/swap/{i}/before"] = np.stack(before[i])
                            arrays[f"{key}/swap/{i}/averages"] = np.stack(averages[i])
                            arrays[f"{key}/swap/{i}/inside"] = np.stack(inside[i])
                            arrays[f"{key}/swap/{i}/after"] = np.stack(after[i])
                            arrays[f"{key}/swap/{i}/after_avg"] = np.stack(after_avg[i])
                        opt.finalize_variable_values(variables)
                        for i, v in enumerate(variables):
                            arrays[f"{key}/swap/{i}/finalized"] = np.stack(components(v))
                meta[key] = {"ok": True}
            except Exception:  # noqa: BLE001 (reported to the test)
                meta[key] = {"error": traceback.format_exc()}
    np.savez(os.path.join(out_dir, "base_features.npz"), **arrays)
    with open(os.path.join(out_dir, "base_features.json"), "w") as f:
        json.dump(meta, f)


if __name__ == "__main__":
    main(sys.argv[1])
