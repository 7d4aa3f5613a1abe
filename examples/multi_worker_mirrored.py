"""Train with keras_opt under tf.distribute.MultiWorkerMirroredStrategy.

On one machine (starts 2 worker processes on 127.0.0.1 and waits for them):

    python examples/multi_worker_mirrored.py [--workers 2] [--steps 30]

On a real cluster, run one copy per machine with ``TF_CONFIG`` describing the
cluster and that machine's task; the script then acts as that worker:

    TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
                "task": {"type": "worker", "index": 0}}' \\
        python examples/multi_worker_mirrored.py

Each worker feeds its share of every global batch; ``apply_gradients`` sums the
gradients of all workers with a collective all-reduce, so the workers' models
stay identical. Worker 0 (the chief) prints the losses and writes a checkpoint;
the others write theirs to a scratch directory (every worker must call save).

The launcher gives the workers a deadline and kills their process groups when
it passes: a worker whose peer never starts would otherwise wait forever.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

VOCAB, DIM, IDS = 50, 8, 4


def launch(num_workers: int, argv: list[str], deadline_s: float) -> int:
    """Starts the workers on free local ports; kills them all if one fails or hangs."""
    sockets = [socket.socket() for _ in range(num_workers)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    procs = []
    for index in range(num_workers):
        env = dict(os.environ)
        env["TF_CONFIG"] = json.dumps(
            {"cluster": cluster, "task": {"type": "worker", "index": index}}
        )
        procs.append(
            subprocess.Popen([sys.executable, __file__, *argv], env=env, start_new_session=True)
        )
    end = time.monotonic() + deadline_s
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            if any(p.returncode not in (None, 0) for p in procs):
                print("a worker failed: stopping the others", file=sys.stderr)
                status = 1
                break
            if time.monotonic() > end:
                print(f"workers still running after {deadline_s} s: killing them", file=sys.stderr)
                status = 1
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return status or max(abs(p.returncode) for p in procs)


def worker(args) -> None:
    import tensorflow as tf

    # Before anything else touches TensorFlow: collectives are set up at startup.
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import numpy as np

    import keras_opt

    task = json.loads(os.environ["TF_CONFIG"])["task"]
    is_chief = task["index"] == 0
    replicas = strategy.num_replicas_in_sync
    if args.global_batch % replicas:
        raise SystemExit(f"--global-batch must be a multiple of {replicas} replicas")
    rng = np.random.default_rng(0)  # every worker makes the same data and start values
    ids = rng.integers(0, VOCAB, (args.steps, args.global_batch, IDS)).astype(np.int32)
    targets = rng.normal(size=(VOCAB, 1)).astype(np.float32)[ids].mean(axis=2)
    with strategy.scope():
        model = {
            "embedding": tf.Variable(rng.normal(0, 0.3, (VOCAB, DIM)).astype(np.float32)),
            "kernel": tf.Variable(rng.normal(0, 0.3, (DIM, 1)).astype(np.float32)),
            "bias": tf.Variable(np.zeros(1, np.float32)),
        }
        optimizer = keras_opt.Adagrad(learning_rate=0.2)
    var_list = list(model.values())

    def replica_step(step_ids, step_targets):
        with tf.GradientTape() as tape:
            hidden = tf.reduce_mean(tf.nn.embedding_lookup(model["embedding"], step_ids), 1)
            pred = hidden @ model["kernel"] + model["bias"]
            per_example = tf.reduce_sum(tf.square(pred - step_targets), axis=1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=args.global_batch)
        grads = tape.gradient(loss, var_list)
        optimizer.apply_gradients(zip(grads, var_list))  # all-reduce across the workers
        return loss

    @tf.function
    def step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    per_replica = args.global_batch // replicas
    for s in range(args.steps):

        def value_fn(ctx, s=s):
            rows = slice(
                ctx.replica_id_in_sync_group * per_replica,
                (ctx.replica_id_in_sync_group + 1) * per_replica,
            )
            return tf.constant(ids[s, rows]), tf.constant(targets[s, rows])

        loss = step(strategy.experimental_distribute_values_from_function(value_fn))
        if is_chief and (s % 10 == 0 or s == args.steps - 1):
            print(f"  step {s:3d}  loss {float(loss):.5f}", flush=True)

    directory = args.checkpoint_dir if is_chief else tempfile.mkdtemp()
    path = tf.train.Checkpoint(optimizer=optimizer, **model).save(os.path.join(directory, "ckpt"))
    if not is_chief:
        shutil.rmtree(directory)  # the chief's copy is the one to keep
    checksum = float(sum(tf.reduce_sum(v) for v in var_list))
    print(
        f"worker {task['index']}: {int(optimizer.iterations.numpy())} steps, "
        f"sum of the weights {checksum:.6f}" + (f", checkpoint {path}" if is_chief else ""),
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="workers to launch locally")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--checkpoint-dir", default=os.path.join(tempfile.gettempdir(), "mwms"))
    parser.add_argument("--deadline", type=float, default=300, help="seconds, launcher only")
    args = parser.parse_args()
    if "TF_CONFIG" in os.environ:
        worker(args)
        sys.stdout.flush()
        os._exit(0)  # skip interpreter teardown of the collective executor threads
    argv = list(sys.argv[1:])
    print(f"launching {args.workers} workers on 127.0.0.1")
    sys.exit(launch(args.workers, argv, args.deadline))


if __name__ == "__main__":
    main()
