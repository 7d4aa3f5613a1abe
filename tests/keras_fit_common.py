"""Models, data and training loops shared by the Keras 3 / tf_keras fit tests and workers.

The model has both kinds of gradient: an ``Embedding`` (Keras feeds it an
``IndexedSlices`` gradient, with repeated ids) and ``Dense`` layers (dense
gradients). ``sparse=False`` replaces the embedding by a dense input layer.
Data are 32 examples, fed in order (``shuffle=False``) in batches of 8, so one
epoch is 4 steps and a custom loop sees the same batches as ``fit``.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

import keras_opt

VOCAB, DIM, IDS = 10, 4, 3
N, BATCH = 32, 8

# The optimizers the MirroredStrategy fit tests train (dense and sparse kernels).
MIRRORED_CASES = [
    ("Adam", dict(learning_rate=0.05)),
    ("Ftrl", dict(learning_rate=0.1, l1_regularization_strength=0.001)),
]


def save_cases(cases):
    """One case of the shared table per distinct optimizer state (class and slot set).

    Save/resume and XLA tests run these: every optimizer class, and every option
    that adds a slot or a weight or changes the kernel (momentum, amsgrad,
    centered, l2 shrinkage).
    """
    seen, out = set(), []
    for name, kwargs in cases:
        key = (
            name,
            bool(kwargs.get("momentum")),
            kwargs.get("amsgrad", False),
            kwargs.get("centered", False),
            "l2_shrinkage_regularization_strength" in kwargs,
        )
        if key not in seen:
            seen.add(key)
            out.append((name, kwargs))
    return out


def data(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (N, IDS)).astype("int32")
    dense_x = rng.normal(size=(N, IDS * DIM)).astype("float32")
    y = rng.normal(size=(N, 1)).astype("float32")
    return ids, dense_x, y


def build_model(lib, sparse: bool = True, constraint: bool = False, seed: int = 1):
    """A small model of ``lib`` (``keras`` or ``tf_keras``) with fixed start weights."""
    lib.utils.set_random_seed(seed)
    layers = lib.layers
    if sparse:
        inp = lib.Input((IDS,), dtype="int32")
        x = layers.Flatten()(layers.Embedding(VOCAB, DIM)(inp))
    else:
        inp = lib.Input((IDS * DIM,))
        x = inp
    x = layers.Dense(
        3,
        activation="tanh",
        kernel_constraint=lib.constraints.NonNeg() if constraint else None,
    )(x)
    out = layers.Dense(1, dtype="float32")(x)
    return lib.Model(inp, out)


def inputs(sparse: bool, seed: int = 0):
    ids, dense_x, y = data(seed)
    return (ids if sparse else dense_x), y


def fit(model, optimizer, epochs=1, sparse=True, initial_epoch=0, callbacks=None, **compile_kw):
    x, y = inputs(sparse)
    if optimizer is not None:
        model.compile(optimizer=optimizer, loss="mse", **compile_kw)
    return model.fit(
        x,
        y,
        batch_size=BATCH,
        epochs=epochs,
        initial_epoch=initial_epoch,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )


def tape_loop(
    model, optimizer, epochs=1, sparse=True, lr_per_epoch=None, loss_scale=False, keras3=False
):
    """The custom ``tf.function`` GradientTape loop that ``fit`` must equal.

    ``optimizer`` is a keras_opt optimizer; with ``loss_scale`` it is a
    keras_opt LossScaleOptimizer (``get_scaled_loss``, then ``apply`` with the
    scaled gradients). With ``keras3`` the loop follows Keras 3's ``fit``
    contract: the loss goes through ``optimizer.scale_loss`` (the
    ``loss_scale_factor``) and ``finalize_variable_values`` runs at the end
    (EMA averages copied into the model).
    """
    x, y = inputs(sparse)
    mse = _mse_for(model)

    @tf.function
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = mse(yb, model(xb, training=True))
            if loss_scale:
                loss = optimizer.get_scaled_loss(loss)
            elif keras3:
                loss = optimizer.scale_loss(loss)
        grads = tape.gradient(loss, model.trainable_variables)
        if loss_scale:
            optimizer.apply(grads, model.trainable_variables)
        else:
            optimizer.apply_gradients(zip(grads, model.trainable_variables))

    for epoch in range(epochs):
        if lr_per_epoch is not None:
            optimizer.learning_rate = lr_per_epoch[epoch]
        for i in range(0, N, BATCH):
            step(tf.constant(x[i : i + BATCH]), tf.constant(y[i : i + BATCH]))
    if keras3:
        optimizer.finalize_variable_values(model.trainable_variables)


def _mse_for(model):
    module = type(model).__module__
    if module.startswith("tf_keras"):
        import tf_keras

        return tf_keras.losses.MeanSquaredError()
    import keras

    return keras.losses.MeanSquaredError()


def state(model, optimizer) -> dict:
    """Model weights, ``iter`` and every slot, by position (library-independent keys)."""
    from cases import has_slot

    out = {"iter": np.asarray(optimizer.iterations.numpy())}
    for i, var in enumerate(model.trainable_variables):
        out[f"var{i}"] = np.asarray(var.numpy())
        for slot in optimizer.get_slot_names():
            # Muon and Adafactor give each variable only the slots its rule uses.
            if keras_opt_slots(optimizer) and not has_slot(optimizer, var, slot):
                continue
            out[f"var{i}/{slot}"] = optimizer.get_slot(var, slot).numpy()
    return out


def keras_opt_slots(optimizer) -> bool:
    """Whether the slots are a keras_opt optimizer's (not a tf_keras legacy oracle's)."""
    return "keras_opt" in type(optimizer).__module__


def assert_same(got: dict, want: dict) -> None:
    assert sorted(got) == sorted(want)
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


class SignSGD(keras_opt.Optimizer):
    """A user optimizer written against keras_opt's (tf_keras's) contract.

    ``var -= lr * sign(grad)``, dense and sparse; the `wrap` tests of both
    frameworks train it.
    """

    def __init__(self, learning_rate=0.01, name="SignSGD", **kwargs):
        super().__init__(name, **kwargs)
        self._set_hyper("learning_rate", learning_rate)

    def _create_slots(self, var_list):
        pass

    def _resource_apply_dense(self, grad, var, apply_state=None):
        lr = self._decayed_lr(var.dtype.base_dtype)
        return var.assign_sub(lr * tf.sign(grad))

    def _resource_apply_sparse(self, grad, var, indices, apply_state=None):
        lr = self._decayed_lr(var.dtype.base_dtype)
        return var.scatter_sub(tf.IndexedSlices(lr * tf.sign(grad), indices))

    def get_config(self):
        return {
            **super().get_config(),
            "learning_rate": self._serialize_hyperparameter("learning_rate"),
        }
