"""The main job's Keras 3 part: the demo model trained with ``model.fit`` via keras_opt.keras.

The demo's model (see keras_opt/demo.py) becomes a ``keras.Model`` whose
weights start from the same arrays; it is compiled with
``keras_opt.keras.X(...)`` and trained by ``model.fit`` on the demo's batches,
and, from the same start, by a custom ``tf.function`` GradientTape loop with
``keras_opt.X(...)``. The job prints both losses and the largest difference
between the two sets of trained weights (0: ``fit`` runs exactly keras_opt's
update).
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import tensorflow as tf


def _build(keras: Any, init: Sequence[np.ndarray], forward):
    class DemoModel(keras.Model):
        """The demo's embedding + MLP as a Keras 3 model (weights from ``init``)."""

        def __init__(self):
            super().__init__()
            self.ws = []
            for i, value in enumerate(init):
                weight = self.add_weight(shape=value.shape, initializer="zeros", name=f"w{i}")
                weight.assign(value)
                self.ws.append(weight)

        def call(self, inputs):
            feats, tokens = inputs
            return forward(self.ws, feats, tokens)

    return DemoModel()


def run(names, kwargs_of, init, batches, full, forward) -> dict[str, float] | None:
    """Trains each optimizer with ``fit`` and with a custom loop; prints a table.

    Returns the largest weight difference per optimizer, or None when Keras 3
    is not available.
    """
    try:
        import keras

        import keras_opt
        import keras_opt.keras as ko_keras
    except ImportError as e:
        print(f"note: skipping the model.fit part: {e}\n")
        return None

    feats = np.stack([b[0].numpy() for b in batches])
    tokens = np.stack([b[1].numpy() for b in batches])
    labels = np.stack([b[2].numpy() for b in batches])
    dataset = tf.data.Dataset.from_tensor_slices(((feats, tokens), labels))
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    print(
        "model.fit (Keras 3): the same model as a keras.Model, compiled with "
        "keras_opt.keras.X and trained by fit on the same batches,\nvs a custom tf.function "
        "GradientTape loop with keras_opt.X from the same start; max |dw| compares the two."
    )
    headers = ["optimizer", "loss fit", "loss custom loop", "max |dw|", "fit s"]
    widths = [max(len(h), 10) for h in headers]
    print(" | ".join(h.ljust(w) for h, w in zip(headers, widths)))
    print("-+-".join("-" * w for w in widths))
    diffs = {}
    for name in names:
        model = _build(keras, init, forward)
        model.compile(optimizer=getattr(ko_keras, name)(**kwargs_of[name]), loss=loss)
        start = time.perf_counter()
        model.fit(dataset, epochs=1, verbose=0, shuffle=False)
        fit_s = time.perf_counter() - start

        ref = _build(keras, init, forward)
        opt = getattr(keras_opt, name)(**kwargs_of[name])

        @tf.function
        def step(x, y, ref=ref, opt=opt):
            with tf.GradientTape() as tape:
                value = loss(y, ref(x, training=True))
            grads = tape.gradient(value, ref.trainable_variables)
            opt.apply_gradients(zip(grads, ref.trainable_variables))

        for x, y in dataset:
            step(x, y)
        fit_loss = float(loss(full[2], model((full[0], full[1]))))
        loop_loss = float(loss(full[2], ref((full[0], full[1]))))
        diffs[name] = max(
            float(np.max(np.abs(a.numpy().astype(np.float64) - b.numpy())))
            for a, b in zip(model.trainable_variables, ref.trainable_variables)
        )
        cells = [
            name,
            f"{fit_loss:.6f}",
            f"{loop_loss:.6f}",
            "0" if diffs[name] == 0.0 else f"{diffs[name]:.3g}",
            f"{fit_s:.2f}",
        ]
        print(" | ".join(c.ljust(w) for c, w in zip(cells, widths)), flush=True)
    same = [n for n, d in diffs.items() if d == 0.0]
    print(
        f"\nmodel.fit equals the custom loop bit-for-bit for {len(same)}/{len(diffs)} optimizers\n"
    )
    return diffs
