"""The normalization families that tests/library/test_norm_contract.py holds
to one contract: for each, how to build it, its Keras counterpart at p=2, its
NumPy reference (lp_reference, per_example_reference), and the inputs each
property needs. A family's masks are Keras's: the input's shape without its
last axis."""

import inspect
import math

import keras
import lp_reference as ref
import numpy as np
import per_example_reference as pref
from layer_checks import to_numpy

import tfnorms

INF = math.inf
P_SHORT = [(1.0, None), (3.0, None), (INF, None), (INF, 3)]
P_LONG = [(1.0, None), (1.5, None), (2.0, None), (3.0, None), (INF, None), (INF, 1), (INF, 10)]


def p_id(p, top_k):
    return "" if p is None else f"p{p}" + (f"-top{top_k}" if top_k else "")


def random_weights(layer, rng):
    """Set every weight of `layer` by its name (offsets and means normal,
    scales in [0.5, 2]) and return them as {name: value}."""
    values = {}
    for w in layer.weights:
        normal = w.name in ("beta", "moving_mean", "renorm_mean")
        values[w.name] = rng.normal(size=w.shape) if normal else rng.uniform(0.5, 2.0, w.shape)
    layer.set_weights([values[w.name] for w in layer.weights])
    return values


def implied_sigma(x, y, axes, epsilon):
    """sqrt(sigma_p**2 + epsilon) of each statistic from y = (x - mu) / that
    (or x / that), the statistics taken over `axes`."""
    return np.sqrt(np.var(x, axis=axes) / np.var(y, axis=axes) - epsilon)


class Family:
    """The defaults of a per-example family; subclasses fill in the rest."""

    name = ""
    cls = None
    keras_cls = None
    stateful = False  # moving statistics: training differs from inference
    has_p = True
    centered = True
    p_cases = P_SHORT
    epsilon = 1e-3
    keras_cases = []  # (id, input shape, arguments, masked)
    numpy_cases = []  # (id, input shape, arguments)
    masked_cases = []  # (id, input shape, arguments), masks of shape[:-1]
    fit_cases = []  # (id, arguments) of the p=2 layer in `fit_model`
    low_precision_case = ((8, 64), {})
    config_shape = (6, 4, 5)

    def make(self, p=None, top_k=None, **kwargs):
        if self.has_p and p is not None:
            kwargs.update(p=p, top_k=top_k)
        return self.cls(**kwargs)

    def accepts(self, argument):
        return argument in inspect.signature(self.cls.__init__).parameters

    def degenerate_inputs(self):
        return {
            "one": (np.full((3, 1), 2.0), {}),
            "one-3d": (np.full((1, 1, 1), -7.0), {}),
            "constant": (np.stack([np.full(10, 4.0), np.arange(10.0), np.zeros(10)]), {}),
            "zeros": (np.zeros((2, 3, 4)), {}),
        }

    def fit_model(self, norm):
        return keras.Sequential(
            [
                keras.Input((5, 8)),
                keras.layers.Dense(8),
                norm,
                keras.layers.Flatten(),
                keras.layers.Dense(1),
            ]
        )

    def gaussian_sigma(self, p, top_k, scales, means, n, rng):
        """(estimated, true) sigma of statistics of n Gaussian elements each."""
        x = rng.normal(size=(len(scales), n)) * scales[:, None] + means[:, None]
        x = x.astype("float32")
        y = to_numpy(self.make(p, top_k, epsilon=1e-9)(x)).astype("float64")
        return implied_sigma(x.astype("float64"), y, -1, 1e-9), scales


