"""Routes the eligible (grad, var) pairs of an apply step to the fused kernels.

``OptimizerV2._distributed_apply`` calls `apply_fused` once per step. It groups
the pairs the fused ops cover by (device, dtype) and emits one op per group:
``KerasOptFusedApplyGroup`` on a variable-group handle inside a ``tf.function``
(see groups.py), ``KerasOptFusedApply`` with every handle otherwise; and one
exact sparse op (Adam, Nadam, RMSprop without momentum) per ``IndexedSlices``
variable. Every other pair is returned and takes the per-variable
``_apply_one`` path. The fused ops compute the same bits as the
per-variable kernels, so this is on by default. It falls back (with a debug
log line, and the reason in `last_paths`) when:

- ``KERAS_OPT_FUSED=0`` or the optimizer was built with ``fused_kernels=False``
  (or its ``fused_kernels`` attribute is set to False);
- the library cannot be built or loaded (no compiler, other TensorFlow...);
- the ops are traced for XLA (``jit_compile=True``);
- the optimizer is not one the kernels implement, or a subclass overrides the
  update methods (``_resource_apply_dense``, ``_apply_one``...);
- a pair is not covered: a variable with a constraint, not a resource variable,
  not on a CPU, a dtype other than float16/bfloat16/float32/float64, or a
  strategy other than the default one, MirroredStrategy (one op per replica
  device) and ParameterServerStrategy (one op per ps device and dtype, see
  `_ps_kernels_missing`); others fall back;
- under ParameterServerStrategy, a worker or ps process that has not loaded
  keras_opt's op library (found by running a tiny op there once).
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import threading

import tensorflow as tf

from keras_opt.kernels import build
from keras_opt.kernels import groups as var_groups
from keras_opt.optimizer_v2 import variables as variables_lib
from keras_opt.optimizer_v2 import xla

logger = logging.getLogger("keras_opt.kernels")

_DTYPES = (tf.float16, tf.bfloat16, tf.float32, tf.float64)

# Rule codes of fused_math.h.
ADAM, ADAM_AMSGRAD, MOMENTUM, NESTEROV, ADAGRAD_V2 = 0, 1, 2, 3, 4
RMSPROP, RMSPROP_CENTERED, RMSPROP_PLAIN, RMSPROP_PLAIN_CENTERED = 5, 6, 7, 8
FTRL, FTRL_V2, SGD = 9, 10, 11
NADAM = 12
LION = 13

# sparse: None, "adam", "rms" or "nadam" (the one-pass exact IndexedSlices update, if any).
Rule = collections.namedtuple("Rule", ["code", "slots", "coefs", "sparse"])


def _same(cls_attr, base, name) -> bool:
    return getattr(cls_attr, name) is getattr(base, name)


def _not_overridden(opt, base, names) -> bool:
    return all(_same(type(opt), base, n) for n in names)


def rule_for(opt) -> tuple[Rule | None, str | None]:
    """The fused rule of ``opt`` (or None and why not)."""
    from keras_opt.optimizer_v2 import (
        adagrad,
        adam,
        ftrl,
        gradient_descent,
        lion,
        nadam,
        optimizer_v2,
        rmsprop,
    )

    if not _not_overridden(opt, optimizer_v2.OptimizerV2, ("_apply_one",)):
        return None, "the optimizer overrides _apply_one"
    if type(opt) in (adam.Adam,) or (
        isinstance(opt, adam.Adam)
        and _not_overridden(opt, adam.Adam, ("_resource_apply_dense", "_prepare_local"))
    ):
        if not opt._fused:
            return None, "NonFusedAdam"
        slots = ("m", "v", "vhat") if opt.amsgrad else ("m", "v")
        sparse_ok = (
            "adam"
            if _not_overridden(
                opt,
                adam.Adam,
                ("_resource_apply_sparse", "_resource_apply_sparse_duplicate_indices"),
            )
            else None
        )
        return Rule(
            ADAM_AMSGRAD if opt.amsgrad else ADAM,
            slots,
            lambda c: [
                c["beta_1_power"],
                c["beta_2_power"],
                c["lr_t"],
                c["beta_1_t"],
                c["beta_2_t"],
                c["epsilon"],
            ],
            sparse_ok,
        ), None
    if isinstance(opt, nadam.Nadam) and _not_overridden(
        opt, nadam.Nadam, ("_resource_apply_dense", "_prepare_local", "_prepare")
    ):
        sparse_ok = _not_overridden(
            opt,
            nadam.Nadam,
            ("_resource_apply_sparse", "_resource_apply_sparse_duplicate_indices"),
        )
        # The momentum cache is updated once per step by `_prepare_local`
        # (shared by both paths); the kernel gets its result, m_schedule_new.
        return Rule(
            NADAM,
            ("m", "v"),
            lambda c: [
                c["lr_t"],
                c["beta_1_t"],
                c["beta_2_t"],
                c["epsilon"],
                c["m_schedule_new"],
                c["m_t_1"],
                c["one_minus_m_t"],
                c["v_t_prime_denominator"],
            ],
            "nadam" if sparse_ok else None,
        ), None
    if isinstance(opt, lion.Lion) and _not_overridden(
        opt, lion.Lion, ("_resource_apply_dense", "_prepare_local", "_new_values")
    ):
        # Dense only: a sparse Lion step updates the seen rows (per-variable path).
        return Rule(
            LION,
            ("momentum",),
            lambda c: [
                c["lr_t"],
                c["beta_1"],
                c["one_minus_beta_1"],
                c["beta_2"],
                c["one_minus_beta_2"],
            ],
            None,
        ), None
    if isinstance(opt, gradient_descent.SGD) and _not_overridden(
        opt, gradient_descent.SGD, ("_resource_apply_dense", "_prepare_local")
    ):
        if not opt._momentum:
            return Rule(SGD, (), lambda c: [c["lr_t"]], None), None
        return Rule(
            NESTEROV if opt.nesterov else MOMENTUM,
            ("momentum",),
            lambda c: [c["lr_t"], c["momentum"]],
            None,
        ), None
    if isinstance(opt, adagrad.Adagrad) and _not_overridden(
        opt, adagrad.Adagrad, ("_resource_apply_dense", "_prepare_local")
    ):
        return Rule(ADAGRAD_V2, ("accumulator",), lambda c: [c["lr_t"], c["epsilon"]], None), None
    if isinstance(opt, rmsprop.RMSprop) and _not_overridden(
        opt, rmsprop.RMSprop, ("_resource_apply_dense", "_prepare_local")
    ):
        if opt._momentum:
            return Rule(
                RMSPROP_CENTERED if opt.centered else RMSPROP,
                ("rms", "momentum", "mg") if opt.centered else ("rms", "momentum"),
                lambda c: [c["lr_t"], c["rho"], c["momentum"], c["epsilon"]],
                None,
            ), None
        sparse_ok = _not_overridden(
            opt,
            rmsprop.RMSprop,
            ("_resource_apply_sparse", "_resource_apply_sparse_duplicate_indices"),
        )
        return Rule(
            RMSPROP_PLAIN_CENTERED if opt.centered else RMSPROP_PLAIN,
            ("rms", "mg") if opt.centered else ("rms",),
            lambda c: [c["lr_t"], c["rho"], c["one_minus_rho"], c["epsilon"]],
            "rms" if sparse_ok else None,
        ), None
    if isinstance(opt, ftrl.Ftrl) and _not_overridden(
        opt, ftrl.Ftrl, ("_resource_apply_dense", "_prepare_local", "_kernel_args")
    ):
        if _ftrl_power(opt) != -0.5:
            return None, "Ftrl with learning_rate_power other than -0.5"
        shrink = opt._l2_shrinkage_regularization_strength > 0.0

        def ftrl_coefs(c):
            out = [
                c["lr_t"],
                c["l1_regularization_strength"],
                c["l2_regularization_strength"] + c["beta"] / (2.0 * c["lr_t"]),
                c["learning_rate_power"],
            ]
            if shrink:
                out.append(c["l2_shrinkage_regularization_strength"])
            return out

        return Rule(FTRL_V2 if shrink else FTRL, ("accumulator", "linear"), ftrl_coefs, None), None
    return None, f"no fused kernel for {type(opt).__name__}"


def _ftrl_power(opt):
    """learning_rate_power now (the fused Ftrl kernel has the -0.5 case only).

    Read while tracing: the traced op checks it again at run time and fails
    with a clear message if the hyperparameter was later set to another value.
    """
    power = opt._hyper.get("learning_rate_power")
    if isinstance(power, tf.Variable):
        if not tf.compat.v1.executing_eagerly_outside_functions():
            return None
        with tf.init_scope():
            return float(power.numpy())
    if isinstance(power, (int, float)) and not isinstance(power, bool):
        return float(power)
    return None


def enabled(opt) -> tuple[bool, str | None]:
    if build.disabled_by_env():
        return False, "disabled by KERAS_OPT_FUSED=0"
    if not getattr(opt, "fused_kernels", True):
        return False, "disabled by fused_kernels=False"
    return True, None


@functools.lru_cache(maxsize=256)
def _is_cpu(device: str) -> bool:
    # Asked once per variable and step (eager steps too): parse each name once.
    if not device:
        return True
    spec = tf.DeviceSpec.from_string(device)
    return spec.device_type in (None, "CPU")


def _as_tensor(value, dtype):
    if isinstance(value, tf.Tensor) and value.dtype == dtype:
        return value  # the common case, without convert_to_tensor's dispatch
    return tf.convert_to_tensor(value, dtype)


def _strategy_ok(distribution) -> tuple[bool, str | None]:
    """Whether the fused ops can run under ``distribution`` (and why not)."""
    if not tf.distribute.has_strategy():
        return True, None
    if isinstance(distribution, tf.distribute.MirroredStrategy):
        return True, None
    if _is_ps_strategy(distribution):
        why = _ps_kernels_missing(distribution, _worker_devices(distribution))
        return why is None, why
    return False, f"strategy {type(distribution).__name__} (per-variable path)"


# ParameterServerStrategy. The step's function is built and partitioned on
# each worker, and the part that updates a variable runs on its ps: a process
# that never loaded keras_opt's op library fails such a step ("Op type not
# registered" on a worker, no kernel on a ps). So before the fused path is
# taken, a tiny op of the library (KerasOptFusedIsa) runs eagerly once on each
# worker and on each ps that holds a variable, and the answer is kept per
# device and address. A missing library means the per-variable path: for every
# variable if a worker lacks it, for that ps's variables if a ps does. A peer
# that cannot be reached (a worker down when the step is traced) counts as
# missing for that trace, and is asked again at the next one.
#
# Variable groups (groups.py) work here as they do locally: a group is created
# eagerly on the coordinator, placed on its ps (it holds the CachingVariables'
# handles, which live there), and the workers' function captures its handle as
# it captures the variables'. The probe also covers them (same library).
_PROBED: dict = {}  # (device, address) -> None (kernels there) or why not
_TRANSIENT = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
)
_PROBE_LOCK = threading.Lock()


def _is_ps_strategy(distribution) -> bool:
    # tf.distribute.ParameterServerStrategy (TF2) marks itself so; the TF1
    # strategy of that name (graph sessions) is not covered.
    return bool(getattr(distribution, "_is_parameter_server_strategy_v2", False))


def _cluster_spec(distribution):
    resolver = getattr(distribution, "_cluster_resolver", None)
    if resolver is None:
        return None
    try:
        return resolver.cluster_spec()
    except Exception:  # noqa: BLE001 - no cluster to ask: treated as local
        return None


def _worker_devices(distribution) -> list[str]:
    spec = _cluster_spec(distribution)
    if spec is None or "worker" not in spec.jobs:
        return []
    return [f"/job:worker/replica:0/task:{i}/device:CPU:0" for i in spec.task_indices("worker")]


def _task_address(distribution, device: str):
    """The cluster address of ``device``'s task, or None for a local device."""
    spec = tf.DeviceSpec.from_string(device)
    cluster = _cluster_spec(distribution)
    if spec.job is None or cluster is None or spec.job not in cluster.jobs:
        return None
    try:
        return cluster.task_address(spec.job, spec.task or 0)
    except (ValueError, KeyError):
        return None


