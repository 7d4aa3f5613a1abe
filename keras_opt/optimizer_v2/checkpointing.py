"""Restoring slot variables from checkpoints without losing any of them.

TensorFlow's checkpoint calls ``_create_or_restore_slot_variable`` on the
optimizer for every slot value it finds under a variable. The base keeps
tf_keras's contract (a missing slot is created eagerly from the checkpoint
value, or the value waits in ``_deferred_slot_restorations`` until `add_slot`
creates the slot) and adds what tf_keras lacks, through the helpers here:

* ShardedVariable: a slot of a sharded variable lives in its shards, which
  exist only once the slots are created for the shards. tf_keras creates one
  full-size variable for it instead and later creates the shard slots at their
  initial values, so the restored value is silently lost (ParameterServerStrategy
  with a ``variable_partitioner``). Here the value waits until every shard has
  its slot and is then restored into them, slice by slice.
* A checkpoint value whose shape differs from the variable's is never turned
  into a slot of that shape; it waits, and restoring it into the real slot
  raises a ``ValueError`` naming the slot and both shapes.
* Slot values the optimizer does not use (an Adam checkpoint restored into
  SGD) are reported with a `CheckpointMismatchWarning` naming the variable and
  the slots, and are not kept as slots of the optimizer. When some slots of a
  variable come from the checkpoint and others do not (Adam into
  ``Adam(amsgrad=True)``), the ones left at their initial values are named too.
"""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

import tensorflow as tf

from keras_opt.optimizer_v2 import accumulation
from keras_opt.optimizer_v2 import variables as variables_lib

_ShardedVariable = tf.__internal__.distribute.ShardedVariable


class CheckpointMismatchWarning(UserWarning):
    """A checkpoint and an optimizer disagree about slot variables."""


def is_sharded(var: Any) -> bool:
    """True for a ``ShardedVariable`` (the container, not one of its shards)."""
    return isinstance(var, _ShardedVariable)


def sharded_container(var: Any) -> Any:
    """The ShardedVariable ``var`` is a shard of, or None."""
    ref = getattr(var, "_sharded_container", None)
    return ref() if ref is not None else None


def slots_created(opt: Any, var: Any) -> bool:
    """Whether the optimizer has already created the slots of ``var``."""
    key = variables_lib.var_key(var)
    if is_sharded(var):
        return key in opt._slots
    return key in opt._vars_with_slots


def sharded_slots_ready(opt: Any, var: Any) -> bool:
    """Whether every shard of the ShardedVariable ``var`` has its slots."""
    return all(variables_lib.var_key(s) in opt._vars_with_slots for s in var.variables)


def value_fits(position: Any, var: Any, slot_shape: Any = None) -> bool:
    """Whether a slot created from ``position`` would have ``var``'s shape.

    A checkpoint value of another shape (the model changed since it was written)
    must not become a slot: the restore is deferred so the error is raised
    where the slot is created with its real shape.
    """
    if slot_shape is not None:
        return True
    return tf.TensorShape(position.value_shape()) == tf.TensorShape(var.shape)


def note_checkpoint_slot(opt: Any, var: Any, slot_name: str) -> None:
    """Records that a checkpoint holds slot ``slot_name`` of ``var``."""
    key = variables_lib.var_key(var)
    opt._checkpoint_slot_names.setdefault(key, set()).add(slot_name)


@contextlib.contextmanager
def recording_slot_requests(opt: Any) -> Iterator[dict]:
    """Collects, per variable key, the slot names `add_slot` is asked for."""
    previous = opt._slot_requests
    requests: dict = {}
    opt._slot_requests = requests
    try:
        yield requests
    finally:
        opt._slot_requests = previous


def restore_positions(positions: list, slot_variable: Any) -> None:
    """Restores waiting checkpoint values into a slot (of several restores, the newest wins)."""
    positions.sort(key=lambda position: position.restore_uid, reverse=True)
    for position in positions:
        check_shape(position, slot_variable)
        position.restore(slot_variable)


