"""What `convert_model`'s options put in place of a layer: the weight-norm
wrappers, and the Lp batch and layer norms that replace Keras's, as explicit
tables (docs/design.md, "Model tools")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from tfnorms import axes
from tfnorms.layers.batch_norm import (
    L1BatchNormalization,
    LinfBatchNormalization,
    LpBatchNormalization,
)
from tfnorms.layers.bounded_weight_norm import BoundedWeightNorm
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper
from tfnorms.layers.layer_norm import L1LayerNormalization, LpLayerNormalization
from tfnorms.layers.mean_only_batch_norm import MeanOnlyBatchNormalization
from tfnorms.layers.rms_norm import LpRMSNormalization
from tfnorms.layers.weight_norm import NORM_INITIALIZER, CenteredWeightNorm, WeightNormalization

WEIGHT_NORMS: dict[str, Callable[[keras.layers.Layer], KernelNormWrapper]] = {
    "wn": lambda layer: WeightNormalization(layer, name=f"{layer.name}_wn"),
    "cwn": lambda layer: CenteredWeightNorm(
        layer, scale_initializer=NORM_INITIALIZER, name=f"{layer.name}_cwn"
    ),
    "bwn": lambda layer: BoundedWeightNorm(layer, name=f"{layer.name}_bwn"),
}

_COMMON = ("name", "dtype", "trainable", "axis", "center", "beta_initializer")
_COMMON += ("beta_regularizer", "beta_constraint")
_GAMMA = ("scale", "gamma_initializer", "gamma_regularizer", "gamma_constraint")
# The entries of a Keras BatchNormalization / LayerNormalization config that
# each replacement takes (mean-only batch norm has no gamma and no epsilon).
_BATCH_NORM_KEYS = (
    *_COMMON,
    *_GAMMA,
    "momentum",
    "epsilon",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "synchronized",
    "renorm",
    "renorm_clipping",
    "renorm_momentum",
)
_MEAN_ONLY_KEYS = (*_COMMON, "momentum", "moving_mean_initializer", "synchronized")
_LAYER_NORM_KEYS = (*_COMMON, *_GAMMA, "epsilon", "rms_scaling")
_RMS_NORM_KEYS = ("name", "dtype", "trainable", "axis", "epsilon")
# Settings that change what a Keras layer computes, with their neutral
# values: a replacement that does not take one refuses a layer that sets it,
# rather than dropping it (mean-only batch norm has no Batch Renormalization).
_MUST_CARRY = {"renorm": False}

# preset -> (class, its fixed arguments, the Keras config entries it takes)
BATCH_NORMS: dict[str, tuple[type, dict[str, Any], tuple[str, ...]]] = {
    "l1": (L1BatchNormalization, {}, _BATCH_NORM_KEYS),
    "l2": (LpBatchNormalization, {"p": 2}, _BATCH_NORM_KEYS),
    "linf": (LinfBatchNormalization, {}, _BATCH_NORM_KEYS),
    "mean_only": (MeanOnlyBatchNormalization, {}, _MEAN_ONLY_KEYS),
}
LAYER_NORMS: dict[str, tuple[type, dict[str, Any], tuple[str, ...]]] = {
    "l1": (L1LayerNormalization, {}, _LAYER_NORM_KEYS),
    "l2": (LpLayerNormalization, {"p": 2}, _LAYER_NORM_KEYS),
    "linf": (LpLayerNormalization, {"p": "inf"}, _LAYER_NORM_KEYS),
}
RMS_NORMS: dict[str, tuple[type, dict[str, Any], tuple[str, ...]]] = {
    "l1": (LpRMSNormalization, {"p": 1}, _RMS_NORM_KEYS),
    "l2": (LpRMSNormalization, {"p": 2}, _RMS_NORM_KEYS),
    "linf": (LpRMSNormalization, {"p": "inf"}, _RMS_NORM_KEYS),
}
# The Keras classes each option replaces (those exact classes), each with its
# presets; a dict option takes the arguments of the "l2" preset's class, a
# callable replaces the first class only.
NORM_OPTIONS = {
    "batch_norm": ((keras.layers.BatchNormalization, BATCH_NORMS),),
    "layer_norm": (
        (keras.layers.LayerNormalization, LAYER_NORMS),
        (keras.layers.RMSNormalization, RMS_NORMS),
    ),
}


def norm_factories(argument: str, value: Any) -> dict[type, Callable[[keras.layers.Layer], Any]]:
    """Keras class -> what replaces each layer of it, for option `argument`."""
    factories = {}
    for index, (replaced, presets) in enumerate(NORM_OPTIONS[argument]):
        if callable(value) and not isinstance(value, (str, dict)) and index > 0:
            continue
        factory = norm_factory(argument, value, replaced, presets)
        if factory is not None:
            factories[replaced] = factory
    return factories


def norm_factory(argument, value, replaced, presets):
    """What replaces each `replaced` layer: the preset's or dict's class
    built from the layer's config, or the user's callable."""
    if value is None:
        return None
    if callable(value) and not isinstance(value, (str, dict)):
        return _checked_norm_callable(argument, value)
    if isinstance(value, dict):
        cls, _, keys = presets["l2"]
        fixed = dict(value)
    elif isinstance(value, str) and value in presets:
        cls, fixed, keys = presets[value]
    else:
        default = presets["l2"][0].__name__
        raise ValueError(
            f"`{argument}` must be None, one of {sorted(presets)}, a dict of {default} "
            f"arguments (e.g. {{'p': float('inf'), 'top_k': 10}}) or a callable taking "
            f"the {replaced.__name__} layer; received {value!r}."
        )

    def make(layer):
        config = layer.get_config()
        for key, neutral in _MUST_CARRY.items():
            if key not in keys and config.get(key, neutral) != neutral:
                raise ValueError(
                    f"convert_model({argument}={value!r}) cannot carry `{key}="
                    f"{config[key]!r}` of layer '{layer.name}' across: "
                    f"{cls.__name__} has no `{key}`. Choose another option for "
                    "this model, or leave the layer out with `layer_filter`."
                )
        kwargs = {key: config[key] for key in keys if key in config}
        kwargs.update(fixed)
        return cls(**kwargs)

    return make


def _checked_norm_callable(argument, make_norm):
    """The user's callable, refusing what cannot stand in for a normalization
    layer: a non-layer, the layer it was given (it would then sit in both
    models), or a layer whose output shape differs from the replaced one's."""

    def make(layer):
        new = make_norm(layer)
        if not isinstance(new, keras.layers.Layer) or new is layer:
            got = "the layer it was given" if new is layer else repr(new)
            raise ValueError(
                f"The `{argument}` callable must return a new Keras layer to put in "
                f"place of layer '{layer.name}'; it returned {got}. To keep a layer "
                "as it is, leave it out with `layer_filter`."
            )
        built_shape = (layer.get_build_config() or {}).get("input_shape")
        if built_shape is not None:
            _require_same_output_shape(argument, layer, new, tuple(built_shape))
        return new

    return make


