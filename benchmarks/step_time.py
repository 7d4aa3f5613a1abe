"""Median optimizer step time: keras_opt vs tf_keras legacy vs Keras 3.

For each (workload, optimizer) cell every library gets its own fresh
variables (identical initial values), the same fixed gradient tensors, and a
``tf.function`` step ``opt.apply_gradients(zip(grads, vars))``. After a warm-up
(trace + 2 steps) the steps are timed *interleaved* (round-robin over the
libraries, in a new random order each round) so machine noise hits
all libraries alike. Each timed sample is ``perf_counter`` around the step call
plus ``opt.iterations.numpy()`` (forces completion; identical for every lib).

Libraries (``--libs``):
  keras_opt   keras_opt.<Opt>                      (tf.function, default jit)
  tf_keras    tf_keras.optimizers.legacy.<Opt>     (tf.function, default jit)
  keras3      keras.optimizers.<Opt>  in tf.function(jit_compile=False)
  keras3_jit  keras.optimizers.<Opt>  in tf.function(jit_compile=True)
Keras 3 optimizers take no ``jit_compile`` argument (that lives on
``Model.compile``), hence the explicit ``tf.function`` wrapper.

Workloads (``--workloads``):
  W1  ResNet-50 trainable variable shapes (read from
      ``tf_keras.applications.ResNet50(weights=None)``: 214 variables, 25.6M params)
  W2  one [8192, 8192] float32 variable (64M params)
  W3  1000 variables of 1000 float32 params
  W4  [1_000_000, 64] float32 embedding, tf.IndexedSlices gradient of 4096 rows
      (random indices with duplicates, fixed seed). Keras 3 gets the same
      IndexedSlices. With ``lazy_adam`` among the optimizers, W4 also times the
      touched-rows bound (gather and scatter of var, m and v on the seen rows).

``--solo-rounds N`` times each library alone instead: one fresh process per
(cell, library), N rounds in rotating order, so no other library's threads
share the cores and no other heap is walked by the collector; a ratio is then
the median (and range) of the per-round ratios of processes run back to back.
Use it to compare with torch (see benchmarks/README.md).

Optimizers: the classic five, and ``adamw``, ``lion``, ``lazy_adam`` (keras_opt's
LazyAdam; tf_keras and Keras 3 have no lazy Adam, their Adam is timed in that row).

Keras 3 base features (``--features wd,ema,accum,lsf,all``): each adds rows
``<optimizer>+<feature>`` where keras_opt and Keras 3 get the feature's
arguments (FEATURE_KWARGS; tf_keras legacy has none of them: n/a), to
measure what each feature costs when used; compare with the plain row.

Usage:
  PYTHONPATH=. python benchmarks/step_time.py
  PYTHONPATH=. python benchmarks/step_time.py --workloads W1,W4 --optimizers adam \
      --features wd,ema,accum,lsf,all --libs keras_opt,keras3
  PYTHONPATH=. python benchmarks/step_time.py --workloads W3,W4 \
      --optimizers adam,sgd --repeats 3 --json /tmp/bench.json
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

ALL_WORKLOADS = ("W1", "W2", "W3", "W4")
ALL_OPTIMIZERS = ("adam", "sgd", "adagrad", "rmsprop", "ftrl", "adamw", "lion", "lazy_adam")
ALL_OPTIMIZERS += ("nadam",)
ALL_LIBS = ("keras_opt", "tf_keras", "keras3", "keras3_jit")
# keras_opt_pv: keras_opt with fused_kernels=False (per-variable kernels);
# torch_fused: torch.optim.<Opt>(fused=True or foreach) on CPU, only with --torch.
EXTRA_LIBS = ("keras_opt_pv", "torch_fused")
# Default timed repetitions per workload (W2 and W4 are big: fewer repeats).
DEFAULT_REPEATS = {"W1": 10, "W2": 5, "W3": 10, "W4": 5}
WARMUP_STEPS = 2
# Untimed pause before each timed step (--gap-ms).
GAP_S = 0.0
SOLO_TIMEOUT_S = 900  # one child process: imports, build, warm-up and timed steps
SEED = 1234

# Hyperparameters shared by every library (their defaults agree otherwise).
OPT_KWARGS = {
    "adam": {},
    "sgd": {"learning_rate": 0.01, "momentum": 0.9},
    "adagrad": {},
    "rmsprop": {},
    "ftrl": {},
    "adamw": {},
    "lion": {},
    "lazy_adam": {},
    "nadam": {},
}
# Keras 3 base arguments per --features name ("accum": timed steps alternate
# between accumulating and applying, so the median is about the accumulate step).
FEATURE_KWARGS = {
    "wd": {"weight_decay": 0.004},
    "ema": {"use_ema": True, "ema_momentum": 0.99},
    "accum": {"gradient_accumulation_steps": 2},
    "lsf": {"loss_scale_factor": 128.0},
    "all": {
        "weight_decay": 0.004,
        "use_ema": True,
        "gradient_accumulation_steps": 2,
        "loss_scale_factor": 128.0,
        "global_clipnorm": 1.0,
    },
}
OPT_CLASS = {
    "adam": "Adam",
    "sgd": "SGD",
    "adagrad": "Adagrad",
    "rmsprop": "RMSprop",
    "ftrl": "Ftrl",
    # The modern optimizers (tf_keras legacy has none: its cells are n/a).
    "adamw": "AdamW",
    "lion": "Lion",
    "lazy_adam": "LazyAdam",
    "nadam": "Nadam",
}
# No other library has a lazy Adam: its row times their Adam (which decays all
# of m and v on a sparse step; Keras 3 densifies the gradient) against LazyAdam.
FOREIGN_CLASS = {"lazy_adam": "Adam"}


# --------------------------------------------------------------------- workloads
def resnet50_shapes() -> list[tuple[int, ...]]:
    """Trainable variable shapes of tf_keras's ResNet-50 (built once)."""
    import tf_keras

    model = tf_keras.applications.ResNet50(weights=None)
    shapes = [tuple(v.shape.as_list()) for v in model.trainable_variables]
    del model
    tf_keras.backend.clear_session()
    gc.collect()
    return shapes


