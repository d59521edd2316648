"""The image preprocessing that belongs to each backbone, so that nobody wires a backbone to its
normalisation by hand.

Normalisation per backbone:

* packaged hybrid EfficientNet-Lite0 (`sbir_hybrid_efficientnet`): mean 127/255, std 128/255 per
  channel. Its weights were converted from the TF EfficientNet-Lite release, whose preprocessing is
  `(x - 127) / 128` on 0-255 pixels; the `efficientnet-lite-pytorch` README shows the ImageNet
  mean/std instead, but on real photos the TF values match the first BatchNorm's running statistics
  far better and classify better (ImageNet top-1 on 144 sbir-mini photos of ImageNet classes: 78%
  vs 65% with the ImageNet mean/std).
* ViT, DINO ViT and DINOv2: ImageNet mean/std.
* PVT-v2 (the FG-SBIR backbone, `OpenGVLab/pvt_v2_*`): ImageNet mean/std, its pre-training normalisation.
* CLIP vision: the OpenAI CLIP mean/std.

Images are resized to a square of the backbone's input size with bicubic resampling and converted to
RGB (sketches are often greyscale).
"""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig
from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from hf_sbir.backbones.configuration_hybrid_efficientnet import HybridEfficientNetConfig
from hf_sbir.backbones.modeling_backbones import backbone_config_from_dict

HYBRID_IMAGE_MEAN = [127.0 / 255.0] * 3
HYBRID_IMAGE_STD = [128.0 / 255.0] * 3
IMAGENET_MEAN = list(IMAGENET_DEFAULT_MEAN)
IMAGENET_STD = list(IMAGENET_DEFAULT_STD)
CLIP_MEAN = list(OPENAI_CLIP_MEAN)
CLIP_STD = list(OPENAI_CLIP_STD)

# model_type -> (mean, std)
BACKBONE_NORMALISATION = {
    HybridEfficientNetConfig.model_type: (HYBRID_IMAGE_MEAN, HYBRID_IMAGE_STD),
    "vit": (IMAGENET_MEAN, IMAGENET_STD),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD),
    "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD),
    "pvt_v2": (IMAGENET_MEAN, IMAGENET_STD),
    "clip_vision_model": (CLIP_MEAN, CLIP_STD),
    "clip": (CLIP_MEAN, CLIP_STD),
}
# DINOv2 configs say 518 (their pre-training size) but the models are used at 224.
_DEFAULT_SIZE = {"dinov2": 224, "dinov2_with_registers": 224}
_BICUBIC = 3  # PIL.Image.Resampling.BICUBIC


def _backbone_config(backbone_or_config) -> PretrainedConfig:
    if isinstance(backbone_or_config, nn.Module):
        backbone_or_config = backbone_or_config.config
    config = backbone_config_from_dict(backbone_or_config)
    if config.model_type == "clip":
        config = config.vision_config
    return config


def backbone_normalisation(backbone_or_config) -> tuple[list[float], list[float]]:
    """(mean, std) expected by a backbone, given the backbone, its config or its config dict."""
    config = _backbone_config(backbone_or_config)
    if config.model_type not in BACKBONE_NORMALISATION:
        raise ValueError(
            f"No known normalisation for backbone model_type {config.model_type!r}; "
            f"known: {sorted(BACKBONE_NORMALISATION)}."
        )
    mean, std = BACKBONE_NORMALISATION[config.model_type]
    return list(mean), list(std)


def image_processor_for_backbone(backbone_or_config, image_size: int | None = None):
    """A configured `ViTImageProcessor` (square resize, rescale to [0, 1], the backbone's mean/std) for a
    backbone, its config, or its config dict.

    Args:
        backbone_or_config: a backbone module (anything with `.config`), a backbone config, or a dict with
            `model_type`.
        image_size (`int`, *optional*): input side in pixels; defaults to the config's `image_size`
            (224 for DINOv2).

    Returns the PIL-backed `ViTImageProcessorPil` (it saves as `ViTImageProcessor`), also when torchvision is
    installed: torchvision's resize differs slightly, and a model must see the same numbers on every machine
    (and the same as its exported `SbirImageProcessor`, which is PIL-based).
    """
    config = _backbone_config(backbone_or_config)
    mean, std = backbone_normalisation(config)
    size = image_size or _DEFAULT_SIZE.get(config.model_type) or getattr(config, "image_size", None) or 224
    kwargs = dict(
        do_resize=True,
        size={"height": int(size), "width": int(size)},
        resample=_BICUBIC,
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=mean,
        image_std=std,
        do_convert_rgb=True,
    )
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(**kwargs)


__all__ = [
    "BACKBONE_NORMALISATION",
    "CLIP_MEAN",
    "CLIP_STD",
    "HYBRID_IMAGE_MEAN",
    "HYBRID_IMAGE_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "backbone_normalisation",
    "image_processor_for_backbone",
]
