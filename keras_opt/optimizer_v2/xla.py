"""Is the op being built going to be compiled by XLA?

Some of TensorFlow's fused ``ResourceApply*`` / ``ResourceSparseApply*`` kernels
have no XLA kernel (e.g. ``ResourceSparseApplyAdagradV2``). Code that picks a
kernel asks ``in_xla_context()`` while tracing and emits plain ops instead.
Inside ``tf.function(jit_compile=True)`` (also a plain ``tf.function`` called
from one, and Keras's ``jit_compile=True`` train step) the graph being built, or
one of its outer graphs, carries an XLA context.
"""

from __future__ import annotations

import tensorflow as tf

try:  # TensorFlow's own test for the XLA context of a graph (private module).
    from tensorflow.python.ops import control_flow_util as _control_flow_util
except ImportError:  # pragma: no cover - other TensorFlow layouts
    _control_flow_util = None


def in_xla_context() -> bool:
    """True while tracing ops that XLA will compile; False eagerly and elsewhere."""
    if tf.executing_eagerly() or _control_flow_util is None:
        return False
    graph = tf.compat.v1.get_default_graph()
    return bool(_control_flow_util.GraphOrParentsInXlaContext(graph))
