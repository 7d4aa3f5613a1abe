"""Builds and loads keras_opt's fused-kernel op library.

pip builds wheels in an isolated environment where TensorFlow cannot be
imported, so the library is built on first use instead: against the
TensorFlow that is imported (``tf.sysconfig`` flags), with the system C++
compiler (``$CXX``, default ``g++``), into a cache directory keyed by the
TensorFlow version and build flags, the compiler, the machine and the sources.
A file lock makes concurrent first uses build once. ``python3 -m
keras_opt.kernels build`` builds ahead of time.

The element loops are compiled once per instruction set (SSE2, AVX2,
AVX-512) and the op picks one from the CPU at load time, so a cached library
runs on any x86-64 CPU; ``-ffp-contract=off`` keeps multiply-adds unfused so
the results match TensorFlow's kernels bit for bit.

Environment:
  KERAS_OPT_FUSED=0            never build or use the fused kernels
  KERAS_OPT_KERNEL_CACHE=DIR   cache directory (default ~/.cache/keras_opt/kernels)
  CXX                          the C++ compiler
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading

logger = logging.getLogger("keras_opt.kernels")

_SOURCES = ("fused_math.h", "fused_math.cc", "fused_ops.cc")
_LIB_NAME = "keras_opt_fused.so"
_ISA_FLAGS = {
    "sse2": [],
    "avx2": ["-mavx2"],
    "avx512": ["-mavx512f", "-mavx512vl", "-mprefer-vector-width=512"],
}
_COMMON_FLAGS = ["-std=c++17", "-O3", "-fPIC", "-ffp-contract=off", "-fno-math-errno"]

_lock = threading.Lock()
_state: dict = {}


class BuildError(RuntimeError):
    """The op library could not be built or loaded."""


def source_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def cache_root() -> str:
    root = os.environ.get("KERAS_OPT_KERNEL_CACHE")
    if root:
        return root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "keras_opt", "kernels")


def compiler() -> str:
    cxx = os.environ.get("CXX") or "g++"
    path = shutil.which(cxx)
    if not path:
        raise BuildError(f"no C++ compiler: {cxx!r} is not on PATH")
    return path


def _compiler_version(cxx: str) -> str:
    try:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise BuildError(f"C++ compiler {cxx!r} does not run: {exc}") from exc
    if out.returncode != 0:
        raise BuildError(f"C++ compiler {cxx!r} does not run: {out.stderr.strip()[:200]}")
    return out.stdout.splitlines()[0] if out.stdout else cxx


def build_key(cxx: str) -> str:
    import tensorflow as tf

    h = hashlib.sha256()
    for part in (
        tf.__version__,
        tf.version.GIT_VERSION,
        " ".join(tf.sysconfig.get_compile_flags()),
        " ".join(tf.sysconfig.get_link_flags()),
        _compiler_version(cxx),
        platform.machine(),
        sys.platform,
        " ".join(_COMMON_FLAGS) + repr(sorted(_ISA_FLAGS.items())),
    ):
        h.update(part.encode() + b"\0")
    for name in _SOURCES:
        with open(os.path.join(source_dir(), name), "rb") as f:
            h.update(f.read())
    return f"tf{tf.__version__}-{platform.machine()}-{h.hexdigest()[:16]}"


@contextlib.contextmanager
def _file_lock(path: str):
    import fcntl

    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(cmd: list[str]) -> None:
    logger.debug("keras_opt fused kernels: %s", " ".join(cmd))
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise BuildError(
            f"command failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}"
        )


def _compile(cxx: str, out_path: str) -> None:
    import tensorflow as tf

    src = source_dir()
    tf_cflags = tf.sysconfig.get_compile_flags()
    tf_lflags = tf.sysconfig.get_link_flags()
    with tempfile.TemporaryDirectory(prefix="keras_opt_build_") as tmp:
        jobs = []
        objs = []
        for isa, flags in _ISA_FLAGS.items():
            obj = os.path.join(tmp, f"math_{isa}.o")
            cmd = [
                cxx,
                *_COMMON_FLAGS,
                *flags,
                f"-DKO_ISA={isa}",
                "-c",
                os.path.join(src, "fused_math.cc"),
                "-o",
                obj,
            ]
            jobs.append(cmd)
            objs.append(obj)
        ops_obj = os.path.join(tmp, "ops.o")
        jobs.append(
            [
                cxx,
                *tf_cflags,
                "-O2",
                "-fPIC",
                "-ffp-contract=off",
                "-Wno-deprecated-declarations",
                f"-I{src}",
                "-c",
                os.path.join(src, "fused_ops.cc"),
                "-o",
                ops_obj,
            ]
        )
        objs.append(ops_obj)
        procs = [
            subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for cmd in jobs
        ]
        errors = []
        for cmd, proc in zip(jobs, procs):
            _, err = proc.communicate()
            if proc.returncode != 0:
                errors.append(f"{' '.join(cmd)}\n{err[-2000:]}")
        if errors:
            raise BuildError("compilation failed:\n" + "\n".join(errors))
        tmp_lib = os.path.join(tmp, _LIB_NAME)
        _run([cxx, "-shared", *objs, "-o", tmp_lib, *tf_lflags])
        partial = out_path + f".{os.getpid()}.tmp"
        shutil.copyfile(tmp_lib, partial)
        os.replace(partial, out_path)


def library_path(build: bool = True) -> str:
    """Path of the built library for this TensorFlow and compiler; builds it if needed."""
    cxx = compiler()
    key = build_key(cxx)
    directory = os.path.join(cache_root(), key)
    path = os.path.join(directory, _LIB_NAME)
    if os.path.exists(path):
        return path
    if not build:
        raise BuildError(f"not built yet: {path}")
    os.makedirs(directory, exist_ok=True)
    with _file_lock(os.path.join(directory, "build.lock")):
        if not os.path.exists(path):  # another process may have built it meanwhile
            logger.info("keras_opt: building the fused optimizer kernels into %s", directory)
            _compile(cxx, path)
    return path


def disabled_by_env() -> bool:
    return os.environ.get("KERAS_OPT_FUSED", "1").strip().lower() in ("0", "false", "no", "off")


def load():
    """The loaded op module, or None (the reason is in `status()`). Never raises."""
    with _lock:
        if "module" in _state:
            return _state["module"]
        module, reason, path = None, None, None
        if disabled_by_env():
            reason = "disabled by KERAS_OPT_FUSED=0"
        else:
            try:
                import tensorflow as tf

                path = library_path()
                module = tf.load_op_library(path)
                for op in (
                    "keras_opt_fused_apply",
                    "keras_opt_fused_sparse_apply_adam",
                    "keras_opt_fused_sparse_apply_rms_prop",
                ):
                    if not hasattr(module, op):
                        raise BuildError(f"{path} has no op {op}")
            except Exception as exc:  # noqa: BLE001 - any failure means: fall back
                module = None
                reason = f"{type(exc).__name__}: {exc}"
                logger.debug("keras_opt fused kernels unavailable, per-variable path: %s", reason)
        _state.update(module=module, reason=reason, path=path)
        return module


def preload() -> None:
    """Loads the library at import if it is already built (never builds, never raises).

    A SavedModel whose traced functions hold fused ops can then be loaded by a
    process that imports keras_opt, as the ops are registered by then.
    """
    if disabled_by_env() or "module" in _state:
        return
    try:
        path = os.path.join(cache_root(), build_key(compiler()), _LIB_NAME)
    except Exception:  # noqa: BLE001 - no compiler etc.: first use decides
        return
    if os.path.exists(path):
        load()


def status() -> dict:
    """{'available': bool, 'reason': str or None, 'library': path or None, 'isa': str or None}."""
    module = load()
    isa = None
    if module is not None:
        import tensorflow as tf

        with tf.init_scope():
            isa = module.keras_opt_fused_isa().numpy().decode()
    return {
        "available": module is not None,
        "reason": _state.get("reason"),
        "library": _state.get("path"),
        "isa": isa,
    }


def reset_for_tests() -> None:
    """Forgets the load result (a loaded library stays loaded in TensorFlow)."""
    with _lock:
        _state.clear()
