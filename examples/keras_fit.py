"""keras_opt optimizers in Keras 3 ``compile``/``fit``/``save`` (keras_opt.keras).

Trains a small model (an ``Embedding``, whose gradient Keras hands over as
``tf.IndexedSlices``, and ``Dense`` layers) with ``keras_opt.keras.Adam`` in
``model.fit``, saves it as ``.keras`` after the first epoch, loads it back and
trains a second epoch, then checks that the result equals two uninterrupted
epochs and a custom ``tf.GradientTape`` loop with ``keras_opt.Adam``, bit for bit.

Run: ``python examples/keras_fit.py`` (a few seconds).
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_opt  # noqa: E402
import keras_opt.keras  # noqa: E402  (registers keras_opt>Adam, ... with Keras)

rng = np.random.default_rng(0)
ids = rng.integers(0, 50, (256, 4)).astype("int32")
target = rng.normal(size=(256, 1)).astype("float32")


def build_model() -> keras.Model:
    keras.utils.set_random_seed(1)
    inputs = keras.Input((4,), dtype="int32")
    x = keras.layers.Flatten()(keras.layers.Embedding(50, 8)(inputs))
    x = keras.layers.Dense(16, activation="tanh")(x)
    return keras.Model(inputs, keras.layers.Dense(1)(x))


def fit(model: keras.Model, **kwargs) -> None:
    model.fit(ids, target, batch_size=32, shuffle=False, verbose=0, **kwargs)


# 1. compile/fit with a keras_opt optimizer, save after one epoch, resume after loading.
model = build_model()
model.compile(optimizer=keras_opt.keras.Adam(learning_rate=0.01), loss="mse")
fit(model, epochs=1)
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.keras")
    model.save(path)
    resumed = keras.models.load_model(path)
fit(resumed, epochs=2, initial_epoch=1)
print(
    "optimizer after load_model:",
    type(resumed.optimizer).__module__,
    type(resumed.optimizer).__name__,
)

# 2. two uninterrupted epochs, with wrap() of an existing keras_opt optimizer.
uninterrupted = build_model()
uninterrupted.compile(
    optimizer=keras_opt.keras.wrap(keras_opt.Adam(learning_rate=0.01)), loss="mse"
)
fit(uninterrupted, epochs=2)

# 3. the custom loop that fit must equal.
loop_model = build_model()
opt = keras_opt.Adam(learning_rate=0.01)
mse = keras.losses.MeanSquaredError()


@tf.function
def step(x, y):
    with tf.GradientTape() as tape:
        loss = mse(y, loop_model(x, training=True))
    grads = tape.gradient(loss, loop_model.trainable_variables)
    opt.apply_gradients(zip(grads, loop_model.trainable_variables))


for _ in range(2):
    for i in range(0, len(ids), 32):
        step(tf.constant(ids[i : i + 32]), tf.constant(target[i : i + 32]))


def max_diff(a: keras.Model, b: keras.Model) -> float:
    return max(float(np.max(np.abs(x - y))) for x, y in zip(a.get_weights(), b.get_weights()))


print(
    f"saved + loaded + resumed vs uninterrupted fit: max |dw| = {max_diff(resumed, uninterrupted)}"
)
loop_diff = max_diff(uninterrupted, loop_model)
print(f"fit vs custom GradientTape loop:               max |dw| = {loop_diff}")
print(f"optimizer steps: {int(resumed.optimizer.iterations.numpy())}")
