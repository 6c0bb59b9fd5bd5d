"""The base of the batch norms: statistics over the batch, per channel."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from tfnorms import _validation, distribute
from tfnorms._math import replicas
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

    def _channel_mask(self, inputs, mask, reduction):
        """Keras's mask as a boolean tensor that broadcasts against x.

        As `keras.layers.BatchNormalization`, the mask is the input's shape
        without its last axis, whatever `axis` is (what `Masking` and
        `Embedding(mask_zero=True)` give), and broadcasts over that last axis.
        With the channels last, every channel sees the same mask; with another
        channel axis (e.g. `axis=1` on `(batch, time, features)`), each channel
        has its own valid elements (docs/batch_norm.md, "Masks").
        """
        if mask is None:
            return None
        self._check_mask_rank(inputs, mask, "last")
        if self._channel_axis != len(inputs.shape) - 1 and reduction is not replicas.LOCAL:
            raise ValueError(
                f"Layer '{self.name}' (synchronized=True, axis={self.axis}) cannot "
                "synchronize masked statistics when the channel axis is not the last: "
                "Keras's mask spans the channels then, and the cross-replica reduction "
                "needs one mask shared by all channels. Use axis=-1, or "
                f"synchronized=False; received mask.shape={tuple(mask.shape)}, "
                f"inputs.shape={tuple(inputs.shape)}."
            )
        return ops.expand_dims(ops.cast(mask, "bool"), -1)

    def _reduction(self, batch_statistics=True):
        """Local statistics, or the global batch's when synchronized; local
        in inference (`batch_statistics` False), where no statistics are
        computed and nothing needs reducing."""
        return distribute.reduction(self.synchronized and batch_statistics)

    def _update_moving(self, variable, value, momentum=None, count=None):
        """`moving = moving * momentum + value * (1 - momentum)` (Keras's
        convention: momentum is the share of the old value that is kept;
        `self.momentum` unless given). Where `count`, the number of elements
        the statistics were taken over, is 0 (an empty or fully masked batch),
        the moving value stays as it was. Returns the new value, in value's dtype."""
        momentum = self.momentum if momentum is None else momentum
        old = ops.cast(variable, value.dtype)
        new = old * momentum + value * (1.0 - momentum)
        if not (count is None or isinstance(count, (int, float)) and count > 0):
            new = ops.where(ops.convert_to_tensor(count) > 0, new, old)
        variable.assign(ops.cast(new, variable.dtype))
        return new

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
