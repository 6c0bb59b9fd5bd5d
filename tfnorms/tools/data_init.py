"""`tfnorms.data_init`: the data-dependent initialization of every
weight-norm wrapper of a model, from one batch (docs/design.md, "Model
tools")."""

from __future__ import annotations

import contextlib
from typing import Any

import keras
from keras import ops

from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper, call_kind, input_mask
from tfnorms.layers.weight_norm import CenteredWeightNorm, without_activation
from tfnorms.tools.report import Report, require_model
from tfnorms.tools.walk import Visit, walk


def _targets(model, report):
    """(visit, host) for every wrapper to initialize; the others go to the
    report with the reason. The host is the layer to watch: the wrapper, or
    the outermost chain of `TimeDistributed` directly around it (which runs
    it traced, once per time step)."""
    targets = []
    for visit in walk(model, descend=lambda layer: not isinstance(layer, KernelNormWrapper)):
        wrapper = visit.layer
        if not isinstance(wrapper, KernelNormWrapper):
            continue
        if not isinstance(wrapper, CenteredWeightNorm):
            why = f"{type(wrapper).__name__} has a fixed norm by design, no scale to set"
            report.add_left(visit.path, wrapper, why, chosen=True)
            continue
        why = wrapper.data_init_unsupported()
        if why is not None:
            report.add_left(visit.path, wrapper, why, chosen=True)
            continue
        host = visit
        while host.parent and isinstance(host.parent.layer, keras.layers.TimeDistributed):
            host = host.parent
        targets.append((visit, host.layer))
    return targets


class _Hook:
    """Stands in for `host.call` until the host's first eager call: then it
    runs the host without the wrapper's activation, standardizes the
    wrapper's units, takes itself away and runs the host as usual. Calls
    that are traced (`tf.function`, `jax.jit`) pass through and are noted."""

    def __init__(self, visit: Visit, host: keras.layers.Layer, done: list):
        self.visit, self.host, self.done = visit, host, done
        self.traced = False
        self.original = type(host).call.__get__(host)

    def install(self):
        # An instance attribute shadows the class's `call`; set past Keras's
        # attribute tracking, which has nothing to track here.
        object.__setattr__(self.host, "call", self)

    def remove(self):
        if self.host.__dict__.get("call") is self:
            object.__delattr__(self.host, "call")

    def __call__(self, *args, **kwargs):
        kind = call_kind(args[0] if args else next(iter(kwargs.values())))
        if kind != "eager":
            self.traced = self.traced or kind == "traced"
            return self.original(*args, **kwargs)
        self.remove()
        wrapper = self.visit.layer
        with without_activation(wrapper.layer):
            pre_activation = self.original(*args, **kwargs)
        wrapper.standardize_units(pre_activation, input_mask(args[0] if args else None, kwargs))
        self.done.append(self.visit)
        return self.original(*args, **kwargs)


@contextlib.contextmanager
def _own_initialization_off(wrappers):
    """`WeightNormalization(data_init=True)` layers wait while this tool runs
    (it initializes them from the right inputs, even inside TimeDistributed);
    those it did not reach stay pending."""
    pending = [w for w in wrappers if getattr(w, "_data_init_done", True) is False]
    for wrapper in pending:
        wrapper._set_untracked("_data_init_done", True)
    try:
        yield
    finally:
        for wrapper in pending:
            if wrapper._initialized is None or not ops.convert_to_numpy(wrapper._initialized.value):
                wrapper._set_untracked("_data_init_done", False)


def data_init(model: keras.Model, batch: Any) -> Report:
    """Data-dependent initialization (Salimans & Kingma 2016, section 3).

    Runs `model(batch, training=False)` once, eagerly. At the first call of
    each `CenteredWeightNorm`/`WeightNormalization` layer with a scale, it
    computes that layer's pre-activation (the inner layer's output before
    its activation) on the layer's actual input, then rescales the scale
    `g` and sets the inner bias so that every output unit's pre-activation
    has mean 0 and variance 1 on this batch; the forward pass then goes on
    with the initialized layer, so later layers see already-initialized
    earlier ones. A `WeightNormalization(data_init=True)` is marked as
    initialized, so it does not initialize itself again.

    Finds every wrapper the model tracks: in Sequential, functional and
    nested models, inside `TimeDistributed` and `Bidirectional`, and inside
    custom layers and models that hold layers in attributes, lists or dicts.

    An explicit step, never done inside `call`: it works the same under a
    `tf.distribute` strategy (call it inside or outside the scope; the
    assignments reach every replica), under mixed precision (statistics in
    float32 from the compute-dtype output, variables stay float32) and on
    every backend. It needs eager execution (not inside `tf.function`).

    Details a user must know:

    - Layers that are left as they are (and named in the report):
      `BoundedWeightNorm` (its norm is fixed by design), wrappers with
      `scale=False`, and wrappers of recurrent layers (their kernels feed
      gates inside the recurrence; the paper's initialization is for
      feed-forward layers).
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
    - A wrapper that the model does not call on this batch, or calls only
      inside a traced function of its own (a custom layer whose `call` is a
      `tf.function`), is left as it is, and a `UserWarning` names it.
    - Under float16 compute, the means come out zero only up to the
      float16 rounding of the new bias (about 1e-3 times its size), and a
      following run sees the float16 rounding of every layer.

    Args:
        model: a Keras model (Sequential, functional or subclassed).
        batch: what `model(batch)` accepts: an array, or a list/dict of
            arrays for several inputs. Use a batch large enough for stable
            statistics (the paper: a single minibatch).

    Returns:
        A `Report`: `report.done` has one entry per initialized wrapper, in
        the order they were initialized (`report.layers` the wrappers),
        `report.left` each wrapper left as it was with the reason. It is
        also logged (logger `tfnorms`, INFO).
    """
    require_model(model, "data_init")
    report = Report("data_init")
    done: list[Visit] = []
    hooks = [_Hook(visit, host, done) for visit, host in _targets(model, report)]
    try:
        for hook in hooks:
            hook.install()
        with _own_initialization_off([hook.visit.layer for hook in hooks]):
            model(batch, training=False)
    finally:
        for hook in hooks:
            hook.remove()
    for visit in done:
        report.add_done(visit.path, visit.layer, "g and bias set to unit statistics")
    finished = {id(visit.layer) for visit in done}
    for hook in hooks:
        if id(hook.visit.layer) not in finished:
            why = (
                "called only inside a traced function (tf.function, jax.jit), where "
                "its inputs have no values"
                if hook.traced
                else "not called by the model on this batch (unused, or inside a "
                "tf.function traced before, which does not call it again)"
            )
            report.add_left(hook.visit.path, hook.visit.layer, why)
    report.emit()
    return report
