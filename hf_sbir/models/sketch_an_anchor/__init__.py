from hf_sbir.models.sketch_an_anchor.configuration_sketch_an_anchor import SketchAnAnchorConfig
from hf_sbir.models.sketch_an_anchor.modeling_sketch_an_anchor import (
    GatedLinearProjection,
    SelfAttentionAggregation,
    SketchAnAnchorModel,
    SketchAnAnchorOutput,
    SketchAnAnchorPreTrainedModel,
)

__all__ = [
    "GatedLinearProjection",
    "SelfAttentionAggregation",
    "SketchAnAnchorConfig",
    "SketchAnAnchorModel",
    "SketchAnAnchorOutput",
    "SketchAnAnchorPreTrainedModel",
]
