"""Every loss of the package, each a small pure function named with its paper's equation."""

from hf_sbir.losses.sketch_an_anchor import (
    SketchAnAnchorLosses,
    anchor_similarity,
    anchored_sample_loss,
    anchored_semantic_loss,
    info_nce_loss,
    sketch_an_anchor_loss,
    soft_cross_entropy,
)
