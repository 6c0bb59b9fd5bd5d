"""tfnorms: Centered Weight Normalization and Norm-matters layers for Keras 3.

Import it before `keras.saving.load_model` so that Keras finds its classes.
"""

from tfnorms._math.reduce import linf_constant, lp_constant
from tfnorms.constraints import CenteredUnitNorm, FixedNorm
from tfnorms.layers.batch_norm import (
    L1BatchNormalization,
    LinfBatchNormalization,
    LpBatchNormalization,
)
from tfnorms.layers.bounded_weight_norm import BoundedWeightNorm
from tfnorms.layers.group_norm import LpGroupNormalization
from tfnorms.layers.layer_norm import L1LayerNormalization, LpLayerNormalization
from tfnorms.layers.mean_only_batch_norm import MeanOnlyBatchNormalization
from tfnorms.layers.rms_norm import LpRMSNormalization
from tfnorms.layers.weight_norm import CenteredWeightNorm, WeightNormalization
from tfnorms.tools import convert_model, data_init, strip
from tfnorms.tools.addons import load_addons_weights

__version__ = "0.1.0"

__all__ = [
    "BoundedWeightNorm",
    "CenteredUnitNorm",
    "CenteredWeightNorm",
    "FixedNorm",
    "L1BatchNormalization",
    "L1LayerNormalization",
    "LinfBatchNormalization",
    "LpBatchNormalization",
    "LpGroupNormalization",
    "LpLayerNormalization",
    "LpRMSNormalization",
    "MeanOnlyBatchNormalization",
    "WeightNormalization",
    "__version__",
    "convert_model",
    "data_init",
    "linf_constant",
    "load_addons_weights",
    "lp_constant",
    "strip",
]
