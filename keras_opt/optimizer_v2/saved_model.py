"""SavedModel support: how a keras_opt optimizer is saved and revived.

`tf.saved_model.save` records each object with the identifier of a registered
"revived type" whose predicate accepts it; `tf.saved_model.load` rebuilds it
with that type's factory and then recreates its slot variables by calling
``add_slot`` on the rebuilt object. An optimizer saved as a plain trackable
cannot be loaded back (the plain object has no ``add_slot``), so keras_opt
registers its own type under the identifier ``"keras_opt_optimizer"``; tf_keras
registers ``"optimizer"`` (or ``"tf_keras_optimizer"``) for its own classes,
and both can live in one process.

The loaded object is a `RestoredOptimizer`: it holds ``iter``, the
hyperparameter variables and the slots, which the saved ``tf.function`` train
steps use; it has no update rule of its own (as in tf_keras). To train in
Python again, build the optimizer from its config and restore a checkpoint.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from keras_opt.optimizer_v2.optimizer_v2 import OptimizerV2

IDENTIFIER = "keras_opt_optimizer"


class RestoredOptimizer(OptimizerV2):
    """The optimizer of a loaded SavedModel: its variables, no update rule.

    ``iterations`` (also reachable as ``.iter``), hyperparameters by name
    (``.learning_rate``) and `get_slot` work; `apply_gradients` and `build` raise.
    """

    def __init__(self):
        super().__init__("RestoredOptimizer")
        self._hypers_created = True

    def _set_dependency(self, name: str, value: Any) -> None:
        """Setter the loader calls for each saved child (``iter``, hyperparameters)."""
        self._set_hyper(name, value)
        if name == "iter" and self._iterations is None:
            self._iterations = value
            self._weights.insert(0, value)

    def _create_all_weights(self, var_list):
        # `apply_gradients` and `build` start here: fail before touching any state.
        raise NotImplementedError(_NO_UPDATE_RULE)

    def get_config(self) -> dict:
        raise NotImplementedError(
            "A RestoredOptimizer (the optimizer of a loaded SavedModel) does not know "
            "its constructor arguments; keep the optimizer's config next to the model."
        )


_NO_UPDATE_RULE = (
    "A RestoredOptimizer (the optimizer of a loaded SavedModel) has no update rule: call "
    "the train step saved with the model, or build the optimizer from its class and "
    "config and restore a checkpoint into it."
)


def _register() -> None:
    if IDENTIFIER in tf.__internal__.saved_model.load.registered_identifiers():
        return
    tf.__internal__.saved_model.load.register_revived_type(
        IDENTIFIER,
        lambda obj: isinstance(obj, OptimizerV2),
        versions=[
            tf.__internal__.saved_model.load.VersionedTypeRegistration(
                object_factory=lambda proto: RestoredOptimizer(),
                version=1,
                min_producer_version=1,
                min_consumer_version=1,
                setter=RestoredOptimizer._set_dependency,
            )
        ],
    )


_register()
