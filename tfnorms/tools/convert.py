"""`tfnorms.strip` and `tfnorms.convert_model`: copies of a model with its
weight-norm wrappers taken out, or put in (docs/design.md, "Model tools")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import keras

from tfnorms import axes
from tfnorms._types import NormReplacement
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper
from tfnorms.tools.options import norm_factories, unwrappable, weight_norm_factory
from tfnorms.tools.rebuild import Rebuilder, build_like, rebuilt
from tfnorms.tools.report import Report, require_model


def _copy_model(model, replacement, report):
    require_model(model, report.tool)
    if not model.built:
        raise ValueError(
            f"tfnorms.{report.tool}: model '{model.name}' is not built yet; call it on data "
            "(or give it an Input) first."
        )
    new = Rebuilder(replacement, report).copy(model)
    if model.compiled and not new.compiled:  # clone_model compiles graph models
        new.compile_from_config(model.get_compile_config())
    report.emit(stacklevel=4)
    return new


def _finish(model, report, return_report):
    return (model, report) if return_report else model


# -------------------------------------------------------------------- strip
def strip(model: keras.Model, *, return_report: bool = False) -> Any:
    """A copy of `model` with every weight-norm wrapper replaced by its plain
    inner layer, holding the effective kernels `W`.

    The copy computes the same outputs with plain Keras layers: what to
    export or serve. It finds every wrapper the model tracks: in Sequential,
    functional and nested models, inside `TimeDistributed` and
    `Bidirectional`, and inside custom layers and subclassed models that
    hold layers in attributes, lists or dicts (however deep). Layer names
    are kept (each plain layer has its inner layer's name). The original
    model is unchanged.

    The copy has the class of `model`, except a functional subclass whose
    constructor does not take `(inputs, outputs)` (say, a keras-hub
    backbone), which comes back as a functional `keras.Model`: Keras can
    rebuild such a class only from its own constructor arguments. A custom
    layer is rebuilt from its config (`get_config`/`from_config`, so it
    needs one), with its wrappers replaced; its config does not describe
    the replacement, so save a stripped model with custom layers as weights
    (`save_weights`), or export it, rather than as a `.keras` file.

    Args:
        model: a built Keras model.
        return_report: also return the `Report` (one entry per wrapper
            stripped, with its path). It is logged either way (logger
            `tfnorms`, INFO).

    Returns:
        The new model, or `(model, report)`.

    Raises:
        ValueError: `model` is not a built Keras model, or a custom layer
            holding wrappers cannot be rebuilt from its config (the message
            names it and says why).
    """
    report = Report("strip")

    def replacement(layer, path):
        if not isinstance(layer, KernelNormWrapper):
            return None
        plain = layer.remove()
        report.add_done(path, layer, f"{type(layer).__name__} -> {type(plain).__name__}")
        return plain

    return _finish(_copy_model(model, replacement, report), report, return_report)


# ------------------------------------------------------------ convert_model
def convert_model(
    model: keras.Model,
    weight_norm: str | Callable[[keras.layers.Layer], KernelNormWrapper] | None = None,
    batch_norm: NormReplacement = None,
    layer_filter: Callable[[keras.layers.Layer], bool] | None = None,
    layer_norm: NormReplacement = None,
    *,
    return_report: bool = False,
) -> Any:
    """A copy of `model` with weight normalization and/or Lp batch and layer norms.

    The opposite of `strip`: every layer with a kernel of the output-unit
    table (`tfnorms.axes`: Dense, Conv*, Conv*Transpose, DepthwiseConv*,
    SeparableConv*, SimpleRNN/LSTM/GRU, 2-D EinsumDense) is wrapped, and
    every `keras.layers.BatchNormalization`, `keras.layers.LayerNormalization`
    and `keras.layers.RMSNormalization` (those exact classes) is replaced, with
    the trained weights carried over. It reaches every layer the model
    tracks: in Sequential, functional and nested models, inside
    `TimeDistributed` and `Bidirectional`, and inside custom layers and
    subclassed models that hold layers in attributes, lists or dicts
    (however deep). The original model is unchanged. What replaces a
    `trainable=False` layer has `trainable=False` too (a wrapper's new scale
    `g` included).

    The copy has the class of `model`, except a functional subclass whose
    constructor does not take `(inputs, outputs)` (say, a keras-hub
    backbone), which comes back as a functional `keras.Model` (a note in the
    report says so): Keras can rebuild such a class only from its own
    constructor arguments. A custom layer holding converted layers is
    rebuilt from its config (so it needs a `get_config`), then the converted
    layers take the place of its fresh ones; its config does not describe
    them, so keep such a model's weights with `save_weights` and load them
    into a model converted the same way (a `.keras` file would reload the
    original sub-layers).

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
              `lambda l: tfnorms.CenteredWeightNorm(l, scale=False)`); it
              gets a built copy of the layer with its weights, and the
              wrapper's kernel-dependent parameters are then initialized
              from that kernel (`wrapper.initialize_from_kernels()`).
            Layers already wrapped are copied as they are. The wrappers are
            named `<layer name>_<wn|cwn|bwn>`; the inner layer keeps its name.
            An EinsumDense whose kernel is not 2-D has no defined output
            unit and is left as it is (named in the report and a warning).
        batch_norm: `None`, or what replaces each `BatchNormalization`:
            `"l1"`, `"linf"` (`L1`/`LinfBatchNormalization`), `"l2"`
            (`LpBatchNormalization(p=2)`, numerically the same as Keras's),
            `"mean_only"` (`MeanOnlyBatchNormalization`), a dict of
            `LpBatchNormalization` arguments such as
            `{"p": float("inf"), "top_k": 10}`, or a callable taking the
            BatchNormalization layer and returning a new layer of the same
            output shape (anything else raises a `ValueError`). Its configuration (axis, momentum,
            epsilon, center, scale, initializers, `synchronized`, Batch
            Renormalization's `renorm*`) and the variables of the same names
            (gamma, beta, moving statistics, renorm statistics) are carried
            over; a replacement without some of them (mean-only has no gamma)
            drops those, except `renorm=True`, which mean-only cannot do: that
            raises a `ValueError` naming the layer.
        layer_filter: optional `layer -> bool`, called with each layer that
            an option would convert (wherever it sits in the model); `False`
            leaves that layer as it is (e.g. skip the final classifier, as
            the norm-matters ResNets do).
        layer_norm: `None`, or what replaces each `keras.layers.LayerNormalization`
            (that exact class): `"l1"` (`L1LayerNormalization`), `"l2"`
            (`LpLayerNormalization(p=2)`, numerically the same as Keras's),
            `"linf"` (`LpLayerNormalization(p="inf")`), a dict of
            `LpLayerNormalization` arguments such as `{"p": float("inf"),
            "top_k": 10}`, or a callable taking the LayerNormalization layer
            and returning a new layer of the same output shape.
            Its configuration (axis, epsilon, center, scale, initializers,
            ...) and gamma and beta are carried over. Keras's deprecated
            `rms_scaling=True` divides by the centered variance without
            subtracting the mean; the replacement's `rms_scaling=True` is
            the uncentered (RMSNorm) form, so such layers change their outputs
            even with `"l2"`. Each `keras.layers.RMSNormalization` becomes an
            `LpRMSNormalization` of the same p (`"l1"`, `"l2"`, `"linf"`, or
            the dict's arguments), with its axis, epsilon and `scale` weight;
            a callable replaces LayerNormalization layers only.
        return_report: also return the `Report`: one entry per converted
            layer (its path and what it became), the layers left as they
            were with the reason, and notes. It is logged either way (logger
            `tfnorms`, INFO); layers left for a reason other than
            `layer_filter` or an existing wrapper are also a `UserWarning`.

    Returns:
        The new model (compiled with the same settings when `model` was
        compiled), or `(model, report)`.
    """
    report = Report("convert_model")
    wrap = weight_norm_factory(weight_norm)
    norms = {
        **norm_factories("batch_norm", batch_norm),
        **norm_factories("layer_norm", layer_norm),
    }
    if layer_filter is not None and not callable(layer_filter):
        raise ValueError(f"`layer_filter` must be a callable or None; received {layer_filter!r}.")
    selected = layer_filter or (lambda layer: True)

    def replacement(layer, path):
        if isinstance(layer, KernelNormWrapper):
            if wrap is not None:
                why = f"already in {type(layer).__name__}: copied as it is"
                report.add_left(path, layer, why, chosen=True)
            return None
        if wrap is not None and axes.is_supported(layer):
            return _wrapped(layer, path, wrap, selected, report)
        replace = norms.get(type(layer))
        if replace is not None:
            return _replaced_norm(layer, path, replace, selected, report)
        for keras_class, factory in norms.items():
            if factory is not None and isinstance(layer, keras_class):
                why = (
                    f"a subclass of {keras_class.__name__} ({type(layer).__name__}): only "
                    f"keras.layers.{keras_class.__name__} itself is replaced"
                )
                report.add_left(path, layer, why)
        return None

    return _finish(_copy_model(model, replacement, report), report, return_report)


def _wrapped(layer, path, wrap, selected, report):
    why = unwrappable(layer)
    if why is not None:
        report.add_left(path, layer, why)
        return None
    if not selected(layer):
        report.add_left(path, layer, "layer_filter returned False", chosen=True)
        return None
    wrapper = wrap(rebuilt(layer, path))
    build_like(wrapper, layer)
    wrapper.initialize_from_kernels()
    if not layer.trainable:  # a frozen layer stays frozen: its new `g` too
        wrapper.trainable = False
    report.add_done(path, layer, f"wrapped in {type(wrapper).__name__}")
    return wrapper


def _replaced_norm(layer, path, replace, selected, report):
    if not selected(layer):
        report.add_left(path, layer, "layer_filter returned False", chosen=True)
        return None
    new = replace(layer)
    if not layer.trainable:  # as the presets carry it; a callable may not
        new.trainable = False
    build_like(new, layer)
    # The variables of the same names (gamma, beta, moving statistics); a
    # NumPy copy, since JAX's buffer donation in one model would delete the
    # other's arrays if they shared them.
    by_name = {v.name: v for v in layer.weights}
    for variable in new.weights:
        source = by_name.get(variable.name)
        if source is not None and tuple(source.shape) == tuple(variable.shape):
            variable.assign(keras.ops.convert_to_numpy(source.value))
    report.add_done(path, layer, f"replaced by {type(new).__name__}")
    return new
