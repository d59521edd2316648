"""Registry of training methods: name -> "module:Class", imported on use so that choosing one method
never imports another's code."""

from __future__ import annotations

import importlib

METHODS = {
    "sketch_an_anchor": "hf_sbir.training.methods.sketch_an_anchor:SketchAnAnchorMethod",
    "adapt_align": "hf_sbir.training.methods.adapt_align:AdaptAlignMethod",
    "fg_sbir": "hf_sbir.training.methods.fg_sbir:FGSBIRMethod",
    "shape_views": "hf_sbir.training.methods.shape_views:ShapeViewsMethod",
}


def get_method_class(name: str):
    if name not in METHODS:
        raise ValueError(f"Unknown method {name!r}; known methods: {sorted(METHODS)}.")
    module_name, class_name = METHODS[name].split(":")
    return getattr(importlib.import_module(module_name), class_name)
