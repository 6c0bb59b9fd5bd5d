"""Model-level tools (SPEC sections 2 and 6): `data_init`, `strip` and
`convert_model`."""

from __future__ import annotations

import contextlib
import copy
import inspect
import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np

from tfnorms import axes
from tfnorms._types import NormReplacement
from tfnorms.layers.bounded_weight_norm import BoundedWeightNorm
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper
from tfnorms.layers.weight_norm import NORM_INITIALIZER, CenteredWeightNorm, WeightNormalization

# --------------------------------------------------------------------------
# Walking a model
# --------------------------------------------------------------------------


def _children(layer):
    if isinstance(layer, KernelNormWrapper):
        return []  # the inner layer belongs to the wrapper
    if isinstance(layer, keras.layers.Bidirectional):
        return [layer.forward_layer, layer.backward_layer]
    if isinstance(layer, keras.layers.Wrapper):
        return [layer.layer]
    if isinstance(layer, keras.Model):
        return list(layer.layers)
    return []


def _wrappers_with_hosts(layer, host=None, seen=None):
    """Every KernelNormWrapper under `layer`, each with the layer that must be
    hooked to see all its inputs at once: the wrapper itself, or the
    outermost `TimeDistributed` around it (which calls the wrapper once per
    time step)."""
    seen = set() if seen is None else seen
    if id(layer) in seen:
        return
    seen.add(id(layer))
    if isinstance(layer, KernelNormWrapper):
        yield (host or layer), layer
        return
    for child in _children(layer):
        # Only a chain of TimeDistributed directly around the wrapper hosts it.
        child_host = (host or layer) if isinstance(layer, keras.layers.TimeDistributed) else None
        yield from _wrappers_with_hosts(child, child_host, seen)


# --------------------------------------------------------------------------
# data_init
# --------------------------------------------------------------------------


def _data_init_target(wrapper):
    """The scale variable that sets the wrapper's output units, or None."""
    if not isinstance(wrapper, CenteredWeightNorm) or not wrapper.scale:
        return None
    name = axes.output_kernel_name(wrapper.layer)
    if name is None:  # recurrent: the kernels feed gates, not the output
        return None
    return name


@contextlib.contextmanager
def _linear_activation(layer):
    """The inner layer without its activation, for its pre-activation."""
    if not hasattr(layer, "activation"):
        yield
        return
    activation = layer.activation
    layer.activation = keras.activations.linear
    try:
        yield
    finally:
        layer.activation = activation


def _rescale_to_unit_statistics(wrapper, kernel_name, pre_activation):
    inner = wrapper.layer
    scale = wrapper.scale_variables()[kernel_name]
    units = int(np.prod(scale.shape))
    z = np.asarray(keras.ops.convert_to_numpy(pre_activation), dtype=np.float64)
    channel_axis = 1 if getattr(inner, "data_format", None) == "channels_first" else -1
    if z.ndim < 2 or z.shape[channel_axis] != units:
        raise ValueError(
            f"data_init: the output of layer '{inner.name}' has shape {z.shape}, whose "
            f"channel axis does not hold its {units} output units; it cannot be "
            "initialized from data."
        )
    z = np.moveaxis(z, channel_axis, -1).reshape(-1, units)
    mean = z.mean(axis=0)
    variance = z.var(axis=0)
    # A unit that is constant on the batch keeps its scale.
    factor = np.where(variance > 0, 1.0 / np.sqrt(np.maximum(variance, 1e-300)), 1.0)
    g = np.asarray(keras.ops.convert_to_numpy(scale.value), dtype=np.float64)
    scale.assign((g * factor.reshape(g.shape)).astype(scale.dtype))
    bias = getattr(inner, "bias", None)
    if isinstance(bias, keras.Variable) and int(np.prod(bias.shape)) == units:
        b = np.asarray(keras.ops.convert_to_numpy(bias.value), dtype=np.float64)
        new_bias = (b.reshape(-1) - mean) * factor
        bias.assign(new_bias.reshape(bias.shape).astype(bias.dtype))


def _is_concrete(tensor):
    """Whether `tensor` holds values (not a symbolic or traced placeholder,
    as when Keras builds a subclassed model by running `call` symbolically)."""
    if keras.backend.is_keras_tensor(tensor):
        return False
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly()
    if backend == "jax":
        import jax

        return not isinstance(tensor, jax.core.Tracer)
    return True


def _install_call_hook(host, hook):
    # An instance attribute shadows the class's `call`; bypasses Keras's
    # attribute tracking, which has nothing to track here.
    object.__setattr__(host, "call", hook)


def _remove_call_hook(host):
    if "call" in host.__dict__:
        object.__delattr__(host, "call")


