"""Mean-only batch normalization (SPEC section 4, last items).

    y = x - mean(x) + beta

per channel, with a moving mean for inference: the partner of weight
normalization in both papers (Salimans & Kingma 2016; Hoffer et al. 2018),
where the weight normalization fixes the scale and the batch only supplies
the centering.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnorms import _validation
from tfnorms import ops as norm_ops
from tfnorms._types import ConstraintLike, InitializerLike, RegularizerLike, Shape, Tensor
from tfnorms.batch_norm import BatchStatisticsLayer


@keras.saving.register_keras_serializable(package="tfnorms")
class MeanOnlyBatchNormalization(BatchStatisticsLayer):
    """Subtract each channel's batch mean and add a learned offset.

    In training, per channel (the `axis` of the input) over the other axes
    (all replicas' elements with `synchronized=True`): `y = x - mean(x) + beta`,
    and `moving_mean` follows the batch means with Keras's momentum
    convention. In inference: `y = x - moving_mean + beta`.

    Args:
        axis: the channel axis.
        momentum: share of the old moving mean kept at each training step,
            in [0, 1).
        center: add the learned offset `beta`.
        beta_initializer: initializer of `beta` (default zeros).
        moving_mean_initializer: initializer of `moving_mean` (default zeros).
        beta_regularizer: regularizer of `beta`, as in Keras layers.
        beta_constraint: constraint on `beta`.
        synchronized: the mean over all replicas' elements under a
            `tf.distribute` strategy, masks included (one collective per
            training call). On JAX, see `LpBatchNormalization`.
        low_precision: compute the mean in the input's own dtype
            (float16/bfloat16) instead of float32.
        **kwargs: base layer arguments.

    Variables, in order: `beta` (when `center`), `moving_mean`.
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        center: bool = True,
        beta_initializer: InitializerLike = "zeros",
        moving_mean_initializer: InitializerLike = "zeros",
        beta_regularizer: RegularizerLike = None,
        beta_constraint: ConstraintLike = None,
        synchronized: bool = False,
        low_precision: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            axis=axis,
            momentum=momentum,
            synchronized=synchronized,
            low_precision=low_precision,
            **kwargs,
        )
        self.center = _validation.boolean("center", center)
        self.beta_initializer = _validation.initializer("beta_initializer", beta_initializer)
        self.moving_mean_initializer = _validation.initializer(
            "moving_mean_initializer", moving_mean_initializer
        )
        self.beta_regularizer = _validation.regularizer("beta_regularizer", beta_regularizer)
        self.beta_constraint = _validation.constraint("beta_constraint", beta_constraint)
        self.beta = None
        self.moving_mean = None

    def build(self, input_shape: Shape) -> None:
        shape = super().build(input_shape)
        if self.center:
            self.beta = self.add_weight(
                shape=shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        self.moving_mean = self.add_weight(
            shape=shape,
            name="moving_mean",
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
        )

    def call(
        self, inputs: Tensor, training: bool | None = None, mask: Tensor | None = None
    ) -> Tensor:
        mask = self._channel_mask(inputs, mask)
        x = self._working_inputs(inputs)
        dtype = norm_ops.statistics_dtype(x.dtype)
        if training and self.trainable:
            mean = norm_ops.mean_statistics(
                x, self._channel_axis, mask=mask, cross_replica=self._cross_replica()
            )
            self._update_moving(self.moving_mean, mean)
        else:
            mean = ops.cast(self.moving_mean, dtype)
        outputs = norm_ops.subtract_mean(
            x, mean, self._channel_axis, beta=self._cast_variable(self.beta, dtype)
        )
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {
                "center": self.center,
                "beta_initializer": keras.initializers.serialize(self.beta_initializer),
                "moving_mean_initializer": keras.initializers.serialize(
                    self.moving_mean_initializer
                ),
                "beta_regularizer": keras.regularizers.serialize(self.beta_regularizer),
                "beta_constraint": keras.constraints.serialize(self.beta_constraint),
            }
        )
        return config