def _ps_kernels_missing(distribution, devices) -> str | None:
    """Why the fused ops cannot run on one of ``devices`` (None: they can)."""
    missing = []
    for device in devices:
        address = _task_address(distribution, device)
        if address is None:
            continue  # this process: the library is loaded here
        why = _probe(device, address)
        if why is not None:
            missing.append(why)
    if not missing:
        return None
    return "no keras_opt kernels confirmed in the process of " + ", ".join(missing)


def _probe(device: str, address: str) -> str | None:
    """Runs a keras_opt op on ``device`` once (per address); None if it ran."""
    key = (device, address)
    with _PROBE_LOCK:
        if key in _PROBED:
            return _PROBED[key]
        module = build.load()
        if module is None:
            return None  # apply_fused reports the build's reason
        where = device.split("/device:")[0]
        if not tf.compat.v1.executing_eagerly_outside_functions():
            return f"{where} (cannot probe it from a TF1 graph)"
        try:
            with tf.init_scope(), tf.device(device):
                module.keras_opt_fused_isa().numpy()
            why = None
        except Exception as exc:  # noqa: BLE001 - any failure means: fall back
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            if len(message) > 100:
                message = message[:100] + "..."
            why = f"{where} ({type(exc).__name__}: {message})"
            logger.debug("keras_opt fused kernels unavailable on %s: %s", device, why)
            if isinstance(exc, _TRANSIENT):
                return why  # a peer down now: this step falls back, a later trace asks again
        _PROBED[key] = why
        return why


