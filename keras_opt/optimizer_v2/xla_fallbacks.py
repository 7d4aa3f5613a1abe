r"""Plain-op twins of the fused training kernels that XLA cannot compile.

TensorFlow registers no XLA kernel for ``ResourceApplyAdamWithAmsgrad`` (AMSGrad),
nor for the sparse ``ResourceSparseApply{KerasMomentum, AdagradV2, Adadelta,
RMSProp, CenteredRMSProp, Ftrl, FtrlV2}`` kernels, so a ``tf.function(
jit_compile=True)`` (or Keras's XLA-compiled train step) using them fails. Inside
XLA only (see `keras_opt.optimizer_v2.xla.in_xla_context`), the optimizers build
the same update from plain ops instead; outside XLA the raw kernels run exactly
as before, so parity with tf_keras is unchanged.

Each *rule* below is pure arithmetic on tensors: it takes the current values of
the variable and its slots (``var`` first, then the slots in the kernel's
argument order), the gradient and the scalar coefficients, and returns the new
values in the same order. The formulas follow the CPU kernels of TensorFlow's
``training_ops.cc`` (same operations in the same order, e.g. ``rsqrt`` where the
kernel uses it), so results agree with the kernels to float rounding; XLA may
fuse and reassociate them, which is why they are not bit-identical.

A rule is applied by `dense_update` (whole tensors, then assignments) or by
`sparse_update` (rows ``indices`` gathered, updated, scattered back). The sparse
kernels update rows one after another; with *unique* indices (the optimizers'
``_resource_apply_sparse`` always receives deduplicated ones) that equals one
gather / compute / scatter.
"""

from __future__ import annotations

import tensorflow as tf


# ------------------------------------------------------------------ the rules
def keras_momentum(var, accum, grad, *, lr, momentum, nesterov):
    """``(Sparse)ApplyKerasMomentum``::

    accum <- momentum * accum - lr * grad
    var   <- var + momentum * accum - lr * grad     (nesterov, new accum)
    var   <- var + accum                            (otherwise)
    """
    accum_t = accum * momentum - grad * lr
    if nesterov:
        var_t = var + (accum_t * momentum - grad * lr)
    else:
        var_t = var + accum_t
    return var_t, accum_t


def adagrad_v2(var, accum, grad, *, lr, epsilon):
    """``(Sparse)ApplyAdagradV2`` (``update_slots=True``)::

    accum <- accum + grad^2
    var   <- var - lr * grad / (sqrt(accum) + epsilon)
    """
    accum_t = accum + tf.square(grad)
    var_t = var - grad * lr / (tf.sqrt(accum_t) + epsilon)
    return var_t, accum_t


def adadelta(var, accum, accum_update, grad, *, lr, rho, epsilon):
    """``(Sparse)ApplyAdadelta``::

    accum        <- rho * accum + (1 - rho) * grad^2
    update       <- sqrt(accum_update + epsilon) * rsqrt(accum + epsilon) * grad
    var          <- var - lr * update
    accum_update <- rho * accum_update + (1 - rho) * update^2
    """
    accum_t = accum * rho + tf.square(grad) * (1 - rho)
    update = tf.sqrt(accum_update + epsilon) * tf.math.rsqrt(accum_t + epsilon) * grad
    var_t = var - update * lr
    accum_update_t = accum_update * rho + tf.square(update) * (1 - rho)
    return var_t, accum_t, accum_update_t


def rmsprop(var, ms, mom, grad, *, lr, rho, momentum, epsilon):
    """``SparseApplyRMSProp`` (the momentum form of RMSprop)::

    ms  <- rho * ms + (1 - rho) * grad^2
    mom <- momentum * mom + lr * grad * rsqrt(ms + epsilon)
    var <- var - mom
    """
    ms_t = ms * rho + tf.square(grad) * (1 - rho)
    mom_t = mom * momentum + tf.math.rsqrt(ms_t + epsilon) * lr * grad
    return var - mom_t, ms_t, mom_t


def centered_rmsprop(var, mg, ms, mom, grad, *, lr, rho, momentum, epsilon):
    """``SparseApplyCenteredRMSProp``::

    ms  <- rho * ms + (1 - rho) * grad^2
    mg  <- rho * mg + (1 - rho) * grad
    mom <- momentum * mom + lr * grad * rsqrt(ms + epsilon - mg^2)
    var <- var - mom
    """
    ms_t = ms * rho + tf.square(grad) * (1 - rho)
    mg_t = mg * rho + grad * (1 - rho)
    mom_t = mom * momentum + tf.math.rsqrt(ms_t + epsilon - tf.square(mg_t)) * lr * grad
    return var - mom_t, mg_t, ms_t, mom_t


