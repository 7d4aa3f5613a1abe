"""Train with keras_opt under tf.distribute.ParameterServerStrategy.

    python examples/parameter_server.py [--workers 2] [--ps 2] [--steps 40]

This starts an in-process cluster (``tf.distribute.Server``s for the workers
and parameter servers on free 127.0.0.1 ports) and acts as its coordinator;
on a real cluster the servers run on their own machines and the coordinator
gets a ``TFConfigClusterResolver`` instead. The embedding table is split
across the parameter servers by a ``variable_partitioner``; the optimizer
receives its shards, each with its own sparse (``IndexedSlices``) gradient,
and keeps each shard's slots on that shard's parameter server. A
``ClusterCoordinator`` schedules steps on whichever worker is free; each step
reads a batch from the worker's own dataset iterator.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys

import numpy as np
import tensorflow as tf

VOCAB, DIM, IDS, BATCH = 64, 8, 4, 16


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def start_in_process_cluster(num_workers: int, num_ps: int):
    ports = free_ports(num_workers + num_ps)
    cluster = tf.train.ClusterSpec(
        {
            "worker": [f"127.0.0.1:{p}" for p in ports[:num_workers]],
            "ps": [f"127.0.0.1:{p}" for p in ports[num_workers:]],
        }
    )
    worker_config = tf.compat.v1.ConfigProto()
    if (os.cpu_count() or 1) < num_workers + 1:
        worker_config.inter_op_parallelism_threads = num_workers + 1
    servers = [
        tf.distribute.Server(cluster, "worker", task_index=i, config=worker_config, protocol="grpc")
        for i in range(num_workers)
    ]
    servers += [
        tf.distribute.Server(cluster, "ps", task_index=i, protocol="grpc") for i in range(num_ps)
    ]
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(cluster, rpc_layer="grpc")
    return resolver, servers


def dataset_fn(input_context):
    """Each worker's endless stream of batches (targets from a hidden embedding)."""
    del input_context  # every worker reads the same stream here
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (1024, IDS)).astype(np.int32)
    targets = rng.normal(size=(VOCAB, 1)).astype(np.float32)[ids].mean(axis=1)
    return tf.data.Dataset.from_tensor_slices((ids, targets)).shuffle(1024).repeat().batch(BATCH)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    import keras_opt

    resolver, _servers = start_in_process_cluster(args.workers, args.ps)
    strategy = tf.distribute.ParameterServerStrategy(
        resolver,
        variable_partitioner=tf.distribute.experimental.partitioners.MinSizePartitioner(
            min_shard_bytes=256, max_shards=args.ps
        ),
    )
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    rng = np.random.default_rng(1)
    with strategy.scope():
        embedding = tf.Variable(rng.normal(0, 0.3, (VOCAB, DIM)).astype(np.float32))  # sharded
        kernel = tf.Variable(rng.normal(0, 0.3, (DIM, 1)).astype(np.float32))
        bias = tf.Variable(np.zeros(1, np.float32))
        optimizer = keras_opt.Adagrad(learning_rate=0.2)
    # The optimizer trains the shards of the sharded embedding.
    var_list = list(embedding.variables) + [kernel, bias]

    @tf.function
    def step_fn(iterator):
        def replica_fn(batch):
            ids, targets = batch
            with tf.GradientTape() as tape:
                hidden = tf.reduce_mean(tf.nn.embedding_lookup(embedding, ids), axis=1)
                pred = hidden @ kernel + bias
                loss = tf.reduce_mean(tf.reduce_sum(tf.square(pred - targets), axis=1))
            grads = tape.gradient(loss, var_list)  # one IndexedSlices per shard
            optimizer.apply_gradients(zip(grads, var_list))
            return loss

        return strategy.run(replica_fn, args=(next(iterator),))

    def per_worker_dataset_fn():
        return strategy.distribute_datasets_from_function(dataset_fn)

    iterator = iter(coordinator.create_per_worker_dataset(per_worker_dataset_fn))
    losses = [coordinator.schedule(step_fn, args=(iterator,)) for _ in range(args.steps)]
    coordinator.join()
    for s in range(0, args.steps, 10):
        print(f"  step {s:3d}  loss {float(losses[s].fetch()):.5f}")
    print(f"  step {args.steps - 1:3d}  loss {float(losses[-1].fetch()):.5f}")
    print(f"iterations: {int(optimizer.iterations.numpy())}")
    for shard in embedding.variables:
        slot = optimizer.get_slot(shard, "accumulator")
        print(f"{shard.name} {shard.shape} on {shard.device}: accumulator on {slot.device}")
    sys.stdout.flush()
    os._exit(0)  # skip teardown of the in-process servers and coordinator threads


if __name__ == "__main__":
    main()
