"""Train with keras_opt under tf.distribute.MirroredStrategy.

    python examples/mirrored_strategy.py [--replicas 2] [--steps 20]

Without GPUs the CPU is split into ``--replicas`` logical devices (which has to
happen before TensorFlow initializes, so it is the first thing done). A small
model (an embedding with sparse ``IndexedSlices`` gradients and a dense head)
trains in a custom loop: each replica computes the gradient of its share of
the global batch, with the loss divided by the *global* batch size, and
``apply_gradients`` sums the replicas' gradients (an all-reduce) before one
update of the mirrored variables. The same steps on one device, with the whole
global batch, give the same numbers up to float32 rounding: the script trains
both and prints the largest difference. It also saves a checkpoint under the
strategy and restores it without one.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import tensorflow as tf

VOCAB, DIM, IDS = 50, 8, 4


def make_devices(replicas: int) -> list[str]:
    gpus = tf.config.list_physical_devices("GPU")
    if len(gpus) >= replicas:
        return [f"/gpu:{i}" for i in range(replicas)]
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * replicas
    )
    return [f"/cpu:{i}" for i in range(replicas)]


def make_data(steps: int, batch: int):
    """Batches of ids, with targets from a hidden embedding the model can learn."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, VOCAB, (steps, batch, IDS)).astype(np.int32)
    hidden_truth = rng.normal(size=(VOCAB, 1)).astype(np.float32)
    targets = hidden_truth[ids].mean(axis=2)
    return ids, targets


def make_model():
    rng = np.random.default_rng(1)
    return {
        "embedding": tf.Variable(rng.normal(0, 0.3, (VOCAB, DIM)).astype(np.float32)),
        "kernel": tf.Variable(rng.normal(0, 0.3, (DIM, 1)).astype(np.float32)),
        "bias": tf.Variable(np.zeros(1, np.float32)),
    }


def train(strategy, ids, targets, global_batch: int, keras_opt):
    with strategy.scope():
        model = make_model()
        optimizer = keras_opt.Adam(learning_rate=0.05)
    var_list = list(model.values())

    def replica_step(step_ids, step_targets):
        with tf.GradientTape() as tape:
            hidden = tf.reduce_mean(tf.nn.embedding_lookup(model["embedding"], step_ids), 1)
            pred = hidden @ model["kernel"] + model["bias"]
            per_example = tf.reduce_sum(tf.square(pred - step_targets), axis=1)
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=global_batch)
        grads = tape.gradient(loss, var_list)  # the embedding's is an IndexedSlices
        optimizer.apply_gradients(zip(grads, var_list))  # sums across replicas
        return loss

    @tf.function
    def step(batch):
        losses = strategy.run(replica_step, args=batch)
        return strategy.reduce(tf.distribute.ReduceOp.SUM, losses, axis=None)

    replicas = strategy.num_replicas_in_sync
    per_replica = global_batch // replicas
    for s in range(len(ids)):

        def value_fn(ctx, s=s):
            r = ctx.replica_id_in_sync_group
            rows = slice(r * per_replica, (r + 1) * per_replica)
            return tf.constant(ids[s, rows]), tf.constant(targets[s, rows])

        loss = step(strategy.experimental_distribute_values_from_function(value_fn))
        if s % 10 == 0 or s == len(ids) - 1:
            print(f"  step {s:3d}  loss {float(loss):.5f}")
    return model, optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--global-batch", type=int, default=16)
    args = parser.parse_args()
    if args.global_batch % args.replicas:
        parser.error("--global-batch must be a multiple of --replicas")
    devices = make_devices(args.replicas)  # before anything initializes TensorFlow

    import keras_opt

    ids, targets = make_data(args.steps, args.global_batch)
    strategy = tf.distribute.MirroredStrategy(devices)
    print(f"MirroredStrategy over {devices}")
    model, optimizer = train(strategy, ids, targets, args.global_batch, keras_opt)
    slot = optimizer.get_slot(model["embedding"], "m")
    print(
        f"iterations: {int(optimizer.iterations.numpy())} ({type(optimizer.iterations).__name__})"
    )
    print(f"slot 'm' of the embedding: {type(slot).__name__} on {[v.device for v in slot.values]}")

    print("The same steps on one device, whole global batch:")
    one_model, _ = train(tf.distribute.get_strategy(), ids, targets, args.global_batch, keras_opt)
    diff = max(np.max(np.abs(model[k].numpy() - one_model[k].numpy())) for k in model)
    print(f"largest difference to one-device training: {diff:.2e}")

    directory = tempfile.mkdtemp()
    path = tf.train.Checkpoint(optimizer=optimizer, **model).save(os.path.join(directory, "ckpt"))
    restored_model = {k: tf.Variable(tf.zeros_like(v)) for k, v in model.items()}
    restored_optimizer = keras_opt.Adam(learning_rate=0.05)
    tf.train.Checkpoint(optimizer=restored_optimizer, **restored_model).restore(path)
    restored_optimizer.build(list(restored_model.values()))  # slots take the saved values
    same = np.array_equal(
        restored_optimizer.get_slot(restored_model["embedding"], "m").numpy(), slot.numpy()
    )
    print(f"checkpoint restored without a strategy; slot values equal: {same}")


if __name__ == "__main__":
    main()
