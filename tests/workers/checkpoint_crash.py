"""Training process for the crash test (tests/test_checkpoint.py).

Trains a small model with keras_opt's Adam (amsgrad, a decaying learning-rate
schedule: the step counter matters) for ``--steps`` steps in a `tf.function`,
saving a checkpoint with `tf.train.CheckpointManager` every ``--every`` steps
and printing ``step N`` after each step. If ``--dir`` already holds a
checkpoint, it resumes from the latest one (printing ``resumed at step N``).
At the end it writes every variable, slot and ``iter`` to ``--out`` (.npz).

The batch of step ``i`` depends only on ``i``, so a resumed run sees exactly the
batches an uninterrupted run sees.

    python tests/workers/checkpoint_crash.py --dir D --out F --steps 24 --every 4

With ``--features`` the optimizer also uses Keras 3's base arguments (FEATURES:
gradient accumulation over 3 calls, EMA, weight decay, loss_scale_factor), and
steps count calls (the micro-step counter), so that checkpoints every 4 calls
fall in the middle of an accumulation group. ``--die-after N`` makes the
process SIGKILL itself after step N (a deterministic crash).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import keras_opt  # noqa: E402

VOCAB, DIM = 8, 3
FEATURES = dict(
    gradient_accumulation_steps=3,
    use_ema=True,
    ema_momentum=0.9,
    ema_overwrite_frequency=5,
    weight_decay=0.01,
    loss_scale_factor=4.0,
)


class Model(tf.Module):
    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(0)
        self.emb = tf.Variable(rng.uniform(-1, 1, (VOCAB, DIM)).astype(np.float32), name="emb")
        self.kernel = tf.Variable(rng.uniform(-1, 1, (DIM, 2)).astype(np.float32), name="kernel")
        self.bias = tf.Variable(np.zeros(2, np.float32), name="bias")


def batch(step: int):
    rng = np.random.default_rng(1000 + step)
    ids = rng.integers(0, VOCAB, 5)  # repeated ids: duplicate sparse indices
    target = rng.standard_normal((5, 2)).astype(np.float32)
    return tf.constant(ids), tf.constant(target)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--features", action="store_true")
    parser.add_argument("--die-after", type=int, default=None)
    args = parser.parse_args()

    model = Model()
    schedule = keras_opt.schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.8)
    features = FEATURES if args.features else {}
    opt = keras_opt.Adam(learning_rate=schedule, amsgrad=True, **features)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=opt), args.dir, max_to_keep=3
    )
    variables = [model.emb, model.kernel, model.bias]
    if args.features:
        opt.build(variables)

    def current_step() -> int:
        counter = opt._grad_accum_iter if args.features else opt.iterations
        return int(counter.numpy())

    if manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint)
        print(f"resumed at step {current_step()}", flush=True)

    @tf.function
    def train_step(ids, target):
        with tf.GradientTape() as tape:
            pred = tf.gather(model.emb, ids) @ model.kernel + model.bias
            loss = tf.reduce_mean(tf.square(pred - target))
        opt.apply_gradients(zip(tape.gradient(loss, variables), variables))

    while current_step() < args.steps:
        train_step(*batch(current_step()))
        step = current_step()
        if step % args.every == 0:
            manager.save(checkpoint_number=step)
        print(f"step {step}", flush=True)
        if step == args.die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.05)  # leaves the parent time to kill mid-run

    out = {"iter": opt.iterations.numpy(), "step": current_step()}
    for var in variables:
        name = var.name.split(":")[0]
        out[name] = var.numpy()
        for slot in opt.get_slot_names():
            out[f"{name}/{slot}"] = opt.get_slot(var, slot).numpy()
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
