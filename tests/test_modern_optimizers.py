"""The modern optimizers (AdamW, Lion, Lamb, Adafactor, Muon, LazyAdam), side by side.

* Against Keras 3 (``keras.optimizers.X``, TensorFlow backend) in float32, from
  identical start values and gradients, default and non-default arguments,
  variables of rank 0 to 3 (Muon: several 2-D shapes, non-2-D variables and
  excluded names), eager and ``tf.function``, compared after every step.
  Tolerance: 1e-4 relative (plus 1e-6 absolute for entries near zero). The
  two libraries run the same formulas in a different float32 rounding:
  Keras 3 converts ``1 - beta`` from a Python double (one rounding) where
  keras_opt computes it in float32 from the float32 hyperparameter variable
  (tf_keras legacy's convention, ~1e-7 relative apart), norms and means are
  reduced in a different order, and Newton–Schulz's five matrix products with
  coefficients up to 4.8 amplify each rounding; over a few steps this stays
  well below 1e-4, while a wrong formula is off by far more.
* Against the float64 numpy reference (``tests/reference.py``), dense and
  sparse, tightly (1e-10 relative).
* Sparse (``IndexedSlices``): rows-only optimizers (Lion, LazyAdam) against the
  dense update restricted to the rows seen, bit for bit, with the other rows
  untouched; densifying optimizers (Lamb, Adafactor, Muon) equal to their dense
  step bit for bit; LazyAdam against TensorFlow Addons' published LazyAdam rule
  written out in TensorFlow ops.
"""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_opt  # noqa: E402

import cases  # noqa: E402
import reference  # noqa: E402
from cases import MODERN_CASES  # noqa: E402

STEPS = 4
# name -> (variable name, shape); rank 0 to 3.
SHAPES = {"scalar": (), "vector": (3,), "matrix": (4, 3), "cube": (2, 3, 2)}
# Muon: 2-D shapes of both orientations and square, an excluded embedding, a
# layer excluded by `exclude_layers`, and non-2-D variables.
MUON_SHAPES = {
    "dense/kernel": (4, 3),
    "wide/kernel": (3, 5),
    "square/kernel": (4, 4),
    "token_embedding/embeddings": (6, 3),
    "attn/kernel": (3, 3),
    "dense/bias": (3,),
    "scale": (),
    "conv/kernel": (2, 3, 2),
}

KERAS3_CASES = [
    ("AdamW", dict(learning_rate=0.01)),
    ("AdamW", dict(learning_rate=0.05, weight_decay=0.1, beta_1=0.8, epsilon=1e-5, amsgrad=True)),
    ("Lion", dict(learning_rate=0.01)),
    ("Lion", dict(learning_rate=0.01, weight_decay=0.1)),
    ("Lion", dict(learning_rate=0.02, beta_1=0.8, beta_2=0.95)),
    ("Lamb", dict(learning_rate=0.01)),
    ("Lamb", dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-5, weight_decay=0.1)),
    ("Adafactor", dict()),
    (
        "Adafactor",
        dict(
            learning_rate=0.05,
            beta_2_decay=-0.5,
            epsilon_2=1e-2,
            clip_threshold=0.5,
            relative_step=False,
            weight_decay=0.1,
        ),
    ),
]
MUON_KERAS3_CASES = [
    ("Muon", dict(learning_rate=0.01, exclude_layers=["attn"])),
    (
        "Muon",
        dict(
            learning_rate=0.02,
            exclude_layers=["attn", "wide"],
            exclude_embeddings=False,
            momentum=0.9,
            nesterov=False,
            ns_steps=3,
            rms_rate=None,
            adam_lr_ratio=0.1,
            adam_beta_1=0.8,
            adam_beta_2=0.99,
            epsilon=1e-6,
            muon_a=3.0,
            muon_b=-4.0,
            muon_c=1.8,
            weight_decay=0.05,
            adam_weight_decay=0.02,
        ),
    ),
    ("Muon", dict(learning_rate=0.01, weight_decay=None, exclude_embeddings=False)),
    ("Muon", dict(learning_rate=0.01, gradient_accumulation_steps=2, loss_scale_factor=4.0)),
]
# The base features (issue 11's stages) on the modern optimizers, against Keras 3.
FEATURE_CASES = [
    (
        "AdamW",
        dict(
            learning_rate=0.01,
            use_ema=True,
            ema_overwrite_frequency=3,
            gradient_accumulation_steps=2,
            loss_scale_factor=2.0,
            global_clipnorm=1.0,
        ),
    ),
    ("Lion", dict(learning_rate=0.01, weight_decay=0.05, use_ema=True, ema_momentum=0.9)),
    ("Lamb", dict(learning_rate=0.01, gradient_accumulation_steps=2, clipnorm=0.5)),
    ("Adafactor", dict(use_ema=True, ema_overwrite_frequency=2, loss_scale_factor=8.0)),
]


