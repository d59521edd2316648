"""Zero-shot 3D-shape sketch-view similarity (arXiv 2306.08541): layer-selectable encoder features,
scale normalisation, synthetic sketches and a procedural renderer. Its per-layer evaluation
(`sweep_layers`, `LayerSweep`) lives in the evaluation engine, `hf_sbir.retrieval.evaluation`.

The config and model are imported at once (they register with the Auto classes); the processing
and synthetic-sketch helpers load on first use, so `import hf_sbir` stays light."""

from importlib import import_module

from hf_sbir.models.shape_views.configuration_shape_views import ShapeViewsConfig, default_feature_layer, num_feature_layers
from hf_sbir.models.shape_views.modeling_shape_views import ShapeViewsModel, ShapeViewsOutput, ShapeViewsPreTrainedModel, pool_features

_LAZY = {
    "ScaleNormalize": "processing_shape_views",
    "ShapeViewsImageTransform": "processing_shape_views",
    "SHAPE_CLASSES": "synthetic_sketch",
    "SKETCH_STYLES": "synthetic_sketch",
    "SyntheticSketchGenerator": "synthetic_sketch",
    "draw_edges": "synthetic_sketch",
    "sketch_edges": "synthetic_sketch",
    "make_shape": "synthetic_sketch",
    "render_shape_view": "synthetic_sketch",
    "render_views": "synthetic_sketch",
    "synthesize_sketch": "synthetic_sketch",
    "view_angles": "synthetic_sketch",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ShapeViewsConfig",
    "ShapeViewsModel",
    "ShapeViewsOutput",
    "ShapeViewsPreTrainedModel",
    "default_feature_layer",
    "num_feature_layers",
    "pool_features",
    *_LAZY,
]
