"""The output every token backbone returns (`hf_sbir.backbones.modeling_backbones`, the hybrid EfficientNet,
the families' ResNet / PVT wrappers). Its own module, below both backbone files: the hybrid needs the output
class and `build_backbone` needs the hybrid, which made the two files import each other.

Bundled flat into saved model folders for `trust_remote_code` users (imports: torch and transformers only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass
class TokenBackboneOutput(ModelOutput):
    """Output of a `TokenBackbone`.

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, sequence_length, hidden_size)`):
            All token states after the final norm; sequence = CLS, extra tokens, then the rest.
        pooled_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The normalised CLS state, the backbone's own image representation.
        extra_token_states (`torch.FloatTensor` of shape `(batch_size, num_extra_tokens, hidden_size)`, *optional*):
            Normalised states of the extra learnable tokens.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooled_output: torch.FloatTensor | None = None
    extra_token_states: torch.FloatTensor | None = None
