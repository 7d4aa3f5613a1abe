"""MultiWorkerMirroredStrategy worker: one of two processes training together.

Run by tests/test_distribute_multiworker.py as ``dist_mwms.py OUT_DIR`` with
``TF_CONFIG`` naming the two workers on 127.0.0.1 and this process's index.

For every configuration of dist_configs.MWMS_CONFIGS both libraries train the
same model side by side under the strategy (worker ``i`` feeds rows
``[i*B/2, (i+1)*B/2)`` of each global batch of ``B`` examples). The same process
then trains the one-device reference: no strategy, the whole global batch per
step. Checkpoint configurations save after CKPT_STEPS steps (the chief into
OUT_DIR, the other worker into a directory of its own, as TensorFlow asks of
multi-worker saving), restore into fresh objects without a strategy and
continue. Results go to OUT_DIR/mwms_<index>.npz and .json.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import tensorflow as tf


def main(out_dir: str) -> None:
    # The strategy must come before anything else touches TensorFlow's context
    # ("Collective ops must be configured at program startup").
    strategy = tf.distribute.MultiWorkerMirroredStrategy()

    import dist_common as common
    from dist_configs import CKPT_STEPS, GLOBAL_BATCH, MWMS_CONFIGS, STEPS, reference_config

    task = json.loads(os.environ["TF_CONFIG"])["task"]
    index = task["index"]
    is_chief = index == 0
    libs = common.libraries()
    data = common.make_data(STEPS, GLOBAL_BATCH)
    results = common.Results(out_dir, f"mwms_{index}")
    results.meta["_task"] = task
    results.add_arrays("init", {"var/" + k: v for k, v in common.initial_values().items()})
    default = tf.distribute.get_strategy()

    def checkpoint_and_restore(name, lib_name, lib, cfg, variables, optimizer):
        directory = os.path.join(
            out_dir, "ckpt" if is_chief else f"ckpt_worker{index}", f"{name}-{lib_name}"
        )
        checkpoint = tf.train.Checkpoint(optimizer=optimizer, **variables)
        path = checkpoint.save(os.path.join(directory, "ckpt"))
        zeros = {k: np.zeros_like(v) for k, v in common.initial_values().items()}
        new_variables, new_optimizer = common.build(lib, cfg, default, zeros)
        status = tf.train.Checkpoint(optimizer=new_optimizer, **new_variables).restore(path)
        status.assert_existing_objects_matched()
        return new_variables, new_optimizer, status

    def run_config(name: str, cfg: dict) -> dict:
        start = time.perf_counter()
        meta: dict = {"replicas": strategy.num_replicas_in_sync, "describe": {}}
        for lib_name, lib in libs.items():
            variables, optimizer = common.build(lib, cfg, strategy, common.initial_values())
            if cfg["restore_replicas"] is None:
                common.train(cfg, strategy, variables, optimizer, *data, range(STEPS))
                meta["describe"][lib_name] = common.describe(variables, optimizer)
            else:
                common.train(cfg, strategy, variables, optimizer, *data, range(CKPT_STEPS))
                meta["describe"][lib_name] = common.describe(variables, optimizer)
                results.add_arrays(
                    f"{name}/{lib_name}/saved", common.snapshot(variables, optimizer)
                )
                variables, optimizer, status = checkpoint_and_restore(
                    name, lib_name, lib, cfg, variables, optimizer
                )
                common.train(cfg, default, variables, optimizer, *data, range(CKPT_STEPS, STEPS))
                status.assert_consumed()
                meta.setdefault("restore", {})[lib_name] = {"consumed": True}
            results.add_arrays(f"{name}/{lib_name}", common.snapshot(variables, optimizer))
            ref = reference_config(cfg)
            ref_vars, ref_opt = common.build(lib, ref, default, common.initial_values())
            common.train(ref, default, ref_vars, ref_opt, *data, range(STEPS))
            results.add_arrays(f"{name}/{lib_name}/reference", common.snapshot(ref_vars, ref_opt))
        meta["seconds"] = time.perf_counter() - start
        return meta

    for name, cfg in MWMS_CONFIGS.items():
        results.run(name, lambda n=name, c=cfg: run_config(n, c))
    results.meta["_done"] = True
    results.save()


if __name__ == "__main__":
    import dist_common

    dist_common.set_deadline(float(os.environ.get("DIST_WORKER_DEADLINE", 170)))
    main(sys.argv[1])
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown of the collective executor threads
