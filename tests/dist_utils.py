"""Subprocess plumbing for the tests: workers under deadlines, ports, TF_CONFIG.

Distributed TensorFlow processes hang forever when a peer is missing, and a
strategy that needs logical devices or collectives must be set up before
TensorFlow initializes. The tests therefore run TensorFlow in worker scripts
(``tests/workers/dist_*.py``) started here, each:

* in its own session (``start_new_session=True``), so that the whole process
  group can be killed, grandchildren included;
* under a hard deadline: past it, every process of the run is killed and the
  test fails with the tail of each process's log;
* with its output in a log file (a full pipe would block the worker);
* with its CPU time measured (``os.wait4``), so runs on a loaded machine can be
  judged by CPU seconds as well as wall seconds.

Nothing started here outlives the call that started it; an ``atexit`` hook
kills whatever a crash of the test process itself could leave behind.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Callable, Mapping, Sequence

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)
WORKERS_DIR = os.path.join(TESTS_DIR, "workers")

# Messages that mean a port chosen as free was taken before the server bound it.
PORT_CLASH_MARKERS = ("Address already in use", "Failed to add port", "Could not start gRPC server")

_LIVE_GROUPS: set[int] = set()


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    _LIVE_GROUPS.discard(pid)


@atexit.register
def _kill_leftovers() -> None:
    for pid in list(_LIVE_GROUPS):
        _kill_group(pid)


def free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1 that were free a moment ago.

    All sockets are held open together so the kernel hands out distinct ports;
    another process can still take one before a server binds it, which callers
    handle by retrying (see `run_with_port_retry`).
    """
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def cluster_spec(**jobs: int) -> dict[str, list[str]]:
    """A cluster of ``jobs`` (job name -> task count) on free local ports."""
    ports = iter(free_ports(sum(jobs.values())))
    return {job: [f"127.0.0.1:{next(ports)}" for _ in range(n)] for job, n in jobs.items() if n}


def tf_config(cluster: Mapping[str, Sequence[str]], task_type: str, task_index: int) -> str:
    """The ``TF_CONFIG`` JSON that tells a process its cluster and its own task."""
    if task_type not in cluster or not 0 <= task_index < len(cluster[task_type]):
        raise ValueError(
            f"task ({task_type!r}, {task_index}) is not in the cluster {dict(cluster)}"
        )
    return json.dumps(
        {
            "cluster": {job: list(addresses) for job, addresses in cluster.items()},
            "task": {"type": task_type, "index": task_index},
        }
    )


def worker_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment of a worker: keras_opt and tests/ importable, quiet TF, no TF_CONFIG."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    path = [REPO_ROOT, TESTS_DIR, WORKERS_DIR]
    if env.get("PYTHONPATH"):
        path.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(path)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


@dataclasses.dataclass
class ProcessResult:
    """How one process of a run ended."""

    name: str
    pid: int
    returncode: int | None  # negative: killed by that signal
    log: str
    cpu_s: float
    wall_s: float
    daemon: bool
    killed: bool  # still running when the run ended, and killed then

    def tail(self, chars: int = 4000) -> str:
        state = "killed at the end of the run" if self.killed else f"exit {self.returncode}"
        return f"--- {self.name} ({state}) ---\n{self.log[-chars:]}"


@dataclasses.dataclass
class RunResult:
    """The processes of one run, in start order."""

    processes: list[ProcessResult]
    timed_out: bool
    wall_s: float
    attempts: int = 1  # runs started (more than one after a port clash)

    @property
    def ok(self) -> bool:
        return not self.timed_out and all(p.returncode == 0 for p in self.processes if not p.daemon)

    @property
    def cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.processes)

    def port_clash(self) -> bool:
        return any(m in p.log for p in self.processes for m in PORT_CLASH_MARKERS)

    def report(self) -> str:
        head = f"timed out after {self.wall_s:.0f} s" if self.timed_out else "a process failed"
        return head + "\n" + "\n".join(p.tail() for p in self.processes)


@dataclasses.dataclass
class Spec:
    """One process to start: a worker script (under tests/workers/) and its arguments."""

    name: str
    script: str
    args: Sequence[str] = ()
    env: Mapping[str, str] | None = None
    # A process that serves others (a tf.distribute.Server) never exits by
    # itself: the run ends when every non-daemon process has exited, and a
    # daemon that exits before that fails the run, unless it is expendable
    # (a worker that a fault test kills on purpose).
    daemon: bool = False
    expendable: bool = False