def data_init(model: keras.Model, batch: Any) -> list[CenteredWeightNorm]:
    """Data-dependent initialization (Salimans & Kingma 2016, section 3).

    Runs `model(batch, training=False)` once, eagerly. At the first call of
    each `CenteredWeightNorm`/`WeightNormalization` layer with a scale, it
    computes that layer's pre-activation (the inner layer's output before
    its activation) on the layer's actual input, then rescales the scale
    `g` and sets the inner bias so that every output unit's pre-activation
    has mean 0 and variance 1 on this batch; the forward pass then goes on
    with the initialized layer, so later layers see already-initialized
    earlier ones.

    An explicit step, never done inside `call`: it works the same under a
    `tf.distribute` strategy (call it inside or outside the scope; the
    assignments reach every replica), under mixed precision (statistics in
    float64 from the compute-dtype output, variables stay float32) and on
    every backend. It needs eager execution (not inside `tf.function`).

    Details a user must know:

    - Layers that are left as they are: `BoundedWeightNorm` (its norm is
      fixed by design), wrappers with `scale=False`, and wrappers of
      recurrent layers (their kernels feed gates inside the recurrence;
      the paper's initialization is for feed-forward layers).
    - A `SeparableConv*`'s pointwise scale is the one rescaled (its
      depthwise scale is left as it is); a `DepthwiseConv*`'s output
      channel `c * multiplier + m` is the unit `(c, m)`.
    - Without a bias (`use_bias=False`), only the variance is set; the mean
      stays as it is.
    - A unit whose pre-activation is constant on the batch keeps its
      scale. A layer called more than once (shared) is initialized from its
      first call; directly inside `TimeDistributed`, from all time steps at
      once.
    - `training=False`: dropout is off and batch normalization layers use
      their moving statistics during the pass.
    - Under float16 compute, the means come out zero only up to the
      float16 rounding of the new bias (about 1e-3 times its size), and a
      following run sees the float16 rounding of every layer.

    Args:
        model: a Keras model (Sequential, functional or subclassed).
        batch: what `model(batch)` accepts: an array, or a list/dict of
            arrays for several inputs. Use a batch large enough for stable
            statistics (the paper: a single minibatch).

    Returns:
        The wrappers that were initialized, in the order they were.
    """
    targets = []
    for host, wrapper in _wrappers_with_hosts(model):
        kernel_name = _data_init_target(wrapper)
        if kernel_name is not None:
            targets.append((host, wrapper, kernel_name))
    done = []

    def make_hook(host, wrapper, kernel_name):
        original = type(host).call.__get__(host)

        def hook(*args, **kwargs):
            if not _is_concrete(keras.tree.flatten(args[0])[0]):
                return original(*args, **kwargs)  # a symbolic build pass: wait
            _remove_call_hook(host)  # later calls run normally
            with _linear_activation(wrapper.layer):
                pre_activation = host.call(*args, **kwargs)
            _rescale_to_unit_statistics(wrapper, kernel_name, pre_activation)
            done.append(wrapper)
            return host.call(*args, **kwargs)

        return hook

    try:
        for host, wrapper, kernel_name in targets:
            _install_call_hook(host, make_hook(host, wrapper, kernel_name))
        model(batch, training=False)
    finally:
        for host, _, _ in targets:
            _remove_call_hook(host)
    missed = [w.name for _, w, _ in targets if not any(w is d for d in done)]
    if missed:
        warnings.warn(
            f"data_init: layers {missed} were not called by the model on this batch "
            "and were left unchanged.",
            stacklevel=2,
        )
    return done


# --------------------------------------------------------------------------
# Cloning with a per-layer transformation
# --------------------------------------------------------------------------


def _fresh_copy(layer, name=None):
    config = copy.deepcopy(layer.get_config())
    if name is not None:
        config["name"] = name
    return type(layer).from_config(config)


def _config_without(layer, *keys):
    config = copy.deepcopy(layer.get_config())
    for key in keys:
        config.pop(key, None)
    return config


def _rebuild_container(layer, transform):
    """TimeDistributed/Bidirectional with their inner layers transformed, or
    None when `layer` is not one of them."""
    if isinstance(layer, keras.layers.TimeDistributed):
        return keras.layers.TimeDistributed(
            transform(layer.layer), **_config_without(layer, "layer")
        )
    if isinstance(layer, keras.layers.Bidirectional):
        return keras.layers.Bidirectional(
            transform(layer.forward_layer),
            backward_layer=transform(layer.backward_layer),
            **_config_without(layer, "layer", "backward_layer"),
        )
    return None


