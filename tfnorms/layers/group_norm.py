"""Lp group normalization: Keras's `GroupNormalization` with the Lp estimate
of the standard deviation ("Norm matters", Hoffer et al., NeurIPS 2018;
docs/design.md, "Lp batch normalization"), computed by the same statistics as
the batch and layer norms.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnorms import _validation
from tfnorms._math.apply import normalize
from tfnorms._types import ConstraintLike, InitializerLike, RegularizerLike, Shape, Tensor
from tfnorms.layers.per_example import PerExampleLpNormalization


def _groups(value):
    allowed = "an integer >= 1, or -1 for one group per channel (instance normalization)"
    if isinstance(value, bool) or not isinstance(value, int) or (value < 1 and value != -1):
        raise ValueError(f"`groups` must be {allowed}; received {value!r}.")
    return value


@keras.saving.register_keras_serializable(package="tfnorms")
class LpGroupNormalization(PerExampleLpNormalization):
    """Group normalization with an Lp estimate of the standard deviation.

    The channels (the `axis` of the input) are split into `groups` groups of
    consecutive channels. Per example and group, over the `n` elements of the
    group's channels and all the other non-batch axes:

        mu        = mean(x)
        sigma_p   = C_p * mean(|x - mu|**p)**(1/p)            1 <= p < inf
        sigma_inf = C_inf(n) * max|x - mu|                    p = inf
                  = C_inf(n) * mean of the top_k largest |x - mu|
        y         = gamma * (x - mu) / sqrt(sigma_p**2 + epsilon) + beta

    with the constants of `LpBatchNormalization`, and `gamma`, `beta` per
    channel. `p=2` is `keras.layers.GroupNormalization` (same arguments,
    epsilon placement, variables and float32 statistics). `groups=1` is
    layer normalization over all non-batch axes with per-channel `gamma`
    and `beta`; `groups=-1` (one group per channel) is instance normalization.

    Args:
        groups: the number of groups, which must divide the number of
            channels; -1 for one group per channel.
        p: the order of the norm, a real number >= 1, or infinity
            (`float("inf")`, `numpy.inf` or `"inf"`).
        top_k: with p = inf only: average the k largest deviations instead
            of taking the maximum. `None` (or 1) is the maximum.
        axis: the channel axis (not the batch axis 0).
        epsilon: added to `sigma_p**2` before the square root, > 0.
        center: add the learned per-channel offset `beta`.
        scale: multiply by the learned per-channel scale `gamma`.
        beta_initializer: initializer of `beta` (default zeros).
        gamma_initializer: initializer of `gamma` (default ones).
        beta_regularizer: regularizer of `beta`, as in Keras layers.
        gamma_regularizer: regularizer of `gamma`.
        beta_constraint: constraint on `beta`.
        gamma_constraint: constraint on `gamma`.
        low_precision: compute the statistics and the normalization in the
            input's own dtype (float16/bfloat16) instead of float32; see
            `LpLayerNormalization`. Default `False`, as Keras.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: a tensor of rank >= 2, the batch on axis 0.
        training: accepted and unused: the statistics are per example, the
            same in training and in inference (there are no moving statistics).
        mask: optional, the input's shape without the channel axis (e.g.
            `(batch, time)` for `(batch, time, channels)` from
            `Embedding(mask_zero=True)`): only the valid positions enter the
            statistics, and every position is normalized with them. Keras's
            `GroupNormalization` ignores masks (padding then shifts the
            statistics); with a mask this layer at p=2 therefore differs from
            it, by design. The mask passes through to the next layer.
    """

    def __init__(
        self,
        groups: int = 32,
        p: float | str = 2,
        top_k: int | None = None,
        axis: int = -1,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
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
        self.groups = _groups(groups)
        self.axis = _validation.integer("axis", axis)
        self._channel_axis = None
        self._groups_built = None

    def _check_axis(self, ndim):
        if ndim < 2:
            raise ValueError(
                f"Layer '{self.name}' needs inputs of rank >= 2 (the batch, then the "
                f"channels); received rank {ndim}."
            )
        channel_axis = _validation.axis_in_range("axis", self.axis, ndim, self.name)
        if channel_axis == 0:
            raise ValueError(
                f"`axis` of layer '{self.name}' must not be the batch axis 0; "
                f"received axis={self.axis} for a {ndim}-D input."
            )
        return channel_axis

    def build(self, input_shape: Shape) -> None:
        ndim = len(input_shape)
        self._channel_axis = self._check_axis(ndim)
        self._check_known_sizes(input_shape, (self._channel_axis,), self.axis)
        channels = input_shape[self._channel_axis]
        groups = channels if self.groups == -1 else self.groups
        if groups > channels or channels % groups:
            raise ValueError(
                f"`groups`={self.groups} must divide the {channels} channels (axis "
                f"{self.axis}) of layer '{self.name}': allowed values are the divisors "
                f"of {channels}, or -1; received input shape {tuple(input_shape)}."
            )
        self._groups_built = groups
        self.input_spec = keras.layers.InputSpec(ndim=ndim, axes={self.axis: channels})
        self._add_affine_weights((channels,), gamma=self.scale, beta=self.center)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        self._check_axis(len(input_shape))
        return input_shape

    def call(
        self, inputs: Tensor, training: bool | None = None, mask: Tensor | None = None
    ) -> Tensor:
        x = self._working_inputs(inputs)
        ndim, c = len(x.shape), self._channel_axis
        groups = self._groups_built
        per_group = x.shape[c] // groups
        # (..., C, ...) -> (..., G, C/G, ...): the group axis is c.
        dynamic = ops.shape(x)
        shape = [dynamic[i] if d is None else d for i, d in enumerate(x.shape)]
        grouped = ops.reshape(x, [*shape[:c], groups, per_group, *shape[c + 1 :]])
        kept = (0, c)
        if mask is not None:
            self._check_mask_rank(inputs, mask, "channel")
            mask = ops.expand_dims(ops.expand_dims(ops.cast(mask, "bool"), c), c)
            reduced = tuple(i for i in range(ndim + 1) if i not in kept)
            mask = self._varying_mask(mask, reduced)
        mean, variance, scale = self._statistics(grouped, kept, mask)
        bshape = [1] * (ndim + 1)
        bshape[c], bshape[c + 1] = groups, per_group

        def per_channel(variable):
            return None if variable is None else ops.reshape(variable, bshape)

        outputs = normalize(
            grouped,
            mean,
            variance,
            gamma=per_channel(self.gamma),
            beta=per_channel(self.beta),
            epsilon=self.epsilon,
            scale=scale,
        )
        return ops.cast(ops.reshape(outputs, shape), self.compute_dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"groups": self.groups, "axis": self.axis})
        return config
