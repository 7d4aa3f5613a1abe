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
"""

from keras_opt.kernels.build import status
from keras_opt.kernels.dispatch import last_paths

__all__ = ["status", "last_paths"]
