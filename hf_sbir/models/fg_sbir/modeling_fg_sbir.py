"""FG-SBIR model, the stronger fine-grained baseline (Sain et al., CVPR 2023; poster "Framework").

One encoder embeds sketches and photos into one space. The encoder is transformers' PVT-v2
(`PvtV2Model`, its modules and state-dict keys untouched) run through the poster's "Modified PVT
block": a learnable distillation token travels with the patch tokens through every block.

    stage i:  [token, patches] -> blocks -> LayerNorm
              patches: reshape to a map -> next stage's overlapping patch embedding (conv)
              token:   "Linear + Norm" to the next stage's width (it has no place in a conv)

Inside a block, PVT's spatial-reduction attention (SRA) builds its keys/values by reshaping the
token sequence to an H x W map and reducing it with a strided conv (or pooling, in linear mode) —
an extra token cannot go through that reshape. So the token is split off first: queries come from
every token, keys/values are `[token, SR(patches)]`, so the token attends to the (reduced) spatial
tokens and itself, and the spatial tokens also attend to it. The feed-forward's depth-wise conv
(PVT-v2's positional encoding) is applied to the spatial tokens only; the token skips it (it has no
position). With no token the forward is exactly `PvtV2Model`'s.

Heads ("Linear + Norm"): the retrieval embedding is `LayerNorm(Linear(mean of the final spatial
tokens))`, the distillation embedding the same kind of head on the token's final state; both are
L2-normalised, so Euclidean triplet distances and the cosine scores of retrieval agree.

The packaged hybrid EfficientNet-Lite0 is the offline alternative: it takes extra tokens natively,
and its CLS state replaces the mean of the spatial tokens.

This file is bundled flat into saved model folders for `trust_remote_code` users: it imports package
modules only in the one-line absolute form (see `hf_sbir/modeling_utils.py`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PvtV2Model
from transformers.utils import ModelOutput

from hf_sbir.backbones.modeling_backbones import build_backbone
from hf_sbir.backbones.outputs import TokenBackboneOutput
from hf_sbir.modeling_utils import SbirPreTrainedModel, check_pixel_values
from hf_sbir.models.fg_sbir.configuration_fg_sbir import PVT_MODEL_TYPE, FGSBIRConfig

logger = logging.getLogger("hf_sbir")

# The hub PVT-v2 checkpoint tried by `from_backbone()` when the Hub is reachable (the poster names PVT,
# not a size; b2 is our choice).
DEFAULT_PVT_CHECKPOINT = "OpenGVLab/pvt_v2_b2"
PACKAGED_NAMES = ("packaged", "sbir_hybrid_efficientnet", "efficientnet-lite0")


@dataclass
class FGSBIROutput(ModelOutput):
    """Output of `FGSBIRModel`.

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`):
            The retrieval embedding, L2-normalised; sketches and photos share the space.
        distillation_embeddings (`torch.FloatTensor` of shape `(batch_size, embedding_dim)`, *optional*):
            The distillation token's embedding, L2-normalised (None without the token). Knowledge distillation
            matches pairwise distances in this space to the teacher's.
        distillation_token_state (`torch.FloatTensor` of shape `(batch_size, backbone_hidden_size)`, *optional*):
            The distillation token's final state in the backbone (after the last stage's norm).
        pooled_output (`torch.FloatTensor` of shape `(batch_size, backbone_hidden_size)`):
            The backbone's image representation in the same pass: mean of the final spatial tokens (PVT) or the
            CLS state (hybrid).
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, backbone_hidden_size)`, *optional*):
            All final token states, returned with `output_hidden_states=True`. PVT: `[token, h*w patches]`;
            hybrid: `[CLS, token, patches]`.
    """

    embeddings: torch.FloatTensor | None = None
    distillation_embeddings: torch.FloatTensor | None = None
    distillation_token_state: torch.FloatTensor | None = None
    pooled_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


# -- the modified PVT block ---------------------------------------------------------------------------
def _pvt_attention_with_tokens(attention, hidden_states, num_tokens: int, height: int, width: int):
    """`PvtV2SelfAttention` with `num_tokens` extra tokens at the front of `hidden_states` (B, n + H*W, C).

    Queries: every token. Keys/values: the extra tokens (as they are) followed by PVT's spatially reduced
    patch tokens. Same operations, in the same order, as transformers' forward when `num_tokens == 0`."""
    batch_size, seq_len, num_channels = hidden_states.shape
    query_layer = attention.transpose_for_scores(attention.query(hidden_states))
    tokens, spatial = hidden_states[:, :num_tokens], hidden_states[:, num_tokens:]
    if attention.linear_attention:
        spatial = spatial.permute(0, 2, 1).reshape(batch_size, num_channels, height, width)
        spatial = attention.spatial_reduction(attention.pool(spatial)).reshape(batch_size, num_channels, -1).permute(0, 2, 1)
        spatial = attention.act(attention.layer_norm(spatial))
    elif attention.spatial_reduction_ratio > 1:
        spatial = spatial.permute(0, 2, 1).reshape(batch_size, num_channels, height, width)
        spatial = attention.spatial_reduction(spatial).reshape(batch_size, num_channels, -1).permute(0, 2, 1)
        spatial = attention.layer_norm(spatial)
    key_value = torch.cat([tokens, spatial], dim=1) if num_tokens else spatial
    key_layer = attention.transpose_for_scores(attention.key(key_value))
    value_layer = attention.transpose_for_scores(attention.value(key_value))
    attention_scores = torch.matmul(query_layer, key_layer.transpose(-1, -2))
    attention_scores = attention_scores / math.sqrt(attention.attention_head_size)
    attention_probs = attention.attn_drop(nn.functional.softmax(attention_scores, dim=-1))
    context = (attention_probs @ value_layer).transpose(1, 2).reshape(batch_size, seq_len, num_channels)
    return attention.proj_drop(attention.proj(context))


