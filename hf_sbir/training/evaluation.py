"""Zero-shot evaluation used by training, the evaluate CLI and the benchmarks.

On the unseen split: sketch->photo category retrieval (mAP@all, mAP@200, P@100, P@200; textbook
definitions, see `hf_sbir.metrics`) and photo->photo mAP@all (each photo queries the other photos),
from one embedding pass over each side.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class _Embeddings:
    embeddings: torch.Tensor


class BackboneFeatureModel(nn.Module):
    """Wrap a model so `.embeddings` is its backbone's own image representation (no fine-tuned heads):
    the "untrained backbone" baseline. `model` needs `get_image_features(pixel_values) -> (B, D)`."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> _Embeddings:
        return _Embeddings(F.normalize(self.model.get_image_features(pixel_values), dim=-1))


def _subsample(dataset, max_items: int | None, seed: int):
    if max_items is None or len(dataset) <= max_items:
        return dataset
    return dataset.select(sorted(random.Random(seed).sample(range(len(dataset)), max_items)))


def evaluate_zero_shot(
    model: nn.Module,
    data,
    transform,
    batch_size: int = 32,
    max_queries: int | None = None,
    seed: int = 0,
    progress: bool = True,
    split: str = "test",
    photo_to_photo: bool = True,
) -> dict:
    """Returns {"task", "metrics": {map@all, map@200, p@100, p@200, photo_map@all}, "per_class": [...],
    "num_queries", "num_gallery"} for `data[split]` (sketches = queries, photos = gallery)."""
    from hf_sbir.data import split_by_domain
    from hf_sbir.metrics import retrieval_metrics
    from hf_sbir.retrieval import embed_images

    sketches, photos = split_by_domain(data[split])
    if len(sketches) == 0 or len(photos) == 0:
        raise ValueError(f"The {split!r} split needs sketches and photos to evaluate (got {len(sketches)} and {len(photos)}).")
    sketches = _subsample(sketches, max_queries, seed)
    q = embed_images(model, sketches, transform, "sketch", batch_size=batch_size, progress=progress, desc="embed sketches")
    g = embed_images(model, photos, transform, "photo", batch_size=batch_size, progress=progress, desc="embed photos")
    names = data[split].features["label"].names
    q_labels = torch.tensor(sketches["label"])
    g_labels = torch.tensor(photos["label"])
    result = retrieval_metrics(q @ g.T, q_labels, g_labels)
    metrics = {k: float(result[k]) for k in ("map@all", "map@200", "p@100", "p@200")}
    if photo_to_photo:
        p2p = retrieval_metrics(g @ g.T, g_labels, g_labels, exclude_self=True, per_class=False)
        metrics["photo_map@all"] = float(p2p["map@all"])
    per_class = []
    for row in result.get("per_class", []):
        row = dict(row)
        label = row.get("label")
        if isinstance(label, int) or (torch.is_tensor(label) and label.ndim == 0):
            row["label"] = names[int(label)]
        per_class.append({k: (float(v) if isinstance(v, float) else v) for k, v in row.items()})
    return {
        "task": "zero-shot sketch->photo retrieval (unseen classes)",
        "metrics": metrics,
        "per_class": per_class,
        "num_queries": len(sketches),
        "num_gallery": len(photos),
    }


def format_metric_table(columns: dict[str, dict], keys=("map@all", "map@200", "p@100", "p@200", "photo_map@all")) -> str:
    """Markdown table, one column per named result ({name: evaluate_zero_shot(...)}), values in %."""
    names = list(columns)
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = []
        for name in names:
            value = (columns[name] or {}).get("metrics", {}).get(key)
            cells.append("–" if value is None else f"{100 * value:.2f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
