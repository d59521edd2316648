"""Embedding, gallery indexing, search and end-to-end evaluation for sketch-based image retrieval."""

from .embedding import IMAGE_EXTENSIONS, ImageLoadError, collect_items, embed_images, list_image_files
from .evaluation import RetrievalEvaluation, evaluate_retrieval
from .index import SEARCH_BACKENDS, GalleryIndex, build_gallery_index, choose_backend, search_embeddings

__all__ = [
    "IMAGE_EXTENSIONS",
    "SEARCH_BACKENDS",
    "GalleryIndex",
    "ImageLoadError",
    "RetrievalEvaluation",
    "build_gallery_index",
    "choose_backend",
    "collect_items",
    "embed_images",
    "evaluate_retrieval",
    "list_image_files",
    "search_embeddings",
]