class BatchFamily(Family):
    name = "batch"
    cls = tfnorms.LpBatchNormalization
    keras_cls = keras.layers.BatchNormalization
    stateful = True
    p_cases = P_LONG
    keras_cases = [
        ("default", (16, 5, 4), {}, False),
        ("axis1", (16, 5, 4), {"axis": 1, "momentum": 0.8, "epsilon": 1e-2}, False),
        ("nocenter", (16, 5, 4), {"center": False}, False),
        ("noscale", (16, 5, 4), {"scale": False, "momentum": 0.0}, False),
        ("mask", (4, 9, 3), {"momentum": 0.5}, True),
        ("mask-axis1", (4, 9, 3), {"axis": 1, "momentum": 0.5}, True),
        ("renorm", (16, 5, 4), {"renorm": True, "momentum": 0.8, "renorm_momentum": 0.7}, False),
        (
            "renorm-clipped-axis1",
            (16, 5, 4),
            {
                "renorm": True,
                "axis": 1,
                "center": False,
                "renorm_clipping": {"rmax": 1.2, "dmax": 0.1},
            },
            False,
        ),
        ("renorm-mask", (4, 9, 3), {"renorm": True, "renorm_clipping": {"rmin": 0.9}}, True),
    ]
    numpy_cases = [("last", (8, 4, 3), {"momentum": 0.5})]
    masked_cases = [
        ("last", (5, 6, 3), {"momentum": 0.5}),
        ("axis1", (5, 6, 3), {"axis": 1, "momentum": 0.5}),
    ]
    fit_cases = [
        ("plain", {"momentum": 0.9}),
        (
            "renorm",
            {"momentum": 0.9, "renorm": True, "renorm_clipping": {"rmax": 1.5, "dmax": 0.5}},
        ),
    ]
    low_precision_case = ((64, 4), {"momentum": 0.0})

    def configured_layers(self):
        return [
            tfnorms.LpBatchNormalization(),
            tfnorms.LpBatchNormalization(
                p=1.5,
                axis=1,
                momentum=0.9,
                epsilon=1e-2,
                gamma_initializer="random_uniform",
                beta_initializer=keras.initializers.Constant(0.1),
                gamma_regularizer=keras.regularizers.L2(1e-3),
                beta_constraint=keras.constraints.MaxNorm(2.0),
                synchronized=True,
                low_precision=True,
            ),
            tfnorms.LpBatchNormalization(p="inf", top_k=3, center=False, scale=False),
            tfnorms.LpBatchNormalization(
                p=3,
                renorm=True,
                renorm_clipping={"rmax": 2.0, "dmax": 1.0},
                renorm_momentum=0.9,
                moving_variance_initializer="random_uniform",
            ),
            tfnorms.L1BatchNormalization(moving_variance_initializer="random_uniform"),
            tfnorms.LinfBatchNormalization(top_k=2, renorm=True),
        ]

    def reference(self, x, kwargs, p, top_k, weights, mask=None):
        mask = None if mask is None else mask[..., None]
        return ref.lp_batch_norm(
            x,
            kwargs.get("axis", -1),
            p,
            top_k,
            weights.get("gamma"),
            weights.get("beta"),
            kwargs.get("epsilon", self.epsilon),
            mask=mask,
        )[0]

    def check_moving(self, layer, x, kwargs, p, top_k, weights, mask=None):
        """After one training step: the moving statistics, and inference by them."""
        axis, momentum = kwargs.get("axis", -1), kwargs["momentum"]
        mean, variance = ref.lp_statistics(
            x, axis, p, top_k, None if mask is None else mask[..., None]
        )
        moving_mean, moving_variance = to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)
        np.testing.assert_allclose(
            moving_mean, momentum * weights["moving_mean"] + (1 - momentum) * mean
        )
        np.testing.assert_allclose(
            moving_variance, momentum * weights["moving_variance"] + (1 - momentum) * variance
        )
        want = ref.normalize(
            x,
            moving_mean,
            moving_variance,
            axis,
            weights.get("gamma"),
            weights.get("beta"),
            kwargs.get("epsilon", self.epsilon),
        )
        np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-7, atol=1e-9)

    def degenerate_inputs(self):
        return {
            "one": (np.full((1, 3), 2.0), {"momentum": 0.5}),
            "one-4d": (np.full((1, 1, 1, 3), -7.0), {"momentum": 0.5}),
            "constant": (
                np.stack([np.full(10, 4.0), np.arange(10.0), np.zeros(10)], axis=1),
                {"momentum": 0.5},
            ),
            "all-equal": (np.ones((6, 2, 2)), {"momentum": 0.5}),
        }

    def fit_model(self, norm):
        return keras.Sequential(
            [keras.Input((6,)), keras.layers.Dense(8), norm, keras.layers.Dense(1)]
        )

    def gaussian_sigma(self, p, top_k, scales, means, n, rng):
        x = (rng.normal(size=(n, len(scales))) * scales + means).astype("float32")
        layer = self.make(p, top_k, momentum=0.0)
        layer(x, training=True)
        return np.sqrt(to_numpy(layer.moving_variance)), scales