def ftrl(var, accum, linear, grad, *, lr, l1, l2, lr_power, l2_shrinkage=None):
    """``(Sparse)ApplyFtrl`` and, with ``l2_shrinkage``, ``(Sparse)ApplyFtrlV2``
    (``multiply_linear_by_lr=False``). With ``p = -lr_power`` (``x^p`` computed
    as ``sqrt(x)`` when ``lr_power == -0.5``, as the kernels do)::

        g'        = grad + 2 * l2_shrinkage * var          (V2; else g' = grad)
        accum_new = accum + grad^2
        linear    <- linear + g' - (accum_new^p - accum^p) / lr * var
        quadratic = accum_new^p / lr + 2 * l2
        var       <- (sign(linear) * l1 - linear) / quadratic   if |linear| > l1
                     0                                          otherwise
        accum     <- accum_new
    """
    grad_shrunk = grad if l2_shrinkage is None else grad + 2 * l2_shrinkage * var
    accum_t = accum + tf.square(grad)
    is_sqrt = tf.equal(lr_power, tf.constant(-0.5, lr_power.dtype))

    def power(x):
        return tf.where(is_sqrt, tf.sqrt(x), tf.pow(x, -lr_power))

    accum_t_power = power(accum_t)
    linear_t = linear + (grad_shrunk - (accum_t_power - power(accum)) / lr * var)
    quadratic = accum_t_power / lr + 2 * l2
    pre_shrink = (l1 * tf.sign(linear_t) - linear_t) / quadratic
    var_t = tf.where(tf.abs(linear_t) > l1, pre_shrink, tf.zeros([], pre_shrink.dtype))
    return var_t, accum_t, linear_t


def adam_amsgrad(var, m, v, vhat, grad, *, beta1_power, beta2_power, lr, beta1, beta2, epsilon):
    """``ApplyAdamWithAmsgrad``::

    alpha = lr * sqrt(1 - beta2_power) / (1 - beta1_power)
    m     <- m + (grad - m) * (1 - beta1)
    v     <- v + (grad^2 - v) * (1 - beta2)
    vhat  <- max(vhat, v)
    var   <- var - m * alpha / (sqrt(vhat) + epsilon)
    """
    alpha = lr * tf.sqrt(1 - beta2_power) / (1 - beta1_power)
    m_t = m + (grad - m) * (1 - beta1)
    v_t = v + (tf.square(grad) - v) * (1 - beta2)
    vhat_t = tf.maximum(vhat, v_t)
    var_t = var - m_t * alpha / (tf.sqrt(vhat_t) + epsilon)
    return var_t, m_t, v_t, vhat_t


# ---------------------------------------------------------- applying a rule
def _read(variable):
    return tf.raw_ops.ReadVariableOp(resource=variable.handle, dtype=variable.dtype.base_dtype)


def dense_update(rule, variables, grad, **coefficients):
    """Runs ``rule`` on the whole of ``variables`` (var, then slots) and assigns.

    Every new value is computed from the old ones before any is written.
    Returns the grouped assignments.
    """
    new_values = rule(*[_read(v) for v in variables], grad, **coefficients)
    with tf.control_dependencies(new_values):
        return tf.group(
            *[
                tf.raw_ops.AssignVariableOp(resource=v.handle, value=value)
                for v, value in zip(variables, new_values)
            ]
        )


def sparse_update(rule, variables, grad, indices, **coefficients):
    """Runs ``rule`` on rows ``indices`` (unique) of ``variables`` and scatters them back.

    ``grad`` holds one row per index. Every new row is computed from the old
    rows before any is written. Returns the grouped scatter updates.
    """
    rows = [
        tf.raw_ops.ResourceGather(resource=v.handle, indices=indices, dtype=v.dtype.base_dtype)
        for v in variables
    ]
    new_rows = rule(*rows, grad, **coefficients)
    with tf.control_dependencies(new_rows):
        return tf.group(
            *[
                tf.raw_ops.ResourceScatterUpdate(resource=v.handle, indices=indices, updates=row)
                for v, row in zip(variables, new_rows)
            ]
        )