def _record(opt, fused, per_variable, reason):
    opt._fused_last_paths = {
        "fused": list(fused),
        "per_variable": list(per_variable),
        "reason": reason,
    }
    if reason and per_variable:
        logger.debug(
            "keras_opt %s: per-variable path for %d variables: %s",
            opt._name,
            len(per_variable),
            reason,
        )


def _var_name(var) -> str:
    try:
        return var.name
    except (AttributeError, ValueError):  # pragma: no cover
        return repr(var)


def _local_pairs(opt, distribution, grad, var, rule, sparse):
    """[(device, dtype, grad, var, [slots])] per replica, or (None, reason)."""
    from tensorflow.python.ops import resource_variable_ops

    if isinstance(var, tf.Tensor):
        return None, "not a variable"
    if variables_lib.constraint_of(var) is not None:  # also a Keras 3 wrapper's
        return None, "variable has a constraint"
    if var.dtype.base_dtype not in _DTYPES:
        return None, f"dtype {var.dtype.name}"
    local_vars = distribution.experimental_local_results(var)
    local_grads = distribution.experimental_local_results(grad)
    if len(local_vars) != len(local_grads):
        return None, "replica counts differ"
    slot_locals = []
    for name in rule.slots:
        slot = opt.get_slot(var, name)
        slot_locals.append(distribution.experimental_local_results(slot))
        if len(slot_locals[-1]) != len(local_vars):
            return None, "slot replica counts differ"
    out = []
    for i, (lv, lg) in enumerate(zip(local_vars, local_grads)):
        if not isinstance(lv, resource_variable_ops.BaseResourceVariable):
            return None, "not a resource variable"
        if sparse != isinstance(lg, tf.IndexedSlices):
            return None, "dense and sparse gradients mixed across replicas"
        if not _is_cpu(lv.device):
            return None, f"device {lv.device} has no fused kernel"
        if _is_ps_strategy(distribution):
            why = _ps_kernels_missing(distribution, [lv.device])
            if why is not None:
                return None, why
        slots = [s[i] for s in slot_locals]
        if any(
            s.device != lv.device or not isinstance(s, resource_variable_ops.BaseResourceVariable)
            for s in slots
        ):
            return None, "slot not on the variable's device"
        out.append((lv.device, lv.dtype.base_dtype, lg, lv, slots))
    return out, None


