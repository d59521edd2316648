"""Adapt and Align configuration (Dong, Zhu, Wang & Gao, "Adapt and Align to Improve Zero-Shot
Sketch-Based Image Retrieval", arXiv 2305.05144).

The paper's recipe: bottleneck *domain adapters* inserted into a pre-trained backbone (ViT or
ResNet), the classifier replaced by CLIP text embeddings of the class names (scaled dot products,
cross-entropy over the seen classes), the whole model fine-tuned, and a distillation term that keeps
the adapted network close to the frozen pre-trained one. The paper summary we follow does not give
adapter sizes, the temperature or the distillation weight; the defaults below are ours and say so.
"""

from __future__ import annotations

from transformers import PretrainedConfig

from hf_sbir.backbones.modeling_backbones import backbone_config_from_dict, check_backbone_config
from hf_sbir.configuration_utils import SbirConfig, check_positive_int

RESNET_MODEL_TYPE = "resnet"
ADAPTER_ACTIVATIONS = ("relu", "gelu", "silu")
DISTILLATION_LOSSES = ("cosine", "mse")
DEFAULT_PROMPT_TEMPLATE = "a photo of a {}"


def adapt_align_backbone_config(config: PretrainedConfig | dict | None) -> PretrainedConfig:
    """A backbone config from a config object or its dict: any ViT-family config or the packaged hybrid
    (via `backbone_config_from_dict`), or a `ResNetConfig` (`model_type="resnet"`), which only this
    family supports. `None` is the packaged offline hybrid."""
    if isinstance(config, dict) and config.get("model_type") == RESNET_MODEL_TYPE:
        from transformers import ResNetConfig

        config = ResNetConfig(**{k: v for k, v in config.items() if k != "model_type"})
    if isinstance(config, PretrainedConfig) and config.model_type == RESNET_MODEL_TYPE:
        return config
    try:
        config = backbone_config_from_dict(config)
        check_backbone_config(config)
    except ValueError as err:
        raise ValueError(f"{err} Adapt and Align also accepts a transformers ResNetConfig (model_type 'resnet').") from None
    return config


def backbone_hidden_size(config: PretrainedConfig) -> int:
    """Width of the backbone's pooled image feature."""
    if config.model_type == RESNET_MODEL_TYPE:
        return int(config.hidden_sizes[-1])
    return int(config.hidden_size)


