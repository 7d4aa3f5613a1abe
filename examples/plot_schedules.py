"""Draws the built-in learning-rate schedules of keras_opt.schedules into one PNG.

Usage::

    python examples/plot_schedules.py /tmp/schedules.png   # a file
    python examples/plot_schedules.py /tmp/                # a folder: /tmp/schedules.png
    python examples/plot_schedules.py                      # ./schedules.png

matplotlib is needed only here, not by keras_opt: ``pip install matplotlib``.
"""

from __future__ import annotations

import argparse
import os
import sys


def _import_pyplot():
    try:
        import matplotlib
    except ImportError:
        sys.exit(
            "plot_schedules.py needs matplotlib, which keras_opt does not install. "
            "Install it with `pip install matplotlib` and run the script again."
        )
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    return plt


def _import_schedules():
    try:
        from keras_opt import schedules
    except ImportError:  # run from a checkout: the repository root is the parent folder
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        from keras_opt import schedules
    return schedules


def panels(schedules, steps: int) -> list[tuple[str, list[tuple[str, object]]]]:
    """(title, [(label, schedule), ...]) for each panel of the figure."""
    period = steps // 4
    return [
        (
            "ExponentialDecay",
            [
                ("decay_rate=0.5", schedules.ExponentialDecay(1.0, period, 0.5)),
                ("staircase", schedules.ExponentialDecay(1.0, period, 0.5, staircase=True)),
            ],
        ),
        (
            "PiecewiseConstantDecay",
            [
                (
                    f"boundaries={[period, 2 * period, 3 * period]}",
                    schedules.PiecewiseConstantDecay(
                        [period, 2 * period, 3 * period], [1.0, 0.5, 0.2, 0.05]
                    ),
                )
            ],
        ),
        (
            "PolynomialDecay",
            [
                ("power=1", schedules.PolynomialDecay(1.0, 2 * period, 0.05)),
                ("power=2", schedules.PolynomialDecay(1.0, 2 * period, 0.05, power=2.0)),
                ("power=2, cycle", schedules.PolynomialDecay(1.0, period, 0.05, 2.0, cycle=True)),
            ],
        ),
        (
            "InverseTimeDecay",
            [
                ("decay_rate=1", schedules.InverseTimeDecay(1.0, period, 1.0)),
                ("staircase", schedules.InverseTimeDecay(1.0, period, 1.0, staircase=True)),
            ],
        ),
        (
            "CosineDecay",
            [
                ("alpha=0", schedules.CosineDecay(1.0, 3 * period)),
                ("alpha=0.2", schedules.CosineDecay(1.0, 3 * period, alpha=0.2)),
                (
                    "warmup 0 -> 1",
                    schedules.CosineDecay(
                        0.0, 3 * period, warmup_target=1.0, warmup_steps=period // 2
                    ),
                ),
            ],
        ),
        (
            "CosineDecayRestarts",
            [
                ("t_mul=2", schedules.CosineDecayRestarts(1.0, period // 2)),
                (
                    "t_mul=1, m_mul=0.7",
                    schedules.CosineDecayRestarts(1.0, period // 2, t_mul=1.0, m_mul=0.7),
                ),
            ],
        ),
    ]


def evaluate(schedule_list: list, steps: int) -> list:
    """Each schedule at steps 0 .. steps - 1, as numpy arrays (one graph for all)."""
    import tensorflow as tf

    @tf.function(autograph=False)
    def curves(step):
        return [tf.map_fn(s, step, fn_output_signature=tf.float32) for s in schedule_list]

    return [c.numpy() for c in curves(tf.range(steps, dtype=tf.int64))]


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "output",
        nargs="?",
        default="schedules.png",
        help="PNG file to write, or a folder to write schedules.png into",
    )
    parser.add_argument("--steps", type=int, default=400, help="steps to draw (default 400)")
    args = parser.parse_args(argv)
    if args.steps < 8:
        parser.error(f"--steps must be at least 8, got {args.steps}")
    output = args.output
    if os.path.isdir(output) or output.endswith(os.sep):
        output = os.path.join(output, "schedules.png")

    plt = _import_pyplot()
    schedules = _import_schedules()

    layout = panels(schedules, args.steps)
    values = iter(evaluate([s for _, curves in layout for _, s in curves], args.steps))
    figure, axes = plt.subplots(2, 3, figsize=(13, 7), sharex=True)
    for axis, (title, curves) in zip(axes.flat, layout):
        for label, _ in curves:
            axis.plot(next(values), label=label)
        axis.set_title(title)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    for axis in axes[-1]:
        axis.set_xlabel("step")
    for axis in axes[:, 0]:
        axis.set_ylabel("learning rate")
    figure.suptitle("keras_opt.schedules (peak learning rate 1.0)")
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    figure.savefig(output, dpi=100)
    plt.close(figure)
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
