"""keras_opt optimizers in tf_keras (Keras 2) ``compile``/``fit``/``save`` (keras_opt.tf_keras).

Trains a small tf_keras model (``Embedding`` + ``Dense``) with
``keras_opt.tf_keras.Adam`` and with ``tf_keras.optimizers.legacy.Adam`` from
the same start, saves the keras_opt one as ``.h5`` after the first epoch, loads
it and trains a second epoch, and prints the largest weight difference from
two uninterrupted epochs of tf_keras legacy Adam (0: bit for bit).

Run: ``python examples/tf_keras_fit.py`` (a few seconds).
"""

from __future__ import annotations

import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tf_keras  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_opt  # noqa: E402
import keras_opt.tf_keras  # noqa: E402  (registers keras_opt>Adam, ... with tf_keras)

rng = np.random.default_rng(0)
ids = rng.integers(0, 50, (256, 4)).astype("int32")
target = rng.normal(size=(256, 1)).astype("float32")


def build_model() -> tf_keras.Model:
    tf_keras.utils.set_random_seed(1)
    inputs = tf_keras.Input((4,), dtype="int32")
    x = tf_keras.layers.Flatten()(tf_keras.layers.Embedding(50, 8)(inputs))
    x = tf_keras.layers.Dense(16, activation="tanh")(x)
    return tf_keras.Model(inputs, tf_keras.layers.Dense(1)(x))


def fit(model: tf_keras.Model, **kwargs) -> None:
    model.fit(ids, target, batch_size=32, shuffle=False, verbose=0, **kwargs)


model = build_model()
model.compile(optimizer=keras_opt.tf_keras.Adam(learning_rate=0.01), loss="mse")
fit(model, epochs=1)
with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.h5")
    model.save(path)
    resumed = tf_keras.models.load_model(path)
fit(resumed, epochs=2, initial_epoch=1)
print(
    "optimizer after load_model:",
    type(resumed.optimizer).__module__,
    type(resumed.optimizer).__name__,
)

reference = build_model()
reference.compile(optimizer=tf_keras.optimizers.legacy.Adam(learning_rate=0.01), loss="mse")
fit(reference, epochs=2)

diff = max(
    float(np.max(np.abs(a - b))) for a, b in zip(resumed.get_weights(), reference.get_weights())
)
print(
    f"keras_opt.tf_keras.Adam (saved, loaded, resumed) vs tf_keras legacy Adam: max |dw| = {diff}"
)
state_equal = all(
    np.array_equal(a, b)
    for a, b in zip(resumed.optimizer.get_weights(), reference.optimizer.get_weights())
)
print(f"optimizer state equal: {state_equal}")

# wrap() turns an existing keras_opt optimizer (a user subclass too) into a tf_keras one.
wrapped = keras_opt.tf_keras.wrap(keras_opt.SGD(0.1, momentum=0.9))
print(
    "wrap:",
    isinstance(wrapped, tf_keras.optimizers.legacy.Optimizer),
    isinstance(wrapped, keras_opt.SGD),
)
