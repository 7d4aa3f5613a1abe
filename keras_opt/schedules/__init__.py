"""Learning-rate schedules, compatible with ``tf_keras.optimizers.schedules``.

Any optimizer takes one as ``learning_rate``; ``serialize`` / ``deserialize`` read and
write tf_keras's config dicts, and ``register_schedule`` makes a custom subclass
round-trip by name.
"""

from keras_opt.schedules.learning_rate_schedule import (
    CosineDecay,
    CosineDecayRestarts,
    ExponentialDecay,
    InverseTimeDecay,
    LearningRateSchedule,
    PiecewiseConstantDecay,
    PolynomialDecay,
)
from keras_opt.schedules.serialization import deserialize, register_schedule, serialize

__all__ = [
    "CosineDecay",
    "CosineDecayRestarts",
    "ExponentialDecay",
    "InverseTimeDecay",
    "LearningRateSchedule",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "deserialize",
    "register_schedule",
    "serialize",
]