class MeanOnlyFamily(BatchFamily):
    name = "mean_only"
    cls = tfnorms.MeanOnlyBatchNormalization
    keras_cls = None
    has_p = False
    p_cases = [(None, None)]
    keras_cases = []
    fit_cases = []
    numpy_cases = [("axis1", (6, 5, 4), {"momentum": 0.25, "axis": 1})]
    masked_cases = [
        ("axis1", (5, 6, 3), {"axis": 1, "momentum": 0.5}),
        ("last", (5, 6, 3), {"momentum": 0.5}),
    ]

    def configured_layers(self):
        return [
            tfnorms.MeanOnlyBatchNormalization(axis=1, beta_regularizer="l2", momentum=0.5),
            tfnorms.MeanOnlyBatchNormalization(center=False, moving_mean_initializer="ones"),
        ]

    def reference(self, x, kwargs, p, top_k, weights, mask=None):
        axis = kwargs.get("axis", -1)
        mean, _ = ref.lp_statistics(x, axis, 2.0, None, None if mask is None else mask[..., None])
        return ref.affine(ref.affine(x, None, -mean, axis), None, weights.get("beta"), axis)

    def check_moving(self, layer, x, kwargs, p, top_k, weights, mask=None):
        axis, momentum = kwargs.get("axis", -1), kwargs["momentum"]
        mean, _ = ref.lp_statistics(x, axis, 2.0, None, None if mask is None else mask[..., None])
        moving_mean = to_numpy(layer.moving_mean)
        np.testing.assert_allclose(
            moving_mean, momentum * weights["moving_mean"] + (1 - momentum) * mean
        )
        want = ref.affine(x, None, weights.get("beta", 0.0) - moving_mean, axis)
        np.testing.assert_allclose(to_numpy(layer(x)), want, rtol=1e-12, atol=1e-12)


class LayerFamily(Family):
    name = "layer"
    cls = tfnorms.LpLayerNormalization
    keras_cls = keras.layers.LayerNormalization
    keras_cases = [
        ("default", (4, 5, 6), {}, False),
        ("axes12", (4, 5, 6), {"axis": [1, 2], "epsilon": 1e-2}, False),
        ("axis1", (4, 5, 6), {"axis": 1}, False),
        ("nocenter", (4, 5, 6), {"center": False}, False),
        ("noscale", (4, 5, 6), {"scale": False, "epsilon": 1e-5}, False),
    ]
    numpy_cases = [("last", (3, 4, 5), {})]
    masked_cases = [("time", (4, 6, 3), {"axis": [1, 2]})]
    fit_cases = [("plain", {})]

    def configured_layers(self):
        return [
            tfnorms.LpLayerNormalization(),
            tfnorms.LpLayerNormalization(
                p=1.5,
                axis=[1, 2],
                epsilon=1e-2,
                gamma_initializer="random_uniform",
                beta_initializer=keras.initializers.Constant(0.1),
                gamma_regularizer=keras.regularizers.L2(1e-3),
                beta_constraint=keras.constraints.MaxNorm(2.0),
                low_precision=True,
            ),
            tfnorms.LpLayerNormalization(p="inf", top_k=3, center=False, scale=False),
            tfnorms.LpLayerNormalization(p="inf", rms_scaling=True, axis=1),
            tfnorms.L1LayerNormalization(rms_scaling=True),
        ]

    def reference(self, x, kwargs, p, top_k, weights, mask=None):
        axis = kwargs.get("axis", -1)
        return pref.reference_layer_norm(
            x,
            axis if isinstance(axis, list) else [axis],
            p,
            top_k,
            weights.get("gamma", weights.get("scale")),
            weights.get("beta"),
            kwargs.get("epsilon", self.epsilon),
            mask=None if mask is None else mask[..., None],
            rms=not self.centered,
        )


