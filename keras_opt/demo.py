"""The project's main job: train a small model with each keras_opt optimizer vs tf_keras legacy.

Run as ``python -m keras_opt``. A tiny classifier is trained in a custom
``tf.GradientTape`` loop (the step is a ``tf.function``) on a synthetic,
deterministic data set: two interleaved spirals (2 continuous features) plus a
bag of token ids per sample whose distribution depends on the class. The token
ids go through an embedding table read with ``tf.gather``, so its gradient is a
sparse ``tf.IndexedSlices`` (with duplicate indices) and the optimizers' sparse
update paths run alongside their dense ones.

The model is written with plain ``tf.Variable`` objects initialised from fixed
numpy arrays, so each optimizer's keras_opt run and the run of its
``tf_keras.optimizers.legacy`` twin start from bit-identical weights and see the
same batches in the same order. The job prints, per optimizer, the full-data
loss after training for both, the largest absolute difference between the two
sets of trained weights, and the median step time of each.

Then the same model, as a Keras 3 ``keras.Model``, is trained with
``model.fit`` through ``keras_opt.keras`` and compared with the custom loop
(keras_opt/demo_fit.py).

Options: ``--steps N``, ``--optimizers adam,sgd,...``, ``--no-fit`` (skip the
``model.fit`` part) and ``--no-compare`` (keras_opt only; tf_keras is then
never imported). When tf_keras is not
installed the job says so and runs without the comparison.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

import keras_opt

# Data set and model sizes.
NUM_SAMPLES = 2048
NUM_CLASSES = 2
VOCAB_SIZE = 64
BAG_SIZE = 8
EMBED_DIM = 8
HIDDEN = (32, 32)
BATCH_SIZE = 128
DATA_SEED = 1234
INIT_SEED = 0
BATCH_SEED = 42

# Optimizer class name -> constructor keyword arguments (chosen so the loss clearly
# decreases in a couple of hundred steps and several code paths are exercised).
OPTIMIZERS: dict[str, dict[str, Any]] = {
    "SGD": {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True},
    "Adam": {"learning_rate": 0.01},
    "Adamax": {"learning_rate": 0.02},
    "Nadam": {"learning_rate": 0.01},
    "Adagrad": {"learning_rate": 0.1},
    "Adadelta": {"learning_rate": 1.0},
    "RMSprop": {"learning_rate": 0.003, "momentum": 0.5, "centered": True},
    "Ftrl": {"learning_rate": 0.5, "l1_regularization_strength": 1e-4},
}

Batch = tuple[tf.Tensor, tf.Tensor, tf.Tensor]


@dataclasses.dataclass
class RunResult:
    """The outcome of training one model with one optimizer."""

    final_loss: float
    weights: list[np.ndarray]
    step_ms: list[float]

    @property
    def median_ms(self) -> float:
        """Median step time in milliseconds, excluding the first (tracing) step."""
        times = self.step_ms[1:] or self.step_ms
        return statistics.median(times)


def make_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two-spirals features, class-dependent token bags and labels, from a fixed seed."""
    rng = np.random.default_rng(DATA_SEED)
    labels = rng.integers(0, NUM_CLASSES, NUM_SAMPLES)
    turns = 1.5
    angle = np.sqrt(rng.uniform(0.0, 1.0, NUM_SAMPLES)) * turns * 2.0 * np.pi
    radius = angle / (turns * 2.0 * np.pi)
    phase = labels * np.pi
    feats = np.stack([radius * np.cos(angle + phase), radius * np.sin(angle + phase)], axis=1)
    feats += rng.normal(0.0, 0.04, feats.shape)
    # Each token comes from a class-specific block of 16 ids with probability 0.3,
    # otherwise uniformly from the whole vocabulary (ids >= 32 carry no signal).
    block = 16
    informative = rng.uniform(0.0, 1.0, (NUM_SAMPLES, BAG_SIZE)) < 0.3
    class_tokens = labels[:, None] * block + rng.integers(0, block, (NUM_SAMPLES, BAG_SIZE))
    noise_tokens = rng.integers(0, VOCAB_SIZE, (NUM_SAMPLES, BAG_SIZE))
    tokens = np.where(informative, class_tokens, noise_tokens)
    return feats.astype(np.float32), tokens.astype(np.int32), labels.astype(np.int32)


def initial_weights() -> list[np.ndarray]:
    """Glorot-uniform kernels, zero biases, small uniform embedding, from a fixed seed."""
    rng = np.random.default_rng(INIT_SEED)
    weights = [rng.uniform(-0.05, 0.05, (VOCAB_SIZE, EMBED_DIM))]
    sizes = (2 + EMBED_DIM, *HIDDEN, NUM_CLASSES)
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        weights.append(rng.uniform(-limit, limit, (fan_in, fan_out)))
        weights.append(np.zeros(fan_out))
    return [w.astype(np.float32) for w in weights]