def _copy_by_name(old, new):
    """Weights of `new` taken from the weights of `old` with the same names
    (gamma, beta, moving_mean, moving_variance); unmatched ones keep their
    initial values."""
    by_name = {v.name: v for v in old.weights}
    for variable in new.weights:
        source = by_name.get(variable.name)
        if source is not None and tuple(source.shape) == tuple(variable.shape):
            # A NumPy copy: sharing the backend array would let JAX's
            # buffer donation in one model delete the other's weights.
            variable.assign(keras.ops.convert_to_numpy(source.value))


def _copy_weights(old, new):
    """After the cloned model is built: give `new` the weights of `old`."""
    if not isinstance(old, keras.layers.Layer):
        return  # an operation node such as `h + x`: nothing to copy
    if isinstance(old, KernelNormWrapper) and not isinstance(new, KernelNormWrapper):
        new.set_weights(old.plain_weights())  # strip
    elif isinstance(new, KernelNormWrapper) and not isinstance(old, KernelNormWrapper):
        new.layer.set_weights(old.get_weights())  # convert: V is the old kernel
        new.initialize_from_kernels()
    elif isinstance(old, keras.layers.Bidirectional):
        _copy_weights(old.forward_layer, new.forward_layer)
        _copy_weights(old.backward_layer, new.backward_layer)
    elif isinstance(old, keras.layers.TimeDistributed):
        _copy_weights(old.layer, new.layer)
    elif type(old) is not type(new):
        _copy_by_name(old, new)  # a replaced batch normalization
    else:
        new.set_weights(old.get_weights())


def _transform_model(model, transform, what):
    if not isinstance(model, keras.Model):
        raise ValueError(f"{what} takes a Keras model; received {model!r}.")
    if not model.built:
        raise ValueError(
            f"{what}: model '{model.name}' is not built yet; call it on data (or give "
            "it an Input) first."
        )
    pairs = []

    def clone_function(layer):
        new = transform(layer)
        pairs.append((layer, new))
        return new

    def call_function(layer, *args, **kwargs):
        # A functional graph replays each layer's recorded call arguments; a
        # plain layer replacing a wrapper (or the reverse) may not take
        # `mask`/`training`. Operations such as `h + x` are graph nodes that
        # are not layers and have neither attribute: leave their kwargs.
        if not getattr(layer, "_call_has_mask_arg", True):
            kwargs.pop("mask", None)
        if not getattr(layer, "_call_has_training_arg", True):
            kwargs.pop("training", None)
        return layer(*args, **kwargs)

    options = {}
    if not isinstance(model, keras.Sequential):
        options["call_function"] = call_function
    try:
        new_model = keras.models.clone_model(
            model, clone_function=clone_function, recursive=True, **options
        )
    except ValueError as error:
        if "only supported for Sequential" not in str(error):
            raise
        raise ValueError(
            f"{what} rebuilds Sequential and functional models (nested ones too); "
            f"model '{model.name}' is a subclassed {type(model).__name__}. Convert its "
            "layers yourself (wrapper.remove(), or wrap them when you build the model)."
        ) from None
    if not new_model.built:  # a Sequential model without an Input
        new_model.build_from_config(model.get_build_config())
    for old, new in pairs:
        _copy_weights(old, new)
    return new_model


# --------------------------------------------------------------------------
# strip
# --------------------------------------------------------------------------


def _strip_layer(layer):
    if isinstance(layer, KernelNormWrapper):
        return _fresh_copy(layer.layer)
    rebuilt = _rebuild_container(layer, _strip_layer)
    return rebuilt if rebuilt is not None else _fresh_copy(layer)


def strip(model: keras.Model) -> keras.Model:
    """A copy of `model` with every weight-norm wrapper replaced by its plain
    inner layer, holding the effective kernels `W`.

    The copy computes the same outputs with plain Keras layers only: what to
    export or serve (no `import tfnorms` needed to load it). Works on
    Sequential and functional models, nested models, and wrappers inside
    `TimeDistributed` and `Bidirectional`. Layer names are kept (each plain
    layer has its inner layer's name). The original model is unchanged.
    A subclassed model cannot be cloned: call `wrapper.remove()` on its
    wrappers instead. A custom layer that holds wrappers inside itself is
    copied as it is (from its config, with its weights).
    """
    return _transform_model(model, _strip_layer, "strip")


# --------------------------------------------------------------------------
# convert_model
# --------------------------------------------------------------------------

_WEIGHT_NORMS = {
    "wn": lambda layer: WeightNormalization(layer, name=f"{layer.name}_wn"),
    "cwn": lambda layer: CenteredWeightNorm(
        layer, scale_initializer=NORM_INITIALIZER, name=f"{layer.name}_cwn"
    ),
    "bwn": lambda layer: BoundedWeightNorm(layer, name=f"{layer.name}_bwn"),
}

