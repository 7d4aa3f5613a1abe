"""float16 training with and without loss scaling (keras_opt.LossScaleOptimizer).

A linear model computes in float16 (its float32 variables are cast to float16
in the forward pass: the usual mixed-precision recipe) and fits a target of
magnitude ~1e-3 with the mean squared error over a batch of 4096 examples,
computed in float16 too.

The gradient of that loss with respect to each prediction is
``2 * (prediction - target) / 4096``. Once the residuals fall below about
1e-4 this is smaller than half of float16's smallest positive number (2**-24,
about 6e-8): it rounds to exactly zero, the weight gradients built from it are
zero as well, and plain float16 training stalls. ``keras_opt.LossScaleOptimizer``
multiplies the loss by 2**15 before differentiating, so the same gradients are
computed 32768 times larger, far from the underflow, and divides them back
before the update (and halves the scale if a scaled gradient ever overflows).

Run: ``python examples/float16_training.py [--steps N]`` (a few seconds on 2 cores).
It prints, for both runs, the loss before and after training (evaluated in
float32) and the share of gradient entries that were exactly zero.
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_opt  # noqa: E402

BATCH, FEATURES = 4096, 16
TARGET_SCALE = 1e-3
LEARNING_RATE = 0.5


def make_data(seed: int = 0):
    """Inputs uniform in [-1, 1]; targets a fixed linear function of them, ~1e-3."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (BATCH, FEATURES)).astype(np.float32)
    true_w = rng.standard_normal((FEATURES, 1)).astype(np.float32)
    y = x @ true_w * (TARGET_SCALE / np.sqrt(FEATURES))
    return x, y


def train(loss_scaling: bool, steps: int) -> dict:
    """Trains from zero weights; returns losses and the share of zero gradient entries."""
    x, y = make_data()
    x16, y16 = tf.constant(x, tf.float16), tf.constant(y, tf.float16)
    kernel = tf.Variable(tf.zeros((FEATURES, 1)), name="kernel")
    bias = tf.Variable(tf.zeros((1,)), name="bias")
    variables = [kernel, bias]
    optimizer = keras_opt.SGD(learning_rate=LEARNING_RATE, momentum=0.9)
    if loss_scaling:
        optimizer = keras_opt.LossScaleOptimizer(optimizer)

    def predict():
        return tf.matmul(x16, tf.cast(kernel, tf.float16)) + tf.cast(bias, tf.float16)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(predict() - y16))  # float16 throughout
            if loss_scaling:
                loss = optimizer.get_scaled_loss(loss)
        grads = tape.gradient(loss, variables)
        if loss_scaling:
            grads = optimizer.get_unscaled_gradients(grads)
        optimizer.apply_gradients(zip(grads, variables))
        zeros = tf.add_n([tf.reduce_sum(tf.cast(tf.equal(g, 0), tf.int32)) for g in grads])
        return zeros

    def float32_loss() -> float:
        return float(np.mean((predict().numpy().astype(np.float32) - y) ** 2))

    entries = FEATURES + 1
    initial = float32_loss()
    zero_fractions = [int(step()) / entries for _ in range(steps)]
    result = {
        "initial_loss": initial,
        "final_loss": float32_loss(),
        "zero_gradient_fraction": float(np.mean(zero_fractions)),
        "final_zero_gradient_fraction": zero_fractions[-1],
    }
    if loss_scaling:
        result["loss_scale"] = float(optimizer.loss_scale)
    return result


def compare(steps: int = 200) -> dict:
    """Both runs from the same start: ``{"without_scaling": ..., "with_scaling": ...}``."""
    return {
        "without_scaling": train(loss_scaling=False, steps=steps),
        "with_scaling": train(loss_scaling=True, steps=steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    for name, result in compare(args.steps).items():
        scale = f"; loss scale {result['loss_scale']:g}" if "loss_scale" in result else ""
        print(
            f"{name:>15}: loss {result['initial_loss']:.2e} -> {result['final_loss']:.2e} "
            f"in {args.steps} steps; zero gradient entries: "
            f"{100 * result['zero_gradient_fraction']:.0f}% on average, "
            f"{100 * result['final_zero_gradient_fraction']:.0f}% at the last step{scale}"
        )


if __name__ == "__main__":
    main()
