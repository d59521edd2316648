"""The evaluation engine: every figure hf-sbir reports is ranked and scored here.

Category-level retrieval (zero-shot SBIR: mAP@all, mAP@200, P@100, P@200 under a named protocol of
`hf_sbir.metrics.PROTOCOLS`), instance-level retrieval (fine-grained pairs, sketch -> view: Acc@k)
and the per-layer sweep of the shape-views method all go through `evaluate_embeddings`, which
scores chunks of queries against the gallery (cosine similarity of L2-normalised embeddings) and
never holds the Q x G similarity matrix. Its result type is `RetrievalEvaluation`.

Callers: the methods' ``evaluate`` (what `train.py` prints before and after fine-tuning),
``python -m hf_sbir.evaluate``, the benchmarks, and `evaluate_retrieval` (any model on any folder,
dataset or already-embedded `GalleryIndex`). The metric definitions are those of
`hf_sbir.metrics.retrieval_metrics` (same code: ``evaluate_embeddings(q, g, ...)`` equals
``retrieval_metrics(q @ g.T, ...)``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from hf_sbir.metrics.retrieval_metrics import (
    RetrievalProtocol,
    _resolve,
    check_ks,
    chunk_ranking_stats,
    chunk_target_ranks,
    default_chunk,
    encode_labels,
    exclude_indices,
    merge_stats,
    ranks_to_accuracy,
    release_freed_memory,
    stat_keys,
    stats_options,
    summarize_stats,
)
from hf_sbir.retrieval.index import GalleryIndex, build_gallery_index

__all__ = [
    "BackboneFeatureModel",
    "LayerSweep",
    "RetrievalEvaluation",
    "TRAINING_PROTOCOLS",
    "TooFewClassesError",
    "embed_all_layers",
    "evaluate_embeddings",
    "evaluate_fine_grained",
    "evaluate_instance_retrieval",
    "evaluate_layers",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "fine_grained_accuracy",
    "format_metric_table",
    "sweep_layers",
]

FINE_GRAINED_KS = (1, 5, 10)
# The protocols a zero-shot training run records (eval_before/after.json): its tables print the
# first; SAKE's is the one most recent ZS-SBIR tables use (see README, "Data, splits and metrics").
TRAINING_PROTOCOLS = ("textbook", "sake")


# --------------------------------------------------------------------------------------------
# result type
# --------------------------------------------------------------------------------------------
@dataclass
class RetrievalEvaluation:
    """What one evaluation measured.

    Attributes:
        metrics: ``{"map@all", "map@200", "p@100", "p@200", ...}`` (category level, under
            ``protocol``), ``{"acc@1", ...}`` (instance level), ``"photo_map@all"`` (photo->photo);
            floats in [0, 1].
        per_class: one dict per query class: ``label``, ``num_queries`` (and ``num_gallery_relevant``)
            and the metrics over that class's queries.
        num_queries / num_gallery: set sizes (the gallery after ``exclude_self``).
        task: what was evaluated, in words.
        protocol: the `RetrievalProtocol` settings of the category metrics (None for instance-level).
        settings: everything else that decides the numbers (similarity, tie rule, exclude_self, ...).
        notes: facts a reader of the table needs (e.g. a cut-off k larger than the gallery).
        per_layer / best_layer / feature_layer: the layer sweep of an instance evaluation
            (``{"<layer>": {"acc@1": ...}}``), its best layer and the model's own layer.
        by_protocol: the category metrics under each protocol evaluated from the same embeddings
            (``{"textbook": {...}, "sake": {...}}``; ``metrics`` holds the first one).
    """

    metrics: dict[str, float]
    per_class: list[dict] = field(default_factory=list)
    num_queries: int = 0
    num_gallery: int = 0
    task: str = ""
    protocol: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    per_layer: dict[str, dict[str, float]] | None = None
    best_layer: int | None = None
    feature_layer: int | None = None
    by_protocol: dict[str, dict[str, float]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (what the methods' ``evaluate`` return and `train.py` writes to ``eval_*.json``)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrievalEvaluation:
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in names})

    def as_table(self, per_class: bool = True, digits: int = 4) -> str:
        """Markdown: the overall metrics, the per-layer sweep (if any), then one row per query class."""

        def fmt(value: Any) -> str:
            if isinstance(value, float):
                return "nan" if math.isnan(value) else f"{value:.{digits}f}"
            return str(value)

        lines = [f"{self.num_queries} queries, {self.num_gallery} gallery items", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {fmt(value)} |" for name, value in self.metrics.items()]
        if self.per_layer:
            lines += ["", layer_table(self.per_layer, self.best_layer, self.feature_layer)]
        if per_class and self.per_class:
            columns = list(self.per_class[0])
            lines += ["", "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
            lines += ["| " + " | ".join(fmt(row.get(c)) for c in columns) + " |" for row in self.per_class]
        if self.notes:
            lines += [""] + [f"Note: {note}" for note in self.notes]
        return "\n".join(lines)


def _as_dict(result: RetrievalEvaluation | dict | None) -> dict:
    if result is None:
        return {}
    return result.to_dict() if isinstance(result, RetrievalEvaluation) else result


def format_metric_table(
    columns: dict[str, RetrievalEvaluation | dict | None], keys: Sequence[str] | None = None, footnotes: bool = True
) -> str:
    """Markdown table, one column per named result, values in %.

    Args:
        columns: ``{column title: RetrievalEvaluation or its dict}`` (None columns are shown as "–").
        keys: metric rows; default: the metrics of the first result, in its order.
        footnotes: below the table, the protocol the figures follow and the results' notes (e.g. a
            cut-off k larger than the gallery), each once.
    """
    names = list(columns)
    dicts = {name: _as_dict(columns[name]) for name in names}
    if keys is None:
        first = next((d for d in dicts.values() if d.get("metrics")), {})
        keys = [k for k, v in first.get("metrics", {}).items() if isinstance(v, (int, float))]
    lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = []
        for name in names:
            value = dicts[name].get("metrics", {}).get(key)
            cells.append("–" if value is None else f"{100 * value:.2f}")
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    if footnotes:
        extra: list[str] = []
        for d in dicts.values():
            protocol = d.get("protocol")
            if protocol:
                extra.append(f"Protocol: {protocol['name']} ({protocol['reference']}).")
            extra += [f"Note: {note}" for note in d.get("notes", [])]
        if extra:
            lines += [""] + list(dict.fromkeys(extra))
    return "\n".join(lines)


def layer_table(per_layer: dict[str, dict[str, float]], best_layer: int | None = None, feature_layer: int | None = None) -> str:
    """Markdown: one row per layer of a sweep (values in %); ``*`` marks the best, ``(model)`` the model's layer."""
    keys = list(next(iter(per_layer.values())))
    lines = ["| layer | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for layer, row in per_layer.items():
        mark = (" *" if best_layer is not None and int(layer) == best_layer else "") + (
            " (model)" if feature_layer is not None and int(layer) == feature_layer else ""
        )
        lines.append(f"| {layer}{mark} | " + " | ".join(f"{100 * row[k]:.2f}" for k in keys) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# the engine
# --------------------------------------------------------------------------------------------
def _cutoff_notes(protocol: RetrievalProtocol, num_gallery: int) -> list[str]:
    notes = []
    for k in sorted(set(protocol.map_ks) | set(protocol.precision_ks)):
        if k > num_gallery:
            keys = [f"map@{k}"] * (k in protocol.map_ks) + [f"p@{k}"] * (k in protocol.precision_ks)
            notes.append(
                f"k = {k} exceeds the gallery ({num_gallery} items): {' and '.join(keys)} use the whole ranking "
                f"(k is clipped to {num_gallery})."
            )
    return notes


def evaluate_embeddings(
    query_embeddings: torch.Tensor,
    gallery_embeddings: torch.Tensor,
    query_labels: Any = None,
    gallery_labels: Any = None,
    *,
    target_index: Any = None,
    protocol: str | RetrievalProtocol = "textbook",
    map_ks: Sequence[int] | None = None,
    precision_ks: Sequence[int] | None = None,
    average: str | None = None,
    instance_ks: Sequence[int] = FINE_GRAINED_KS,
    exclude_self: bool = False,
    per_class: bool = True,
    chunk_size: int | None = None,
    task: str = "",
) -> RetrievalEvaluation:
    """Rank the gallery for every query by the dot product of the embeddings (cosine similarity for
    L2-normalised ones) and score the rankings; queries are processed ``chunk_size`` at a time.

    Args:
        query_embeddings: ``(Q, D)``. gallery_embeddings: ``(G, D)``.
        query_labels / gallery_labels: classes (ints or names); both given -> category metrics
            under ``protocol``. Query labels alone (with ``target_index``) give per-class Acc@k rows.
        target_index: ``(Q,)`` gallery index of each query's one true item -> instance ``acc@k``.
        protocol / map_ks / precision_ks / average: see `hf_sbir.metrics.retrieval_metrics`.
        instance_ks: the Acc@k cut-offs.
        exclude_self: queries and gallery are the same set: drop query i from its own gallery.
        per_class: report one row per query class.
        chunk_size: queries per chunk (default: about 4M similarities per chunk). Memory is
            O(chunk_size x G), whatever Q is.
        task: recorded in the result.
    """
    q_emb = torch.as_tensor(query_embeddings)
    g_emb = torch.as_tensor(gallery_embeddings)
    if q_emb.dim() != 2 or g_emb.dim() != 2:
        raise ValueError(f"embeddings must be (N, D) matrices; got {tuple(q_emb.shape)} and {tuple(g_emb.shape)}")
    if q_emb.shape[1] != g_emb.shape[1]:
        raise ValueError(f"query embeddings have dim {q_emb.shape[1]} but the gallery has {g_emb.shape[1]}")
    if g_emb.shape[0] == 0:
        raise ValueError("the gallery is empty")
    num_queries, num_gallery = q_emb.shape[0], g_emb.shape[0]
    category = query_labels is not None and gallery_labels is not None
    instance = target_index is not None
    if not category and not instance:
        raise ValueError("nothing to score: give query and gallery labels (category level) and/or target_index (instance level)")
    exclude = exclude_indices(exclude_self, num_queries, num_gallery)
    effective_gallery = num_gallery - (1 if exclude_self else 0)

    proto = options = None
    names = None
    if category:
        proto = _resolve(protocol, average=average, map_ks=map_ks, precision_ks=precision_ks)
        q_ids, g_ids, names = encode_labels(query_labels, gallery_labels)
        if q_ids.numel() != num_queries or g_ids.numel() != num_gallery:
            raise ValueError(f"got {q_ids.numel()} query / {g_ids.numel()} gallery labels for {num_queries} / {num_gallery} embeddings")
        options = stats_options(proto, proto.map_ks, proto.precision_ks)
    if instance:
        instance_ks = check_ks(instance_ks, "instance_ks")
        targets = torch.as_tensor(target_index).long().reshape(-1)
        if targets.numel() != num_queries:
            raise ValueError(f"got {targets.numel()} target indices for {num_queries} queries")
        if num_queries and (targets.min() < 0 or targets.max() >= num_gallery):
            raise ValueError(f"target_index values must lie in [0, {num_gallery})")

    step = default_chunk(num_gallery, chunk_size)
    stats_parts, rank_parts = [], []
    g_t = g_emb.T.contiguous()
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        sims = q_emb[start:stop] @ g_t
        drop = None if exclude is None else exclude[start:stop]
        if category:
            stats_parts.append(chunk_ranking_stats(sims, q_ids[start:stop], g_ids, exclude_index=drop, **options))
        if instance:
            rank_parts.append(chunk_target_ranks(sims, targets[start:stop], drop))
        del sims
        release_freed_memory()  # keeps resident memory flat over thousands of chunks (see there)

    metrics: dict[str, float] = {}
    rows: list[dict] = []
    settings: dict[str, Any] = {"similarity": "dot product (cosine for L2-normalised embeddings)",
                                "tie_break": "gallery index ascending", "exclude_self": exclude_self}
    notes: list[str] = []
    if category:
        stats = merge_stats(stats_parts, stat_keys(**options), effective_gallery)
        summary = summarize_stats(stats, q_ids, g_ids, names, proto, per_class=per_class)
        rows = summary.pop("per_class", [])
        if "num_excluded_queries" in summary:
            settings["num_excluded_queries"] = summary["num_excluded_queries"]
        metrics.update({k: v for k, v in summary.items() if isinstance(v, float)})
        notes += _cutoff_notes(proto, effective_gallery)
    if instance:
        ranks = torch.cat(rank_parts) if rank_parts else torch.zeros(0, dtype=torch.long)
        metrics.update(ranks_to_accuracy(ranks, instance_ks))
        if per_class and query_labels is not None:
            q_ids_i, _, q_names = encode_labels(query_labels, query_labels)
            by_label = {row["label"]: row for row in rows}
            for c in torch.unique(q_ids_i).tolist():
                label = q_names[c] if q_names is not None else c
                mask = q_ids_i == c
                accuracy = ranks_to_accuracy(ranks[mask], instance_ks)
                if label in by_label:
                    by_label[label].update(accuracy)
                else:
                    rows.append({"label": label, "num_queries": int(mask.sum()), **accuracy})
        if max(instance_ks) > effective_gallery:
            notes.append(f"k = {max(instance_ks)} exceeds the gallery ({effective_gallery} items): acc@k is clipped to it.")
    return RetrievalEvaluation(
        metrics=metrics, per_class=rows, num_queries=num_queries, num_gallery=effective_gallery, task=task,
        protocol=proto.settings() if proto is not None else None, settings=settings, notes=notes,
    )


# --------------------------------------------------------------------------------------------
# category level: zero-shot SBIR on a DatasetDict split
# --------------------------------------------------------------------------------------------
@dataclass
class _Embeddings:
    embeddings: torch.Tensor


class BackboneFeatureModel(nn.Module):
    """Wrap a model so `.embeddings` is its backbone's own image representation, without the SBIR
    heads: ``model.get_image_features(pixel_values) -> (B, D)``, L2-normalised. On a fine-tuned model
    these are the *fine-tuned* backbone's features; the untrained baseline is this wrapper around
    the backbone the model was built from (`hf_sbir.evaluate`'s ``--untrained_baseline``)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> _Embeddings:
        return _Embeddings(F.normalize(self.model.get_image_features(pixel_values), dim=-1))


def _subsample(dataset, max_items: int | None, seed: int):
    if max_items is None or len(dataset) <= max_items:
        return dataset
    return dataset.select(sorted(random.Random(seed).sample(range(len(dataset)), max_items)))


def _class_names(dataset, labels: list) -> list:
    feature = dataset.features["label"]
    names = getattr(feature, "names", None)
    return [names[v] for v in labels] if names is not None else list(labels)


class TooFewClassesError(ValueError):
    """A split on which category-level metrics would mean nothing (see `check_category_split`)."""


def check_category_split(query_labels: Sequence, gallery_labels: Sequence, split: str = "test") -> None:
    """Refuse a split on which category metrics mean nothing: fewer than two classes in the gallery
    (every item relevant to every query: 100% on every metric) or no query with a relevant item."""
    if not query_labels or not gallery_labels:
        raise TooFewClassesError(f"The {split!r} split needs sketches and photos to evaluate (got {len(query_labels)} and {len(gallery_labels)}).")
    gallery_classes = sorted(set(gallery_labels), key=str)
    if len(gallery_classes) < 2:
        raise TooFewClassesError(
            f"The {split!r} split has photos of only {len(gallery_classes)} class ({', '.join(map(str, gallery_classes))}): "
            "every photo would be relevant to every sketch and every metric 100%. Evaluate on at least two classes."
        )
    if not set(query_labels) & set(gallery_labels):
        raise ValueError(f"No sketch class of the {split!r} split has photos in it; there is nothing to retrieve.")


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
    protocol: str | RetrievalProtocol | Sequence[str | RetrievalProtocol] = "textbook",
    chunk_size: int | None = None,
) -> RetrievalEvaluation:
    """Category-level retrieval on ``data[split]``: its sketches query, its photos are the gallery.

    Reports mAP@all, mAP@200, P@100, P@200 under ``protocol`` and, with ``photo_to_photo``, the
    photo->photo mAP@all (each photo queries the other photos; same protocol), per class too.
    ``protocol`` may be a list: the images are embedded once, ``metrics`` / ``per_class`` are
    those of the first protocol and ``by_protocol`` holds every protocol's metrics.
    ``max_queries`` subsamples the sketches (seeded by ``seed``). Raises ``ValueError`` when the
    split cannot give a meaningful score (`check_category_split`).
    """
    from hf_sbir.data import split_by_domain
    from hf_sbir.retrieval.embedding import embed_images

    sketches, photos = split_by_domain(data[split])
    check_category_split(_class_names(data[split], list(sketches["label"])), _class_names(data[split], list(photos["label"])), split)
    sketches = _subsample(sketches, max_queries, seed)
    q = embed_images(model, sketches, transform, "sketch", batch_size=batch_size, progress=progress, desc="embed sketches")
    g = embed_images(model, photos, transform, "photo", batch_size=batch_size, progress=progress, desc="embed photos")
    q_names = _class_names(data[split], list(sketches["label"]))
    g_names = _class_names(data[split], list(photos["label"]))
    protocols = [protocol] if isinstance(protocol, (str, RetrievalProtocol)) else list(protocol)
    if not protocols:
        raise ValueError("give at least one evaluation protocol")
    results = []
    for proto in protocols:
        result = evaluate_embeddings(
            q, g, q_names, g_names, protocol=proto, chunk_size=chunk_size,
            task="zero-shot sketch->photo retrieval (unseen classes)",
        )
        if photo_to_photo:
            p2p = evaluate_embeddings(g, g, g_names, g_names, protocol=proto, exclude_self=True, per_class=False, chunk_size=chunk_size)
            result.metrics["photo_map@all"] = p2p.metrics["map@all"]
        results.append(result)
    main = results[0]
    if len(results) > 1:
        main.by_protocol = {r.protocol["name"]: dict(r.metrics) for r in results}
    return main


# --------------------------------------------------------------------------------------------
# instance level: fine-grained pairs
# --------------------------------------------------------------------------------------------
def fine_grained_accuracy(sketch_embeddings: torch.Tensor, photo_embeddings: torch.Tensor, target_index, ks=FINE_GRAINED_KS) -> dict[str, float]:
    """Acc@q: the share of sketches whose paired photo (``target_index[i]``, a gallery index) ranks in
    the top q of the cosine scores; ties go against the target (`hf_sbir.metrics.accuracy_at_k`)."""
    return evaluate_embeddings(sketch_embeddings, photo_embeddings, target_index=target_index, instance_ks=ks).metrics


def evaluate_fine_grained(
    model: nn.Module,
    dataset,
    transform,
    batch_size: int = 32,
    max_queries: int | None = None,
    seed: int = 0,
    progress: bool = False,
    ks=FINE_GRAINED_KS,
) -> RetrievalEvaluation:
    """Acc@1/5/10 of ``model`` on one fine-grained split (sketches query; every photo of the split is
    the gallery; a sketch's target is the photo it was drawn from, `hf_sbir.data.fg_paired`)."""
    from hf_sbir.data.fg_paired import fine_grained_split
    from hf_sbir.retrieval.embedding import embed_images

    sketches, photos, targets = fine_grained_split(dataset)
    if max_queries is not None and len(sketches) > max_queries:
        keep = sorted(random.Random(seed).sample(range(len(sketches)), max_queries))
        sketches, targets = sketches.select(keep), [targets[i] for i in keep]
    q = embed_images(model, sketches, transform, "sketch", batch_size=batch_size, progress=progress, desc="embed sketches")
    g = embed_images(model, photos, transform, "photo", batch_size=batch_size, progress=progress, desc="embed photos")
    result = evaluate_embeddings(
        q, g, target_index=targets, instance_ks=ks,
        task="fine-grained sketch->photo retrieval (Acc@q: share of sketches whose paired photo is in the top q)",
    )
    result.per_class = []
    return result


# --------------------------------------------------------------------------------------------
# instance level: sketch -> view, at every layer of a ShapeViewsModel
# --------------------------------------------------------------------------------------------
@dataclass
class LayerSweep:
    """Per-layer retrieval accuracy from `sweep_layers`.

    Args:
        per_layer: ``{layer: {"acc@1": ..., "acc@5": ...}}`` for every evaluated layer (numbering of
            `num_feature_layers`).
        metric: the metric `best_layer` maximises.
        best_layer: the layer with the highest ``metric`` (the lowest such layer on ties).
        num_queries, num_gallery: sizes of the evaluation.
        skipped_layers: layers the pooling does not apply to (``"cls"`` on a CNN map).
    """

    per_layer: dict[int, dict[str, float]]
    metric: str
    best_layer: int
    num_queries: int
    num_gallery: int
    skipped_layers: list[int] = field(default_factory=list)

    def to_markdown(self) -> str:
        return layer_table({str(k): v for k, v in self.per_layer.items()}, self.best_layer)

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
    """(B, 3, H, W) batches from a pixel tensor, a `datasets.Dataset` with an ``image`` column, or a
    sequence of images (PIL images, paths, datasets image dicts) run through ``transform.batch``."""
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
            raise ValueError(f"Without target_index, query i matches gallery item i; got {num_queries} queries for {num_gallery} items.")
        return torch.arange(num_queries)
    target = torch.as_tensor(target_index, dtype=torch.long).reshape(-1)
    if target.numel() != num_queries:
        raise ValueError(f"target_index has {target.numel()} entries for {num_queries} queries.")
    if num_queries and (target.min() < 0 or target.max() >= num_gallery):
        raise ValueError(f"target_index values must be in [0, {num_gallery}).")
    return target


@torch.no_grad()
def embed_all_layers(model, items, transform, domain: str, batch_size: int, device, pooling: str | None = None) -> list[torch.Tensor | None]:
    """Every layer's pooled, L2-normalised features of ``items`` (inputs as in `sweep_layers`), one
    forward pass per batch: a list indexed by layer of ``(N, D_l)`` CPU tensors (None where the
    pooling does not apply). The model should be in eval mode."""
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


def _embed_layers_eval(model, queries, gallery, transform, batch_size, device, pooling, query_domain, gallery_domain):
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:  # one pass per batch gives every layer; the model's own layer is one of them
        q = embed_all_layers(model, queries, transform, query_domain, batch_size, device, pooling)
        g = embed_all_layers(model, gallery, transform, gallery_domain, batch_size, device, pooling)
    finally:
        model.train(was_training)
    return q, g


def evaluate_layers(
    query_layers: list[torch.Tensor | None],
    gallery_layers: list[torch.Tensor | None],
    target_index,
    feature_layer: int,
    *,
    query_classes: Sequence | None = None,
    ks: Sequence[int] = (1, 5),
    sweep: bool = True,
    task: str = "instance-level sketch->view retrieval (unseen shape classes)",
) -> RetrievalEvaluation:
    """Instance-level Acc@k at ``feature_layer`` (per query class with ``query_classes``) and, with
    ``sweep``, at every layer (``per_layer``, ``best_layer``: highest Acc@ks[0], lowest layer on ties)
    from per-layer embeddings (`embed_all_layers`)."""
    target = _target_index(target_index, query_layers[feature_layer].shape[0], gallery_layers[feature_layer].shape[0])
    result = evaluate_embeddings(
        query_layers[feature_layer], gallery_layers[feature_layer], query_classes, target_index=target, instance_ks=ks, task=task,
    )
    result.feature_layer = int(feature_layer)
    if sweep:
        per_layer = {
            str(i): evaluate_embeddings(q, g, target_index=target, instance_ks=ks).metrics
            for i, (q, g) in enumerate(zip(query_layers, gallery_layers))
            if q is not None
        }
        metric = f"acc@{ks[0]}"
        result.per_layer = per_layer
        result.best_layer = int(max(per_layer, key=lambda i: (per_layer[i][metric], -int(i))))
    return result


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

    Each batch goes through the encoder once; every layer's pooled, L2-normalised features are
    collected from that pass (``output_all_layers=True``), then each layer is scored by
    `evaluate_embeddings`.

    Args:
        model: a `ShapeViewsModel`.
        queries, gallery: ``(N, 3, H, W)`` pixel tensors, a `datasets.Dataset` with an ``image``
            column, or sequences of images (PIL images / paths), processed with ``transform``
            (default: `ShapeViewsImageTransform.for_model(model)`, which scale-normalises both sides).
        target_index: ``(Q,)`` gallery index of each query's true view; default: query i matches item i.
        layers: layers to report (default: all).
        ks: the Acc@k cut-offs. metric: what `best_layer` maximises (default ``acc@{ks[0]}``).
        pooling: override ``model.config.pooling`` for the sweep.
        batch_size, device: embedding batch size and device (default: the model's).
        query_domain, gallery_domain: domains passed to the transform.
    """
    ks = tuple(ks)
    metric = metric or f"acc@{ks[0]}"
    if metric not in {f"acc@{k}" for k in ks}:
        raise ValueError(f"metric {metric!r} is not one of the reported acc@k ({ks}).")
    transform = _default_transform(model, transform, queries, gallery)
    q, g = _embed_layers_eval(model, queries, gallery, transform, batch_size, device, pooling, query_domain, gallery_domain)
    num_layers = len(q)
    chosen = list(range(num_layers)) if layers is None else [int(layer) % num_layers for layer in layers]
    target = _target_index(target_index, q[0].shape[0] if q[0] is not None else _length(queries), _length(gallery))
    per_layer, skipped = {}, []
    for layer in chosen:
        if q[layer] is None:
            skipped.append(layer)
            continue
        per_layer[layer] = evaluate_embeddings(q[layer], g[layer], target_index=target, instance_ks=ks).metrics
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
    """Instance-level Acc@k (``{"acc@1": ..., "acc@5": ...}``) of sketch -> view retrieval at the
    model's layer (or ``feature_layer``). Inputs as in `sweep_layers`."""
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
    return evaluate_embeddings(q, g, target_index=target, instance_ks=tuple(ks)).metrics


# --------------------------------------------------------------------------------------------
# any model on any folder / dataset / GalleryIndex
# --------------------------------------------------------------------------------------------
def _embed_side(model, source, transform, domain, desc, **kwargs) -> GalleryIndex:
    if isinstance(source, GalleryIndex):
        return source
    return build_gallery_index(model, source, transform, domain=domain, desc=desc, **kwargs)


def _target_indices(query_meta: list[dict], gallery_meta: list[dict], query_key: str | None, gallery_key: str) -> torch.Tensor:
    if query_key is None:
        query_key = "pair_id" if any("pair_id" in m for m in query_meta) else "id"
    gallery_ids = [m.get(gallery_key) for m in gallery_meta]
    if any(v is None for v in gallery_ids):
        raise ValueError(f"instance=True needs a {gallery_key!r} value for every gallery item")
    position: dict[Any, int] = {}
    for i, value in enumerate(gallery_ids):
        if value in position:
            raise ValueError(f"gallery {gallery_key!r} values must be unique for instance=True; {value!r} repeats")
        position[value] = i
    targets, missing = [], []
    for i, m in enumerate(query_meta):
        value = m.get(query_key)
        if value not in position:
            missing.append((i, value))
        targets.append(position.get(value, -1))
    if missing:
        shown = ", ".join(f"query {i}: {v!r}" for i, v in missing[:5])
        raise ValueError(
            f"instance=True: {len(missing)} queries have no gallery item whose {gallery_key!r} equals their "
            f"{query_key!r} ({shown}{', ...' if len(missing) > 5 else ''})"
        )
    return torch.tensor(targets, dtype=torch.long)


def evaluate_retrieval(
    model: torch.nn.Module | None,
    queries: Any,
    gallery: Any,
    transform=None,
    batch_size: int = 64,
    map_ks: Sequence[int] | None = None,
    precision_ks: Sequence[int] | None = None,
    instance: bool = False,
    instance_ks: Sequence[int] = FINE_GRAINED_KS,
    exclude_self: bool = False,
    *,
    protocol: str | RetrievalProtocol = "textbook",
    query_domain: str | None = "sketch",
    gallery_domain: str | None = "photo",
    label_column: str = "label",
    image_column: str = "image",
    query_target_column: str | None = None,
    gallery_id_column: str = "id",
    map_normalize: str | None = None,
    precision_normalize: str | None = None,
    no_relevant: str | None = None,
    average: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    chunk_size: int | None = None,
    model_kwargs: dict | None = None,
) -> RetrievalEvaluation:
    """Embed ``queries`` and ``gallery`` with ``model``, rank the gallery for every query by cosine
    similarity and compute every metric (`evaluate_embeddings`).

    Args:
        model: ``model(pixel_values=batch).embeddings -> (B, D)`` (may be None when both sides are
            `GalleryIndex` objects, i.e. already embedded).
        queries / gallery: a `datasets.Dataset` (image + ``label`` column), a folder
            (``<root>/<class>/<image>``), a list of paths, or an already-embedded `GalleryIndex`
            (its metadata supplies labels and ids). Labels are compared by value; `ClassLabel`
            columns are compared by class *name*, so the two sides may number classes differently.
        transform: ``transform(pil_image, domain) -> (3, H, W)``.
        map_ks / precision_ks: cut-offs (default: the protocol's); ``map@all`` is always reported.
        instance: also report instance-level ``acc@k`` (``instance_ks``). Query i's target is the
            gallery item whose ``gallery_id_column`` (default ``"id"``) equals the query's
            ``query_target_column`` -- by default its ``"pair_id"`` column when present, else its
            ``"id"``. Every query must have exactly one target.
        exclude_self: queries and gallery are the same set (photo-to-photo retrieval): pass the same
            object twice (``query_domain="photo"``); it is embedded once.
        protocol: the category-level evaluation protocol (`hf_sbir.metrics.PROTOCOLS`);
            ``map_normalize`` / ``precision_normalize`` / ``no_relevant`` / ``average`` override it.
        query_domain / gallery_domain: passed to ``transform``; None = use a ``domain`` column.
        chunk_size: queries scored at a time (default: about 4M similarities per chunk).

    Category metrics need labels on both sides; without them only instance metrics are computed.
    """
    proto = _resolve(
        protocol, map_normalize=map_normalize, precision_normalize=precision_normalize, no_relevant=no_relevant,
        average=average, map_ks=map_ks, precision_ks=precision_ks,
    )
    instance_ks = check_ks(instance_ks, "instance_ks")
    needs_model = not (isinstance(queries, GalleryIndex) and isinstance(gallery, GalleryIndex))
    if needs_model and (model is None or transform is None):
        raise ValueError("a model and a transform are needed to embed images (only GalleryIndex inputs need none)")
    common = dict(
        batch_size=batch_size, device=device, progress=progress, image_column=image_column,
        label_column=label_column, model_kwargs=model_kwargs,
    )
    gallery_index = _embed_side(model, gallery, transform, gallery_domain, "embedding gallery", **common)
    if queries is gallery and query_domain == gallery_domain:
        query_index = gallery_index
    else:
        query_index = _embed_side(model, queries, transform, query_domain, "embedding queries", **common)
    q_meta, g_meta = query_index.metadata, gallery_index.metadata
    q_labels = [m.get("label") for m in q_meta]
    g_labels = [m.get("label") for m in g_meta]
    category = all(v is not None for v in q_labels) and all(v is not None for v in g_labels)
    if not category and not instance:
        raise ValueError(
            f"category metrics need a {label_column!r} for every query and gallery item (folders: one sub-folder "
            "per class); pass instance=True for instance-level metrics only"
        )
    targets = _target_indices(q_meta, g_meta, query_target_column, gallery_id_column) if instance else None
    return evaluate_embeddings(
        query_index.embeddings, gallery_index.embeddings,
        q_labels if category else None, g_labels if category else None,
        target_index=targets, protocol=proto, instance_ks=instance_ks, exclude_self=exclude_self,
        chunk_size=chunk_size, task="sketch->photo retrieval",
    )
