"""Slot variables of OptimizerV2: creation, lookup and checkpoint restoration.

Slots are per-variable optimizer state (Adam's ``m`` and ``v``...), stored in
``self._slots[var_key(var)][slot_name]`` and named ``<optimizer>/<var>/<slot>``.
Their names, creation order and the ``get_slot_names``/``get_slot`` pair are
what ``tf.train.Checkpoint`` saves under ``<var>/.OPTIMIZER_SLOT/<opt>/<slot>``,
and ``_create_or_restore_slot_variable`` is what it calls to restore them, so
they follow tf_keras legacy exactly (with the fixes described in
checkpointing.py).
"""

from __future__ import annotations

import functools

import tensorflow as tf

from keras_opt.optimizer_v2 import checkpointing
from keras_opt.optimizer_v2 import variables as variables_lib


class SlotMixin:
    """Slot methods of OptimizerV2 (state lives in ``self._slots``, ``self._slot_names``)."""

    def _create_slots(self, var_list):
        """Creates the slots of ``var_list`` with `add_slot` (subclasses)."""

    def _create_slots_for_sharded_variables(self, var_list):
        """Registers ShardedVariable containers so `get_slot` can rebuild their slots."""
        sharded = {}
        for var in var_list:
            container = getattr(var, "_sharded_container", None)
            if container:
                sharded_var = container()
                sharded[id(sharded_var)] = sharded_var
        for sharded_var in sharded.values():
            self._slots[variables_lib.var_key(sharded_var)] = {
                slot: sharded_var for slot in self.get_slot_names()
            }

    def get_slot_names(self) -> list[str]:
        """Slot names in creation order."""
        return self._slot_names

    def add_slot(self, var, slot_name: str, initializer="zeros", shape=None) -> tf.Variable:
        """Creates (once) the slot ``slot_name`` of ``var``, named ``<var>/<slot_name>``.

        ``initializer`` is ``"zeros"``/``"ones"``, a callable ``(shape, dtype)``
        or an initial value. The slot takes the variable's stored dtype, is
        colocated with it and, under a strategy, is a distributed variable.
        """
        var = variables_lib.unwrap_variable(var)
        if slot_name not in self._slot_names:
            self._slot_names.append(slot_name)
        slot_dict = self._slots.setdefault(variables_lib.var_key(var), {})
        if self._slot_requests is not None:
            self._slot_requests.setdefault(variables_lib.var_key(var), set()).add(slot_name)
        weight = slot_dict.get(slot_name)
        if weight is not None:
            return weight
        dtype = variables_lib.variable_dtype(var)
        if isinstance(initializer, str) or callable(initializer):
            initializer = variables_lib.get_initializer(initializer)
            from_checkpoint = isinstance(
                initializer, tf.__internal__.tracking.CheckpointInitialValueCallable
            )
            slot_shape = shape if (from_checkpoint or shape is not None) else var.shape
            initial_value = functools.partial(initializer, shape=slot_shape, dtype=dtype)
        else:
            initial_value = initializer
        with self._distribution_strategy_scope():
            strategy = tf.distribute.get_strategy()
            if not strategy.extended.variable_created_in_scope(var):
                raise ValueError(
                    f"Trying to create optimizer slot variable under the scope for "
                    f"tf.distribute.Strategy ({strategy}), which is different from the scope "
                    f"used for the original variable ({var}). Make sure the slot variables "
                    "are created under the same strategy scope. This may happen if you're "
                    "restoring from a checkpoint outside the scope."
                )
            with strategy.extended.colocate_vars_with(var):
                weight = tf.Variable(
                    name=f"{var._shared_name}/{slot_name}",
                    dtype=dtype,
                    trainable=False,
                    initial_value=initial_value,
                )
        slot_dict[slot_name] = weight
        self._restore_slot_variable(slot_name=slot_name, variable=var, slot_variable=weight)
        self._weights.append(weight)
        return weight

    def get_slot(self, var, slot_name: str):
        """The slot ``slot_name`` of ``var`` (a ShardedVariable for sharded variables)."""
        key = variables_lib.var_key(var)
        slot = self._slots[key][slot_name]
        if isinstance(slot, tf.__internal__.distribute.ShardedVariable):
            # One composed object per (variable, slot): checkpoints bind to it, and
            # `assert_consumed` compares objects by identity.
            composed = self._sharded_slots.get((key, slot_name))
            if composed is None:
                shards = [self.get_slot(shard, slot_name) for shard in slot.variables]
                composed = tf.__internal__.distribute.ShardedVariable(shards, name=slot.name)
                self._sharded_slots[(key, slot_name)] = composed
            slot = composed
        return slot

    # Checkpoint restoration of slots (called by tf.train.Checkpoint).
    def _restore_slot_variable(self, slot_name, variable, slot_variable):
        """Applies checkpoint values that were waiting for this slot to exist."""
        key = variables_lib.var_key(variable)
        positions = self._deferred_slot_restorations.get(slot_name, {}).pop(key, [])
        checkpointing.restore_positions(positions, slot_variable)

    def _create_or_restore_slot_variable(
        self, slot_variable_position, slot_name, variable, slot_variable_shape=None
    ):
        """Called by checkpoint restore for each slot value found in a checkpoint.

        Returns the slot variable to restore into. Eagerly, a missing slot is
        created with the checkpoint value as initial value; otherwise the
        restoration is deferred until `add_slot` creates the slot. Deferred as
        well: the slots of a ShardedVariable (they live in its shards' slots, see
        checkpointing.py) and a value whose shape is not the variable's. A slot
        this optimizer does not use for ``variable`` is reported, not created.
        """
        key = variables_lib.var_key(variable)
        checkpointing.note_checkpoint_slot(self, variable, slot_name)
        slot_dict = self._slots.get(key, {})
        slot_variable = slot_dict.get(slot_name)
        sharded = checkpointing.is_sharded(variable)
        if slot_variable is None and checkpointing.slots_created(self, variable):
            used = [name for name in slot_dict if name in self._slot_names]
            checkpointing.warn_foreign_slots(self, variable, [slot_name], used)
            return None
        if sharded and slot_variable is not None:
            if not checkpointing.sharded_slots_ready(self, variable):
                slot_variable = None
        if (
            slot_variable is None
            and not sharded
            and tf.executing_eagerly()
            and slot_variable_position.is_simple_variable()
            and checkpointing.value_fits(slot_variable_position, variable, slot_variable_shape)
            and (
                not tf.compat.v1.get_default_graph()._variable_creator_stack
                or self._distribution_strategy
            )
        ):
            initializer = tf.__internal__.tracking.CheckpointInitialValueCallable(
                checkpoint_position=slot_variable_position
            )
            if slot_variable_shape is None:
                slot_variable_shape = slot_variable_position.value_shape()
            slot_variable = self.add_slot(
                var=variable,
                initializer=initializer,
                slot_name=slot_name,
                shape=slot_variable_shape,
            )
        if slot_variable is None:
            self._deferred_slot_restorations.setdefault(slot_name, {}).setdefault(key, []).append(
                slot_variable_position
            )
            return None
        if slot_variable is variable and isinstance(
            variable, tf.__internal__.distribute.ShardedVariable
        ):
            return self.get_slot(variable, slot_name)
        return slot_variable
