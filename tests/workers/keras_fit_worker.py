"""Fresh-process halves of tests/test_keras_fit.py and tests/test_tf_keras_fit.py.

    python keras_fit_worker.py resume LIB DIR        # LIB: keras or tf_keras
    python keras_fit_worker.py noimport LIB FILE OUT.json
    python keras_fit_worker.py mirrored OUT.npz
    python keras_fit_worker.py tf_keras_mirrored OUT.npz

``resume``: imports keras_opt's adapter module for LIB, loads every
``DIR/<case>.keras`` (Keras 3) or ``DIR/<case>.h5`` (tf_keras) saved after one
epoch, trains one more epoch and writes ``DIR/<case>.npz`` (model weights,
``iter`` and slots, see keras_fit_common.state) and the optimizer's class.

``noimport``: loads FILE *without* importing keras_opt and records the error
(type and message) or, if it loads, the optimizer class it got.

``mirrored``: two logical CPUs, then Keras 3 fit of each optimizer of
keras_fit_common.MIRRORED_CASES under MirroredStrategy (the optimizer created inside and outside
the scope) and on one device. ``tf_keras_mirrored``: tf_keras fit under
MirroredStrategy with keras_opt.tf_keras.X and with tf_keras.optimizers.legacy.X.
"""

from __future__ import annotations

import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import faulthandler  # noqa: E402

faulthandler.dump_traceback_later(240, exit=True)

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def resume(lib_name: str, directory: str) -> None:
    import keras_fit_common as common

    if lib_name == "keras":
        import keras as lib

        import keras_opt.keras  # noqa: F401  (registers keras_opt>X)

        files = sorted(glob.glob(os.path.join(directory, "*.keras")))
    else:
        import tf_keras as lib

        import keras_opt.tf_keras  # noqa: F401

        files = sorted(glob.glob(os.path.join(directory, "*.h5")))
    for path in files:
        sparse = "dense" not in os.path.basename(path)
        model = lib.models.load_model(path)
        common.fit(model, None, epochs=2, initial_epoch=1, sparse=sparse)
        out = common.state(model, model.optimizer)
        out["optimizer_class"] = np.array(
            type(model.optimizer).__module__ + "." + type(model.optimizer).__name__
        )
        np.savez(os.path.splitext(path)[0] + ".npz", **out)


def noimport(lib_name: str, path: str, out_path: str) -> None:
    if lib_name == "keras":
        import keras as lib
    else:
        import tf_keras as lib
    assert not any(m.startswith("keras_opt") for m in sys.modules), "keras_opt was imported"
    try:
        model = lib.models.load_model(path)
        result = {"loaded": type(model.optimizer).__module__ + "." + type(model.optimizer).__name__}
    except Exception as e:  # noqa: BLE001 - the error is the result
        result = {"error_type": type(e).__name__, "message": str(e)}
    with open(out_path, "w") as f:
        json.dump(result, f)


def mirrored(out_path: str) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras
    import keras_fit_common as common

    import keras_opt
    import keras_opt.keras as kk

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for name, kwargs in common.MIRRORED_CASES:
        model = common.build_model(keras)
        opt = kk.wrap(getattr(keras_opt, name)(**kwargs))
        common.fit(model, opt, epochs=2)
        out[f"{name}/one"] = np.concatenate([w.ravel() for w in model.get_weights()])
        for where in ("inside", "outside"):
            if where == "outside":
                opt = getattr(kk, name)(**kwargs)
            with strategy.scope():
                if where == "inside":
                    opt = getattr(kk, name)(**kwargs)
                model = common.build_model(keras)
                model.compile(optimizer=opt, loss="mse")
            common.fit(model, None, epochs=2)
            out[f"{name}/{where}"] = np.concatenate([w.ravel() for w in model.get_weights()])
            out[f"{name}/{where}/iter"] = np.asarray(opt.iterations.numpy())
    np.savez(out_path, **out)


def tf_keras_mirrored(out_path: str) -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    import keras_fit_common as common
    import tf_keras

    import keras_opt.tf_keras as tk

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    out = {}
    for name, kwargs in common.MIRRORED_CASES:
        for lib_name, lib in (("keras_opt", tk), ("tf_keras", tf_keras.optimizers.legacy)):
            with strategy.scope():
                opt = getattr(lib, name)(**kwargs)
                model = common.build_model(tf_keras)
                model.compile(optimizer=opt, loss="mse")
            common.fit(model, None, epochs=2)
            out[f"{name}/{lib_name}"] = np.concatenate([w.ravel() for w in model.get_weights()])
            out[f"{name}/{lib_name}/iter"] = np.asarray(opt.iterations.numpy())
    np.savez(out_path, **out)


def main() -> None:
    mode, *args = sys.argv[1:]
    modes = {
        "resume": resume,
        "noimport": noimport,
        "mirrored": mirrored,
        "tf_keras_mirrored": tf_keras_mirrored,
    }
    modes[mode](*args)
    print("worker done")


if __name__ == "__main__":
    main()
