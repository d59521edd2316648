"""Adapt and Align model (Dong et al., arXiv 2305.05144).

    pixel_values (sketches or photos)
      -> pre-trained backbone (ViT family / ResNet / packaged hybrid) with bottleneck domain adapters
         on the outputs of chosen modules (eq. 1: h' = h + s * W_up act(W_down h))
      -> pooled feature g (B, H)                      `image_features` (what distillation compares)
      -> linear projection to the text dimension, L2-normalised f (B, D)   `embeddings` (retrieval)
      -> with class text embeddings t (C, D): logits s * cos(f, t_c)      `logits` (eq. 2)

Domain adapters. A bottleneck adapter (Houlsby / AdaptFormer style: down-projection, non-linearity,
dropout, up-projection, residual) is applied to the output of every backbone module matched by
`config.adapter_target_modules`, which follows peft's `target_modules` rules. The up-projection starts
at zero, so an untrained adapter is the identity and the model starts as the pre-trained backbone.
Why not peft: peft 0.21 has no bottleneck adapter (its adapters re-parameterise weights: LoRA, IA3,
BOFT, ...), and a custom tuner cannot be registered without adding a member to peft's `PeftType`
enum (`register_peft_method` refuses other names), so the injection is written here, by module name,
with peft's config vocabulary. Adapters are registered in `backbone.adapters` (an `nn.ModuleDict`)
and applied through forward hooks on the targets, so the pre-trained modules and their state-dict
keys are untouched: pretrained backbone weights load as they are, and the adapters travel inside the
model's safetensors file through `save_pretrained` / `from_pretrained` (and remote code).

This file is bundled flat into saved model folders for `trust_remote_code` users, so it imports
package modules only in the one-line absolute form (see `hf_sbir/modeling_utils.py`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from hf_sbir.backbones.modeling_backbones import build_backbone
from hf_sbir.backbones.outputs import TokenBackboneOutput
from hf_sbir.losses.adapt_align import MAX_LOGIT_SCALE, alignment_logits
from hf_sbir.modeling_utils import SbirPreTrainedModel, check_pixel_values
from hf_sbir.models.adapt_align.configuration_adapt_align import RESNET_MODEL_TYPE, AdaptAlignConfig, backbone_hidden_size

# Default adapter targets per backbone model_type, with peft's matching rules (list: name equals an entry
# or ends with "." + entry; str: regex matching the whole name). Names are relative to the backbone.
DEFAULT_ADAPTER_TARGETS = {
    "vit": ["mlp.fc2"],
    "dinov2": ["mlp.fc2"],
    "dinov2_with_registers": ["mlp.fc2"],
    "clip_vision_model": ["mlp.fc2"],
    # The residual branch of every ResNet block (before the shortcut is added).
    RESNET_MODEL_TYPE: r"model\.encoder\.stages\.\d+\.layers\.\d+\.layer",
    # Every MBConv block's projection BatchNorm (before its skip connection) and every transformer layer's MLP.
    "sbir_hybrid_efficientnet": r"cnn\._blocks\.\d+\._bn2|layers\.\d+\.mlp_output",
}
_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
_ADAPTER_ATTRIBUTE = "_sbir_adapter"


@dataclass
class AdaptAlignOutput(ModelOutput):
    """Output of `AdaptAlignModel`.

    Args:
        logits (`torch.FloatTensor` of shape `(batch_size, num_classes)`, *optional*):
            Scaled cosine similarities to the class text embeddings (eq. 2), when `text_embeds` was passed.
        embeddings (`torch.FloatTensor` of shape `(batch_size, projection_dim)`):
            The aligned embedding f, L2-normalised: what retrieval compares (sketches and photos share the space).
        image_features (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The adapted backbone's pooled feature g (before the projection); distillation compares it with the
            frozen pre-trained backbone's.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`, *optional*):
            The backbone's token (or flattened feature-map) states, when `output_hidden_states=True`.
    """

    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    image_features: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None


# ---------------------------------------------------------------------------------------------------
# domain adapters
# ---------------------------------------------------------------------------------------------------


class BottleneckAdapter(nn.Module):
    """Eq. 1: h -> h + scale * up(dropout(act(down(h)))), with `up` initialised at zero (identity at start).

    `spatial=False` adapts the last dimension of any (..., width) tensor with linear layers; `spatial=True`
    adapts the channels of a (B, width, H, W) feature map with 1x1 convolutions.
    """

    def __init__(
        self,
        width: int,
        bottleneck_size: int,
        dropout: float = 0.0,
        scale: float = 1.0,
        activation: str = "relu",
        spatial: bool = False,
    ):
        super().__init__()
        self.width = width
        self.bottleneck_size = min(bottleneck_size, width)
        self.scale = scale
        self.spatial = spatial
        layer = (lambda i, o: nn.Conv2d(i, o, kernel_size=1)) if spatial else nn.Linear
        self.down = layer(width, self.bottleneck_size)
        self.activation = _ACTIVATIONS[activation]()
        self.dropout = nn.Dropout(dropout)
        self.up = layer(self.bottleneck_size, width)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states + self.scale * self.up(self.dropout(self.activation(self.down(hidden_states))))

    def extra_repr(self) -> str:
        return f"width={self.width}, bottleneck_size={self.bottleneck_size}, scale={self.scale}, spatial={self.spatial}"


def target_matches(name: str, target_modules: str | list[str]) -> bool:
    """peft's rule: a string is a regex that must match the whole name; a list matches a name equal to an
    entry or ending with "." + entry."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == target or name.endswith("." + target) for target in target_modules)


def adapted_width(module: nn.Module) -> tuple[int, bool]:
    """(width, spatial) of a module's output: the last Linear / Conv2d / BatchNorm2d / LayerNorm in it."""
    candidates = [module] + list(module.modules())[1:][::-1]
    for sub in candidates:
        if isinstance(sub, nn.Linear):
            return sub.out_features, False
        if isinstance(sub, nn.Conv2d):
            return sub.out_channels, True
        if isinstance(sub, nn.BatchNorm2d):
            return sub.num_features, True
        if isinstance(sub, nn.LayerNorm):
            return int(sub.normalized_shape[-1]), False
    raise ValueError(
        f"Cannot tell the output width of {type(module).__name__}: adapter targets must be (or end with) a Linear, "
        "Conv2d, BatchNorm2d or LayerNorm layer."
    )


def _apply_adapter(module: nn.Module, inputs, output):
    """Forward hook on an adapted module: pass its output (or the first element of a tuple) through its adapter."""
    adapter = module.__dict__.get(_ADAPTER_ATTRIBUTE)
    if adapter is None:
        return output
    if isinstance(output, tuple):
        return (adapter(output[0]),) + tuple(output[1:])
    return adapter(output)


def _adapter_key(module_name: str) -> str:
    return module_name.replace(".", "-")


def inject_bottleneck_adapters(
    backbone: nn.Module,
    target_modules: str | list[str],
    bottleneck_size: int = 64,
    dropout: float = 0.0,
    scale: float = 1.0,
    activation: str = "relu",
) -> list[str]:
    """Add a `BottleneckAdapter` after every module of `backbone` whose name matches `target_modules`.

    The adapters are registered in `backbone.adapters` (`nn.ModuleDict`, key = module name with "." -> "-")
    and applied by a forward hook on each target; the targets themselves are not replaced, so the backbone's
    own state-dict keys do not change. Returns the adapted module names. Raises `ValueError` when nothing
    matches (listing a few module names to choose from) or when `backbone` already has adapters.
    """
    if hasattr(backbone, "adapters"):
        raise ValueError("This backbone already has adapters.")
    modules = [(name, module) for name, module in backbone.named_modules() if name]
    targets = [(name, module) for name, module in modules if target_matches(name, target_modules)]
    if not targets:
        examples = [name for name, module in modules if isinstance(module, (nn.Linear, nn.Conv2d))][:8]
        raise ValueError(
            f"adapter_target_modules={target_modules!r} matched no module of the {type(backbone).__name__} backbone. "
            f"Module names look like {examples} (lists match a name or its '.'-suffix; a string is a full-match regex)."
        )
    adapters = nn.ModuleDict()
    for name, module in targets:
        width, spatial = adapted_width(module)
        adapter = BottleneckAdapter(width, bottleneck_size, dropout, scale, activation, spatial)
        adapters[_adapter_key(name)] = adapter
        # A plain (unregistered) reference: the adapter is registered once, in `backbone.adapters`.
        module.__dict__[_ADAPTER_ATTRIBUTE] = adapter
        module.register_forward_hook(_apply_adapter)
    backbone.add_module("adapters", adapters)
    return [name for name, _ in targets]


# ---------------------------------------------------------------------------------------------------
# backbones
# ---------------------------------------------------------------------------------------------------


class ResNetBackbone(nn.Module):
    """A transformers `ResNetModel` with the backbone contract of `hf_sbir.backbones`:
    `backbone(pixel_values).pooled_output` (B, C) is the global-average-pooled last feature map;
    `last_hidden_state` (B, h*w, C) its positions. ResNets take no extra tokens."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.config = model.config
        self.hidden_size = int(model.config.hidden_sizes[-1])

    def forward(self, pixel_values: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> TokenBackboneOutput:
        if extra_tokens is not None:
            raise ValueError("A ResNet backbone takes no extra tokens.")
        out = self.model(pixel_values=pixel_values)
        return TokenBackboneOutput(
            last_hidden_state=out.last_hidden_state.flatten(2).transpose(1, 2),
            pooled_output=out.pooler_output.flatten(1),
        )


def unregister_aliased_modules(backbone: nn.Module) -> nn.Module:
    """`TokenBackbone` registers a CLIP vision model's `post_layernorm` a second time, as `_extra_norm`: two
    state-dict names for the same tensors, which `save_pretrained` refuses. Keep `_extra_norm` as a plain
    attribute (the forward pass reads it the same way) so that each tensor has one name. No-op otherwise."""
    norm = backbone._modules.get("_extra_norm")
    if norm is not None and any(module is norm for module in backbone.model.modules()):
        del backbone._modules["_extra_norm"]
        backbone.__dict__["_extra_norm"] = norm
    return backbone


def build_adapt_align_backbone(config) -> nn.Module:
    """Random-initialised backbone from its config: `build_backbone` for ViT-family and hybrid configs,
    `ResNetBackbone(ResNetModel(config))` for ResNet."""
    if config.model_type == RESNET_MODEL_TYPE:
        from transformers import ResNetModel

        return ResNetBackbone(ResNetModel(config))
    return unregister_aliased_modules(build_backbone(config))


# ---------------------------------------------------------------------------------------------------
# model
# ---------------------------------------------------------------------------------------------------


class AdaptAlignPreTrainedModel(SbirPreTrainedModel):
    config_class = AdaptAlignConfig
    base_model_prefix = "adapt_align"
    supports_gradient_checkpointing = False

    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        model = super().from_pretrained(*args, **kwargs)
        if isinstance(model, AdaptAlignModel):
            model.configure_trainable()  # loading replaces the parameters and forgets requires_grad
        return model

    @torch.no_grad()
    def _init_weights(self, module):
        # Only the modules this method adds; backbones initialise themselves (pretrained or from config).
        if isinstance(module, BottleneckAdapter):
            module.reset_parameters()
        elif module is getattr(self, "projection", None):
            nn.init.trunc_normal_(module.weight, std=self.config.initializer_range)
            nn.init.zeros_(module.bias)
        elif isinstance(module, AdaptAlignModel):
            nn.init.constant_(module.logit_scale, math.log(1.0 / self.config.alignment_temperature))


class AdaptAlignModel(AdaptAlignPreTrainedModel):
    """Adapt and Align: `model(pixel_values=images).embeddings` -> (B, projection_dim), L2-normalised.

    With `text_embeds` (C, projection_dim) — the class text embeddings — the output also carries the
    alignment logits (eq. 2); the training objective (eq. 3-5) is `hf_sbir.losses.adapt_align.AdaptAlignLoss`,
    which takes this output (forward computes no loss, as in the other families).

    Build it from a config (random initialisation, e.g. for tests) with `AdaptAlignModel(config)`, from a
    pretrained backbone with `AdaptAlignModel.from_backbone("microsoft/resnet-50")` (or a ViT id, or
    "packaged"), or load a trained one with `AutoModel.from_pretrained(path_or_hub_id)`.
    """

    def __init__(self, config: AdaptAlignConfig):
        super().__init__(config)
        self.backbone = build_adapt_align_backbone(config.backbone_config)
        self.adapted_modules: list[str] = []
        if config.use_adapters:
            targets = config.adapter_target_modules
            if targets is None:
                targets = DEFAULT_ADAPTER_TARGETS[config.backbone_config.model_type]
            self.adapted_modules = inject_bottleneck_adapters(
                self.backbone,
                targets,
                bottleneck_size=config.adapter_bottleneck_size,
                dropout=config.adapter_dropout,
                scale=config.adapter_scale,
                activation=config.adapter_activation,
            )
        self.projection = nn.Linear(backbone_hidden_size(config.backbone_config), config.projection_dim)
        # log(s), s = 1 / alignment_temperature; learned only with `learnable_temperature`.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / config.alignment_temperature)))
        self.post_init()
        self.configure_trainable()

    # -- what trains ------------------------------------------------------------------------------
    def configure_trainable(self, train_adapters_only: bool | None = None) -> None:
        """Set `requires_grad`: everything (the paper's default), or with `train_adapters_only` only the
        adapters, the projection (and the temperature when learnable). Defaults to the config's setting;
        passing a value also records it in the config."""
        if train_adapters_only is not None:
            if train_adapters_only and not self.adapted_modules:
                raise ValueError("train_adapters_only=True needs adapters (use_adapters=True).")
            self.config.train_adapters_only = bool(train_adapters_only)
        adapters_only = self.config.train_adapters_only
        for name, param in self.backbone.named_parameters():
            param.requires_grad_(not adapters_only or name.startswith("adapters."))
        self.projection.requires_grad_(True)
        self.logit_scale.requires_grad_(bool(self.config.learnable_temperature))
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and getattr(self.config, "train_adapters_only", False) and hasattr(self, "backbone"):
            # A frozen backbone keeps its BatchNorm statistics too.
            for name, module in self.backbone.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and not name.startswith("adapters."):
                    module.eval()
        return self

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """Only the adapter weights (keys as in the full state dict), peft-style."""
        return {key: value for key, value in self.state_dict().items() if key.startswith("backbone.adapters.")}

    def get_logit_scale(self) -> torch.Tensor:
        """s = exp(logit_scale), clamped at 100 as in CLIP."""
        return self.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)

    # -- forward --------------------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        text_embeds: torch.FloatTensor | None = None,
        output_hidden_states: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> AdaptAlignOutput | tuple:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, 3, height, width)`):
                Sketches or photos, processed by the model's image processor.
            text_embeds (`torch.FloatTensor` of shape `(num_classes, projection_dim)`, *optional*):
                Class text embeddings; when given, `logits` are computed (eq. 2).
        """
        check_pixel_values(pixel_values)
        out = self.backbone(pixel_values)
        features = out.pooled_output
        embeddings = F.normalize(self.projection(features), dim=-1)
        logits = None
        if text_embeds is not None:
            if text_embeds.ndim != 2 or text_embeds.shape[1] != self.config.projection_dim:
                raise ValueError(
                    f"text_embeds must have shape (num_classes, {self.config.projection_dim}); got {tuple(text_embeds.shape)}. "
                    "projection_dim must equal the text encoder's embedding size."
                )
            logits = alignment_logits(embeddings, text_embeds.to(embeddings.dtype), self.get_logit_scale())
        result = AdaptAlignOutput(
            logits=logits,
            embeddings=embeddings,
            image_features=features,
            last_hidden_state=out.last_hidden_state if output_hidden_states else None,
        )
        return result if return_dict is not False else result.to_tuple()

    @torch.no_grad()
    def get_image_features(self, pixel_values: torch.FloatTensor) -> torch.FloatTensor:
        """The backbone's pooled feature g (adapters included), (B, hidden): the "backbone only" baseline."""
        check_pixel_values(pixel_values)
        return self.backbone(pixel_values).pooled_output

    @classmethod
    def from_backbone(cls, backbone_name_or_path: str | None = None, **config_kwargs) -> "AdaptAlignModel":
        """Start from pretrained backbone weights — the real path for users.

        Args:
            backbone_name_or_path: a hub id or folder of a ViT-family checkpoint (DINO, ViT, DINOv2, CLIP) or of a
                ResNet (`microsoft/resnet-50`, the paper's CNN), or "packaged" for the offline EfficientNet-Lite0
                hybrid. None picks automatically: the package's default hub checkpoint when the Hub is reachable,
                else the packaged one (one log line says which).
            **config_kwargs: any other `AdaptAlignConfig` field.
        """
        backbone, name = load_pretrained_adapt_align_backbone(backbone_name_or_path)
        config = AdaptAlignConfig(backbone_config=backbone.config, backbone_name_or_path=name, **config_kwargs)
        model = cls(config)
        result = model.backbone.load_state_dict(backbone.state_dict(), strict=False)
        unexpected = list(result.unexpected_keys)
        missing = [key for key in result.missing_keys if not key.startswith("adapters.")]
        if missing or unexpected:
            raise RuntimeError(f"Pretrained backbone weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}.")
        return model


def load_pretrained_adapt_align_backbone(name_or_path: str | None) -> tuple[nn.Module, str]:
    """(backbone with pretrained weights, its name): ResNet checkpoints here, everything else through
    `hf_sbir.backbones.auto.resolve_backbone` (hub / local / packaged, with its offline fallback)."""
    import os

    from hf_sbir.backbones.auto import PACKAGED_NAMES, locate_hub_checkpoint, resolve_backbone

    if name_or_path is not None and name_or_path not in PACKAGED_NAMES:
        location = name_or_path if os.path.isdir(name_or_path) else locate_hub_checkpoint(name_or_path)[0]
        if location is not None:
            from transformers import AutoConfig

            if AutoConfig.from_pretrained(location).model_type == RESNET_MODEL_TYPE:
                from transformers import ResNetModel

                return ResNetBackbone(ResNetModel.from_pretrained(location)), name_or_path
    resolved = resolve_backbone(name_or_path)
    return unregister_aliased_modules(resolved.backbone), resolved.name




__all__ = [
    "DEFAULT_ADAPTER_TARGETS",
    "AdaptAlignModel",
    "AdaptAlignOutput",
    "AdaptAlignPreTrainedModel",
    "BottleneckAdapter",
    "ResNetBackbone",
    "adapted_width",
    "build_adapt_align_backbone",
    "inject_bottleneck_adapters",
    "load_pretrained_adapt_align_backbone",
    "target_matches",
]
