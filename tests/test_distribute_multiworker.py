"""keras_opt under MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1.

Two processes (tests/workers/dist_mwms.py) form a cluster through ``TF_CONFIG``
on free local ports and train every configuration of
dist_configs.MWMS_CONFIGS with keras_opt and tf_keras side by side; each also
trains the one-process reference (no strategy, whole global batch). The tests
check that the workers end with identical variables and slots, that keras_opt
equals tf_keras exactly, that both equal one-process training (float32
tolerance), and that a checkpoint written under the strategy restores without
one. The workers run under a hard deadline, in their own process groups, and
are started again on fresh ports if a port was taken.

The last tests check that plumbing (tests/dist_utils.py) itself: a worker
whose peer never comes is killed at the deadline with its whole process group,
and a port clash is retried.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest

import dist_utils

sys.path.insert(0, dist_utils.WORKERS_DIR)

from dist_configs import (  # noqa: E402 (needs the workers directory on the path)
    CKPT_STEPS,
    MWMS_CONFIGS,
    MWMS_WORKERS,
    STEPS,
)

ATOL = RTOL = 1e-6  # as in test_distribute_mirrored.py
TIMEOUT_S = 120  # measured 11-24 s wall on 2 busy cores
NAMES = list(MWMS_CONFIGS)


@pytest.fixture(scope="module")
def workers(tmp_path_factory):
    """Runs the two workers once.

    Returns (output directory, [(arrays, metadata) per worker], the RunResult).
    """
    out = tmp_path_factory.mktemp("mwms")

    def specs():
        cluster = dist_utils.cluster_spec(worker=MWMS_WORKERS)
        return [
            dist_utils.Spec(
                f"worker{i}",
                "dist_mwms.py",
                [str(out)],
                env={
                    "TF_CONFIG": dist_utils.tf_config(cluster, "worker", i),
                    "DIST_WORKER_DEADLINE": str(TIMEOUT_S - 20),
                },
            )
            for i in range(MWMS_WORKERS)
        ]

    run = dist_utils.run_with_port_retry(specs, TIMEOUT_S, str(out / "logs"))
    print(dist_utils.timing_line("MultiWorkerMirroredStrategy workers", run))
    if not run.ok:
        pytest.fail(run.report())
    loaded = []
    for i in range(MWMS_WORKERS):
        arrays = dict(np.load(out / f"mwms_{i}.npz"))
        with open(out / f"mwms_{i}.json") as f:
            loaded.append((arrays, json.load(f)))
    return out, loaded, run


def _meta(workers, name: str, worker: int = 0) -> dict:
    meta = workers[1][worker][1].get(name)
    if meta is None:
        pytest.fail(f"worker {worker} wrote no result for {name}")
    if "error" in meta:
        pytest.fail(f"{name} failed in worker {worker}:\n{meta['error']}")
    return meta


def _state(workers, prefix: str, worker: int = 0) -> dict[str, np.ndarray]:
    arrays = workers[1][worker][0]
    start = prefix + "/"
    return {
        k[len(start) :]: v
        for k, v in arrays.items()
        if k.startswith(start) and not k[len(start) :].startswith(("saved/", "reference/"))
    }


def test_each_worker_knows_its_task_and_is_gone(workers):
    for i in range(MWMS_WORKERS):
        assert workers[1][i][1]["_task"] == {"type": "worker", "index": i}
        assert workers[1][i][1]["_done"] is True
    assert all(dist_utils.is_gone(p.pid) for p in workers[2].processes)


@pytest.mark.parametrize("name", NAMES)
def test_workers_end_identical(workers, name):
    """Variables, slots and iterations are bit-identical on both workers."""
    for i in range(MWMS_WORKERS):
        _meta(workers, name, i)
    for lib in ("keras_opt", "tf_keras"):
        first = _state(workers, f"{name}/{lib}", 0)
        assert first
        for i in range(1, MWMS_WORKERS):
            other = _state(workers, f"{name}/{lib}", i)
            assert sorted(other) == sorted(first)
            for key in first:
                np.testing.assert_array_equal(other[key], first[key], err_msg=f"{lib} {key}")


@pytest.mark.parametrize("name", NAMES)
def test_matches_tf_keras(workers, name):
    meta = _meta(workers, name)
    ours = _state(workers, f"{name}/keras_opt")
    theirs = _state(workers, f"{name}/tf_keras")
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert meta["describe"]["keras_opt"] == meta["describe"]["tf_keras"]


@pytest.mark.parametrize("name", NAMES)
def test_matches_one_process_training(workers, name):
    """Equal to training in one process, no strategy, on the whole global batch."""
    _meta(workers, name)
    init = workers[1][0][0]
    for lib in ("keras_opt", "tf_keras"):
        state = _state(workers, f"{name}/{lib}")
        reference = _state(workers, f"{name}/{lib}/reference")
        assert int(state["iterations"]) == STEPS
        state = {k: v for k, v in state.items() if not k.startswith("spread/")}
        reference = {k: v for k, v in reference.items() if not k.startswith("spread/")}
        assert sorted(state) == sorted(reference)
        for key in state:
            np.testing.assert_allclose(
                state[key], reference[key], rtol=RTOL, atol=ATOL, err_msg=f"{lib} {key}"
            )
        for var in ("embedding", "kernel", "bias"):
            moved = np.max(np.abs(state[f"var/{var}"] - init[f"init/var/{var}"]))
            assert moved > 100 * ATOL, f"{lib}: {var} did not train"


@pytest.mark.parametrize("name", [n for n in NAMES if MWMS_CONFIGS[n]["restore_replicas"] is None])
def test_optimizer_variables_are_mirrored(workers, name):
    """Slots, iterations and hyperparameters are MirroredVariables on the worker's CPU."""
    for i in range(MWMS_WORKERS):
        info = _meta(workers, name, i)["describe"]["keras_opt"]
        assert info["iterations_type"] == "MirroredVariable"
        assert info["hyper_types"] == ["MirroredVariable"]
        for slot, slot_info in info["slots"].items():
            assert slot_info["type"] == "MirroredVariable", slot
            assert slot_info["devices"] == [f"/job:worker/replica:0/task:{i}/device:CPU:0"]
            assert slot_info["devices"] == slot_info["var_devices"]