def make_variables(init: Sequence[np.ndarray]) -> list[tf.Variable]:
    """Fresh ``tf.Variable`` objects holding copies of ``init``."""
    names = ["embedding"] + [
        f"{kind}_{i}" for i in range(len(HIDDEN) + 1) for kind in ("kernel", "bias")
    ]
    return [tf.Variable(w, name=n) for w, n in zip(init, names)]


def forward(variables: Sequence[tf.Variable], feats: tf.Tensor, tokens: tf.Tensor) -> tf.Tensor:
    """Logits: mean token embedding (via ``tf.gather``) ++ features -> tanh MLP."""
    embedded = tf.reduce_mean(tf.gather(variables[0], tokens), axis=1)
    hidden = tf.concat([feats, embedded], axis=1)
    dense = variables[1:]
    for i in range(0, len(dense), 2):
        hidden = tf.matmul(hidden, dense[i]) + dense[i + 1]
        if i + 2 < len(dense):
            hidden = tf.tanh(hidden)
    return hidden


def loss_fn(
    variables: Sequence[tf.Variable], feats: tf.Tensor, tokens: tf.Tensor, labels: tf.Tensor
) -> tf.Tensor:
    """Mean softmax cross-entropy."""
    logits = forward(variables, feats, tokens)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    )


def make_batches(
    feats: np.ndarray, tokens: np.ndarray, labels: np.ndarray, steps: int
) -> list[Batch]:
    """``steps`` mini-batches, one shuffled epoch after another, as ready-made tensors."""
    rng = np.random.default_rng(BATCH_SEED)
    order: list[np.ndarray] = []
    while len(order) < steps:
        perm = rng.permutation(NUM_SAMPLES)
        order.extend(
            perm[i : i + BATCH_SIZE] for i in range(0, NUM_SAMPLES - BATCH_SIZE + 1, BATCH_SIZE)
        )
    return [
        (tf.constant(feats[idx]), tf.constant(tokens[idx]), tf.constant(labels[idx]))
        for idx in order[:steps]
    ]