def case_id(case) -> str:
    name, kwargs = case
    return name + "".join(f"-{k}={v}" for k, v in kwargs.items() if k != "learning_rate")


def start_values(shapes: dict, seed=3) -> dict:
    rng = np.random.default_rng(seed)
    return {name: rng.uniform(-1, 1, shape) for name, shape in shapes.items()}


def gradient_steps(shapes: dict, seed=5) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [
        {name: rng.standard_normal(shape) for name, shape in shapes.items()} for _ in range(STEPS)
    ]


def run_keras_opt(name, kwargs, shapes, mode, dtype=tf.float32, var_factory=None):
    """keras_opt's values after each step: a list of {name: array}."""
    opt = getattr(keras_opt, name)(**kwargs)
    make = var_factory or (lambda value, n: tf.Variable(value, name=n))
    variables = {
        n: make(v.astype(dtype.as_numpy_dtype), n) for n, v in start_values(shapes).items()
    }

    def step(grads):
        opt.apply_gradients([(grads[n], variables[n]) for n in variables])

    if mode == "function":
        step = tf.function(step)
    history = []
    for grads in gradient_steps(shapes):
        step({n: tf.constant(g, dtype) for n, g in grads.items()})
        history.append({n: v.numpy() for n, v in variables.items()})
    return opt, variables, history


def run_keras3(name, kwargs, shapes, mode):
    opt = getattr(keras.optimizers, name)(**kwargs)
    variables = {
        n: keras.Variable(v.astype(np.float32), name=n.split("/")[-1])
        for n, v in start_values(shapes).items()
    }
    if name == "Muon":  # Keras 3 matches Muon's rules against `.path`
        for n, v in variables.items():
            v._path = n
    opt.build(list(variables.values()))

    def step(grads):
        opt.apply_gradients([(grads[n], variables[n]) for n in variables])

    if mode == "function":
        step = tf.function(step)
    history = []
    for grads in gradient_steps(shapes):
        step({n: tf.constant(g, tf.float32) for n, g in grads.items()})
        history.append({n: np.array(v.numpy()) for n, v in variables.items()})
    return opt, history


def assert_close_history(ours, theirs, start):
    for step, (a, b) in enumerate(zip(ours, theirs), start=1):
        for n in b:
            np.testing.assert_allclose(
                a[n], b[n], rtol=1e-4, atol=1e-6, err_msg=f"variable {n} after step {step}"
            )
    for n in start:  # the comparison is not between two no-ops
        assert not np.allclose(ours[-1][n], start[n].astype(np.float32)), n


@pytest.mark.parametrize("mode", ["eager", "function"])
@pytest.mark.parametrize("case", KERAS3_CASES + MUON_KERAS3_CASES + FEATURE_CASES, ids=case_id)
def test_matches_keras3(case, mode):
    name, kwargs = case
    shapes = MUON_SHAPES if name == "Muon" else SHAPES
    ours, _, our_history = run_keras_opt(name, kwargs, shapes, mode)
    theirs, their_history = run_keras3(name, kwargs, shapes, mode)
    assert_close_history(our_history, their_history, start_values(shapes))
    applied = STEPS // kwargs.get("gradient_accumulation_steps", 1)
    assert int(ours.iterations.numpy()) == int(theirs.iterations.numpy()) == applied
    assert list(ours.get_config()) == list(theirs.get_config())


def test_muon_step_choice_follows_keras3_rules():
    opt, variables, _ = run_keras_opt("Muon", dict(exclude_layers=["attn"]), MUON_SHAPES, "eager")
    adamw = {n for n, v in variables.items() if opt.uses_adamw(v)}
    assert adamw == {
        "token_embedding/embeddings",
        "attn/kernel",
        "dense/bias",
        "scale",
        "conv/kernel",
    }
    for n, v in variables.items():
        assert ("velocity" in opt._slots[keras_opt.optimizer_v2.variables.var_key(v)]) == (
            n in adamw
        )


