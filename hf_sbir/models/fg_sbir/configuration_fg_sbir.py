"""FG-SBIR configuration: the stronger fine-grained baseline of Sain et al., "Exploiting Unlabelled
Photos for Stronger Fine-Grained SBIR" (CVPR 2023; poster in `shared/papers/stronger-fg-sbir-baseline.md`).

Equation numbers follow the order of the poster, which does not number them:
(1) L_CM, (2) L_IM^photo, (3) L_IM^sketch, (4) theta_ema = beta theta_ema + (1 - beta) theta,
(5) L = L_CM + lambda1 L_IM^photo + lambda2 L_IM^sketch (see `hf_sbir/losses/fg_sbir.py`).

The poster gives no numeric hyper-parameters; every default below that is not a plain architectural
choice says where it comes from.
"""

from __future__ import annotations

from transformers import PretrainedConfig, PvtV2Config

from hf_sbir.backbones.configuration_hybrid_efficientnet import HybridEfficientNetConfig
from hf_sbir.configuration_utils import SbirConfig

PVT_MODEL_TYPE = "pvt_v2"
SUPPORTED_FG_BACKBONES = (PVT_MODEL_TYPE, HybridEfficientNetConfig.model_type)


def default_pvt_config() -> PvtV2Config:
    """PVT-v2-b2's layout (`OpenGVLab/pvt_v2_b2`): 4 stages, widths 64/128/320/512, depths 3/4/6/3."""
    return PvtV2Config(
        depths=[3, 4, 6, 3],
        hidden_sizes=[64, 128, 320, 512],
        num_attention_heads=[1, 2, 5, 8],
        mlp_ratios=[8, 8, 4, 4],
        sr_ratios=[8, 4, 2, 1],
        patch_sizes=[7, 3, 3, 3],
        strides=[4, 2, 2, 2],
        num_encoder_blocks=4,
    )


def fg_backbone_config(config: PretrainedConfig | dict | None) -> PretrainedConfig:
    """A PVT-v2 or packaged-hybrid backbone config from a config object, its dict (with `model_type`), or None
    (the PVT-v2-b2 layout)."""
    if config is None:
        return default_pvt_config()
    if isinstance(config, PretrainedConfig):
        model_type = getattr(config, "model_type", None)
        if model_type not in SUPPORTED_FG_BACKBONES:
            raise ValueError(
                f"Unsupported FG-SBIR backbone model_type {model_type!r}; supported: {SUPPORTED_FG_BACKBONES} "
                "(transformers' PVT-v2, or the packaged offline hybrid EfficientNet-Lite0)."
            )
        return config
    if not isinstance(config, dict) or "model_type" not in config:
        raise ValueError(
            "backbone_config must be a PvtV2Config / HybridEfficientNetConfig or a dict with a 'model_type' key "
            f"(one of {SUPPORTED_FG_BACKBONES}); got {type(config).__name__}."
        )
    config = dict(config)
    model_type = config.pop("model_type")
    if model_type == PVT_MODEL_TYPE:
        # Keys that `to_dict()` writes but the constructor derives itself.
        for key in ("stage_names", "out_features", "out_indices", "_out_features", "_out_indices"):
            config.pop(key, None)
        return PvtV2Config(**config)
    if model_type == HybridEfficientNetConfig.model_type:
        return HybridEfficientNetConfig(**config)
    raise ValueError(f"Unsupported FG-SBIR backbone model_type {model_type!r}; supported: {SUPPORTED_FG_BACKBONES}.")


