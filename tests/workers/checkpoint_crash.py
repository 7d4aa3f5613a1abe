"""Training process for the crash test (tests/test_checkpoint.py).

Trains a small model with keras_opt's Adam (amsgrad, a decaying learning-rate
schedule: the step counter matters), or with ``--modern`` one model per
configuration of ``cases.MODERN_CASES`` (all in one step and one checkpoint),
for ``--steps`` steps in a `tf.function`,
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
from keras_opt.optimizer_v2.variables import var_key  # noqa: E402

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


def make_optimizers(modern: bool, features: bool) -> list:
    """Adam (amsgrad, a schedule; FEATURES with ``features``), or every cases.MODERN_CASES one."""
    if not modern:
        schedule = keras_opt.schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.8)
        extra = FEATURES if features else {}
        return [keras_opt.Adam(learning_rate=schedule, amsgrad=True, **extra)]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from cases import MODERN_CASES

    return [getattr(keras_opt, name)(**kwargs) for name, kwargs in MODERN_CASES]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--every", type=int, required=True)
    parser.add_argument("--features", action="store_true")
    parser.add_argument("--die-after", type=int, default=None)
    parser.add_argument(
        "--modern", action="store_true", help="train one model per cases.MODERN_CASES optimizer"
    )
    args = parser.parse_args()
    if args.features and args.modern:
        parser.error("--features and --modern do not combine")

    optimizers = make_optimizers(args.modern, args.features)
    models = [Model() for _ in optimizers]
    if len(optimizers) == 1:
        objects = dict(model=models[0], optimizer=optimizers[0])
    else:
        objects = {f"{kind}{i}": obj for i, pair in enumerate(zip(models, optimizers))
                   for kind, obj in zip(("model", "optimizer"), pair)}  # fmt: skip
    opt = optimizers[0]  # all optimizers step together: its count is the step
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(**objects), args.dir, max_to_keep=3)
    if args.features:
        opt.build([models[0].emb, models[0].kernel, models[0].bias])

    def current_step() -> int:
        counter = opt._grad_accum_iter if args.features else opt.iterations
        return int(counter.numpy())

    if manager.latest_checkpoint:
        manager.checkpoint.restore(manager.latest_checkpoint)
        print(f"resumed at step {current_step()}", flush=True)

    @tf.function
    def train_step(ids, target):
        for model, optimizer in zip(models, optimizers):
            variables = [model.emb, model.kernel, model.bias]
            with tf.GradientTape() as tape:
                pred = tf.gather(model.emb, ids) @ model.kernel + model.bias
                loss = tf.reduce_mean(tf.square(pred - target))
            optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))

    while current_step() < args.steps:
        train_step(*batch(current_step()))
        step = current_step()
        if step % args.every == 0:
            manager.save(checkpoint_number=step)
        print(f"step {step}", flush=True)
        if step == args.die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.05)  # leaves the parent time to kill mid-run

    out = {}
    for i, (model, optimizer) in enumerate(zip(models, optimizers)):
        prefix = f"{i}:" if len(optimizers) > 1 else ""
        out[prefix + "iter"] = optimizer.iterations.numpy()
        for var in (model.emb, model.kernel, model.bias):
            name = prefix + var.name.split(":")[0]
            out[name] = var.numpy()
            for slot in optimizer.get_slot_names():
                if slot in optimizer._slots.get(var_key(var), {}):  # Muon: some only
                    out[f"{name}/{slot}"] = optimizer.get_slot(var, slot).numpy()
    if len(optimizers) == 1:
        out["step"] = current_step()
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