def test_muon_uses_keras_variable_path():
    """A keras.Variable is matched by its path (its tf.Variable only knows the short name)."""
    kv = keras.Variable(np.ones((3, 3), np.float32), name="kernel")
    kv._path = "attn_block/kernel"
    opt = keras_opt.Muon(exclude_layers=["attn_block"])
    opt.apply_gradients([(tf.ones((3, 3)), kv)])
    assert opt.get_slot(kv, "velocity") is not None
    plain = keras_opt.Muon(exclude_layers=["attn_block"])
    other = tf.Variable(np.ones((3, 3), np.float32), name="kernel")
    plain.apply_gradients([(tf.ones((3, 3)), other)])
    assert plain.get_slot_names() == ["momentum"]


# ------------------------------------------------------------ numpy reference
REFERENCE_CASES = [
    ("AdamW", dict(learning_rate=0.1)),
    ("AdamW", dict(learning_rate=0.1, weight_decay=0.1, amsgrad=True)),
    ("Lion", dict(learning_rate=0.01)),
    ("Lion", dict(learning_rate=0.01, weight_decay=0.1)),
    ("Lion", dict(learning_rate=0.02, beta_1=0.8, beta_2=0.95)),
    ("Lamb", dict(learning_rate=0.01)),
    ("Lamb", dict(learning_rate=0.05, beta_1=0.8, beta_2=0.99, epsilon=1e-5, weight_decay=0.1)),
    ("Adafactor", dict()),
    (
        "Adafactor",
        dict(
            learning_rate=0.05,
            beta_2_decay=-0.5,
            epsilon_2=1e-2,
            clip_threshold=0.5,
            weight_decay=0.1,
        ),
    ),
    ("LazyAdam", dict(learning_rate=0.1)),
    ("LazyAdam", dict(learning_rate=0.1, amsgrad=True, weight_decay=0.1)),
    ("Muon", dict(learning_rate=0.01)),
    (
        "Muon",
        dict(
            learning_rate=0.02,
            weight_decay=0.1,
            adam_weight_decay=None,
            exclude_layers=["wide"],
            momentum=0.9,
            nesterov=False,
            ns_steps=3,
            rms_rate=None,
            adam_lr_ratio=0.1,
        ),
    ),
]
SPARSE_ROWS = [np.array([0, 2, 2, 3]), np.array([1, 3, 0, 1]), np.array([3, 3, 3, 2])]


def sparse_gradient(values: np.ndarray, step: int, dtype):
    indices = SPARSE_ROWS[step % len(SPARSE_ROWS)] % values.shape[0]
    rows = np.random.default_rng(step).standard_normal((len(indices),) + values.shape[1:])
    return (
        indices,
        rows,
        tf.IndexedSlices(
            tf.constant(rows, dtype), tf.constant(indices), tf.constant(values.shape, tf.int64)
        ),
    )


def summed_rows(indices, rows):
    unique, inverse = np.unique(indices, return_inverse=True)
    summed = np.zeros((len(unique),) + rows.shape[1:])
    np.add.at(summed, inverse, rows)
    return unique, summed


@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("case", REFERENCE_CASES, ids=case_id)
def test_matches_numpy_reference(case, sparse):
    name, kwargs = case
    shapes = MUON_SHAPES if name == "Muon" else SHAPES
    cfg = reference.modern_config(name, kwargs)
    opt = getattr(keras_opt, name)(**kwargs)
    starts = start_values(shapes)
    variables = {n: tf.Variable(v, name=n) for n, v in starts.items()}
    opt.build(list(variables.values()))
    states = {
        n: reference.modern_initial_state(
            name, cfg, v, adamw=name == "Muon" and opt.uses_adamw(variables[n])
        )
        for n, v in starts.items()
    }
    for t, grads in enumerate(gradient_steps(shapes), start=1):
        pairs = []
        for n, g in grads.items():
            if sparse and np.ndim(g) >= 1:
                indices, rows, slices = sparse_gradient(starts[n], t, tf.float64)
                pairs.append((slices, variables[n]))
                unique, summed = summed_rows(indices, rows)
                states[n] = reference.modern_step(name, states[n], summed, t, cfg, rows=unique)
            else:
                pairs.append((tf.constant(g), variables[n]))
                states[n] = reference.modern_step(name, states[n], g, t, cfg)
        opt.apply_gradients(pairs)
    for n, var in variables.items():
        for key, want in states[n].items():
            got = var.numpy() if key == "var" else opt.get_slot(var, key).numpy()
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=f"{n}/{key}")


