"""Float64 numpy reference steps for every optimizer, written from the published rules.

Each ``<name>_step(state, g, t, cfg)`` takes the state of one variable as a
dict of float64 arrays (``"var"`` and the slots by their keras_opt/tf_keras slot
names; Nadam also reads and writes the scalar ``"momentum_cache"``), the dense
gradient ``g``, the 1-based step number ``t`` and the optimizer's config, and
returns the new state. They are independent of TensorFlow: tests run keras_opt
in float64 and compare.

Sparse updates: TF's sparse kernels touch only the gradient's rows, while
tf_keras's composite sparse paths decay some slots in full. ``SPARSE_FULL``
names, per optimizer, the arrays that a sparse step updates everywhere (as a
dense step with zero gradient rows would); every other array is updated on the
gradient's rows only. ``sparse_step`` combines the two.
"""

from __future__ import annotations

import numpy as np

DEFAULTS = {
    "SGD": dict(learning_rate=0.01, momentum=0.0, nesterov=False),
    "Adam": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False),
    "Adamax": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "Nadam": dict(
        learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, schedule_decay=0.004
    ),
    "Adagrad": dict(learning_rate=0.001, initial_accumulator_value=0.1, epsilon=1e-7),
    "Adadelta": dict(learning_rate=0.001, rho=0.95, epsilon=1e-7),
    "RMSprop": dict(learning_rate=0.001, rho=0.9, momentum=0.0, epsilon=1e-7, centered=False),
    "Ftrl": dict(
        learning_rate=0.001,
        learning_rate_power=-0.5,
        initial_accumulator_value=0.1,
        l1_regularization_strength=0.0,
        l2_regularization_strength=0.0,
        l2_shrinkage_regularization_strength=0.0,
        beta=0.0,
    ),
}


# Hyperparameters set with `_set_hyper` live in float32 variables (tf_keras does the
# same), so a float64 optimizer sees them rounded to float32. `decay` and
# `l2_shrinkage_regularization_strength` go through `tf.cast(python_float, dtype)`,
# which converts to a float32 tensor first: also rounded. Epsilon and the initial
# accumulator value are converted straight to the variable's dtype: exact.
FLOAT32_HYPERS = {
    "decay",
    "l2_shrinkage_regularization_strength",
    "learning_rate",
    "beta_1",
    "beta_2",
    "rho",
    "momentum",
    "learning_rate_power",
    "l1_regularization_strength",
    "l2_regularization_strength",
    "beta",
}


def full_config(name: str, kwargs: dict) -> dict:
    cfg = dict(DEFAULTS[name])
    cfg.update(kwargs)
    cfg.setdefault("decay", 0.0)
    for key in FLOAT32_HYPERS & set(cfg):
        cfg[key] = float(np.float32(cfg[key]))
    return cfg


def _lr(cfg, t):
    """Learning rate at step t with legacy inverse-time `decay` (iterations = t - 1)."""
    decay = 0.0 if "schedule_decay" in cfg else cfg["decay"]
    return cfg["learning_rate"] / (1.0 + decay * (t - 1))


def initial_state(name: str, cfg: dict, var: np.ndarray) -> dict:
    zeros = np.zeros_like(var)
    if name == "SGD":
        return {"var": var, "momentum": zeros} if cfg["momentum"] > 0 else {"var": var}
    if name == "Adam":
        state = {"var": var, "m": zeros, "v": zeros}
        if cfg["amsgrad"]:
            state["vhat"] = zeros
        return state
    if name == "Adamax":
        return {"var": var, "m": zeros, "v": zeros}
    if name == "Nadam":
        return {"var": var, "m": zeros, "v": zeros, "momentum_cache": np.float64(1.0)}
    if name == "Adagrad":
        return {"var": var, "accumulator": np.full_like(var, cfg["initial_accumulator_value"])}
    if name == "Adadelta":
        return {"var": var, "accum_grad": zeros, "accum_var": zeros}
    if name == "RMSprop":
        state = {"var": var, "rms": zeros}
        if cfg["momentum"] > 0:
            state["momentum"] = zeros
        if cfg["centered"]:
            state["mg"] = zeros
        return state
    if name == "Ftrl":
        return {
            "var": var,
            "accumulator": np.full_like(var, cfg["initial_accumulator_value"]),
            "linear": zeros,
        }
    raise KeyError(name)


def sgd_step(s, g, t, cfg):
    lr, mu = _lr(cfg, t), cfg["momentum"]
    if mu <= 0:
        return {"var": s["var"] - lr * g}
    velocity = mu * s["momentum"] - lr * g
    if cfg["nesterov"]:
        return {"var": s["var"] + mu * velocity - lr * g, "momentum": velocity}
    return {"var": s["var"] + velocity, "momentum": velocity}


