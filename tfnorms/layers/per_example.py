"""The base of layer and group normalization: Lp statistics per example."""

from __future__ import annotations

from typing import Any

from tfnorms._math.reduce import expand_statistics
from tfnorms._math.stats import statistics
from tfnorms._types import ConstraintLike, InitializerLike, RegularizerLike
from tfnorms.layers.base import NormalizationLayer


class PerExampleLpNormalization(NormalizationLayer):
    """Statistics per example: nothing moves between batches, so training and
    inference compute the same thing and there are no moving statistics; a
    learned per-feature `gamma` and `beta`.

    Subclasses build their weights and compute in `call`.
    """

    def __init__(
        self,
        p: float | str = 2,
        top_k: int | None = None,
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
        # As Keras's layer and group norms: inputs keep their dtype (a float32
        # input under mixed_float16 is not rounded to float16 first).
        self.autocast = False

    def _statistics(self, x, kept, mask, center=True):
        """Per-example mean, sigma_p**2 and sigma_p (None where it is not
        computed without squares; see `tfnorms._math.stats.Statistics`),
        expanded to broadcast against x."""
        result = statistics(x, kept, p=self.p, top_k=self.top_k, mask=mask, center=center)
        ndim = len(x.shape)
        return tuple(
            None if value is None else expand_statistics(value, ndim, kept)
            for value in (result.mean, result.variance, result.scale)
        )

    @staticmethod
    def _varying_mask(mask, reduced):
        """The mask when it can differ between the elements of one statistic
        (it varies along a reduced axis); otherwise None. A mask that varies
        only along the kept axes (e.g. over time steps when each time step is
        normalized over its own features) leaves the statistics as Keras's."""
        if mask is None or all(mask.shape[a] == 1 for a in reduced):
            return None
        return mask

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(self._lp_scale_config())
        return config
