"""The papers' CIFAR-10 networks, each buildable with any normalization.

- `resnet`: He et al. (2016) CIFAR ResNet, depth 6n+2 (ResNet-20, -56, ...);
  16/32/64 channels, basic blocks, option-A shortcuts (stride-2 subsampling
  and zero-padded channels, no parameters) or option B (1x1 convolution and
  batch norm, as in the Norm-matters code).
- `vgg_a`: VGG-A as drawn in the CWN supplement (Figure 2): 3x3 convolutions
  64-M-128-M-256-256-M-512-512-M-512-512-M, classifier FC512-BN-ReLU-FC10.
- `googlenet`: the small CIFAR GoogLeNet (Inception, batch-normalized) of the
  CWN supplement (Figure 3): conv3x3(64)-conv3x3(192) without padding,
  inception 3a-3c, a 2x2 stride-2 convolution, 4a-4e, another, 5a-5b,
  global average pooling, FC10.

Every channel count is multiplied by `width` (at least 1 channel), so that
tests and quick runs can use tiny versions of the same graphs. Only built-in
Keras layers and tfnorms layers are used, so the saved `.keras` files load
with `import tfnorms` alone, and `tfnorms.strip` can clone the models.

Each builder takes its layers from `norms`: `conv(filters, kernel_size,
strides, padding, name, fan_in)`, `bn(name, zero_gamma)` (`None`: no batch
norm there) and `classifier(units, fan_in)`, as `norms.Norms` provides them
(benchmarks/bench.py passes its own, to time its candidates in the same
ResNet-20).
"""

from __future__ import annotations

from cifar10 import checks

MODELS = ("resnet", "vgg-a", "googlenet")
VGG_A = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
# (1x1, (3x3 reduce, 3x3), (double-3x3 reduce, double-3x3), (pool, pool proj))
# from the CWN authors' googlenetbn.lua.
INCEPTION = {
    "3a": (64, (64, 64), (64, 96), ("avg", 32)),
    "3b": (64, (64, 96), (64, 96), ("avg", 64)),
    "3c": (0, (128, 160), (64, 96), ("max", 0)),
    "4a": (224, (64, 96), (96, 128), ("avg", 128)),
    "4b": (192, (96, 128), (96, 128), ("avg", 128)),
    "4c": (160, (128, 160), (128, 160), ("avg", 96)),
    "4d": (96, (128, 192), (160, 192), ("avg", 96)),
    "4e": (0, (128, 192), (192, 256), ("max", 0)),
    "5a": (352, (192, 320), (160, 224), ("avg", 128)),
    "5b": (352, (192, 320), (192, 224), ("max", 128)),
}


class ModelError(ValueError):
    """An architecture argument that cannot be built."""


def _channels(n, width):
    return max(1, int(round(n * width)))


def _conv_bn_relu(x, norms, filters, kernel, strides=1, padding="same", name=""):
    import keras

    x = norms.conv(
        filters,
        kernel,
        strides=strides,
        padding=padding,
        name=name + "_conv",
        fan_in=x.shape[-1] * kernel * kernel,
    )(x)
    bn = norms.bn(name=name + "_bn")
    if bn is not None:
        x = bn(x)
    return keras.layers.ReLU(name=name + "_relu")(x)


