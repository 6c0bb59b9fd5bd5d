"""One place that maps `--weight-norm` and `--batch-norm` to layers.

The model builders ask a `Norms` object for convolutions, dense layers and
batch norms; it decides what wraps what:

- `--weight-norm`: `none` (plain layer), `wn` (`tfnorms.WeightNormalization`),
  `cwn` (`tfnorms.CenteredWeightNorm`), `bwn` (`tfnorms.BoundedWeightNorm`).
- `--batch-norm`: `none`, `l2` (`tfnorms.LpBatchNormalization(p=2)`, the same
  numbers as Keras's layer), `l1` (`tfnorms.L1BatchNormalization`), `linf`
  (`tfnorms.LinfBatchNormalization`), `topk` (`LinfBatchNormalization(
  top_k=--top-k)`), `mean` (`tfnorms.MeanOnlyBatchNormalization`), and
  `keras` (`keras.layers.BatchNormalization`, the reference).

Convolutions followed by a batch norm have no bias (its beta is the bias).
A weight-norm scale `g` is learned only where no batch norm with a gamma
follows (`--wn-scale auto`): the papers' CWN/WN convolutions before batch norm
have no scale ("NS" in the CWN code).

`--init`: `he` starts every convolution He-normal over fan-out (the "MSR
init" of both papers' plain networks) and Dense layers at Keras's defaults;
`torch` starts convolutions and Dense layers (kernels and biases) as PyTorch's
`nn.Conv2d` / `nn.Linear` do, uniform in +-1/sqrt(fan_in), which is where the
Norm matters weight-normalized ResNet effectively starts (docs/reproducing.md,
"The start of the weight-normed ResNet-56", says why).
"""

from __future__ import annotations

import inspect
import math

from cifar10 import checks

WEIGHT_NORMS = ("none", "wn", "cwn", "bwn")
BATCH_NORMS = ("none", "l2", "l1", "linf", "topk", "mean", "keras")
WEIGHT_DECAY_SCOPES = ("all", "kernels", "classifier", "none")
INITS = ("he", "torch")
WN_SCALES = ("auto", "yes", "no")
# Norms' keyword arguments, each named as train.py's setting that sets it.
SETTINGS = (
    "wn_scale",
    "bn_momentum",
    "bn_epsilon",
    "sync_bn",
    "top_k",
    "weight_decay",
    "weight_decay_scope",
    "wrap_classifier",
    "zero_init_residual",
    "bwn_per_unit_gain",
    "init",
)


class NormError(ValueError):
    """A normalization choice this tfnorms or this model cannot provide."""


def _accepted(cls, kwargs):
    """`kwargs` split into those some `__init__` along `cls`'s MRO names (the
    presets pass their `**kwargs` on to `LpBatchNormalization`) and the rest."""
    names = {"name"}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is not None:
            names.update(inspect.signature(init).parameters)
    names -= {"self", "args", "kwargs"}
    taken = {k: v for k, v in kwargs.items() if k in names}
    return taken, {k: v for k, v in kwargs.items() if k not in taken}


