"""Mixed precision for keras_opt optimizers.

``LossScaleOptimizer`` (tf_keras's legacy loss scaling) is not implemented yet:
it is the subject of the open mixed-precision issue. Until it lands, this
package exports nothing.
"""

__all__: list = []
