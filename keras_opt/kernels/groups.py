"""Variable groups: one captured handle per fused dense group in a traced step.

A ``tf.function`` pays, on every call, for each tensor it captures (TensorFlow
hashes the type of every capture to find the concrete function, then passes
each one to the runtime). A step over 1000 small variables with Adam captures
3000 variable and slot handles, and those costs dominate its time. Inside a
``tf.function`` the fused dense update therefore takes one handle: a
``KerasOptVarGroup`` made once (eagerly, when the step is traced) from the
group's variables and slots, and kept on the optimizer for the next traces.
The group holds the variables themselves, not their buffers: assignments,
checkpoint restores and ``set_weights`` are seen by the next update, and the
slots stay ordinary variables with tf_keras's checkpoint keys.

Two things a captured handle gave for free are kept by hand:

- **Ordering.** TensorFlow orders the stateful ops of a ``tf.function`` per
  resource handle. A resolver registered with automatic control dependencies
  makes every op that touches a member (a read of a variable in the forward
  pass, a weight decay assignment, a read of a slot after the step) touch the
  group too, in each graph that uses the group, so those ops keep their order
  around the fused update.
- **SavedModel.** A group is a ``TrackableResource`` that the optimizer lists
  as a child for SavedModel exports only (checkpoints are unchanged); its
  members are its dependencies, and where keras_opt is imported the loader
  rebuilds it from the restored variables. The group itself puts no keras_opt
  op into the SavedModel: a model saved with its optimizer still loads where
  keras_opt is absent, unless a saved function runs fused ops.

Eager steps and TF1 graphs pass the handles directly (nothing is captured
there). ``KERAS_OPT_FUSED_GROUPS=0`` turns groups off (the fused op then takes
every handle, as before).
"""

from __future__ import annotations

import copy
import os
import weakref

import tensorflow as tf
from tensorflow.python.framework import auto_control_deps
from tensorflow.python.framework import ops as tf_ops
from tensorflow.python.saved_model import registration


def enabled() -> bool:
    """Whether a fused dense update emitted now uses a group handle."""
    if os.environ.get("KERAS_OPT_FUSED_GROUPS", "1").strip().lower() in ("0", "false", "no"):
        return False
    return tf.inside_function() and tf.compat.v1.executing_eagerly_outside_functions()


@registration.register_serializable(package="keras_opt", name="FusedVarGroup")
class VarGroup(tf.saved_model.experimental.TrackableResource):
    """A ``KerasOptVarGroup`` resource over fixed variables (weakly referenced)."""

    def __init__(self, device: str, members, names):
        super().__init__(device=device)
        self._member_refs = [weakref.ref(m) for m in members]
        self._names = list(names)
        with tf.init_scope():
            self.resource_handle  # noqa: B018  (creates the resource eagerly)

    def _members(self):
        members = [ref() for ref in self._member_refs]
        if any(m is None for m in members):
            raise RuntimeError(
                "A fused variable group outlived one of its variables; trace the step again"
            )
        return members

    def _create_resource(self):
        from keras_opt.kernels import build

        return build.load().keras_opt_var_group(
            members=[m.handle for m in self._members()], names=self._names
        )

    # SavedModel. Nothing of keras_opt's op library goes into the SavedModel
    # for the group itself, so a model saved with its optimizer loads where
    # keras_opt is absent (serving) unless a saved function uses fused ops:
    # no saved creator function (TrackableResource would save one), a plain
    # handle op as the group's stand-in in the exported graph (no saved
    # signature uses it), and where keras_opt is imported the loader rebuilds
    # the group from its restored members (`_deserialize_from_proto`).
    def _trackable_children(self, save_type="checkpoint", **kwargs):
        children = super()._trackable_children(save_type, **kwargs)
        children.pop("_create_resource", None)  # the initializer and destroyer are no-ops
        return children

    def _deserialization_dependencies(self, children):
        # The members (variables and slots, tracked elsewhere) are exported and
        # restored before the group that is made from them.
        deps = dict(super()._deserialization_dependencies(children))
        deps.update({f"member_{i}": m for i, m in enumerate(self._members())})
        return deps

    def _export_to_saved_model_graph(self, object_map, tensor_map, **unused_kwargs):
        new_obj = copy.copy(self)
        with tf.device(self._resource_device):
            new_obj._resource_handle = tf.raw_ops.VarHandleOp(
                dtype=tf.int32, shape=[], shared_name="keras_opt_fused_group_stand_in"
            )
        object_map[self] = new_obj
        tensor_map[self.resource_handle] = new_obj._resource_handle
        return [self.resource_handle]

    @classmethod
    def _deserialize_from_proto(cls, object_proto=None, dependencies=None, **unused_kwargs):
        from keras_opt.kernels import build

        device = object_proto.resource.device if object_proto is not None else ""
        if build.load() is None:
            # Loads (e.g. to serve) without the library; only a saved function
            # that runs the fused ops needs the group, and it fails then.
            return _UnavailableGroup(device, build.status()["reason"])
        count = sum(1 for key in dependencies if key.startswith("member_"))
        members = [dependencies[f"member_{i}"] for i in range(count)]
        with tf.init_scope():
            return cls(device, members, [_name(m) for m in members])


