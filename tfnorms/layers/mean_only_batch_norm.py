"""Mean-only batch normalization (docs/design.md, "Mean-only batch normalization").

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
from tfnorms._math.apply import subtract_mean
from tfnorms._math.reduce import statistics_dtype
from tfnorms._math.stats import mean_statistics
from tfnorms._types import ConstraintLike, InitializerLike, RegularizerLike, Shape, Tensor
from tfnorms.layers.batch_statistics import BatchStatisticsLayer

# Keras BatchNormalization arguments for the `gamma` this layer does not have:
# the shared base takes them, so without a check they would be dropped silently.
_NO_SCALE = ("scale", "gamma_initializer", "gamma_regularizer", "gamma_constraint")


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
        **kwargs: base layer arguments. `scale` and the `gamma_*` arguments
            of Keras's `BatchNormalization` are refused: there is no scale.

    Call arguments:
        inputs, training: as `LpBatchNormalization`.
        mask: the input's shape without its last axis, as Keras's; only its
            true positions enter the mean (see `LpBatchNormalization`).

    Variables, in order: `beta` (when `center`), `moving_mean`.
    """

    AFFINE = ("beta",)

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
        given = ", ".join(f"{k}={kwargs[k]!r}" for k in _NO_SCALE if k in kwargs)
        if given:
            raise ValueError(
                "MeanOnlyBatchNormalization has no scale (no `gamma`): it subtracts the "
                f"mean and adds `beta` only; received {given}. Drop these arguments, or "
                "use LpBatchNormalization for a learned scale."
            )
        super().__init__(
            axis=axis,
            momentum=momentum,
            synchronized=synchronized,
            center=center,
            beta_initializer=beta_initializer,
            beta_regularizer=beta_regularizer,
            beta_constraint=beta_constraint,
            low_precision=low_precision,
            **kwargs,
        )
        self.moving_mean_initializer = _validation.initializer(
            "moving_mean_initializer", moving_mean_initializer
        )
        self.moving_mean = None

    def build(self, input_shape: Shape) -> None:
        shape = super().build(input_shape)
        self._add_affine_weights(shape, gamma=False, beta=self.center)
        self._add_moving("moving_mean", shape, self.moving_mean_initializer)

    def call(
        self, inputs: Tensor, training: bool | None = None, mask: Tensor | None = None
    ) -> Tensor:
        batch_statistics = bool(training and self.trainable)
        reduction = self._reduction(batch_statistics)
        mask = self._channel_mask(inputs, mask, reduction)
        x = self._working_inputs(inputs)
        dtype = statistics_dtype(x.dtype)
        if batch_statistics:
            mean, count = mean_statistics(
                x, self._channel_axis, mask=mask, reduction=reduction, with_count=True
            )
            self._update_moving(self.moving_mean, mean, count=count)
        else:
            mean = ops.cast(self.moving_mean, dtype)
        ndim = len(x.shape)
        outputs = subtract_mean(
            x, self._per_channel(mean, dtype, ndim), beta=self._per_channel(self.beta, dtype, ndim)
        )
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["moving_mean_initializer"] = keras.initializers.serialize(
            self.moving_mean_initializer
        )
        return config
