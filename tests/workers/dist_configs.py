"""Configuration tables of the tf.distribute workers and tests (no TensorFlow here).

A configuration names an optimizer (see dist_common.OPTIMIZERS), dense or
IndexedSlices gradients, a replica count, eager or tf.function steps, merge_call
or the no-merge-call path, the cross-device ops, how gradients are aggregated
and clipped, and whether the optimizer is built outside ``strategy.scope()``.
Checkpoint configurations also name the replica count to restore under.
The worker scripts train them; the test files parametrize over them.
"""

from __future__ import annotations

import json

REPLICAS_MAX = 4
GLOBAL_BATCH = 8
STEPS = 4
CKPT_STEPS = 2  # checkpoint configurations save after this many steps
CLIP = 0.02  # well below the gradient norms of this model: clipping is active

DEFAULTS = dict(
    opt="adam",
    sparse=True,
    replicas=2,
    function=True,
    merge_call=True,
    cross_device="default",
    aggregate="auto",  # auto | manual | aggregator | clip_before
    clip=None,  # None | clipnorm | global_clipnorm | transformer
    opt_outside_scope=False,
    restore_replicas=None,  # checkpoint configs: replica count (0: none) to restore under
)

CONFIGS: dict[str, dict] = {}


def config(name: str, **options) -> None:
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"config {name}: unknown options {unknown}")
    CONFIGS[name] = dict(DEFAULTS, **options)


# Tracing a step under MirroredStrategy costs 1-2 CPU seconds per library, an
# eager run ~0.3 s (eager replicas run the same merge_call / update code): the
# main paths run in tf.function, most variations eagerly ("-eager").
# Five optimizers, dense and IndexedSlices gradients.
for _opt in ("adam", "sgd", "adagrad", "rmsprop", "ftrl"):
    config(f"{_opt}-dense", opt=_opt, sparse=False)
    config(f"{_opt}-sparse-eager", opt=_opt, function=False)
config("adam-sparse")
# 4 replicas; other cross-device ops than the default collectives.
config("adam_amsgrad-sparse-4rep-eager", opt="adam_amsgrad", replicas=4, function=False)
config("ftrl-dense-4rep", opt="ftrl", sparse=False, replicas=4)
config(
    "adam-sparse-4rep-reduce_to_one-eager", replicas=4, cross_device="reduce_to_one", function=False
)
config(
    "rmsprop-dense-hierarchical_copy-eager",
    opt="rmsprop",
    sparse=False,
    cross_device="hierarchical",
    function=False,
)
# The no-merge-call path (what MirroredStrategy takes on GPUs).
config("adam-sparse-no_merge_call", merge_call=False)
config("sgd-dense-4rep-no_merge_call", opt="sgd", sparse=False, replicas=4, merge_call=False)
config("adagrad-sparse-no_merge_call-eager", opt="adagrad", merge_call=False, function=False)
# experimental_aggregate_gradients=False after a manual all-reduce; a custom aggregator.
config("adam-sparse-manual_all_reduce", aggregate="manual")
config(
    "sgd-dense-manual_all_reduce-eager", opt="sgd", sparse=False, aggregate="manual", function=False
)
config(
    "adam-sparse-no_merge_call-manual_all_reduce-eager",
    aggregate="manual",
    merge_call=False,
    function=False,
)
config("sgd-dense-gradient_aggregator", opt="sgd", sparse=False, aggregate="aggregator")
config(
    "adam-sparse-4rep-gradient_aggregator-eager", replicas=4, aggregate="aggregator", function=False
)
# Clipping and gradient_transformers run after aggregation.
config("adam-sparse-clipnorm", clip="clipnorm")
config("adam-dense-no_merge_call-clipnorm", sparse=False, clip="clipnorm", merge_call=False)
config("sgd-sparse-4rep-clipnorm-eager", opt="sgd", replicas=4, clip="clipnorm", function=False)
config("adam-dense-global_clipnorm-eager", sparse=False, clip="global_clipnorm", function=False)
config("adam-sparse-gradient_transformers-eager", clip="transformer", function=False)
# Control: clipping each replica's gradient before summing is *not* one-device
# training; the test asserts that this differs from the reference.
config(
    "adam-sparse-clip_before_aggregation-eager",
    aggregate="clip_before",
    clip="clipnorm",
    function=False,
)
# Optimizer constructed before entering strategy.scope().
config("adam-dense-optimizer_outside_scope", sparse=False, opt_outside_scope=True)
config(
    "rmsprop-sparse-4rep-optimizer_outside_scope-eager",
    opt="rmsprop",
    replicas=4,
    opt_outside_scope=True,
    function=False,
)
# The modern optimizers (dist_common takes them from cases.MODERN_CASES): keras_opt
# only, against one-device training (no tf_keras twin).
KERAS_OPT_ONLY = frozenset({"adamw", "lion", "lamb", "adafactor", "muon", "lazyadam"})
config("adamw-sparse", opt="adamw")
config("muon-sparse", opt="muon")
config("lion-sparse-eager", opt="lion", function=False)
config("lamb-sparse-eager", opt="lamb", function=False)
config("adafactor-dense-eager", opt="adafactor", sparse=False, function=False)
config("lazyadam-sparse-eager", opt="lazyadam", function=False)
config("ckpt-adafactor-sparse-2to4-eager", opt="adafactor", restore_replicas=4, function=False)
# Checkpoints saved after CKPT_STEPS steps, restored into fresh objects under
# another replica count (0: no strategy), training continued to STEPS.
config("ckpt-adam-sparse-2to4-eager", replicas=2, restore_replicas=4, function=False)
config(
    "ckpt-rmsprop-dense-4to2-eager",
    opt="rmsprop",
    sparse=False,
    replicas=4,
    restore_replicas=2,
    function=False,
)
config("ckpt-sgd-dense-2to_none", opt="sgd", sparse=False, restore_replicas=0)
config(
    "ckpt-adagrad-sparse-none_to2-eager",
    opt="adagrad",
    replicas=0,
    restore_replicas=2,
    function=False,
)


