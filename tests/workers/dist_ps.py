"""ParameterServerStrategy worker: an in-process cluster and its coordinator.

Run by tests/test_distribute_ps.py as ``dist_ps.py OUT_DIR``. The process
starts ``tf.distribute.Server``s for 2 workers and 2 ps on free 127.0.0.1
ports, connects a ParameterServerStrategy to them (which rewires this process's
eager context: hence a process of its own) with a partitioner that splits the
embedding into PS_SHARDS shards, and drives training with a ClusterCoordinator.

For each configuration of dist_configs.PS_CONFIGS both libraries train side by
side, one step at a time (schedule, then join: so steps apply in order, as on
one device). The variables reach the optimizer as CachingVariables, the
embedding as its shards with one IndexedSlices gradient each. The one-device
reference (no strategy, unsharded) is trained in this process too.
Checkpoint configurations save after CKPT_STEPS steps and restore into fresh
objects under each of PS_RESTORE_TARGETS (same or other shard count, slots
created before restoring or not, no strategy), then continue to STEPS.
A last run schedules PS_ASYNC_STEPS steps at once on both workers; another
trains variables created without names. keras_opt runs its fused kernels here
(the ps servers share this process, which loaded the op library); for
PS_FUSED_TWINS it also trains with fused_kernels=False, and which path each
variable took and where the fused ops were placed are recorded.
Results: OUT_DIR/ps.npz and OUT_DIR/ps.json.
"""

from __future__ import annotations

import os
import sys
import time

import dist_common as common
import numpy as np
import tensorflow as tf
from dist_configs import (
    CKPT_STEPS,
    GLOBAL_BATCH,
    PS_ASYNC_STEPS,
    PS_CONFIGS,
    PS_FUSED_TWINS,
    PS_RESTORE_TARGETS,
    PS_SHARDS,
    PS_WORKERS,
    STEPS,
    reference_config,
)

import dist_utils  # noqa: E402,I001 (tests/ is on PYTHONPATH)

partitioners = tf.distribute.experimental.partitioners


def start_cluster():
    """Servers for the workers and ps in this process; returns the cluster resolver."""
    cluster = tf.train.ClusterSpec(dist_utils.cluster_spec(worker=PS_WORKERS, ps=2))
    worker_config = tf.compat.v1.ConfigProto()
    worker_config.inter_op_parallelism_threads = PS_WORKERS + 1
    servers = [
        tf.distribute.Server(
            cluster, job_name="worker", task_index=i, config=worker_config, protocol="grpc"
        )
        for i in range(PS_WORKERS)
    ]
    servers += [
        tf.distribute.Server(cluster, job_name="ps", task_index=i, protocol="grpc")
        for i in range(2)
    ]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")
    return resolver, servers


class PSTrainer:
    """A strategy with its coordinator, and how to run steps under it."""

    def __init__(self, resolver, shards: int):
        if shards == 0:
            self.strategy, self.coordinator = tf.distribute.get_strategy(), None
            return
        if shards == PS_SHARDS:
            # Splits variables of at least 2 x 64 bytes: only the embedding.
            partitioner = partitioners.MinSizePartitioner(min_shard_bytes=64, max_shards=shards)
        else:
            partitioner = partitioners.FixedShardsPartitioner(shards)
        self.strategy = tf.distribute.ParameterServerStrategy(
            resolver, variable_partitioner=partitioner
        )
        self.coordinator = tf.distribute.coordinator.ClusterCoordinator(self.strategy)

    def step_function(self, cfg, variables, optimizer, ids, targets, seen):
        all_ids, all_targets = tf.constant(ids), tf.constant(targets)

        def replica_fn(step):
            pairs = common.replica_gradients(
                variables,
                tf.gather(all_ids, step),
                tf.gather(all_targets, step),
                GLOBAL_BATCH,
                cfg["sparse"],
            )
            seen["var_types"] = [type(v).__name__ for _, v in pairs]
            seen["grad_types"] = [type(g).__name__ for g, _ in pairs]
            update = optimizer.apply_gradients(pairs)
            seen["fused_ops"] = fused_ops(tf.compat.v1.get_default_graph())
            with tf.control_dependencies([update]):
                return optimizer.iterations.read_value()

        @tf.function(autograph=False)
        def step_fn(step):
            return self.strategy.run(replica_fn, args=(step,))

        return step_fn

    def train(self, cfg, variables, optimizer, ids, targets, steps, seen=None):
        """One step at a time: schedule, join. Without a coordinator: call directly."""
        step_fn = self.step_function(
            cfg, variables, optimizer, ids, targets, {} if seen is None else seen
        )
        for s in steps:
            if self.coordinator is None:
                step_fn(tf.constant(s))
            else:
                self.coordinator.schedule(step_fn, args=(tf.constant(s),))
                self.coordinator.join()