def apply_fused(opt, distribution, grads_and_vars, apply_state):
    """Emits the fused updates; returns (update_ops, pairs left for `_apply_one`)."""
    grads_and_vars = list(grads_and_vars)
    all_names = [_var_name(v) for _, v in grads_and_vars]
    ok, reason = enabled(opt)
    if ok and xla.in_xla_context():
        ok, reason = False, "traced for XLA (jit_compile)"
    rule = None
    if ok:
        rule, reason = rule_for(opt)
        ok = rule is not None
    if ok:
        ok, reason = _strategy_ok(distribution)
    module = build.load() if ok else None
    if ok and module is None:
        ok, reason = False, build.status()["reason"]
    if not ok:
        _record(opt, [], all_names, reason)
        return [], grads_and_vars

    groups = collections.OrderedDict()  # (device, dtype) -> [(grad, var, slots)]
    sparse_items = []
    remaining, fused_names, reasons = [], [], []
    # A variable given twice is updated twice, in order, by the per-variable path.
    counts = collections.Counter(id(v) for _, v in grads_and_vars)
    for grad, var in grads_and_vars:
        if counts[id(var)] > 1:
            remaining.append((grad, var))
            reasons.append("variable given more than once")
            continue
        # Under MirroredStrategy the aggregated gradient wraps one per replica.
        sparse = isinstance(distribution.experimental_local_results(grad)[0], tf.IndexedSlices)
        if sparse and not rule.sparse:
            remaining.append((grad, var))
            reasons.append("sparse gradient")
            continue
        locals_, why = _local_pairs(opt, distribution, grad, var, rule, sparse)
        if locals_ is None:
            remaining.append((grad, var))
            reasons.append(why)
            continue
        fused_names.append(_var_name(var))
        for device, dtype, lg, lv, slots in locals_:
            if sparse:
                sparse_items.append((device, dtype, lg, lv, slots))
            else:
                groups.setdefault((device, dtype), []).append((lg, lv, slots))

    update_ops = []
    use_locking = bool(getattr(opt, "_use_locking", False))
    for (device, dtype), items in groups.items():
        with tf.device(device), _name_scope_in_graph("update_fused"):
            coef = opt._coefficients(items[0][1], apply_state)
            coefs = rule.coefs(coef)
            variables = [v for _, v, _ in items]
            slots = [s[j] for j in range(len(rule.slots)) for _, _, s in items]
            grads = [_as_tensor(g, dtype) for g, _, _ in items]
            coefs = [tf.convert_to_tensor(c, dtype=dtype) for c in coefs]
            if var_groups.enabled():
                # One captured handle for the whole group (see groups.py).
                group = var_groups.group_for(opt, device, variables, slots)
                op = module.keras_opt_fused_apply_group(
                    group=group.resource_handle,
                    grad=grads,
                    coefs=coefs,
                    rule=rule.code,
                    use_locking=use_locking,
                )
                var_groups.note_update(group, variables + slots)
            else:
                op = module.keras_opt_fused_apply(
                    var=[v.handle for v in variables],
                    slots=[s.handle for s in slots],
                    grad=grads,
                    coefs=coefs,
                    rule=rule.code,
                    use_locking=use_locking,
                )
            if op is not None:
                update_ops.append(op)
    eager_outside = tf.compat.v1.executing_eagerly_outside_functions()
    for device, _dtype, grad, var, slots in sparse_items:
        # The name scope of the per-variable path (graph users look ops up by it).
        scope = "update" if eager_outside else "update_" + var.op.name
        with tf.device(device), _name_scope_in_graph(scope):
            coef = opt._coefficients(var, apply_state)
            values, indices = _dedup(grad)
            if rule.sparse == "adam":
                op = _sparse_adam(module, coef, var, slots, values, indices, use_locking)
            elif rule.sparse == "nadam":
                op = _sparse_nadam(module, coef, var, slots, values, indices, use_locking)
            else:
                op = _sparse_rms(module, coef, var, slots, values, indices, use_locking)
            if op is not None:
                update_ops.append(op)
    _record(
        opt,
        fused_names,
        [_var_name(v) for _, v in remaining],
        "; ".join(sorted(set(reasons))) or None,
    )
    return update_ops, remaining


