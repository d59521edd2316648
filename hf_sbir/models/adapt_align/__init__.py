"""Adapt and Align (Dong et al., arXiv 2305.05144): domain adapters + alignment with class text embeddings."""

from hf_sbir.models.adapt_align.configuration_adapt_align import AdaptAlignConfig
from hf_sbir.models.adapt_align.modeling_adapt_align import (
    DEFAULT_ADAPTER_TARGETS,
    AdaptAlignModel,
    AdaptAlignOutput,
    AdaptAlignPreTrainedModel,
    BottleneckAdapter,
    ResNetBackbone,
    inject_bottleneck_adapters,
)

__all__ = [
    "DEFAULT_ADAPTER_TARGETS",
    "AdaptAlignConfig",
    "AdaptAlignModel",
    "AdaptAlignOutput",
    "AdaptAlignPreTrainedModel",
    "BottleneckAdapter",
    "ResNetBackbone",
    "inject_bottleneck_adapters",
]
