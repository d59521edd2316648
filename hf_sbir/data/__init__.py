"""Data layer of hf-sbir: loaders, zero-shot splits and leak guard, paired sampler, sketch processing.

```python
>>> from hf_sbir.data import load_sbir_dataset, split_by_domain, PairedClassBatchSampler, SbirImageTransform
>>> ds = load_sbir_dataset("embedded", split="embedded")        # synthetic, generated offline
>>> sketches, photos = split_by_domain(ds["train"])
>>> sampler = PairedClassBatchSampler(sketches["label"], photos["label"], batch_size=32, seed=0)
>>> transform = SbirImageTransform(image_size=224)
>>> pixel_values = transform(sketches[0]["image"], "sketch")   # FloatTensor (3, 224, 224)
```

See `hf_sbir/data/README.md` for the layouts, the splits and the embedded set.
"""

from hf_sbir.data.auto import load_sbir_dataset, sbir_mini_root, sketchy_small_root
from hf_sbir.data.benchmarks import load_quickdraw_ext, load_sketchy, load_tuberlin
from hf_sbir.data.core import (
    CorruptImageError,
    CorruptImageWarning,
    MissingSplitClassesWarning,
    sbir_metadata,
    split_by_domain,
)
from hf_sbir.data.embedded import EMBEDDED_CLASSES, load_embedded_default, render_embedded_image
from hf_sbir.data.folder import load_sbir_folder
from hf_sbir.data.processing import (
    EmptySketchError,
    SbirImageTransform,
    ink_bbox,
    ink_bbox_crop,
    pad_to_square,
    thicken_strokes,
    threshold,
    to_grayscale_ink,
)
from hf_sbir.data.sampler import PairedClassBatchSampler
from hf_sbir.data.strokes import load_quickdraw_ndjson, load_quickdraw_npz, rasterize_strokes
from hf_sbir.data.zero_shot import (
    UnknownSplitError,
    ZeroShotLeakError,
    ZeroShotSplit,
    check_no_leak,
    guard_training_set,
    list_splits,
    load_class_list,
    load_split,
    normalize_class_name,
)

__all__ = [
    "EMBEDDED_CLASSES",
    "CorruptImageError",
    "CorruptImageWarning",
    "EmptySketchError",
    "MissingSplitClassesWarning",
    "PairedClassBatchSampler",
    "SbirImageTransform",
    "UnknownSplitError",
    "ZeroShotLeakError",
    "ZeroShotSplit",
    "check_no_leak",
    "guard_training_set",
    "ink_bbox",
    "ink_bbox_crop",
    "list_splits",
    "load_class_list",
    "load_embedded_default",
    "load_quickdraw_ext",
    "load_quickdraw_ndjson",
    "load_quickdraw_npz",
    "load_sbir_dataset",
    "load_sbir_folder",
    "load_sketchy",
    "load_split",
    "load_tuberlin",
    "normalize_class_name",
    "pad_to_square",
    "rasterize_strokes",
    "render_embedded_image",
    "sbir_metadata",
    "sbir_mini_root",
    "sketchy_small_root",
    "split_by_domain",
    "thicken_strokes",
    "threshold",
    "to_grayscale_ink",
]