def _sparse_adam(module, coef, var, slots, values, indices, use_locking):
    # The same TF ops as Adam's composite sparse path, so that graph rewrites
    # (Grappler) give these rows the same bits there and here.
    m_scaled = values * coef["one_minus_beta_1_t"]
    v_scaled = values * values * coef["one_minus_beta_2_t"]
    return module.keras_opt_fused_sparse_apply_adam(
        var=var.handle,
        m=slots[0].handle,
        v=slots[1].handle,
        vhat=[s.handle for s in slots[2:]],
        m_scaled=m_scaled,
        v_scaled=v_scaled,
        indices=indices,
        beta1=coef["beta_1_t"],
        beta2=coef["beta_2_t"],
        lr=coef["lr"],
        epsilon=coef["epsilon"],
        use_locking=use_locking,
    )


def _sparse_nadam(module, coef, var, slots, values, indices, use_locking):
    # The row terms by the TF ops of Nadam's composite sparse path, in its order.
    g_term = coef["one_minus_m_t"] * (values / coef["one_minus_m_schedule_new"])
    m_scaled = values * coef["one_minus_beta_1_t"]
    v_scaled = values * values * coef["one_minus_beta_2_t"]
    return module.keras_opt_fused_sparse_apply_nadam(
        var=var.handle,
        m=slots[0].handle,
        v=slots[1].handle,
        g_term=g_term,
        m_scaled=m_scaled,
        v_scaled=v_scaled,
        indices=indices,
        beta1=coef["beta_1_t"],
        beta2=coef["beta_2_t"],
        one_minus_m_schedule_next=coef["one_minus_m_schedule_next"],
        v_t_prime_denominator=coef["v_t_prime_denominator"],
        m_t_1=coef["m_t_1"],
        neg_lr=coef["neg_lr_t"],
        epsilon=coef["epsilon"],
        use_locking=use_locking,
    )