def _require_same_output_shape(argument, layer, new, input_shape):
    expected = tuple(layer.compute_output_shape(input_shape))
    try:
        shape = tuple(new.compute_output_shape(input_shape))
    except Exception:  # a layer without a static shape rule is checked by the model's build
        return
    if shape != expected:
        raise ValueError(
            f"The `{argument}` callable returned {type(new).__name__} '{new.name}' for "
            f"layer '{layer.name}', whose output shape {shape} differs from the "
            f"layer's {expected} on its input shape {input_shape}; a normalization "
            "must keep the shape."
        )


def weight_norm_factory(weight_norm: Any) -> Callable[[keras.layers.Layer], Any] | None:
    if weight_norm is None:
        return None
    if isinstance(weight_norm, str) and weight_norm in WEIGHT_NORMS:
        return WEIGHT_NORMS[weight_norm]
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
        f"`weight_norm` must be None, one of {sorted(WEIGHT_NORMS)} or a callable "
        f"taking a layer and returning a tfnorms wrapper; received {weight_norm!r}."
    )


def unwrappable(layer: keras.layers.Layer) -> str | None:
    """Why a layer of the output-unit table cannot be wrapped (an
    EinsumDense whose kernel is not 2-D has no output unit), or None."""
    try:
        axes.find_kernels(layer)
    except ValueError as error:
        return str(error)
    return None