# ------------------------------------------------------------------- sparse
def _train_pair(name, kwargs):
    """(sparse-trained, dense-trained) optimizers and variables on one 5x3 matrix."""
    start = start_values({"w": (5, 3)})["w"].astype(np.float32)
    out = []
    for use_sparse in (True, False):
        opt = getattr(keras_opt, name)(**kwargs)
        var = tf.Variable(start, name="w")
        for step in range(STEPS):
            _, _, slices = sparse_gradient(start, step, tf.float32)
            grad = slices if use_sparse else tf.convert_to_tensor(slices)
            opt.apply_gradients([(grad, var)])
        out.append((opt, var))
    return start, out


ROWS_ONLY = [("Lion", dict(learning_rate=0.01)), ("LazyAdam", dict(learning_rate=0.1))]


@pytest.mark.parametrize("case", ROWS_ONLY, ids=case_id)
def test_rows_only_sparse_update(case):
    """A sparse step equals the dense step on the rows seen; other rows stay as they were."""
    name, kwargs = case
    start = start_values({"w": (5, 3)})["w"].astype(np.float32)
    indices, _, slices = sparse_gradient(start, 0, tf.float32)
    seen = np.unique(indices)
    unseen = np.setdiff1d(np.arange(5), seen)
    results = []
    for grad in (slices, tf.convert_to_tensor(slices)):
        opt = getattr(keras_opt, name)(**kwargs)
        var = tf.Variable(start, name="w")
        # Warm the slots up with a dense step so that untouched rows have state.
        warm = tf.constant(np.random.default_rng(9).standard_normal((5, 3)), tf.float32)
        opt.apply_gradients([(warm, var)])
        before = {k: opt.get_slot(var, k).numpy() for k in opt.get_slot_names()}
        before["var"] = var.numpy()
        opt.apply_gradients([(grad, var)])
        after = {k: opt.get_slot(var, k).numpy() for k in opt.get_slot_names()}
        after["var"] = var.numpy()
        results.append((before, after))
    (sp_before, sp_after), (_, dense_after) = results
    for key in sp_after:
        # Lion: the same ops, bit for bit. LazyAdam: the dense step is the fused Adam
        # kernel (m += (g - m)(1 - beta_1)), the sparse one TFA's form
        # (beta_1 m + (1 - beta_1) g): a float32 rounding or two apart.
        np.testing.assert_allclose(
            sp_after[key][seen],
            dense_after[key][seen],
            rtol=0 if name == "Lion" else 1e-6,
            err_msg=key,
        )
        np.testing.assert_array_equal(sp_after[key][unseen], sp_before[key][unseen], err_msg=key)
        assert not np.array_equal(sp_after[key][seen], sp_before[key][seen]), key


@pytest.mark.parametrize(
    "case",
    [
        ("Lamb", dict(learning_rate=0.01)),
        ("Adafactor", dict()),
        ("Muon", dict(learning_rate=0.01)),
        ("Muon", dict(learning_rate=0.01, exclude_layers=["w"])),
    ],
    ids=case_id,
)
def test_densified_sparse_equals_dense(case):
    name, kwargs = case
    _, ((sp_opt, sp_var), (de_opt, de_var)) = _train_pair(name, kwargs)
    np.testing.assert_array_equal(sp_var.numpy(), de_var.numpy())
    for slot in de_opt.get_slot_names():
        np.testing.assert_array_equal(
            sp_opt.get_slot(sp_var, slot).numpy(), de_opt.get_slot(de_var, slot).numpy()
        )


