"""CenteredWeightNorm (Huang et al., ICCV 2017) and WeightNormalization
(Salimans & Kingma, 2016, its `center=False` case): docs/design.md, "Centered
weight normalization".
"""

from __future__ import annotations

from typing import Any

import keras

from tfnorms import _validation
from tfnorms._math.kernel import weight_norm_kernel
from tfnorms._types import ConstraintLike, InitializerLike, RegularizerLike
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper

# Initializer name that starts the scale at each unit's initial norm, so that
# the wrapped layer first computes what the bare layer (with a centered kernel
# for CWN) computed.
NORM_INITIALIZER = "norm"


@keras.saving.register_keras_serializable(package="tfnorms")
class CenteredWeightNorm(KernelNormWrapper):
    """Centered weight normalization (Huang et al., ICCV 2017).

    For every output unit `i` of each normalized kernel `V` of the inner layer
    (SPEC section 1 says which axes form a unit):

        v_hat = v - mean(v)
        w     = g_i * v_hat / sqrt(sum(v_hat**2) + epsilon)

    so each unit's weights have zero mean and norm `g_i`. The inner layer's
    bias, activation and other arguments are kept as they are.

    Args:
        layer: a Dense, EinsumDense (2-D kernel), Conv1D/2D/3D,
            Conv*Transpose, DepthwiseConv*, SeparableConv*, SimpleRNN, LSTM or
            GRU layer (or cell).
        center: subtract each unit's mean. `False` is plain weight
            normalization (see `WeightNormalization`).
        scale: learn a per-unit scale `g`. Without it every unit has norm 1
            (the paper's choice for convolutions followed by batch norm).
        scale_initializer: initializer of `g` (default `"ones"`, as in the
            paper; the authors' PyTorch port uses sqrt(2) for ReLU nets), or
            `"norm"` to start `g` at each unit's initial (centered) norm so
            the wrapped layer first computes what the bare layer computed.
        scale_regularizer: regularizer of `g`, as in Keras layers.
        scale_constraint: constraint on `g`, as in Keras layers.
        epsilon: added to each unit's squared norm; keeps zero kernels finite.

    Example:

    >>> import keras, tfnorms
    >>> layer = tfnorms.CenteredWeightNorm(keras.layers.Dense(4))
    >>> layer(keras.ops.ones((2, 3))).shape
    (2, 4)
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        center: bool = True,
        scale: bool = True,
        scale_initializer: InitializerLike = "ones",
        scale_regularizer: RegularizerLike = None,
        scale_constraint: ConstraintLike = None,
        epsilon: float = 1e-12,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer, epsilon=epsilon, **kwargs)
        self.center = _validation.boolean("center", center)
        self.scale = _validation.boolean("scale", scale)
        if scale_initializer == NORM_INITIALIZER:
            self.scale_initializer = NORM_INITIALIZER
        else:
            self.scale_initializer = _validation.initializer("scale_initializer", scale_initializer)
        self.scale_regularizer = _validation.regularizer("scale_regularizer", scale_regularizer)
        self.scale_constraint = _validation.constraint("scale_constraint", scale_constraint)
        self._set_untracked("_scales", {})

    def _build_kernel_parameters(self, variable, kernel_axes):
        if not self.scale:
            return
        options = dict(
            name=self._parameter_name(kernel_axes.name, "g"),
            shape=kernel_axes.unit_shape(variable.shape),
            regularizer=self.scale_regularizer,
            constraint=self.scale_constraint,
            trainable=True,
        )
        if self.scale_initializer == NORM_INITIALIZER:
            initializer = self._initial_unit_norms(variable, kernel_axes, self.center)
            scale = self._add_kernel_dependent_weight(initializer, **options)
        else:
            scale = self.add_weight(initializer=self.scale_initializer, **options)
        self._scales[kernel_axes.name] = scale

    def _effective_kernel(self, variable, kernel_axes):
        scale = self._scales.get(kernel_axes.name)
        return weight_norm_kernel(
            variable.value,
            None if scale is None else scale.value,
            kernel_axes.reduce_axes,
            kernel_axes.broadcast_shape(variable.shape),
            center=self.center,
            epsilon=self.epsilon,
        )

    def scale_variables(self) -> dict[str, keras.Variable]:
        """`{kernel name: g}` (empty with `scale=False`)."""
        return dict(self._scales)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        initializer = self.scale_initializer
        config.update(
            {
                "center": self.center,
                "scale": self.scale,
                "scale_initializer": initializer
                if initializer == NORM_INITIALIZER
                else keras.initializers.serialize(initializer),
                "scale_regularizer": keras.regularizers.serialize(self.scale_regularizer),
                "scale_constraint": keras.constraints.serialize(self.scale_constraint),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="tfnorms")
class WeightNormalization(CenteredWeightNorm):
    """Weight normalization (Salimans & Kingma, 2016): `CenteredWeightNorm`
    without centering.

        w = g_i * v / sqrt(sum(v**2) + epsilon)

    The successor of `tensorflow_addons.layers.WeightNormalization`. As there,
    `g` starts at each unit's initial norm (`scale_initializer="norm"`), so
    wrapping a layer does not change its initial output. The data-dependent
    initialization (tfa's `data_init=True`) is the explicit step
    `tfnorms.data_init(model, batch)`.

    Example:

    >>> import keras, tfnorms
    >>> layer = tfnorms.WeightNormalization(keras.layers.Conv2D(8, 3))
    >>> layer(keras.ops.ones((1, 5, 5, 3))).shape
    (1, 3, 3, 8)
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        scale: bool = True,
        scale_initializer: InitializerLike = NORM_INITIALIZER,
        **kwargs: Any,
    ) -> None:
        if "center" in kwargs:
            raise ValueError(
                "WeightNormalization never centers; use "
                "tfnorms.CenteredWeightNorm(layer, center=...) to choose."
            )
        super().__init__(
            layer, center=False, scale=scale, scale_initializer=scale_initializer, **kwargs
        )

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("center")
        return config
