"""Loads a SavedModel and calls its ``serve`` function without importing keras_opt.

    python tests/workers/serve_without_keras_opt.py MODEL_DIR INPUT.npy OUT.npy

A serving process that never imports keras_opt (so its op library is never
loaded) must load a model saved with a keras_opt optimizer attached, after
that optimizer ran fused steps in a tf.function (tests/test_fused_groups.py).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def main() -> None:
    model_dir, input_path, out_path = sys.argv[1:4]
    loaded = tf.saved_model.load(model_dir)
    out = loaded.serve(tf.constant(np.load(input_path))).numpy()
    assert "keras_opt" not in sys.modules, "keras_opt was imported"
    np.save(out_path, out)
    print("served", out.shape, flush=True)


if __name__ == "__main__":
    main()