def adam_step(s, g, t, cfg):
    b1, b2, eps = cfg["beta_1"], cfg["beta_2"], cfg["epsilon"]
    m = b1 * s["m"] + (1 - b1) * g
    v = b2 * s["v"] + (1 - b2) * g * g
    lr_t = _lr(cfg, t) * np.sqrt(1 - b2**t) / (1 - b1**t)
    out = {"m": m, "v": v}
    denom = v
    if cfg["amsgrad"]:
        out["vhat"] = denom = np.maximum(s["vhat"], v)
    out["var"] = s["var"] - lr_t * m / (np.sqrt(denom) + eps)
    return out


def adamax_step(s, g, t, cfg):
    b1, b2, eps = cfg["beta_1"], cfg["beta_2"], cfg["epsilon"]
    m = b1 * s["m"] + (1 - b1) * g
    v = np.maximum(b2 * s["v"], np.abs(g))
    return {"m": m, "v": v, "var": s["var"] - _lr(cfg, t) / (1 - b1**t) * m / (v + eps)}


def nadam_step(s, g, t, cfg):
    b1, b2, eps, lr = cfg["beta_1"], cfg["beta_2"], cfg["epsilon"], cfg["learning_rate"]
    base = float(np.float32(0.96))  # tf.cast(0.96, dtype) rounds through float32
    mu_t = b1 * (1 - 0.5 * base ** (cfg["schedule_decay"] * t))
    mu_next = b1 * (1 - 0.5 * base ** (cfg["schedule_decay"] * (t + 1)))
    prod = s["momentum_cache"] * mu_t
    prod_next = prod * mu_next
    m = b1 * s["m"] + (1 - b1) * g
    v = b2 * s["v"] + (1 - b2) * g * g
    m_bar = (1 - mu_t) * g / (1 - prod) + mu_next * m / (1 - prod_next)
    v_hat = v / (1 - b2**t)
    var = s["var"] - lr * m_bar / (np.sqrt(v_hat) + eps)
    return {"m": m, "v": v, "var": var, "momentum_cache": prod}


def adagrad_step(s, g, t, cfg):
    acc = s["accumulator"] + g * g
    return {"accumulator": acc, "var": s["var"] - _lr(cfg, t) * g / (np.sqrt(acc) + cfg["epsilon"])}


def adadelta_step(s, g, t, cfg):
    rho, eps = cfg["rho"], cfg["epsilon"]
    acc_g = rho * s["accum_grad"] + (1 - rho) * g * g
    update = np.sqrt(s["accum_var"] + eps) / np.sqrt(acc_g + eps) * g
    acc_v = rho * s["accum_var"] + (1 - rho) * update * update
    return {"accum_grad": acc_g, "accum_var": acc_v, "var": s["var"] - _lr(cfg, t) * update}


def rmsprop_step(s, g, t, cfg):
    rho, eps, mu, lr = cfg["rho"], cfg["epsilon"], cfg["momentum"], _lr(cfg, t)
    out = {"rms": rho * s["rms"] + (1 - rho) * g * g}
    denom = out["rms"]
    if cfg["centered"]:
        out["mg"] = rho * s["mg"] + (1 - rho) * g
        denom = denom - out["mg"] ** 2
    if mu > 0:  # TF's momentum kernels put epsilon inside the square root
        out["momentum"] = mu * s["momentum"] + lr * g / np.sqrt(denom + eps)
        out["var"] = s["var"] - out["momentum"]
    else:
        out["var"] = s["var"] - lr * g / (np.sqrt(denom) + eps)
    return out


def ftrl_step(s, g, t, cfg):
    lr, p = _lr(cfg, t), cfg["learning_rate_power"]
    l1 = cfg["l1_regularization_strength"]
    l2 = cfg["l2_regularization_strength"] + cfg["beta"] / (2.0 * lr)
    g_shrunk = g + 2.0 * cfg["l2_shrinkage_regularization_strength"] * s["var"]
    acc_new = s["accumulator"] + g * g
    linear = s["linear"] + g_shrunk - (acc_new**-p - s["accumulator"] ** -p) / lr * s["var"]
    quadratic = acc_new**-p / lr + 2.0 * l2
    var = np.where(np.abs(linear) > l1, (np.sign(linear) * l1 - linear) / quadratic, 0.0)
    return {"accumulator": acc_new, "linear": linear, "var": var}


STEPS = {
    "SGD": sgd_step,
    "Adam": adam_step,
    "Adamax": adamax_step,
    "Nadam": nadam_step,
    "Adagrad": adagrad_step,
    "Adadelta": adadelta_step,
    "RMSprop": rmsprop_step,
    "Ftrl": ftrl_step,
}

