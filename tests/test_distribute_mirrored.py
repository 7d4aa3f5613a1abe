"""keras_opt under MirroredStrategy, side by side with tf_keras and one-device training.

MirroredStrategy over several CPUs needs logical devices configured before
TensorFlow initializes, which has happened in this process by the time the
file is collected. So one worker process (tests/workers/dist_mirrored.py)
trains every configuration of tests/workers/dist_configs.py (2 or 4
replicas; five optimizers; dense and IndexedSlices gradients; tf.function and
eager; merge_call and the no-merge-call path; default collectives,
ReductionToOneDevice and HierarchicalCopyAllReduce; aggregation, clipping and
transformers; optimizer built outside the scope; checkpoints restored under
another replica count) with both libraries, and the tests below read its
results. Per configuration they check that:

* keras_opt equals tf_keras exactly (variables, every slot, iterations),
  and its variables have the same types and placement (the modern optimizers,
  cases.MODERN_CASES, have no tf_keras twin: keras_opt only);
* both equal training on one device with the same global batch
  (``ATOL``/``RTOL``: float32 sums taken in another order);
* every mirrored variable holds the same value on every replica;
* the optimizer's ``iterations``, hyperparameters and slots are
  ``MirroredVariable``s with a component on each replica's device.

The worker runs once per module (a module-scoped fixture) under a hard deadline.
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import pytest

import dist_utils

sys.path.insert(0, dist_utils.WORKERS_DIR)

from dist_configs import (  # noqa: E402 (needs the workers directory on the path)
    CKPT_STEPS,
    CONFIGS,
    STEPS,
    lib_names,
    plain_reference,
    reference_config,
    reference_key,
)

# Measured differences to one-device training are at most 1.2e-7 (float32
# sums in another order); 1e-6 leaves room without hiding a wrong step (a
# replica's gradient counted twice or clipped before aggregation is off by >1e-3).
ATOL = RTOL = 1e-6
TIMEOUT_S = 240  # measured 38-135 s wall on 2 busy cores
NAMES = list(CONFIGS)


class WorkerResults:
    """The arrays and metadata the worker wrote, with per-configuration access."""

    def __init__(self, out_dir: str, run: dist_utils.RunResult):
        self.run = run
        self.arrays = dict(np.load(os.path.join(out_dir, "mirrored.npz")))
        with open(os.path.join(out_dir, "mirrored.json")) as f:
            self.meta = json.load(f)

    def config_meta(self, name: str) -> dict:
        return dist_utils.worker_result(self.meta, name)

    def state(self, prefix: str) -> dict[str, np.ndarray]:
        """Arrays under ``prefix/`` (e.g. "adam-sparse/keras_opt"), without the prefix."""
        start = prefix + "/"
        return {k[len(start) :]: v for k, v in self.arrays.items() if k.startswith(start)}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> WorkerResults:
    out = tmp_path_factory.mktemp("mirrored")
    run = dist_utils.run_processes(
        [
            dist_utils.Spec(
                "mirrored",
                "dist_mirrored.py",
                [str(out)],
                env={"DIST_WORKER_DEADLINE": str(TIMEOUT_S - 20)},
            )
        ],
        timeout_s=TIMEOUT_S,
        log_dir=str(out / "logs"),
    )
    print(dist_utils.timing_line("MirroredStrategy worker", run))
    if not run.ok:
        pytest.fail(run.report())
    return WorkerResults(str(out), run)


def test_worker_finished_and_left_no_process(results):
    assert results.meta.get("_done") is True
    assert all(dist_utils.is_gone(p.pid) for p in results.run.processes)


def _model_and_optimizer_state(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith(("spread/", "saved/"))}


def _assert_close(actual: dict, expected: dict, what: str) -> None:
    assert sorted(actual) == sorted(expected), what
    for key in sorted(expected):
        np.testing.assert_allclose(
            actual[key], expected[key], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {key}"
        )


@pytest.mark.parametrize("name", [n for n in NAMES if "tf_keras" in lib_names(CONFIGS[n])])
def test_matches_tf_keras(results, name):
    """keras_opt and tf_keras, trained side by side under the same strategy, agree exactly."""
    meta = results.config_meta(name)
    ours = results.state(f"{name}/keras_opt")
    theirs = results.state(f"{name}/tf_keras")
    assert sorted(ours) == sorted(theirs)
    for key in sorted(ours):
        np.testing.assert_array_equal(ours[key], theirs[key], err_msg=key)
    assert meta["describe"]["keras_opt"] == meta["describe"]["tf_keras"]


@pytest.mark.parametrize("name", NAMES)
def test_matches_one_device_training(results, name):
    """Distributed training equals one-device training with the same global batch."""
    cfg = CONFIGS[name]
    meta = results.config_meta(name)
    assert meta["reference"] == reference_key(reference_config(cfg))
    for lib in lib_names(cfg):
        state = _model_and_optimizer_state(results.state(f"{name}/{lib}"))
        reference = _model_and_optimizer_state(results.state(f"{meta['reference']}/{lib}"))
        assert int(state["iterations"]) == STEPS
        if cfg["aggregate"] == "clip_before":
            continue  # the control case: see test_clipping_before_aggregation_differs
        _assert_close(state, reference, f"{name} {lib} vs one device")
        # The comparison is not between two no-ops: every variable moved.
        for var in ("embedding", "kernel", "bias"):
            moved = np.max(np.abs(state[f"var/{var}"] - results.arrays[f"init/var/{var}"]))
            assert moved > 100 * ATOL, f"{name} {lib}: {var} did not train"


@pytest.mark.parametrize("name", NAMES)
def test_replicas_hold_identical_values(results, name):
    """Every component of every mirrored variable, slot and counter is the same."""
    cfg = CONFIGS[name]
    results.config_meta(name)
    for lib in lib_names(cfg):
        state = results.state(f"{name}/{lib}")
        spreads = {k: float(v) for k, v in state.items() if k.startswith("spread/")}
        assert spreads and max(spreads.values()) == 0.0, spreads


@pytest.mark.parametrize("name", NAMES)
def test_optimizer_variables_are_mirrored(results, name):
    """iterations, hyperparameters and slots are MirroredVariables beside their variables."""
    cfg = CONFIGS[name]
    meta = results.config_meta(name)
    replicas = cfg["replicas"] if cfg["restore_replicas"] is None else cfg["restore_replicas"]
    info = meta["describe"]["keras_opt"]
    # Without a strategy: plain resource variables (created in a tf.function's
    # first trace, they are its UnliftedInitializerVariable subclass).
    expected = (
        {"MirroredVariable"} if replicas else {"ResourceVariable", "UnliftedInitializerVariable"}
    )
    assert info["iterations_type"] in expected
    assert info["hyper_types"] and set(info["hyper_types"]) <= expected
    assert info["slots"], "no slots recorded"
    for slot, slot_info in info["slots"].items():
        assert slot_info["type"] in expected, slot
        assert slot_info["devices"] == slot_info["var_devices"], slot
        assert len(slot_info["devices"]) == max(replicas, 1), slot


@pytest.mark.parametrize("name", [n for n in NAMES if CONFIGS[n]["replicas"]])
def test_strategy_took_the_configured_path(results, name):
    """The worker really ran the configured cross-device ops and merge_call mode."""
    cfg = CONFIGS[name]
    meta = results.config_meta(name)
    assert meta["replicas"] == cfg["replicas"]
    expected_ops = {
        "default": "CollectiveAllReduce",
        "reduce_to_one": "ReductionToOneDevice",
        "hierarchical": "HierarchicalCopyAllReduce",
    }[cfg["cross_device"]]
    assert meta["cross_device_ops"] == expected_ops
    for lib in lib_names(cfg):
        info = meta["describe"][lib]
        assert info["no_merge_call"] == [not cfg["merge_call"]]
        assert info["created_under_strategy"] == (not cfg["opt_outside_scope"])


@pytest.mark.parametrize(
    "name", [n for n in NAMES if CONFIGS[n]["aggregate"] == "aggregator" or CONFIGS[n]["clip"]]
)
def test_gradient_options_change_training(results, name):
    """The aggregator, clipping and transformers are in effect (not silently skipped).

    Their one-device reference differs from the reference without them, so the
    equality in test_matches_one_device_training shows they act on the summed
    gradient, as on one device.
    """
    meta = results.config_meta(name)
    with_option = results.state(f"{meta['reference']}/keras_opt")
    without = results.state(f"{reference_key(plain_reference(CONFIGS[name]))}/keras_opt")
    assert without, "the plain reference was not trained (add its configuration)"
    diff = max(np.max(np.abs(with_option[k] - without[k])) for k in without if "var/" in k)
    assert diff > 100 * ATOL


def test_clipping_before_aggregation_differs(results):
    """Control: clipping per replica, then summing, is not one-device clipping.

    Shows that the reference comparison can fail for a clip put at the wrong
    stage of the pipeline.
    """
    name = "adam-sparse-clip_before_aggregation-eager"
    meta = results.config_meta(name)
    state = _model_and_optimizer_state(results.state(f"{name}/keras_opt"))
    reference = _model_and_optimizer_state(results.state(f"{meta['reference']}/keras_opt"))
    diff = max(np.max(np.abs(state[k] - reference[k])) for k in reference)
    assert diff > 100 * ATOL


@pytest.mark.parametrize("name", [n for n in NAMES if CONFIGS[n]["restore_replicas"] is not None])
def test_checkpoint_restores_under_another_replica_count(results, name):
    """Saved after CKPT_STEPS, restored into fresh objects, every value was consumed.

    (Continuing to STEPS equals uninterrupted one-device training: see
    test_matches_one_device_training for these configurations.)
    """
    cfg = CONFIGS[name]
    meta = results.config_meta(name)
    for lib in lib_names(cfg):
        restore = meta["restore"][lib]
        assert restore["consumed"] is True
        assert restore["restored_replicas"] == max(cfg["restore_replicas"], 1)
        saved = results.state(f"{name}/{lib}/saved")
        assert int(saved["iterations"]) == CKPT_STEPS


@pytest.mark.parametrize("mode", ["function", "eager"])
def test_variable_created_outside_scope_is_refused(results, mode):
    """As tf_keras: a model variable from outside the scope gets a ValueError, and no update."""
    meta = results.config_meta(f"variable_outside_scope-{mode}")
    ours, theirs = meta["keras_opt"], meta["tf_keras"]
    assert ours["raised"] == theirs["raised"] == "ValueError"
    assert "Trying to create optimizer slot variable under the scope" in ours["message"]
    assert "embedding:0" in ours["message"]

    def without_addresses(message: str) -> str:
        return re.sub(r"0x[0-9a-f]+", "0x", message)

    assert without_addresses(ours["message"]) == without_addresses(theirs["message"])
    assert not ours["moved"] and not theirs["moved"]
