"""Instance-level sketch -> view retrieval: Acc@k at the model's layer, and at every layer at once.

```python
>>> sweep = sweep_layers(model, query_sketches, gallery_views)      # query i's match is gallery item i
>>> print(sweep.to_markdown()); sweep.best_layer
>>> model.config.feature_layer = sweep.best_layer
```

Acc@k is the share of queries whose true gallery item is among the k most similar (cosine similarity),
computed by `hf_sbir.metrics.instance_metrics` (ties never inflate it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import torch


@dataclass
class LayerSweep:
    """Per-layer retrieval accuracy from `sweep_layers`.

    Args:
        per_layer: `{layer: {"acc@1": ..., "acc@5": ...}}` for every evaluated layer (numbering of
            `num_feature_layers`).
        metric: the metric `best_layer` maximises.
        best_layer: the layer with the highest `metric` (the lowest such layer on ties).
        num_queries, num_gallery: sizes of the evaluation.
        skipped_layers: layers the pooling does not apply to (`"cls"` on a CNN map).
    """

    per_layer: dict[int, dict[str, float]]
    metric: str
    best_layer: int
    num_queries: int
    num_gallery: int
    skipped_layers: list[int] = field(default_factory=list)

    def to_markdown(self) -> str:
        keys = list(next(iter(self.per_layer.values())))
        lines = ["| layer | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for layer, row in self.per_layer.items():
            mark = " *" if layer == self.best_layer else ""
            lines.append(f"| {layer}{mark} | " + " | ".join(f"{100 * row[k]:.2f}" for k in keys) + " |")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "per_layer": {str(k): v for k, v in self.per_layer.items()},
            "metric": self.metric,
            "best_layer": self.best_layer,
            "num_queries": self.num_queries,
            "num_gallery": self.num_gallery,
            "skipped_layers": self.skipped_layers,
        }


def _pixel_batches(items, transform, domain: str, batch_size: int) -> Iterator[torch.Tensor]:
    """(B, 3, H, W) batches from a pixel tensor, a `datasets.Dataset` with an `image` column, or a sequence of
    images (PIL images, paths, datasets image dicts) run through `transform.batch`."""
    if torch.is_tensor(items):
        if items.dim() != 4:
            raise ValueError(f"A tensor of inputs must be (N, 3, H, W) pixel values; got {tuple(items.shape)}.")
        for start in range(0, items.shape[0], batch_size):
            yield items[start : start + batch_size]
        return
    if transform is None:
        raise ValueError("Images need a transform (e.g. ShapeViewsImageTransform.for_model(model)).")
    column = items["image"] if hasattr(items, "column_names") else items
    for start in range(0, len(column), batch_size):
        chunk = list(column[start : start + batch_size])
        yield transform.batch(chunk, [domain] * len(chunk))


def _length(items) -> int:
    return int(items.shape[0]) if torch.is_tensor(items) else len(items)


def _default_transform(model, transform, *inputs):
    if transform is not None or all(torch.is_tensor(x) for x in inputs):
        return transform
    from hf_sbir.models.shape_views.processing_shape_views import ShapeViewsImageTransform

    return ShapeViewsImageTransform.for_model(model)


def _target_index(target_index, num_queries: int, num_gallery: int) -> torch.Tensor:
    if target_index is None:
        if num_queries > num_gallery:
            raise ValueError(
                f"Without target_index, query i matches gallery item i; got {num_queries} queries for {num_gallery} items."
            )
        return torch.arange(num_queries)
    target = torch.as_tensor(target_index, dtype=torch.long).reshape(-1)
    if target.numel() != num_queries:
        raise ValueError(f"target_index has {target.numel()} entries for {num_queries} queries.")
    if num_queries and (target.min() < 0 or target.max() >= num_gallery):
        raise ValueError(f"target_index values must be in [0, {num_gallery}).")
    return target


@torch.no_grad()
def embed_all_layers(model, items, transform, domain: str, batch_size: int, device, pooling: str | None = None) -> list[torch.Tensor | None]:
    """Every layer's pooled, L2-normalised features of `items` (inputs as in `sweep_layers`), one forward pass
    per batch: a list indexed by layer of `(N, D_l)` CPU tensors (None where the pooling does not apply).
    The model should be in eval mode."""
    per_layer: list[list[torch.Tensor] | None] | None = None
    for pixel_values in _pixel_batches(items, transform, domain, batch_size):
        out = model(pixel_values=pixel_values.to(device), output_all_layers=True, pooling=pooling)
        if per_layer is None:
            per_layer = [None if e is None else [] for e in out.layer_embeddings]
        for store, emb in zip(per_layer, out.layer_embeddings):
            if store is not None:
                store.append(emb.float().cpu())
    if per_layer is None:
        raise ValueError("No inputs to embed.")
    return [None if store is None else torch.cat(store) for store in per_layer]


def sweep_layers(
    model,
    queries,
    gallery,
    target_index=None,
    *,
    layers: Sequence[int] | None = None,
    transform=None,
    ks: Sequence[int] = (1, 5),
    metric: str | None = None,
    pooling: str | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    query_domain: str = "sketch",
    gallery_domain: str = "view",
) -> LayerSweep:
    """Instance-level Acc@k of sketch -> view retrieval at every layer of a `ShapeViewsModel`.

    Each batch goes through the encoder once; every layer's pooled, L2-normalised features are collected
    from that pass (`output_all_layers=True`), then each layer ranks the gallery by cosine similarity.

    Args:
        model: a `ShapeViewsModel`.
        queries, gallery: `(N, 3, H, W)` pixel tensors, a `datasets.Dataset` with an `image` column, or
            sequences of images (PIL images / paths), processed with `transform` (default:
            `ShapeViewsImageTransform.for_model(model)`, which scale-normalises both sides).
        target_index: `(Q,)` gallery index of each query's true view; default: query i matches gallery item i.
        layers: layers to report (default: all).
        ks: the Acc@k cut-offs.
        metric: what `best_layer` maximises (default `acc@{ks[0]}`).
        pooling: override `model.config.pooling` for the sweep.
        batch_size, device: embedding batch size and device (default: the model's).
        query_domain, gallery_domain: domains passed to the transform.
    """
    from hf_sbir.metrics import instance_metrics

    ks = tuple(ks)
    metric = metric or f"acc@{ks[0]}"
    if metric not in {f"acc@{k}" for k in ks}:
        raise ValueError(f"metric {metric!r} is not one of the reported acc@k ({ks}).")
    transform = _default_transform(model, transform, queries, gallery)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        q = embed_all_layers(model, queries, transform, query_domain, batch_size, device, pooling)
        g = embed_all_layers(model, gallery, transform, gallery_domain, batch_size, device, pooling)
    finally:
        model.train(was_training)
    num_layers = len(q)
    chosen = list(range(num_layers)) if layers is None else [int(layer) % num_layers for layer in layers]
    target = _target_index(target_index, q[0].shape[0] if q[0] is not None else _length(queries), _length(gallery))
    per_layer, skipped = {}, []
    for layer in chosen:
        if q[layer] is None:
            skipped.append(layer)
            continue
        per_layer[layer] = instance_metrics(q[layer] @ g[layer].T, target, ks=ks)
    if not per_layer:
        raise ValueError(f"pooling does not apply to any of the layers {chosen}.")
    best = max(per_layer, key=lambda layer: (per_layer[layer][metric], -layer))
    return LayerSweep(
        per_layer=per_layer, metric=metric, best_layer=best, num_queries=int(target.numel()),
        num_gallery=_length(gallery), skipped_layers=skipped,
    )


@torch.no_grad()
def evaluate_instance_retrieval(
    model,
    queries,
    gallery,
    target_index=None,
    *,
    transform=None,
    ks: Sequence[int] = (1, 5),
    feature_layer: int | None = None,
    batch_size: int = 32,
    device: str | torch.device | None = None,
    query_domain: str = "sketch",
    gallery_domain: str = "view",
) -> dict[str, float]:
    """Instance-level Acc@k (`{"acc@1": ..., "acc@5": ...}`) of sketch -> view retrieval at the model's layer
    (or `feature_layer`). Inputs as in `sweep_layers`."""
    from hf_sbir.metrics import instance_metrics

    transform = _default_transform(model, transform, queries, gallery)
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()

    def embed(items, domain: str) -> torch.Tensor:
        return torch.cat([
            model(pixel_values=px.to(device), feature_layer=feature_layer).embeddings.float().cpu()
            for px in _pixel_batches(items, transform, domain, batch_size)
        ])

    try:
        q, g = embed(queries, query_domain), embed(gallery, gallery_domain)
    finally:
        model.train(was_training)
    target = _target_index(target_index, q.shape[0], g.shape[0])
    return instance_metrics(q @ g.T, target, ks=tuple(ks))


__all__ = ["LayerSweep", "embed_all_layers", "evaluate_instance_retrieval", "sweep_layers"]
