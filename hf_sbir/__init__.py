"""hf-sbir: sketch-based image retrieval models for the Hugging Face ecosystem.

Importing the package registers its configs and models with transformers' Auto classes, so
`AutoModel.from_pretrained(folder_or_hub_id)` loads any hf-sbir checkpoint. Subpackages (data,
metrics, retrieval, training) are imported on use, keeping `import hf_sbir` light.
"""

from transformers import AutoConfig, AutoImageProcessor, AutoModel

from hf_sbir.backbones.configuration_hybrid_efficientnet import HybridEfficientNetConfig
from hf_sbir.models.sketch_an_anchor import SketchAnAnchorConfig, SketchAnAnchorModel, SketchAnAnchorOutput
from hf_sbir.models.fg_sbir import FGSBIRConfig, FGSBIRModel, FGSBIROutput
from hf_sbir.models.adapt_align import AdaptAlignConfig, AdaptAlignModel, AdaptAlignOutput
from hf_sbir.models.shape_views import ShapeViewsConfig, ShapeViewsModel, ShapeViewsOutput
from hf_sbir.image_processing_sbir import SbirImageProcessor

__version__ = "0.1.0"

_FAMILIES = [(SketchAnAnchorConfig, SketchAnAnchorModel), (AdaptAlignConfig, AdaptAlignModel), (ShapeViewsConfig, ShapeViewsModel), (FGSBIRConfig, FGSBIRModel)]


def _register(config_cls, model_cls) -> None:
    AutoConfig.register(config_cls.model_type, config_cls, exist_ok=True)
    AutoModel.register(config_cls, model_cls, exist_ok=True)
    # save_pretrained then writes `auto_map` and the code files for trust_remote_code users.
    config_cls.register_for_auto_class()
    model_cls.register_for_auto_class("AutoModel")
    # One sketch-aware processor for every family (its saved config holds the family's settings); both
    # backends map to it so the numbers never depend on whether torchvision is installed.
    AutoImageProcessor.register(
        config_cls, image_processor_classes={"pil": SbirImageProcessor, "torchvision": SbirImageProcessor}, exist_ok=True
    )


AutoConfig.register(HybridEfficientNetConfig.model_type, HybridEfficientNetConfig, exist_ok=True)
for _config_cls, _model_cls in _FAMILIES:
    _register(_config_cls, _model_cls)

__all__ = ["HybridEfficientNetConfig", "SbirImageProcessor", "SketchAnAnchorConfig", "SketchAnAnchorModel", "SketchAnAnchorOutput"]
