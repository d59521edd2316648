"""Every loss of the package: small pure functions named with their paper's equations, and per family one
`nn.Module` that takes the model's output and calls them (`SketchAnAnchorLoss`, `AdaptAlignLoss`,
`FGSBIRLoss`, `ShapeViewsLoss`): the convention of all four families is that `forward` returns outputs and
the loss module computes the objective, so each training step is a few lines."""

from hf_sbir.losses.sketch_an_anchor import (
    SketchAnAnchorLoss,
    SketchAnAnchorLosses,
    anchor_similarity,
    anchored_sample_loss,
    anchored_semantic_loss,
    info_nce_loss,
    sketch_an_anchor_loss,
    soft_cross_entropy,
)
from hf_sbir.losses.adapt_align import AdaptAlignLoss
from hf_sbir.losses.fg_sbir import FGSBIRLoss
from hf_sbir.losses.shape_views import ShapeViewsLoss