# Arrays that tf_keras's sparse paths update in full (see module docstring).
SPARSE_FULL = {
    "SGD": set(),
    "Adam": {"var", "m", "v", "vhat"},
    "Adamax": set(),
    "Nadam": {"m", "v", "momentum_cache"},
    "Adagrad": set(),
    "Adadelta": set(),
    "RMSprop": set(),  # with momentum: kernel rows; without: rms and mg decay in full
    "Ftrl": set(),
}


def sparse_full_keys(name: str, cfg: dict) -> set:
    if name == "RMSprop" and cfg["momentum"] <= 0:
        return {"rms", "mg", "var"}
    return SPARSE_FULL[name]


def dense_step(name, state, g, t, cfg):
    new = dict(state)
    new.update(STEPS[name](state, g, t, cfg))
    return new


def sparse_step(name, state, rows, row_grads, t, cfg):
    """A step with gradient rows ``row_grads`` at (unique) indices ``rows``."""
    full_g = np.zeros_like(state["var"])
    full_g[rows] = row_grads
    dense = dense_step(name, state, full_g, t, cfg)
    if name in DENSIFIED:
        return dense
    row_state = {
        k: (v[rows] if np.ndim(v) and k not in ("momentum_cache",) else v) for k, v in state.items()
    }
    row_new = dense_step(name, row_state, row_grads, t, cfg)
    full_keys = sparse_full_keys(name, cfg)
    new = {}
    for key, value in state.items():
        if key in full_keys or np.ndim(value) == 0:
            new[key] = dense[key]
        else:
            updated = np.array(value, copy=True)
            updated[rows] = row_new[key]
            new[key] = updated
    return new


# ----------------------------------------------------------------- modern optimizers
# Keras 3's optimizers, re-implemented in keras_opt (AdamW, Lion, Lamb, Adafactor,
# Muon) and TensorFlow Addons' LazyAdam. Learning rate and Lion's/Lamb's betas are
# `_set_hyper` float32 variables (rounded, as above); every other argument is
# converted straight to the variable's dtype (exact).
MODERN_DEFAULTS = {
    "LazyAdam": dict(DEFAULTS["Adam"]),
    "AdamW": dict(DEFAULTS["Adam"], weight_decay=0.004),
    "Lion": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.99),
    "Lamb": dict(learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7),
    "Adafactor": dict(
        learning_rate=0.001,
        beta_2_decay=-0.8,
        epsilon_1=1e-30,
        epsilon_2=1e-3,
        clip_threshold=1.0,
        relative_step=True,
    ),
    "Muon": dict(
        learning_rate=0.001,
        adam_beta_1=0.9,
        adam_beta_2=0.999,
        adam_weight_decay=0.004,
        epsilon=1e-7,
        weight_decay=0.004,
        exclude_layers=(),
        exclude_embeddings=True,
        muon_a=3.4445,
        muon_b=-4.7750,
        muon_c=2.0315,
        adam_lr_ratio=1,
        momentum=0.95,
        ns_steps=5,
        nesterov=True,
        rms_rate=0.2,
    ),
}
DEFAULTS.update(MODERN_DEFAULTS)
# The weight decay stage casts the Python rate with `tf.cast` (through float32).
_MODERN_FLOAT32 = {
    "learning_rate",
    "decay",
    "beta_1",
    "beta_2",
    "weight_decay",
    "adam_weight_decay",
}


def modern_config(name: str, kwargs: dict) -> dict:
    cfg = dict(DEFAULTS[name])
    cfg.update(kwargs)
    cfg.setdefault("decay", 0.0)
    for key in _MODERN_FLOAT32 & set(cfg):
        if cfg[key] is not None:
            cfg[key] = float(np.float32(cfg[key]))
    return cfg


def decay_rate(name: str, cfg: dict, state: dict):
    """The decoupled weight-decay rate of a variable (Muon: per kind of step)."""
    if name == "Muon":
        return cfg["adam_weight_decay"] if "velocity" in state else cfg["weight_decay"]
    return cfg.get("weight_decay")


def modern_step(name, state, g, t, cfg, rows=None):
    """Weight decay, then a dense step (``rows`` None) or a sparse one.

    Sparse: ``g`` holds the summed gradient rows at the unique ``rows``; the
    decay stage decays those rows only, except for optimizers that densify
    (``DENSIFIED``), which decay every row as their dense step does.
    """
    rate = decay_rate(name, cfg, state)
    if rate:
        state = dict(state)
        var = np.array(state["var"], copy=True)
        if rows is None or name in DENSIFIED:
            var = var - var * rate * _lr(cfg, t)
        else:
            var[rows] = var[rows] - var[rows] * rate * _lr(cfg, t)
        state["var"] = var
    if rows is None:
        return dense_step(name, state, g, t, cfg)
    return sparse_step(name, state, rows, g, t, cfg)


