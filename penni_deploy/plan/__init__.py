"""The layer plan that passes, kernels and tuning all use: plain data, importing none of them.

- ``geometry``: ``ConvGeometry`` (a conv's shape) and the (channel, basis) map bookkeeping;
- ``epilogue``: ``Epilogue`` (bias / residual / ReLU after the accumulation);
- ``layers``: ``ConvChain`` (one fused conv layer) and ``PenniLayerPlan`` (what its PENNI kernels compute).
"""

from .epilogue import Epilogue
from .geometry import ConvGeometry, group_maps_by_channel
from .layers import (
    DENSE_COMPOSITE,
    PENNI_COMPOSITE,
    CoefFirstPlan,
    ConvChain,
    PenniLayerPlan,
    dense_as_penni,
    plan_penni_layer,
)

__all__ = [
    "DENSE_COMPOSITE",
    "PENNI_COMPOSITE",
    "CoefFirstPlan",
    "ConvChain",
    "ConvGeometry",
    "Epilogue",
    "PenniLayerPlan",
    "dense_as_penni",
    "group_maps_by_channel",
    "plan_penni_layer",
]
