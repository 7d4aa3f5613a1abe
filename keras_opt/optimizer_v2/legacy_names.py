"""Small public helpers of tf_keras's ``optimizer_v2`` module, for code that imports them.

``keras_opt.optimizer_v2.optimizer_v2`` re-exports these so that the module has
the public names of its tf_keras twin (tests/test_module_names.py audits that).
"""

from __future__ import annotations

import tensorflow as tf


class NullContextmanager:
    """A context manager that does nothing (accepts and ignores any arguments)."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return None

    def __exit__(self, type_arg, value_arg, traceback_arg):
        return False  # never suppresses an exception


def name_scope_only_in_function_or_graph(name: str):
    """``tf.name_scope(name)`` in a function or graph; a no-op context eagerly."""
    if not tf.executing_eagerly():
        return tf.name_scope(name)
    return NullContextmanager()