def make_train_step(
    variables: list[tf.Variable], optimizer: Any
) -> Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]:
    """A ``tf.function`` doing one GradientTape step with ``optimizer.apply_gradients``."""

    @tf.function
    def train_step(feats: tf.Tensor, tokens: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
        with tf.GradientTape() as tape:
            loss = loss_fn(variables, feats, tokens, labels)
        grads = tape.gradient(loss, variables)
        optimizer.apply_gradients(zip(grads, variables))
        return loss

    return train_step


def train(
    optimizer: Any, init: Sequence[np.ndarray], batches: Sequence[Batch], full: Batch
) -> RunResult:
    """Train fresh variables from ``init`` on ``batches``; return loss, weights, timings."""
    variables = make_variables(init)
    step = make_train_step(variables, optimizer)
    step_ms = []
    for feats, tokens, labels in batches:
        start = time.perf_counter()
        step(feats, tokens, labels)
        step_ms.append((time.perf_counter() - start) * 1e3)
    final_loss = float(loss_fn(variables, *full))
    return RunResult(final_loss, [v.numpy() for v in variables], step_ms)


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest elementwise ``|a - b|`` over all arrays (``inf`` on shape mismatch)."""
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        return float("inf")
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for x, y in zip(a, b))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        prog="python -m keras_opt",
        description=(
            "Train a small two-spirals + bag-of-tokens classifier with each keras_opt "
            "optimizer and compare with its tf_keras.optimizers.legacy twin."
        ),
    )
    parser.add_argument("--steps", type=int, default=200, help="training steps (default 200)")
    parser.add_argument(
        "--optimizers",
        default=",".join(name.lower() for name in OPTIMIZERS),
        help="comma-separated optimizer names (default: all eight)",
    )
    parser.add_argument(
        "--no-fit",
        action="store_true",
        help="skip the Keras 3 model.fit part (keras_opt.keras vs the custom loop)",
    )
    parser.add_argument(
        "--no-compare",
        action="store_true",
        help="train with keras_opt only; tf_keras is not imported",
    )
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    by_lower = {name.lower(): name for name in OPTIMIZERS}
    chosen = []
    for raw in args.optimizers.split(","):
        key = raw.strip().lower()
        if not key:
            continue
        if key not in by_lower:
            parser.error(f"unknown optimizer {raw.strip()!r}; choose from {', '.join(by_lower)}")
        if by_lower[key] not in chosen:
            chosen.append(by_lower[key])
    if not chosen:
        parser.error("--optimizers names no optimizer")
    args.optimizers = chosen
    return args


def load_tf_keras_legacy() -> Any | None:
    """``tf_keras.optimizers.legacy``, or ``None`` when tf_keras is not installed."""
    try:
        return importlib.import_module("tf_keras.optimizers.legacy")
    except ImportError:
        return None


def _fmt_diff(diff: float) -> str:
    return "0" if diff == 0.0 else f"{diff:.3g}"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the job; returns the process exit code."""
    args = parse_args(argv)
    legacy = None
    if not args.no_compare:
        legacy = load_tf_keras_legacy()
        if legacy is None:
            print("note: tf_keras is not installed; running keras_opt without comparison.\n")
    compare = legacy is not None

    feats, tokens, labels = make_data()
    full: Batch = (tf.constant(feats), tf.constant(tokens), tf.constant(labels))
    batches = make_batches(feats, tokens, labels, args.steps)
    init = initial_weights()

    probe_vars = make_variables(init)
    initial_loss = float(loss_fn(probe_vars, *full))
    with tf.GradientTape() as tape:
        probe_loss = loss_fn(probe_vars, *batches[0])
    grad_kind = type(tape.gradient(probe_loss, probe_vars[0])).__name__

    num_weights = sum(w.size for w in init)
    print(
        f"keras_opt {keras_opt.__version__} demo (TensorFlow {tf.__version__}): "
        f"two spirals + bag of {BAG_SIZE} token ids, {NUM_SAMPLES} samples, "
        f"{NUM_CLASSES} classes"
    )
    print(
        f"model: embedding {VOCAB_SIZE}x{EMBED_DIM} read with tf.gather (gradient: {grad_kind}) "
        f"-> mean, concat features -> dense {'-'.join(map(str, HIDDEN))} tanh -> "
        f"{NUM_CLASSES} logits; {num_weights} weights in {len(init)} tf.Variables"
    )
    print(f"training: {args.steps} steps of batch {BATCH_SIZE}, GradientTape step in a tf.function")
    if compare:
        print(
            "each row trains the same initial weights on the same batches with keras_opt.X and "
            "with tf_keras.optimizers.legacy.X;\nlosses are full-data cross-entropy after "
            "training, max |dw| is the largest |keras_opt - tf_keras| over all trained "
            "weights,\nstep times are medians over steps 2..N (step 1 traces the tf.function)."
        )
    else:
        print(
            "each row trains the same initial weights with keras_opt.X; losses are full-data "
            "cross-entropy after training,\nstep times are medians over steps 2..N "
            "(step 1 traces the tf.function)."
        )
    print(f"initial loss (full data): {initial_loss:.6f}\n")

    headers = [
        "optimizer",
        "loss keras_opt",
        "loss tf_keras",
        "max |dw|",
        "ms/step keras_opt",
        "ms/step tf_keras",
    ]
    widths = [max(len(h), 10) for h in headers]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("-+-".join("-" * w for w in widths))

    diffs: dict[str, float] = {}
    failed: list[str] = []
    for name in args.optimizers:
        kwargs = OPTIMIZERS[name]
        ours = train(getattr(keras_opt, name)(**kwargs), init, batches, full)
        cells = [name, f"{ours.final_loss:.6f}", "-", "-", f"{ours.median_ms:.2f}", "-"]
        if compare:
            theirs = train(getattr(legacy, name)(**kwargs), init, batches, full)
            diffs[name] = max_abs_diff(ours.weights, theirs.weights)
            cells[2] = f"{theirs.final_loss:.6f}"
            cells[3] = _fmt_diff(diffs[name])
            cells[5] = f"{theirs.median_ms:.2f}"
        if not np.isfinite(ours.final_loss) or ours.final_loss >= initial_loss:
            failed.append(name)
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths)), flush=True)

    print("\nhyperparameters:")
    for name in args.optimizers:
        kwargs = ", ".join(f"{k}={v}" for k, v in OPTIMIZERS[name].items())
        print(f"  {name}({kwargs})")
    print()

    if not args.no_fit:
        from keras_opt import demo_fit

        demo_fit.run(args.optimizers, OPTIMIZERS, init, batches, full, forward)

    if failed:
        print(f"warning: loss did not decrease for: {', '.join(failed)}")
    count = len(args.optimizers)
    noun = "optimizer" if count == 1 else "optimizers"
    if not compare:
        print(f"trained {count} keras_opt {noun} (no tf_keras comparison)")
    elif all(d == 0.0 for d in diffs.values()):
        every = "all " if count > 1 else ""
        print(f"{every}{count} {noun} match tf_keras legacy bit-for-bit")
    else:
        worst = max(diffs, key=lambda n: diffs[n])
        exact = [n for n, d in diffs.items() if d == 0.0]
        print(
            f"largest difference from tf_keras legacy: max |dw| = {diffs[worst]:.3g} ({worst}); "
            f"bit-for-bit: {', '.join(exact) if exact else 'none'} ({len(exact)}/{count})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
