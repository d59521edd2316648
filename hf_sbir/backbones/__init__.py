"""Image backbones: hub ViT-family models and the packaged offline hybrid EfficientNet-Lite0, one
contract (`TokenBackbone`), one resolver, and the preprocessing that belongs to each.

Importing this package does not import `efficientnet_lite_pytorch`; it is loaded when a hybrid is built.
"""

from hf_sbir.backbones.auto import ResolvedBackbone, resolve_backbone
from hf_sbir.backbones.configuration_hybrid_efficientnet import HybridEfficientNetConfig
from hf_sbir.backbones.modeling_backbones import (
    TokenBackbone,
    TokenBackboneOutput,
    backbone_config_from_dict,
    build_backbone,
    load_pretrained_backbone,
)
from hf_sbir.backbones.modeling_hybrid_efficientnet import HybridEfficientNetBackbone
from hf_sbir.backbones.processing import (
    CLIP_MEAN,
    CLIP_STD,
    HYBRID_IMAGE_MEAN,
    HYBRID_IMAGE_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    backbone_normalisation,
    image_processor_for_backbone,
)

__all__ = [
    "CLIP_MEAN",
    "CLIP_STD",
    "HYBRID_IMAGE_MEAN",
    "HYBRID_IMAGE_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "HybridEfficientNetBackbone",
    "HybridEfficientNetConfig",
    "ResolvedBackbone",
    "TokenBackbone",
    "TokenBackboneOutput",
    "backbone_config_from_dict",
    "backbone_normalisation",
    "build_backbone",
    "image_processor_for_backbone",
    "load_pretrained_backbone",
    "resolve_backbone",
]
