"""ParameterServerStrategy coordinator that loses a worker mid-training.

Run by tests/test_distribute_ps.py as ``dist_ps_fault.py OUT_DIR PIDS_JSON``
beside two dist_ps_server.py worker processes; the cluster (2 workers, 2 ps)
comes in ``DIST_CLUSTER``. The ps servers run in this process (only workers
need to be killable, and each process costs a TensorFlow start). PIDS_JSON,
written by the test once everything started, gives the workers' process ids.

The coordinator schedules STEPS training steps asynchronously, waits until
KILL_AFTER of them have completed, SIGKILLs worker 1 and joins. The closure
that worker 1 was running (at most one: a ClusterCoordinator worker thread runs
one closure at a time) fails with UnavailableError, is put back on the queue
and runs again on worker 0, which also runs everything still queued.

A step is "completed" when the coordinator has fetched its return value (the
optimizer's ``iterations`` read after the update), so its update was applied.
A step interrupted by the kill may or may not have been applied, partly or
completely, before it is run again: the coordinator gives at-least-once
execution. The step updates, besides the model, a ``counter`` variable with a
constant gradient of 1 under SGD with learning rate 2**-3, so ``-8 * counter``
counts exactly how many times the update ops of a step ran, and
``iterations`` how many times a whole step was applied (its increment runs
after all the step's updates). "No applied update is lost" means:

    STEPS <= iterations <= counter_updates <= STEPS + interrupted

with ``interrupted`` (0 or 1) the closures running on worker 1 at the kill.
The results go to OUT_DIR/ps_fault.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

STEPS = 40
KILL_AFTER = 10
LEARNING_RATE = 2.0**-3  # a binary fraction: counter = -LEARNING_RATE * updates, exactly


def wait_for_file(path: str, timeout_s: float) -> dict:
    deadline = time.monotonic() + timeout_s
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout_s} s")
        time.sleep(0.05)
    with open(path) as f:
        return json.load(f)


def main(out_dir: str, pids_path: str) -> None:
    import dist_common as common
    import numpy as np
    import tensorflow as tf
    from dist_configs import GLOBAL_BATCH

    import keras_opt

    pids = wait_for_file(pids_path, 60)
    cluster = tf.train.ClusterSpec(json.loads(os.environ["DIST_CLUSTER"]))
    ps_servers = [  # noqa: F841 (kept alive until the process exits)
        tf.distribute.Server(cluster, job_name="ps", task_index=i, protocol="grpc")
        for i in range(cluster.num_tasks("ps"))
    ]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")
    strategy = tf.distribute.ParameterServerStrategy(
        resolver,
        variable_partitioner=tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=64, max_shards=cluster.num_tasks("ps")
        ),
    )
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    with strategy.scope():
        variables = common.make_variables(common.initial_values())
        counter = tf.Variable(0.0, name="counter")
        optimizer = keras_opt.SGD(learning_rate=LEARNING_RATE)
    var_list = common.trainable_list(variables) + [counter]
    ids, targets = common.make_data(STEPS, GLOBAL_BATCH)
    all_ids, all_targets = tf.constant(ids), tf.constant(targets)

    @tf.function
    def step_fn(step):
        def replica_fn():
            with tf.GradientTape() as tape:
                loss = common.replica_loss(
                    variables, tf.gather(all_ids, step), tf.gather(all_targets, step), GLOBAL_BATCH
                )
                loss += counter  # d loss / d counter = 1
            grads = tape.gradient(loss, var_list)
            update = optimizer.apply_gradients(zip(grads, var_list))
            with tf.control_dependencies([update]):
                return optimizer.iterations.read_value()

        return strategy.run(replica_fn)

    start = time.monotonic()
    results = [coordinator.schedule(step_fn, args=(tf.constant(s),)) for s in range(STEPS)]
    for result in results[:KILL_AFTER]:
        result.fetch()
    done_before_kill = sum(1 for r in results if r._status.name == "READY")  # noqa: SLF001
    os.kill(pids["worker1"], signal.SIGKILL)
    killed_at = time.monotonic() - start
    coordinator.join()
    fetched, errors = [], []
    for result in results:
        try:
            fetched.append(int(result.fetch()))
        except Exception as e:  # noqa: BLE001 (recorded; the test fails on any)
            errors.append(repr(e)[:500])
    record = {
        "steps": STEPS,
        "kill_after": KILL_AFTER,
        "done_before_kill": done_before_kill,
        "killed_at_s": killed_at,
        "seconds": time.monotonic() - start,
        "fetched": fetched,
        "errors": errors,
        "iterations": int(optimizer.iterations.numpy()),
        "counter": float(counter.numpy()),
        "counter_updates": float(-counter.numpy() / LEARNING_RATE),
        "finite": bool(all(np.all(np.isfinite(common.value_of(v))) for v in variables.values())),
        # The worker processes never load keras_opt's op library: per-variable path.
        "paths": keras_opt.kernels.last_paths(optimizer),
    }
    with open(os.path.join(out_dir, "ps_fault.json"), "w") as f:
        json.dump(record, f, indent=1)
    print(json.dumps(record), flush=True)


if __name__ == "__main__":
    import dist_common

    dist_common.set_deadline(float(os.environ.get("DIST_WORKER_DEADLINE", 170)))
    main(sys.argv[1], sys.argv[2])
    sys.stdout.flush()
    os._exit(0)  # the coordinator's recovery thread keeps waiting for worker 1
