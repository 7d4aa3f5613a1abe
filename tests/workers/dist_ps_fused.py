"""keras_opt's fused kernels under ParameterServerStrategy, ps servers in other processes.

Run by tests/test_distribute_ps.py as ``dist_ps_fused.py OUT_DIR`` beside three
dist_ps_server.py processes named in ``DIST_CLUSTER`` (1 worker, 2 ps): the
worker and ps 0 load keras_opt's op library, ps 1 does not (it never imports
keras_opt). The embedding is split into a shard per ps.

For each configuration of PS_FUSED_TWINS keras_opt trains twice, one step at
a time: with its fused kernels (the default) and with fused_kernels=False.
Expected: the variables on ps 0 take the fused ops (placed on ps 0), those on
ps 1 fall back to the per-variable path with the reason recorded, the step
runs, and both runs end with the same bits. EAGER_TWIN also trains both ways
with eager steps run by the coordinator itself (``strategy.run`` outside a
function: the fused ops take the variables' handles, no group).
Results: OUT_DIR/ps_fused.npz and OUT_DIR/ps_fused.json.
"""

from __future__ import annotations

import json
import os
import sys

import dist_common as common
import tensorflow as tf
from dist_configs import GLOBAL_BATCH, PS_CONFIGS, PS_FUSED_TWINS, PS_SHARDS, STEPS
from dist_ps import PSTrainer, fused_info, train_per_variable

EAGER_TWIN = "adam-sparse"


def main(out_dir: str) -> None:
    import keras_opt
    from keras_opt.kernels import dispatch

    cluster = tf.train.ClusterSpec(json.loads(os.environ["DIST_CLUSTER"]))
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")
    trainer = PSTrainer(resolver, PS_SHARDS)
    ids, targets = common.make_data(STEPS, GLOBAL_BATCH)
    results = common.Results(out_dir, "ps_fused")

    def run_config(name: str) -> dict:
        cfg = PS_CONFIGS[name]
        variables, optimizer = common.build(
            keras_opt, cfg, trainer.strategy, common.initial_values()
        )
        seen: dict = {}
        trainer.train(cfg, variables, optimizer, ids, targets, range(STEPS), seen)
        results.add_arrays(f"{name}/fused", common.snapshot(variables, optimizer))
        arrays, per_variable = train_per_variable(trainer, cfg, ids, targets, range(STEPS))
        results.add_arrays(f"{name}/per_variable", arrays)
        return {
            "fused": fused_info(variables, optimizer, seen),
            "per_variable": per_variable,
        }

    def train_eager(cfg, fused: bool) -> dict:
        variables, optimizer = common.build(
            keras_opt, cfg, trainer.strategy, common.initial_values()
        )
        optimizer.fused_kernels = fused
        for s in range(STEPS):

            def replica_fn(s=s):
                pairs = common.replica_gradients(
                    variables, ids[s], targets[s], GLOBAL_BATCH, cfg["sparse"]
                )
                optimizer.apply_gradients(pairs)

            trainer.strategy.run(replica_fn)
        key = "fused" if fused else "per_variable"
        results.add_arrays(f"eager/{key}", common.snapshot(variables, optimizer))
        return fused_info(variables, optimizer, {})

    def run_eager() -> dict:
        cfg = PS_CONFIGS[EAGER_TWIN]
        out = {"name": EAGER_TWIN}
        for key in ("fused", "per_variable"):
            out[key] = train_eager(cfg, key == "fused")
        return out

    for name in PS_FUSED_TWINS:
        results.run(name, lambda n=name: run_config(n))
    results.run("eager", run_eager)
    results.meta["probed"] = {
        f"{device} @ {address}": why for (device, address), why in dispatch._PROBED.items()
    }
    results.meta["_done"] = True
    results.save()


if __name__ == "__main__":
    common.set_deadline(float(os.environ.get("DIST_WORKER_DEADLINE", 100)))
    main(sys.argv[1])
    sys.stdout.flush()
    os._exit(0)  # skip the teardown of the coordinator's threads