class FGSBIRConfig(SbirConfig):
    r"""
    Args:
        backbone_config (`PvtV2Config`, `HybridEfficientNetConfig` or `dict`, *optional*):
            The image encoder. The paper's is PVT (transformers' `PvtV2Model`), whose blocks this model modifies to
            carry a learnable distillation token. Defaults to the PVT-v2-b2 layout (random initialisation; use
            `FGSBIRModel.from_backbone(...)` for pretrained weights). The packaged hybrid EfficientNet-Lite0 is the
            offline alternative (it takes extra tokens natively).
        backbone_name_or_path (`str`, *optional*):
            Where the backbone's pretrained weights came from (recorded only).
        embedding_dim (`int`, *optional*, defaults to 512):
            Size of the retrieval embedding ("Linear + Norm" head on the pooled features) and of the distillation
            embedding (the same kind of head on the distillation token).
        use_distillation_token (`bool`, *optional*, defaults to `True`):
            Carry the learnable distillation token through the backbone ("Modified PVT block"). Off gives the
            plain backbone (the teacher of the distillation stage does not need it).
        cross_modal_margin (`float`, *optional*, defaults to 0.2):
            m_CM of eq. 1. Embeddings are L2-normalised, so distances lie in [0, 2]; 0.2 is the triplet margin of
            the Triplet-SN FG-SBIR baseline code the paper builds on (the poster gives no value).
        photo_margin (`float`, *optional*, defaults to 0.2):
            m_IM^photo of eq. 2 (poster: no value; same as m_CM).
        sketch_margin (`float`, *optional*, defaults to 0.2):
            m_IM^sketch of eq. 3 (poster: no value; same as m_CM).
        photo_intra_weight (`float`, *optional*, defaults to 1.0):
            lambda1 of eq. 5 (poster: no value; 1.0 weighs the three triplets equally).
        sketch_intra_weight (`float`, *optional*, defaults to 1.0):
            lambda2 of eq. 5 (poster: no value).
        distillation_weight (`float`, *optional*, defaults to 1.0):
            Weight of the knowledge-distillation term added to eq. 5 when a teacher is used.
        distillation_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the softmax over negative pairwise distances that turns each sample's distances to its
            neighbours into a distribution (teacher and student alike).
        distillation_neighbours (`int`, *optional*):
            Restrict each sample's distribution to its k nearest neighbours in teacher space; None uses every
            other sample of the batch.
        ema_decay (`float`, *optional*, defaults to 0.999):
            beta of eq. 4 (poster: no value; 0.999 is the usual weight-EMA decay).
        initializer_range (`float`, *optional*, defaults to 0.02):
    """

    model_type = "fg_sbir"

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        backbone_name_or_path: str | None = None,
        embedding_dim: int = 512,
        use_distillation_token: bool = True,
        cross_modal_margin: float = 0.2,
        photo_margin: float = 0.2,
        sketch_margin: float = 0.2,
        photo_intra_weight: float = 1.0,
        sketch_intra_weight: float = 1.0,
        distillation_weight: float = 1.0,
        distillation_temperature: float = 0.1,
        distillation_neighbours: int | None = None,
        ema_decay: float = 0.999,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.backbone_config = fg_backbone_config(backbone_config)
        if not isinstance(embedding_dim, int) or isinstance(embedding_dim, bool) or embedding_dim <= 0:
            raise ValueError(f"embedding_dim must be a positive integer; got {embedding_dim!r}.")
        for name, value in (
            ("cross_modal_margin", cross_modal_margin),
            ("photo_margin", photo_margin),
            ("sketch_margin", sketch_margin),
            ("photo_intra_weight", photo_intra_weight),
            ("sketch_intra_weight", sketch_intra_weight),
            ("distillation_weight", distillation_weight),
        ):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0; got {value!r}.")
        if not distillation_temperature > 0:
            raise ValueError(f"distillation_temperature must be > 0; got {distillation_temperature!r}.")
        if distillation_neighbours is not None and (
            not isinstance(distillation_neighbours, int) or isinstance(distillation_neighbours, bool) or distillation_neighbours < 1
        ):
            raise ValueError(f"distillation_neighbours must be a positive integer or None; got {distillation_neighbours!r}.")
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1); got {ema_decay!r}.")
        self.backbone_name_or_path = backbone_name_or_path
        self.embedding_dim = embedding_dim
        self.use_distillation_token = bool(use_distillation_token)
        self.cross_modal_margin = float(cross_modal_margin)
        self.photo_margin = float(photo_margin)
        self.sketch_margin = float(sketch_margin)
        self.photo_intra_weight = float(photo_intra_weight)
        self.sketch_intra_weight = float(sketch_intra_weight)
        self.distillation_weight = float(distillation_weight)
        self.distillation_temperature = float(distillation_temperature)
        self.distillation_neighbours = distillation_neighbours
        self.ema_decay = float(ema_decay)
        self.initializer_range = initializer_range
        super().__init__(**kwargs)

    @property
    def backbone_hidden_size(self) -> int:
        """Width of the backbone's last stage (the pooled features and the distillation token's final state)."""
        config = self.backbone_config
        return config.hidden_sizes[-1] if config.model_type == PVT_MODEL_TYPE else config.hidden_size
