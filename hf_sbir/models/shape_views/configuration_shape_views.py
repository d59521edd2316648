"""Shape-views configuration ("Fine-Tuned but Zero-Shot 3D Shape Sketch View Similarity and
Retrieval", arXiv 2306.08541): a pretrained encoder read at one chosen layer, pooled, L2-normalised,
compared by cosine similarity; optionally fine-tuned on synthetic sketches with a contrastive loss."""

from __future__ import annotations

from transformers import PretrainedConfig, ResNetConfig

from hf_sbir.backbones.modeling_backbones import backbone_config_from_dict, check_backbone_config
from hf_sbir.configuration_utils import SbirConfig

RESNET_MODEL_TYPE = "resnet"
POOLINGS = ("mean", "cls", "max", "grid", "flatten")
# The paper's best layers (its Fig. 3): ViT layer 6 and ResNet layer 3. For the packaged hybrid we
# pick its CNN stage at stride 16 (index 3), the analogue of ResNet layer 3 (our choice, not the paper's).
PAPER_FEATURE_LAYER = {"vit_family": 6, RESNET_MODEL_TYPE: 3, "sbir_hybrid_efficientnet": 3}
# Stages of the packaged hybrid's EfficientNet-Lite0 CNN exposed as layers 0-4 (see `num_feature_layers`).
HYBRID_CNN_STAGES = 5


def shape_views_backbone_config(config: PretrainedConfig | dict | None) -> PretrainedConfig:
    """`backbone_config_from_dict` plus transformers' ResNet (`{"model_type": "resnet", ...}` or a
    `ResNetConfig`), which the shared token backbones do not cover."""
    if isinstance(config, dict) and config.get("model_type") == RESNET_MODEL_TYPE:
        config = dict(config)
        config.pop("model_type")
        return ResNetConfig(**config)
    if isinstance(config, PretrainedConfig) and config.model_type == RESNET_MODEL_TYPE:
        return config
    config = backbone_config_from_dict(config)
    check_backbone_config(config)
    return config


def num_feature_layers(backbone_config: PretrainedConfig) -> int:
    """How many layers `ShapeViewsModel` exposes for this backbone (the length of its `hidden_states`):

    - ViT family (ViT, DINO, DINOv2, CLIP vision): `num_hidden_layers + 1`; layer 0 is the embedding
      output, layer i the output of transformer block i (before the final LayerNorm) — transformers'
      `hidden_states` numbering, so "ViT layer 6" is `hidden_states[6]`.
    - ResNet (`ResNetModel`): `len(depths) + 1`; layer 0 is the stem (conv + max-pool, stride 4),
      layer i the output of stage i (strides 4, 8, 16, 32) — "ResNet layer 3" is torchvision's `layer3`.
    - packaged hybrid: 0-4 are the EfficientNet-Lite0 stages at strides 2, 4, 8, 16, 32; 5 is its head
      convolution (the 1280-channel map the tokens are made from); 6 is the token sequence entering the
      transformer layers and 6 + i the output of transformer layer i (before the final LayerNorm).
    """
    model_type = backbone_config.model_type
    if model_type == RESNET_MODEL_TYPE:
        return len(backbone_config.depths) + 1
    if model_type == "sbir_hybrid_efficientnet":
        return HYBRID_CNN_STAGES + 2 + backbone_config.num_hidden_layers
    return backbone_config.num_hidden_layers + 1


def is_token_layer(backbone_config: PretrainedConfig, layer: int) -> bool:
    """Whether layer `layer` (non-negative) is a token sequence (B, L, D) rather than a feature map (B, C, H, W)."""
    model_type = backbone_config.model_type
    if model_type == RESNET_MODEL_TYPE:
        return False
    if model_type == "sbir_hybrid_efficientnet":
        return layer >= HYBRID_CNN_STAGES + 1
    return True


def default_feature_layer(backbone_config: PretrainedConfig) -> int:
    """The paper's best layer for this backbone (ViT 6, ResNet 3), clipped to the backbone's depth."""
    model_type = backbone_config.model_type
    key = model_type if model_type in PAPER_FEATURE_LAYER else "vit_family"
    return min(PAPER_FEATURE_LAYER[key], num_feature_layers(backbone_config) - 1)


