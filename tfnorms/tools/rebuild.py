"""Copying a model with some of its layers replaced: what `strip` and
`convert_model` share (docs/design.md, "Model tools").

`Rebuilder(replacement).copy(model)` gives a new model, the original left
untouched. Every layer is copied with its weights, built from the shapes the
original layer was built with; `replacement(layer, path)` returns what takes
a layer's place (built, with its weights), or None to copy it as it is:

- a functional or Sequential model: `keras.models.clone_model` with this
  copy as its `clone_function`; Keras keeps the class of a functional
  subclass only when its constructor takes `(inputs, outputs)`;
- `TimeDistributed` and `Bidirectional`: rebuilt around their copied
  layers;
- a custom layer or subclassed model (layers in attributes, lists, dicts)
  with a replacement somewhere inside: a fresh instance from its config
  (same class), each sub-layer with a replacement under it swapped for its
  copy, the others kept (given the original's weights) where laid out like
  the original's, else swapped for their copies too, and its own weights
  copied; so its config need not describe its current sub-layers (as after
  an earlier conversion);
- any other layer, and a custom layer with nothing replaced inside whose
  config describes it: rebuilt from its config, with the original's weights.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import keras

from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper
from tfnorms.tools.report import Report
from tfnorms.tools.walk import Child, Steps, children, describe, is_graph_model, substitute

Replacement = Callable[[keras.layers.Layer, str], "keras.layers.Layer | None"]


class CannotRebuild(ValueError):
    """A layer that cannot be copied; the message says which and why."""


def build_like(new: keras.layers.Layer, old: keras.layers.Layer) -> None:
    """Build `new` (and the sub-layers it holds) from the shapes `old` (and
    its sub-layers at the same places) were built with."""
    if old.built and not new.built:
        config = old.get_build_config()
        if config:
            new.build_from_config(config)
        # A model's `build_from_config` may run `call` symbolically, which
        # builds everything but leaves the model's own flag down.
        new.built = True
    _build_children_like(new, old)  # those that the layer's own build left unbuilt


def _build_children_like(new, old):
    held, fresh = children(old), children(new)
    places = _places(held, fresh) or {child.steps: child for child in fresh}
    for child in held:
        counterpart = places.get(child.steps)
        if counterpart is not None and not counterpart.layer.built and child.layer.built:
            build_like(counterpart.layer, child.layer)


def _places(held: list[Child], fresh: list[Child]) -> dict[Steps, Child] | None:
    """The place in a fresh instance matching each of `held` (the original's
    children), by its steps; None when they are laid out otherwise.

    Places in only one of them pair up in order where they differ only in
    steps that are the fresh layer's own name: keras-tcn sets each sub-layer
    as an attribute named after it, and an unnamed layer's automatic name
    differs in every instance (`batch_normalization_7`, not
    `batch_normalization`). Their classes may differ: an earlier conversion
    put its layers where the config makes Keras's.
    """
    by_steps = {child.steps: child for child in fresh}
    held_steps = {child.steps for child in held}
    old_only = [child for child in held if child.steps not in by_steps]
    new_only = [child for child in fresh if child.steps not in held_steps]
    if len(old_only) != len(new_only) or not all(map(_renamed, old_only, new_only)):
        return None
    by_steps.update((a.steps, b) for a, b in zip(old_only, new_only, strict=True))
    return {child.steps: by_steps[child.steps] for child in held}


def _renamed(old: Child, new: Child) -> bool:
    """Whether the places differ only in steps that are `new`'s layer name."""
    return len(old.steps) == len(new.steps) and all(
        a == b or (isinstance(a, str) and b == new.layer.name)
        for a, b in zip(old.steps, new.steps, strict=True)
    )


