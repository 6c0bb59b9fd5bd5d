"""The one model walk of the model tools: it finds every layer a layer holds
(attributes, lists, dicts, tuples, however nested; a graph model's layers),
never Keras's own bookkeeping, each layer once with its path; and
`substitute` swaps a held layer so that the owner's weights follow."""

import keras
import numpy as np

from tfnorms.tools.walk import children, substitute, walk

L = keras.layers


class Holder(L.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.single = L.Dense(2, name="single")
        self.in_list = [L.Dense(2, name="l0"), [L.Dense(2, name="l1_0")]]
        self.in_dict = {"a": L.Dense(2, name="da"), "b": {"c": L.Dense(2, name="dbc")}}
        self.in_tuple = (L.ReLU(name="t0"), L.Dense(2, name="t1"))
        self.shared = self.single  # the same layer twice
        self.not_a_layer = [1, "two", {"three": 3.0}]

    def call(self, x):
        h = self.single(x)
        for layer in (self.in_list[0], self.in_list[1][0], self.in_dict["a"]):
            h = layer(h)
        h = self.in_dict["b"]["c"](h)
        return self.in_tuple[1](self.in_tuple[0](h))


def built_holder():
    holder = Holder(name="holder")
    holder(np.zeros((1, 3), "float32"))
    return holder


def test_children_are_every_held_layer_with_its_steps():
    holder = built_holder()
    found = [(c.steps, c.layer.name) for c in children(holder)]
    assert found == [
        (("single",), "single"),
        (("in_list", 0), "l0"),
        (("in_list", 1, 0), "l1_0"),
        (("in_dict", "a"), "da"),
        (("in_dict", "b", "c"), "dbc"),
        (("in_tuple", 0), "t0"),
        (("in_tuple", 1), "t1"),
        (("shared",), "single"),
    ]


def test_walk_visits_each_layer_once_with_a_path():
    inputs = keras.Input((3,))
    model = keras.Model(inputs, Holder(name="holder")(inputs), name="model")
    paths = [visit.path for visit in walk(model)]
    assert paths == [
        "model",
        "model/holder",
        "model/holder/single",
        "model/holder/in_list[0]",
        "model/holder/in_list[1][0]",
        "model/holder/in_dict['a']",
        "model/holder/in_dict['b']['c']",
        "model/holder/in_tuple[0]",
        "model/holder/in_tuple[1]",
    ]
    # Sequential and wrappers: graph layers by name, the wrapped layer as `layer`.
    seq = keras.Sequential([L.TimeDistributed(L.Dense(2, name="d"), name="td")], name="seq")
    seq.build((None, 4, 3))
    assert [v.path for v in walk(seq)] == ["seq", "seq/td", "seq/td/layer"]
    # `descend` stops at a layer.
    stopped = walk(model, descend=lambda layer: layer.name != "holder")
    assert [v.path for v in stopped] == ["model", "model/holder"]


def test_substitute_swaps_a_layer_and_its_weights_everywhere_it_is_held():
    holder = built_holder()
    before = len(holder.weights)
    for steps in [("in_list", 1, 0), ("in_dict", "b", "c"), ("in_tuple", 1)]:
        old = getattr(holder, steps[0])
        for step in steps[1:]:
            old = old[step]
        new = L.Dense(2, use_bias=False, name=f"new_{steps[0]}")
        new.build(old.kernel.shape[:1])
        substitute(holder, steps, new)
        assert all(w is not old.kernel for w in holder.weights)
        assert any(w is new.kernel for w in holder.weights)
    assert holder.in_list[1][0].name == "new_in_list"
    assert holder.in_dict["b"]["c"].name == "new_in_dict"
    assert holder.in_tuple[1].name == "new_in_tuple"
    assert len(holder.weights) == before - 3  # three biases fewer
    # A layer held twice: replaced at both places, its weights once.
    single = L.Dense(2, name="new_single")
    single.build((3,))
    substitute(holder, ("single",), single)
    substitute(holder, ("shared",), single)
    assert holder.single is holder.shared is single
    assert len(holder.weights) == before - 3
    out = holder(np.ones((2, 3), "float32"))  # the holder calls the new layers
    assert tuple(out.shape) == (2, 2)