_BATCH_NORM_PRESETS = {
    "l1": ("L1BatchNormalization", {}),
    "l2": ("LpBatchNormalization", {"p": 2}),
    "linf": ("LinfBatchNormalization", {}),
    "mean_only": ("MeanOnlyBatchNormalization", {}),
}


def _batch_norm_class(class_name):
    # Imported here: the batch norms live in their own modules, which import
    # nothing from this one.
    import tfnorms

    cls = getattr(tfnorms, class_name, None)
    if cls is None:  # pragma: no cover - a partial installation
        raise ValueError(
            f"convert_model(batch_norm=...) needs tfnorms.{class_name}, which this "
            "version of tfnorms does not have."
        )
    return cls


def _batch_norm_kwargs(cls, bn_config):
    """The Keras BatchNormalization config entries that `cls` accepts (the
    named arguments of every `__init__` along its class hierarchy, since the
    presets pass `**kwargs` on)."""
    accepted = {"name", "dtype", "trainable"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            for parameter in inspect.signature(init).parameters.values():
                if parameter.kind not in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
                    accepted.add(parameter.name)
        if klass is keras.layers.Layer:
            break
    accepted.discard("self")
    return {k: v for k, v in bn_config.items() if k in accepted}


def _norm_replacement_factory(argument, value, presets, replaced):
    """What replaces each normalization layer of class `replaced`: the
    preset's or dict's Lp class built from the layer's configuration, or the
    user's callable. `argument` names the convert_model argument in errors."""
    if value is None:
        return None
    if callable(value) and not isinstance(value, (str, dict)):
        return value
    default_class = presets["l2"][0]
    if isinstance(value, dict):
        cls, extra = _batch_norm_class(default_class), dict(value)
    elif isinstance(value, str) and value in presets:
        class_name, extra = presets[value]
        cls = _batch_norm_class(class_name)
    else:
        raise ValueError(
            f"`{argument}` must be None, one of {sorted(presets)}, a dict of "
            f"{default_class} arguments (e.g. {{'p': float('inf'), 'top_k': 10}}) or a "
            f"callable taking the {replaced} layer; received {value!r}."
        )

    def make(layer):
        kwargs = _batch_norm_kwargs(cls, layer.get_config())
        kwargs.update(extra)
        return cls(**kwargs)

    return make


_LAYER_NORM_PRESETS = {
    "l1": ("L1LayerNormalization", {}),
    "l2": ("LpLayerNormalization", {"p": 2}),
    "linf": ("LpLayerNormalization", {"p": "inf"}),
}


def _weight_norm_factory(weight_norm):
    if weight_norm is None:
        return None
    if isinstance(weight_norm, str) and weight_norm in _WEIGHT_NORMS:
        return _WEIGHT_NORMS[weight_norm]
    if callable(weight_norm) and not isinstance(weight_norm, str):

        def make(layer):
            wrapper = weight_norm(layer)
            if not isinstance(wrapper, KernelNormWrapper) or wrapper.layer is not layer:
                raise ValueError(
                    "The `weight_norm` callable must return a tfnorms wrapper around "
                    f"the layer it is given; for layer '{layer.name}' it returned "
                    f"{wrapper!r}."
                )
            return wrapper

        return make
    raise ValueError(
        f"`weight_norm` must be None, one of {sorted(_WEIGHT_NORMS)} or a callable "
        f"taking a layer and returning a tfnorms wrapper; received {weight_norm!r}."
    )


def _wrappable(layer):
    """A layer of the output-unit table whose kernels have a defined output
    unit (an EinsumDense with a 3-D kernel has none and is left as is)."""
    if not axes.is_supported(layer):
        return False
    try:
        axes.find_kernels(layer)
    except ValueError:
        return False
    return True


def convert_model(
    model: keras.Model,
    weight_norm: str | Callable[[keras.layers.Layer], KernelNormWrapper] | None = None,
    batch_norm: NormReplacement = None,
    layer_filter: Callable[[keras.layers.Layer], bool] | None = None,
    layer_norm: NormReplacement = None,
) -> keras.Model:
    """A copy of `model` with weight normalization and/or Lp batch and layer norms.

    The opposite of `strip`: every layer with a kernel from SPEC section 1's
    table (Dense, Conv*, Conv*Transpose, DepthwiseConv*, SeparableConv*,
    SimpleRNN/LSTM/GRU, also inside `TimeDistributed` and `Bidirectional`)
    is wrapped (except an EinsumDense whose kernel is not 2-D, which has
    no defined output unit), and every `keras.layers.BatchNormalization` and
    `keras.layers.LayerNormalization` (those exact classes) is replaced, with
    the trained weights carried over. The original
    model is unchanged; Sequential and functional models (nested ones too)
    are supported.

    Args:
        model: a built Keras model.
        weight_norm: `None` (leave kernels as they are), or
            - `"wn"`: `WeightNormalization` with `g = ||V||`: the copy
              computes exactly what the model computed.
            - `"cwn"`: `CenteredWeightNorm` with `scale_initializer="norm"`:
              each unit's kernel loses its mean (that is the method) and
              keeps its centered norm as `g`. The output changes unless the
              kernels were already centered.
            - `"bwn"`: `BoundedWeightNorm` with the default `rho`, the mean
              of the carried-over unit norms: every unit is rescaled to that
              norm, so the output changes.
            - a callable `layer -> wrapper` (for any other option, e.g.
              `lambda l: tfnorms.CenteredWeightNorm(l, scale=False)`); its
              kernel-dependent parameters are initialized from the carried
              kernel (`wrapper.initialize_from_kernels()`).
            Layers already wrapped are copied as they are. The wrappers are
            named `<layer name>_<wn|cwn|bwn>`; the inner layer keeps its name.
        batch_norm: `None`, or what replaces each `BatchNormalization`:
            `"l1"`, `"linf"` (`L1`/`LinfBatchNormalization`), `"l2"`
            (`LpBatchNormalization(p=2)`, numerically the same as Keras's),
            `"mean_only"` (`MeanOnlyBatchNormalization`), a dict of
            `LpBatchNormalization` arguments such as
            `{"p": float("inf"), "top_k": 10}`, or a callable taking the
            BatchNormalization layer. Its configuration (axis, momentum,
            epsilon, center, scale, initializers, `synchronized`, ...) and
            the variables of the same names (gamma, beta, moving_mean,
            moving_variance) are carried over; a replacement without some
            of them (mean-only has no gamma) drops those.
        layer_filter: optional `layer -> bool`, called with each supported
            layer and each BatchNormalization (and LayerNormalization) of the
            original model; `False`
            leaves that layer as it is (e.g. skip the final classifier, as
            the norm-matters ResNets do). Layers inside custom layers are
            not visited (the custom layer is copied as it is).

        layer_norm: `None`, or what replaces each `keras.layers.LayerNormalization`
            (that exact class): `"l1"` (`L1LayerNormalization`), `"l2"`
            (`LpLayerNormalization(p=2)`, numerically the same as Keras's),
            `"linf"` (`LpLayerNormalization(p="inf")`), a dict of
            `LpLayerNormalization` arguments such as `{"p": float("inf"),
            "top_k": 10}`, or a callable taking the LayerNormalization layer.
            Its configuration (axis, epsilon, center, scale, initializers,
            ...) and gamma and beta are carried over. Keras's deprecated
            `rms_scaling=True` divides by the centered variance without
            subtracting the mean; the replacement's `rms_scaling=True` is
            the uncentered (RMSNorm) form, so such layers change their outputs
            even with `"l2"`. `keras.layers.RMSNormalization` is left as it is.

    Returns:
        A new model (compiled with the same settings when `model` was
            compiled, as `keras.models.clone_model` does).
    """
    wrap = _weight_norm_factory(weight_norm)
    replace_bn = _norm_replacement_factory(
        "batch_norm", batch_norm, _BATCH_NORM_PRESETS, "BatchNormalization"
    )
    replace_ln = _norm_replacement_factory(
        "layer_norm", layer_norm, _LAYER_NORM_PRESETS, "LayerNormalization"
    )
    if layer_filter is not None and not callable(layer_filter):
        raise ValueError(f"`layer_filter` must be a callable or None; received {layer_filter!r}.")
    selected = layer_filter or (lambda layer: True)

    def transform(layer):
        if isinstance(layer, KernelNormWrapper):
            return _fresh_copy(layer)
        rebuilt = _rebuild_container(layer, transform)
        if rebuilt is not None:
            return rebuilt
        if wrap is not None and _wrappable(layer) and selected(layer):
            return wrap(_fresh_copy(layer))
        if (
            replace_bn is not None
            and type(layer) is keras.layers.BatchNormalization
            and selected(layer)
        ):
            return replace_bn(layer)
        if (
            replace_ln is not None
            and type(layer) is keras.layers.LayerNormalization
            and selected(layer)
        ):
            return replace_ln(layer)
        return _fresh_copy(layer)

    return _transform_model(model, transform, "convert_model")
