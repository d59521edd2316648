"""Sketch-an-Anchor model (Ribeiro & Ponti; paper §3.2-3.5, Fig. 2).

One network embeds sketches and photos into the same space: a ViT-family backbone whose input
sequence carries two extra learnable tokens, RTR_word and RTR_visual; each token's output goes
through a gated linear projection (p_w, p_v; word- and visual-anchored representations), and a
Sukhbaatar-style self-attention layer aggregates the two token outputs into the final embedding.
The GCN that adapts the Semantic Anchors is part of the model (it is trained with it), but it is
only run during training (`adapt_anchors`): retrieval needs `model(pixel_values).embeddings` alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from hf_sbir.anchors.gcn import AdaptedAnchors, AnchorGCN
from hf_sbir.backbones.modeling_backbones import build_backbone
from hf_sbir.modeling_utils import SbirPreTrainedModel, check_pixel_values
from hf_sbir.models.sketch_an_anchor.configuration_sketch_an_anchor import SketchAnAnchorConfig


@dataclass
class SketchAnAnchorOutput(ModelOutput):
    """Output of `SketchAnAnchorModel`.

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            Final retrieval embedding r = sa(v(x)_w, v(x)_v), L2-normalised. Sketches and photos share the space.
        word_embeddings (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            r^w = p_w(v(x)_w), L2-normalised: the representation anchored to the word anchors.
        visual_embeddings (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            r^v = p_v(v(x)_v), L2-normalised: the representation anchored to the visual anchors.
        word_token_state (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Raw backbone output of the RTR_word token.
        visual_token_state (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            Raw backbone output of the RTR_visual token.
        aggregation_weights (`torch.FloatTensor` of shape `(batch_size, 2)`):
            Self-attention weights given to the word and visual token outputs.
        image_features (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The backbone's CLS state in the same pass.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            All token states, returned when `output_hidden_states=True`.
        adapted_word_anchors (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*):
            GCN output for the word anchors, when `word_anchors` were passed (training).
        adapted_visual_anchors (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*):
            GCN output for the visual anchors, when `visual_anchors` were passed (training).
    """

    embeddings: torch.FloatTensor | None = None
    word_embeddings: torch.FloatTensor | None = None
    visual_embeddings: torch.FloatTensor | None = None
    word_token_state: torch.FloatTensor | None = None
    visual_token_state: torch.FloatTensor | None = None
    aggregation_weights: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    adapted_word_anchors: torch.FloatTensor | None = None
    adapted_visual_anchors: torch.FloatTensor | None = None


class GatedLinearProjection(nn.Module):
    """Gated linear projection (context gating, Miech et al.): y = Wx + b; out = y * sigmoid(W_g y + b_g).

    x (B, in_dim) -> (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.linear(x)
        return y * torch.sigmoid(self.gate(y))


class SelfAttentionAggregation(nn.Module):
    """Sukhbaatar et al. (end-to-end memory networks) attention as a learned, input-dependent weighted
    average: memory m_i = A h_i, output vectors c_i = C h_i, weights p = softmax(u . m_i) with a learned
    query u, result o = sum_i p_i c_i.

    states (B, K, hidden) -> (output (B, out_dim), weights (B, K))."""

    def __init__(self, hidden_size: int, out_dim: int):
        super().__init__()
        self.key = nn.Linear(hidden_size, out_dim)
        self.value = nn.Linear(hidden_size, out_dim)
        self.query = nn.Parameter(torch.zeros(out_dim))

    def forward(self, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.key(states) @ self.query / self.query.shape[0] ** 0.5
        weights = torch.softmax(scores, dim=-1)
        return (weights.unsqueeze(-1) * self.value(states)).sum(dim=1), weights


class SketchAnAnchorPreTrainedModel(SbirPreTrainedModel):
    config_class = SketchAnAnchorConfig
    base_model_prefix = "sketch_an_anchor"
    supports_gradient_checkpointing = False

    @torch.no_grad()
    def _init_weights(self, module):
        # Only the modules this method adds; backbones initialise themselves (pretrained or from config).
        std = self.config.initializer_range
        if isinstance(module, (GatedLinearProjection, SelfAttentionAggregation, AnchorGCN)):
            for sub in module.modules():
                if isinstance(sub, nn.Linear):
                    nn.init.trunc_normal_(sub.weight, std=std)
                    if sub.bias is not None:
                        nn.init.zeros_(sub.bias)
            if isinstance(module, SelfAttentionAggregation):
                nn.init.trunc_normal_(module.query, std=std)
        elif isinstance(module, SketchAnAnchorModel):
            nn.init.trunc_normal_(module.rtr_tokens, std=std)


class SketchAnAnchorModel(SketchAnAnchorPreTrainedModel):
    """Sketch-an-Anchor: `model(pixel_values=images).embeddings` -> (B, projection_dim), L2-normalised.

    Build it from a config (random initialisation, e.g. for tests) with `SketchAnAnchorModel(config)`,
    from a pretrained backbone with `SketchAnAnchorModel.from_backbone("facebook/dino-vits8")`, or load a
    trained one with `AutoModel.from_pretrained(path_or_hub_id)`.
    """

    def __init__(self, config: SketchAnAnchorConfig):
        super().__init__(config)
        hidden = config.backbone_config.hidden_size
        self.backbone = build_backbone(config.backbone_config)
        # RTR_word (row 0) and RTR_visual (row 1), inserted after the backbone's CLS token.
        self.rtr_tokens = nn.Parameter(torch.zeros(2, hidden))
        self.word_projection = GatedLinearProjection(hidden, config.projection_dim)
        self.visual_projection = GatedLinearProjection(hidden, config.projection_dim)
        self.aggregation = SelfAttentionAggregation(hidden, config.projection_dim)
        self.anchor_gcn = AnchorGCN(
            word_dim=config.word_anchor_dim,
            visual_dim=config.visual_anchor_dim,
            hidden_size=config.gcn_hidden_size,
            output_dim=config.projection_dim,
            num_layers=config.gcn_num_layers,
            temperature=config.anchor_similarity_temperature,
        )
        self.post_init()

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        word_anchors: torch.FloatTensor | None = None,
        visual_anchors: torch.FloatTensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> SketchAnAnchorOutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Sketches or photos, processed by the model's image processor.
            word_anchors (`torch.FloatTensor` of shape `(num_classes, word_anchor_dim)`, *optional*):
            visual_anchors (`torch.FloatTensor` of shape `(num_classes, visual_anchor_dim)`, *optional*):
                Semantic anchors for this training step; when given, the GCN runs in the same forward
                pass (one call through DDP) and the output carries the adapted anchors.
        """
        check_pixel_values(pixel_values)
        out = self.backbone(pixel_values, extra_tokens=self.rtr_tokens)
        word_state, visual_state = out.extra_token_states[:, 0], out.extra_token_states[:, 1]
        aggregated, weights = self.aggregation(out.extra_token_states)
        result = SketchAnAnchorOutput(
            embeddings=F.normalize(aggregated, dim=-1),
            word_embeddings=F.normalize(self.word_projection(word_state), dim=-1),
            visual_embeddings=F.normalize(self.visual_projection(visual_state), dim=-1),
            word_token_state=word_state,
            visual_token_state=visual_state,
            aggregation_weights=weights,
            image_features=out.pooled_output,
            last_hidden_state=out.last_hidden_state if output_hidden_states else None,
        )
        if word_anchors is not None or visual_anchors is not None:
            adapted = self.adapt_anchors(word_anchors, visual_anchors)
            result.adapted_word_anchors, result.adapted_visual_anchors = adapted.word, adapted.visual
        return result if return_dict is not False else result.to_tuple()

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """The backbone's own image representation (normalised CLS state, no RTR tokens): (B, hidden).
        Used for the visual anchors (class centres) and as the untrained-backbone baseline."""
        check_pixel_values(pixel_values)
        return self.backbone(pixel_values).pooled_output

    def adapt_anchors(self, word_anchors: torch.Tensor | None, visual_anchors: torch.Tensor | None) -> AdaptedAnchors:
        """Run the GCN (eq. 5) on word anchors (C, word_anchor_dim) and/or visual anchors (C, visual_anchor_dim)."""
        for name, anchors, dim in (
            ("word_anchors", word_anchors, self.config.word_anchor_dim),
            ("visual_anchors", visual_anchors, self.config.visual_anchor_dim),
        ):
            if anchors is not None and (anchors.ndim != 2 or anchors.shape[1] != dim):
                raise ValueError(f"{name} must have shape (num_classes, {dim}); got {tuple(anchors.shape)}.")
        if word_anchors is not None and visual_anchors is not None and word_anchors.shape[0] != visual_anchors.shape[0]:
            raise ValueError(
                f"word_anchors ({word_anchors.shape[0]} classes) and visual_anchors ({visual_anchors.shape[0]}) differ."
            )
        return self.anchor_gcn(word_anchors, visual_anchors)

    @classmethod
    def from_backbone(cls, backbone_name_or_path: str | None = None, **config_kwargs) -> "SketchAnAnchorModel":
        """Start from pretrained backbone weights — the real path for users.

        Args:
            backbone_name_or_path: a hub id or folder of a ViT-family checkpoint (the paper's is
                `facebook/dino-vits8`), or "packaged" for the offline EfficientNet-Lite0 hybrid. None picks
                automatically: the paper's checkpoint when the Hub is reachable, else the packaged one
                (one log line says which).
            **config_kwargs: any other `SketchAnAnchorConfig` field.
        """
        from hf_sbir.backbones.auto import resolve_backbone

        resolved = resolve_backbone(backbone_name_or_path)
        config = SketchAnAnchorConfig(
            backbone_config=resolved.backbone.config, backbone_name_or_path=resolved.name, **config_kwargs
        )
        model = cls(config)
        model.backbone.load_state_dict(resolved.backbone.state_dict())
        return model
