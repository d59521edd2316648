"""A gallery in a vector database (Milvus), searched through the same API as `GalleryIndex`.

When a gallery outgrows one machine's RAM or must be shared by many search servers, it moves to
Milvus. The code is the same for the embedded engine and a cluster; only the URI changes::

    db = VectorDBGallery.from_gallery(GalleryIndex.load("gallery_index"), "gallery.db")     # milvus-lite file
    db = VectorDBGallery.from_gallery(index, "http://milvus.internal:19530", token="user:pass")  # a server / cluster
    scores, indices = VectorDBGallery("gallery.db").search(sketch_embeddings, k=10)

Row ``i`` of the gallery is the Milvus primary key ``i`` (so indices mean what they mean for
`GalleryIndex`), its metadata dict a JSON field, the vector a ``FLOAT_VECTOR`` field searched by
inner product (cosine on L2-normalised vectors). Needs ``pip install 'hf-sbir[vectordb]'``
(pymilvus; milvus-lite provides the embedded engine behind local ``*.db`` URIs). milvus-lite is a
development engine: one query over 100k rows took ~5 s here (BENCHMARKS.md), against ~1 ms for the
faiss HNSW index; production search goes to a Milvus server through the same code.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hf_sbir.retrieval.ann import AnnConfig

__all__ = ["VectorDBGallery", "DEFAULT_COLLECTION"]

DEFAULT_COLLECTION = "hf_sbir_gallery"
_VECTOR, _META = "embedding", "metadata"
_MODEL_PROPERTY = "hf_sbir.model_name_or_path"
# Milvus index types we pass through; HNSW is Milvus' own recommendation for in-memory search.
INDEX_TYPES = ("HNSW", "IVF_FLAT", "FLAT", "AUTOINDEX")


def _client(uri: str, token: str | None):
    try:
        from pymilvus import MilvusClient
    except ImportError as error:
        raise ImportError("the vector-database backend needs pymilvus: pip install 'hf-sbir[vectordb]'") from error
    local = "://" not in uri
    if local and not uri.endswith(".db"):
        raise ValueError(f"a local Milvus (milvus-lite) URI is a file ending in .db, got {uri!r}")
    if local:
        parent = os.path.dirname(os.path.abspath(uri))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"the folder of {uri} does not exist")
    try:
        return MilvusClient(uri=uri, token=token or "")
    except Exception as error:  # pymilvus raises its own MilvusException / connection errors
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        hint = "pip install milvus-lite for local .db files" if local else "is the server running and reachable?"
        raise OSError(f"could not open Milvus at {uri!r} ({first}); {hint}") from error


class VectorDBGallery:
    """A Milvus collection holding a gallery; `search` / `results` behave as `GalleryIndex`'s.

    Args:
        uri: a local ``*.db`` file (milvus-lite, embedded) or ``http(s)://host:port`` of a Milvus
            server or cluster (Zilliz Cloud included).
        collection: the collection name (one gallery per collection).
        token: ``"user:password"`` or an API key for a server; unused locally.
    """

    def __init__(self, uri: str, collection: str = DEFAULT_COLLECTION, *, token: str | None = None):
        self.uri, self.collection = os.fspath(uri), collection
        self.client = _client(self.uri, token)
        if not self.client.has_collection(collection):
            raise ValueError(
                f"{self.uri} has no collection {collection!r} (collections: {self.client.list_collections()}); "
                "create it with VectorDBGallery.from_gallery"
            )
        description = self.client.describe_collection(collection)
        fields = {f["name"]: f for f in description["fields"]}
        if _VECTOR not in fields or _META not in fields:
            raise ValueError(f"collection {collection!r} was not written by hf-sbir (fields: {sorted(fields)})")
        self.dim = int(fields[_VECTOR]["params"]["dim"])
        self.model_name_or_path = (description.get("properties") or {}).get(_MODEL_PROPERTY) or None
        # The default search `ef` depends on the row count, which costs the engine a stats call (about as
        # long as a small search on milvus-lite): computed once, again after this client's `add`.
        self._default_ef: int | None = None

    def __repr__(self) -> str:
        return f"VectorDBGallery(uri={self.uri!r}, collection={self.collection!r}, count={len(self)}, dim={self.dim})"

    def __len__(self) -> int:
        return int(self.client.get_collection_stats(self.collection)["row_count"])

    def describe(self) -> str:
        info = self.client.describe_index(self.collection, _VECTOR) or {}
        params = {k: v for k, v in info.items() if k not in ("field_name", "index_name", "total_rows", "indexed_rows", "pending_index_rows", "state", "metric_type", "index_type")}
        return f"{info.get('index_type')} {params}" if params else str(info.get("index_type"))

    # ----------------------------------------------------------------------------- writing
    @classmethod
    def from_gallery(
        cls,
        index: Any,
        uri: str,
        collection: str = DEFAULT_COLLECTION,
        *,
        index_type: str = "HNSW",
        index_params: dict | None = None,
        token: str | None = None,
        overwrite: bool = False,
        batch_size: int = 10_000,
    ) -> VectorDBGallery:
        """Copy a `GalleryIndex` (embeddings + metadata) into a new collection and index it.

        ``index_type`` / ``index_params``: the Milvus vector index (default HNSW with the `AnnConfig`
        defaults ``M`` and ``efConstruction``). ``overwrite`` drops an existing
        collection of that name; otherwise an existing one is an error.
        """
        from pymilvus import DataType, MilvusClient

        if index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {list(INDEX_TYPES)}, got {index_type!r}")
        client = _client(os.fspath(uri), token)
        if client.has_collection(collection):
            if not overwrite:
                raise ValueError(f"{uri} already has a collection {collection!r}; pass overwrite=True to replace it")
            client.drop_collection(collection)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field(_VECTOR, DataType.FLOAT_VECTOR, dim=index.dim)
        schema.add_field(_META, DataType.JSON)
        params = client.prepare_index_params()
        ann = AnnConfig(kind="ivf_flat").resolved(len(index), index.dim)  # one home for the defaults
        default = {"HNSW": {"M": ann.m, "efConstruction": ann.ef_construction}, "IVF_FLAT": {"nlist": ann.nlist}}
        params.add_index(field_name=_VECTOR, index_type=index_type, metric_type="IP",
                         params=index_params if index_params is not None else default.get(index_type, {}))
        client.create_collection(collection, schema=schema, index_params=params)
        if index.model_name_or_path:  # a collection property: milvus-lite drops schema descriptions
            client.alter_collection_properties(collection, properties={_MODEL_PROPERTY: index.model_name_or_path})
        gallery = cls.__new__(cls)
        gallery.uri, gallery.collection, gallery.client = os.fspath(uri), collection, client
        gallery.dim, gallery.model_name_or_path = index.dim, index.model_name_or_path
        gallery.add(index.embeddings, index.metadata, start=0, batch_size=batch_size)
        return gallery

    def add(self, embeddings: Any, metadata: Sequence[dict] | None = None, *, start: int | None = None,
            batch_size: int = 10_000) -> None:
        """Append rows (L2-normalised here); their indices continue from the current count."""
        vectors = F.normalize(torch.as_tensor(embeddings).float(), dim=1).numpy()
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"embeddings must be (N, {self.dim}), got {tuple(vectors.shape)}")
        metadata = list(metadata) if metadata is not None else [{} for _ in range(len(vectors))]
        if len(metadata) != len(vectors):
            raise ValueError(f"got {len(metadata)} metadata entries for {len(vectors)} embeddings")
        first = len(self) if start is None else start
        for offset in range(0, len(vectors), batch_size):
            rows = [
                {"id": first + offset + i, _VECTOR: vector, _META: meta}
                for i, (vector, meta) in enumerate(zip(vectors[offset : offset + batch_size], metadata[offset : offset + batch_size]))
            ]
            self.client.insert(self.collection, rows)
        self.client.flush(self.collection)
        self._default_ef = None

    # ----------------------------------------------------------------------------- search
    def search(
        self,
        queries: Any,
        k: int = 10,
        *,
        normalize_queries: bool = True,
        search_params: dict | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine top-k: ``(scores (Q, k), indices (Q, k))``, best first, as `GalleryIndex.search`.

        ``search_params``: Milvus search parameters, e.g. ``{"ef": 128}`` (HNSW; default the `AnnConfig`
        ``ef_search`` for the collection's size when this client opened it or last added to it) or
        ``{"nprobe": 32}``.
        Slots Milvus could not fill have index -1 and score ``-inf``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        queries = torch.as_tensor(queries).float()
        if queries.dim() == 1:
            queries = queries[None]
        if queries.dim() != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries must be (Q, {self.dim}) to match the gallery dim; got {tuple(queries.shape)}")
        if normalize_queries:
            queries = F.normalize(queries, dim=1)
        params = dict(search_params or {})
        if "ef" not in params:  # the faiss HNSW default for this many rows (ignored by IVF indexes)
            if self._default_ef is None:
                self._default_ef = AnnConfig().resolved(len(self), self.dim).ef_search
            params["ef"] = max(self._default_ef, k)
        hits = self.client.search(
            self.collection, data=np.ascontiguousarray(queries.numpy()), limit=k, anns_field=_VECTOR,
            output_fields=["id"], search_params={"metric_type": "IP", "params": params},
        )
        scores = torch.full((len(hits), k), float("-inf"))
        indices = torch.full((len(hits), k), -1, dtype=torch.long)
        for q, row in enumerate(hits):
            for rank, hit in enumerate(row):
                scores[q, rank], indices[q, rank] = float(hit["distance"]), int(hit["id"])
        return scores, indices

    def results(self, indices: torch.Tensor, scores: torch.Tensor | None = None) -> list[list[dict]]:
        """Metadata of search results, as `GalleryIndex.results` (fetched from the collection)."""
        wanted = sorted({i for i in indices.flatten().tolist() if i >= 0})
        rows = self.client.get(self.collection, ids=wanted, output_fields=[_META]) if wanted else []
        metadata = {int(r["id"]): dict(r[_META] or {}) for r in rows}
        out = []
        for q, row in enumerate(indices.tolist()):
            hits = []
            for rank, i in enumerate(row):
                if i < 0:
                    continue
                hit = {"index": i, **metadata.get(i, {})}
                if scores is not None:
                    hit["score"] = float(scores[q, rank])
                hits.append(hit)
            out.append(hits)
        return out

    def close(self) -> None:
        self.client.close()