class Workload:
    """Initial values and fixed gradients for one workload (shared by libs)."""

    def __init__(self, name: str, shapes_cache: dict):
        self.name = name
        rng = np.random.default_rng(SEED)
        self.sparse = False
        if name == "W1":
            if "W1" not in shapes_cache:
                shapes_cache["W1"] = resnet50_shapes()
            shapes = shapes_cache["W1"]
        elif name == "W2":
            shapes = [(8192, 8192)]
        elif name == "W3":
            shapes = [(1000,)] * 1000
        elif name == "W4":
            shapes = [(1_000_000, 64)]
            self.sparse = True
        else:
            raise ValueError(f"unknown workload {name}")
        self.shapes = shapes
        self.num_params = int(sum(np.prod(s) for s in shapes))
        self.init_values = [
            tf.constant(rng.standard_normal(s, dtype=np.float32) * 0.05) for s in shapes
        ]
        if self.sparse:
            rows = 4096
            indices = rng.integers(0, shapes[0][0], size=rows, dtype=np.int64)
            # Force some duplicates regardless of the draw.
            indices[rows // 2 : rows // 2 + 64] = indices[:64]
            values = rng.standard_normal((rows, shapes[0][1]), dtype=np.float32) * 0.01
            self.grads = [
                tf.IndexedSlices(
                    values=tf.constant(values),
                    indices=tf.constant(indices),
                    dense_shape=tf.constant(shapes[0], dtype=tf.int64),
                )
            ]
            self.num_unique_rows = int(np.unique(indices).size)
        else:
            self.grads = [
                tf.constant(rng.standard_normal(s, dtype=np.float32) * 0.01) for s in shapes
            ]

    def describe(self) -> str:
        d = f"{self.name}: {len(self.shapes)} variables, {self.num_params / 1e6:.2f}M params"
        if self.sparse:
            rows = self.grads[0].values.shape[0]
            d += f", IndexedSlices grad of {rows} rows ({self.num_unique_rows} unique)"
        return d


# ------------------------------------------------------------------- libraries
def make_optimizer(lib: str, opt: str, feature: str = ""):
    cls_name = OPT_CLASS[opt]
    kwargs = {**OPT_KWARGS[opt], **FEATURE_KWARGS.get(feature, {})}
    if feature and lib == "tf_keras":
        raise ValueError(f"tf_keras legacy has no {feature}")
    if lib in ("keras_opt", "keras_opt_pv"):
        import keras_opt

        return getattr(keras_opt, cls_name)(fused_kernels=lib == "keras_opt", **kwargs)
    cls_name = FOREIGN_CLASS.get(opt, cls_name)
    if lib == "tf_keras":
        import tf_keras

        return getattr(tf_keras.optimizers.legacy, cls_name)(**kwargs)
    if lib in ("keras3", "keras3_jit"):
        import keras

        return getattr(keras.optimizers, cls_name)(**kwargs)
    raise ValueError(f"unknown lib {lib}")


def make_variables(lib: str, wl: Workload):
    if lib in ("keras3", "keras3_jit"):
        import keras

        return [
            keras.Variable(init * 1.0, name=f"v{i}", dtype="float32")
            for i, init in enumerate(wl.init_values)
        ]
    # `init * 1.0`: a buffer of the variable's own. A variable made from the
    # shared constant itself would share its buffer, and the first update
    # would copy the whole variable (copy-on-write), as no real model does.
    return [tf.Variable(init * 1.0, name=f"v{i}") for i, init in enumerate(wl.init_values)]


class Runner:
    """One library's optimizer, variables and compiled step for one cell."""

    def __init__(self, lib: str, opt_name: str, wl: Workload, feature: str = ""):
        self.lib = lib
        self.vars = make_variables(lib, wl)
        self.opt = make_optimizer(lib, opt_name, feature)
        self.accumulate = FEATURE_KWARGS.get(feature, {}).get("gradient_accumulation_steps", 1)
        grads = wl.grads
        variables = self.vars
        opt = self.opt
        if lib in ("keras_opt", "keras_opt_pv"):
            opt.build(variables)
        elif lib == "tf_keras":
            # Legacy OptimizerV2 has no public build(); this is what
            # apply_gradients does (under init_scope) on its first call.
            with tf.init_scope():
                opt._create_all_weights(variables)
        else:
            opt.build(variables)
        self.rss_built_kb = _mark_built()
        jit = {"keras3": False, "keras3_jit": True}.get(lib)
        fn_kwargs = {} if jit is None else {"jit_compile": jit}

        def apply_step():
            opt.apply_gradients(zip(grads, variables))  # return value dropped

        self.step_fn = tf.function(apply_step, **fn_kwargs)
        self.steps_done = 0
        t0 = time.perf_counter()
        self.step()  # trace (+ compile for XLA) + first step
        self.first_step_s = time.perf_counter() - t0
        for _ in range(WARMUP_STEPS):
            self.step()

    def step(self):
        self.step_fn()
        it = int(self.opt.iterations.numpy())
        self.steps_done += 1
        if it != self.steps_done // self.accumulate:
            raise RuntimeError(f"iterations={it} after {self.steps_done} steps")

    def close(self):
        del self.step_fn, self.opt, self.vars


def short_reason(exc: BaseException) -> str:
    # tf.function errors start with "in user code: <frames>"; the cause is last.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    msg = f"{type(exc).__name__}: {lines[-1] if lines else ''}".replace("|", "/")
    return msg[:100] + ("..." if len(msg) > 100 else "")


def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Resets VmHWM (the peak resident size) to the current size (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _mark_built() -> int | None:
    """VmRSS once variables, slots and gradients exist; restarts the peak from there."""
    return _proc_status_kb("VmRSS") if _reset_peak_rss() else None


def run_cell(
    wl: Workload, opt_name: str, libs: list[str], repeats: int, verbose: bool, feature: str = ""
):
    """Builds + warms every lib, then times `repeats` interleaved rounds."""
    runners: dict = {}
    result = {lib: {"status": "n/a", "reason": "not run"} for lib in libs}
    for lib in libs:
        try:
            if lib == "torch_fused":
                runners[lib] = TorchRunner(lib, opt_name, wl)
            else:
                runners[lib] = Runner(lib, opt_name, wl, feature)
            result[lib] = {
                "status": "ok",
                "first_step_s": runners[lib].first_step_s,
                "times_ms": [],
            }
        except Exception as exc:  # noqa: BLE001 - report and go on
            result[lib] = {"status": "n/a", "reason": short_reason(exc)}
            if verbose:
                traceback.print_exc()
            gc.collect()
    active = list(runners)
    shuffle = np.random.default_rng(SEED)
    for _ in range(repeats):
        # A fresh order each round: a library's step can be slowed by the one
        # timed just before it (its spinning threads, the caches it evicted),
        # and a rotation would give every library the same predecessor.
        order = list(shuffle.permutation(active)) if active else []
        for lib in order:
            if lib not in runners:
                continue
            runner = runners[lib]
            if GAP_S:
                time.sleep(GAP_S)  # let the previous library's spinning threads go idle
            try:
                t0 = time.perf_counter()
                runner.step()
                dt = time.perf_counter() - t0
            except Exception as exc:  # noqa: BLE001
                result[lib] = {"status": "n/a", "reason": short_reason(exc)}
                runners.pop(lib).close()
                continue
            result[lib]["times_ms"].append(dt * 1e3)
    hwm_kb = _proc_status_kb("VmHWM")
    for lib, runner in runners.items():
        if len(runners) == 1 and runner.rss_built_kb is not None and hwm_kb is not None:
            # Alone in the process: the peak since the optimizer was built.
            result[lib]["step_mem_mb"] = max(0, hwm_kb - runner.rss_built_kb) / 1024.0
    for lib, runner in runners.items():
        # Every step must reuse the single trace (no retracing while timed).
        if hasattr(runner.step_fn, "experimental_get_tracing_count"):
            result[lib]["tracing_count"] = runner.step_fn.experimental_get_tracing_count()
    for res in result.values():
        if res["status"] == "ok":
            t = res["times_ms"]
            res["median_ms"] = statistics.median(t)
            res["min_ms"] = min(t)
            q = np.percentile(t, [25, 75])
            res["iqr_ms"] = [float(q[0]), float(q[1])]
    for runner in runners.values():
        runner.close()
    runners.clear()
    gc.collect()
    return result


def run_cell_solo(
    wl_name: str,
    opt_name: str,
    feature: str,
    libs: list[str],
    repeats: int,
    rounds: int,
    gap_ms: float,
    verbose: bool,
) -> dict:
    """Each library alone in a fresh process, ``rounds`` times, rotating the order.

    A child process runs this script for one (cell, library) and writes its
    samples to a JSON file. No other library's threads, heap or caches share
    the process, and pairing the libraries round by round (processes run back
    to back) cancels slow drifts of the machine: ``ratio`` reports the median
    of the per-round ratios with their range.
    """
    import subprocess
    import tempfile

    result: dict = {lib: {"status": "ok", "times_ms": [], "round_medians": []} for lib in libs}
    row_name = opt_name + (f"+{feature}" if feature else "")
    for r in range(rounds):
        for lib in libs[r % len(libs) :] + libs[: r % len(libs)]:
            if result[lib]["status"] != "ok":
                continue
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "cell.json")
                cmd = [
                    sys.executable, os.path.abspath(__file__), "--workloads", wl_name,
                    "--optimizers", opt_name, "--libs", lib, "--repeats", str(repeats),
                    "--gap-ms", str(gap_ms), "--json", out, "--cell-feature", feature,
                ]  # fmt: skip
                proc = None
                try:
                    proc = subprocess.run(
                        cmd, capture_output=True, text=True, timeout=SOLO_TIMEOUT_S
                    )
                    with open(out) as f:
                        rows = json.load(f)["results"]
                    child = next(
                        x["libs"][lib]
                        for x in rows
                        if x.get("workload") == wl_name and x.get("optimizer") == row_name
                    )
                except subprocess.TimeoutExpired:
                    child = {"status": "n/a", "reason": f"timed out after {SOLO_TIMEOUT_S}s"}
                except (OSError, ValueError, KeyError, StopIteration):
                    err = proc.stderr if proc is not None else ""
                    tail = (err or "").strip().splitlines()[-1:] or ["no output"]
                    child = {"status": "n/a", "reason": f"child failed: {tail[0][:100]}"}
                    if verbose:
                        print(err, file=sys.stderr)
            if child["status"] != "ok":
                result[lib] = child
                continue
            res = result[lib]
            res.setdefault("first_step_s", child["first_step_s"])
            res["times_ms"] += child["times_ms"]
            res["round_medians"].append(child["median_ms"])
            if "step_mem_mb" in child:
                res["step_mem_mb"] = max(res.get("step_mem_mb", 0.0), child["step_mem_mb"])
    for res in result.values():
        if res["status"] == "ok":
            t = res["times_ms"]
            res["median_ms"] = statistics.median(res["round_medians"])
            res["min_ms"] = min(t)
            q = np.percentile(t, [25, 75])
            res["iqr_ms"] = [float(q[0]), float(q[1])]
    return result


def touched_rows_bound_ms(wl: Workload, repeats: int) -> float:
    """Median time of the least work a lazy sparse Adam step must do on ``wl``.

    Sum the duplicate rows (unique + segment sum), gather the seen rows of
    ``var``, ``m`` and ``v``, and scatter the three back: what LazyAdam does,
    minus its arithmetic. The W4 reference point for LazyAdam.
    """
    grad = wl.grads[0]
    arrays = [tf.Variable(wl.init_values[0]) for _ in range(3)]

    @tf.function
    def touch():
        rows, inverse = tf.unique(grad.indices)
        summed = tf.math.unsorted_segment_sum(grad.values, inverse, tf.size(rows))
        for array in arrays:
            array.scatter_update(tf.IndexedSlices(tf.gather(array, rows) + summed, rows))
        return tf.size(rows)

    touch()
    times = []
    for _ in range(max(repeats, 5)):
        t0 = time.perf_counter()
        touch().numpy()
        times.append((time.perf_counter() - t0) * 1e3)
    arrays.clear()
    gc.collect()
    return statistics.median(times)


# ---------------------------------------------------------------------- output
def fmt_cell(res: dict | None) -> str:
    if res is None:
        return "-"
    if res["status"] != "ok":
        return f"n/a ({res['reason']})"
    return f"{res['median_ms']:.2f}"


def ratio(cell: dict, a: str, b: str) -> str:
    ra, rb = cell.get(a), cell.get(b)
    if not ra or not rb or ra["status"] != "ok" or rb["status"] != "ok":
        return "-"
    pa, pb = ra.get("round_medians"), rb.get("round_medians")
    if pa and pb and len(pa) == len(pb) and len(pa) > 1:  # --solo-rounds: pair by round
        rs = sorted(x / y for x, y in zip(pa, pb))
        return f"{statistics.median(rs):.3f} ({rs[0]:.2f}-{rs[-1]:.2f})"
    return f"{ra['median_ms'] / rb['median_ms']:.3f}"


def markdown_table(results: list[dict]) -> str:
    lines = [
        "| workload | optimizer | keras_opt ms | tf_keras ms | keras3 ms | keras3 jit ms "
        "| ratio vs tf_keras | ratio vs keras3 | ratio vs keras3 jit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        if "libs" not in row:  # the touched-rows bound, printed on its own
            continue
        c = row["libs"]
        lines.append(
            f"| {row['workload']} | {row['optimizer']} | {fmt_cell(c.get('keras_opt'))} "
            f"| {fmt_cell(c.get('tf_keras'))} | {fmt_cell(c.get('keras3'))} "
            f"| {fmt_cell(c.get('keras3_jit'))} | {ratio(c, 'keras_opt', 'tf_keras')} "
            f"| {ratio(c, 'keras_opt', 'keras3')} | {ratio(c, 'keras_opt', 'keras3_jit')} |"
        )
    return "\n".join(lines)


def parse_list(value: str, allowed, upper=False) -> list[str]:
    items = [s.strip() for s in value.split(",") if s.strip()]
    items = [s.upper() if upper else s.lower() for s in items]
    bad = [s for s in items if s not in allowed]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {list(allowed)}")
    return items


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workloads", default=",".join(ALL_WORKLOADS))
    p.add_argument("--optimizers", default=",".join(ALL_OPTIMIZERS))
    p.add_argument("--libs", default=",".join(ALL_LIBS))
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="timed interleaved rounds per cell (default per workload: "
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_REPEATS.items())
        + ")",
    )
    p.add_argument(
        "--features",
        default="",
        help="also time rows with Keras 3 base features: " + ",".join(FEATURE_KWARGS),
    )
    p.add_argument("--json", default=None, help="also write results (with raw samples) here")
    p.add_argument("--verbose", action="store_true", help="print tracebacks of failures")
    p.add_argument("--render", default=None, help="only print the table of a saved --json file")
    p.add_argument("--torch", action="store_true", help="add torch's fused optimizers (CPU)")
    p.add_argument(
        "--gap-ms",
        type=float,
        default=0.0,
        help="untimed pause before each timed step, so that the thread pool of the library "
        "timed before (TF's Eigen pool, torch's OpenMP) has stopped spinning",
    )
    p.add_argument(
        "--solo-rounds",
        type=int,
        default=0,
        help="run each library alone in its own process, this many rounds per cell, "
        "rotating the order; ratios are medians of per-round ratios (with their range)",
    )
    p.add_argument("--cell-feature", default=None, help=argparse.SUPPRESS)  # a solo child
    args = p.parse_args(argv)
    global GAP_S
    GAP_S = args.gap_ms / 1000.0
    if args.render:
        with open(args.render) as f:
            data = json.load(f)
        print(markdown_table(data["results"]))
        print()
        print(fused_table(data["results"], data["meta"].get("bandwidth_gbs")))
        print()
        print(memory_table(data["results"]))
        return 0
    workloads = parse_list(args.workloads, ALL_WORKLOADS, upper=True)
    optimizers = parse_list(args.optimizers, ALL_OPTIMIZERS)
    libs = parse_list(args.libs, ALL_LIBS + EXTRA_LIBS)
    features = [""] + parse_list(args.features, FEATURE_KWARGS)
    if args.cell_feature is not None:  # a --solo-rounds child times exactly one row
        features = [args.cell_feature]
    if args.torch and "torch_fused" not in libs:
        libs.append("torch_fused")
    global BANDWIDTH_GBS
    BANDWIDTH_GBS = measure_bandwidth_gbs()
    print(
        f"# memory bandwidth (numpy copy, 256 MiB, 3 bytes moved per byte copied): "
        f"{BANDWIDTH_GBS:.1f} GB/s",
        flush=True,
    )

    import keras
    import tf_keras

    print(
        f"# tensorflow {tf.__version__}, tf_keras {tf_keras.__version__}, "
        f"keras {keras.__version__}, "
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"GPUs: {len(tf.config.list_physical_devices('GPU'))}",
        flush=True,
    )
    results = []
    shapes_cache: dict = {}
    t_start = time.perf_counter()
    for wl_name in workloads:
        wl = Workload(wl_name, shapes_cache)
        repeats = args.repeats or DEFAULT_REPEATS[wl_name]
        print(f"# {wl.describe()}; repeats={repeats}", flush=True)
        for opt_name, feature in [(o, f) for o in optimizers for f in features]:
            t0 = time.perf_counter()
            if args.solo_rounds:
                cell = run_cell_solo(
                    wl_name, opt_name, feature, libs, repeats, args.solo_rounds, args.gap_ms,
                    args.verbose,
                )  # fmt: skip
            else:
                cell = run_cell(wl, opt_name, libs, repeats, args.verbose, feature)
            bound = bound_ms(wl, opt_name, BANDWIDTH_GBS)
            opt_name = opt_name + (f"+{feature}" if feature else "")
            row = {
                "workload": wl_name,
                "optimizer": opt_name,
                "repeats": repeats,
                "libs": cell,
                "bound_ms": bound,
            }
            results.append(row)
            print(
                f"#   {wl_name} {opt_name}: "
                + ", ".join(f"{lib}={fmt_cell(cell[lib])}" for lib in libs)
                + f"  (cell {time.perf_counter() - t0:.1f}s; trace+first step: "
                + ", ".join(
                    f"{lib} {cell[lib]['first_step_s']:.1f}s"
                    for lib in libs
                    if cell[lib]["status"] == "ok"
                )
                + ")",
                flush=True,
            )
            if args.json:  # written after every cell so a killed run keeps its data
                write_json(args.json, results)
        if wl.sparse and "lazy_adam" in optimizers:
            bound = touched_rows_bound_ms(wl, repeats)
            results.append({"workload": wl_name, "touched_rows_bound_ms": bound})
            print(f"#   {wl_name} touched-rows bound (gather + scatter of var, m, v): "
                  f"{bound:.2f} ms", flush=True)  # fmt: skip
        del wl
        gc.collect()
    print(f"# total {time.perf_counter() - t_start:.1f}s\n", flush=True)
    print(markdown_table(results))
    print()
    print(fused_table(results, BANDWIDTH_GBS))
    print()
    print(memory_table(results))
    slow = [
        r
        for r in results
        if "libs" in r
        and all(r["libs"].get(k, {}).get("status") == "ok" for k in ("keras_opt", "tf_keras"))
        and r["libs"]["keras_opt"]["median_ms"] > 1.05 * r["libs"]["tf_keras"]["median_ms"]
    ]
    if slow:
        cells = ", ".join(f"{r['workload']}/{r['optimizer']}" for r in slow)
        print(f"\n# keras_opt > 1.05x tf_keras on: {cells}")
    if args.json:
        write_json(args.json, results)
    return 0


