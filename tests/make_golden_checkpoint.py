"""Writes tests/data/golden_tf_keras_ckpt/: a tiny checkpoint made by tf_keras legacy.

For each optimizer below, tf_keras legacy trains a model of two variables
(``dense``: dense gradients; ``sparse``: IndexedSlices with a repeated index)
for two steps, and one `tf.train.Checkpoint` holding all of them is written.
The script then restores that file into fresh tf_keras objects, reads back
every variable, slot and ``iter``, takes one more step with given gradients and
records the result. All of it goes to ``expected.json``, which
tests/test_checkpoint.py compares keras_opt against after restoring the same
file. Float32 values are stored as JSON numbers that convert back exactly.

Run from the repository root (needs tf_keras); rerun only if the format must change:

    python tests/make_golden_checkpoint.py
"""

from __future__ import annotations

import json
import os
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras.optimizers import legacy  # noqa: E402

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "golden_tf_keras_ckpt")
PREFIX = "ckpt"

OPTIMIZERS = {
    "sgd_momentum": ("SGD", dict(learning_rate=0.1, momentum=0.9)),
    "adam": ("Adam", dict(learning_rate=0.1)),
    "adam_amsgrad": ("Adam", dict(learning_rate=0.1, amsgrad=True)),
    "adamax": ("Adamax", dict(learning_rate=0.1)),
    "nadam": ("Nadam", dict(learning_rate=0.1)),
    "adagrad": ("Adagrad", dict(learning_rate=0.1)),
    "adadelta": ("Adadelta", dict(learning_rate=1.0)),
    "rmsprop": ("RMSprop", dict(learning_rate=0.1, momentum=0.5, centered=True)),
    "ftrl": ("Ftrl", dict(learning_rate=0.1, l1_regularization_strength=0.01)),
}
SHAPES = {"dense": (3, 2), "sparse": (4, 2)}


def gradients(step: int) -> dict:
    """Gradients of one step: a dense array, and (values, indices) with a repeated index."""
    rng = np.random.default_rng(100 + step)
    return {
        "dense": {"values": rng.standard_normal(SHAPES["dense"]).astype(np.float32)},
        "sparse": {
            "values": rng.standard_normal((3, 2)).astype(np.float32),
            "indices": np.array([step % 4, 1, 1], np.int64),
        },
    }


def to_tf(grad: dict, shape):
    values = tf.constant(grad["values"])
    if "indices" not in grad:
        return values
    return tf.IndexedSlices(values, tf.constant(grad["indices"]), tf.constant(shape))


def make_model(seed: int | None) -> tf.Module:
    model = tf.Module()
    rng = np.random.default_rng(seed)
    for name, shape in SHAPES.items():
        value = rng.uniform(-1, 1, shape) if seed is not None else np.zeros(shape)
        setattr(model, name, tf.Variable(value.astype(np.float32), name=name))
    return model


def apply(opt, model, grads: dict) -> None:
    pairs = [(to_tf(grads[n], SHAPES[n]), getattr(model, n)) for n in SHAPES]
    opt.apply_gradients(pairs)


def plain(value) -> list:
    return np.asarray(value, np.float32).astype(np.float64).tolist()


def main() -> None:
    shutil.rmtree(OUT_DIR, ignore_errors=True)
    os.makedirs(OUT_DIR)
    tf_keras.utils.set_random_seed(0)
    parts = {}
    for i, (key, (cls, kwargs)) in enumerate(OPTIMIZERS.items()):
        model, opt = make_model(seed=i), getattr(legacy, cls)(**kwargs)
        for step in range(2):
            apply(opt, model, gradients(step))
        parts[key] = tf.train.Checkpoint(model=model, optimizer=opt)
    path = tf.train.Checkpoint(**parts).save(os.path.join(OUT_DIR, PREFIX))
    prefix = os.path.basename(path)

    # Read the file back with tf_keras, into fresh objects whose slots exist.
    expected = {"prefix": prefix, "written_by": f"tf_keras {tf_keras.__version__}"}
    expected["optimizers"] = {}
    next_grads = gradients(2)
    for key, (cls, kwargs) in OPTIMIZERS.items():
        model, opt = make_model(seed=None), getattr(legacy, cls)(**kwargs)
        variables = [getattr(model, n) for n in SHAPES]
        with tf.name_scope(opt._name):
            opt._create_all_weights(variables)
        root = tf.train.Checkpoint(**{key: tf.train.Checkpoint(model=model, optimizer=opt)})
        # (Each part reads only its own values from the shared file.)
        root.restore(path).assert_existing_objects_matched().expect_partial()
        entry = {
            "class": cls,
            "config": kwargs,
            "get_config": {
                k: (float(v) if isinstance(v, np.floating) else v)
                for k, v in opt.get_config().items()
            },
            "iter": int(opt.iterations.numpy()),
            "variables": {},
        }
        for name, var in zip(SHAPES, variables):
            entry["variables"][name] = {
                "shape": list(SHAPES[name]),
                "value": plain(var.numpy()),
                "slots": {s: plain(opt.get_slot(var, s).numpy()) for s in opt.get_slot_names()},
            }
        entry["next_grads"] = {
            n: {k: v.tolist() if k == "indices" else plain(v) for k, v in g.items()}
            for n, g in next_grads.items()
        }
        apply(opt, model, next_grads)
        entry["after_next_step"] = {n: plain(v.numpy()) for n, v in zip(SHAPES, variables)}
        expected["optimizers"][key] = entry
    with open(os.path.join(OUT_DIR, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1)
        f.write("\n")
    for name in sorted(os.listdir(OUT_DIR)):
        print(name, os.path.getsize(os.path.join(OUT_DIR, name)), "bytes")


if __name__ == "__main__":
    main()
