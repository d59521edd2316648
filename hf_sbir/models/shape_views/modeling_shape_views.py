"""Shape-views model (arXiv 2306.08541): a pretrained encoder read at one layer, for instance-level
retrieval between a freehand sketch of a 3D shape and sketch-style views of many shapes.

    pixel_values (B, 3, H, W)
      -> encoder with output_hidden_states       hidden_states[0..L-1]  (see `num_feature_layers`)
      -> hidden_states[config.feature_layer]      (B, 1 + P, D) tokens or (B, C, h, w) map
      -> pooling (config.pooling; default a 4 x 4 grid of average-pooled positions)   (B, D')
      -> L2 normalisation                          embeddings; cosine similarity = dot product

Encoders: any ViT-family transformers model (ViT, DINO, DINOv2, CLIP vision; through the package's
`TokenBackbone`), transformers' `ResNetModel`, or the packaged offline hybrid EfficientNet-Lite0.
The model adds no parameters of its own: "fine-tuning" (the paper's full-model fine-tuning with a small
learning rate) changes the encoder's weights.

`model(pixel_values, output_all_layers=True)` also returns the pooled, normalised features of every
layer from the same forward pass (what `sweep_layers` uses to pick a layer).

This file is bundled flat into saved model folders for `trust_remote_code` users, so it imports package
modules only as `from hf_sbir.<path>.<module> import ...` on one line (see `hf_sbir/modeling_utils.py`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import ResNetModel
from transformers.utils import ModelOutput

from hf_sbir.backbones.modeling_backbones import build_backbone
from hf_sbir.modeling_utils import SbirPreTrainedModel, check_pixel_values
from hf_sbir.models.shape_views.configuration_shape_views import HYBRID_CNN_STAGES, RESNET_MODEL_TYPE, ShapeViewsConfig, is_token_layer, num_feature_layers

HYBRID_MODEL_TYPE = "sbir_hybrid_efficientnet"


@dataclass
class ShapeViewsOutput(ModelOutput):
    """Output of `ShapeViewsModel`.

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, feature_dim)`):
            Pooled features of the chosen layer, L2-normalised: `embeddings @ other.T` is the cosine similarity.
        features (`torch.FloatTensor` of shape `(batch_size, feature_dim)`):
            The same pooled features before normalisation.
        layer_embeddings (`tuple(torch.FloatTensor)`, *optional*):
            With `output_all_layers=True`: one `(batch_size, feature_dim_l)` L2-normalised tensor per layer
            (index = layer number), all from this forward pass; `None` for a layer the pooling does not apply
            to (`"cls"` on a CNN feature map).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*):
            With `output_hidden_states=True`: every layer's raw features, `(batch_size, tokens, hidden)` for token
            layers and `(batch_size, channels, height, width)` for CNN layers.
    """

    embeddings: torch.FloatTensor | None = None
    features: torch.FloatTensor | None = None
    layer_embeddings: tuple | None = None
    hidden_states: tuple | None = None


def num_prefix_tokens(backbone_config) -> int:
    """Tokens before the patch tokens in a token layer: CLS (+ registers for DINOv2 with registers)."""
    return 1 + int(getattr(backbone_config, "num_register_tokens", 0) or 0)


def pool_features(
    state: torch.Tensor,
    pooling: str,
    prefix_tokens: int = 1,
    grid_size: int = 4,
    token_grid: tuple[int, int] | None = None,
) -> torch.Tensor | None:
    """One vector per image from a layer's features.

    Args:
        state: `(B, L, D)` token states (CLS and `prefix_tokens - 1` other special tokens first) or a
            `(B, C, H, W)` CNN feature map.
        pooling: `"mean"` / `"max"` over positions (patch tokens or H x W), `"cls"` (token 0; token states
            only; returns None for a feature map), `"grid"` (average pooling to a `grid_size` x `grid_size` grid of
            positions, flattened: keeps the coarse layout), `"flatten"` (every position kept, flattened).
        grid_size: side of the `"grid"` pooling.
        token_grid: `(h, w)` layout of the patch tokens (for `"grid"`); default: a square.
    Returns: `(B, D')`, or None when `pooling` does not apply.
    """
    if state.dim() == 3:
        patches = state[:, prefix_tokens:] if state.shape[1] > prefix_tokens else state
        if pooling == "cls":
            return state[:, 0]
        if pooling == "mean":
            return patches.mean(dim=1)
        if pooling == "max":
            return patches.amax(dim=1)
        if pooling == "flatten":
            return patches.flatten(1)
        if pooling == "grid":
            count = patches.shape[1]
            if token_grid is None or token_grid[0] * token_grid[1] != count:
                side = math.isqrt(count)
                if side * side != count:
                    raise ValueError(f"Cannot lay {count} patch tokens out on a grid; pass token_grid=(h, w).")
                token_grid = (side, side)
            fmap = patches.transpose(1, 2).reshape(patches.shape[0], patches.shape[2], *token_grid)
            return F.adaptive_avg_pool2d(fmap, grid_size).flatten(1)
    elif state.dim() == 4:
        if pooling == "cls":
            return None
        if pooling == "mean":
            return state.mean(dim=(2, 3))
        if pooling == "max":
            return state.amax(dim=(2, 3))
        if pooling == "flatten":
            return state.flatten(1)
        if pooling == "grid":
            return F.adaptive_avg_pool2d(state, grid_size).flatten(1)
    else:
        raise ValueError(f"Layer features must be (B, L, D) or (B, C, H, W); got shape {tuple(state.shape)}.")
    raise ValueError(f"Unknown pooling {pooling!r}.")


def _block_stride(block) -> int:
    stride = block._block_args.stride
    return int(stride[0] if isinstance(stride, (list, tuple)) else stride)


def hybrid_hidden_states(backbone: nn.Module, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every layer of the packaged hybrid (numbering in `num_feature_layers`): the EfficientNet-Lite0
    stage outputs (strides 2-32), its head map, the token sequence, and each transformer layer's output —
    the same computation as `HybridEfficientNetBackbone.forward`, which only returns the last state."""
    cnn = backbone.cnn
    x = cnn._swish(cnn._bn0(cnn._conv_stem(pixel_values)))
    states: list[torch.Tensor] = []
    blocks = cnn._blocks
    for idx, block in enumerate(blocks):
        rate = cnn._global_params.drop_connect_rate
        if rate:
            rate *= float(idx) / len(blocks)
        x = block(x, drop_connect_rate=rate)
        if idx == len(blocks) - 1 or _block_stride(blocks[idx + 1]) > 1:
            states.append(x)
    if len(states) != HYBRID_CNN_STAGES:
        raise RuntimeError(f"Expected {HYBRID_CNN_STAGES} CNN stages in the hybrid backbone, found {len(states)}.")
    features = cnn._swish(cnn._bn1(cnn._conv_head(x)))
    states.append(features)
    batch, _, height, width = features.shape
    pooled = backbone.proj_pool(features.mean(dim=(2, 3))).unsqueeze(1)
    patches = backbone.proj(features.flatten(2).transpose(1, 2)) + backbone.interpolate_position_embeddings(height, width)
    hidden = backbone.dropout(torch.cat([backbone.cls_token.expand(batch, -1, -1) + pooled, patches], dim=1))
    states.append(hidden)
    for layer in backbone.layers:
        hidden = layer(hidden)
        states.append(hidden)
    return tuple(states)


def build_shape_views_backbone(backbone_config) -> nn.Module:
    """Random-init encoder from its config: `ResNetModel` for ResNet, else the package's `build_backbone`."""
    if backbone_config.model_type == RESNET_MODEL_TYPE:
        return ResNetModel(backbone_config)
    return build_backbone(backbone_config)


class ShapeViewsPreTrainedModel(SbirPreTrainedModel):
    config_class = ShapeViewsConfig
    base_model_prefix = "shape_views"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        # The model adds no parameters; encoders initialise themselves (pretrained or from config).
        pass


class ShapeViewsModel(ShapeViewsPreTrainedModel):
    """Layer-selectable, pooled, L2-normalised encoder features; cosine similarity retrieves.

    `model(pixel_values=images).embeddings` -> `(B, D)`. Build it from a config (random initialisation, e.g. for
    tests) with `ShapeViewsModel(config)`, from pretrained encoder weights with
    `ShapeViewsModel.from_backbone("facebook/dino-vitb16", feature_layer=6)` (or `"microsoft/resnet-50"`, or
    `"packaged"` offline), or load a saved one with `AutoModel.from_pretrained(path)`.
    """

    def __init__(self, config: ShapeViewsConfig):
        super().__init__(config)
        self.backbone = build_shape_views_backbone(config.backbone_config)
        self.post_init()

    @property
    def num_feature_layers(self) -> int:
        return num_feature_layers(self.config.backbone_config)

    def encoder_hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every layer's raw features in one forward pass (numbering in `num_feature_layers`)."""
        model_type = self.config.backbone_config.model_type
        if model_type == RESNET_MODEL_TYPE:
            return tuple(self.backbone(pixel_values=pixel_values, output_hidden_states=True).hidden_states)
        if model_type == HYBRID_MODEL_TYPE:
            return hybrid_hidden_states(self.backbone, pixel_values)
        kwargs = {}
        if model_type in ("vit", "clip_vision_model"):
            # checkpoints are used at resolutions other than their pre-training one.
            kwargs["interpolate_pos_encoding"] = True
        return tuple(self.backbone.model(pixel_values=pixel_values, output_hidden_states=True, **kwargs).hidden_states)

    def token_grid(self, pixel_values: torch.Tensor) -> tuple[int, int] | None:
        """(h, w) layout of the patch tokens for this input size (None for ResNet, which has no tokens)."""
        bc = self.config.backbone_config
        height, width = pixel_values.shape[-2:]
        if bc.model_type == RESNET_MODEL_TYPE:
            return None
        if bc.model_type == HYBRID_MODEL_TYPE:
            return math.ceil(height / bc.cnn_stride), math.ceil(width / bc.cnn_stride)
        patch = bc.patch_size if isinstance(bc.patch_size, int) else bc.patch_size[0]
        return height // patch, width // patch

    def _pooler(self, pooling: str, pixel_values: torch.Tensor):
        prefix = num_prefix_tokens(self.config.backbone_config)
        grid = self.token_grid(pixel_values)
        size = self.config.pooling_grid_size
        return lambda state: pool_features(state, pooling, prefix, grid_size=size, token_grid=grid)

    def _resolve_layer(self, feature_layer: int | None) -> int:
        depth = self.num_feature_layers
        layer = self.config.feature_layer if feature_layer is None else feature_layer
        if not isinstance(layer, int) or not -depth <= layer < depth:
            raise ValueError(f"feature_layer must be an integer in [{-depth}, {depth - 1}]; got {layer!r}.")
        return layer % depth

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        feature_layer: int | None = None,
        pooling: str | None = None,
        output_all_layers: bool = False,
        output_hidden_states: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> ShapeViewsOutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Sketches or sketch views, processed by `ShapeViewsImageTransform` (scale normalisation + the
                encoder's resize/normalisation).
            feature_layer (`int`, *optional*): read this layer instead of `config.feature_layer`.
            pooling (`str`, *optional*): pool with this instead of `config.pooling`.
            output_all_layers (`bool`): also return every layer's pooled, normalised features.
            output_hidden_states (`bool`): also return every layer's raw features.
        """
        check_pixel_values(pixel_values, "ShapeViewsImageTransform (drawings are converted to 3-channel RGB)")
        layer = self._resolve_layer(feature_layer)
        pooling = self.config.pooling if pooling is None else pooling
        states = self.encoder_hidden_states(pixel_values)
        pool = self._pooler(pooling, pixel_values)
        features = pool(states[layer])
        if features is None:
            raise ValueError(f"pooling={pooling!r} does not apply to layer {layer}, a CNN feature map.")
        layer_embeddings = None
        if output_all_layers:
            layer_embeddings = tuple(
                None if (pooled := pool(state)) is None else F.normalize(pooled, dim=-1)
                for state in states
            )
        result = ShapeViewsOutput(
            embeddings=F.normalize(features, dim=-1),
            features=features,
            layer_embeddings=layer_embeddings,
            hidden_states=states if output_hidden_states else None,
        )
        return result if return_dict is not False else result.to_tuple()

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.FloatTensor, feature_layer: int | None = None) -> torch.FloatTensor:
        """`(B, D)` L2-normalised features of the chosen layer (no gradients)."""
        return self(pixel_values=pixel_values, feature_layer=feature_layer).embeddings

    @staticmethod
    def similarity(query_embeddings: torch.Tensor, gallery_embeddings: torch.Tensor) -> torch.Tensor:
        """Cosine similarity matrix `(Q, G)` of two sets of embeddings (normalised again, so raw features work)."""
        return F.normalize(query_embeddings, dim=-1) @ F.normalize(gallery_embeddings, dim=-1).T

    def feature_layer_is_token_layer(self, layer: int | None = None) -> bool:
        return is_token_layer(self.config.backbone_config, self._resolve_layer(layer))

    @classmethod
    def from_backbone(cls, backbone_name_or_path: str | None = None, **config_kwargs) -> "ShapeViewsModel":
        """Start from pretrained encoder weights.

        Args:
            backbone_name_or_path: a hub id or folder of a ViT-family checkpoint (ViT, DINO, DINOv2, CLIP — a full
                CLIP checkpoint gives its vision tower) or of a transformers ResNet (`microsoft/resnet-50`), or
                `"packaged"` for the offline hybrid EfficientNet-Lite0. None picks automatically (the package's
                default hub checkpoint when reachable, else the packaged one; one log line says which).
            **config_kwargs: other `ShapeViewsConfig` fields (`feature_layer`, `pooling`, ...).
        """
        from hf_sbir.backbones.auto import PACKAGED_NAMES, resolve_backbone

        name = backbone_name_or_path
        if name is None or name in PACKAGED_NAMES:
            resolved = resolve_backbone(name)
            backbone, name = resolved.backbone, resolved.name
        else:
            backbone = _load_named_backbone(name)
        config = ShapeViewsConfig(backbone_config=backbone.config, backbone_name_or_path=name, **config_kwargs)
        model = cls(config)
        model.backbone.load_state_dict(backbone.state_dict())
        return model


def _load_named_backbone(name: str) -> nn.Module:
    """A user-named encoder checkpoint (hub id or folder): a ResNet as `ResNetModel`, anything else through
    the package's `load_pretrained_backbone`. Raises a clear `OSError` when it cannot be reached."""
    from transformers import AutoConfig

    from hf_sbir.backbones.auto import locate_hub_checkpoint
    from hf_sbir.backbones.modeling_backbones import load_pretrained_backbone

    location, why = locate_hub_checkpoint(name)
    if location is None:
        raise OSError(
            f"Could not load the backbone {name!r}: {why}. Connect to the Hub, pass a local checkpoint folder, "
            "or use 'packaged' for the offline backbone."
        )
    if AutoConfig.from_pretrained(location).model_type == RESNET_MODEL_TYPE:
        return ResNetModel.from_pretrained(location)
    return load_pretrained_backbone(location)
