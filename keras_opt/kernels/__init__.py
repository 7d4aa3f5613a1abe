"""Fused multi-tensor optimizer kernels (TensorFlow custom ops, CPU).

One op call updates every variable of a (device, dtype) group with the same
bits as TensorFlow's per-variable ``ResourceApply*`` kernels. The library is
built from the C++ sources shipped in this package on first use (see
`keras_opt.kernels.build`), and any failure falls back to the per-variable
path. Public helpers:

- `status()`: is the library available, why not, where, which ISA it runs.
- `last_paths(optimizer)`: which variables the last apply step fused.
- ``KERAS_OPT_FUSED=0`` or ``fused_kernels=False`` (constructor argument or
  attribute of an optimizer) turns the fused path off.

A SavedModel that holds a traced step with fused ops loads where keras_opt is
imported and its library is built (``python3 -m keras_opt.kernels build``);
export with ``fused_kernels=False`` for places without them (e.g. serving).
"""

from keras_opt.kernels.build import preload, status
from keras_opt.kernels.dispatch import last_paths

# Registers the fused ops now if the library is already built (see preload).
preload()

__all__ = ["status", "last_paths"]