def _sparse_rms(module, coef, var, slots, values, indices, use_locking):
    # RMSprop without momentum: the row terms by the composite path's TF ops.
    ms_add = values * values * coef["one_minus_rho"]
    mg_add = [values * coef["one_minus_rho"]] if len(slots) > 1 else []
    return module.keras_opt_fused_sparse_apply_rms_prop(
        var=var.handle,
        ms=slots[0].handle,
        mg=[s.handle for s in slots[1:]],
        ms_add=ms_add,
        mg_add=mg_add,
        num=coef["neg_lr_t"] * values,
        indices=indices,
        rho=coef["rho"],
        epsilon=coef["epsilon"],
        use_locking=use_locking,
    )


def _name_scope_in_graph(name):
    if tf.executing_eagerly():
        return contextlib.nullcontext()
    return tf.name_scope(name)


def _dedup(grad):
    from keras_opt.optimizer_v2 import gradients as gradients_lib

    return gradients_lib.deduplicate_indexed_slices(values=grad.values, indices=grad.indices)


def last_paths(opt) -> dict:
    """Which path the optimizer's last `apply_gradients` (or trace) took per variable.

    ``{'fused': [names], 'per_variable': [names], 'reason': why some or all fell back}``.
    """
    return dict(
        getattr(
            opt, "_fused_last_paths", {"fused": [], "per_variable": [], "reason": "not applied yet"}
        )
    )
