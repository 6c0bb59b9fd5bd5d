"""Lp batch normalization (Hoffer et al., "Norm matters", NeurIPS 2018).

`LpBatchNormalization` normalizes each channel by an Lp estimate of its
standard deviation instead of the L2 one (docs/design.md, "Lp batch
normalization");
`L1BatchNormalization` and `LinfBatchNormalization` are its presets. The
layer follows `keras.layers.BatchNormalization` argument for argument,
variable for variable (gamma, beta, moving_mean, moving_variance, where
`moving_variance` holds `sigma_p**2`; with `renorm`, moving_stddev,
renorm_mean and renorm_stddev), so that p=2 reproduces it and weights move
between the two both ways. Batch Renormalization is `tfnorms._math.renorm`.

The statistics are `tfnorms._math.stats`; the cross-replica reduction
(`synchronized=True`) is `tfnorms.distribute`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnorms import _validation
from tfnorms._math import renorm as batch_renorm
from tfnorms._math.apply import normalize, saturated
from tfnorms._math.reduce import statistics_dtype
from tfnorms._math.stats import statistics
from tfnorms._types import ConstraintLike, InitializerLike, RegularizerLike, Shape, Tensor
from tfnorms.layers.base import refuse_p
from tfnorms.layers.batch_statistics import BatchStatisticsLayer


def _clone(initializer):
    """A fresh copy of a Keras initializer instance (so that a seeded random
    one gives the same values twice, as Keras's own clone does); other forms
    (names, dicts, callables) as they are."""
    if isinstance(initializer, keras.initializers.Initializer):
        return type(initializer).from_config(initializer.get_config())
    return initializer


def _sqrt_of(initializer):
    """An initializer giving the square root of `initializer`'s values."""

    def initialize(shape, dtype=None):
        return ops.sqrt(keras.initializers.get(_clone(initializer))(shape, dtype=dtype))

    return initialize


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
        renorm: Batch Renormalization (Ioffe 2017), as Keras: in training the
            batch-normalized values are corrected by `r = sigma_B / sigma_R`
            and `d = (mu_B - mu_R) / sigma_R` (no gradient), where
            `sigma_B = sqrt(sigma_p**2 + epsilon)` and `mu_R`, `sigma_R` are
            moving averages (`renorm_mean`, `renorm_stddev`, floored at
            sqrt(epsilon)). Adds the variables `moving_stddev`, `renorm_mean`,
            `renorm_stddev`; `moving_variance` then follows
            `moving_stddev**2 - epsilon`. Inference is unchanged.
        renorm_clipping: with `renorm`, a dict with optional keys "rmax",
            "rmin", "dmax": r is clipped to [rmin, rmax] and d to
            [-dmax, dmax] (missing: no bound). Ignored without `renorm`, as
            Keras.
        renorm_momentum: with `renorm`, the momentum of `renorm_mean` and
            `renorm_stddev`, in [0, 1) (`momentum` still drives the moving
            statistics used in inference).
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
        mask: the input's shape without its last axis, as Keras (whatever
            `axis` is: the mask broadcasts over the last axis); only its true
            positions enter the statistics. All positions are normalized.
            With `synchronized=True` under a strategy, a mask in training
            needs the channels last.
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
        renorm: bool = False,
        renorm_clipping: dict[str, float] | None = None,
        renorm_momentum: float = 0.99,
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
        self.renorm = _validation.boolean("renorm", renorm)
        clipping = batch_renorm.clipping(renorm_clipping)
        # As Keras: None stands for no clipping, and becomes {} with renorm.
        self.renorm_clipping = {} if clipping is None and self.renorm else clipping
        self.renorm_momentum = _validation.unit_interval("renorm_momentum", renorm_momentum)
        self.moving_mean = None
        self.moving_variance = None

    def build(self, input_shape: Shape) -> None:
        shape = super().build(input_shape)
        # Keras's order and names, so that weights move both ways.
        self._add_affine_weights(shape, gamma=self.scale, beta=self.center)
        self._add_moving("moving_mean", shape, self.moving_mean_initializer)
        self._add_moving("moving_variance", shape, self.moving_variance_initializer)
        if self.renorm:
            # As Keras: the scales start at sqrt of the variance initializer.
            stddev = _sqrt_of(self.moving_variance_initializer)
            self._add_moving("moving_stddev", shape, stddev)
            self._add_moving("renorm_mean", shape, _clone(self.moving_mean_initializer))
            self._add_moving("renorm_stddev", shape, stddev)

    def call(
        self, inputs: Tensor, training: bool | None = None, mask: Tensor | None = None
    ) -> Tensor:
        batch_statistics = bool(training and self.trainable)
        reduction = self._reduction(batch_statistics)
        mask = self._channel_mask(inputs, mask, reduction)
        x = self._working_inputs(inputs)
        dtype = statistics_dtype(x.dtype)
        gamma = None if self.gamma is None else ops.cast(self.gamma, dtype)
        beta = None if self.beta is None else ops.cast(self.beta, dtype)
        scale = None
        if batch_statistics:
            mean, variance, count, scale = statistics(
                x, self._channel_axis, p=self.p, top_k=self.top_k, mask=mask, reduction=reduction
            )
            if self.renorm:
                gamma, beta = self._renormalize(mean, variance, gamma, beta, count)
                scale = None
            else:
                self._update_moving(self.moving_mean, mean, count=count)
                if scale is not None:
                    # sigma (finite) squared past the float range (|x| ~ 1e19 in
                    # float32): keep the largest float; the output uses sigma.
                    variance = saturated(variance)
                self._update_moving(self.moving_variance, variance, count=count)
        else:
            mean = ops.cast(self.moving_mean, dtype)
            variance = ops.cast(self.moving_variance, dtype)
        ndim = len(x.shape)
        outputs = normalize(
            x,
            self._per_channel(mean, dtype, ndim),
            self._per_channel(variance, dtype, ndim),
            gamma=self._per_channel(gamma, dtype, ndim),
            beta=self._per_channel(beta, dtype, ndim),
            epsilon=self.epsilon,
            scale=self._per_channel(scale, dtype, ndim),
        )
        return ops.cast(outputs, self.compute_dtype)

    def _renormalize(self, mean, variance, gamma, beta, count):
        """Batch Renormalization's training step, in Keras's order: the
        correction from the renorm statistics before this batch, then the
        updates. `moving_variance` follows `moving_stddev` (Keras's rule),
        so inference needs nothing else."""
        r, d = batch_renorm.correction(
            mean,
            variance,
            self.renorm_mean,
            self.renorm_stddev,
            self.epsilon,
            self.renorm_clipping or {},
        )
        stddev = ops.sqrt(variance + self.epsilon)
        self._update_moving(self.renorm_mean, mean, self.renorm_momentum, count)
        self._update_moving(self.renorm_stddev, stddev, self.renorm_momentum, count)
        self._update_moving(self.moving_mean, mean, count=count)
        moving_stddev = self._update_moving(self.moving_stddev, stddev, count=count)
        # relu: rounding may put stddev**2 a hair below epsilon.
        self.moving_variance.assign(ops.relu(ops.square(moving_stddev) - self.epsilon))
        return batch_renorm.compose(r, d, gamma, beta)

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
                "renorm": self.renorm,
                "renorm_clipping": self.renorm_clipping,
                "renorm_momentum": self.renorm_momentum,
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