def _plain_copy(value):
    """`value` with its lists, tuples, dicts and sets copied, however deep,
    as plain ones (a named tuple keeps its class); everything else shared.

    A config may hold a layer's tracked attribute as it is (a keras-tcn
    `TCN` returns its `dilations`): Keras's `TrackedList` refers to the
    layer's tracker, so a deep copy would copy (pickle) every sub-layer.
    """
    if isinstance(value, dict):
        return {key: _plain_copy(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain_copy(item) for item in value]
    if isinstance(value, set):
        return {_plain_copy(item) for item in value}
    if isinstance(value, tuple):
        items = [_plain_copy(item) for item in value]
        return type(value)._make(items) if hasattr(value, "_fields") else tuple(items)
    return value


def fresh_instance(layer: keras.layers.Layer, path: str) -> keras.layers.Layer:
    """A new, unbuilt layer of the same class from `layer`'s config."""
    try:
        # A copy: `from_config` may change the config it is given.
        return type(layer).from_config(_plain_copy(layer.get_config()))
    except Exception as error:
        raise CannotRebuild(
            f"{path} ({type(layer).__name__}) cannot be rebuilt from its config: "
            f"{type(layer).__name__}.from_config(layer.get_config()) raised {error!r}. "
            "Give the class a get_config() that returns its constructor arguments "
            "(Keras needs it to save the model too)."
        ) from error


def rebuilt(layer: keras.layers.Layer, path: str) -> keras.layers.Layer:
    """A copy of `layer` from its config, built, with its weights; raises
    `CannotRebuild` when the config does not give the same sub-layers and
    weights."""
    new = fresh_instance(layer, path)
    build_like(new, layer)
    # After a conversion the config may still name the layers it replaced,
    # of the same weights (BatchNormalization for L1BatchNormalization).
    pairs = _counterparts(layer, new)
    if pairs is None:
        raise CannotRebuild(
            f"{path} ({type(layer).__name__}) rebuilt from its config does not hold "
            "the original's sub-layers."
        )
    old_weights = layer.get_weights()
    try:
        new.set_weights(old_weights)
    except ValueError as error:
        raise CannotRebuild(
            f"{path} ({type(layer).__name__}) rebuilt from its config does not have "
            f"the original's weights ({error})."
        ) from error
    # A config need not hold the flag (Sequential's does not).
    _copy_trainable(pairs)
    return new


def own_weights(layer: keras.layers.Layer) -> list[keras.Variable]:
    """The weights a layer holds itself, not through its sub-layers."""
    nested = {id(w) for child in children(layer) for w in child.layer.weights}
    return [w for w in layer.weights if id(w) not in nested]


def _config_without(layer, *keys):
    config = _plain_copy(layer.get_config())
    for key in keys:
        config.pop(key, None)
    return config


def _accepts(layer, name):
    try:
        parameters = inspect.signature(layer.call).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.name == name or p.kind is p.VAR_KEYWORD for p in parameters)


def _call_function(layer, *args, **kwargs):
    # A functional graph replays each layer's recorded call arguments; a
    # plain layer replacing a wrapper (or the reverse) may not take them.
    for name in ("mask", "training"):
        if name in kwargs and not _accepts(layer, name):
            kwargs.pop(name)
    return layer(*args, **kwargs)


