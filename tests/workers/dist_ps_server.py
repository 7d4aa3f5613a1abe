"""A ParameterServerStrategy cluster member: serves its task until killed.

Run as ``dist_ps_server.py`` with ``TF_CONFIG`` naming the cluster and this
process's task ("worker" or "ps"). It starts a ``tf.distribute.Server`` and
waits; the coordinator process sends it work over gRPC. A deadline
(``DIST_WORKER_DEADLINE`` seconds) ends it even if nobody kills it. With
``DIST_LOAD_KERAS_OPT_KERNELS=1`` it first loads keras_opt's fused-kernel op
library (as a user's ps or worker process would, to run the fused ops there);
otherwise it never imports keras_opt.
"""

from __future__ import annotations

import json
import os

import dist_common
import tensorflow as tf


def main() -> None:
    if os.environ.get("DIST_LOAD_KERAS_OPT_KERNELS") == "1":
        from keras_opt.kernels import build

        if build.load() is None:
            raise SystemExit(f"keras_opt kernels: {build.status()['reason']}")
    config = json.loads(os.environ["TF_CONFIG"])
    task = config["task"]
    server_config = tf.compat.v1.ConfigProto()
    if task["type"] == "worker":
        # On a 2-core machine, a worker needs more inter-op threads than cores
        # to run a step while serving the coordinator's calls.
        server_config.inter_op_parallelism_threads = len(config["cluster"]["worker"]) + 1
    server = tf.distribute.Server(
        tf.train.ClusterSpec(config["cluster"]),
        job_name=task["type"],
        task_index=task["index"],
        config=server_config,
        protocol="grpc",
        start=True,
    )
    print(f"serving {task['type']}:{task['index']} at {server.target}", flush=True)
    server.join()


if __name__ == "__main__":
    dist_common.set_deadline(float(os.environ.get("DIST_WORKER_DEADLINE", 170)))
    main()
