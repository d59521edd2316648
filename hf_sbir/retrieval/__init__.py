"""Embedding, gallery indexing, search, and the evaluation engine (category and instance level) for
sketch-based image retrieval."""

from .ann import ANN_KINDS, AnnConfig, AnnIndex, recall_at_k
from .embedding import IMAGE_EXTENSIONS, ImageLoadError, collect_items, embed_images, list_image_files
from .evaluation import (
    RetrievalEvaluation,
    evaluate_embeddings,
    evaluate_fine_grained,
    evaluate_retrieval,
    evaluate_zero_shot,
    format_metric_table,
)
from .gallery_dataset import gallery_from_dataset, gallery_to_dataset
from .index import ANN_MIN_GALLERY, SEARCH_BACKENDS, GalleryIndex, build_gallery_index, choose_backend, search_embeddings

__all__ = [
    "ANN_KINDS",
    "ANN_MIN_GALLERY",
    "AnnConfig",
    "AnnIndex",
    "IMAGE_EXTENSIONS",
    "SEARCH_BACKENDS",
    "GalleryIndex",
    "ImageLoadError",
    "RetrievalEvaluation",
    "build_gallery_index",
    "choose_backend",
    "collect_items",
    "embed_images",
    "evaluate_embeddings",
    "evaluate_fine_grained",
    "evaluate_retrieval",
    "evaluate_zero_shot",
    "format_metric_table",
    "gallery_from_dataset",
    "gallery_to_dataset",
    "list_image_files",
    "recall_at_k",
    "search_embeddings",
]