def write_json(path: str, results: list[dict]) -> None:
    import keras
    import tf_keras

    meta = {
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
        "keras": keras.__version__,
        "cpus": os.cpu_count(),
        "argv": sys.argv[1:],
        "warmup_steps": WARMUP_STEPS,
        "bandwidth_gbs": BANDWIDTH_GBS,
    }
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)


# ------------------------------------------- fused kernels: bound and torch rows
BANDWIDTH_GBS = None
# Per element: slots read + written by each rule (var is read + written, grad read).
SLOTS = {
    "adam": 2,
    "sgd": 1,
    "adagrad": 1,
    "rmsprop": 1,
    "ftrl": 2,
    "adamw": 2,
    "lion": 1,
    "lazy_adam": 2,
    "nadam": 2,
}


def measure_bandwidth_gbs() -> float:
    """Memory bandwidth from a 256 MiB numpy copy, best of 5.

    A copy moves 3 bytes per byte copied: the source read, the destination
    read for ownership and its write back (an optimizer step reads every
    buffer it writes, so it pays no extra read for ownership).
    """
    src = np.ones(64 << 20, np.float32)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 3 * src.nbytes / best / 1e9


def bound_ms(wl: Workload, opt_name: str, bandwidth_gbs) -> float | None:
    """Memory-traffic lower bound of one step: var and slots read + written, grad read.

    W4 (sparse): Adam's exact update (and the composite ops of tf_keras) decays
    the whole m and v, so it touches every element like a dense step; RMSprop
    without momentum decays the whole ms and updates the gradient's rows of
    var; the other rules touch only the gradient's rows.
    """
    if not bandwidth_gbs:
        return None
    slots = SLOTS[opt_name]
    rows = wl.num_unique_rows * wl.shapes[0][1] if wl.sparse else 0
    if wl.sparse and opt_name in ("adam", "adamw"):  # the exact path decays all of m, v
        nbytes = 4 * wl.num_params * 2 * (1 + slots) + 4 * wl.grads[0].values.shape.num_elements()
    elif wl.sparse and opt_name == "nadam":  # decays all of m, v; updates var's rows
        nbytes = 4 * wl.num_params * 2 * slots + 4 * rows * 3
    elif wl.sparse and opt_name == "rmsprop":
        nbytes = 4 * wl.num_params * 2 + 4 * rows * 3
    elif wl.sparse:
        nbytes = 4 * rows * (2 * (1 + slots) + 1)
    else:
        nbytes = 4 * wl.num_params * (2 * (1 + slots) + 1)
    return nbytes / (bandwidth_gbs * 1e9) * 1e3


