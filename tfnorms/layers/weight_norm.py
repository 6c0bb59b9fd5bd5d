"""CenteredWeightNorm (Huang et al., ICCV 2017) and WeightNormalization
(Salimans & Kingma, 2016, its `center=False` case): docs/design.md, "Centered
weight normalization".
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import keras
from keras import ops
from keras.src.backend.common.variables import AutocastScope

from tfnorms import _validation, axes
from tfnorms._math.data_init import standardizing_update, unit_moments
from tfnorms._types import ConstraintLike, InitializerLike, RegularizerLike, Tensor
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper, call_kind, input_mask

# Initializer name that starts the scale at each unit's initial norm, so that
# the wrapped layer first computes what the bare layer (with a centered kernel
# for CWN) computed.
NORM_INITIALIZER = "norm"


@keras.saving.register_keras_serializable(package="tfnorms")
class CenteredWeightNorm(KernelNormWrapper):
    """Centered weight normalization (Huang et al., ICCV 2017).

    For every output unit `i` of each normalized kernel `V` of the inner layer
    (docs/design.md, "Output units", says which axes form a unit):

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

    @property
    def _centers_kernels(self) -> bool:
        return self.center

    def _kernel_scale(self, kernel_axes):
        scale = self._scales.get(kernel_axes.name)
        return None if scale is None else scale.value

    def scale_variables(self) -> dict[str, keras.Variable]:
        """`{kernel name: g}` (empty with `scale=False`)."""
        return dict(self._scales)

    # ------------------------------------------------ data-dependent init
    def data_init_unsupported(self) -> str | None:
        """Why the data-dependent initialization does not apply to this
        wrapper, or None when it does."""
        if not self.scale:
            return "scale=False: it has no scale g to set"
        if axes.output_kernel_name(self.layer) is None:
            return (
                f"it wraps a recurrent {type(self.layer).__name__}, whose kernels feed "
                "gates inside the recurrence (the initialization is for feed-forward layers)"
            )
        return None

    def standardize_units(self, pre_activation: Tensor, mask: Tensor | None = None) -> None:
        """Set `g` and the inner bias so that these pre-activations (the
        inner layer's outputs before its activation, on one batch) would have
        mean 0 and variance 1 per output unit; docs/weight_norm.md,
        "Data-dependent initialization". A `mask` of the input's (Keras's
        convention: its shape without the last axis) leaves padded positions
        out where it matches the output's positions (channels last)."""
        inner = self.layer
        scale = self._scales[axes.output_kernel_name(inner)]
        units = math.prod(scale.shape)
        channel_axis = 1 if getattr(inner, "data_format", None) == "channels_first" else -1
        shape = tuple(pre_activation.shape)
        if len(shape) < 2 or shape[channel_axis] != units:
            raise ValueError(
                f"data_init: the output of layer '{inner.name}' has shape {shape}, whose "
                f"channel axis does not hold its {units} output units; it cannot be "
                "initialized from data."
            )
        positions = shape[:-1]
        if mask is not None and (channel_axis != -1 or tuple(mask.shape) != positions):
            mask = None  # positions the mask does not describe (strides, channels first)
        mean, variance = unit_moments(pre_activation, channel_axis, mask)
        bias = getattr(inner, "bias", None)
        if not (isinstance(bias, keras.Variable) and math.prod(bias.shape) == units):
            bias = None
        # Outside any autocast scope (TimeDistributed's under mixed precision):
        # the float32 values themselves. Keras's torch backend would assign
        # into a float16 copy there, and the assignment would be lost.
        with AutocastScope(None):
            g, b = standardizing_update(
                scale.value, None if bias is None else bias.value, mean, variance
            )
            scale.assign(ops.cast(g, scale.dtype))
            if bias is not None:
                bias.assign(ops.cast(ops.reshape(b, bias.shape), bias.dtype))
        self.mark_data_initialized()

    def mark_data_initialized(self) -> None:
        """Record that `g` and the bias hold initialized values (only
        `WeightNormalization(data_init=True)` keeps that record)."""

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


@contextlib.contextmanager
def without_activation(layer: keras.layers.Layer) -> Iterator[None]:
    """`layer` with a linear activation inside the block: its pre-activation."""
    if not hasattr(layer, "activation"):
        yield
        return
    activation = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = activation