class _Running:
    def __init__(self, spec: Spec, log_dir: str):
        self.spec = spec
        self.log_path = os.path.join(log_dir, f"{spec.name}.log")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in finish)
        script = os.path.join(WORKERS_DIR, spec.script)
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, script, *spec.args],
            env=worker_env(spec.env),
            cwd=REPO_ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        _LIVE_GROUPS.add(self.proc.pid)
        self.returncode: int | None = None
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self.killed = False

    def poll(self) -> bool:
        """Reaps the process if it exited (recording its CPU time); True when done."""
        if self.returncode is not None:
            return True
        pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self._reaped(status, usage)
        _kill_group(self.proc.pid)  # anything the process left behind in its group
        return True

    def _reaped(self, status, usage) -> None:
        self.returncode = os.waitstatus_to_exitcode(status)
        self.proc.returncode = self.returncode
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.wall_s = time.monotonic() - self.start

    def kill(self) -> None:
        """Kills the whole process group and reaps the process."""
        if self.returncode is None:
            self.killed = True
            _kill_group(self.proc.pid)
            try:
                _, status, usage = os.wait4(self.proc.pid, 0)
                self._reaped(status, usage)
            except ChildProcessError:
                pass

    def finish(self) -> ProcessResult:
        self._log.close()
        with open(self.log_path, "rb") as f:
            log = f.read().decode("utf-8", "replace")
        return ProcessResult(
            self.spec.name,
            self.proc.pid,
            self.returncode,
            log,
            self.cpu_s,
            self.wall_s,
            self.spec.daemon,
            self.killed,
        )


def run_processes(
    specs: Sequence[Spec],
    timeout_s: float,
    log_dir: str,
    on_start: Callable[[dict[str, int]], None] | None = None,
) -> RunResult:
    """Starts ``specs`` together and waits for the non-daemon ones, at most ``timeout_s``.

    When one of them fails, or at the deadline, every process of the run is
    killed (by process group): a distributed peer left alone would wait forever.
    Daemon processes (servers) are killed once the others are done.
    ``on_start`` receives the PIDs by name (e.g. for a test that kills one).
    """
    os.makedirs(log_dir, exist_ok=True)
    start = time.monotonic()
    running: list[_Running] = []
    timed_out = False
    try:
        for spec in specs:
            running.append(_Running(spec, log_dir))
        if on_start is not None:
            on_start({r.spec.name: r.proc.pid for r in running})
        waited = [r for r in running if not r.spec.daemon]
        deadline = start + timeout_s
        while True:
            done = [r.poll() for r in running]
            if all(r.poll() for r in waited):
                break
            failed = any(
                d and not r.spec.expendable and (r.spec.daemon or r.returncode != 0)
                for d, r in zip(done, running)
            )
            if failed:
                break
            if time.monotonic() > deadline:
                timed_out = True
                break
            time.sleep(0.1)
    finally:
        for r in running:
            r.kill()
    results = [r.finish() for r in running]
    return RunResult(results, timed_out, time.monotonic() - start)


def run_worker(
    script: str,
    args: Sequence[str] = (),
    timeout_s: float = 180.0,
    env: Mapping[str, str] | None = None,
) -> str:
    """Runs one worker script (under tests/workers/) to its end; returns its output.

    Fails the calling test with the tail of the output when the worker exits
    non-zero or passes ``timeout_s`` (then its whole process group is killed).
    """
    with tempfile.TemporaryDirectory() as log_dir:
        name = os.path.splitext(os.path.basename(script))[0]
        result = run_processes([Spec(name, script, tuple(args), env)], timeout_s, log_dir)
    if not result.ok:
        pytest.fail(f"{script}: {result.report()}")
    return result.processes[0].log


def worker_result(meta: Mapping[str, dict], name: str) -> dict:
    """The worker's record for configuration ``name``; fails the test if absent or failed."""
    record = meta.get(name)
    if record is None:
        pytest.fail(f"the worker wrote no result for {name}")
    if "error" in record:
        pytest.fail(f"{name} failed in the worker:\n{record['error']}")
    return record


def run_with_port_retry(
    make_specs: Callable[[], Sequence[Spec]],
    timeout_s: float,
    log_dir: str,
    attempts: int = 3,
    on_start: Callable[[dict[str, int]], None] | None = None,
) -> RunResult:
    """`run_processes` with fresh ports (a fresh ``make_specs()``) after a port clash."""
    result = None
    for attempt in range(attempts):
        result = run_processes(
            make_specs(), timeout_s, os.path.join(log_dir, f"try{attempt}"), on_start
        )
        result.attempts = attempt + 1
        if result.ok or not result.port_clash():
            return result
    return result


def is_gone(pid: int, wait_s: float = 5.0) -> bool:
    """True when ``pid`` stops running within ``wait_s`` (absent, or a zombie).

    SIGKILL is delivered asynchronously: an orphaned grandchild may need a moment.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def timing_line(label: str, result: RunResult) -> str:
    """One line for the test log: wall and CPU seconds of a run."""
    per = ", ".join(f"{p.name} {p.cpu_s:.1f}" for p in result.processes)
    return f"{label}: wall {result.wall_s:.1f} s, CPU {result.cpu_s:.1f} s ({per})"
