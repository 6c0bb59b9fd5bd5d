"""The base of the kernel-norm wrappers: substitute normalized kernels into an
inner layer.

The wrapper keeps the inner layer as it is: its kernel variables are the proxy
parameters `V`. At call time it computes the effective kernels `W` and runs the
inner layer with `W` substituted through `keras.StatelessScope`, mapping every
inner variable (mapping only the kernels breaks `fit` on JAX: docs/design.md,
"Wrapping a layer"). Which kernel axes form one output unit is `tfnorms.axes`.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any

import keras
import numpy as np
from keras import ops
from keras.src.backend.common.variables import AutocastScope

from tfnorms import _validation, axes
from tfnorms._math import compiled
from tfnorms._math.kernel import center_kernel, unit_factors, unit_norms, weight_norm_kernel
from tfnorms._types import Shape, Tensor
from tfnorms.layers import kernel_free


def call_kind(inputs: Any) -> str:
    """How a layer is being called: `"eager"` (on values), `"symbolic"`
    (Keras working out output shapes, as when it builds a model: no data) or
    `"traced"` (inside `tf.function`, `jit_compile`, `jax.jit`,
    `torch.compile`, or a Keras wrapper that traces its inner layer, such as
    `TimeDistributed`)."""
    # Keras has no public test for its shape-inference pass; without it, a
    # model being built would look traced.
    from keras.src.backend.common.symbolic_scope import in_symbolic_scope

    if in_symbolic_scope() or any(keras.backend.is_keras_tensor(x) for x in _leaves(inputs)):
        return "symbolic"
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return "eager" if tf.executing_eagerly() else "traced"
    if backend == "jax":
        import jax

        return "traced" if any(isinstance(x, jax.core.Tracer) for x in _leaves(inputs)) else "eager"
    if backend == "torch":
        import torch

        return "traced" if torch.compiler.is_compiling() else "eager"
    return "eager"


def _leaves(inputs):
    return keras.tree.flatten(inputs)


def input_mask(inputs: Any, kwargs: dict) -> Any:
    """The mask a layer's call sees for its inputs: the `mask` argument, or
    the one Keras attached to the input tensor (a layer whose `call` takes
    no `mask`, as `WeightNormalization`'s, gets it that way only). Keras has
    no public reader for the attached mask."""
    from keras.src.backend.common.masking import get_keras_mask

    mask = kwargs.get("mask")
    if mask is None and not isinstance(inputs, (list, tuple, dict)):
        mask = get_keras_mask(inputs)
    return mask


def _substitute(variable, effective):
    """The effective kernel `W` that replaces `variable` (a `(V, W)` pair of
    `effective` holds it), or None where the variable is read as it is."""
    for kernel, value in effective:
        if kernel is variable:
            return value
    return None


class KernelNormWrapper(keras.layers.Wrapper):
    """Base of the weight-normalization wrappers.

    Subclasses implement `_build_kernel_parameters(variable, kernel_axes)`
    (create their variables for one kernel, in a fixed order) and
    `_kernel_scale(kernel_axes)` (the per-unit or scalar scale of
    `W = scale * V_hat / ||V_hat||`, or None), and set `_centers_kernels`.

    Recurrent layers: a wrapped SimpleRNN/LSTM/GRU layer exposes the inner
    layer's `return_sequences`, `return_state`, `go_backwards`, `stateful`,
    `states` and `reset_state()`, so `keras.layers.Bidirectional` accepts it
    (`Bidirectional(CenteredWeightNorm(LSTM(8)))` normalizes both
    directions, each with its own parameters). A wrapped cell exposes
    `state_size`, `output_size` and `get_initial_state()`, so
    `keras.layers.RNN(CenteredWeightNorm(LSTMCell(8)))` works too, but it
    recomputes the normalized kernels at every time step: wrap the layer
    (kernels computed once per call) unless you need the cell.
    `Bidirectional`'s fused two-direction LSTM/GRU path (a GPU kernel) is
    not taken around wrappers: each direction runs on its own.
    """

    def __init__(self, layer: keras.layers.Layer, epsilon: float = 1e-12, **kwargs: Any) -> None:
        if not isinstance(layer, keras.layers.Layer):
            raise TypeError(
                f"{type(self).__name__} wraps a Keras layer; received {layer!r} of "
                f"type {type(layer).__name__}."
            )
        if isinstance(layer, KernelNormWrapper):
            raise ValueError(
                f"Layer '{layer.name}' is already wrapped in {type(layer).__name__}; "
                f"wrapping it again in {type(self).__name__} would normalize the kernel "
                "twice. Wrap the inner layer once."
            )
        axes.unit_axes_for(layer)  # refuse unsupported layers before anything else
        kwargs.setdefault("dtype", layer.dtype_policy)
        super().__init__(layer, **kwargs)
        self.epsilon = _validation.epsilon("epsilon", epsilon)
        # Our variables (g, rho) and V must be read in their own float32 dtype:
        # W is computed in the variable dtype and the inner layer casts it.
        self.autocast = False
        self.supports_masking = getattr(layer, "supports_masking", False)
        self._set_untracked("_kernels", [])
        # (variable, initializer) of the parameters whose initial value is
        # read from the kernel; see `initialize_from_kernels`.
        self._set_untracked("_kernel_dependent", [])
        self._inner_call_args = ()

    # ------------------------------------------------------------------ build
    def build(self, input_shape: Shape | None = None) -> None:
        super().build(input_shape)  # builds the inner layer, creating V
        self._inner_input_shape = input_shape
        self._set_untracked("_kernels", axes.find_kernels(self.layer))
        for variable, kernel_axes in self._kernels:
            self._build_kernel_parameters(variable, kernel_axes)
        self._inner_call_args = tuple(inspect.signature(self.layer.call).parameters)
        self.built = True

    def _set_untracked(self, name, value):
        # Keras tracks variables found in attributes as this layer's own; the
        # inner kernels must stay the inner layer's alone (saving, ordering).
        object.__setattr__(self, name, value)

    def _build_kernel_parameters(self, variable, kernel_axes):
        raise NotImplementedError

    def _add_kernel_dependent_weight(self, initializer, **kwargs):
        """`add_weight`, remembering an initializer that reads the kernel."""
        variable = self.add_weight(initializer=initializer, **kwargs)
        self._kernel_dependent.append((variable, initializer))
        return variable

    def initialize_from_kernels(self) -> None:
        """Re-run the initializers that read the inner kernels.

        The `"norm"` scale of `CenteredWeightNorm`/`WeightNormalization`
        and `BoundedWeightNorm`'s default `rho` and per-unit gains take their
        initial values from the kernel `V` when the wrapper is built. After
        you set `V` yourself (say, copied from a trained plain layer), call
        this to take them from the new `V`; the other parameters are left
        as they are. `tfnorms.convert_model` does this for you.
        """
        for variable, initializer in self._kernel_dependent:
            variable.assign(initializer(variable.shape, variable.dtype))

    # Whether V_hat is V minus each unit's mean (CWN) or V itself.
    _centers_kernels = False

    def _kernel_scale(self, kernel_axes):
        raise NotImplementedError

    def _kernel_arguments(self, variable, kernel_axes):
        return dict(
            scale=self._kernel_scale(kernel_axes),
            reduce_axes=kernel_axes.reduce_axes,
            broadcast_shape=kernel_axes.broadcast_shape(variable.shape),
            center=self._centers_kernels,
            epsilon=self.epsilon,
        )

    def _effective_kernel(self, variable, kernel_axes):
        return weight_norm_kernel(variable.value, **self._kernel_arguments(variable, kernel_axes))

    @staticmethod
    def _parameter_name(kernel_name, suffix):
        """'kernel' -> 'g', 'recurrent_kernel' -> 'recurrent_g', and so on."""
        return kernel_name.replace("kernel", suffix)

    def _initial_unit_norms(self, variable, kernel_axes, center):
        """An initializer: each unit's norm of the kernel's current value."""

        def initializer(shape, dtype=None):
            v = ops.convert_to_tensor(variable.value)
            if center:
                v = center_kernel(v, kernel_axes.reduce_axes)
            norms = unit_norms(v, kernel_axes.reduce_axes)
            if shape is not None:
                norms = ops.reshape(norms, shape)
            return ops.cast(norms, dtype or variable.dtype)

        return initializer

    # ------------------------------------------------------------------- call
    def effective_kernels(self) -> dict[str, Tensor]:
        """`{kernel name: W}`: the kernels the inner layer computes with."""
        return {kernel_axes.name: w for (_, kernel_axes), w in self._computed_kernels()}

    def _computed_kernels(self):
        """`((V, its axes), W)` of every normalized kernel, computed in the
        variables' own dtype: under a mixed policy, Keras's `__call__`
        enters an autocast scope even with `autocast=False`, and V, g or
        rho read as float16 there make a small unit's squared norm 0 (and
        `epsilon` too), so W would be NaN. The inner layer casts W."""
        self._require_unquantized()
        with AutocastScope(None):
            return [
                ((variable, kernel_axes), self._effective_kernel(variable, kernel_axes))
                for variable, kernel_axes in self._kernels
            ]

    def _require_unquantized(self):
        """`model.quantize()` quantizes the inner layer (it reaches the
        leaves only) and replaces its kernel with new variables, which the
        wrapper would no longer normalize: refused, not run unnormalized."""
        mode = getattr(self.layer, "quantization_mode", None)
        if mode is not None:
            raise RuntimeError(
                f"{type(self).__name__} '{self.name}' wraps layer '{self.layer.name}', "
                f"which was quantized ({mode!r}) after it was wrapped: its new kernel is "
                "no longer normalized. Quantize the model without its wrappers instead: "
                "`plain = tfnorms.strip(model)`, then `plain.quantize(...)`, on the model "
                "as it was before quantizing (reload or rebuild it)."
            )

    def _inner_state_variables(self):
        """Every variable the inner layer reads or updates in `call`: its
        weights, plus a stateful RNN's state variables (which Keras keeps out
        of `weights`)."""
        variables = list(self.layer.variables)
        if isinstance(self.layer, keras.layers.RNN) and self.layer.stateful:
            seen = {id(v) for v in variables}
            for state in keras.tree.flatten(self.layer.states or []):
                if isinstance(state, keras.Variable) and id(state) not in seen:
                    variables.append(state)
        return variables

    def call(
        self,
        inputs: Tensor,
        *args: Any,
        training: bool | None = None,
        mask: Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        if not args and kernel_free.supports(self.layer):
            # Dense, EinsumDense, convolutions: their product computed here
            # without W under XLA where that pays, and with W where each step
            # reruns this Python, skipping the inner `__call__` and the
            # variable substitution below (docs/design.md, "Kernel-free
            # weight norm").
            if kernel_free.pays(self.layer, inputs):
                ((variable, kernel_axes),) = self._kernels
                with AutocastScope(None):  # as in `_computed_kernels`
                    v = variable.value
                    mean, factor = unit_factors(v, **self._kernel_arguments(variable, kernel_axes))
                inputs = ops.cast(inputs, self.layer.compute_dtype)
                return kernel_free.call(self.layer, inputs, v, mean, factor)
            if compiled.runs_every_step():
                ((_, kernel),) = self._computed_kernels()
                inputs = ops.cast(inputs, self.layer.compute_dtype)
                return kernel_free.formed_call(self.layer, inputs, kernel)
        # Extra positional arguments are for RNN cells: `cell(inputs, states)`.
        # Matched by identity, not keyed by `id()`: torch.compile fails on a
        # dict of ids built in the traced call.
        effective = [(variable, w) for (variable, _), w in self._computed_kernels()]
        inner_variables = self._inner_state_variables()
        substitutes = [_substitute(v, effective) for v in inner_variables]
        mapping = [
            (v, v.value if w is None else w)
            for v, w in zip(inner_variables, substitutes, strict=True)
        ]
        if "training" in self._inner_call_args:
            kwargs["training"] = training
        if mask is not None and "mask" in self._inner_call_args:
            kwargs["mask"] = mask
        with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
            before = [scope.get_current_value(v) for v in inner_variables]
            outputs = self.layer(inputs, *args, **kwargs)
        # Carry out the inner layer's own state updates (RNN states, seeds).
        for variable, substitute, value_before in zip(
            inner_variables, substitutes, before, strict=True
        ):
            value = scope.get_current_value(variable)
            if substitute is None and value is not value_before:
                variable.assign(value)
        # The inner layers' losses (activity regularizers, add_loss) become
        # this wrapper's. The inner layers still list them as their own, which
        # an enclosing stateless scope (JAX's fit, `stateless_call`) would
        # then count twice: Keras's own `_clear_losses` drops their claim.
        self.layer._clear_losses()
        for loss in scope.losses:
            self.add_loss(loss)
        return outputs

    def compute_output_shape(self, input_shape: Shape, *args: Any, **kwargs: Any) -> Any:
        return self.layer.compute_output_shape(input_shape, *args, **kwargs)

    def compute_mask(self, inputs: Tensor, mask: Tensor | None = None) -> Any:
        if hasattr(self.layer, "compute_mask"):
            return self.layer.compute_mask(inputs, mask)
        return mask

    # ---------------------------------------- recurrent layers and cells
    def _recurrent_attribute(self, name):
        # Not `self.layer`, which recurses before __init__ has set it. Keras's
        # torch backend keeps it in torch.nn.Module's `_modules`.
        layer = self.__dict__.get("layer") or self.__dict__.get("_modules", {}).get("layer")
        if layer is None or not hasattr(layer, name):
            raise AttributeError(
                f"{type(self).__name__} '{self.name}' wraps "
                f"{type(layer).__name__}, which has no attribute '{name}'."
            )
        return getattr(layer, name)

    go_backwards = property(lambda self: self._recurrent_attribute("go_backwards"))
    return_sequences = property(lambda self: self._recurrent_attribute("return_sequences"))
    return_state = property(lambda self: self._recurrent_attribute("return_state"))
    stateful = property(lambda self: self._recurrent_attribute("stateful"))
    states = property(lambda self: self._recurrent_attribute("states"))
    state_size = property(lambda self: self._recurrent_attribute("state_size"))
    output_size = property(lambda self: self._recurrent_attribute("output_size"))

    @property
    def zero_output_for_mask(self) -> bool:
        return self._recurrent_attribute("zero_output_for_mask")

    @zero_output_for_mask.setter
    def zero_output_for_mask(self, value: bool) -> None:
        # `Bidirectional` sets this on the layers it holds.
        self._recurrent_attribute("zero_output_for_mask")
        self.layer.zero_output_for_mask = value

    def get_initial_state(self, batch_size: int) -> Any:
        return self._recurrent_attribute("get_initial_state")(batch_size=batch_size)

    def reset_state(self) -> None:
        return self._recurrent_attribute("reset_state")()

    def reset_states(self) -> None:
        return self.reset_state()

    # ---------------------------------------------------------------- removal
    def _require_built(self, what):
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} '{self.name}' is not built yet; call it on "
                f"data (or build it) before {what}."
            )

    def plain_weights(self) -> list[np.ndarray]:
        """The inner layer's weights as NumPy arrays, in the order of
        `self.layer.weights`, with every normalized kernel replaced by its
        effective kernel `W`: what `set_weights` of a plain copy of the inner
        layer takes to compute what the wrapper computes."""
        self._require_built("plain_weights()")
        kernels = {id(v): w for (v, _), w in self._computed_kernels()}
        with AutocastScope(None):
            return [
                ops.convert_to_numpy(kernels[id(v)] if id(v) in kernels else v.value)
                for v in self.layer.weights
            ]

    def remove(self) -> keras.layers.Layer:
        """A plain copy of the inner layer with the effective kernels baked in.

        The copy computes what the wrapper computes, with no normalization
        left: what to export for inference. The wrapper is left unchanged.
        `tfnorms.strip(model)` does this for every wrapper of a model.
        """
        self._require_built("remove()")
        plain = type(self.layer).from_config(copy.deepcopy(self.layer.get_config()))
        plain.build(self._inner_input_shape)
        plain.set_weights(self.plain_weights())
        return plain

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["epsilon"] = self.epsilon
        return config

    @classmethod
    def from_config(
        cls, config: dict[str, Any], custom_objects: dict[str, Any] | None = None
    ) -> KernelNormWrapper:
        config = dict(config)
        # `keras.layers.Bidirectional` makes its backward copy by setting
        # `go_backwards` in the copy's config: it belongs to the inner RNN.
        if "go_backwards" in config:
            go_backwards = config.pop("go_backwards")
            inner = copy.deepcopy(config["layer"])
            inner["config"]["go_backwards"] = go_backwards
            config["layer"] = inner
        return super().from_config(config, custom_objects=custom_objects)