@keras.saving.register_keras_serializable(package="tfnorms")
class WeightNormalization(CenteredWeightNorm):
    """Weight normalization (Salimans & Kingma, 2016): `CenteredWeightNorm`
    without centering.

        w = g_i * v / sqrt(sum(v**2) + epsilon)

    The successor of `tensorflow_addons.layers.WeightNormalization`, with its
    signature `(layer, data_init, **kwargs)`. `g` starts at each unit's
    initial norm (`scale_initializer="norm"`), so wrapping a layer does not
    change its initial output.

    `data_init=True` adds the paper's data-dependent initialization: on the
    first call with real data (eager), `g` and the inner bias are set so that
    every output unit's pre-activation (before the inner activation) has
    mean 0 and variance 1 on that batch. A non-trainable variable
    `initialized` records it and is saved with the model: a reloaded or
    resumed model is never initialized again. The first call must be eager,
    e.g. `model(batch)` before `fit` (then `fit`, `jit_compile`,
    `MirroredStrategy` and JAX work as usual); a first call inside a traced
    function (`fit`, `predict`, `tf.function`, `jax.jit`), in a replica of a
    `tf.distribute` strategy or inside `TimeDistributed` (which calls it
    once per time step) raises an error naming
    `tfnorms.data_init(model, batch)`, the model-wide step that works
    everywhere. (Keras's PyTorch `fit` calls the model eagerly unless
    `jit_compile=True`: there its first batch initializes.) Where
    tensorflow-addons differed: docs/migrating.md.

    The default is `data_init=False` (tensorflow-addons defaulted to True):
    the wrapped layer first computes what the bare layer computed, on every
    backend, and `fit` needs no eager call first.

    Args:
        layer: the layer to wrap (the kinds of `CenteredWeightNorm`).
        data_init: initialize `g` and the bias from the first batch.
        scale: as in `CenteredWeightNorm` (keyword-only, as are the rest).
        scale_initializer: as in `CenteredWeightNorm`, but defaults to
            `"norm"`.
        **kwargs: `scale_regularizer`, `scale_constraint`, `epsilon` as in
            `CenteredWeightNorm`, and the base `Layer` arguments.

    Example:

    >>> import keras, tfnorms
    >>> layer = tfnorms.WeightNormalization(keras.layers.Conv2D(8, 3))
    >>> layer(keras.ops.ones((1, 5, 5, 3))).shape
    (1, 3, 3, 8)
    """

    def __init__(
        self,
        layer: keras.layers.Layer,
        data_init: bool = False,
        *,
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
        self.data_init = _validation.boolean("data_init", data_init)
        if self.data_init and self.data_init_unsupported() is not None:
            raise ValueError(
                f"WeightNormalization(data_init=True) cannot initialize layer "
                f"'{layer.name}': {self.data_init_unsupported()}. Pass data_init=False."
            )
        self._set_untracked("_initialized", None)
        # Mirrors the variable once it reads 1: JAX cannot read it while tracing.
        self._set_untracked("_data_init_done", False)

    def build(self, input_shape: Any = None) -> None:
        super().build(input_shape)
        if self.data_init:
            initialized = self.add_weight(
                name="initialized", shape=(), dtype="int32", initializer="zeros", trainable=False
            )
            self._set_untracked("_initialized", initialized)
            if keras.backend.backend() == "jax":
                _on_every_assignment(initialized, self._record_initialized)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        # Marks calls that come through Keras's `__call__`; TimeDistributed
        # calls `call` itself, once per time step.
        if not self.data_init or self._data_init_done:
            return super().__call__(*args, **kwargs)
        self._set_untracked("_in_own_call", True)
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._set_untracked("_in_own_call", False)

    def call(self, inputs: Tensor, *args: Any, **kwargs: Any) -> Any:
        if self.data_init and not self._data_init_done:
            self._initialize_once(inputs, *args, **kwargs)
        return super().call(inputs, *args, **kwargs)

    def _initialize_once(self, inputs, *args, **kwargs):
        kind = call_kind(inputs)
        if kind == "symbolic":  # Keras working out shapes: no data yet
            return
        if self._read_initialized():
            self._set_untracked("_data_init_done", True)
            return
        if not self.__dict__.get("_in_own_call", False):
            raise RuntimeError(
                f"WeightNormalization '{self.name}' has data_init=True and is first "
                "called through its `call` method, as TimeDistributed does once per time "
                "step: it would be initialized from one step. Use `tfnorms.data_init(model, "
                "batch)`, which sees all time steps at once."
            )
        if kind == "traced" or _in_replica_context():
            raise RuntimeError(
                f"WeightNormalization '{self.name}' has data_init=True and is first "
                "called inside a traced function (fit, predict, tf.function, jit_compile, "
                "jax.jit) or a tf.distribute replica, where it cannot "
                "compute the statistics of a batch. Initialize it before: call the model "
                "once on a batch (`model(batch)`), or use `tfnorms.data_init(model, "
                "batch)`, which initializes every wrapper of a model in any setting."
            )
        with without_activation(self.layer):
            pre_activation = super().call(inputs, *args, **kwargs)
        self.standardize_units(pre_activation, input_mask(inputs, kwargs))

    def _read_initialized(self) -> bool:
        """The variable's value where it can be read (eagerly, or lifted out
        of a TensorFlow graph); the mirror when JAX is tracing."""
        if self._data_init_done:
            return True
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.init_scope():
                value = tf.convert_to_tensor(self._initialized.value).numpy()
            # Empty when the variable was created in this very trace (a first
            # call inside tf.function builds the layer there): its initial
            # value, 0, is assigned after the trace.
            return value.size == 1 and bool(value)
        value = self._initialized.value
        return call_kind(value) == "eager" and bool(ops.convert_to_numpy(value))

    def _record_initialized(self, value: Tensor) -> None:
        if call_kind(value) == "eager":
            self._set_untracked("_data_init_done", bool(ops.convert_to_numpy(value)))

    def mark_data_initialized(self) -> None:
        """Record that `g` and the bias hold initialized values, so that
        `data_init=True` does not initialize them again: call it after
        setting trained weights by hand (loading a `.keras` file or weights
        restores the record itself)."""
        if self._initialized is not None:
            self._initialized.assign(1)
            self._set_untracked("_data_init_done", True)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("center")
        config["data_init"] = self.data_init
        return config


def _on_every_assignment(variable: keras.Variable, record: Any) -> None:
    """Call `record(value)` whenever a value is stored in `variable`.

    JAX's `fit` and `predict` trace the model with the variables' values as
    arguments and empty the variables meanwhile, so the `initialized` flag
    can only be read from a Python mirror there; `set_weights`,
    `load_weights` and `assign` all store through Keras's `_direct_assign`
    (on JAX), which this extends to keep the mirror current.
    """
    store = variable._direct_assign

    def store_and_record(value):
        store(value)
        record(value)

    variable._direct_assign = store_and_record


def _in_replica_context() -> bool:
    """Inside `strategy.run` of a `tf.distribute` strategy, where each replica
    sees its share of the batch only."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and not tf.distribute.in_cross_replica_context()