def fused_ops(graph) -> list[list[str]]:
    """[type, device] of the keras_opt ops in ``graph`` (the traced step)."""
    return sorted(
        [op.type, op.device] for op in graph.get_operations() if op.type.startswith("KerasOpt")
    )


def fused_info(variables, optimizer, seen) -> dict:
    """Which path keras_opt took per variable, where its fused ops ran."""
    import keras_opt

    return {
        "paths": keras_opt.kernels.last_paths(optimizer),
        "ops": seen.get("fused_ops"),
        "devices": {v.name: v.device for v in common.trainable_list(variables)},
    }


def train_per_variable(trainer, cfg, ids, targets, steps) -> tuple[dict, dict]:
    """keras_opt with fused_kernels=False: (snapshot, fused_info)."""
    import keras_opt

    variables, optimizer = common.build(keras_opt, cfg, trainer.strategy, common.initial_values())
    optimizer.fused_kernels = False
    seen: dict = {}
    trainer.train(cfg, variables, optimizer, ids, targets, steps, seen)
    return common.snapshot(variables, optimizer), fused_info(variables, optimizer, seen)


def describe_ps(variables, optimizer, seen) -> dict:
    """Where the optimizer put its variables, shard by shard."""
    info = {
        "var_types": seen.get("var_types"),
        "grad_types": seen.get("grad_types"),
        "iterations_type": type(optimizer.iterations).__name__,
        "iterations_device": optimizer.iterations.device,
        "weights": len(optimizer.weights),
        "slot_names": list(optimizer.get_slot_names()),
        "slots": [],
        "sharded_slots": {},
    }
    for var in common.trainable_list(variables):
        for slot_name in optimizer.get_slot_names():
            slot = optimizer.get_slot(var, slot_name)
            info["slots"].append(
                {
                    "var": var.name,
                    "slot": slot_name,
                    "var_device": var.device,
                    "slot_device": slot.device,
                    "slot_type": type(slot).__name__,
                    "slot_shape": list(slot.shape),
                    "var_shape": list(var.shape),
                }
            )
    embedding = variables["embedding"]
    if common.is_sharded(embedding):
        for slot_name in optimizer.get_slot_names():
            slot = optimizer.get_slot(embedding, slot_name)
            info["sharded_slots"][slot_name] = {
                "type": type(slot).__name__,
                "shards": len(slot.variables),
            }
    return info


