"""BoundedWeightNorm (Hoffer et al., NeurIPS 2018): docs/design.md, "Bounded weight norm"."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnorms import _validation
from tfnorms._math.kernel import fixed_frobenius_gain
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper


@keras.saving.register_keras_serializable(package="tfnorms")
class BoundedWeightNorm(KernelNormWrapper):
    """Weight normalization with a fixed, non-learned norm per layer.

        w_i = rho * v_i / sqrt(sum(v_i**2) + epsilon)

    `rho` is a non-trainable scalar for each normalized kernel (an LSTM has
    one for its input kernel and one for its recurrent kernel). The paper
    pairs this layer with mean-only batch normalization after it.

    Args:
        layer: a layer with a kernel of the output-unit table (docs/design.md,
            "Output units").
        rho: the fixed norm of every output unit. `None` (default) takes the
            mean over units of the initial per-unit norms `||V_i||` (the
            paper: "a simple choice for rho is the initial norm"). With
            `per_unit_gain=True` it is instead the fixed total (Frobenius)
            norm, by default `||g_init||`.
        per_unit_gain: the authors' other variant: a trainable `g_i`
            initialised to `||V_i||`, and
            `w_i = (rho_F / ||g||) * g_i * v_i / ||v_i||`, so that the layer's
            total norm stays `rho_F` while the units' relative sizes are
            learned.
        epsilon: added to each squared norm; keeps zero kernels finite.

    Example:

    >>> import keras, tfnorms
    >>> layer = tfnorms.BoundedWeightNorm(keras.layers.Dense(3), rho=2.0)
    >>> layer(keras.ops.ones((2, 5))).shape
    (2, 3)
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        rho: float | None = None,
        per_unit_gain: bool = False,
        epsilon: float = 1e-12,
        **kwargs: Any,
    ) -> None:
        super().__init__(layer, epsilon=epsilon, **kwargs)
        self.rho = _validation.positive_float("rho", rho, allow_none=True)
        self.per_unit_gain = _validation.boolean("per_unit_gain", per_unit_gain)
        self._set_untracked("_rhos", {})
        self._set_untracked("_gains", {})

    def _build_kernel_parameters(self, variable, kernel_axes):
        unit_norms = self._initial_unit_norms(variable, kernel_axes, center=False)
        if self.rho is not None:
            rho_initializer = keras.initializers.Constant(self.rho)
        elif self.per_unit_gain:

            def rho_initializer(shape, dtype=None):
                return ops.sqrt(ops.sum(ops.square(unit_norms(None, dtype))))

        else:

            def rho_initializer(shape, dtype=None):
                return ops.mean(unit_norms(None, dtype))

        rho_options = dict(
            name=self._parameter_name(kernel_axes.name, "rho"), shape=(), trainable=False
        )
        if self.rho is None:  # taken from the kernel: redone by initialize_from_kernels()
            rho = self._add_kernel_dependent_weight(rho_initializer, **rho_options)
        else:
            rho = self.add_weight(initializer=rho_initializer, **rho_options)
        self._rhos[kernel_axes.name] = rho
        if self.per_unit_gain:
            self._gains[kernel_axes.name] = self._add_kernel_dependent_weight(
                unit_norms,
                name=self._parameter_name(kernel_axes.name, "g"),
                shape=kernel_axes.unit_shape(variable.shape),
                trainable=True,
            )

    def _kernel_scale(self, kernel_axes):
        rho = self._rhos[kernel_axes.name].value
        if self.per_unit_gain:
            return fixed_frobenius_gain(self._gains[kernel_axes.name].value, rho, self.epsilon)
        return rho

    def rho_variables(self) -> dict[str, keras.Variable]:
        """`{kernel name: rho}` (rho_F with `per_unit_gain=True`)."""
        return dict(self._rhos)

    def scale_variables(self) -> dict[str, keras.Variable]:
        """`{kernel name: g}` (empty unless `per_unit_gain=True`)."""
        return dict(self._gains)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"rho": self.rho, "per_unit_gain": self.per_unit_gain})
        return config
