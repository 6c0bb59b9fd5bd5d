"""Lp RMS normalization: `keras.layers.RMSNormalization` with the Lp scale
around zero (docs/layer_norm.md, "Keras compatibility").

It is `LpLayerNormalization(rms_scaling=True)` with Keras's RMSNormalization
defaults and names (epsilon 1e-6, the weight named `scale`), so that a Keras
RMSNormalization's config and weights load into it.
"""

from __future__ import annotations

from typing import Any

import keras

from tfnorms._types import Axes, ConstraintLike, InitializerLike, RegularizerLike, Shape
from tfnorms.layers.layer_norm import LpLayerNormalization

# LpLayerNormalization's arguments that the uncentered form has no use for.
_NOT_APPLICABLE = (
    "center",
    "scale",
    "rms_scaling",
    "beta_initializer",
    "beta_regularizer",
    "beta_constraint",
)


@keras.saving.register_keras_serializable(package="tfnorms")
class LpRMSNormalization(LpLayerNormalization):
    """RMS normalization with an Lp estimate of the scale around zero.

    Per example, over the `n` elements of the `axis` axes:

        sigma_p   = C_p * mean(|x|**p)**(1/p)             1 <= p < inf
        sigma_inf = C_inf(n) * max|x|                     p = inf
                  = C_inf(n) * mean of the top_k largest |x|
        y         = scale * x / sqrt(sigma_p**2 + epsilon)

    with the constants of `LpBatchNormalization` (C_2 = 1). `p=2` is
    `keras.layers.RMSNormalization` (`x * rsqrt(mean(x**2) + epsilon) *
    scale`): the same default epsilon, one weight named `scale` over the
    `axis` axes, inputs cast to the compute dtype as Keras's layer does, so
    that configs and weights move both ways. The weight is the attribute
    `gamma` (`scale` is the flag shared with the other layers).

    Args:
        p: the order of the norm, a real number >= 1, or infinity
            (`float("inf")`, `numpy.inf` or `"inf"`).
        top_k: with p = inf only: average the k largest magnitudes instead
            of taking the maximum. `None` (or 1) is the maximum.
        axis: the axis or axes normalized over (an integer or a list).
        epsilon: added to `sigma_p**2` before the square root, > 0
            (default 1e-6, Keras's RMSNormalization's).
        gamma_initializer: initializer of the `scale` weight (default ones).
        gamma_regularizer: regularizer of the `scale` weight.
        gamma_constraint: constraint on the `scale` weight.
        low_precision: see `LpLayerNormalization`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Call arguments: as `LpLayerNormalization`.
    """

    AFFINE = ("gamma",)

    def __init__(
        self,
        p: float | str = 2,
        top_k: int | None = None,
        axis: Axes = -1,
        epsilon: float = 1e-6,
        gamma_initializer: InitializerLike = "ones",
        gamma_regularizer: RegularizerLike = None,
        gamma_constraint: ConstraintLike = None,
        low_precision: bool = False,
        **kwargs: Any,
    ) -> None:
        given = sorted(set(kwargs) & set(_NOT_APPLICABLE))
        if given:
            raise ValueError(
                f"LpRMSNormalization always has its `scale` weight and no offset; "
                f"received {', '.join(f'{k}={kwargs[k]!r}' for k in given)}. Use "
                "LpLayerNormalization for the centered form."
            )
        super().__init__(
            p=p,
            top_k=top_k,
            axis=axis,
            epsilon=epsilon,
            rms_scaling=True,
            gamma_initializer=gamma_initializer,
            gamma_regularizer=gamma_regularizer,
            gamma_constraint=gamma_constraint,
            low_precision=low_precision,
            **kwargs,
        )
        # As Keras's RMSNormalization (a plain layer): inputs in the compute dtype.
        self.autocast = True

    def build(self, input_shape: Shape) -> None:
        shape = self._build_axes(input_shape)
        # Keras's name, so that weights move both ways by name too.
        self.gamma = self.add_weight(
            shape=shape,
            name="scale",
            initializer=self.gamma_initializer,
            regularizer=self.gamma_regularizer,
            constraint=self.gamma_constraint,
            trainable=True,
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        for name in _NOT_APPLICABLE:
            config.pop(name, None)
        return config