def main(out_dir: str) -> None:
    resolver, _servers = start_cluster()
    libs = common.libraries()
    ids, targets = common.make_data(max(STEPS, PS_ASYNC_STEPS), GLOBAL_BATCH)
    results = common.Results(out_dir, "ps")
    results.add_arrays("init", {"var/" + k: v for k, v in common.initial_values().items()})
    trainer = PSTrainer(resolver, PS_SHARDS)
    no_strategy = PSTrainer(resolver, 0)

    def build(lib, cfg, on: PSTrainer, values):
        return common.build(lib, cfg, on.strategy, values)

    def restore(name, lib_name, lib, cfg, variables, optimizer):
        path = tf.train.Checkpoint(optimizer=optimizer, **variables).save(
            os.path.join(out_dir, "ckpt", f"{name}-{lib_name}", "ckpt")
        )
        outcome = {}
        zeros = {k: np.zeros_like(v) for k, v in common.initial_values().items()}
        for target, shards, built in PS_RESTORE_TARGETS:
            on = trainer if shards == PS_SHARDS else PSTrainer(resolver, shards)
            new_vars, new_opt = build(lib, cfg, on, zeros)
            with on.strategy.scope():
                if built:
                    new_opt._create_all_weights(common.trainable_list(new_vars))
                status = tf.train.Checkpoint(optimizer=new_opt, **new_vars).restore(path)
            on.train(cfg, new_vars, new_opt, ids, targets, range(CKPT_STEPS, STEPS))
            try:
                status.assert_consumed()
                consumed = True
            except AssertionError as e:
                consumed = str(e)[:400]
            shards_now = (
                len(new_vars["embedding"].variables)
                if common.is_sharded(new_vars["embedding"])
                else 0
            )
            outcome[target] = {"consumed": consumed, "shards": shards_now}
            results.add_arrays(f"{name}/{lib_name}/{target}", common.snapshot(new_vars, new_opt))
        return outcome

    def run_config(name: str, cfg: dict) -> dict:
        start = time.perf_counter()
        meta: dict = {"describe": {}}
        for lib_name, lib in libs.items():
            variables, optimizer = build(lib, cfg, trainer, common.initial_values())
            seen: dict = {}
            steps = range(CKPT_STEPS) if cfg["restore_replicas"] is not None else range(STEPS)
            trainer.train(cfg, variables, optimizer, ids, targets, steps, seen)
            meta["describe"][lib_name] = describe_ps(variables, optimizer, seen)
            results.add_arrays(f"{name}/{lib_name}", common.snapshot(variables, optimizer))
            if lib_name == "keras_opt":
                meta["fused"] = fused_info(variables, optimizer, seen)
            if lib_name == "keras_opt" and name in PS_FUSED_TWINS:
                arrays, meta["per_variable"] = train_per_variable(trainer, cfg, ids, targets, steps)
                results.add_arrays(f"{name}/keras_opt_per_variable", arrays)
            if cfg["restore_replicas"] is not None:
                meta.setdefault("restore", {})[lib_name] = restore(
                    name, lib_name, lib, cfg, variables, optimizer
                )
            ref = reference_config(cfg)
            ref_vars, ref_opt = build(lib, ref, no_strategy, common.initial_values())
            no_strategy.train(ref, ref_vars, ref_opt, ids, targets, range(STEPS))
            results.add_arrays(f"{name}/{lib_name}/reference", common.snapshot(ref_vars, ref_opt))
        meta["seconds"] = time.perf_counter() - start
        return meta

    def run_async() -> dict:
        """All steps scheduled at once: both workers run steps concurrently."""
        cfg = PS_CONFIGS["adam-sparse"]
        out = {}
        for lib_name, lib in libs.items():
            variables, optimizer = build(lib, cfg, trainer, common.initial_values())
            step_fn = trainer.step_function(cfg, variables, optimizer, ids, targets, {})
            scheduled = [
                trainer.coordinator.schedule(step_fn, args=(tf.constant(s),))
                for s in range(PS_ASYNC_STEPS)
            ]
            trainer.coordinator.join()
            fetched = sorted(int(r.fetch()) for r in scheduled)
            values = common.snapshot(variables, optimizer)
            out[lib_name] = {
                "iterations": int(optimizer.iterations.numpy()),
                "fetched": fetched,
                "finite": bool(all(np.all(np.isfinite(v)) for v in values.values())),
            }
        return out

    def run_unnamed() -> dict:
        """A sharded variable created without a name (its id is its first shard's)."""
        cfg = PS_CONFIGS["adagrad-sparse"]
        out = {}
        for lib_name, lib in libs.items():
            with trainer.strategy.scope():
                variables = common.make_variables(common.initial_values(), named=False)
                optimizer = common.make_optimizer(lib, cfg["opt"])
            try:
                trainer.train(cfg, variables, optimizer, ids, targets, range(STEPS))
                out[lib_name] = {"raised": None}
                results.add_arrays(f"unnamed/{lib_name}", common.snapshot(variables, optimizer))
            except Exception as e:  # noqa: BLE001 (recorded for the test)
                out[lib_name] = {"raised": type(e).__name__, "message": str(e)[:300]}
        return out

    for name, cfg in PS_CONFIGS.items():
        results.run(name, lambda n=name, c=cfg: run_config(n, c))
    results.run("async", run_async)
    results.run("unnamed", run_unnamed)
    results.meta["_done"] = True
    results.save()


if __name__ == "__main__":
    common.set_deadline(float(os.environ.get("DIST_WORKER_DEADLINE", 200)))
    main(sys.argv[1])
    sys.stdout.flush()
    os._exit(0)  # skip teardown of the in-process servers and coordinator threads
