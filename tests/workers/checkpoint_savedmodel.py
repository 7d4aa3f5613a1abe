"""Loads a SavedModel in a fresh process and continues training (tests/test_savedmodel.py).

    python tests/workers/checkpoint_savedmodel.py MODEL_DIR INPUTS.npz OUT.npz

Imports keras_opt (that registers its revived optimizer type), loads the
model, calls its ``train_step`` on each (``ids<i>``, ``target<i>``) pair of
INPUTS.npz, and writes every variable, slot and ``iter`` to OUT.npz, plus the
class name of the revived optimizer under ``restored_type``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import keras_opt  # noqa: E402,F401  (registers the revived optimizer type)


def main() -> None:
    model_dir, inputs_path, out_path = sys.argv[1:4]
    loaded = tf.saved_model.load(model_dir)
    inputs = np.load(inputs_path)
    i = 0
    while f"ids{i}" in inputs:
        loaded.train_step(tf.constant(inputs[f"ids{i}"]), tf.constant(inputs[f"target{i}"]))
        i += 1
    opt = loaded.opt
    out = {"iter": opt.iterations.numpy(), "restored_type": type(opt).__name__}
    for var in (loaded.emb, loaded.kernel):
        name = var.name.split(":")[0]
        out[name] = var.numpy()
        for slot in opt.get_slot_names():
            out[f"{name}/{slot}"] = opt.get_slot(var, slot).numpy()
    np.savez(out_path, **out)
    print(f"continued {i} steps", flush=True)


if __name__ == "__main__":
    main()
