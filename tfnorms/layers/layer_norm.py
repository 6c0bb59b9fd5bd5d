"""Lp layer normalization (the Transformer rows of "Norm matters", Hoffer et
al., NeurIPS 2018).

`LpLayerNormalization` normalizes each example over its features (one axis or
several, as `keras.layers.LayerNormalization`) by the Lp estimate of the
standard deviation (docs/design.md, "Lp batch normalization");
`L1LayerNormalization` is its p=1 preset. `rms_scaling=True` gives the
uncentered form, the Lp counterpart of RMSNorm. The statistics are the batch
norms' (`tfnorms._math.stats`), there per channel over the batch, here per
example over the features.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnorms import _validation
from tfnorms._math.apply import normalize
from tfnorms._types import Axes, ConstraintLike, InitializerLike, RegularizerLike, Shape, Tensor
from tfnorms.layers.base import refuse_p
from tfnorms.layers.per_example import PerExampleLpNormalization


def _layer_axes(axis):
    """`axis` as given (an int or a list of ints), checked."""
    allowed = "an integer or a non-empty list/tuple of distinct integers"
    if isinstance(axis, (list, tuple)):
        if not axis:
            raise ValueError(f"`axis` must be {allowed}; received {axis!r}.")
        values = [_validation.integer("axis", a) for a in axis]
        return values
    return _validation.integer("axis", axis)


@keras.saving.register_keras_serializable(package="tfnorms")
class LpLayerNormalization(PerExampleLpNormalization):
    """Layer normalization with an Lp estimate of the standard deviation.

    Per example, over the `n` elements of the `axis` axes (the features):

        mu        = mean(x)
        sigma_p   = C_p * mean(|x - mu|**p)**(1/p)            1 <= p < inf
        sigma_inf = C_inf(n) * max|x - mu|                    p = inf
                  = C_inf(n) * mean of the top_k largest |x - mu|
        y         = gamma * (x - mu) / sqrt(sigma_p**2 + epsilon) + beta

    with the constants of `LpBatchNormalization` (C_1 = sqrt(pi/2), C_2 = 1,
    `C_inf(n) = (1 + sqrt(pi ln 4)) / (2 sqrt(2 ln n))`, n < 2 counted as 2),
    so that `sigma_p` estimates the standard deviation of Gaussian features.
    `gamma` and `beta` span the `axis` axes, as in Keras. `p=2` is
    `keras.layers.LayerNormalization` (same epsilon placement, variables and
    float32 statistics), so weights load from one into the other. The
    Norm-matters supplement (Table 2) trains the Transformer on WMT14 with L1
    layer norm (`L1LayerNormalization`).

    With `rms_scaling=True` the scale is taken around zero instead of the
    mean (the Lp counterpart of RMSNorm):

        sigma_p = C_p * mean(|x|**p)**(1/p)       (C_inf(n) * max|x| for p = inf)
        y       = gamma * x / sqrt(sigma_p**2 + epsilon)

    At `p=2` this is `keras.layers.RMSNormalization` (`x * rsqrt(mean(x**2) +
    epsilon) * scale`; mind its default epsilon of 1e-6). As in Keras's
    `LayerNormalization(rms_scaling=True)`, there is then always a `gamma`
    and never a `beta` (`center` and `scale` are not used). Keras's own
    `rms_scaling=True`, deprecated since Keras 3.9, divides by the centered
    variance without subtracting the mean, which is neither form; this layer
    does not reproduce it.

    Args:
        p: the order of the norm, a real number >= 1, or infinity
            (`float("inf")`, `numpy.inf` or `"inf"`). Very large finite p can
            overflow `|x - mu|**p`; use p = inf instead.
        top_k: with p = inf only: average the k largest deviations instead
            of taking the maximum. `None` (or 1) is the maximum.
        axis: the axis or axes normalized over (an integer or a list of
            integers, as Keras); the other axes (the batch, time steps, ...)
            each get their own statistics.
        epsilon: added to `sigma_p**2` before the square root, > 0.
        center: add the learned offset `beta`.
        scale: multiply by the learned scale `gamma`.
        rms_scaling: the uncentered form above.
        beta_initializer: initializer of `beta` (default zeros).
        gamma_initializer: initializer of `gamma` (default ones).
        beta_regularizer: regularizer of `beta`, as in Keras layers.
        gamma_regularizer: regularizer of `gamma`.
        beta_constraint: constraint on `beta`.
        gamma_constraint: constraint on `gamma`.
        low_precision: compute the statistics and the normalization in the
            input's own dtype (float16/bfloat16) instead of float32 (the
            backends' mean reductions still accumulate in float32). With
            float16 features of magnitude ~1000, p=2 overflows (squares >
            65504) where p=1 and p=inf stay finite. Default `False`, as Keras.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a tensor of any rank that has the `axis` axes with the sizes
            the layer was built for (as Keras's layer, the rank may differ
            from the built one: `axis=-1` is each input's last axis).
        training: accepted and unused: the statistics are per example, the
            same in training and in inference (there are no moving statistics).
        mask: optional, the input's shape without the last axis (Keras's
            convention, e.g. from `Embedding(mask_zero=True)`). It passes
            through to the next layer. It enters the statistics only when
            `axis` spans a masked axis (e.g. `axis=[1, 2]` over time and
            features): then only the valid positions count. With the usual
            `axis=-1` every position is normalized over its own features and
            the statistics are Keras's.
    """

    def __init__(
        self,
        p: float | str = 2,
        top_k: int | None = None,
        axis: Axes = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        rms_scaling: bool = False,
        beta_initializer: InitializerLike = "zeros",
        gamma_initializer: InitializerLike = "ones",
        beta_regularizer: RegularizerLike = None,
        gamma_regularizer: RegularizerLike = None,
        beta_constraint: ConstraintLike = None,
        gamma_constraint: ConstraintLike = None,
        low_precision: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            p=p,
            top_k=top_k,
            epsilon=epsilon,
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
        self.axis = _layer_axes(axis)
        self.rms_scaling = _validation.boolean("rms_scaling", rms_scaling)
        self._weight_axes = None

    def _normalized_axes(self, ndim):
        axes = self.axis if isinstance(self.axis, list) else [self.axis]
        resolved = [_validation.axis_in_range("axis", a, ndim, self.name) for a in axes]
        if len(set(resolved)) != len(resolved):
            raise ValueError(
                f"`axis` names an axis twice for the {ndim}-D input of layer "
                f"'{self.name}'; received axis={self.axis!r}."
            )
        return tuple(sorted(resolved))

    def _build_axes(self, input_shape: Shape) -> tuple[int, ...]:
        """Check the axes against the input, set the input spec and return the
        weights' shape.

        The spec names the axes as given, with no rank: as Keras's layer, one
        built at one rank takes inputs of another (`axis=-1` is then the last
        axis of each), as long as the sizes on the axes are the built ones.
        The weights' axes are recorded in their order, so that an input whose
        rank reorders mixed negative and positive axes gets them transposed.
        """
        axes = self._normalized_axes(len(input_shape))
        self._check_known_sizes(input_shape, axes, self.axis)
        given = self.axis if isinstance(self.axis, list) else [self.axis]
        self._weight_axes = sorted(given, key=lambda a: a % len(input_shape))
        self.input_spec = keras.layers.InputSpec(
            min_ndim=max(a + 1 if a >= 0 else -a for a in given),
            axes={a: input_shape[a] for a in given},
        )
        return tuple(input_shape[a] for a in axes)

    def build(self, input_shape: Shape) -> None:
        shape = self._build_axes(input_shape)
        # Keras's rule: rms_scaling always has gamma and never beta.
        self._add_affine_weights(
            shape,
            gamma=self.scale or self.rms_scaling,
            beta=self.center and not self.rms_scaling,
        )

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self._normalized_axes(len(input_shape))
        return input_shape

    def _feature_weight(self, variable, ndim):
        """A weight over the normalized axes, broadcasting against x."""
        if variable is None:
            return None
        resolved = [a % ndim for a in self._weight_axes]
        order = sorted(range(len(resolved)), key=resolved.__getitem__)
        if order != list(range(len(resolved))):
            variable = ops.transpose(variable, order)
        shape = [1] * ndim
        for a, size in zip(sorted(resolved), variable.shape, strict=True):
            shape[a] = size
        return ops.reshape(variable, shape)

    def call(
        self, inputs: Tensor, training: bool | None = None, mask: Tensor | None = None
    ) -> Tensor:
        x = self._working_inputs(inputs)
        ndim = len(x.shape)
        axes = self._normalized_axes(ndim)
        kept = tuple(i for i in range(ndim) if i not in axes)
        if mask is not None:
            self._check_mask_rank(inputs, mask, "last")
            mask = self._varying_mask(ops.expand_dims(ops.cast(mask, "bool"), -1), axes)
        center = not self.rms_scaling
        mean, variance, scale = self._statistics(x, kept, mask, center=center)
        outputs = normalize(
            x,
            mean if center else None,
            variance,
            gamma=self._feature_weight(self.gamma, ndim),
            beta=self._feature_weight(self.beta, ndim),
            epsilon=self.epsilon,
            scale=scale,
        )
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"axis": self.axis, "rms_scaling": self.rms_scaling})
        return config


@keras.saving.register_keras_serializable(package="tfnorms")
class L1LayerNormalization(LpLayerNormalization):
    """`LpLayerNormalization(p=1)`: sigma = sqrt(pi/2) * mean|x - mu| per
    example, the layer norm of the Norm-matters Transformer (supplement,
    Table 2).

    Takes every argument of `LpLayerNormalization` except `p` and `top_k`.
    """

    def __init__(self, axis: Axes = -1, **kwargs: Any) -> None:
        refuse_p(type(self), kwargs, 1, "LpLayerNormalization")
        super().__init__(p=1, axis=axis, **kwargs)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        del config["p"], config["top_k"]
        return config
