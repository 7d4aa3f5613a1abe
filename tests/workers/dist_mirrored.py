"""MirroredStrategy worker: trains every configuration, keras_opt and tf_keras side by side.

Run by tests/test_distribute_mirrored.py as ``dist_mirrored.py OUT_DIR``. The
CPU is split into 4 logical devices before TensorFlow initializes (which the
pytest process cannot do: other test files have initialized TensorFlow there).

For each configuration in CONFIGS both libraries train the same model, from the
same start values and on the same data, under one MirroredStrategy; then the
configuration's one-device reference (no strategy, the whole global batch per
step, same optimizer options) is trained with both libraries. Everything is
written to OUT_DIR/mirrored.npz (arrays) and OUT_DIR/mirrored.json (types,
devices, errors, seconds); the test functions assert on them.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import dist_common as common
import numpy as np
import tensorflow as tf
from dist_configs import (
    CKPT_STEPS,
    CONFIGS,
    DEFAULTS,
    GLOBAL_BATCH,
    REPLICAS_MAX,
    STEPS,
    lib_names,
    reference_config,
    reference_key,
)


def make_strategy(replicas: int, cross_device: str = "default", merge_call: bool = True):
    """A fresh MirroredStrategy over ``replicas`` logical CPUs (0: the default strategy)."""
    if replicas == 0:
        return tf.distribute.get_strategy()
    # Every strategy starts its collective group keys at the same base; a
    # strategy of another size reusing a key breaks collectives for the whole
    # process. TF's own tests move the base forward for each strategy.
    tf.distribute.MirroredStrategy._collective_key_base += 100000
    cross_device_ops = {
        "default": None,
        "reduce_to_one": tf.distribute.ReductionToOneDevice(),
        "hierarchical": tf.distribute.HierarchicalCopyAllReduce(num_packs=1),
    }[cross_device]
    strategy = tf.distribute.MirroredStrategy(
        devices=[f"/cpu:{i}" for i in range(replicas)], cross_device_ops=cross_device_ops
    )
    if not merge_call:
        strategy.extended._use_merge_call = lambda: False
    return strategy


def run_reference(libs, results, ref: dict, data, cache: dict) -> str:
    key = reference_key(ref)
    if key not in cache:
        strategy = make_strategy(0)
        for lib_name, lib in libs.items():
            if lib_name not in lib_names(ref):
                continue
            variables, optimizer = common.build(lib, ref, strategy, common.initial_values())
            common.train(ref, strategy, variables, optimizer, *data, range(STEPS))
            results.add_arrays(f"{key}/{lib_name}", common.snapshot(variables, optimizer))
        cache[key] = key
    return key


def run_config(libs, results, name: str, cfg: dict, data, cache: dict) -> dict:
    start = time.perf_counter()
    strategy = make_strategy(cfg["replicas"], cfg["cross_device"], cfg["merge_call"])
    meta: dict = {
        "replicas": strategy.num_replicas_in_sync,
        "cross_device_ops": type(getattr(strategy.extended, "_cross_device_ops", None)).__name__,
        "describe": {},
    }
    for lib_name, lib in libs.items():
        if lib_name not in lib_names(cfg):
            continue
        variables, optimizer = common.build(lib, cfg, strategy, common.initial_values())
        created_under = optimizer._distribution_strategy
        if cfg["restore_replicas"] is None:
            paths = common.train(cfg, strategy, variables, optimizer, *data, range(STEPS))
        else:
            paths = common.train(cfg, strategy, variables, optimizer, *data, range(CKPT_STEPS))
            results.add_arrays(f"{name}/{lib_name}/saved", common.snapshot(variables, optimizer))
            strategy_after, variables, optimizer, restore_meta = checkpoint_and_restore(
                lib, cfg, variables, optimizer, os.path.dirname(results.npz)
            )
            meta.setdefault("restore", {})[lib_name] = restore_meta
            common.train(cfg, strategy_after, variables, optimizer, *data, range(CKPT_STEPS, STEPS))
            status = restore_meta.pop("_status")
            status.assert_consumed()  # every saved value, slots included, reached an object
            restore_meta["consumed"] = True
        results.add_arrays(f"{name}/{lib_name}", common.snapshot(variables, optimizer))
        meta["describe"][lib_name] = common.describe(variables, optimizer)
        meta["describe"][lib_name]["no_merge_call"] = paths
        meta["describe"][lib_name]["created_under_strategy"] = created_under is strategy
    meta["reference"] = run_reference(libs, results, reference_config(cfg), data, cache)
    meta["seconds"] = time.perf_counter() - start
    return meta


def checkpoint_and_restore(lib, cfg, variables, optimizer, out_dir: str):
    """Saves model and optimizer; restores them into fresh objects under another strategy.

    The fresh variables start from other values (zeros), so that equality with
    uninterrupted training can only come from the checkpoint.
    """
    directory = tempfile.mkdtemp(prefix="ckpt_", dir=out_dir)
    path = tf.train.Checkpoint(optimizer=optimizer, **variables).save(
        os.path.join(directory, "ckpt")
    )
    strategy = make_strategy(cfg["restore_replicas"])
    zeros = {k: np.zeros_like(v) for k, v in common.initial_values().items()}
    new_variables, new_optimizer = common.build(lib, cfg, strategy, zeros)
    with strategy.scope():
        status = tf.train.Checkpoint(optimizer=new_optimizer, **new_variables).restore(path)
    status.assert_existing_objects_matched()
    meta = {"_status": status, "restored_replicas": strategy.num_replicas_in_sync}
    return strategy, new_variables, new_optimizer, meta


def run_variable_outside_scope(libs, function: bool, data) -> dict:
    """A model variable created outside the strategy's scope: slot creation must refuse it."""
    strategy = make_strategy(2)
    out = {}
    for lib_name, lib in libs.items():
        variables = common.make_variables(common.initial_values())  # no scope
        with strategy.scope():
            optimizer = common.make_optimizer(lib, "adam")
        cfg = dict(DEFAULTS, function=function)
        try:
            common.train(cfg, strategy, variables, optimizer, *data, range(1))
            out[lib_name] = {"raised": None}
        except Exception as e:  # noqa: BLE001 (recorded for the test to compare)
            out[lib_name] = {"raised": type(e).__name__, "message": str(e)}
        out[lib_name]["moved"] = bool(
            np.any(variables["kernel"].numpy() != common.initial_values()["kernel"])
        )
    return out


def main(out_dir: str, only: list[str]) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS_MAX
    )
    libs = common.libraries()
    data = common.make_data(STEPS, GLOBAL_BATCH)
    results = common.Results(out_dir, "mirrored")
    results.add_arrays("init", {"var/" + k: v for k, v in common.initial_values().items()})
    cache: dict = {}
    for name, cfg in CONFIGS.items():
        if only and name not in only:
            continue
        results.run(name, lambda n=name, c=cfg: run_config(libs, results, n, c, data, cache))
    for function in (True, False):
        key = f"variable_outside_scope-{'function' if function else 'eager'}"
        if not only or key in only:
            results.run(key, lambda f=function: run_variable_outside_scope(libs, f, data))
    results.meta["_done"] = True
    results.save()


if __name__ == "__main__":
    common.set_deadline(float(os.environ.get("DIST_WORKER_DEADLINE", 500)))
    main(sys.argv[1], sys.argv[2:])
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of strategy threads