def _pvt_ffn_with_tokens(mlp, hidden_states, num_tokens: int, height: int, width: int):
    """`PvtV2ConvFeedForwardNetwork` whose depth-wise conv (positional encoding) sees the patch tokens only."""
    hidden_states = mlp.relu(mlp.dense1(hidden_states))
    tokens, spatial = hidden_states[:, :num_tokens], hidden_states[:, num_tokens:]
    spatial = mlp.dwconv(spatial.contiguous(), height, width)
    hidden_states = torch.cat([tokens, spatial], dim=1) if num_tokens else spatial
    hidden_states = mlp.dropout(mlp.intermediate_act_fn(hidden_states))
    return mlp.dropout(mlp.dense2(hidden_states))


def _pvt_block_with_tokens(block, hidden_states, num_tokens: int, height: int, width: int):
    """`PvtV2BlockLayer` (pre-norm attention and feed-forward, stochastic depth) carrying extra tokens."""
    attention_output = _pvt_attention_with_tokens(block.attention, block.layer_norm_1(hidden_states), num_tokens, height, width)
    hidden_states = block.drop_path(attention_output) + hidden_states
    mlp_output = _pvt_ffn_with_tokens(block.mlp, block.layer_norm_2(hidden_states), num_tokens, height, width)
    return hidden_states + block.drop_path(mlp_output)


