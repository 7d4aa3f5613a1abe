"""keras_opt under ParameterServerStrategy with a ClusterCoordinator.

Three runs, each in processes of their own (a ParameterServerStrategy rewires its
process's eager context), under hard deadlines:

* tests/workers/dist_ps.py: an in-process cluster (2 workers, 2 ps) whose
  embedding is split into shards by a variable partitioner. For every
  configuration of dist_configs.PS_CONFIGS keras_opt and tf_keras train side by
  side, one step at a time, and their one-device reference is trained too.
  Checked: keras_opt equals tf_keras exactly; both equal one-device training;
  variables reach the optimizer as CachingVariables, the embedding as shards
  with IndexedSlices gradients; each slot lives on the ps of its shard;
  ``get_slot`` of the sharded embedding is a ShardedVariable of the shard
  slots; checkpoints restore under the same or another shard count or no
  strategy, also before the slots exist; asynchronous scheduling applies every
  step.
* tests/workers/dist_ps_fault.py (coordinator and the 2 ps) with two
  dist_ps_server.py worker processes: worker 1 is SIGKILLed mid-training;
  the coordinator finishes on worker 0 and no applied update is lost (the
  definition is in dist_ps_fault.py and test_killed_worker_loses_no_applied_update).
  Its workers never load keras_opt's op library: the step takes the
  per-variable path, and says why.
* tests/workers/dist_ps_fused.py with three dist_ps_server.py processes (1
  worker, 2 ps): the worker and ps 0 load keras_opt's op library, ps 1 does
  not. keras_opt's fused kernels run on ps 0, ps 1's variables fall back, and
  the numbers equal fused_kernels=False bit for bit (steps run by the workers
  in a tf.function, and eager steps run by the coordinator). The in-process cluster
  above, whose ps all have the library, runs them on both ps, also checked
  against fused_kernels=False.
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
    PS_ASYNC_STEPS,
    PS_CONFIGS,
    PS_FUSED_TWINS,
    PS_RESTORE_TARGETS,
    PS_SHARDS,
    STEPS,
)
from dist_ps_fault import KILL_AFTER  # noqa: E402
from dist_ps_fault import STEPS as FAULT_STEPS  # noqa: E402

ATOL = RTOL = 1e-6  # as in test_distribute_mirrored.py
# Measured on 2 busy cores: 22-52 s and 6-20 s wall. The deadlines of the three
# test files add up to under 10 minutes, the CI budget of the set.
TIMEOUT_S = 120
FAULT_TIMEOUT_S = 90
FUSED_TIMEOUT_S = 120
NAMES = list(PS_CONFIGS)
CKPT_NAMES = [n for n in NAMES if PS_CONFIGS[n]["restore_replicas"] is not None]
TARGETS = [target for target, _, _ in PS_RESTORE_TARGETS]
PER_SHARD = [n for n in NAMES if n.endswith("per_shard")]


@pytest.fixture(scope="module")
def ps(tmp_path_factory):
    out = tmp_path_factory.mktemp("ps")
    run = dist_utils.run_with_port_retry(
        lambda: [
            dist_utils.Spec(
                "coordinator",
                "dist_ps.py",
                [str(out)],
                env={"DIST_WORKER_DEADLINE": str(TIMEOUT_S - 20)},
            )
        ],
        TIMEOUT_S,
        str(out / "logs"),
    )
    print(dist_utils.timing_line("ParameterServerStrategy in-process cluster", run))
    if not run.ok:
        pytest.fail(run.report())
    arrays = dict(np.load(out / "ps.npz"))
    with open(out / "ps.json") as f:
        meta = json.load(f)
    return arrays, meta, run


def _meta(ps, name: str) -> dict:
    return dist_utils.worker_result(ps[1], name)


def _state(ps, prefix: str) -> dict[str, np.ndarray]:
    """Variables, slots and iterations stored under ``prefix/`` (one level)."""
    start = prefix + "/"
    nested = ("reference/", "spread/") + tuple(t + "/" for t in TARGETS)
    return {
        k[len(start) :]: v
        for k, v in ps[0].items()
        if k.startswith(start) and not k[len(start) :].startswith(nested)
    }


def _assert_close(actual: dict, expected: dict, what: str) -> None:
    assert actual and sorted(actual) == sorted(expected), what
    for key in expected:
        np.testing.assert_allclose(
            actual[key], expected[key], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {key}"
        )


@pytest.mark.parametrize("name", NAMES)
def test_matches_tf_keras(ps, name):
    meta = _meta(ps, name)
    ours, theirs = _state(ps, f"{name}/keras_opt"), _state(ps, f"{name}/tf_keras")
    assert ours and sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)

    def placement_free(info):  # the strategy places each library's variables round-robin
        info = dict(info, iterations_device=None)
        info["slots"] = [{k: v for k, v in s.items() if "device" not in k} for s in info["slots"]]
        return info

    assert placement_free(meta["describe"]["keras_opt"]) == placement_free(
        meta["describe"]["tf_keras"]
    )


@pytest.mark.parametrize("name", [n for n in NAMES if n not in CKPT_NAMES + PER_SHARD])
def test_one_step_at_a_time_matches_one_device(ps, name):
    """Steps scheduled and joined one by one equal one-device training."""
    _meta(ps, name)
    init = ps[0]
    for lib in ("keras_opt", "tf_keras"):
        state = _state(ps, f"{name}/{lib}")
        assert int(state["iterations"]) == STEPS
        _assert_close(state, _state(ps, f"{name}/{lib}/reference"), f"{name} {lib}")
        for var in ("embedding", "kernel", "bias"):
            moved = np.max(np.abs(state[f"var/{var}"] - init[f"init/var/{var}"]))
            assert moved > 100 * ATOL, f"{lib}: {var} did not train"


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_receives_caching_variables_and_shards(ps, name):
    """CachingVariables reach apply_gradients; the embedding as shards with IndexedSlices."""
    info = _meta(ps, name)["describe"]["keras_opt"]
    assert info["var_types"] == ["CachingVariable"] * (PS_SHARDS + 2)
    embedding_grads = info["grad_types"][:PS_SHARDS]
    if PS_CONFIGS[name]["sparse"]:
        assert embedding_grads == ["IndexedSlices"] * PS_SHARDS
    else:
        assert "IndexedSlices" not in info["grad_types"]


@pytest.mark.parametrize("name", NAMES)
def test_slots_live_on_the_ps_of_their_shard(ps, name):
    info = _meta(ps, name)["describe"]["keras_opt"]
    assert info["slots"]
    shard_devices = set()
    for slot in info["slots"]:
        assert slot["slot_device"] == slot["var_device"], slot
        assert slot["slot_device"].startswith("/job:ps/"), slot
        assert slot["slot_type"] == "CachingVariable", slot
        assert slot["slot_shape"] == slot["var_shape"], slot
        if slot["var"].startswith("embedding/part_"):
            shard_devices.add(slot["var_device"])
    assert len(shard_devices) == PS_SHARDS, "the shards should sit on different ps"
    assert info["iterations_device"].startswith("/job:ps/")
    assert info["sharded_slots"] == {
        name: {"type": "ShardedVariable", "shards": PS_SHARDS} for name in info["slot_names"]
    }
    slot_count = len(info["slot_names"]) * (PS_SHARDS + 2)
    assert info["weights"] == 1 + slot_count  # iterations and one slot per shard: no duplicate


@pytest.mark.parametrize("name", PER_SHARD)
def test_clipnorm_clips_each_shard(ps, name):
    """clipnorm acts per variable, so per shard: not one-device training (as tf_keras).

    global_clipnorm does not depend on the sharding and matches one device
    (see test_one_step_at_a_time_matches_one_device); keras_opt equals tf_keras
    for both (test_matches_tf_keras).
    """
    _meta(ps, name)
    state = _state(ps, f"{name}/keras_opt")
    reference = _state(ps, f"{name}/keras_opt/reference")
    diff = max(np.max(np.abs(state[k] - reference[k])) for k in reference)
    assert diff > 1e-3


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", CKPT_NAMES)
def test_checkpoint_restores_under_other_sharding(ps, name, target):
    """Saved after CKPT_STEPS with PS_SHARDS shards; restored, continued: as one device.

    Targets: the same shard count (slots created before restoring, or not: then
    the shard slots do not exist when the checkpoint is read), 3 shards, and no
    strategy (an unsharded variable).
    """
    meta = _meta(ps, name)
    restore = meta["restore"]["keras_opt"][target]
    assert restore["consumed"] is True, restore["consumed"]
    expected_shards = dict((t, s) for t, s, _ in PS_RESTORE_TARGETS)[target]
    assert restore["shards"] == expected_shards
    state = _state(ps, f"{name}/keras_opt/{target}")
    assert int(state["iterations"]) == STEPS
    _assert_close(state, _state(ps, f"{name}/keras_opt/reference"), f"{name} {target}")


@pytest.mark.parametrize("name", CKPT_NAMES)
def test_tf_keras_silently_loses_shard_slots_restored_too_early(ps, name):
    """Pins a tf_keras flaw that keras_opt does not have (see the test above).

    Restored into a sharded model before its slots exist, tf_keras puts each
    slot value into one full-size variable that the shard slots, created at the
    first step, replace: training continues from zero slots while
    ``assert_consumed()`` passes. If this starts failing, tf_keras was fixed.
    """
    meta = _meta(ps, name)
    restore = meta["restore"]["tf_keras"]["ps_same_shards"]
    assert restore["consumed"] is True
    state = _state(ps, f"{name}/tf_keras/ps_same_shards")
    reference = _state(ps, f"{name}/tf_keras/reference")
    diff = max(np.max(np.abs(state[k] - reference[k])) for k in reference)
    assert diff > 1e-3


def test_async_scheduling_applies_every_step(ps):
    """PS_ASYNC_STEPS steps scheduled at once run on both workers; each is applied once."""
    meta = _meta(ps, "async")
    for lib in ("keras_opt", "tf_keras"):
        assert meta[lib]["iterations"] == PS_ASYNC_STEPS
        assert len(meta[lib]["fetched"]) == PS_ASYNC_STEPS
        assert max(meta[lib]["fetched"]) == PS_ASYNC_STEPS
        assert meta[lib]["finite"]


def test_unnamed_sharded_variable_trains(ps):
    """A ShardedVariable created without a name: its slots stay apart from its shards'.

    An unnamed ShardedVariable reports its first shard's unique id; tf_keras keys
    the container's slot entry by it, replacing the first shard's slots, and its
    get_slot then recurses forever. keras_opt keys the container by all its shards.
    """
    meta = _meta(ps, "unnamed")
    assert meta["keras_opt"]["raised"] is None, meta["keras_opt"]
    # Same values as the named adagrad-sparse run (names do not enter the math).
    _assert_close(
        _state(ps, "unnamed/keras_opt"),
        _state(ps, "adagrad-sparse/keras_opt"),
        "unnamed vs named",
    )
    assert meta["tf_keras"]["raised"] == "RecursionError", meta["tf_keras"]


def test_in_process_cluster_left_no_process(ps):
    assert all(dist_utils.is_gone(p.pid) for p in ps[2].processes)


# ------------------------------------------------------------------------ worker killed


@pytest.fixture(scope="module")
def fault(tmp_path_factory):
    out = tmp_path_factory.mktemp("ps_fault")
    pids_path = out / "pids.json"

    def specs():
        if pids_path.exists():
            pids_path.unlink()
        cluster = dist_utils.cluster_spec(ps=2, worker=2)
        servers = [
            dist_utils.Spec(
                f"worker{i}",
                "dist_ps_server.py",
                env={
                    "TF_CONFIG": dist_utils.tf_config(cluster, "worker", i),
                    "DIST_WORKER_DEADLINE": str(FAULT_TIMEOUT_S),
                },
                daemon=True,
                expendable=i == 1,
            )
            for i in range(2)
        ]
        coordinator = dist_utils.Spec(
            "coordinator",
            "dist_ps_fault.py",
            [str(out), str(pids_path)],
            env={
                "DIST_CLUSTER": json.dumps(cluster),
                "DIST_WORKER_DEADLINE": str(FAULT_TIMEOUT_S - 20),
            },
        )
        return servers + [coordinator]

    def write_pids(pids):
        tmp = str(pids_path) + ".tmp"
        with open(tmp, "w") as f:
            json.dump(pids, f)
        os.replace(tmp, pids_path)

    run = dist_utils.run_with_port_retry(
        specs, FAULT_TIMEOUT_S, str(out / "logs"), on_start=write_pids
    )
    print(dist_utils.timing_line("ParameterServerStrategy with a killed worker", run))
    if not run.ok:
        pytest.fail(run.report())
    with open(out / "ps_fault.json") as f:
        record = json.load(f)
    keys = ("steps", "done_before_kill", "iterations", "counter_updates", "killed_at_s")
    print({k: record[k] for k in keys})
    return record, {p.name: p for p in run.processes}


def test_coordinator_carries_on_without_the_killed_worker(fault):
    record, processes = fault
    assert processes["worker1"].returncode == -9 and not processes["worker1"].killed
    assert processes["worker0"].killed, "worker0 should have served until the end"
    assert processes["coordinator"].returncode == 0
    # The coordinator saw the failure (and put the closure back on its queue).
    assert "failed with UnavailableError" in processes["coordinator"].log
    # Killed mid-training: steps were done before, and were still queued after.
    assert KILL_AFTER <= record["done_before_kill"] < FAULT_STEPS
    assert record["errors"] == []
    assert len(record["fetched"]) == FAULT_STEPS
    assert record["finite"]
    assert all(dist_utils.is_gone(p.pid) for p in processes.values())


def test_killed_worker_loses_no_applied_update(fault):
    """Every completed step is applied; only the interrupted step may run twice.

    A step is completed when the coordinator fetched its result, which it
    reads after the update. ClusterCoordinator retries a step whose worker
    died (at-least-once), and runs one step per worker at a time, so at most
    one step (the one worker 1 was running) can have been applied, wholly or
    partly, before being applied again. ``iterations`` counts whole steps (its
    increment follows all of a step's updates); ``counter_updates`` counts
    how often a step's update ops ran. So:

        STEPS <= iterations <= counter_updates <= STEPS + 1
    """
    record, _ = fault
    steps = record["steps"]
    assert steps == FAULT_STEPS
    updates = record["counter_updates"]
    assert updates == int(updates), "the counter moves by exactly one learning rate per update"
    assert steps <= record["iterations"] <= updates <= steps + 1
    assert max(record["fetched"]) <= record["iterations"]


# ------------------------------------------------------------------- fused kernels


def _expected_fused(name: str, var: str) -> bool:
    """Whether ``var`` should take the fused ops when its ps has them.

    Dense gradients: every rule here has a fused op. IndexedSlices (the
    embedding's shards): Adam and RMSprop without momentum have a one-pass
    fused sparse op; SGD momentum does not (it keeps TF's
    ResourceSparseApplyKerasMomentum).
    """
    return not _sparse(name, var) or PS_CONFIGS[name]["opt"] in SPARSE_FUSED_OPS


# The fused sparse op of each optimizer configuration that has one.
SPARSE_FUSED_OPS = {
    "adam": "KerasOptFusedSparseApplyAdam",
    "rmsprop_plain": "KerasOptFusedSparseApplyRMSProp",
}


def _sparse(name: str, var: str) -> bool:
    """Whether ``var`` gets an IndexedSlices gradient (the embedding's shards)."""
    return PS_CONFIGS[name]["sparse"] and var.startswith("embedding/")


@pytest.mark.parametrize("name", PS_FUSED_TWINS)
def test_fused_kernels_on_ps_equal_the_per_variable_path(ps, name):
    """In-process cluster (every ps has the library): fused on both ps, same bits."""
    meta = _meta(ps, name)
    fused, per_variable = meta["fused"], meta["per_variable"]
    devices = fused["devices"]
    assert sorted(fused["paths"]["fused"] + fused["paths"]["per_variable"]) == sorted(devices)
    for var in devices:
        path = "fused" if _expected_fused(name, var) else "per_variable"
        assert var in fused["paths"][path], (var, fused["paths"])
    if fused["paths"]["per_variable"]:
        assert fused["paths"]["reason"] == "sparse gradient"
    # One group op per (ps, dtype) for the dense gradients, one sparse op per
    # sparse shard, each on the ps of its variables.
    dense_devices = {d for v, d in devices.items() if not _sparse(name, v)}
    ops = [tuple(op) for op in fused["ops"]]
    assert sorted(d for t, d in ops if t == "KerasOptFusedApplyGroup") == sorted(dense_devices)
    sparse_ops = sorted(d for t, d in ops if t.startswith("KerasOptFusedSparseApply"))
    assert {t for t, _ in ops} - {"KerasOptFusedApplyGroup"} <= {
        SPARSE_FUSED_OPS.get(PS_CONFIGS[name]["opt"])
    }
    expected_sparse = sorted(
        d for v, d in devices.items() if _sparse(name, v) and _expected_fused(name, v)
    )
    assert sparse_ops == expected_sparse
    assert len({d for _, d in ops}) == 2 and all(d.startswith("/job:ps/") for _, d in ops)
    assert per_variable["paths"]["fused"] == [] and per_variable["ops"] == []
    assert per_variable["paths"]["reason"] == "disabled by fused_kernels=False"
    ours = _state(ps, f"{name}/keras_opt")
    theirs = _state(ps, f"{name}/keras_opt_per_variable")
    assert ours and sorted(ours) == sorted(theirs)
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


@pytest.fixture(scope="module")
def ps_fused(tmp_path_factory):
    """1 worker and ps 0 load keras_opt's op library, ps 1 does not (separate processes)."""
    out = tmp_path_factory.mktemp("ps_fused")

    def specs():
        cluster = dist_utils.cluster_spec(worker=1, ps=2)
        servers = [
            dist_utils.Spec(
                f"{job}{i}",
                "dist_ps_server.py",
                env={
                    "TF_CONFIG": dist_utils.tf_config(cluster, job, i),
                    "DIST_WORKER_DEADLINE": str(FUSED_TIMEOUT_S),
                    "DIST_LOAD_KERAS_OPT_KERNELS": "0" if (job, i) == ("ps", 1) else "1",
                },
                daemon=True,
            )
            for job, i in (("worker", 0), ("ps", 0), ("ps", 1))
        ]
        coordinator = dist_utils.Spec(
            "coordinator",
            "dist_ps_fused.py",
            [str(out)],
            env={
                "DIST_CLUSTER": json.dumps(cluster),
                "DIST_WORKER_DEADLINE": str(FUSED_TIMEOUT_S - 20),
            },
        )
        return servers + [coordinator]

    run = dist_utils.run_with_port_retry(specs, FUSED_TIMEOUT_S, str(out / "logs"))
    print(dist_utils.timing_line("ParameterServerStrategy, ps 1 without keras_opt kernels", run))
    if not run.ok:
        pytest.fail(run.report())
    with open(out / "ps_fused.json") as f:
        meta = json.load(f)
    assert meta.get("_done"), meta
    return dict(np.load(out / "ps_fused.npz")), meta


def _under(arrays: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in arrays.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name", PS_FUSED_TWINS)
def test_ps_without_kernels_falls_back_with_the_same_bits(ps_fused, name):
    arrays, meta = ps_fused
    record = dist_utils.worker_result(meta, name)
    fused, per_variable = record["fused"], record["per_variable"]
    devices = fused["devices"]
    on = {
        i: {v for v, d in devices.items() if d.startswith(f"/job:ps/replica:0/task:{i}/")}
        for i in (0, 1)
    }
    assert on[0] and on[1] and on[0] | on[1] == set(devices), devices
    # ps 0 has the kernels: its variables are fused (but SGD's sparse shard).
    assert set(fused["paths"]["fused"]) == {v for v in on[0] if _expected_fused(name, v)}
    assert set(fused["paths"]["per_variable"]) == set(devices) - set(fused["paths"]["fused"])
    reason = fused["paths"]["reason"]
    assert (
        "no keras_opt kernels confirmed in the process of /job:ps/replica:0/task:1 (" in reason
    ), reason
    assert "/job:ps/replica:0/task:0" not in reason and "/job:worker" not in reason, reason
    assert fused["ops"] and all(
        d.startswith("/job:ps/replica:0/task:0/") for _, d in fused["ops"]
    ), fused["ops"]
    assert per_variable["paths"]["fused"] == [] and per_variable["ops"] == []
    ours, theirs = _under(arrays, f"{name}/fused/"), _under(arrays, f"{name}/per_variable/")
    assert ours and sorted(ours) == sorted(theirs)
    assert int(ours["iterations"]) == STEPS
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_eager_steps_on_the_coordinator_fuse_on_the_ps_with_kernels(ps_fused):
    """strategy.run outside a function: the fused ops run eagerly on ps 0."""
    arrays, meta = ps_fused
    record = dist_utils.worker_result(meta, "eager")
    name, fused, per_variable = record["name"], record["fused"], record["per_variable"]
    devices = fused["devices"]
    on_ps0 = {v for v, d in devices.items() if d.startswith("/job:ps/replica:0/task:0/")}
    assert set(fused["paths"]["fused"]) == {v for v in on_ps0 if _expected_fused(name, v)}
    assert fused["paths"]["fused"], fused["paths"]
    assert "/job:ps/replica:0/task:1 (" in fused["paths"]["reason"], fused["paths"]
    assert per_variable["paths"]["fused"] == []
    ours, theirs = _under(arrays, "eager/fused/"), _under(arrays, "eager/per_variable/")
    assert ours and sorted(ours) == sorted(theirs)
    assert int(ours["iterations"]) == STEPS
    for key in ours:
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)


def test_kernels_probed_once_per_remote_device(ps_fused):
    """The worker and each ps holding a variable are probed once, ps 1 fails."""
    probed = ps_fused[1]["probed"]
    by_device = {key.split(" @ ")[0]: why for key, why in probed.items()}
    assert len(by_device) == len(probed) == 3, probed
    assert by_device["/job:worker/replica:0/task:0/device:CPU:0"] is None
    assert by_device["/job:ps/replica:0/task:0/device:CPU:0"] is None
    assert "NotFoundError" in by_device["/job:ps/replica:0/task:1/device:CPU:0"]


def test_workers_without_kernels_take_the_per_variable_path(fault):
    """The fault run's workers never load keras_opt's library: nothing is fused."""
    paths = fault[0]["paths"]
    assert paths["fused"] == [] and len(paths["per_variable"]) == PS_SHARDS + 3
    for i in range(2):
        assert f"/job:worker/replica:0/task:{i} (NotFoundError" in paths["reason"], paths
