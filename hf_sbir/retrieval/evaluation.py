"""End-to-end retrieval evaluation: embed queries and gallery, rank by cosine similarity, score.

The metric definitions are those of `hf_sbir.metrics.retrieval_metrics` (same code path, so
`evaluate_retrieval(...)` equals `retrieval_metrics(q @ g.T, ...)` on the same embeddings); the
similarity matrix is never materialised whole: queries are scored in chunks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from hf_sbir.metrics.retrieval_metrics import (
    check_ks,
    check_metric_options,
    chunk_ranking_stats,
    chunk_target_ranks,
    default_chunk,
    encode_labels,
    exclude_indices,
    merge_stats,
    ranks_to_accuracy,
    summarize_stats,
)
from hf_sbir.retrieval.index import GalleryIndex, build_gallery_index

__all__ = ["RetrievalEvaluation", "evaluate_retrieval"]

@dataclass
class RetrievalEvaluation:
    """Result of `evaluate_retrieval`.

    Attributes:
        metrics: ``{"map@all", "map@200", "p@100", "p@200", ...}`` (category level) and, with
            ``instance=True``, ``{"acc@1", "acc@5", "acc@10"}``; floats in [0, 1].
        per_class: one dict per query class: ``label``, ``num_queries``,
            ``num_gallery_relevant`` and the category metrics over that class's queries.
        num_queries / num_gallery: set sizes.
        settings: the metric options used (normalisers, no-relevant policy, exclude_self, ...).
    """

    metrics: dict[str, float]
    per_class: list[dict] = field(default_factory=list)
    num_queries: int = 0
    num_gallery: int = 0
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_table(self, per_class: bool = True, digits: int = 4) -> str:
        """Markdown: one table of the overall metrics, then (optionally) one row per query class."""

        def fmt(value: Any) -> str:
            if isinstance(value, float):
                return "nan" if math.isnan(value) else f"{value:.{digits}f}"
            return str(value)

        lines = [
            f"{self.num_queries} queries, {self.num_gallery} gallery items",
            "",
            "| metric | value |",
            "|---|---:|",
        ]
        lines += [f"| {name} | {fmt(value)} |" for name, value in self.metrics.items()]
        if per_class and self.per_class:
            columns = list(self.per_class[0])
            lines += ["", "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
            lines += ["| " + " | ".join(fmt(row[c]) for c in columns) + " |" for row in self.per_class]
        return "\n".join(lines)


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
    map_ks: Sequence[int] = (200,),
    precision_ks: Sequence[int] = (100, 200),
    instance: bool = False,
    instance_ks: Sequence[int] = (1, 5, 10),
    exclude_self: bool = False,
    *,
    query_domain: str | None = "sketch",
    gallery_domain: str | None = "photo",
    label_column: str = "label",
    image_column: str = "image",
    query_target_column: str | None = None,
    gallery_id_column: str = "id",
    map_normalize: str = "retrieved",
    precision_normalize: str = "k",
    no_relevant: str = "zero",
    device: str | torch.device | None = None,
    progress: bool = True,
    chunk_size: int | None = None,
    model_kwargs: dict | None = None,
) -> RetrievalEvaluation:
    """Embed ``queries`` and ``gallery`` with ``model``, rank the gallery for every query by cosine
    similarity and compute every metric.

    Args:
        model: ``model(pixel_values=batch).embeddings -> (B, D)`` (may be None when both sides are
            `GalleryIndex` objects, i.e. already embedded).
        queries / gallery: a `datasets.Dataset` (image + ``label`` column), a folder
            (``<root>/<class>/<image>``), a list of paths, or an already-embedded `GalleryIndex`
            (its metadata supplies labels and ids). Labels are compared by value; `ClassLabel`
            columns are compared by class *name*, so the two sides may number classes differently.
        transform: ``transform(pil_image, domain) -> (3, H, W)``.
        map_ks / precision_ks: cut-offs for ``map@k`` / ``p@k`` (``map@all`` is always reported).
        instance: also report instance-level ``acc@k`` (``instance_ks``). Query i's target is the
            gallery item whose ``gallery_id_column`` (default ``"id"``) equals the query's
            ``query_target_column`` -- by default its ``"pair_id"`` column when present, else its
            ``"id"`` (fine-grained sets where a sketch and its photo share an id). Every query
            must have exactly one target.
        exclude_self: queries and gallery are the same set (photo-to-photo retrieval): each query
            is removed from its own gallery (see `hf_sbir.metrics.retrieval_metrics`). Pass the
            same object twice (``evaluate_retrieval(model, photos, photos, ..., exclude_self=True,
            query_domain="photo")``); it is embedded once.
        query_domain / gallery_domain: passed to ``transform``; None = use a ``domain`` column.
        map_normalize / precision_normalize / no_relevant: metric variants, see
            `hf_sbir.metrics.retrieval_metrics` (defaults: SEM-PCYC-style mAP@k, textbook P@k,
            queries without relevant items score 0).
        chunk_size: queries scored at a time (default: about 4M similarities per chunk).

    Category metrics need labels on both sides; without them only instance metrics are computed.
    """
    map_ks, precision_ks = check_metric_options(map_ks, precision_ks, map_normalize, precision_normalize, no_relevant)
    instance_ks = check_ks(instance_ks, "instance_ks")
    needs_model = not (isinstance(queries, GalleryIndex) and isinstance(gallery, GalleryIndex))
    if needs_model and (model is None or transform is None):
        raise ValueError("a model and a transform are needed to embed images (only GalleryIndex inputs need none)")
    common = dict(
        batch_size=batch_size,
        device=device,
        progress=progress,
        image_column=image_column,
        label_column=label_column,
        model_kwargs=model_kwargs,
    )
    gallery_index = _embed_side(model, gallery, transform, gallery_domain, "embedding gallery", **common)
    if queries is gallery and query_domain == gallery_domain:
        query_index = gallery_index
    else:
        query_index = _embed_side(model, queries, transform, query_domain, "embedding queries", **common)
    q_emb, q_meta = query_index.embeddings, query_index.metadata
    g_emb, g_meta = gallery_index.embeddings, gallery_index.metadata
    num_queries, num_gallery = q_emb.shape[0], g_emb.shape[0]
    if q_emb.shape[1] != g_emb.shape[1]:
        raise ValueError(f"query embeddings have dim {q_emb.shape[1]} but the gallery has {g_emb.shape[1]}")
    exclude = exclude_indices(exclude_self, num_queries, num_gallery)

    q_labels = [m.get("label") for m in q_meta]
    g_labels = [m.get("label") for m in g_meta]
    category = all(v is not None for v in q_labels) and all(v is not None for v in g_labels)
    if not category and not instance:
        raise ValueError(
            f"category metrics need a {label_column!r} for every query and gallery item (folders: one sub-folder "
            "per class); pass instance=True for instance-level metrics only"
        )
    ks = sorted(set(map_ks) | set(precision_ks))
    if category:
        q_ids, g_ids, names = encode_labels(q_labels, g_labels)
    targets = _target_indices(q_meta, g_meta, query_target_column, gallery_id_column) if instance else None

    step = default_chunk(num_gallery, chunk_size)
    stats_parts, rank_parts = [], []
    g_t = g_emb.T.contiguous()
    for start in range(0, num_queries, step):
        stop = min(start + step, num_queries)
        sims = q_emb[start:stop] @ g_t
        drop = None if exclude is None else exclude[start:stop]
        if category:
            stats_parts.append(chunk_ranking_stats(sims, q_ids[start:stop], g_ids, ks, drop))
        if instance:
            rank_parts.append(chunk_target_ranks(sims, targets[start:stop], drop))

    metrics: dict[str, float] = {}
    per_class: list[dict] = []
    if category:
        stats = merge_stats(stats_parts, ks, num_gallery - (1 if exclude_self else 0))
        summary = summarize_stats(
            stats, q_ids, g_ids, names, map_ks, precision_ks, map_normalize, precision_normalize, no_relevant,
            per_class=True,
        )
        per_class = summary.pop("per_class")
        excluded = summary.pop("num_excluded_queries", None)
        metrics.update({k: v for k, v in summary.items() if isinstance(v, float)})
    if instance:
        metrics.update(ranks_to_accuracy(torch.cat(rank_parts), instance_ks))
    settings = {
        "map_normalize": map_normalize,
        "precision_normalize": precision_normalize,
        "no_relevant": no_relevant,
        "exclude_self": exclude_self,
        "similarity": "cosine",
        "tie_break": "gallery index ascending",
    }
    if category and excluded is not None:
        settings["num_excluded_queries"] = excluded
    return RetrievalEvaluation(metrics, per_class, num_queries, num_gallery, settings)
