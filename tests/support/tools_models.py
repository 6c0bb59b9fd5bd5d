"""Models built from custom layers, as real projects write them, for the model
tools' tests: a temporal convolutional network (residual blocks of causal,
dilated Conv1D layers created in `build`, in lists, inside a TCN layer), a
MelGAN-like generator (a subclassed model: Conv1DTranspose upsampling in a
dict, residual stacks in lists of lists, the output in a tuple), and a
functional model mixing both with a custom layer that holds a functional
model, and a gated block whose layers are made in `__init__` and built in
its `build` (the Keras guide's pattern), and a TCN written as keras-tcn
writes it (sub-layers in a list and in attributes named after them, unnamed
batch or layer norms as an option, an identity `Lambda(lambda x: x)`
shortcut, a slicing `Lambda` that reads its layer, a config holding a
tracked list). `wn=True` wraps every kernel layer in `WeightNormalization`."""

from __future__ import annotations

import keras

import tfnorms

L = keras.layers


def _maybe_wn(layer, wn):
    return tfnorms.WeightNormalization(layer) if wn else layer


class ResidualBlock(L.Layer):
    """Two causal, dilated convolutions with ReLU and dropout, plus a 1x1
    convolution on the shortcut when the widths differ: its layers are
    created in `build` and kept in a list."""

    def __init__(self, filters, kernel_size, dilation_rate, wn=False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size
        self.dilation_rate, self.wn = dilation_rate, wn

    def build(self, input_shape):
        self.convs, self.activations = [], []
        shape = input_shape
        for k in range(2):
            conv = L.Conv1D(
                self.filters,
                self.kernel_size,
                dilation_rate=self.dilation_rate,
                padding="causal",
                name=f"conv1d_{k}",
            )
            conv = _maybe_wn(conv, self.wn)
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
            self.convs.append(conv)
            self.activations.append(L.Activation("relu"))
        self.dropout = L.Dropout(0.1)
        if input_shape[-1] != self.filters:
            self.shape_match = _maybe_wn(L.Conv1D(self.filters, 1, name="match"), self.wn)
        else:
            self.shape_match = L.Identity()
        self.shape_match.build(input_shape)
        super().build(input_shape)

    def call(self, x, training=None):
        h = x
        for conv, activation in zip(self.convs, self.activations, strict=True):
            h = self.dropout(activation(conv(h)), training=training)
        return keras.ops.relu(self.shape_match(x) + h)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            dilation_rate=self.dilation_rate,
            wn=self.wn,
        )
        return config


class TCN(L.Layer):
    """A stack of residual blocks with growing dilation, built in `build`;
    returns the last time step."""

    def __init__(self, filters=8, kernel_size=3, dilations=(1, 2, 4), wn=False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.kernel_size = filters, kernel_size
        self.dilations, self.wn = tuple(dilations), wn

    def build(self, input_shape):
        self.residual_blocks = []
        shape = input_shape
        for i, d in enumerate(self.dilations):
            block = ResidualBlock(
                self.filters, self.kernel_size, d, wn=self.wn, name=f"residual_block_{i}"
            )
            block.build(shape)
            shape = block.compute_output_shape(shape)
            self.residual_blocks.append(block)
        super().build(input_shape)

    def call(self, x, training=None):
        for block in self.residual_blocks:
            x = block(x, training=training)
        return x[:, -1, :]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            filters=self.filters,
            kernel_size=self.kernel_size,
            dilations=list(self.dilations),
            wn=self.wn,
        )
        return config


def make_tcn_model(wn=False, steps=16, features=3):
    """Input -> TCN (3 blocks: 6 + 1 convolutions) -> Dense: 8 kernel layers."""
    inputs = keras.Input((steps, features))
    h = TCN(wn=wn, name="tcn")(inputs)
    return keras.Model(inputs, _maybe_wn(L.Dense(2, name="head"), wn)(h), name="tcn_model")


class ResidualStack(L.Layer):
    """MelGAN's residual stack: LeakyReLU, dilated conv, LeakyReLU, 1x1 conv,
    plus a 1x1 shortcut; layers created in `__init__`, in a list of lists."""

    def __init__(self, filters, dilation_rate=1, wn=False, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.dilation_rate, self.wn = filters, dilation_rate, wn
        self.blocks = [
            [
                L.LeakyReLU(0.2),
                _maybe_wn(L.Conv1D(filters, 3, dilation_rate=dilation_rate, padding="same"), wn),
                L.LeakyReLU(0.2),
                _maybe_wn(L.Conv1D(filters, 1), wn),
            ]
        ]
        self.shortcut = _maybe_wn(L.Conv1D(filters, 1), wn)

    def call(self, x):
        h = x
        for layer in self.blocks[0]:
            h = layer(h)
        return self.shortcut(x) + h

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, dilation_rate=self.dilation_rate, wn=self.wn)
        return config