class Norms:
    """Layer factory for one `--weight-norm` / `--batch-norm` choice."""

    def __init__(
        self,
        weight_norm="none",
        batch_norm="l2",
        *,
        wn_scale="auto",
        bn_momentum=0.9,
        bn_epsilon=1e-5,
        sync_bn=False,
        top_k=10,
        weight_decay=0.0,
        weight_decay_scope="all",
        wrap_classifier=False,
        zero_init_residual=False,
        bwn_per_unit_gain=False,
        init="he",
    ):
        for key, value, choices in (
            ("weight_norm", weight_norm, WEIGHT_NORMS),
            ("batch_norm", batch_norm, BATCH_NORMS),
            ("weight_decay_scope", weight_decay_scope, WEIGHT_DECAY_SCOPES),
            ("wn_scale", wn_scale, WN_SCALES),
            ("init", init, INITS),
        ):
            checks.check_choice(key, value, choices, NormError)
        checks.check_ranges(
            {
                "bn_momentum": bn_momentum,
                "bn_epsilon": bn_epsilon,
                "top_k": top_k,
                "weight_decay": weight_decay,
            },
            NormError,
        )
        self.weight_norm = weight_norm
        self.batch_norm = batch_norm
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.sync_bn = sync_bn
        self.top_k = top_k
        self.weight_decay = weight_decay
        self.weight_decay_scope = weight_decay_scope
        self.wrap_classifier = wrap_classifier
        self.zero_init_residual = zero_init_residual
        self.bwn_per_unit_gain = bwn_per_unit_gain
        self.init = init
        if wn_scale == "auto":
            self.wn_scale = batch_norm in ("none", "mean")
        else:
            self.wn_scale = wn_scale == "yes"

    @classmethod
    def from_settings(cls, config):
        """The Norms of train.py's resolved settings."""
        return cls(config["weight_norm"], config["batch_norm"], **{k: config[k] for k in SETTINGS})

    # ------------------------------------------------------------ helpers
    @property
    def has_bn(self):
        return self.batch_norm != "none"

    def _regularizer(self, kind):
        """Torch-style coupled weight decay `wd`: a penalty 0.5 * wd * ||w||^2."""
        import keras

        if self.weight_decay == 0:
            return None
        scope = self.weight_decay_scope
        if (
            scope == "none"
            or (scope == "kernels" and kind != "kernel" and kind != "classifier")
            or (scope == "classifier" and kind != "classifier")
        ):
            return None
        return keras.regularizers.L2(0.5 * self.weight_decay)

    def _kernel_initializer(self, kind):
        """`kind`: "conv" or "dense"."""
        import keras

        if self.init == "torch":
            # PyTorch's default: kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(fan_in), +).
            return keras.initializers.VarianceScaling(
                1.0 / 3.0, mode="fan_in", distribution="uniform"
            )
        if kind == "conv":
            return keras.initializers.VarianceScaling(
                2.0, mode="fan_out", distribution="untruncated_normal"
            )
        return "glorot_uniform"

    def _bias_initializer(self, fan_in):
        import keras

        if self.init == "torch" and fan_in:
            limit = 1.0 / math.sqrt(fan_in)
            return keras.initializers.RandomUniform(-limit, limit)
        return "zeros"

    def _wn_class(self):
        import tfnorms

        return {
            "none": None,
            "wn": tfnorms.WeightNormalization,
            "cwn": tfnorms.CenteredWeightNorm,
            "bwn": tfnorms.BoundedWeightNorm,
        }[self.weight_norm]

    def _bn_class(self):
        import keras

        import tfnorms

        return {
            "none": (None, {}),
            "keras": (keras.layers.BatchNormalization, {}),
            "l2": (tfnorms.LpBatchNormalization, {"p": 2}),
            "l1": (tfnorms.L1BatchNormalization, {}),
            "linf": (tfnorms.LinfBatchNormalization, {}),
            "topk": (tfnorms.LinfBatchNormalization, {"top_k": self.top_k}),
            "mean": (tfnorms.MeanOnlyBatchNormalization, {}),
        }[self.batch_norm]

    def _wrap(self, layer, wrap, kind):
        cls = self._wn_class()
        if cls is None or not wrap:
            return layer
        kwargs = {"name": layer.name + "_" + self.weight_norm}
        if self.weight_norm in ("wn", "cwn"):
            kwargs["scale"] = self.wn_scale
            regularizer = self._regularizer("scale")
            if regularizer is not None and self.wn_scale:
                kwargs["scale_regularizer"] = regularizer
        elif self.bwn_per_unit_gain:
            kwargs["per_unit_gain"] = True
        return cls(layer, **kwargs)

    # ------------------------------------------------------------- layers
    def conv(
        self, filters, kernel_size, strides=1, padding="same", name=None, wrap=True, fan_in=None
    ):
        """A Conv2D (He initialization, fan-out, as in the papers' code, or
        PyTorch's default with `--init torch`), wrapped by the chosen weight
        norm; without bias when a batch norm follows. `fan_in` (input channels
        x kernel area) sizes the bias initialization of `--init torch`."""
        import keras

        use_bias = not self.has_bn
        layer = keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            use_bias=use_bias,
            kernel_initializer=self._kernel_initializer("conv"),
            bias_initializer=self._bias_initializer(fan_in),
            kernel_regularizer=self._regularizer("kernel"),
            bias_regularizer=self._regularizer("bias") if use_bias else None,
            name=name,
        )
        return self._wrap(layer, wrap, "kernel")

    def dense(self, units, name=None, use_bias=True, wrap=True, fan_in=None):
        import keras

        layer = keras.layers.Dense(
            units,
            use_bias=use_bias,
            kernel_initializer=self._kernel_initializer("dense"),
            bias_initializer=self._bias_initializer(fan_in),
            kernel_regularizer=self._regularizer("kernel"),
            bias_regularizer=self._regularizer("bias") if use_bias else None,
            name=name,
        )
        return self._wrap(layer, wrap, "kernel")

    def classifier(self, units, name="classifier", fan_in=None):
        """The last Dense (logits, float32 under mixed precision); wrapped only
        with `--wrap-classifier` (the papers leave it plain)."""
        import keras

        layer = keras.layers.Dense(
            units,
            kernel_initializer=self._kernel_initializer("dense"),
            bias_initializer=self._bias_initializer(fan_in),
            kernel_regularizer=self._regularizer("classifier"),
            bias_regularizer=self._regularizer("classifier"),
            dtype="float32",
            name=name,
        )
        if not self.wrap_classifier or self._wn_class() is None:
            return layer
        cls = self._wn_class()
        kwargs = {"name": name + "_" + self.weight_norm, "dtype": "float32"}
        if self.weight_norm in ("wn", "cwn"):
            kwargs["scale"] = True
        return cls(layer, **kwargs)

    def bn(self, name=None, zero_gamma=False, fallback=None):
        """The chosen batch norm, or `None` with `--batch-norm none` (or the
        `fallback` choice's layer, for places the architecture always has one).
        `zero_gamma` starts gamma at 0 when `--zero-init-residual` is set."""
        choice = self.batch_norm if self.has_bn else fallback
        if choice is None or choice == "none":
            return None
        saved, self.batch_norm = self.batch_norm, choice
        try:
            cls, preset = self._bn_class()
        finally:
            self.batch_norm = saved
        wanted = dict(preset)
        wanted.update(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name)
        if self.sync_bn:
            wanted["synchronized"] = True
        regularizer = self._regularizer("gamma")
        if regularizer is not None:
            wanted["gamma_regularizer"] = regularizer
            wanted["beta_regularizer"] = self._regularizer("beta")
        if zero_gamma and self.zero_init_residual:
            wanted["gamma_initializer"] = "zeros"
        taken, rest = _accepted(cls, wanted)
        # Mean-only batch norm has no gamma: nothing to regularize or zero there.
        essential = {"p", "top_k", "synchronized", "beta_regularizer"} & set(rest)
        if essential:
            raise NormError(
                f"{cls.__name__} does not accept {', '.join(sorted(essential))}; "
                "cannot build this normalization"
            )
        return cls(**taken)

    def validate(self):
        """Construct (not build) one layer of each kind, so that an argument
        a layer refuses fails before a run writes anything."""
        self.conv(1, 3, name="check_conv")
        self.dense(1, name="check_dense")
        self.classifier(1, name="check_classifier")
        self.bn(name="check_bn", zero_gamma=True, fallback="keras")
        return self

    def describe(self):
        return {
            "weight_norm": self.weight_norm,
            "batch_norm": self.batch_norm,
            "wn_scale": self.wn_scale,
            "init": self.init,
        }