class TorchRunner:
    """torch.optim.<Opt> with fused=True (foreach where fused is not offered) on CPU."""

    TORCH_CLASS = {"adam": "Adam", "sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop"}

    def __init__(self, lib: str, opt_name: str, wl: Workload):
        import torch

        if opt_name not in self.TORCH_CLASS:
            raise NotImplementedError(f"torch has no {opt_name}")
        torch.set_num_threads(os.cpu_count() or 1)
        self.params = [
            torch.nn.Parameter(torch.from_numpy(v.numpy().copy())) for v in wl.init_values
        ]
        grads = []
        for g in wl.grads:
            if isinstance(g, tf.IndexedSlices):  # densified, as Keras 3 does
                g = tf.convert_to_tensor(g)
            grads.append(torch.from_numpy(g.numpy().copy()))
        for p, g in zip(self.params, grads):
            p.grad = g
        kwargs = {
            "adam": dict(lr=1e-3, eps=1e-7),
            "sgd": dict(lr=0.01, momentum=0.9),
            "adagrad": dict(lr=1e-3, initial_accumulator_value=0.1, eps=1e-7),
            "rmsprop": dict(lr=1e-3, alpha=0.9, eps=1e-7),
        }[opt_name]
        cls = getattr(torch.optim, self.TORCH_CLASS[opt_name])
        try:
            self.opt = cls(self.params, fused=True, **kwargs)
            self.opt.step()
        except (RuntimeError, TypeError, ValueError):
            self.opt = cls(self.params, foreach=True, **kwargs)
        self.step_fn = self.opt.step
        self.rss_built_kb = _mark_built()
        t0 = time.perf_counter()
        self.step()
        self.first_step_s = time.perf_counter() - t0
        for _ in range(WARMUP_STEPS):
            self.step()

    def step(self):
        self.opt.step()

    def close(self):
        del self.opt, self.params