def lib_names(cfg: dict) -> tuple[str, ...]:
    """The libraries a configuration trains: keras_opt, and tf_keras where it has the optimizer."""
    return ("keras_opt",) if cfg["opt"] in KERAS_OPT_ONLY else ("keras_opt", "tf_keras")


def reference_config(cfg: dict) -> dict:
    """The one-device training a configuration must reproduce."""
    # Eager: on one device it is cheap, and tf.function gives the same values.
    ref = dict(cfg, replicas=0, function=False, merge_call=True, cross_device="default")
    ref.update(opt_outside_scope=False, restore_replicas=None)
    if ref["aggregate"] in ("manual", "clip_before"):
        ref["aggregate"] = "auto"
    return ref


def reference_key(ref: dict) -> str:
    """Name of a one-device reference run in the worker's results."""
    return "ref:" + json.dumps(ref, sort_keys=True)


def plain_reference(cfg: dict) -> dict:
    """The reference without the configuration's aggregator or clipping."""
    return dict(reference_config(cfg), aggregate="auto", clip=None)


# MultiWorkerMirroredStrategy: two worker processes with one replica each.
MWMS_WORKERS = 2
MWMS_CONFIGS: dict[str, dict] = {
    "adam-sparse": dict(DEFAULTS, replicas=MWMS_WORKERS),
    "sgd-dense-eager": dict(DEFAULTS, opt="sgd", sparse=False, function=False),
    "ftrl-sparse-manual_all_reduce": dict(DEFAULTS, opt="ftrl", aggregate="manual"),
    "adagrad-dense-clipnorm": dict(DEFAULTS, opt="adagrad", sparse=False, clip="clipnorm"),
    "ckpt-adam-sparse-to_none-eager": dict(DEFAULTS, function=False, restore_replicas=0),
}
for _cfg in MWMS_CONFIGS.values():
    _cfg["replicas"] = MWMS_WORKERS

# ParameterServerStrategy: in-process cluster of 2 workers and 2 ps; the
# embedding is split into PS_SHARDS shards. Steps are scheduled one at a time
# (schedule + join) unless "async"; checkpoint configurations restore under
# each of PS_RESTORE_TARGETS.
PS_WORKERS = 2
PS_SHARDS = 2
PS_CONFIGS: dict[str, dict] = {
    "adam-sparse": dict(DEFAULTS, replicas=1),
    "adagrad-sparse": dict(DEFAULTS, opt="adagrad"),
    "sgd-sparse": dict(DEFAULTS, opt="sgd"),
    "rmsprop-sparse": dict(DEFAULTS, opt="rmsprop"),
    "ftrl-sparse": dict(DEFAULTS, opt="ftrl"),
    "adam-dense": dict(DEFAULTS, sparse=False),
    "sgd-dense": dict(DEFAULTS, opt="sgd", sparse=False),
    "rmsprop_plain-sparse": dict(DEFAULTS, opt="rmsprop_plain"),
    "sgd-sparse-global_clipnorm": dict(DEFAULTS, opt="sgd", clip="global_clipnorm"),
    # clipnorm clips each gradient on its own, so each shard's: not the same as
    # clipping the unsharded embedding's gradient (tf_keras does the same).
    "sgd-sparse-clipnorm-per_shard": dict(DEFAULTS, opt="sgd", clip="clipnorm"),
    "ckpt-adam-sparse": dict(DEFAULTS, restore_replicas=0),
}
for _cfg in PS_CONFIGS.values():
    _cfg["replicas"] = 1  # one replica per worker (CPU workers)
# Restore targets: (name, shard count, slots created before restoring).
# Shard count 0: no strategy at all (an ordinary, unsharded variable).
PS_RESTORE_TARGETS = (
    ("ps_same_shards", PS_SHARDS, False),
    ("ps_same_shards_built", PS_SHARDS, True),
    ("ps_3_shards", 3, False),
    ("no_strategy", 0, False),
)
PS_ASYNC_STEPS = 12
# keras_opt's fused kernels under ParameterServerStrategy: these configurations
# also train keras_opt with fused_kernels=False (the per-variable path), in the
# in-process cluster and in one of separate processes (dist_ps_fused.py) whose
# ps 0 loads keras_opt's op library and ps 1 does not.
PS_FUSED_TWINS = ("adam-dense", "adam-sparse", "sgd-dense", "sgd-sparse", "rmsprop_plain-sparse")
