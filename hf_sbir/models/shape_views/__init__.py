"""Zero-shot 3D-shape sketch-view similarity (arXiv 2306.08541): layer-selectable encoder features,
scale normalisation. Its synthetic sketches and procedural renderer live with the data
(`hf_sbir.data.synthetic_sketch`, re-exported here), its per-layer evaluation (`sweep_layers`,
`LayerSweep`) in the evaluation engine, `hf_sbir.retrieval.evaluation`.

The config and model are imported at once (they register with the Auto classes); the processing
and synthetic-sketch helpers load on first use, so `import hf_sbir` stays light."""

from importlib import import_module

from hf_sbir.models.shape_views.configuration_shape_views import ShapeViewsConfig, default_feature_layer, num_feature_layers
from hf_sbir.models.shape_views.modeling_shape_views import ShapeViewsModel, ShapeViewsOutput, ShapeViewsPreTrainedModel, pool_features

_LAZY = {
    "ScaleNormalize": f"{__name__}.processing_shape_views",
    "ShapeViewsImageTransform": f"{__name__}.processing_shape_views",
    "SHAPE_CLASSES": "hf_sbir.data.synthetic_sketch",
    "SKETCH_STYLES": "hf_sbir.data.synthetic_sketch",
    "SyntheticSketchGenerator": "hf_sbir.data.synthetic_sketch",
    "draw_edges": "hf_sbir.data.synthetic_sketch",
    "sketch_edges": "hf_sbir.data.synthetic_sketch",
    "make_shape": "hf_sbir.data.synthetic_sketch",
    "render_shape_view": "hf_sbir.data.synthetic_sketch",
    "render_views": "hf_sbir.data.synthetic_sketch",
    "synthesize_sketch": "hf_sbir.data.synthetic_sketch",
    "view_angles": "hf_sbir.data.synthetic_sketch",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
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
