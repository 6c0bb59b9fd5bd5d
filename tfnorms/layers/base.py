"""What every normalization layer of the package shares: the learned affine
weights (`gamma`, `beta`), the dtype the elementwise work runs in, the order p
of the Lp scale, and the checks of masks and input sizes.

Two bases build on it: `batch_statistics.BatchStatisticsLayer` (statistics over
the batch, moving averages, synchronization) and
`per_example.PerExampleLpNormalization` (statistics per example).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from tfnorms import _validation
from tfnorms._math.apply import working_dtype
from tfnorms._types import ConstraintLike, InitializerLike, RegularizerLike, Shape

_AFFINE_ARGUMENTS = ("initializer", "regularizer", "constraint")
_SERIALIZERS = {
    "initializer": keras.initializers.serialize,
    "regularizer": keras.regularizers.serialize,
    "constraint": keras.constraints.serialize,
}
_VALIDATORS = {
    "initializer": _validation.initializer,
    "regularizer": _validation.regularizer,
    "constraint": _validation.constraint,
}


class NormalizationLayer(keras.layers.Layer):
    """The affine weights, `low_precision` and the shared checks.

    `AFFINE` names the learned weights a subclass has, in the order they are
    created (Keras's order, so that weights move both ways): `gamma` is
    switched by `scale`, `beta` by `center`.
    """

    AFFINE: tuple[str, ...] = ("gamma", "beta")

    def __init__(
        self,
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
        super().__init__(**kwargs)
        given = {
            "beta_initializer": beta_initializer,
            "gamma_initializer": gamma_initializer,
            "beta_regularizer": beta_regularizer,
            "gamma_regularizer": gamma_regularizer,
            "beta_constraint": beta_constraint,
            "gamma_constraint": gamma_constraint,
        }
        for weight in self.AFFINE:
            for kind in _AFFINE_ARGUMENTS:
                name = f"{weight}_{kind}"
                setattr(self, name, _VALIDATORS[kind](name, given[name]))
        self.center = _validation.boolean("center", center)
        self.scale = _validation.boolean("scale", scale)
        self.low_precision = _validation.boolean("low_precision", low_precision)
        self.supports_masking = True
        self.gamma = None
        self.beta = None

    def _add_affine_weights(self, shape: Shape, gamma: bool, beta: bool) -> None:
        """Create `gamma` and/or `beta` of `shape`, in the order of `AFFINE`."""
        for weight, wanted in (("gamma", gamma), ("beta", beta)):
            if wanted and weight in self.AFFINE:
                variable = self.add_weight(
                    shape=shape,
                    name=weight,
                    initializer=getattr(self, f"{weight}_initializer"),
                    regularizer=getattr(self, f"{weight}_regularizer"),
                    constraint=getattr(self, f"{weight}_constraint"),
                    trainable=True,
                    autocast=False,
                )
                setattr(self, weight, variable)

    def _set_lp_scale(self, p, top_k, epsilon):
        """The arguments of an Lp scale estimate, for the layers that have one."""
        self.p = _validation.norm_order("p", p)
        self.top_k = _validation.top_k_for_order(top_k, self.p)
        self.epsilon = _validation.epsilon("epsilon", epsilon)

    def _lp_scale_config(self) -> dict[str, Any]:
        # "inf" rather than float("inf"): JSON has no infinity.
        return {
            "p": "inf" if math.isinf(self.p) else self.p,
            "top_k": self.top_k,
            "epsilon": self.epsilon,
        }

    def _working_inputs(self, inputs):
        """The inputs in the dtype of the elementwise work: float32 (float64
        for float64) as Keras, or a float input's own dtype with `low_precision`."""
        return ops.cast(inputs, working_dtype(inputs.dtype, self.low_precision))

    def _check_mask_rank(self, inputs, mask, without):
        if len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                f"Layer '{self.name}' takes a mask with one dimension less than its "
                f"inputs (all but the {without} axis); received mask.shape={mask.shape}, "
                f"inputs.shape={inputs.shape}."
            )

    def _check_known_sizes(self, input_shape, axes, axis_argument):
        """Refuse an input whose size on one of `axes` is unknown: the weights'
        shape comes from it."""
        if any(input_shape[a] is None for a in axes):
            plural = isinstance(axis_argument, list)
            what = "known sizes on its axes" if plural else "a known size on its axis"
            raise ValueError(
                f"Layer '{self.name}' needs {what} {axis_argument!r}; "
                f"received input shape {tuple(input_shape)}."
            )

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if "gamma" in self.AFFINE:
            config["scale"] = self.scale
        config["center"] = self.center
        for weight in self.AFFINE:
            for kind in _AFFINE_ARGUMENTS:
                name = f"{weight}_{kind}"
                config[name] = _SERIALIZERS[kind](getattr(self, name))
        config["low_precision"] = self.low_precision
        return config


def refuse_p(cls, kwargs, p, general):
    """The presets fix p: say so when a `p` is passed anyway."""
    if "p" in kwargs:
        raise ValueError(
            f"{cls.__name__} fixes p={p}; received p={kwargs['p']!r}. Use "
            f"{general} for other orders."
        )
