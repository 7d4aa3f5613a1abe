"""What the tf.distribute worker scripts share: model, data, training loop, results.

The model is small but has both kinds of gradient the optimizers handle: an
embedding looked up with repeated ids (an ``IndexedSlices`` gradient with
duplicate indices, or a dense one when ``sparse=False`` densifies it) feeding a
dense kernel and a bias (dense gradients). The loss of a replica's examples is
summed and divided by the *global* batch size
(``tf.nn.compute_average_loss``), so that summing gradients across replicas
gives the gradient of the mean loss over the global batch: the same as
training on one device with the whole batch.

Nothing here touches TensorFlow's context at import: workers configure logical
devices or create a strategy first (both must precede context initialization).
"""

from __future__ import annotations

import faulthandler
import json
import os
import sys
import traceback
from typing import Any, Callable

import numpy as np
import tensorflow as tf
from dist_configs import CLIP, GLOBAL_BATCH

VOCAB, DIM, IDS_PER_EXAMPLE = 12, 4, 3
VAR_NAMES = ("embedding", "kernel", "bias")

# One optimizer config per optimizer the distribution tests cover; learning
# rates are large enough that a few steps move every variable visibly, and the
# options exercise more of each update rule (momentum, centered, decay, l1/l2).
OPTIMIZERS: dict[str, tuple[str, dict[str, Any]]] = {
    "adam": ("Adam", dict(learning_rate=0.05)),
    "adam_amsgrad": ("Adam", dict(learning_rate=0.05, amsgrad=True)),
    "sgd": ("SGD", dict(learning_rate=0.1, momentum=0.9, nesterov=True, decay=0.05)),
    "adagrad": ("Adagrad", dict(learning_rate=0.1)),
    "rmsprop": ("RMSprop", dict(learning_rate=0.01, momentum=0.5, centered=True)),
    # Without momentum: keras_opt's fused kernels have a one-pass sparse op for it.
    "rmsprop_plain": ("RMSprop", dict(learning_rate=0.01, centered=True)),
    "ftrl": (
        "Ftrl",
        dict(
            learning_rate=0.1,
            l1_regularization_strength=0.001,
            l2_regularization_strength=0.01,
        ),
    ),
}


def _modern_optimizers() -> dict[str, tuple[str, dict[str, Any]]]:
    """The first configuration of each modern optimizer in the shared table (keras_opt only)."""
    from dist_configs import KERAS_OPT_ONLY

    from cases import MODERN_CASES

    out: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, kwargs in MODERN_CASES:
        out.setdefault(name.lower(), (name, kwargs))
    assert set(out) == KERAS_OPT_ONLY, (set(out), KERAS_OPT_ONLY)
    return out


OPTIMIZERS.update(_modern_optimizers())


def set_deadline(seconds: float) -> None:
    """Dumps every thread's stack and exits the process after ``seconds``.

    Runs on faulthandler's own C thread, so it fires even while the main thread
    is blocked inside a TensorFlow collective that never completes.
    """
    faulthandler.dump_traceback_later(seconds, exit=True)


def libraries() -> dict[str, Any]:
    """The two optimizer modules compared side by side."""
    import tf_keras.optimizers.legacy as tf_keras_legacy

    import keras_opt

    return {"keras_opt": keras_opt, "tf_keras": tf_keras_legacy}


def make_optimizer(lib: Any, opt_name: str, **extra: Any):
    class_name, kwargs = OPTIMIZERS[opt_name]
    return getattr(lib, class_name)(**kwargs, **extra)


def initial_values(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "embedding": rng.normal(0.0, 0.5, (VOCAB, DIM)).astype(np.float32),
        "kernel": rng.normal(0.0, 0.5, (DIM, 1)).astype(np.float32),
        "bias": rng.normal(0.0, 0.1, (1,)).astype(np.float32),
    }


