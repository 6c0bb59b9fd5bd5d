"""Lp batch normalization (Hoffer et al., "Norm matters", NeurIPS 2018).

`LpBatchNormalization` normalizes each channel by an Lp estimate of its
standard deviation instead of the L2 one (docs/design.md, "Lp batch
normalization");
`L1BatchNormalization` and `LinfBatchNormalization` are its presets. The
layer follows `keras.layers.BatchNormalization` argument for argument,
variable for variable (gamma, beta, moving_mean, moving_variance, where
`moving_variance` holds `sigma_p**2`), so that p=2 reproduces it and weights
move between the two both ways.

The statistics are `tfnorms._math.stats`; the cross-replica reduction
(`synchronized=True`) is `tfnorms.distribute`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnorms import _validation
from tfnorms._math.apply import normalize
from tfnorms._math.reduce import statistics_dtype
from tfnorms._math.stats import lp_statistics
from tfnorms._types import ConstraintLike, InitializerLike, RegularizerLike, Shape, Tensor
from tfnorms.layers.base import refuse_p
from tfnorms.layers.batch_statistics import BatchStatisticsLayer


@keras.saving.register_keras_serializable(package="tfnorms")
class LpBatchNormalization(BatchStatisticsLayer):
    """Batch normalization with an Lp estimate of the standard deviation.

    In training, per channel (the `axis` of the input) over the `n` elements
    of the other axes (all replicas' elements with `synchronized=True`):

        mu        = mean(x)
        sigma_p   = C_p * mean(|x - mu|**p)**(1/p)            1 <= p < inf
        sigma_inf = C_inf(n) * max|x - mu|                    p = inf
                  = C_inf(n) * mean of the top_k largest |x - mu|
        y         = gamma * (x - mu) / sqrt(sigma_p**2 + epsilon) + beta

    with `C_p = (sqrt(pi) / (2**(p/2) * Gamma((p+1)/2)))**(1/p)` (C_1 =
    sqrt(pi/2), C_2 = 1) and `C_inf(n) = (1 + sqrt(pi ln 4)) / (2 sqrt(2 ln n))`
    (n < 2 counts as 2), so that `sigma_p` estimates the standard deviation of
    Gaussian data. The same `C_inf(n)` is applied to top-k means, as in the
    authors' code. In inference:

        y = gamma * (x - moving_mean) / sqrt(moving_variance + epsilon) + beta

    where `moving_variance` is the moving average of `sigma_p**2`. `p=2` is
    `keras.layers.BatchNormalization` (same epsilon placement, momentum
    convention, float32 statistics and variables), so weights load from one
    into the other.

    Args:
        p: the order of the norm, a real number >= 1, or infinity
            (`float("inf")`, `numpy.inf` or `"inf"`). p = 1 and p = inf need no
            squares, which is the paper's argument for low precision. Very
            large finite p can overflow `|x - mu|**p`; use p = inf instead.
        top_k: with p = inf only: average the k largest deviations instead
            of taking the maximum (the authors use k = 10). `None` (or 1) is
            the maximum.
        axis: the channel axis (e.g. 1 for `channels_first` images).
        momentum: share of the old moving statistics kept at each training
            step, in [0, 1) (Keras's convention, not the authors' reversed one).
        epsilon: added to `sigma_p**2` before the square root, > 0.
        center: add the learned offset `beta`.
        scale: multiply by the learned scale `gamma`.
        beta_initializer: initializer of `beta` (default zeros).
        gamma_initializer: initializer of `gamma` (default ones).
        moving_mean_initializer: initializer of `moving_mean` (default zeros).
        moving_variance_initializer: initializer of `moving_variance`, which
            holds `sigma_p**2` (default ones).
        beta_regularizer: regularizer of `beta`, as in Keras layers.
        gamma_regularizer: regularizer of `gamma`.
        beta_constraint: constraint on `beta`.
        gamma_constraint: constraint on `gamma`.
        synchronized: compute the statistics over all replicas' elements
            under a `tf.distribute` strategy (MirroredStrategy,
            MultiWorkerMirroredStrategy), masks included (where Keras falls back
            to per-replica statistics). Two collectives per training call. On
            the JAX backend nothing needs doing: a training step jitted over a
            batch sharded across devices (`keras.distribution.DataParallel`)
            already reduces over the global batch, and the flag is accepted so
            that configs move between backends.
        low_precision: compute the statistics in the input's own dtype
            (float16/bfloat16) instead of float32. The elementwise work
            (`x - mu`, `|x - mu|**p`, the normalization) then runs in the input
            dtype; the per-channel results are combined in float32 (and the
            backends' mean reductions accumulate in float32). With float16
            inputs of magnitude ~1000, p=2 overflows (squares > 65504) where
            p=1 and p=inf stay finite. Default `False`, as Keras.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a tensor of any rank.
        training: use the batch statistics and update the moving ones (only
            when the layer is trainable, as Keras).
        mask: the input's shape without the channel axis; only its true
            positions enter the statistics. All positions are normalized.
    """

    def __init__(
        self,
        p: float | str = 2,
        top_k: int | None = None,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: InitializerLike = "zeros",
        gamma_initializer: InitializerLike = "ones",
        moving_mean_initializer: InitializerLike = "zeros",
        moving_variance_initializer: InitializerLike = "ones",
        beta_regularizer: RegularizerLike = None,
        gamma_regularizer: RegularizerLike = None,
        beta_constraint: ConstraintLike = None,
        gamma_constraint: ConstraintLike = None,
        synchronized: bool = False,
        low_precision: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            axis=axis,
            momentum=momentum,
            synchronized=synchronized,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            low_precision=low_precision,
            **kwargs,
        )
        self._set_lp_scale(p, top_k, epsilon)
        self.moving_mean_initializer = _validation.initializer(
            "moving_mean_initializer", moving_mean_initializer
        )
        self.moving_variance_initializer = _validation.initializer(
            "moving_variance_initializer", moving_variance_initializer
        )
        self.moving_mean = None
        self.moving_variance = None

    def build(self, input_shape: Shape) -> None:
        shape = super().build(input_shape)
        # Keras's order and names, so that weights move both ways.
        self._add_affine_weights(shape, gamma=self.scale, beta=self.center)
        self._add_moving("moving_mean", shape, self.moving_mean_initializer)
        self._add_moving("moving_variance", shape, self.moving_variance_initializer)

    def call(
        self, inputs: Tensor, training: bool | None = None, mask: Tensor | None = None
    ) -> Tensor:
        mask = self._channel_mask(inputs, mask)
        x = self._working_inputs(inputs)
        dtype = statistics_dtype(x.dtype)
        if training and self.trainable:
            mean, variance = lp_statistics(
                x,
                self._channel_axis,
                p=self.p,
                top_k=self.top_k,
                mask=mask,
                reduction=self._reduction(),
            )
            self._update_moving(self.moving_mean, mean)
            self._update_moving(self.moving_variance, variance)
        else:
            mean = ops.cast(self.moving_mean, dtype)
            variance = ops.cast(self.moving_variance, dtype)
        ndim = len(x.shape)
        outputs = normalize(
            x,
            self._per_channel(mean, dtype, ndim),
            self._per_channel(variance, dtype, ndim),
            gamma=self._per_channel(self.gamma, dtype, ndim),
            beta=self._per_channel(self.beta, dtype, ndim),
            epsilon=self.epsilon,
        )
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self._lp_scale_config())
        config.update(
            {
                "moving_mean_initializer": keras.initializers.serialize(
                    self.moving_mean_initializer
                ),
                "moving_variance_initializer": keras.initializers.serialize(
                    self.moving_variance_initializer
                ),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfnorms")
class L1BatchNormalization(LpBatchNormalization):
    """`LpBatchNormalization(p=1)`: sigma = sqrt(pi/2) * mean|x - mu|.

    Takes every argument of `LpBatchNormalization` except `p` and `top_k`.
    """

    def __init__(self, axis: int = -1, **kwargs: Any) -> None:
        refuse_p(type(self), kwargs, 1, "LpBatchNormalization")
        super().__init__(p=1, axis=axis, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["p"], config["top_k"]
        return config


@keras.saving.register_keras_serializable(package="tfnorms")
class LinfBatchNormalization(LpBatchNormalization):
    """`LpBatchNormalization(p=inf)`: sigma = C_inf(n) * max|x - mu|, or the
    mean of the `top_k` largest deviations (the authors use top_k=10).

    Takes every argument of `LpBatchNormalization` except `p`.
    """

    def __init__(self, top_k: int | None = None, axis: int = -1, **kwargs: Any) -> None:
        refuse_p(type(self), kwargs, "inf", "LpBatchNormalization")
        super().__init__(p="inf", top_k=top_k, axis=axis, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["p"]
        return config