class ShapeViewsConfig(SbirConfig):
    r"""
    Args:
        backbone_config (`PretrainedConfig` or `dict`, *optional*):
            The encoder: any ViT-family transformers config (ViT, DINO ViT, DINOv2, CLIP vision), a
            `ResNetConfig` (transformers' `ResNetModel`, e.g. `microsoft/resnet-50`), or the packaged offline
            `HybridEfficientNetConfig`. Defaults to the offline hybrid.
        backbone_name_or_path (`str`, *optional*):
            Where the backbone's pretrained weights came from (recorded only; a saved model carries them).
        feature_layer (`int`, *optional*):
            Which layer's features are the embedding, in the numbering of `num_feature_layers` (transformers'
            `hidden_states` index for ViT and ResNet). Negative values count from the end. Defaults to the
            paper's best: 6 for ViT-family encoders, 3 for ResNet (3 for the hybrid, its stride-16 CNN stage),
            clipped to the encoder's depth. `sweep_layers` measures every layer.
        pooling (`str`, *optional*, defaults to `"grid"`):
            How a layer's spatial features become one vector: `"grid"` (average pooling to a
            `pooling_grid_size` x `pooling_grid_size` grid of positions, flattened — keeps the coarse spatial
            layout), `"mean"` (average over all positions: the patch tokens of a token layer, excluding
            CLS/register tokens, or the H x W map of a CNN layer), `"max"`, `"cls"` (the CLS token; token layers
            only), or `"flatten"` (no pooling: every position kept; needs one input size). The paper summary in
            this repository does not state the paper's pooling. `"grid"` is our default because instance-level
            view matching needs layout: on procedural lamp views (packaged hybrid, 48 views, chance 2%), Acc@1 at
            the best layer was 17% with `"mean"`, 38% with `"grid"` (4 x 4) and 40% with `"flatten"`.
        pooling_grid_size (`int`, *optional*, defaults to 4):
            Side of the `"grid"` pooling (feature size = channels x grid_size^2).
        contrastive_temperature (`float`, *optional*, defaults to 0.07):
            tau of the contrastive cross-entropy used for fine-tuning (not given in the paper summary; the
            CLIP value).
        scale_object_fraction (`float`, *optional*, defaults to 0.85):
            Scale normalisation: the object's ink bounding box is rescaled so its longer side is this
            fraction of the canvas, identically for queries and gallery (the paper finds similar object scales
            work best). Read by `ShapeViewsImageTransform.for_model`.
        initializer_range (`float`, *optional*, defaults to 0.02):
    """

    model_type = "shape_views"

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        backbone_name_or_path: str | None = None,
        feature_layer: int | None = None,
        pooling: str = "grid",
        pooling_grid_size: int = 4,
        contrastive_temperature: float = 0.07,
        scale_object_fraction: float = 0.85,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.backbone_config = shape_views_backbone_config(backbone_config)
        depth = num_feature_layers(self.backbone_config)
        if feature_layer is None:
            feature_layer = default_feature_layer(self.backbone_config)
        if not isinstance(feature_layer, int) or isinstance(feature_layer, bool) or not -depth <= feature_layer < depth:
            raise ValueError(
                f"feature_layer must be an integer in [{-depth}, {depth - 1}] for this "
                f"{self.backbone_config.model_type} backbone ({depth} layers, see num_feature_layers); got {feature_layer!r}."
            )
        feature_layer %= depth
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}; got {pooling!r}.")
        if pooling == "cls" and not is_token_layer(self.backbone_config, feature_layer):
            raise ValueError(
                f"pooling='cls' needs a token layer, but layer {feature_layer} of this {self.backbone_config.model_type} "
                "backbone is a CNN feature map; use 'mean', 'max' or 'flatten'."
            )
        if not isinstance(pooling_grid_size, int) or isinstance(pooling_grid_size, bool) or pooling_grid_size < 1:
            raise ValueError(f"pooling_grid_size must be a positive integer; got {pooling_grid_size!r}.")
        if not contrastive_temperature > 0:
            raise ValueError(f"contrastive_temperature must be > 0; got {contrastive_temperature!r}.")
        if not 0.0 < scale_object_fraction <= 1.0:
            raise ValueError(f"scale_object_fraction must be in (0, 1]; got {scale_object_fraction!r}.")
        self.backbone_name_or_path = backbone_name_or_path
        self.feature_layer = feature_layer
        self.pooling = pooling
        self.pooling_grid_size = pooling_grid_size
        self.contrastive_temperature = contrastive_temperature
        self.scale_object_fraction = scale_object_fraction
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def num_feature_layers(self) -> int:
        return num_feature_layers(self.backbone_config)