class TokenProjection(nn.Module):
    """"Linear + Norm": moves the extra tokens to the next stage's width, (B, n, C_i) -> (B, n, C_{i+1})."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-6):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.layer_norm = nn.LayerNorm(out_dim, eps=eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.linear(tokens))


class PvtV2TokenBackbone(nn.Module):
    """transformers' `PvtV2Model` run with the modified PVT blocks (module docstring), with the package's
    `TokenBackbone` contract:

        out = backbone(pixel_values, extra_tokens)   # extra_tokens (n, hidden_sizes[0]), shared over the batch
        out.last_hidden_state   # (B, n + h*w, hidden_sizes[-1]): [extra tokens, final patches], normalised
        out.pooled_output       # (B, hidden_sizes[-1]) mean of the final patch tokens (PVT has no CLS)
        out.extra_token_states  # (B, n, hidden_sizes[-1]) or None

    Args:
        model (`PvtV2Model`): built from a config or pretrained; its state-dict keys stay under `model.`.
        carry_tokens (`bool`, *optional*, defaults to `True`): build the "Linear + Norm" token projections between
            stages. Without them (no parameter left unused under DDP) only a single-stage PVT takes extra tokens.
    """

    def __init__(self, model: PvtV2Model, carry_tokens: bool = True):
        super().__init__()
        self.model = model
        self.config = model.config
        self.hidden_size = model.config.hidden_sizes[-1]
        self.input_size = model.config.hidden_sizes[0]
        sizes = list(model.config.hidden_sizes) if carry_tokens else []
        self.token_projections = nn.ModuleList(
            TokenProjection(sizes[i], sizes[i + 1], model.config.layer_norm_eps) for i in range(len(sizes) - 1)
        )

    def forward(self, pixel_values: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> TokenBackboneOutput:
        if extra_tokens is not None and (extra_tokens.dim() != 2 or extra_tokens.shape[-1] != self.input_size):
            raise ValueError(
                f"extra_tokens must have shape (num_tokens, {self.input_size}) (the first stage's width); "
                f"got {tuple(extra_tokens.shape)}."
            )
        batch_size = pixel_values.shape[0]
        num_tokens = 0 if extra_tokens is None else extra_tokens.shape[0]
        if num_tokens and len(self.token_projections) != len(self.model.encoder.layers) - 1:
            raise ValueError("This backbone was built with carry_tokens=False: it has no token projections between stages.")
        tokens = extra_tokens.to(pixel_values.dtype).unsqueeze(0).expand(batch_size, -1, -1) if num_tokens else None
        feature_map = pixel_values
        for index, stage in enumerate(self.model.encoder.layers):
            patches, height, width = stage.patch_embedding(feature_map)
            if num_tokens and index > 0:
                tokens = self.token_projections[index - 1](tokens)
            states = torch.cat([tokens, patches], dim=1) if num_tokens else patches
            for block in stage.blocks:
                states = _pvt_block_with_tokens(block, states, num_tokens, height, width)
            states = stage.layer_norm(states)
            tokens, patches = states[:, :num_tokens], states[:, num_tokens:]
            feature_map = patches.reshape(batch_size, height, width, -1).permute(0, 3, 1, 2).contiguous()
        return TokenBackboneOutput(
            last_hidden_state=states,
            pooled_output=patches.mean(dim=1),
            extra_token_states=tokens if num_tokens else None,
        )


def build_fg_backbone(config, carry_tokens: bool = True) -> nn.Module:
    """The backbone of an `FGSBIRConfig.backbone_config`, randomly initialised (no download)."""
    if config.model_type == PVT_MODEL_TYPE:
        return PvtV2TokenBackbone(PvtV2Model(config), carry_tokens=carry_tokens)
    return build_backbone(config)


class EmbeddingHead(nn.Module):
    """"Linear + Norm" head: (B, hidden) -> (B, embedding_dim) (L2-normalised by the model)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.layer_norm = nn.LayerNorm(out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layer_norm(self.linear(features))


# -- the model ----------------------------------------------------------------------------------------
class FGSBIRPreTrainedModel(SbirPreTrainedModel):
    config_class = FGSBIRConfig
    base_model_prefix = "fg_sbir"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        # Called on every module, leaves first. The PVT-v2 sub-model is a PreTrainedModel and gets its own
        # `_init_weights`; the hybrid flags all its tensors as initialised, which `transformers.initialization`
        # respects (as it does for loaded weights). So the Linear / LayerNorm leaves reaching the generic branches
        # are this method's heads and token projections.
        from transformers import initialization as init

        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, FGSBIRModel) and module.distillation_token is not None:
            if module.config.backbone_config.model_type == PVT_MODEL_TYPE:
                init.trunc_normal_(module.distillation_token, std=std)
            else:  # the hybrid adds its pooled CNN feature to extra tokens: they start at zero
                init.zeros_(module.distillation_token)


