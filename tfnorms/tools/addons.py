"""Load weights trained with `tensorflow_addons.layers.WeightNormalization`
into the same architecture built with `tfnorms.WeightNormalization`.

tensorflow-addons stores, per wrapped layer, a scale `g`, the direction `v`
(the inner layer's own kernel variable), the inner layer's other weights and
an `initialized` flag (plus, with `data_init=True`, a copy of the inner layer
used only for initialization). Its effective kernel is

    W = g * v / sqrt(max(sum(v**2), 1e-12)),   summed over every axis but the last,

which is not always our parameterization: tfnorms normalizes a
Conv*Transpose kernel `(..., out, in)` per output channel (axis -2) where
tensorflow-addons normalizes it per input channel (axis -1), and normalizes
both kernels of an RNN where tensorflow-addons normalizes one. So the loader
never copies `g` and `v` as they are: it computes every layer's effective
weights, then sets our direction `V = W` and our scale `g` to our per-unit norm
of `W` (epsilon included), so that our effective kernel is `W` again.
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass

import keras
import numpy as np

from tfnorms import axes
from tfnorms.layers.kernel_norm_wrapper import KernelNormWrapper
from tfnorms.layers.weight_norm import CenteredWeightNorm
from tfnorms.tools.report import require_model

# tf.nn.l2_normalize's floor on the squared norm, as tensorflow-addons uses it.
_ADDONS_EPSILON = 1e-12
# tensorflow-addons keeps a clone of the inner layer for its data-dependent
# initialization; its weights are a stale copy, never used after that.
_CLONE_MARKERS = ("data_dep_init", "_naked_clone_layer")
# Keras 2 names a DepthwiseConv*'s kernel "depthwise_kernel", Keras 3 "kernel".
_KERAS2_ALIASES = {"depthwise_kernel": "kernel"}
_CHECKPOINT_KEY = re.compile(r"^(.*?)layer_with_weights-(\d+)/(.+)/\.ATTRIBUTES/VARIABLE_VALUE$")


@dataclass
class _SavedLayer:
    """One layer with weights as the file holds it, reduced to its effective
    (plain) weights."""

    name: str  # the h5 group, or the checkpoint's "layer_with_weights-N"
    weights: dict[str, np.ndarray]  # short variable name -> value, file order
    normalized: str | None = None  # the kernel tensorflow-addons normalized
    ordered: bool = False  # whether `weights` is in the layer's own order

    def describe(self) -> str:
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in self.weights.items())
        kind = "tensorflow-addons WeightNormalization" if self.normalized else "plain layer"
        return f"'{self.name}' ({kind}: {shapes})"


def _addons_kernel(g, v):
    """tensorflow-addons' effective kernel: `v` normalized over every axis but
    the last, times `g`, in float64."""
    g = np.asarray(g, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    if g.shape != (v.shape[-1],):
        raise ValueError(
            f"a tensorflow-addons scale g of shape {g.shape} does not match its kernel "
            f"of shape {v.shape} (expected g of shape ({v.shape[-1]},))."
        )
    squared = np.sum(np.square(v), axis=tuple(range(v.ndim - 1)), keepdims=True)
    return v / np.sqrt(np.maximum(squared, _ADDONS_EPSILON)) * g


def _short_name(path):
    """'weight_normalization/lstm_cell/kernel:0' -> 'kernel'."""
    return path.split("/")[-1].split(":")[0]


def _unique(layer_name, names, path):
    if len(set(names)) != len(names):
        raise ValueError(
            f"Layer '{layer_name}' in {path} holds several weights of the same name "
            f"({names}); load_addons_weights matches weights by name and cannot tell "
            "them apart (nested layers such as Bidirectional are not supported)."
        )


def _finish_wrapper(name, entries, v_name, path):
    """entries: short name -> value, with 'g', 'initialized' and the kernel
    tensorflow-addons normalized (`v_name`) among them."""
    g = entries.pop("g")
    flag = entries.pop("initialized", None)
    entries[v_name] = _addons_kernel(g, entries[v_name])
    if flag is not None and not bool(np.asarray(flag)):
        warnings.warn(
            f"Layer '{name}' in {path} was never called under tensorflow-addons (its "
            "`initialized` flag is False): its g is the untrained initial value, not "
            "the one tensorflow-addons would have computed on its first call.",
            stacklevel=5,  # the caller of load_addons_weights
        )
    return _SavedLayer(name, entries, normalized=v_name)


# --------------------------------------------------------------------------
# Reading the two formats
# --------------------------------------------------------------------------


def _read_h5(path):
    import h5py  # a dependency of Keras 3 itself

    with h5py.File(path, "r") as f:
        # A whole model saved by Keras 2 keeps its weights in "model_weights".
        group = f["model_weights"] if "model_weights" in f else f
        if "layer_names" not in group.attrs:
            raise ValueError(
                f"{path} is an HDF5 file but not a Keras 2 weights file (no "
                "'layer_names' attribute); save it with `model.save_weights('x.h5')` "
                "under TensorFlow 2.15 or earlier."
            )
        layers = []
        for raw in group.attrs["layer_names"]:
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            names = [
                w.decode() if isinstance(w, bytes) else str(w)
                for w in group[name].attrs["weight_names"]
            ]
            names = [w for w in names if not any(m in w.split("/") for m in _CLONE_MARKERS)]
            if not names:
                continue
            short = [_short_name(w) for w in names]
            _unique(name, short, path)
            entries = {s: np.asarray(group[name][w]) for s, w in zip(short, names, strict=True)}
            if "g" in entries:
                # tensorflow-addons tracks `v` right after `g`, so it is listed
                # second: that tells which kernel it normalized (the recurrent
                # kernel of an RNN in tfa 0.23) without knowing its version.
                after = short.index("g") + 1
                v_name = short[after] if after < len(short) else "(nothing)"
                if not v_name.endswith("kernel"):
                    raise ValueError(
                        f"Layer '{name}' in {path} has a scale g but its next weight is "
                        f"'{v_name}', not a kernel: not a tensorflow-addons "
                        "WeightNormalization layout this loader knows."
                    )
                layers.append(_finish_wrapper(name, entries, v_name, path))
            else:
                layers.append(_SavedLayer(name, entries, ordered=True))
        return layers


def _checkpoint_reader(path):
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f"{path} is a TensorFlow checkpoint; reading it needs the `tensorflow` "
            "package (any Keras backend can then load the weights). Without it, save "
            "the weights as .h5 under tensorflow-addons instead."
        ) from error
    return tf.train.load_checkpoint(path)


def _without_time_distributed(keys):
    """Keras 2's TimeDistributed holds no variable and tracks its inner layer
    as `layer`, so TimeDistributed(X) stores X's keys under 'layer/': strip
    that while every key has it. tensorflow-addons' WeightNormalization also
    keeps its inner layer under 'layer/', but its g and v sit at its top
    level, so its own prefix is never stripped."""
    while keys and all(rest.startswith("layer/") for rest in keys):
        keys = {rest[len("layer/") :]: key for rest, key in keys.items()}
    return keys


def _read_checkpoint(path, object_path):
    reader = _checkpoint_reader(path)
    groups: dict[str, dict[int, dict[str, str]]] = {}
    for key in reader.get_variable_to_shape_map():
        if ".OPTIMIZER_SLOT" in key:
            continue
        match = _CHECKPOINT_KEY.match(key)
        if match is None:
            continue
        prefix, index, rest = match.groups()
        groups.setdefault(prefix.rstrip("/"), {}).setdefault(int(index), {})[rest] = key
    if not groups:
        raise ValueError(f"{path} holds no Keras layer weights ('layer_with_weights-N/...').")
    if object_path is None:
        if len(groups) > 1:
            raise ValueError(
                f"{path} holds the weights of several models, at "
                f"{sorted(p or '(root)' for p in groups)}; pass "
                "`object_path=` to choose one (the name the model had in "
                "tf.train.Checkpoint, e.g. 'generator')."
            )
        object_path = next(iter(groups))
    object_path = object_path.strip("/")
    if object_path not in groups:
        raise ValueError(
            f"{path} holds no model at object_path '{object_path}'; it holds "
            f"{sorted(p or '(root)' for p in groups)}."
        )
    layers = []
    indices = sorted(groups[object_path])
    for index in indices:
        name = f"layer_with_weights-{index}"
        keys = groups[object_path][index]
        if any("layer_with_weights-" in rest for rest in keys):
            raise ValueError(
                f"{path}: {name} of '{object_path or '(root)'}' is a nested model; "
                "load_addons_weights reads flat (Sequential or functional) models."
            )
        keys = {
            rest: key
            for rest, key in keys.items()
            if not any(m in rest.split("/") for m in _CLONE_MARKERS)
        }
        keys = _without_time_distributed(keys)
        short = [_short_name(rest) for rest in sorted(keys)]
        _unique(name, short, path)
        entries = {
            _short_name(r): np.asarray(reader.get_tensor(k)) for r, k in sorted(keys.items())
        }
        if "g" in keys and "v" in keys:
            # The checkpoint stores the shared kernel once, as `v`; the inner
            # kernel it stands for is the one missing under `layer/`.
            v = entries.pop("v")
            inner = {_short_name(r) for r in keys if r.startswith("layer/")}
            missing = [n for n in ("kernel", "recurrent_kernel") if n not in inner]
            rnn = any(r.startswith("layer/cell/") for r in keys)
            candidates = missing if rnn else ["kernel"]
            if len(candidates) != 1:
                raise ValueError(
                    f"{path}: cannot tell which kernel the scale g of {name} normalizes "
                    f"(the layer holds {sorted(inner)} besides v)."
                )
            entries[candidates[0]] = v
            layers.append(_finish_wrapper(name, entries, candidates[0], path))
        else:
            layers.append(_SavedLayer(name, entries))
    if indices != list(range(len(indices))):
        raise ValueError(f"{path}: layer_with_weights indices {indices} are not contiguous.")
    return layers


def _read(path, object_path):
    path = os.fspath(path)
    if os.path.isdir(path):
        prefix = _checkpoint_prefix_in(path)
        return _read_checkpoint(prefix, object_path), prefix
    if os.path.isfile(path):
        import h5py

        if h5py.is_hdf5(path):
            if object_path is not None:
                raise ValueError("`object_path` only applies to TensorFlow checkpoints.")
            return _read_h5(path), path
        if path.endswith(".index"):
            return _read_checkpoint(path[: -len(".index")], object_path), path
        raise ValueError(
            f"{path} is neither an HDF5 weights file nor a TensorFlow checkpoint "
            "(pass the checkpoint prefix, e.g. 'ckpt' for ckpt.index)."
        )
    if os.path.isfile(path + ".index"):
        return _read_checkpoint(path, object_path), path
    raise FileNotFoundError(
        f"No tensorflow-addons weights at {path}: expected an .h5 file, a checkpoint "
        f"prefix (with {path}.index next to it) or a folder holding a checkpoint."
    )


def _checkpoint_prefix_in(folder):
    try:
        import tensorflow as tf
    except ImportError:
        tf = None
    prefix = tf.train.latest_checkpoint(folder) if tf is not None else None
    if prefix is None:
        indices = sorted(f for f in os.listdir(folder) if f.endswith(".index"))
        if len(indices) != 1:
            raise FileNotFoundError(
                f"No single TensorFlow checkpoint in folder {folder} (found "
                f"{indices or 'no .index file'}); pass the checkpoint prefix instead."
            )
        prefix = os.path.join(folder, indices[0][: -len(".index")])
    return prefix


# --------------------------------------------------------------------------
# Writing into the model
# --------------------------------------------------------------------------


def _layers_with_weights(model):
    found = []
    for layer in model.layers:
        if not layer.weights:
            continue
        if isinstance(layer, keras.Model):
            raise ValueError(
                f"Layer '{layer.name}' of model '{model.name}' is a nested model; "
                "load_addons_weights reads flat (Sequential or functional) models."
            )
        found.append(layer)
    return found


def _unwrap(layer):
    """The layer that receives the weights: TimeDistributed holds none of its
    own and applies its inner layer's kernel unchanged, so
    TimeDistributed(WeightNormalization(Dense)) loads as its
    WeightNormalization, which is what tensorflow-addons saved."""
    while isinstance(layer, keras.layers.TimeDistributed):
        layer = layer.layer
    return layer


def _describe_ours(layer):
    """'name' (TimeDistributed(WeightNormalization(Dense)): kernel (3, 4), ...),
    listing the weights of the innermost layer, as the file holds them."""
    kinds, inner = [], layer
    while isinstance(inner, (keras.layers.TimeDistributed, KernelNormWrapper)):
        kinds.append(type(inner).__name__)
        inner = inner.layer
    kinds.append(type(inner).__name__)
    kind = "(".join(kinds) + ")" * (len(kinds) - 1)
    shapes = ", ".join(f"{w.name} {tuple(w.shape)}" for w in inner.weights)
    return f"'{layer.name}' ({kind}: {shapes})"


def _assign(variable, value):
    variable.assign(keras.ops.cast(np.asarray(value), variable.dtype))


def _match_weights(target_layer, variables, saved, path):
    """Pair each of `variables` (the plain layer's own weights) with a saved
    value: by name, else (for an ordered .h5 layer) by position; check shapes."""
    names = [v.name for v in variables]
    by_name = {
        _KERAS2_ALIASES.get(k, k) if k not in names else k: a for k, a in saved.weights.items()
    }
    if sorted(by_name) == sorted(names):
        pairs = [(v, by_name[v.name]) for v in variables]
    elif saved.ordered and len(saved.weights) == len(variables):
        pairs = list(zip(variables, saved.weights.values(), strict=True))
    else:
        raise ValueError(
            f"Layer {_describe_ours(target_layer)} does not match layer "
            f"{saved.describe()} of {path}: their weights differ."
        )
    for variable, value in pairs:
        if tuple(variable.shape) != tuple(value.shape):
            raise ValueError(
                f"Layer {_describe_ours(target_layer)}: weight '{variable.name}' has shape "
                f"{tuple(variable.shape)}, but layer {saved.describe()} of {path} holds "
                f"shape {tuple(value.shape)}."
            )
    return pairs


def _check(layer, saved, path):
    """Raise unless `saved` fits `layer` (a layer of the model, named in the
    errors); returns the (variable, value) pairs."""
    target = _unwrap(layer)
    if not isinstance(target, KernelNormWrapper):
        return _match_weights(layer, target.weights, saved, path)
    if not isinstance(target, CenteredWeightNorm) or target.center or not target.scale:
        raise ValueError(
            f"Layer {_describe_ours(layer)} cannot hold the weights of layer "
            f"{saved.describe()} of {path}: only tfnorms.WeightNormalization (no "
            "centering, with a scale) computes every kernel tensorflow-addons can."
        )
    return _match_weights(layer, target.layer.weights, saved, path)


def _load_wrapper(wrapper, pairs):
    values = {id(v): value for v, value in pairs}
    kernels = axes.find_kernels(wrapper.layer)
    scales = wrapper.scale_variables()
    for variable, value in pairs:
        if not any(variable is k for k, _ in kernels):
            _assign(variable, value)
    for variable, kernel_axes in kernels:
        w = np.asarray(values[id(variable)], dtype=np.float64)
        # With V = W, our kernel g * V / sqrt(sum(V**2) + epsilon) is W again
        # when g is this norm (epsilon included, as in the forward pass).
        norms = np.sqrt(np.sum(np.square(w), axis=kernel_axes.reduce_axes) + wrapper.epsilon)
        _assign(variable, w)
        scale = scales[kernel_axes.name]
        _assign(scale, norms.reshape(tuple(scale.shape)))
    # So that a later data-dependent initialization leaves the scale alone
    # (the weight-norm wrappers; BoundedWeightNorm has no such state).
    if hasattr(wrapper, "mark_data_initialized"):
        wrapper.mark_data_initialized()


def load_addons_weights(
    model: keras.Model, path: str | os.PathLike, *, object_path: str | None = None
) -> dict[str, str]:
    """Load weights trained with tensorflow-addons' `WeightNormalization`.

    `model` is the same architecture rebuilt for Keras 3 with
    `tfnorms.WeightNormalization` where the old model had
    `tfa.layers.WeightNormalization` (plain layers stay plain). Reads

    - an `.h5` weights file, `model.save_weights("x.h5")` under TensorFlow
      2.15 (Keras 2), or a whole model saved there as `.h5`;
    - a TensorFlow checkpoint, `model.save_weights("ckpt")` or
      `tf.train.Checkpoint(model=model).write("ckpt")`: pass the prefix
      (`ckpt`, next to `ckpt.index`) or its folder. Reading it needs the
      `tensorflow` package, under any Keras backend; the `.h5` file needs
      only `h5py`.

    Layers with weights are paired in order, as Keras's own `load_weights`
    does, and every weight's shape is checked. Each tensorflow-addons layer's
    effective kernel `W = g v / ||v||` is computed with its own axes (every
    kernel axis but the last), then loaded as our direction `V = W` with our
    scale `g` set to our per-unit norm of `W`: the loaded model computes what
    the old one did, Conv*Transpose layers (normalized per input channel in
    tensorflow-addons, per output channel here) and RNNs (one kernel
    normalized there, both here) included. A tensorflow-addons layer may also
    be loaded into a plain layer (which receives `W`), and a plain layer into
    `tfnorms.WeightNormalization`. `TimeDistributed(WeightNormalization(...))`
    loads into `TimeDistributed(tfnorms.WeightNormalization(...))` (tfa
    refuses the opposite nesting, and so does tfnorms). The loaded wrappers
    are marked initialized where the wrapper keeps such state, so a
    data-dependent initialization does not overwrite them.

    Args:
        model: a built Keras 3 model (Sequential or functional).
        path: the `.h5` file, the checkpoint prefix, or a folder holding one
            checkpoint.
        object_path: for a checkpoint holding several models (say
            `tf.train.Checkpoint(generator=g, discriminator=d)`), the name of
            the one to load, e.g. `"generator"`.

    Returns:
        `{model layer name: file layer name}` for every layer loaded.

    Raises:
        FileNotFoundError: when nothing is found at `path`.
        ValueError: naming the layer and the shapes, when the architectures
            differ (number of layers with weights, weight names or shapes), or
            when a layer cannot represent the saved kernel.

    Example (docs/migrating.md, "Loading tensorflow-addons weights", has a
    runnable one):

        model = keras.Sequential([
            keras.Input((8, 5)),
            tfnorms.WeightNormalization(keras.layers.Conv1D(4, 3, padding="same")),
            tfnorms.WeightNormalization(keras.layers.Conv1DTranspose(3, 4, strides=2)),
        ])
        tfnorms.load_addons_weights(model, "old_model.h5")
    """
    require_model(model, "load_addons_weights")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(
            "tfnorms.load_addons_weights: `path` must be a file or folder path (str or "
            f"os.PathLike); received {path!r}."
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built; build it (give it an Input, or call "
            "it on a batch) before loading weights into it."
        )
    saved_layers, source = _read(path, object_path)
    ours = _layers_with_weights(model)
    if len(ours) != len(saved_layers):
        raise ValueError(
            f"{source} holds {len(saved_layers)} layers with weights, model '{model.name}' "
            f"has {len(ours)}.\n  In the file: "
            + "; ".join(s.describe() for s in saved_layers)
            + "\n  In the model: "
            + "; ".join(_describe_ours(layer) for layer in ours)
        )
    # Check every pair before assigning anything, so a mismatch leaves the
    # model as it was.
    checked = [
        _check(layer, saved, source) for layer, saved in zip(ours, saved_layers, strict=True)
    ]
    for layer, pairs in zip(ours, checked, strict=True):
        target = _unwrap(layer)
        if isinstance(target, KernelNormWrapper):
            _load_wrapper(target, pairs)
        else:
            for variable, value in pairs:
                _assign(variable, value)
    return {layer.name: saved.name for layer, saved in zip(ours, saved_layers, strict=True)}