def check_shape(position: Any, slot_variable: Any) -> None:
    """Raises a clear error when a checkpoint value does not fit its slot."""
    if not position.is_simple_variable() or position.has_non_trivial_reshard_callback():
        return
    value_shape = tf.TensorShape(position.value_shape())
    if value_shape != tf.TensorShape(slot_variable.shape):
        raise ValueError(
            f"Cannot restore optimizer slot variable {slot_variable.name}: the checkpoint "
            f"value has shape {value_shape.as_list()}, the slot has shape "
            f"{tf.TensorShape(slot_variable.shape).as_list()}. The checkpoint was written "
            "for a model with other variable shapes."
        )


def _warn(message: str) -> None:
    warnings.warn(message, CheckpointMismatchWarning, stacklevel=3)


def warn_foreign_slots(opt: Any, var: Any, names: list[str], used: list[str]) -> None:
    """Warns that checkpoint slots ``names`` of ``var`` are not slots of ``opt``."""
    _warn(
        f"Optimizer {opt._name} ({type(opt).__name__}) did not restore the checkpoint "
        f"slot(s) {sorted(names)} of variable {variables_lib.variable_name(var)}: it "
        f"uses the slots {sorted(used)} for that variable. The checkpoint was probably "
        "written by another optimizer class or configuration; those values are ignored."
    )


def _warn_missing_slots(opt: Any, var: Any, names: list[str]) -> None:
    _warn(
        f"Optimizer {opt._name} ({type(opt).__name__}): the checkpoint has no value for "
        f"slot(s) {sorted(names)} of variable {variables_lib.variable_name(var)}, while "
        "it has values for its other slots; those slots start at their initial values."
    )


def _drop_slot(opt: Any, key: Any, slot_name: str) -> None:
    slot = opt._slots.get(key, {}).pop(slot_name, None)
    if slot is not None:
        opt._weights[:] = [w for w in opt._weights if w is not slot]
    if not any(slot_name in slots for slots in opt._slots.values()):
        if slot_name in opt._slot_names:
            opt._slot_names.remove(slot_name)


def _pop_deferred(opt: Any, key: Any, slot_name: str) -> list:
    return opt._deferred_slot_restorations.get(slot_name, {}).pop(key, [])


def _check_one(opt: Any, var: Any, key: Any, asked: set) -> None:
    """Drops and reports slots the checkpoint gave ``var`` that ``opt`` does not use."""
    from_checkpoint = opt._checkpoint_slot_names.get(key, set())
    foreign = sorted(from_checkpoint - asked)
    for slot_name in foreign:
        _drop_slot(opt, key, slot_name)
        _pop_deferred(opt, key, slot_name)
    if foreign:
        warn_foreign_slots(opt, var, foreign, sorted(asked))
    # A fresh gradient accumulator (zero) is exactly right: not worth a warning.
    missing = sorted(asked - from_checkpoint - {accumulation.SLOT})
    if from_checkpoint & asked and missing:
        _warn_missing_slots(opt, var, missing)


def check_new_slots(opt: Any, var_list: list, requests: dict) -> None:
    """After `_create_slots` for ``var_list``: report and drop foreign slots.

    ``requests`` maps variable keys to the slot names `_create_slots` asked for.
    Slots created earlier from a checkpoint under other names are not slots of
    this optimizer: they are removed from its weights and reported.
    """
    for var in var_list:
        if sharded_container(var) is None:
            key = variables_lib.var_key(var)
            _check_one(opt, var, key, requests.get(key, set()))


def restore_sharded_slots(opt: Any, var_list: list) -> None:
    """Restores checkpoint values that were waiting for the shards' slots.

    Called once the shards in ``var_list`` have their slots. A container whose
    shards do not all have slots yet keeps its values waiting.
    """
    containers = {}
    for var in var_list:
        container = sharded_container(var)
        if container is not None:
            containers[id(container)] = container
    for container in containers.values():
        if not sharded_slots_ready(opt, container):
            continue
        key = variables_lib.var_key(container)
        shard_slots = [opt._slots.get(variables_lib.var_key(s), {}) for s in container.variables]
        asked = {name for name in opt._slot_names if all(name in slots for slots in shard_slots)}
        for slot_name in sorted(asked):
            positions = _pop_deferred(opt, key, slot_name)
            if positions:
                restore_positions(positions, opt.get_slot(container, slot_name))
        _check_one(opt, container, key, asked)