def make_data(steps: int, global_batch: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` global batches: ids (steps, batch, IDS_PER_EXAMPLE), targets (steps, batch, 1).

    Ids repeat within and across examples, so sparse gradients carry duplicate
    indices (the optimizer's de-duplication path runs).
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB // 2, (steps, global_batch, IDS_PER_EXAMPLE)).astype(np.int32)
    ids[:, ::2, 0] += VOCAB // 2  # even examples also touch the upper half of the table
    targets = rng.normal(0.0, 1.0, (steps, global_batch, 1)).astype(np.float32)
    return ids, targets


def make_variables(values: dict[str, np.ndarray], named: bool = True) -> dict[str, tf.Variable]:
    """The model's variables; ``named=False`` leaves TensorFlow's default names."""
    return {name: tf.Variable(values[name], name=name if named else None) for name in VAR_NAMES}


def replica_loss(variables: dict[str, Any], ids, targets, global_batch: int):
    """Sum of this replica's squared errors divided by the global batch size."""
    hidden = tf.reduce_mean(tf.nn.embedding_lookup(variables["embedding"], ids), axis=1)
    pred = tf.matmul(hidden, variables["kernel"]) + variables["bias"]
    per_example = tf.reduce_sum(tf.square(pred - targets), axis=1)
    return tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)


def is_sharded(var: Any) -> bool:
    return isinstance(var, tf.__internal__.distribute.ShardedVariable)


def trainable_list(variables: dict[str, Any]) -> list:
    """The variables in VAR_NAMES order, a ShardedVariable replaced by its shards.

    Shards are what an optimizer receives under ParameterServerStrategy (as
    tf_keras's models pass them), each with its own IndexedSlices gradient.
    """
    out = []
    for name in VAR_NAMES:
        var = variables[name]
        out.extend(var.variables if is_sharded(var) else [var])
    return out


def replica_gradients(variables, ids, targets, global_batch: int, sparse: bool):
    """Gradients of `replica_loss`: (gradient, variable) pairs in `trainable_list` order."""
    var_list = trainable_list(variables)
    with tf.GradientTape() as tape:
        loss = replica_loss(variables, ids, targets, global_batch)
    grads = tape.gradient(loss, var_list)
    if not sparse:
        grads = [tf.convert_to_tensor(g) for g in grads]
    return list(zip(grads, var_list))


def scale_gradient(grad, factor: float):
    if isinstance(grad, tf.IndexedSlices):
        return tf.IndexedSlices(grad.values * factor, grad.indices, grad.dense_shape)
    return grad * factor


def per_replica_batch(strategy, ids: np.ndarray, targets: np.ndarray):
    """Splits one global batch evenly across the strategy's replicas."""
    replicas = strategy.num_replicas_in_sync

    def value_fn(ctx):
        r = ctx.replica_id_in_sync_group
        per = len(ids) // replicas
        return (
            tf.constant(ids[r * per : (r + 1) * per]),
            tf.constant(targets[r * per : (r + 1) * per]),
        )

    return strategy.experimental_distribute_values_from_function(value_fn)


def half_sum_aggregator(grads_and_vars):
    """A custom `gradient_aggregator`: all-reduce sum, then halve."""
    context = tf.distribute.get_replica_context()
    grads = context.all_reduce(tf.distribute.ReduceOp.SUM, [g for g, _ in grads_and_vars])
    return [(scale_gradient(g, 0.5), v) for g, (_, v) in zip(grads, grads_and_vars)]


def clip_transformer(grads_and_vars):
    """A `gradient_transformers` entry: clips each gradient's norm (nonlinear on purpose)."""
    return [(tf.clip_by_norm(g, CLIP), v) for g, v in grads_and_vars]


def optimizer_options(cfg: dict) -> dict:
    options = {}
    if cfg["aggregate"] == "aggregator":
        options["gradient_aggregator"] = half_sum_aggregator
    if cfg["clip"] in ("clipnorm", "global_clipnorm"):
        options[cfg["clip"]] = CLIP
    if cfg["clip"] == "transformer":
        options["gradient_transformers"] = [clip_transformer]
    return options


def train(cfg, strategy, variables, optimizer, ids, targets, steps):
    """Runs ``steps`` (indices into the data) of the configured step under ``strategy``."""

    no_merge_call = []

    def replica_step(step_ids, step_targets):
        no_merge_call.append(tf.__internal__.distribute.strategy_supports_no_merge_call())
        pairs = replica_gradients(variables, step_ids, step_targets, GLOBAL_BATCH, cfg["sparse"])
        if cfg["aggregate"] in ("manual", "clip_before"):
            context = tf.distribute.get_replica_context()
            grads = [g for g, _ in pairs]
            if cfg["aggregate"] == "clip_before":
                grads = [tf.clip_by_norm(g, CLIP) for g in grads]
            grads = context.all_reduce(tf.distribute.ReduceOp.SUM, grads)
            pairs = [(g, v) for g, (_, v) in zip(grads, pairs)]
            optimizer.apply_gradients(pairs, experimental_aggregate_gradients=False)
        else:
            optimizer.apply_gradients(pairs)

    def step(batch):
        strategy.run(replica_step, args=batch)

    if cfg["function"]:
        step = tf.function(step, autograph=False)
    for s in steps:
        step(per_replica_batch(strategy, ids[s], targets[s]))
    return sorted(set(no_merge_call))


def build(lib, cfg, strategy, values):
    options = optimizer_options(cfg)
    if cfg["opt_outside_scope"]:
        optimizer = make_optimizer(lib, cfg["opt"], **options)
    with strategy.scope():
        variables = make_variables(values)
        if not cfg["opt_outside_scope"]:
            optimizer = make_optimizer(lib, cfg["opt"], **options)
    return variables, optimizer


def components(value) -> list:
    """The per-replica components of a distributed variable (itself otherwise)."""
    values = getattr(value, "values", None)
    if isinstance(values, (tuple, list)) and values and isinstance(values[0], tf.Variable):
        return list(values)
    return [value]


def value_of(var: Any) -> np.ndarray:
    """The value of a variable; a sharded one's shards concatenated."""
    if is_sharded(var):
        return np.concatenate([np.asarray(s.numpy()) for s in var.variables])
    return np.asarray(components(var)[0].numpy())


def snapshot(variables: dict[str, Any], optimizer) -> dict[str, np.ndarray]:
    """Model variables, every slot, iterations and replica spread, as numpy arrays.

    ``spread/<name>`` is the largest difference between a distributed
    variable's per-replica components (0 for a consistent mirrored variable).
    """
    out: dict[str, np.ndarray] = {}

    def put(key, var):
        if is_sharded(var):
            out[key] = value_of(var)
            return
        parts = components(var)
        first = np.asarray(parts[0].numpy())
        out[key] = first
        out["spread/" + key] = np.array(
            max(float(np.max(np.abs(np.asarray(p.numpy()) - first), initial=0.0)) for p in parts)
        )

    for name in VAR_NAMES:
        put("var/" + name, variables[name])
        for slot_name, slot in slots_of(optimizer, variables[name]):
            put(f"slot/{name}/{slot_name}", slot)
    put("iterations", optimizer.iterations)
    return out


def slots_of(optimizer, var):
    """(name, slot) of every slot ``var`` has (Muon and Adafactor: not all of them)."""
    for slot_name in optimizer.get_slot_names():
        try:
            yield slot_name, optimizer.get_slot(var, slot_name)
        except KeyError:
            continue


def describe(variables: dict[str, Any], optimizer) -> dict[str, Any]:
    """Types and devices of the optimizer's variables next to the model's."""
    info: dict[str, Any] = {
        "iterations_type": type(optimizer.iterations).__name__,
        "hyper_types": sorted(
            {type(v).__name__ for v in optimizer._hyper.values() if isinstance(v, tf.Variable)}
        ),
        "slot_names": list(optimizer.get_slot_names()),
        "slots": {},
    }
    for name in VAR_NAMES:
        var = variables[name]
        for slot_name, slot in slots_of(optimizer, var):
            info["slots"][f"{name}/{slot_name}"] = {
                "type": type(slot).__name__,
                "devices": [c.device for c in components(slot)],
                "var_devices": [c.device for c in components(var)],
            }
    return info


class Results:
    """Arrays (one npz) and metadata (one JSON) a worker hands to its test."""

    def __init__(self, out_dir: str, stem: str):
        self.npz = os.path.join(out_dir, stem + ".npz")
        self.json = os.path.join(out_dir, stem + ".json")
        self.arrays: dict[str, np.ndarray] = {}
        self.meta: dict[str, Any] = {}

    def add_arrays(self, prefix: str, arrays: dict[str, np.ndarray]) -> None:
        for key, value in arrays.items():
            self.arrays[f"{prefix}/{key}"] = np.asarray(value)

    def run(self, key: str, fn: Callable[[], Any]) -> None:
        """Runs one configuration; an exception is recorded, not fatal to the others."""
        try:
            self.meta[key] = fn()
        except Exception:  # noqa: BLE001 (the test that reads `key` reports it)
            self.meta[key] = {"error": traceback.format_exc()}
            print(self.meta[key]["error"], file=sys.stderr)
        self.save()

    def save(self) -> None:
        np.savez(self.npz + ".tmp.npz", **self.arrays)
        os.replace(self.npz + ".tmp.npz", self.npz)
        with open(self.json + ".tmp", "w") as f:
            json.dump(self.meta, f, indent=1, default=str)
        os.replace(self.json + ".tmp", self.json)