# ---------------------------------------------------------------- ResNet
def _shortcut_a(x, filters, strides, name):
    """Option A: subsample by `strides`, zero-pad the new channels."""
    import keras

    if strides != 1:
        x = keras.layers.MaxPooling2D(pool_size=1, strides=strides, name=name + "_subsample")(x)
    extra = filters - x.shape[-1]
    if extra > 0:
        h, w, c = x.shape[1:]
        x = keras.layers.Reshape((h, w, c, 1), name=name + "_to5d")(x)
        x = keras.layers.ZeroPadding3D(
            ((0, 0), (0, 0), (extra // 2, extra - extra // 2)), name=name + "_padchannels"
        )(x)
        x = keras.layers.Reshape((h, w, filters), name=name + "_to4d")(x)
    return x


def resnet(norms, depth=56, width=1.0, shortcut="A", num_classes=10, input_shape=(32, 32, 3)):
    import keras

    checks.check_ranges({"depth": depth}, ModelError)
    checks.check_choice("shortcut", shortcut, ("A", "B"), ModelError)
    blocks = (depth - 2) // 6
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn_relu(inputs, norms, _channels(16, width), 3, name="stem")
    for stage, base in enumerate((16, 32, 64)):
        filters = _channels(base, width)
        for block in range(blocks):
            name = f"stage{stage + 1}_block{block + 1}"
            strides = 2 if stage > 0 and block == 0 else 1
            y = _conv_bn_relu(x, norms, filters, 3, strides=strides, name=name + "_a")
            y = norms.conv(filters, 3, name=name + "_b_conv", fan_in=y.shape[-1] * 9)(y)
            bn = norms.bn(name=name + "_b_bn", zero_gamma=True)
            if bn is not None:
                y = bn(y)
            if strides != 1 or x.shape[-1] != filters:
                if shortcut == "A":
                    x = _shortcut_a(x, filters, strides, name + "_shortcut")
                else:
                    x = norms.conv(
                        filters,
                        1,
                        strides=strides,
                        name=name + "_shortcut_conv",
                        fan_in=x.shape[-1],
                    )(x)
                    bn = norms.bn(name=name + "_shortcut_bn")
                    if bn is not None:
                        x = bn(x)
            x = keras.layers.Add(name=name + "_add")([x, y])
            x = keras.layers.ReLU(name=name + "_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = norms.classifier(num_classes, fan_in=x.shape[-1])(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}")


# ----------------------------------------------------------------- VGG-A
def vgg_a(norms, width=1.0, num_classes=10, input_shape=(32, 32, 3)):
    """Without batch norm each convolution still has its per-channel scale:
    the weight norm's `g` (the CWN code's Spatial_Scaling). The classifier's
    batch norm is always there (Figure 2); with `--batch-norm none` it is
    Keras's BatchNormalization."""
    import keras

    inputs = keras.Input(input_shape, name="image")
    x = inputs
    conv_index = pool_index = 0
    for item in VGG_A:
        if item == "M":
            pool_index += 1
            x = keras.layers.MaxPooling2D(2, name=f"pool{pool_index}")(x)
        else:
            conv_index += 1
            x = _conv_bn_relu(x, norms, _channels(item, width), 3, name=f"conv{conv_index}")
    x = keras.layers.Flatten(name="flatten")(x)
    x = norms.dense(
        _channels(512, width), name="fc1", use_bias=not norms.has_bn, fan_in=x.shape[-1]
    )(x)
    x = norms.bn(name="fc1_bn", fallback="keras")(x)
    x = keras.layers.ReLU(name="fc1_relu")(x)
    outputs = norms.classifier(num_classes, fan_in=x.shape[-1])(x)
    return keras.Model(inputs, outputs, name="vgg_a")


# ------------------------------------------------------------- GoogLeNet
def _inception(x, norms, config, width, name):
    import keras

    one, (r3, c3), (rd, cd), (pool, proj) = config
    branches = []
    if one:
        branches.append(_conv_bn_relu(x, norms, _channels(one, width), 1, name=name + "_1x1"))
    y = _conv_bn_relu(x, norms, _channels(r3, width), 1, name=name + "_3x3r")
    branches.append(_conv_bn_relu(y, norms, _channels(c3, width), 3, name=name + "_3x3"))
    y = _conv_bn_relu(x, norms, _channels(rd, width), 1, name=name + "_d3x3r")
    y = _conv_bn_relu(y, norms, _channels(cd, width), 3, name=name + "_d3x3a")
    branches.append(_conv_bn_relu(y, norms, _channels(cd, width), 3, name=name + "_d3x3b"))
    pooling = keras.layers.AveragePooling2D if pool == "avg" else keras.layers.MaxPooling2D
    y = pooling(3, strides=1, padding="same", name=name + "_pool")(x)
    if proj:
        y = _conv_bn_relu(y, norms, _channels(proj, width), 1, name=name + "_poolproj")
    branches.append(y)
    return keras.layers.Concatenate(name=name + "_concat")(branches)


def googlenet(norms, width=1.0, num_classes=10, input_shape=(32, 32, 3), blocks=None):
    """`blocks` keeps only the first `blocks` inception modules of each stage
    (3a-3c, 4a-4e, 5a-5b): the same structure with fewer layers, for quick
    tests. `None` keeps all ten."""
    import keras

    checks.check_ranges({"inception_blocks": blocks}, ModelError)
    stages = [("3a", "3b", "3c"), ("4a", "4b", "4c", "4d", "4e"), ("5a", "5b")]
    stages = [stage[:blocks] if blocks else stage for stage in stages]
    inputs = keras.Input(input_shape, name="image")
    x = _conv_bn_relu(inputs, norms, _channels(64, width), 3, padding="valid", name="conv1")
    x = _conv_bn_relu(x, norms, _channels(192, width), 3, padding="valid", name="conv2")
    for index, stage in enumerate(stages):
        if index:
            x = _conv_bn_relu(
                x, norms, x.shape[-1], 2, strides=2, padding="valid", name=f"reduce{index + 3}"
            )
        for key in stage:
            x = _inception(x, norms, INCEPTION[key], width, "inception" + key)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = norms.classifier(num_classes, fan_in=x.shape[-1])(x)
    return keras.Model(inputs, outputs, name="googlenet")


def build(name, norms, *, depth=56, width=1.0, shortcut="A", num_classes=10, blocks=None):
    checks.check_choice("model", name, MODELS, ModelError)
    if name == "resnet":
        return resnet(norms, depth=depth, width=width, shortcut=shortcut, num_classes=num_classes)
    if name == "vgg-a":
        return vgg_a(norms, width=width, num_classes=num_classes)
    return googlenet(norms, width=width, num_classes=num_classes, blocks=blocks)
