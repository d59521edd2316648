from hf_sbir.models.fg_sbir.configuration_fg_sbir import FGSBIRConfig
from hf_sbir.models.fg_sbir.modeling_fg_sbir import (
    EmbeddingHead,
    FGSBIRModel,
    FGSBIROutput,
    FGSBIRPreTrainedModel,
    PvtV2TokenBackbone,
    TokenProjection,
)

__all__ = [
    "EmbeddingHead",
    "FGSBIRConfig",
    "FGSBIRModel",
    "FGSBIROutput",
    "FGSBIRPreTrainedModel",
    "PvtV2TokenBackbone",
    "TokenProjection",
]