class MelGANGenerator(keras.Model):
    """Conv1D, then per upsampling scale a LeakyReLU and a Conv1DTranspose
    (in a dict) followed by residual stacks (a list of lists), then a tanh
    Conv1D (in a tuple)."""

    def __init__(self, channels=16, scales=(2, 2), stacks=2, wn=False, **kwargs):
        super().__init__(**kwargs)
        self.channels, self.scales, self.stacks, self.wn = channels, tuple(scales), stacks, wn
        self.first = _maybe_wn(L.Conv1D(channels, 7, padding="same"), wn)
        self.upsamples, self.residual_stacks = {}, []
        for i, scale in enumerate(scales):
            channels //= 2
            up = L.Conv1DTranspose(channels, 2 * scale, strides=scale, padding="same")
            self.upsamples[f"up{i}"] = [L.LeakyReLU(0.2), _maybe_wn(up, wn)]
            self.residual_stacks.append(
                [ResidualStack(channels, 3**j, wn=wn) for j in range(stacks)]
            )
        last = L.Conv1D(1, 7, padding="same", activation="tanh")
        self.last = (L.LeakyReLU(0.2), _maybe_wn(last, wn))

    def call(self, mels):
        h = self.first(mels)
        for (activation, up), stacks in zip(
            self.upsamples.values(), self.residual_stacks, strict=True
        ):
            h = up(activation(h))
            for stack in stacks:
                h = stack(h)
        return self.last[1](self.last[0](h))

    def get_config(self):
        config = super().get_config()
        config.update(
            channels=self.channels, scales=list(self.scales), stacks=self.stacks, wn=self.wn
        )
        return config


def make_melgan(wn=False, frames=8, mels=5):
    """16 kernel layers: 1 + 2 x (1 upsampling + 2 stacks x 3) + 1."""
    model = MelGANGenerator(wn=wn, name="melgan")
    model(keras.ops.zeros((1, frames, mels)))
    return model


class Encoder(L.Layer):
    """A custom layer holding a functional model, made in `build`."""

    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        inputs = keras.Input(input_shape[1:])
        h = L.Dense(self.units, activation="relu", name="hidden")(inputs)
        self.net = keras.Model(inputs, L.Dense(self.units, name="out")(h), name="net")
        super().build(input_shape)

    def call(self, x):
        return self.net(x)

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units)
        return config


def make_mixed_model(steps=10, features=4):
    """Functional: Conv1D, a ResidualBlock, an Encoder (functional inside a
    custom layer), a Sequential, TimeDistributed, Bidirectional LSTM, Dense:
    1 + 3 + 2 + 1 + 1 + 2 + 1 = 11 kernel layers."""
    inputs = keras.Input((steps, features))
    h = L.Conv1D(6, 3, padding="causal", name="stem")(inputs)
    h = ResidualBlock(5, 2, 2, name="block")(h)
    h = Encoder(6, name="encoder")(h)
    h = keras.Sequential([L.Dense(6, name="seq_dense"), L.ReLU()], name="seq")(h)
    h = L.TimeDistributed(L.Dense(4, name="td_dense"), name="td")(h)
    h = L.Bidirectional(L.LSTM(3), name="bilstm")(h)
    return keras.Model(inputs, L.Dense(2, name="head")(h), name="mixed")


class GatedBlock(L.Layer):
    """`value(x) * sigmoid(gate(x))`, its layers made in `__init__` and
    built by its own `build` (which fails on an already-built layer)."""

    def __init__(self, units, wn=False, **kwargs):
        super().__init__(**kwargs)
        self.units, self.wn = units, wn
        self.value = _maybe_wn(L.Dense(units, name="value"), wn)
        self.gate = _maybe_wn(L.Dense(units, name="gate"), wn)

    def build(self, input_shape):
        self.value.build(input_shape)
        self.gate.build(input_shape)
        super().build(input_shape)

    def call(self, x):
        return self.value(x) * keras.ops.sigmoid(self.gate(x))

    def get_config(self):
        config = super().get_config()
        config.update(units=self.units, wn=self.wn)
        return config


def make_gated_model(wn=False, features=6):
    """Two GatedBlocks and a Dense head: 5 kernel layers."""
    inputs = keras.Input((features,))
    h = GatedBlock(8, wn=wn, name="gated_0")(inputs)
    h = GatedBlock(4, wn=wn, name="gated_1")(h)
    return keras.Model(inputs, _maybe_wn(L.Dense(2, name="head"), wn)(h), name="gated")