@pytest.mark.parametrize(
    "name", [n for n in NAMES if MWMS_CONFIGS[n]["restore_replicas"] is not None]
)
def test_checkpoint_restores_without_strategy(workers, name):
    """Saved under the strategy after CKPT_STEPS, restored with none, every value consumed.

    (The continued training equals uninterrupted one-process training: see
    test_matches_one_process_training.)
    """
    out = workers[0]
    for i in range(MWMS_WORKERS):
        meta = _meta(workers, name, i)
        for lib in ("keras_opt", "tf_keras"):
            assert meta["restore"][lib]["consumed"] is True
            saved = workers[1][i][0][f"{name}/{lib}/saved/iterations"]
            assert int(saved) == CKPT_STEPS
    for lib in ("keras_opt", "tf_keras"):
        assert os.path.exists(out / "ckpt" / f"{name}-{lib}" / "checkpoint"), "chief's checkpoint"


# ----------------------------------------------------------------------------- the plumbing


def test_deadline_kills_the_whole_process_group(tmp_path):
    """A hung worker and the child it started are both killed at the deadline."""
    pid_file = tmp_path / "grandchild.pid"
    pids = {}
    run = dist_utils.run_processes(
        [dist_utils.Spec("hang", "dist_fake.py", ["hang", str(pid_file)])],
        timeout_s=3,
        log_dir=str(tmp_path),
        on_start=pids.update,
    )
    assert run.timed_out and not run.ok
    assert run.processes[0].killed
    assert "hanging" in run.processes[0].log
    grandchild = int(pid_file.read_text())
    assert dist_utils.is_gone(pids["hang"]) and dist_utils.is_gone(grandchild)


def test_port_clash_is_retried_on_fresh_ports(tmp_path):
    """A server that finds its port taken makes the run start again on new ports."""
    import socket

    holder = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    taken = holder.getsockname()[1]
    ports = iter([taken, dist_utils.free_ports(1)[0]])
    try:
        run = dist_utils.run_with_port_retry(
            lambda: [dist_utils.Spec("server", "dist_fake.py", ["bind", str(next(ports))])],
            timeout_s=30,
            log_dir=str(tmp_path),
        )
    finally:
        holder.close()
    assert run.ok, run.report()
    assert run.attempts == 2
    assert "bound" in run.processes[0].log


def test_tf_config_names_the_task():
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"], "ps": ["127.0.0.1:3"]}
    config = json.loads(dist_utils.tf_config(cluster, "worker", 1))
    assert config == {"cluster": cluster, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="chief"):
        dist_utils.tf_config(cluster, "chief", 0)
    with pytest.raises(ValueError, match="'ps', 1"):
        dist_utils.tf_config(cluster, "ps", 1)


def test_worker_without_its_peer_is_killed_at_the_deadline(tmp_path):
    """The real hazard: one MultiWorkerMirroredStrategy worker alone waits forever."""
    cluster = dist_utils.cluster_spec(worker=2)
    pids = {}
    run = dist_utils.run_processes(
        [
            dist_utils.Spec(
                "lonely_worker",
                "dist_mwms.py",
                [str(tmp_path)],
                env={"TF_CONFIG": dist_utils.tf_config(cluster, "worker", 0)},
            )
        ],
        timeout_s=15,
        log_dir=str(tmp_path / "logs"),
        on_start=pids.update,
    )
    assert run.timed_out and run.processes[0].killed, run.report()
    assert dist_utils.is_gone(pids["lonely_worker"])
    assert not os.path.exists(tmp_path / "mwms_0.json")  # it never got to train