def tfa_lazy_adam_step(var, m, v, grad, t, lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """TensorFlow Addons' LazyAdam `_resource_apply_sparse`, written out (unique indices)."""
    dtype = var.dtype
    beta_1_t, beta_2_t = tf.constant(beta_1, dtype), tf.constant(beta_2, dtype)
    local_step = tf.cast(t, dtype)
    lr_t = lr * tf.sqrt(1 - tf.pow(beta_2_t, local_step)) / (1 - tf.pow(beta_1_t, local_step))
    m_slice = beta_1_t * tf.gather(m, grad.indices) + (1 - beta_1_t) * grad.values
    m.scatter_update(tf.IndexedSlices(m_slice, grad.indices))
    v_slice = beta_2_t * tf.gather(v, grad.indices) + (1 - beta_2_t) * tf.square(grad.values)
    v.scatter_update(tf.IndexedSlices(v_slice, grad.indices))
    var.scatter_sub(tf.IndexedSlices(lr_t * m_slice / (tf.sqrt(v_slice) + epsilon), grad.indices))


def test_lazy_adam_matches_tensorflow_addons_rule():
    start = start_values({"w": (6, 3)})["w"].astype(np.float32)
    ours = tf.Variable(start, name="w")
    zeros = np.zeros_like(start)
    tfa_var, tfa_m, tfa_v = (tf.Variable(x) for x in (start, zeros, zeros))
    opt = keras_opt.LazyAdam(learning_rate=0.1)
    for t in range(1, STEPS + 1):
        indices = np.unique(SPARSE_ROWS[t % 3])
        rows = np.random.default_rng(t).standard_normal((len(indices), 3)).astype(np.float32)
        shape = tf.constant([6, 3], tf.int64)
        grad = tf.IndexedSlices(tf.constant(rows), tf.constant(indices), shape)
        opt.apply_gradients([(grad, ours)])
        tfa_lazy_adam_step(tfa_var, tfa_m, tfa_v, grad, t)
        np.testing.assert_allclose(ours.numpy(), tfa_var.numpy(), rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(opt.get_slot(ours, "m").numpy(), tfa_m.numpy(), rtol=1e-6)
        np.testing.assert_allclose(opt.get_slot(ours, "v").numpy(), tfa_v.numpy(), rtol=1e-6)


def test_lazy_adam_dense_is_adam_bit_for_bit():
    start = start_values({"w": (4, 3)})["w"].astype(np.float32)
    out = []
    for cls in (keras_opt.LazyAdam, keras_opt.Adam):
        var = tf.Variable(start)
        opt = cls(learning_rate=0.1)
        for grads in gradient_steps({"w": (4, 3)}):
            opt.apply_gradients([(tf.constant(grads["w"], tf.float32), var)])
        out.append(var.numpy())
    np.testing.assert_array_equal(*out)


def test_adafactor_slot_shapes():
    opt = keras_opt.Adafactor()
    variables = {n: tf.Variable(v.astype(np.float32)) for n, v in start_values(SHAPES).items()}
    opt.build(list(variables.values()))
    assert opt.get_slot(variables["cube"], "r").shape == (2, 3)
    assert opt.get_slot(variables["cube"], "c").shape == (2, 2)
    assert opt.get_slot(variables["matrix"], "r").shape == (4,)
    assert opt.get_slot(variables["matrix"], "c").shape == (3,)
    assert opt.get_slot(variables["vector"], "v").shape == (3,)
    assert opt.get_slot(variables["scalar"], "v").shape == ()


# ------------------------------------------------------------------ TF1 graphs
@pytest.mark.parametrize("case", MODERN_CASES, ids=case_id)
def test_tf1_graph_session_matches_eager(case):
    """In a tf.compat.v1 graph and session, the same numbers as eagerly.

    The update ops read the slots and the variable before writing them through
    data dependencies (a TF1 graph has no automatic control dependencies).
    """
    name, kwargs = case
    w0, b0 = cases.initial_values(np.float32)
    steps = list(
        zip(cases.gradient_stream(False, np.float32), cases.gradient_stream(True, np.float32))
    )
    shape = tf.constant(cases.VAR_SHAPE, tf.int64)

    def sparse(values, indices):
        return tf.IndexedSlices(values, indices, shape)

    opt = getattr(keras_opt, name)(**kwargs)
    eager_vars = [tf.Variable(w0, name="w"), tf.Variable(w0[::-1].copy(), name="e"),
                  tf.Variable(b0, name="b")]  # fmt: skip
    for (grad_w, grad_b), ((values, indices), _) in steps:
        grads = [tf.constant(grad_w), sparse(tf.constant(values), tf.constant(indices)),
                 tf.constant(grad_b)]  # fmt: skip
        opt.apply_gradients(zip(grads, eager_vars))
    want = cases.optimizer_state(opt, eager_vars)

    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        gw = v1.placeholder(tf.float32, cases.VAR_SHAPE)
        gv = v1.placeholder(tf.float32, (None,) + cases.VAR_SHAPE[1:])
        gi = v1.placeholder(tf.int64, [None])
        gb = v1.placeholder(tf.float32, cases.VAR_SHAPE[1:])
        graph_vars = [tf.Variable(w0, name="w"), tf.Variable(w0[::-1].copy(), name="e"),
                      tf.Variable(b0, name="b")]  # fmt: skip
        graph_opt = getattr(keras_opt, name)(**kwargs)
        train = graph_opt.apply_gradients(zip([gw, sparse(gv, gi), gb], graph_vars))
        init = v1.global_variables_initializer()
        with v1.Session(graph=graph) as session:
            session.run(init)
            for (grad_w, grad_b), ((values, indices), _) in steps:
                session.run(train, {gw: grad_w, gv: values, gi: indices, gb: grad_b})
            got = {"iter": session.run(graph_opt.iterations)}
            for var in graph_vars:
                key = var.name.split(":")[0]
                got[key] = session.run(var)
                for slot in graph_opt.get_slot_names():
                    if cases.has_slot(graph_opt, var, slot):
                        got[f"{key}/{slot}"] = session.run(graph_opt.get_slot(var, slot))
    assert sorted(got) == sorted(want)
    for key in want:  # the same ops; graph rewrites may fuse some (a rounding apart)
        np.testing.assert_allclose(got[key], want[key], rtol=1e-6, atol=1e-7, err_msg=key)


def test_muon_on_tf_keras_layers():
    """tf_keras layer variables ("embedding/embeddings:0", "dense/kernel:0") follow the rules."""
    import tf_keras

    model = tf_keras.Sequential(
        [tf_keras.layers.Embedding(10, 4, name="embedding"), tf_keras.layers.Dense(3, name="dense")]
    )
    model.build((None, 2))
    opt = keras_opt.Muon(learning_rate=0.01)
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.square(model(tf.constant([[1, 2], [3, 1]]))))
    grads = tape.gradient(loss, model.trainable_variables)
    assert isinstance(grads[0], tf.IndexedSlices)  # the embedding's gradient is sparse
    before = [v.numpy() for v in model.trainable_variables]
    opt.apply_gradients(zip(grads, model.trainable_variables))
    adamw = {v.name for v in model.trainable_variables if opt.uses_adamw(v)}
    assert adamw == {"embedding/embeddings:0", "dense/bias:0"}
    for var, start in zip(model.trainable_variables, before):
        assert not np.array_equal(var.numpy(), start), var.name


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("case", MODERN_CASES, ids=case_id)
def test_half_precision_variables_follow_float32(case, dtype):
    """float16 and bfloat16 variables train (no missing kernel) near the float32 run.

    Half precision keeps 11 (float16) or 8 (bfloat16) significant bits, so each
    step is off by up to ~2**-8 relative: the two runs agree to 0.05 after 4 steps.
    """
    name, kwargs = case
    # bfloat16 rounds 0.999 to 1.0, so 1 - beta_2 = 0 and Adam-like steps vanish or
    # divide 0 by 0 (as in tf_keras and Keras 3): these runs use 0.99.
    if name in ("AdamW", "LazyAdam", "Lamb"):
        kwargs = dict(kwargs, beta_2=0.99)
    if name == "Muon":
        kwargs = dict(kwargs, adam_beta_2=0.99)
    runs = {}
    for run_dtype in (tf.float32, dtype):
        _, variables, _ = run_keras_opt(name, kwargs, SHAPES, "eager", dtype=run_dtype)
        runs[run_dtype] = {n: v.numpy().astype(np.float64) for n, v in variables.items()}
    for n, want in runs[tf.float32].items():
        assert np.all(np.isfinite(runs[dtype][n])), n
        np.testing.assert_allclose(runs[dtype][n], want, atol=0.05, err_msg=n)