class _UnavailableGroup(tf.saved_model.experimental.TrackableResource):
    """A loaded group where keras_opt's op library is not available."""

    def __init__(self, device: str, reason):
        super().__init__(device=device)
        self._reason = reason

    def _create_resource(self):
        raise RuntimeError(
            "This SavedModel holds a traced step with keras_opt's fused ops, which need "
            f"keras_opt's op library here: {self._reason}"
        )


class _GroupCache(dict):
    """An optimizer's groups. A copy of the optimizer starts with none: the
    groups hold the original's variables."""

    def __copy__(self):
        return _GroupCache()

    def __deepcopy__(self, memo):
        return _GroupCache()


def _cache(opt) -> dict:
    cache = getattr(opt, "_fused_groups", None)
    if cache is None:
        cache = _GroupCache()
        opt._fused_groups = cache
    return cache


def group_for(opt, device: str, variables, slots) -> VarGroup:
    """The group of ``variables`` then ``slots`` (slot-major), made once per optimizer."""
    members = list(variables) + list(slots)
    key = (device, tuple(id(m) for m in members))
    cache = _cache(opt)
    group = cache.get(key)
    if group is None:
        names = [_name(m) for m in members]
        # Made eagerly: nothing of the graph being traced is kept alive by it.
        with tf.init_scope():
            group = VarGroup(device, members, names)
        cache[key] = group
        # Forget the group when one of the step's variables goes away (the
        # slots belong to the optimizer), so it does not keep them alive.
        for var in variables:
            weakref.finalize(var, cache.pop, key, None)
    return group


def savedmodel_children(opt) -> dict:
    """The optimizer's groups, named for a SavedModel export."""
    groups = getattr(opt, "_fused_groups", {}).values()
    return {f"_fused_group_{i}": group for i, group in enumerate(groups)}


def _name(var) -> str:
    try:
        return var.name
    except (AttributeError, ValueError):  # pragma: no cover
        return repr(var)


# graph -> {id(member's eager handle): group's eager handle}, for the graph
# that emitted a group update and each graph around it.
_MEMBERS_BY_GRAPH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# graph -> (number of captures, {id(captured placeholder): id(eager tensor)})
_CAPTURE_KEYS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def note_update(group: VarGroup, members) -> None:
    """Records, for the current graph and the graphs around it, that ``members``
    belong to ``group`` (read by the control-dependency resolver below)."""
    handle = group.resource_handle
    table = {id(m.handle): handle for m in members}
    graph = tf_ops.get_default_graph()
    while graph is not None and isinstance(graph, tf.__internal__.FuncGraph):
        _MEMBERS_BY_GRAPH.setdefault(graph, {}).update(table)
        graph = getattr(graph, "outer_graph", None)


def _capture_keys(graph) -> dict:
    by_val = graph.function_captures.by_val_internal
    cached = _CAPTURE_KEYS.get(graph)
    if cached is None or cached[0] != len(by_val):
        cached = (len(by_val), {id(t): key for key, t in by_val.items()})
        _CAPTURE_KEYS[graph] = cached
    return cached[1]


@auto_control_deps.register_acd_resource_resolver
def _members_touch_their_group(op, resource_reads, resource_writes):
    """An op that reads (writes) a group's member also reads (writes) the group."""
    table = _MEMBERS_BY_GRAPH.get(op.graph)
    if not table:
        return False
    keys = _capture_keys(op.graph)
    by_val = op.graph.function_captures.by_val_internal

    def groups_of(resources):
        out = []
        for t in resources:
            key = keys.get(id(t))
            group = table.get(key) if key is not None else None
            group_t = by_val.get(id(group)) if group is not None else None
            if group_t is not None and not any(x is group_t for x in out):
                out.append(group_t)
        return out

    updated = False
    # A write of a member writes the group; a read reads it unless the op also
    # writes it (ACD drops reads that are writes: adding them again would loop).
    for group_t in groups_of(resource_writes):
        if group_t not in resource_writes:
            resource_writes.add(group_t)
            updated = True
    for group_t in groups_of(resource_reads):
        if group_t not in resource_reads and group_t not in resource_writes:
            resource_reads.add(group_t)
            updated = True
    return updated