class Rebuilder:
    """Copies models with `replacement` applied to every layer they track."""

    def __init__(self, replacement: Replacement, report: Report):
        self.replacement = replacement
        self.report = report
        self._copies: dict[int, keras.layers.Layer] = {}
        self._replacements: dict[int, keras.layers.Layer | None] = {}
        self._changes: dict[int, bool] = {}
        self._paths: dict[int, str] = {}
        self._adopted: set[int] = set()  # fresh sub-layers kept: each copies one layer

    # ---------------------------------------------------- what changes
    def _replaced(self, layer, path):
        if id(layer) not in self._replacements:
            self._replacements[id(layer)] = self.replacement(layer, path)
        return self._replacements[id(layer)]

    def changes(self, layer: keras.layers.Layer, path: str) -> bool:
        """Whether `layer` or a layer under it is replaced."""
        key = id(layer)
        if key not in self._changes:
            self._changes[key] = False  # a cycle back here changes nothing
            self._paths.setdefault(key, path)
            found = self._replaced(layer, path) is not None
            # A replaced layer's sub-layers go with it; a wrapper's inner
            # layer is the wrapper's own.
            if not found and not isinstance(layer, KernelNormWrapper):
                for child in children(layer):
                    child_path = f"{path}/{describe(child.steps, child.layer)}"
                    found = self.changes(child.layer, child_path) or found
            self._changes[key] = found
        return self._changes[key]

    # --------------------------------------------------------- copying
    def copy(self, layer: keras.layers.Layer, path: str | None = None) -> keras.layers.Layer:
        """The copy of `layer` (one per layer: shared layers stay shared)."""
        if not isinstance(layer, keras.layers.Layer):  # a graph operation, such as `h + x`
            return type(layer).from_config(layer.get_config())
        key = id(layer)
        if key not in self._copies:
            path = self._paths.get(key) or path or layer.name
            self.changes(layer, path)
            self._copies[key] = self._make_copy(layer, path)
        return self._copies[key]

    def _make_copy(self, layer, path):
        replaced = self._replaced(layer, path)
        if replaced is not None:
            return replaced
        if not self.changes(layer, path):
            try:  # when its config describes it, the copy keeps every detail
                return rebuilt(layer, path)
            except CannotRebuild:
                if not children(layer):
                    raise
        if is_graph_model(layer):
            return self._clone_graph(layer, path)
        if isinstance(layer, keras.layers.TimeDistributed):
            inner = self.copy(layer.layer)
            new = keras.layers.TimeDistributed(inner, **_config_without(layer, "layer"))
            build_like(new, layer)
            return new
        if isinstance(layer, keras.layers.Bidirectional):
            return self._rebuild_bidirectional(layer)
        return self._rebuild_custom(layer, path)

    def _clone_graph(self, model, path):
        options = {} if isinstance(model, keras.Sequential) else {"call_function": _call_function}
        new = keras.models.clone_model(model, clone_function=self.copy, **options)
        if not new.built:  # a Sequential model without an Input
            new.build_from_config(model.get_build_config())
        if type(new) is not type(model):
            self.report.notes.append(
                f"{path} ({type(model).__name__}) came back as a {type(new).__name__}: "
                f"Keras rebuilds a {type(model).__name__} only from its constructor "
                "arguments, which cannot describe the replaced layers."
            )
        return new

    def _rebuild_bidirectional(self, layer):
        forward, backward = self.copy(layer.forward_layer), self.copy(layer.backward_layer)
        new = keras.layers.Bidirectional(
            forward,
            backward_layer=backward,
            **_config_without(layer, "layer", "backward_layer"),
        )
        build_like(new, layer)
        # Bidirectional makes its forward layer anew from `forward`'s config.
        new.forward_layer.set_weights(forward.get_weights())
        return new

    def _rebuild_custom(self, layer, path):
        """A fresh instance from the config, each sub-layer with a
        replacement under it swapped for its copy, the others kept (see
        `_sub_layer_copy`), and the layer's own weights copied."""
        new = fresh_instance(layer, path)
        build_like(new, layer)
        held, fresh = children(layer), children(new)
        places = _places(held, fresh)
        if places is None:
            missing = sorted({str(c.steps) for c in held} ^ {str(c.steps) for c in fresh})
            raise CannotRebuild(
                f"{path} ({type(layer).__name__}) rebuilt from its config holds its "
                f"sub-layers at other places; differing: {', '.join(missing)}."
            )
        differs = False
        for child in held:
            child_path = f"{path}/{describe(child.steps, child.layer)}"
            place = places[child.steps]
            new_child = self._sub_layer_copy(child.layer, place.layer, child_path)
            differs = differs or type(new_child) is not type(place.layer)
            if new_child is not place.layer:
                substitute(new, place.steps, new_child)
        _copy_own_weights(layer, new, path)
        if differs:
            self.report.notes.append(
                f"{path} ({type(layer).__name__}): its get_config() does not describe the "
                "replaced sub-layers, so a .keras file of the result would reload the "
                "original ones; keep the weights with model.save_weights() and load them "
                "into a model converted the same way."
            )
        return new

    def _sub_layer_copy(self, old, counterpart, path):
        """The copy of `old`, held by a custom layer being rebuilt: the
        fresh instance's own sub-layer at its place (`counterpart`, given
        `old`'s weights) when nothing under `old` changes and `counterpart`
        is laid out like it. The fresh layer made it as it made the original
        one; a rebuild from its config could not always (Keras refuses a
        `Lambda` of a Python lambda) or would differ (a lambda that reads
        the layer holding it)."""
        key = id(old)
        if key not in self._copies and id(counterpart) not in self._adopted:
            if not self.changes(old, path) and _take_weights(old, counterpart):
                self._copies[key] = counterpart
                self._adopted.add(id(counterpart))
        return self.copy(old, path)


def _counterparts(old, new):
    """`(layer under old, layer under new)` at each matching place (see
    `_places`), a layer before its sub-layers; None when they hold other
    classes or places."""
    held = children(old)
    places = _places(held, children(new))
    if type(old) is not type(new) or places is None:
        return None
    pairs = [(old, new)]
    for child in held:
        below = _counterparts(child.layer, places[child.steps].layer)
        if below is None:
            return None
        pairs += below
    return pairs


def _take_weights(old, new):
    """Give `new` the weights and `trainable` flags of `old` when it is laid
    out like it; whether it was."""
    pairs = _counterparts(old, new)
    shapes = [tuple(w.shape) for w in old.weights]
    if pairs is None or shapes != [tuple(w.shape) for w in new.weights]:
        return False
    new.set_weights(old.get_weights())
    _copy_trainable(pairs)
    return True


def _copy_trainable(pairs):
    """Give each layer of `pairs` (from `_counterparts`) its counterpart's
    `trainable` flag."""
    for source, target in pairs:  # a layer's flag sets its sub-layers' first
        if target.trainable != source.trainable:
            target.trainable = source.trainable


def _copy_own_weights(old, new, path):
    sources, targets = own_weights(old), own_weights(new)
    shapes = [tuple(v.shape) for v in sources]
    if shapes != [tuple(v.shape) for v in targets]:
        raise CannotRebuild(
            f"{path} ({type(old).__name__}) rebuilt from its config has weights of its "
            f"own of shapes {[tuple(v.shape) for v in targets]}, the original {shapes}."
        )
    for source, target in zip(sources, targets, strict=True):
        target.assign(keras.ops.convert_to_numpy(source.value))
