"""ParameterServerStrategy: restore a sharded model before its slots exist.

    python tests/workers/checkpoint_pss.py OUT.json CHECKPOINT_DIR

Runs an in-process cluster (2 workers, 2 parameter servers on 127.0.0.1) and,
for tf_keras legacy Adam and keras_opt Adam in turn: trains a model whose
embedding the strategy shards in two, saves a checkpoint, keeps training
(the uninterrupted run), restores the checkpoint into a fresh model and
optimizer under the strategy (no slots yet) and trains the same steps. It
writes, per library, whether the embedding, each slot and ``iter`` equal the
uninterrupted run's bit for bit, whether ``assert_consumed`` passed, and the
optimizer's weight names. The strategy rewires the process's eager context,
hence its own process.
"""

from __future__ import annotations

import json
import os
import socket
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_keras.optimizers import legacy as tf_keras_legacy  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import keras_opt  # noqa: E402


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def make_strategy():
    ports = free_ports(4)
    spec = tf.train.ClusterSpec(
        {
            "worker": [f"127.0.0.1:{p}" for p in ports[:2]],
            "ps": [f"127.0.0.1:{p}" for p in ports[2:]],
        }
    )
    config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=3)
    for i in range(2):
        tf.distribute.Server(spec, job_name="worker", task_index=i, config=config, protocol="grpc")
    for i in range(2):
        tf.distribute.Server(spec, job_name="ps", task_index=i, protocol="grpc")
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc")
    partitioner = tf.distribute.experimental.partitioners.MinSizePartitioner(
        min_shard_bytes=24, max_shards=2
    )
    strategy = tf.distribute.experimental.ParameterServerStrategy(
        resolver, variable_partitioner=partitioner
    )
    return strategy, tf.distribute.experimental.coordinator.ClusterCoordinator(strategy)


BATCHES = [
    ([1, 4, 4], [[0.5, -1.0], [1.0, 0.0], [0.25, 2.0]]),
    ([0, 3, 1], [[1.0, 1.0], [-0.5, 0.5], [0.0, 1.5]]),
    ([2, 4, 0], [[-1.0, 0.5], [0.5, 0.5], [2.0, -1.0]]),
    ([3, 3, 1], [[0.0, -0.5], [1.5, 1.0], [-1.0, 0.25]]),
]


def main() -> None:
    strategy, coordinator = make_strategy()
    results = {}

    def make(lib, seed):
        rng = np.random.default_rng(seed)
        with strategy.scope():
            model = tf.Module()
            model.emb = tf.Variable(rng.uniform(-1, 1, (6, 2)).astype(np.float32), name="emb")
            model.kernel = tf.Variable(rng.uniform(-1, 1, (2, 2)).astype(np.float32), name="k")
            opt = lib.Adam(learning_rate=0.1)
        # 48 bytes: two shards; the 16-byte kernel stays one variable.
        assert isinstance(model.emb, tf.__internal__.distribute.ShardedVariable)
        assert len(model.emb.variables) == 2
        assert not isinstance(model.kernel, tf.__internal__.distribute.ShardedVariable)
        variables = list(model.emb.variables) + [model.kernel]

        @tf.function
        def step(ids, target):
            def replica_fn(ids, target):
                with tf.GradientTape() as tape:
                    pred = tf.nn.embedding_lookup(model.emb, ids) @ model.kernel
                    loss = tf.reduce_mean(tf.square(pred - target))
                opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

            strategy.run(replica_fn, (ids, target))

        def train(batches):
            for ids, target in batches:
                coordinator.schedule(step, args=(tf.constant(ids), tf.constant(target)))
                coordinator.join()

        return model, opt, train

    def values(model, opt):
        out = {"iter": opt.iterations.numpy(), "emb": model.emb.numpy(), "k": model.kernel.numpy()}
        for slot in opt.get_slot_names():
            out[f"emb/{slot}"] = opt.get_slot(model.emb, slot).numpy()
            out[f"k/{slot}"] = opt.get_slot(model.kernel, slot).numpy()
        return out

    for lib_name, lib in (("tf_keras", tf_keras_legacy), ("keras_opt", keras_opt)):
        model_a, opt_a, train_a = make(lib, seed=0)
        train_a(BATCHES[:2])
        path = tf.train.Checkpoint(model=model_a, optimizer=opt_a).save(
            os.path.join(sys.argv[2], lib_name, "ckpt")
        )
        train_a(BATCHES[2:])
        model_b, opt_b, train_b = make(lib, seed=1)
        with strategy.scope():
            status = tf.train.Checkpoint(model=model_b, optimizer=opt_b).restore(path)
        train_b(BATCHES[2:])
        try:
            status.assert_consumed()
            consumed = True
        except AssertionError:
            consumed = False
        status.expect_partial()
        want, got = values(model_a, opt_a), values(model_b, opt_b)
        results[lib_name] = {
            "equal": {k: bool(np.array_equal(got.get(k), want[k])) for k in want},
            "same_keys": sorted(got) == sorted(want),
            "consumed": consumed,
            "weights": [w.name for w in opt_b.weights],
            "uninterrupted_weights": [w.name for w in opt_a.weights],
        }
    with open(sys.argv[1], "w") as f:
        json.dump(results, f, indent=1)
    print("done", flush=True)
    sys.stdout.flush()
    os._exit(0)  # the in-process servers never shut down cleanly


if __name__ == "__main__":
    main()