class KerasTCNBlock(L.Layer):
    """keras-tcn's `ResidualBlock` as it is written: two causal, dilated
    convolutions with activations and spatial dropout, made in `build`, kept
    in `self.layers` and set as attributes named after them (keras-tcn does
    so to have Keras track them), and a 1x1 convolution on the shortcut, or
    `Lambda(lambda x: x)` when the widths match. `norm="batch"` or `"layer"`
    (keras-tcn's `use_batch_norm`, `use_layer_norm`) puts an unnamed
    normalization after each convolution: its attribute's name is the
    automatic one, which differs in every instance."""

    def __init__(self, dilation_rate, nb_filters, kernel_size, wn=False, norm=None, **kwargs):
        self.dilation_rate, self.nb_filters = dilation_rate, nb_filters
        self.kernel_size, self.wn, self.norm = kernel_size, wn, norm
        self.layers = []
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.layers, shape = [], input_shape
        for k in range(2):
            conv = L.Conv1D(
                self.nb_filters,
                self.kernel_size,
                dilation_rate=self.dilation_rate,
                padding="causal",
                name=f"conv1D_{k}",
            )
            conv = tfnorms.WeightNormalization(conv, name=f"wn_{k}") if self.wn else conv
            norms = {"batch": L.BatchNormalization, "layer": L.LayerNormalization}
            norm = [norms[self.norm]()] if self.norm else []
            act = L.Activation("relu", name=f"act_{k}")
            for layer in (conv, *norm, act, L.SpatialDropout1D(0.1, name=f"sdropout_{k}")):
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
                self.layers.append(layer)
        if self.nb_filters != input_shape[-1]:
            match = L.Conv1D(self.nb_filters, 1, name="matching_conv1D")
            self.shape_match_conv = _maybe_wn(match, self.wn)
        else:
            self.shape_match_conv = L.Lambda(lambda x: x, name="matching_identity")
        self.shape_match_conv.build(input_shape)
        for layer in self.layers:
            setattr(self, layer.name, layer)
        super().build(input_shape)

    def call(self, x, training=None):
        h = x
        for layer in self.layers:
            h = layer(h, training=training) if isinstance(layer, L.Dropout) else layer(h)
        return keras.ops.relu(self.shape_match_conv(x) + h)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.nb_filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            dilation_rate=self.dilation_rate,
            nb_filters=self.nb_filters,
            kernel_size=self.kernel_size,
            wn=self.wn,
            norm=self.norm,
        )
        return config


class KerasTCN(L.Layer):
    """keras-tcn's `TCN`: blocks of growing dilation made in `build`, the
    last time step taken by a `Lambda` that reads the layer, and a config
    that returns `self.dilations` as it is (a list: Keras tracks it)."""

    block_class = KerasTCNBlock

    def __init__(
        self, nb_filters=8, kernel_size=3, dilations=(1, 2, 4), wn=False, norm=None, **kwargs
    ):
        self.nb_filters, self.kernel_size, self.wn = nb_filters, kernel_size, wn
        self.norm = norm
        self.dilations = dilations
        self.residual_blocks = []
        super().__init__(**kwargs)

    def build(self, input_shape):
        self.residual_blocks, shape = [], input_shape
        for i, d in enumerate(self.dilations):
            block = self.block_class(
                d,
                self.nb_filters,
                self.kernel_size,
                wn=self.wn,
                norm=self.norm,
                name=f"residual_block_{i}",
            )
            block.build(shape)
            shape = block.compute_output_shape(shape)
            self.residual_blocks.append(block)
        for block in self.residual_blocks:
            setattr(self, block.name, block)
        self.output_slice_index = -1
        self.slicer_layer = L.Lambda(lambda tt: tt[:, self.output_slice_index, :], name="slice")
        super().build(input_shape)

    def call(self, x, training=None):
        for block in self.residual_blocks:
            x = block(x, training=training)
        return self.slicer_layer(x)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.nb_filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            nb_filters=self.nb_filters,
            kernel_size=self.kernel_size,
            dilations=self.dilations,
            wn=self.wn,
            norm=self.norm,
        )
        return config


@keras.saving.register_keras_serializable(package="tfnorms_tests")
class RegisteredKerasTCNBlock(KerasTCNBlock):
    pass


@keras.saving.register_keras_serializable(package="tfnorms_tests")
class RegisteredKerasTCN(KerasTCN):
    block_class = RegisteredKerasTCNBlock


def make_keras_tcn_model(wn=False, registered=False, norm=None, steps=16, features=3):
    """Input -> TCN (3 blocks: 2 + 1 convolutions, then 2 and 2 with an
    identity Lambda) -> Dense: 8 kernel layers; `norm="batch"` or `"layer"`:
    an unnamed normalization after each of the 6 Conv1D (`KerasTCNBlock`)."""
    tcn = RegisteredKerasTCN if registered else KerasTCN
    inputs = keras.Input((steps, features))
    h = tcn(dilations=[1, 2, 4], wn=wn, norm=norm, name="tcn")(inputs)
    return keras.Model(inputs, _maybe_wn(L.Dense(2, name="head"), wn)(h), name="keras_tcn")