class AdaptAlignConfig(SbirConfig):
    r"""
    Args:
        backbone_config (`PretrainedConfig` or `dict`, *optional*):
            The image backbone: any ViT-family transformers config (ViT / DINO ViT, DINOv2, CLIP vision),
            a `ResNetConfig` (the paper's ResNet-50 is `microsoft/resnet-50`), or the packaged offline
            `HybridEfficientNetConfig`. Defaults to the offline hybrid.
        backbone_name_or_path (`str`, *optional*):
            Where the backbone's pretrained weights came from (recorded for model cards; a saved model
            carries its weights in its own safetensors file).
        projection_dim (`int`, *optional*, defaults to 512):
            Size of the aligned embedding = size of the class text embeddings (512 for CLIP ViT-B/32's
            text tower, 384 for the packaged MiniLM). Image and sketch features are projected to it.
        use_adapters (`bool`, *optional*, defaults to `True`):
            Insert the domain adapters (False: the paper's "no adapter" ablation).
        adapter_target_modules (`str` or `list[str]`, *optional*):
            Backbone modules whose output goes through an adapter, peft-style: a list matches module names
            equal to an entry or ending with `"." + entry`; a string is a regular expression that must match
            the whole name. Names are relative to the backbone (e.g. `"model.layers.0.mlp.fc2"` for a ViT).
            Default per backbone: the MLP output projection of every transformer layer (`"mlp.fc2"`) for
            ViT/DINOv2/CLIP; the residual branch of every bottleneck/basic block for ResNet; every MBConv
            block's projection BatchNorm plus every transformer layer's MLP output for the hybrid.
        adapter_bottleneck_size (`int`, *optional*, defaults to 64):
            Hidden width of each adapter (capped at the width of the module it adapts). Ours: the paper
            summary gives no size.
        adapter_dropout (`float`, *optional*, defaults to 0.1):
            Dropout inside the adapter, between the non-linearity and the up-projection.
        adapter_scale (`float`, *optional*, defaults to 1.0):
            Multiplier of the adapter branch: h -> h + scale * up(act(down(h))).
        adapter_activation (`str`, *optional*, defaults to `"relu"`):
            Non-linearity of the bottleneck: "relu", "gelu" or "silu".
        train_adapters_only (`bool`, *optional*, defaults to `False`):
            Freeze the backbone except the adapters (its BatchNorm statistics too); the projection and the
            adapters train. The paper finds fine-tuning the whole model better, hence the default.
        alignment_temperature (`float`, *optional*, defaults to 0.07):
            tau of the alignment logits s * cos(f, t) with s = 1 / tau (CLIP's initial value; ours).
        learnable_temperature (`bool`, *optional*, defaults to `False`):
            Learn log(s) as CLIP does (clamped at s <= 100) instead of keeping it fixed.
        distillation_weight (`float`, *optional*, defaults to 1.0):
            lambda of the knowledge-preservation term; 0 turns it off. Ours: the summary gives no value.
        distillation_loss (`str`, *optional*, defaults to `"cosine"`):
            How student and frozen-teacher backbone features are compared: "cosine" (1 - cos) or "mse".
        prompt_template (`str`, *optional*, defaults to `"a photo of a {}"`):
            Prompt of the CLIP text encoder for the class names (recorded; the MiniLM fallback embeds bare names).
        class_names (`list[str]`, *optional*):
            Seen classes the alignment was trained on, in text-embedding order (recorded).
        text_embedder (`dict`, *optional*):
            Description of the text encoder that made the class embeddings (`embedder.to_dict()`), recorded so
            that new class names can be embedded the same way.
        initializer_range (`float`, *optional*, defaults to 0.02):
    """

    model_type = "adapt_align"

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        backbone_name_or_path: str | None = None,
        projection_dim: int = 512,
        use_adapters: bool = True,
        adapter_target_modules: str | list[str] | None = None,
        adapter_bottleneck_size: int = 64,
        adapter_dropout: float = 0.1,
        adapter_scale: float = 1.0,
        adapter_activation: str = "relu",
        train_adapters_only: bool = False,
        alignment_temperature: float = 0.07,
        learnable_temperature: bool = False,
        distillation_weight: float = 1.0,
        distillation_loss: str = "cosine",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        class_names: list[str] | None = None,
        text_embedder: dict | None = None,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.backbone_config = adapt_align_backbone_config(backbone_config)
        check_positive_int("projection_dim", projection_dim)
        check_positive_int("adapter_bottleneck_size", adapter_bottleneck_size)
        if adapter_target_modules is not None:
            if isinstance(adapter_target_modules, (list, tuple)):
                if not adapter_target_modules or not all(isinstance(t, str) and t for t in adapter_target_modules):
                    raise ValueError(
                        f"adapter_target_modules must be a non-empty list of module names, a regex string, or None; "
                        f"got {adapter_target_modules!r}."
                    )
                adapter_target_modules = list(adapter_target_modules)
            elif not isinstance(adapter_target_modules, str) or not adapter_target_modules:
                raise ValueError(
                    f"adapter_target_modules must be a list of module names, a regex string, or None; got {adapter_target_modules!r}."
                )
        if not 0.0 <= adapter_dropout < 1.0:
            raise ValueError(f"adapter_dropout must be in [0, 1); got {adapter_dropout!r}.")
        if not adapter_scale > 0:
            raise ValueError(f"adapter_scale must be > 0; got {adapter_scale!r}.")
        if adapter_activation not in ADAPTER_ACTIVATIONS:
            raise ValueError(f"adapter_activation must be one of {ADAPTER_ACTIVATIONS}; got {adapter_activation!r}.")
        if train_adapters_only and not use_adapters:
            raise ValueError("train_adapters_only=True needs use_adapters=True: there would be nothing to adapt the backbone with.")
        if not alignment_temperature > 0:
            raise ValueError(f"alignment_temperature must be > 0; got {alignment_temperature!r}.")
        if not distillation_weight >= 0:
            raise ValueError(f"distillation_weight must be >= 0 (0 turns distillation off); got {distillation_weight!r}.")
        if distillation_loss not in DISTILLATION_LOSSES:
            raise ValueError(f"distillation_loss must be one of {DISTILLATION_LOSSES}; got {distillation_loss!r}.")
        if not isinstance(prompt_template, str) or "{}" not in prompt_template:
            raise ValueError(f"prompt_template must contain '{{}}' for the class name; got {prompt_template!r}.")
        self.backbone_name_or_path = backbone_name_or_path
        self.projection_dim = projection_dim
        self.use_adapters = use_adapters
        self.adapter_target_modules = adapter_target_modules
        self.adapter_bottleneck_size = adapter_bottleneck_size
        self.adapter_dropout = adapter_dropout
        self.adapter_scale = adapter_scale
        self.adapter_activation = adapter_activation
        self.train_adapters_only = train_adapters_only
        self.alignment_temperature = alignment_temperature
        self.learnable_temperature = learnable_temperature
        self.distillation_weight = distillation_weight
        self.distillation_loss = distillation_loss
        self.prompt_template = prompt_template
        self.class_names = list(class_names) if class_names is not None else None
        self.text_embedder = text_embedder
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
