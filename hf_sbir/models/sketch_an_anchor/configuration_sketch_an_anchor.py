"""Sketch-an-Anchor configuration (Ribeiro & Ponti, "Sketch-an-Anchor: Sub-epoch Fast Model
Adaptation for Zero-shot Sketch-based Image Retrieval"; paper sections 3.2-3.5 and 4.2)."""

from __future__ import annotations

from transformers import PretrainedConfig

from hf_sbir.backbones.modeling_backbones import backbone_config_from_dict, check_backbone_config
from hf_sbir.configuration_utils import SbirConfig, check_positive_int


class SketchAnAnchorConfig(SbirConfig):
    r"""
    Args:
        backbone_config (`PretrainedConfig` or `dict`, *optional*):
            Any ViT-family transformers config (DINO ViT-S/8 is `ViTConfig(patch_size=8, hidden_size=384,
            num_hidden_layers=12, num_attention_heads=6)`, as in `facebook/dino-vits8`; DINOv2; CLIP
            vision) or the packaged offline `HybridEfficientNetConfig`. Defaults to the offline hybrid.
        backbone_name_or_path (`str`, *optional*):
            Where the backbone's pretrained weights came from (recorded for model cards; loading a saved
            model never fetches them again, they are in its safetensors file).
        projection_dim (`int`, *optional*, defaults to 512):
            Units of the gated linear projections p_w, p_v and size of the final embedding (paper §4.2).
        contrastive_temperature (`float`, *optional*, defaults to 0.1):
            tau of eq. 1, 3 and 4. The paper does not give its value.
        anchor_similarity_temperature (`float`, *optional*, defaults to 0.1):
            Temperature of the softmax sigma(a) that turns anchor similarities into target distributions
            (eq. 3, 4). The paper writes a plain softmax of cosine similarities (temperature 1.0), which over
            100+ classes is almost uniform; 0.1 is our default, 1.0 reproduces the literal formula.
        word_anchor_dim (`int`, *optional*, defaults to 384):
            Size of the class-name (word) vectors: 300 for word2vec, 384 for the packaged MiniLM, 512 for CLIP.
        visual_anchor_dim (`int`, *optional*):
            Size of the visual anchors (backbone CLS features); defaults to the backbone's hidden size.
        gcn_num_layers (`int`, *optional*, defaults to 4):
            Layers of the GCN over the unified word+visual anchor graph (eq. 5). 0 disables the GCN: anchors
            are only projected linearly into the embedding space (the paper's ablations without GCN).
        gcn_hidden_size (`int`, *optional*, defaults to 512):
            Units of each GCN layer; the last layer outputs `projection_dim`.
        backbone_gradient_scale (`float`, *optional*, defaults to 0.1):
            The backbone's learning rate relative to the heads' (paper §4.2: "multiply the gradient to the
            backbone by 0.1"). Applied by the training loop as a separate optimiser group at this fraction of the
            rate (under Adam a literal gradient multiplier cancels out); 0 freezes the backbone.
        num_anchor_classes (`int`, *optional*, defaults to 0):
            Number of seen classes the anchors were built for (recorded; the GCN works for any number).
        anchor_class_names (`list[str]`, *optional*):
            Names of those classes, in anchor order (recorded, and used to refuse a leak of test classes).
        randomize_word_anchors (`bool`, *optional*, defaults to `True`):
            Each step, swap each class's word vector for one of its `word_anchor_neighbours` nearest words (§3.5).
        word_anchor_neighbours (`int`, *optional*, defaults to 10):
        randomize_visual_anchors (`bool`, *optional*, defaults to `True`):
            Each step, sample each visual anchor from N(class mean, (visual_anchor_noise_scale * class std)^2) (§3.5).
        visual_anchor_noise_scale (`float`, *optional*, defaults to 1.0):
        use_word_anchors (`bool`, *optional*, defaults to `True`):
        use_visual_anchors (`bool`, *optional*, defaults to `True`):
            Ablation switches (paper Table 4): both off is the InfoNCE-only baseline.
        initializer_range (`float`, *optional*, defaults to 0.02):
    """

    model_type = "sketch_an_anchor"

    def __init__(
        self,
        backbone_config: PretrainedConfig | dict | None = None,
        backbone_name_or_path: str | None = None,
        projection_dim: int = 512,
        contrastive_temperature: float = 0.1,
        anchor_similarity_temperature: float = 0.1,
        word_anchor_dim: int = 384,
        visual_anchor_dim: int | None = None,
        gcn_num_layers: int = 4,
        gcn_hidden_size: int = 512,
        backbone_gradient_scale: float = 0.1,
        num_anchor_classes: int = 0,
        anchor_class_names: list[str] | None = None,
        randomize_word_anchors: bool = True,
        word_anchor_neighbours: int = 10,
        randomize_visual_anchors: bool = True,
        visual_anchor_noise_scale: float = 1.0,
        use_word_anchors: bool = True,
        use_visual_anchors: bool = True,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.backbone_config = backbone_config_from_dict(backbone_config)
        check_backbone_config(self.backbone_config)
        hidden = self.backbone_config.hidden_size
        check_positive_int("projection_dim", projection_dim)
        check_positive_int("word_anchor_dim", word_anchor_dim)
        check_positive_int("gcn_hidden_size", gcn_hidden_size)
        check_positive_int("word_anchor_neighbours", word_anchor_neighbours)
        if not isinstance(gcn_num_layers, int) or gcn_num_layers < 0:
            raise ValueError(f"gcn_num_layers must be an integer >= 0; got {gcn_num_layers!r}.")
        for name, value in (("contrastive_temperature", contrastive_temperature), ("anchor_similarity_temperature", anchor_similarity_temperature)):
            if not value > 0:
                raise ValueError(f"{name} must be > 0; got {value!r}.")
        if not 0.0 <= backbone_gradient_scale:
            raise ValueError(f"backbone_gradient_scale must be >= 0 (0 freezes the backbone); got {backbone_gradient_scale!r}.")
        if visual_anchor_noise_scale < 0:
            raise ValueError(f"visual_anchor_noise_scale must be >= 0; got {visual_anchor_noise_scale!r}.")
        if anchor_class_names is not None and num_anchor_classes not in (0, len(anchor_class_names)):
            raise ValueError(
                f"num_anchor_classes ({num_anchor_classes}) does not match len(anchor_class_names) ({len(anchor_class_names)})."
            )
        self.backbone_name_or_path = backbone_name_or_path
        self.projection_dim = projection_dim
        self.contrastive_temperature = contrastive_temperature
        self.anchor_similarity_temperature = anchor_similarity_temperature
        self.word_anchor_dim = word_anchor_dim
        self.visual_anchor_dim = visual_anchor_dim if visual_anchor_dim is not None else hidden
        check_positive_int("visual_anchor_dim", self.visual_anchor_dim)
        self.gcn_num_layers = gcn_num_layers
        self.gcn_hidden_size = gcn_hidden_size
        self.backbone_gradient_scale = backbone_gradient_scale
        self.anchor_class_names = list(anchor_class_names) if anchor_class_names is not None else None
        self.num_anchor_classes = len(self.anchor_class_names) if self.anchor_class_names else num_anchor_classes
        self.randomize_word_anchors = randomize_word_anchors
        self.word_anchor_neighbours = word_anchor_neighbours
        self.randomize_visual_anchors = randomize_visual_anchors
        self.visual_anchor_noise_scale = visual_anchor_noise_scale
        self.use_word_anchors = use_word_anchors
        self.use_visual_anchors = use_visual_anchors
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