def memory_table(results: list[dict]) -> str:
    """Peak resident memory the steps add (MB) beyond variables, slots and gradients.

    Measured where a library runs alone in its process (``--solo-rounds``, or
    one library in ``--libs``): VmHWM after the timed steps minus VmRSS once the
    optimizer was built. In-place updates add ~0; temporaries and copies of a
    variable or slot show up in full.
    """
    libs = [lib for lib in ALL_LIBS + EXTRA_LIBS]
    rows = [
        r for r in results if "libs" in r and any("step_mem_mb" in c for c in r["libs"].values())
    ]
    if not rows:
        return ""
    present = [lib for lib in libs if any(lib in r["libs"] for r in rows)]
    lines = [
        "memory the steps add at their peak, MB, beyond variables, slots and gradients "
        "(VmHWM after the steps - VmRSS once built; only where a library ran alone)",
        "",
        "| workload | optimizer | " + " | ".join(present) + " |",
        "|---|---|" + "---|" * len(present),
    ]
    for r in rows:
        cells = []
        for lib in present:
            c = r["libs"].get(lib)
            ok = c and c.get("status") == "ok" and "step_mem_mb" in c
            cells.append(f"{c['step_mem_mb']:.0f}" if ok else "-")
        lines.append(f"| {r['workload']} | {r['optimizer']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fused_table(results: list[dict], bandwidth_gbs) -> str:
    """keras_opt fused vs per-variable, the others and the memory bound."""
    lines = [
        f"fused kernels (bound: bytes moved / {bandwidth_gbs or 0:.1f} GB/s copy bandwidth)",
        "",
        "| workload | optimizer | fused ms | per-var ms | tf_keras ms | keras3 ms | keras3 jit ms "
        "| torch ms | bound ms | fused/bound | fused/per-var | fused/keras3 jit | fused/torch |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results:
        if "libs" not in row:  # the touched-rows bound row of LazyAdam
            continue
        c = row["libs"]
        bound = row.get("bound_ms")
        fused = c.get("keras_opt")
        fb = (
            f"{fused['median_ms'] / bound:.2f}"
            if bound and fused and fused["status"] == "ok"
            else "-"
        )
        lines.append(
            f"| {row['workload']} | {row['optimizer']} | {fmt_cell(fused)} "
            f"| {fmt_cell(c.get('keras_opt_pv'))} | {fmt_cell(c.get('tf_keras'))} "
            f"| {fmt_cell(c.get('keras3'))} | {fmt_cell(c.get('keras3_jit'))} "
            f"| {fmt_cell(c.get('torch_fused'))} | {f'{bound:.2f}' if bound else '-'} | {fb} "
            f"| {ratio(c, 'keras_opt', 'keras_opt_pv')} | {ratio(c, 'keras_opt', 'keras3_jit')} "
            f"| {ratio(c, 'keras_opt', 'torch_fused')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
