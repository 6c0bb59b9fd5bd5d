"""The one walk over a model that every model tool shares (docs/design.md,
"Model tools").

A layer's children are the layers it tracks: a functional or Sequential
model's graph layers, a wrapper's inner layer(s), and every layer that a
custom layer or model holds in an attribute, or in lists, tuples and dicts
of them, however deep. Keras's own bookkeeping attributes (those that a plain
`Layer`, `Model`, functional or Sequential model has too) are not children:
Keras's saving finds a model's layers the same way.

Each child comes with the steps that lead to it from its parent (an
attribute name, then list indices or dict keys), so that a tool can both name
it and put another layer in its place (`substitute`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import keras

Steps = tuple[Any, ...]


@dataclass(frozen=True)
class Child:
    """One place where `layer` is held: `steps` from its parent."""

    steps: Steps
    layer: keras.layers.Layer


@dataclass(frozen=True)
class Visit:
    """A layer met by `walk`, with its path from the root."""

    layer: keras.layers.Layer
    path: str
    parent: Visit | None


@functools.cache
def _bookkeeping() -> frozenset[str]:
    """Attribute names that Keras itself sets on layers and models."""
    inputs = keras.Input((1,))
    plain = [
        keras.layers.Layer(),
        keras.Model(),
        keras.Model(inputs, keras.layers.Identity()(inputs)),
        keras.Sequential([keras.layers.Identity()]),
    ]
    return frozenset(name for layer in plain for name, _ in _attributes(layer))


def _attributes(layer: keras.layers.Layer) -> list[tuple[str, Any]]:
    """`(name, value)` of every attribute of `layer`, in the order they were set.

    On Keras's torch backend layers are `torch.nn.Module`s, and torch keeps
    the attributes that hold a layer apart from the others (in `_modules`,
    in their own order). Each goes back among the others at the time Keras
    tracked its layer; one that holds a layer tracked before (a second name
    for it) just before the next such attribute with a layer of its own.
    """
    items = [(k, v) for k, v in vars(layer).items() if k != "_modules"]
    modules = list(vars(layer).get("_modules", {}).items())
    if not modules:
        return items
    tracked = {}  # id -> the index at which Keras first tracked the layer
    for index, held in enumerate(getattr(layer, "_layers", [])):
        tracked.setdefault(id(held), index)
    end = float(len(tracked))

    def first_tracked(value):
        indices = [tracked.get(id(c.layer), end) for c in _layers_in(value, ())]
        return min(indices, default=end)

    times = [first_tracked(value) for _, value in items]
    module_times, seen = [], set()
    for _, value in modules:
        module_times.append(None if id(value) in seen else tracked.get(id(value)))
        seen.add(id(value))
    following = end + 1.0
    for i in reversed(range(len(modules))):  # a second name: before the next one
        if module_times[i] is None:
            module_times[i] = following - 0.5
        following = module_times[i]
    order = sorted(
        [(time, 0, i) for i, time in enumerate(times)]
        + [(time, 1, i) for i, time in enumerate(module_times)]
    )
    return [(items, modules)[kind][i] for _, kind, i in order]


def _layers_in(value: Any, steps: Steps) -> Iterator[Child]:
    """The layers in an attribute value, however deeply nested in lists,
    tuples and dicts."""
    if isinstance(value, keras.layers.Layer):
        yield Child(steps, value)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _layers_in(item, (*steps, index))
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _layers_in(item, (*steps, key))


def is_graph_model(layer: keras.layers.Layer) -> bool:
    """A functional or Sequential model: its layers form a graph."""
    return isinstance(layer, keras.Sequential) or (
        isinstance(layer, keras.Model) and hasattr(layer, "operations")
    )


def children(layer: keras.layers.Layer) -> list[Child]:
    """Every place where `layer` holds a layer, in a fixed order: a graph
    model's layers first (steps `("layers", i)`), then attributes in the
    order they were set. A layer held in two places appears twice."""
    found = []
    if is_graph_model(layer):
        for index, child in enumerate(layer.layers):
            if not isinstance(child, keras.layers.InputLayer):
                found.append(Child(("layers", index), child))
    skip = _bookkeeping()
    for name, value in _attributes(layer):
        if name not in skip:
            found.extend(_layers_in(value, (name,)))
    return found


def describe(steps: Steps, layer: keras.layers.Layer) -> str:
    """`blocks[0]['conv']` for steps ('blocks', 0, 'conv'); a graph layer by
    its name."""
    if steps[0] == "layers" and len(steps) == 2 and isinstance(steps[1], int):
        return layer.name
    text = str(steps[0])
    for step in steps[1:]:
        text += f"[{step!r}]"
    return text


def walk(
    root: keras.layers.Layer,
    descend: Callable[[keras.layers.Layer], bool] = lambda layer: True,
) -> Iterator[Visit]:
    """Every layer under `root` (itself first), depth first, each once (a
    shared layer at its first place). `descend(layer)` False: its children
    are not visited."""
    seen = {id(root)}

    def visit(node: Visit) -> Iterator[Visit]:
        yield node
        if not descend(node.layer):
            return
        for child in children(node.layer):
            if id(child.layer) not in seen:
                seen.add(id(child.layer))
                path = f"{node.path}/{describe(child.steps, child.layer)}"
                yield from visit(Visit(child.layer, path, node))

    yield from visit(Visit(root, root.name, None))


def substitute(owner: keras.layers.Layer, steps: Steps, new: keras.layers.Layer) -> None:
    """Put `new` where `owner` holds a layer at `steps`, tracked as the old
    one was (its weights then count among `owner`'s, in the old one's place).

    Keras has no public way to stop tracking a sub-layer: setting an
    attribute tracks the new layer but keeps the old one, whose weights would
    stay in `owner.weights`. So the tracker's own `replace_tracked_value`
    swaps them first; the assignment that follows then finds `new` tracked.
    """
    old = _get(owner, steps)
    tracker = getattr(owner, "_tracker", None)
    if tracker is None or not hasattr(tracker, "replace_tracked_value"):
        raise RuntimeError(
            f"tfnorms cannot replace sub-layers of '{owner.name}' with this Keras "
            f"version ({keras.__version__}): layers no longer keep a `_tracker` with "
            "`replace_tracked_value`."
        )
    if tracker.is_in_store("layers", old):
        if tracker.is_in_store("layers", new):  # held elsewhere in `owner` too
            tracker.untrack(old)
        else:
            tracker.replace_tracked_value("layers", old, new)
    _set_value(owner, steps, new)


def _get(owner: Any, steps: Steps) -> Any:
    value = getattr(owner, steps[0])
    for step in steps[1:]:
        value = value[step]
    return value


def _set_value(owner: Any, steps: Steps, value: Any) -> None:
    if len(steps) == 1:
        setattr(owner, steps[0], value)
        return
    container = _get(owner, steps[:-1])
    try:
        container[steps[-1]] = value
    except TypeError:  # a tuple: rebuilt, and put back one level up
        items = list(container)
        items[steps[-1]] = value
        rebuilt = container._make(items) if hasattr(container, "_fields") else tuple(items)
        _set_value(owner, steps[:-1], rebuilt)