def modern_initial_state(name: str, cfg: dict, var: np.ndarray, adamw: bool = False) -> dict:
    """``adamw``: Muon only, whether this variable takes the AdamW step."""
    zeros = np.zeros_like(var)
    if name in ("LazyAdam", "AdamW"):
        return initial_state("Adam", cfg, var)
    if name == "Lion":
        return {"var": var, "momentum": zeros}
    if name == "Lamb":
        return {"var": var, "m": zeros, "v": zeros}
    if name == "Adafactor":
        if var.ndim >= 2:
            return {"var": var, "r": zeros.mean(axis=-1), "c": zeros.mean(axis=-2)}
        return {"var": var, "v": zeros}
    if name == "Muon":
        state = {"var": var, "momentum": zeros}
        if adamw:
            state["velocity"] = zeros
        return state
    raise KeyError(name)


def _rms(x):
    return np.sqrt(np.mean(np.square(x)))


def lion_step(s, g, t, cfg):
    b1, b2 = cfg["beta_1"], cfg["beta_2"]
    var = s["var"] - _lr(cfg, t) * np.sign(b1 * s["momentum"] + (1 - b1) * g)
    return {"var": var, "momentum": b2 * s["momentum"] + (1 - b2) * g}


def lamb_step(s, g, t, cfg):
    b1, b2 = cfg["beta_1"], cfg["beta_2"]
    m = b1 * s["m"] + (1 - b1) * g
    v = b2 * s["v"] + (1 - b2) * g * g
    update = (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + cfg["epsilon"])
    w_norm, u_norm = np.linalg.norm(s["var"]), np.linalg.norm(update)
    ratio = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
    return {"m": m, "v": v, "var": s["var"] - ratio * _lr(cfg, t) * update}


def adafactor_step(s, g, t, cfg):
    rho = min(_lr(cfg, t), 1 / np.sqrt(t))
    alpha = max(cfg["epsilon_2"], _rms(s["var"])) * rho
    beta = 1 - float(t) ** cfg["beta_2_decay"]
    big_g = g * g + cfg["epsilon_1"]
    out = {}
    if np.ndim(s["var"]) >= 2:
        out["r"] = beta * s["r"] + (1 - beta) * big_g.mean(axis=-1)
        out["c"] = beta * s["c"] + (1 - beta) * big_g.mean(axis=-2)
        r_norm = out["r"] / out["r"].mean(axis=-1, keepdims=True)
        v = r_norm[..., :, None] * out["c"][..., None, :]
    else:
        out["v"] = v = beta * s["v"] + (1 - beta) * big_g
    u = g / np.sqrt(v)
    out["var"] = s["var"] - alpha * u / max(1.0, _rms(u) / cfg["clip_threshold"])
    return out


def newton_schulz(x, cfg):
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    x = x / (np.linalg.norm(x) + 1e-7)
    for _ in range(cfg["ns_steps"]):
        a = x @ x.T
        x = cfg["muon_a"] * x + (cfg["muon_b"] * a + cfg["muon_c"] * a @ a) @ x
    return x.T if transpose else x


def muon_step(s, g, t, cfg):
    """``cfg["adamw"]``: this variable takes the AdamW step (set per variable)."""
    lr = _lr(cfg, t)
    if "velocity" in s:
        b1, b2 = cfg["adam_beta_1"], cfg["adam_beta_2"]
        m = b1 * s["momentum"] + (1 - b1) * g
        v = b2 * s["velocity"] + (1 - b2) * g * g
        alpha = lr * cfg["adam_lr_ratio"] * np.sqrt(1 - b2**t) / (1 - b1**t)
        var = s["var"] - alpha * m / (np.sqrt(v) + cfg["epsilon"])
        return {"momentum": m, "velocity": v, "var": var}
    mu = cfg["momentum"]
    m = mu * s["momentum"] + g
    step = lr * newton_schulz(g + mu * m if cfg["nesterov"] else m, cfg)
    if cfg["rms_rate"] is not None:
        step = step * np.sqrt(max(s["var"].shape)) * cfg["rms_rate"]
    return {"momentum": m, "var": s["var"] - step}


STEPS.update(
    {
        "LazyAdam": adam_step,
        "AdamW": adam_step,
        "Lion": lion_step,
        "Lamb": lamb_step,
        "Adafactor": adafactor_step,
        "Muon": muon_step,
    }
)
# Rows-only sparse updates; the others densify (`DENSIFIED`): a sparse step is
# the dense step with zero rows. (AdamW: as Adam.)
SPARSE_FULL.update({"LazyAdam": set(), "Lion": set(), "AdamW": SPARSE_FULL["Adam"]})
DENSIFIED = {"Lamb", "Adafactor", "Muon"}