class FGSBIRModel(FGSBIRPreTrainedModel):
    """The FG-SBIR encoder: `model(pixel_values=images).embeddings` -> (B, embedding_dim), L2-normalised.

    Build it from a config (random initialisation, e.g. for tests) with `FGSBIRModel(config)`, from pretrained
    backbone weights with `FGSBIRModel.from_backbone("OpenGVLab/pvt_v2_b2")` (or `"packaged"` offline), or load
    a trained one with `AutoModel.from_pretrained(path_or_hub_id)`.
    """

    def __init__(self, config: FGSBIRConfig):
        super().__init__(config)
        self.backbone = build_fg_backbone(config.backbone_config, carry_tokens=config.use_distillation_token)
        hidden = config.backbone_hidden_size
        if config.use_distillation_token:
            first_width = getattr(self.backbone, "input_size", hidden)
            self.distillation_token = nn.Parameter(torch.zeros(1, first_width))
            self.distillation_head = EmbeddingHead(hidden, config.embedding_dim)
        else:
            self.distillation_token = None
            self.distillation_head = None
        self.embedding_head = EmbeddingHead(hidden, config.embedding_dim)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> FGSBIROutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Sketches or photos, processed by the model's image processor.
            output_hidden_states (`bool`, *optional*): also return every final token state.
        """
        check_pixel_values(pixel_values)
        out = self.backbone(pixel_values, extra_tokens=self.distillation_token)
        result = FGSBIROutput(
            embeddings=F.normalize(self.embedding_head(out.pooled_output), dim=-1),
            pooled_output=out.pooled_output,
            last_hidden_state=out.last_hidden_state if output_hidden_states else None,
        )
        if self.distillation_token is not None:
            result.distillation_token_state = out.extra_token_states[:, 0]
            result.distillation_embeddings = F.normalize(self.distillation_head(result.distillation_token_state), dim=-1)
        return result if return_dict is not False else result.to_tuple()

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """The backbone's own image representation without the distillation token: (B, backbone_hidden_size)."""
        check_pixel_values(pixel_values)
        return self.backbone(pixel_values).pooled_output

    @classmethod
    def from_backbone(cls, backbone_name_or_path: str | None = None, **config_kwargs) -> "FGSBIRModel":
        """Start from pretrained backbone weights.

        Args:
            backbone_name_or_path: a hub id or folder of a PVT-v2 checkpoint (e.g. `OpenGVLab/pvt_v2_b2`), or
                `"packaged"` for the offline hybrid EfficientNet-Lite0. None: `DEFAULT_PVT_CHECKPOINT` when the Hub
                is reachable or the checkpoint is cached, else the packaged hybrid (one log line says which).
            **config_kwargs: any other `FGSBIRConfig` field.
        """
        from hf_sbir.backbones.auto import locate_hub_checkpoint

        name = backbone_name_or_path
        if name is None:
            location, why = locate_hub_checkpoint(DEFAULT_PVT_CHECKPOINT)
            if location is not None:
                logger.info("FG-SBIR backbone: %s — %s.", DEFAULT_PVT_CHECKPOINT, why)
                return cls._from_pvt_checkpoint(location, DEFAULT_PVT_CHECKPOINT, config_kwargs)
            logger.warning(
                "FG-SBIR backbone: %s; using the packaged offline hybrid EfficientNet-Lite0 instead of %s.",
                why, DEFAULT_PVT_CHECKPOINT,
            )
            name = "packaged"
        if name in PACKAGED_NAMES:
            from hf_sbir.backbones.modeling_backbones import load_pretrained_backbone

            pretrained = load_pretrained_backbone("packaged")
            model = cls(FGSBIRConfig(backbone_config=pretrained.config, backbone_name_or_path="packaged", **config_kwargs))
            model.backbone.load_state_dict(pretrained.state_dict())
            return model
        location = name
        if not os.path.isdir(name):
            location, why = locate_hub_checkpoint(name)
            if location is None:
                raise OSError(
                    f"Could not load the backbone {name!r}: {why}. Pass a local PVT-v2 checkpoint folder, a reachable "
                    "hub id, or 'packaged' for the offline backbone."
                )
        return cls._from_pvt_checkpoint(location, name, config_kwargs)

    @classmethod
    def _from_pvt_checkpoint(cls, location: str, name: str, config_kwargs: dict) -> "FGSBIRModel":
        pvt = PvtV2Model.from_pretrained(location)
        if pvt.config.model_type != PVT_MODEL_TYPE:
            raise ValueError(f"{name!r} is a {pvt.config.model_type!r} checkpoint; FG-SBIR takes PVT-v2 or 'packaged'.")
        model = cls(FGSBIRConfig(backbone_config=pvt.config, backbone_name_or_path=name, **config_kwargs))
        model.backbone.model.load_state_dict(pvt.state_dict())
        return model




__all__ = [
    "DEFAULT_PVT_CHECKPOINT",
    "EmbeddingHead",
    "FGSBIRModel",
    "FGSBIROutput",
    "FGSBIRPreTrainedModel",
    "PvtV2TokenBackbone",
    "TokenProjection",
    "build_fg_backbone",
]
