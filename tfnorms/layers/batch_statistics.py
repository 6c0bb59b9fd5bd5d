"""The base of the batch norms: statistics over the batch, per channel."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnorms import _validation, distribute
from tfnorms._math.apply import per_channel
from tfnorms._types import Shape
from tfnorms.layers.base import NormalizationLayer


class BatchStatisticsLayer(NormalizationLayer):
    """The channel axis, the moving averages (Keras's momentum convention),
    masks and synchronization.

    Subclasses create their weights in `build` after calling this `build`
    (which returns the per-channel shape) and compute in `call`.
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        synchronized: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.axis = _validation.integer("axis", axis)
        self.momentum = _validation.unit_interval("momentum", momentum)
        self.synchronized = _validation.boolean("synchronized", synchronized)
        self._channel_axis = None

    def build(self, input_shape: Shape) -> tuple[int]:
        ndim = len(input_shape)
        self._channel_axis = _validation.axis_in_range("axis", self.axis, ndim, self.name)
        self._check_known_sizes(input_shape, (self._channel_axis,), self.axis)
        channels = input_shape[self._channel_axis]
        self.input_spec = keras.layers.InputSpec(ndim=ndim, axes={self.axis: channels})
        return (channels,)

    def compute_output_shape(self, input_shape: Shape) -> Shape:
        _validation.axis_in_range("axis", self.axis, len(input_shape), self.name)
        return input_shape

    def _add_moving(self, name, shape, initializer):
        variable = self.add_weight(
            shape=shape, name=name, initializer=initializer, trainable=False, autocast=False
        )
        setattr(self, name, variable)

    def _channel_mask(self, inputs, mask):
        """Keras's mask (the input's shape without the channel axis) as a
        boolean tensor with size 1 on the channel axis."""
        if mask is None:
            return None
        self._check_mask_rank(inputs, mask, "channel")
        return ops.expand_dims(ops.cast(mask, "bool"), self._channel_axis)

    def _reduction(self):
        """Local statistics, or the global batch's when synchronized."""
        return distribute.reduction(self.synchronized)

    def _update_moving(self, variable, value):
        """`moving = moving * momentum + value * (1 - momentum)` (Keras's
        convention: momentum is the share of the old value that is kept)."""
        old = ops.cast(variable, value.dtype)
        variable.assign(
            ops.cast(old * self.momentum + value * (1.0 - self.momentum), variable.dtype)
        )

    def _per_channel(self, variable, dtype, ndim):
        """A per-channel variable (or None) in `dtype`, broadcasting against x."""
        value = None if variable is None else ops.cast(variable, dtype)
        return per_channel(value, ndim, self._channel_axis)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update(
            {"axis": self.axis, "momentum": self.momentum, "synchronized": self.synchronized}
        )
        return config