class RMSFamily(LayerFamily):
    name = "rms"
    cls = tfnorms.LpRMSNormalization
    keras_cls = keras.layers.RMSNormalization
    centered = False
    epsilon = 1e-6
    keras_cases = [
        ("default", (4, 5, 6), {}, False),
        ("axes12", (4, 5, 6), {"axis": [1, 2]}, False),
        ("epsilon", (4, 5, 6), {"epsilon": 1e-3}, False),
    ]
    numpy_cases = [("last", (3, 4, 5), {"epsilon": 1e-3})]

    def configured_layers(self):
        return [
            tfnorms.LpRMSNormalization(),
            tfnorms.LpRMSNormalization(
                p="inf",
                top_k=2,
                axis=[1, 2],
                epsilon=1e-3,
                gamma_regularizer="l2",
                gamma_constraint=keras.constraints.NonNeg(),
            ),
            tfnorms.LpRMSNormalization(p=1, low_precision=True, gamma_initializer="random_uniform"),
        ]

    def gaussian_sigma(self, p, top_k, scales, means, n, rng):
        return super().gaussian_sigma(p, top_k, scales, np.zeros_like(means), n, rng)


class GroupFamily(Family):
    name = "group"
    cls = tfnorms.LpGroupNormalization
    keras_cls = keras.layers.GroupNormalization
    keras_cases = [
        ("g4", (4, 5, 8), {"groups": 4}, False),
        ("channels-first", (4, 8, 5), {"groups": 2, "axis": 1}, False),
        ("4d", (2, 3, 3, 8), {"groups": 4, "epsilon": 1e-2}, False),
        ("instance-nocenter", (4, 5, 8), {"groups": -1, "center": False}, False),
        ("g1-noscale", (4, 5, 8), {"groups": 1, "scale": False}, False),
        ("2d", (6, 8), {"groups": 2}, False),
    ]
    numpy_cases = [
        ("last", (2, 3, 6), {"groups": 3}),
        ("channels-first", (2, 4, 3), {"groups": 2, "axis": 1}),
    ]
    masked_cases = [("time", (3, 5, 6), {"groups": 3})]
    fit_cases = [("g4", {"groups": 4})]
    low_precision_case = ((4, 16, 8), {"groups": 4})
    config_shape = (6, 5, 10)

    def configured_layers(self):
        return [
            tfnorms.LpGroupNormalization(2),
            tfnorms.LpGroupNormalization(
                groups=-1,
                p=1.5,
                axis=1,
                epsilon=1e-2,
                gamma_initializer="random_uniform",
                beta_initializer=keras.initializers.Constant(0.1),
                gamma_regularizer=keras.regularizers.L2(1e-3),
                beta_constraint=keras.constraints.MaxNorm(2.0),
                low_precision=True,
            ),
            tfnorms.LpGroupNormalization(5, p="inf", top_k=3, center=False, scale=False),
            tfnorms.LpGroupNormalization(1, p=1),
        ]

    def make(self, p=None, top_k=None, **kwargs):
        kwargs.setdefault("groups", 2)
        return super().make(p, top_k, **kwargs)

    def reference(self, x, kwargs, p, top_k, weights, mask=None):
        return pref.reference_group_norm(
            x,
            kwargs.get("groups", 2),
            kwargs.get("axis", -1),
            p,
            top_k,
            weights.get("gamma"),
            weights.get("beta"),
            kwargs.get("epsilon", self.epsilon),
            mask=mask,
        )

    def degenerate_inputs(self):
        return {
            "one": (np.full((3, 4), 2.0), {"groups": -1}),
            "one-4d": (np.full((1, 1, 1, 2), -7.0), {"groups": 2}),
            "constant": (np.stack([np.full(8, 4.0), np.arange(8.0)]), {"groups": 2}),
            "zeros": (np.zeros((2, 3, 4)), {"groups": 2}),
        }

    def gaussian_sigma(self, p, top_k, scales, means, n, rng):
        """Two examples; group g holds two channels of scale scales[g]."""
        k = len(scales)
        x = rng.normal(size=(2, n // 2, 2 * k)) * np.repeat(scales, 2) + np.repeat(means, 2)
        x = x.astype("float32")
        y = to_numpy(self.make(p, top_k, groups=k, epsilon=1e-9)(x)).astype("float64")
        grouped = (2, n // 2, k, 2)
        sigma = implied_sigma(
            x.astype("float64").reshape(grouped), y.reshape(grouped), (1, 3), 1e-9
        )
        return sigma, np.broadcast_to(scales, sigma.shape)


FAMILIES = [BatchFamily(), MeanOnlyFamily(), LayerFamily(), RMSFamily(), GroupFamily()]
WITH_P = [f for f in FAMILIES if f.has_p]
