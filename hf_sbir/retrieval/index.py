"""A saved, searchable gallery of L2-normalised embeddings (exact cosine top-k search).

On disk a `GalleryIndex` is a folder with two files::

    embeddings.safetensors   one float32 tensor "embeddings" of shape (count, dim)
    index.json               {"format": "hf-sbir-gallery-index", "format_version": 1, "dim", "count",
                              "normalization": "l2", "similarity": "cosine",
                              "model_name_or_path", "metadata": [one dict per row]}

and, when an approximate index was built (`GalleryIndex.build_ann`), ``ann.faiss`` + ``ann.faiss.json``
(the faiss index and its `AnnConfig`; ``index.json`` then names it under ``"ann"``).

Search is exact (a chunked torch matmul with a running top-k, or faiss ``IndexFlatIP``) or
approximate (faiss HNSW / IVF-Flat / IVF-PQ, `hf_sbir.retrieval.ann`); ``backend="auto"`` picks
exact below `ANN_MIN_GALLERY` rows and approximate from there on.

An index is validated when built and when loaded (`validate_gallery`): finite, unit-norm rows (a NaN
row would score NaN against every query), one metadata dict per row with string keys, unique ``id``s,
and ``path`` values that name image files without ``..`` components (an index folder may come from
someone else, and the Space serves the files its rows point to). Text from metadata (labels) is data:
whatever renders it escapes it (the Space's `markdown_text`, the HTML report's ``html.escape``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from hf_sbir.retrieval.ann import AnnConfig, AnnIndex
from hf_sbir.retrieval.embedding import IMAGE_EXTENSIONS, collect_items, embed_images

__all__ = ["ANN_MIN_GALLERY", "GalleryIndex", "build_gallery_index", "search_embeddings", "SEARCH_BACKENDS"]

FORMAT_NAME = "hf-sbir-gallery-index"
FORMAT_VERSION = 1
EMBEDDINGS_FILE = "embeddings.safetensors"
INDEX_FILE = "index.json"
ANN_FILE = "ann.faiss"
SEARCH_BACKENDS = ("auto", "torch", "faiss", "ann")
# Galleries from this size on are searched approximately by backend="auto": at 100k x 512 exact search
# of one query took 32-177 ms here (1-2 threads, shared machine) and HNSW 0.8 ms at recall@10 0.99
# (benchmarks/bench_ann.py, BENCHMARKS.md); below, exact search is a few ms and needs no index build.
ANN_MIN_GALLERY = 100_000
# Similarity-matrix entries computed at once by the torch backend (2**25 floats = 128 MB).
_SEARCH_ELEMENTS = 1 << 25
_QUERY_BLOCK = 4096

Backend = Literal["auto", "torch", "faiss", "ann"]
# Rows must be unit-norm to this tolerance (float32 normalisation is exact to ~1e-7; 1e-3 allows fp16 sources).
NORM_TOLERANCE = 1e-3
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def validate_gallery(embeddings: torch.Tensor, metadata: Sequence[dict]) -> None:
    """Raise `ValueError` (one line naming the first bad row) unless the gallery is safe to search and show.

    Checks: finite values; unit L2 norm within `NORM_TOLERANCE`; every metadata entry a dict with string
    keys; ``id`` values (where present) unique strings or integers; ``label`` a string, integer or None;
    ``path`` None or a string naming an image file (`IMAGE_EXTENSIONS`) without ``..`` components or
    control characters.
    """
    finite = torch.isfinite(embeddings).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten().tolist()
        raise ValueError(f"embeddings of {len(bad)} row(s) hold NaN/inf (first: row {bad[0]}); rebuild the index from the images")
    norms = embeddings.norm(dim=1)
    off = torch.nonzero((norms - 1).abs() > NORM_TOLERANCE).flatten().tolist()
    if off:
        raise ValueError(
            f"{len(off)} row(s) are not L2-normalised (row {off[0]} has norm {float(norms[off[0]]):.4g}); "
            "pass normalize=True or rebuild the index"
        )
    seen_ids: dict[Any, int] = {}
    for row, entry in enumerate(metadata):
        if not isinstance(entry, dict) or not all(isinstance(k, str) for k in entry):
            raise ValueError(f"metadata row {row} must be a dict with string keys, got {type(entry).__name__}")
        if "id" in entry:
            value = entry["id"]
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                raise ValueError(f"metadata row {row}: 'id' must be a string or integer, got {type(value).__name__}")
            if value in seen_ids:
                raise ValueError(f"metadata rows {seen_ids[value]} and {row} have the same id {value!r}; ids must be unique")
            seen_ids[value] = row
        label = entry.get("label")
        if label is not None and (isinstance(label, bool) or not isinstance(label, (str, int))):
            raise ValueError(f"metadata row {row}: 'label' must be a string, integer or None, got {type(label).__name__}")
        path = entry.get("path")
        if path is not None:
            if not isinstance(path, str):
                raise ValueError(f"metadata row {row}: 'path' must be a string, got {type(path).__name__}")
            parts = re.split(r"[\\/]", path)
            if (
                _CONTROL_CHARS.search(path)
                or ".." in parts
                or not path.lower().endswith(tuple(IMAGE_EXTENSIONS))
            ):
                raise ValueError(
                    f"metadata row {row}: 'path' {path[:80]!r} is not an image file path (paths must end in "
                    f"{'/'.join(IMAGE_EXTENSIONS)} and contain no '..' or control characters)"
                )


def choose_backend(num_queries: int, num_gallery: int, has_ann: bool = False) -> str:
    """The backend ``backend="auto"`` uses: ``"ann"`` when an approximate index is attached
    (``has_ann``) or the gallery has at least `ANN_MIN_GALLERY` rows, else ``"torch"``.

    Among exact backends:
    ``benchmarks/bench_search.py`` (exact top-10 over 10k and 1M random 512-d embeddings, query
    batches of 1 and 64, 2-core CPU; table in BENCHMARKS.md) found the chunked torch matmul
    faster than faiss-cpu ``IndexFlatIP`` in 3 of 4 cells -- 2-3x faster for batched queries --
    and within 12 % in the fourth (1M gallery, one query); it needs no second copy of the
    gallery. faiss stays available as ``backend="faiss"``.
    """
    if has_ann or num_gallery >= ANN_MIN_GALLERY:
        return "ann"
    return "torch"


def _search_torch(
    gallery: torch.Tensor, queries: torch.Tensor, k: int, chunk_size: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    num_queries, num_gallery = queries.shape[0], gallery.shape[0]
    scores = torch.empty(num_queries, k, dtype=torch.float32)
    indices = torch.empty(num_queries, k, dtype=torch.long)
    query_block = min(max(num_queries, 1), _QUERY_BLOCK)
    step = chunk_size or max(1024, _SEARCH_ELEMENTS // query_block)
    for q_start in range(0, num_queries, query_block):
        q = queries[q_start : q_start + query_block]
        best_s = best_i = None
        for g_start in range(0, num_gallery, step):
            sims = q @ gallery[g_start : g_start + step].T
            s, i = sims.topk(min(k, sims.shape[1]), dim=1)
            i += g_start
            if best_s is None:
                best_s, best_i = s, i
            else:
                merged_s, merged_i = torch.cat([best_s, s], dim=1), torch.cat([best_i, i], dim=1)
                best_s, pos = merged_s.topk(min(k, merged_s.shape[1]), dim=1)
                best_i = merged_i.gather(1, pos)
        scores[q_start : q_start + q.shape[0]] = best_s.float().cpu()
        indices[q_start : q_start + q.shape[0]] = best_i.cpu()
    return scores, indices


def _build_faiss(gallery: torch.Tensor):
    try:
        import faiss
    except ImportError as error:
        raise ImportError("backend='faiss' needs the faiss-cpu package: pip install faiss-cpu") from error
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(gallery.detach().cpu().float().contiguous().numpy())
    return index


def _search_faiss(index, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    scores, indices = index.search(queries.detach().cpu().float().contiguous().numpy(), k)
    return torch.from_numpy(scores), torch.from_numpy(indices).long()


def _check_search_args(gallery: torch.Tensor, queries: Any, k: int, backend: str) -> torch.Tensor:
    if backend not in SEARCH_BACKENDS:
        raise ValueError(f"backend must be one of {list(SEARCH_BACKENDS)}, got {backend!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    queries = torch.as_tensor(queries)
    if queries.dim() == 1:
        queries = queries[None]
    if queries.dim() != 2 or queries.shape[1] != gallery.shape[1]:
        raise ValueError(
            f"queries must be (Q, {gallery.shape[1]}) to match the gallery dim; got {tuple(queries.shape)}"
        )
    return queries.float()


def search_embeddings(
    gallery: torch.Tensor,
    queries: Any,
    k: int = 10,
    backend: Backend = "auto",
    chunk_size: int | None = None,
    *,
    faiss_index: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product top-k of ``queries (Q, D)`` against ``gallery (N, D)``.

    Returns ``(scores, indices)``, both ``(Q, min(k, N))``, best first. With L2-normalised inputs
    the scores are cosine similarities. Equal scores may come back in either order.

    Args:
        backend: ``"torch"`` (chunked matmul + running top-k merged across gallery chunks, so at
            most ``4096 x chunk_size`` similarities exist at once), ``"faiss"`` (``IndexFlatIP``,
            exact; ``faiss_index`` reuses a built one) or ``"auto"`` (torch, the faster one in
            ``benchmarks/bench_search.py``). Approximate search needs a kept index: `GalleryIndex`.
        chunk_size: gallery rows per torch chunk; default keeps a chunk near 32M similarities.
    """
    queries = _check_search_args(gallery, queries, k, backend)
    k = min(k, gallery.shape[0])
    if backend == "ann":
        raise ValueError("search_embeddings is exact; for approximate search use GalleryIndex(...).search(backend='ann')")
    if backend == "auto":
        backend = "torch"  # exact: an approximate index is only worth building when it is kept (GalleryIndex)
    if backend == "faiss":
        return _search_faiss(faiss_index if faiss_index is not None else _build_faiss(gallery), queries, k)
    return _search_torch(gallery, queries.to(gallery.device), k, chunk_size)


class GalleryIndex:
    """Embeddings of a gallery (``(N, D)`` float32, L2-normalised) with one metadata dict per item.

    Args:
        embeddings: ``(N, D)`` tensor (or array). Rows are L2-normalised here unless
            ``normalize=False`` (then they must already be unit-norm for cosine scores).
        metadata: N JSON-serialisable dicts, e.g. ``{"id", "label", "path"}``; default ``{}`` each.
        model_name_or_path: the model that produced the embeddings (recorded in ``index.json``).

    Example:
        >>> index = build_gallery_index(model, "photos/", transform)
        >>> index.save("gallery_index")
        >>> scores, indices = GalleryIndex.load("gallery_index").search(sketch_embeddings, k=10)
    """

    def __init__(
        self,
        embeddings: Any,
        metadata: Sequence[dict] | None = None,
        model_name_or_path: str | None = None,
        *,
        normalize: bool = True,
    ):
        embeddings = torch.as_tensor(embeddings)
        if embeddings.dim() != 2 or embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
            raise ValueError(f"embeddings must be a non-empty (N, D) matrix, got shape {tuple(embeddings.shape)}")
        embeddings = embeddings.detach().float().cpu()
        self.embeddings = (F.normalize(embeddings, dim=1) if normalize else embeddings).contiguous()
        if metadata is None:
            metadata = [{} for _ in range(embeddings.shape[0])]
        metadata = [dict(m) if isinstance(m, dict) else m for m in metadata]
        if len(metadata) != embeddings.shape[0]:
            raise ValueError(f"got {len(metadata)} metadata entries for {embeddings.shape[0]} embeddings")
        validate_gallery(self.embeddings, metadata)
        self.metadata = metadata
        self.model_name_or_path = None if model_name_or_path is None else str(model_name_or_path)
        self._faiss_index = None
        self.ann: AnnIndex | None = None  # approximate index (build_ann / load), row i = embeddings row i

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def __repr__(self) -> str:
        return f"GalleryIndex(count={len(self)}, dim={self.dim}, model_name_or_path={self.model_name_or_path!r})"

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def column(self, key: str, default: Any = None) -> list:
        """``[m.get(key, default) for m in metadata]``, e.g. ``index.column("label")``."""
        return [m.get(key, default) for m in self.metadata]

    # ---------------------------------------------------------------------------------- search
    def search(
        self,
        queries: Any,
        k: int = 10,
        backend: Backend = "auto",
        chunk_size: int | None = None,
        *,
        normalize_queries: bool = True,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cosine top-k: ``(scores (Q, k), indices (Q, k))``, best first.

        ``backend``: ``"torch"`` / ``"faiss"`` are exact (see `search_embeddings`); ``"ann"`` uses the
        approximate index (`build_ann`; built with the default `AnnConfig` on first use if there is
        none); ``"auto"`` is `choose_backend`: approximate for galleries of `ANN_MIN_GALLERY` rows
        or more, or whenever an approximate index is attached, else exact torch.
        ``nprobe`` / ``ef_search`` override the approximate index's search parameters for this call.

        ``k`` is clipped to the gallery size. Queries are L2-normalised first unless
        ``normalize_queries=False``. The faiss backend builds its ``IndexFlatIP`` on first use and
        keeps it (a second copy of the embeddings in memory).
        """
        queries = _check_search_args(self.embeddings, queries, k, backend)
        if normalize_queries:
            queries = F.normalize(queries, dim=1)
        if backend == "auto":
            backend = choose_backend(queries.shape[0], len(self), self.ann is not None)
        if backend == "ann":
            return self._search_ann(queries, min(k, len(self)), nprobe, ef_search)
        if backend == "faiss" and self._faiss_index is None:
            self._faiss_index = _build_faiss(self.embeddings)
        return search_embeddings(
            self.embeddings, queries, k, backend, chunk_size, faiss_index=self._faiss_index
        )

    def build_ann(self, config: AnnConfig | str | None = None, **params) -> AnnIndex:
        """Build (and attach, replacing any other) an approximate index over the embeddings.

        ``config``: an `AnnConfig`, or just its kind (``"hnsw"``, ``"ivf_flat"``, ``"ivf_pq"``);
        ``params`` override its fields, e.g. ``build_ann("ivf_flat", nlist=4096, nprobe=64)``.
        `save` writes it next to the embeddings and `load` maps it back.
        """
        if isinstance(config, str):
            config = AnnConfig(kind=config)
        self.ann = AnnIndex.build(self.embeddings, config, **params)
        return self.ann

    def _search_ann(
        self, queries: torch.Tensor, k: int, nprobe: int | None, ef_search: int | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if self.ann is None:
            import logging

            logging.getLogger(__name__).warning(
                "building the default approximate index (%s) over %d rows; save() the GalleryIndex to keep it",
                AnnConfig().kind,
                len(self),
            )
            self.build_ann()
        scores, indices = self.ann.search(queries, k, gallery=self.embeddings, nprobe=nprobe, ef_search=ef_search)
        # An IVF index returns fewer than k hits when the probed cells hold fewer rows; those
        # queries get exact answers rather than -1 rows that would index metadata[-1].
        short = (indices < 0).any(dim=1)
        if short.any():
            scores[short], indices[short] = _search_torch(self.embeddings, queries[short], k, None)
        return scores, indices

    def results(self, indices: torch.Tensor, scores: torch.Tensor | None = None) -> list[list[dict]]:
        """Metadata of search results: per query, a list of dicts (with ``"index"`` and ``"score"``)."""
        out = []
        for q, row in enumerate(indices.tolist()):
            hits = []
            for rank, i in enumerate(row):
                hit = {"index": i, **self.metadata[i]}
                if scores is not None:
                    hit["score"] = float(scores[q, rank])
                hits.append(hit)
            out.append(hits)
        return out

    # ------------------------------------------------------------- Hugging Face datasets form
    def to_dataset(self, embeddings_column: str = "embeddings"):
        """The gallery as a `datasets.Dataset`: metadata columns + a float32 ``embeddings`` column
        (``add_faiss_index("embeddings")`` works on it). See `hf_sbir.retrieval.gallery_dataset`."""
        from hf_sbir.retrieval.gallery_dataset import gallery_to_dataset

        return gallery_to_dataset(self, embeddings_column)

    @classmethod
    def from_dataset(cls, dataset, embeddings_column: str = "embeddings", **kwargs) -> GalleryIndex:
        """A `GalleryIndex` from a dataset with an embeddings column (the inverse of `to_dataset`)."""
        from hf_sbir.retrieval.gallery_dataset import gallery_from_dataset

        return gallery_from_dataset(dataset, embeddings_column, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Publish the gallery as a Hub dataset (``to_dataset().push_to_hub``); ``from_hub`` reads it back."""
        from hf_sbir.retrieval.gallery_dataset import push_gallery_to_hub

        return push_gallery_to_hub(self, repo_id, **kwargs)

    @classmethod
    def from_hub(cls, repo_id: str, split: str = "train", **kwargs) -> GalleryIndex:
        """``from_dataset(load_dataset(repo_id, split=split))``; a clear `OSError` when offline."""
        from hf_sbir.retrieval.gallery_dataset import load_gallery_from_hub

        return load_gallery_from_hub(repo_id, split, **kwargs)

    # ---------------------------------------------------------------------------- persistence
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``embeddings.safetensors`` and ``index.json`` into ``directory`` (created if needed)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        info = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "count": len(self),
            "dtype": "float32",
            "normalization": "l2",
            "similarity": "cosine",
            "model_name_or_path": self.model_name_or_path,
            "metadata": self.metadata,
        }
        if self.ann is not None:
            info["ann"] = {"file": ANN_FILE, "kind": self.ann.kind}
        try:
            text = json.dumps(info, indent=1, ensure_ascii=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"gallery metadata must be JSON-serialisable: {error}") from error
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {"embeddings": self.embeddings.contiguous()},
            str(directory / EMBEDDINGS_FILE),
            metadata={"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION)},
        )
        self._save_ann(directory)
        (directory / INDEX_FILE).write_text(text, encoding="utf-8")
        return directory

    def _save_ann(self, directory: Path) -> None:
        path = directory / ANN_FILE
        if self.ann is not None:
            self.ann.save(path)
        else:  # a stale approximate index of an earlier save must not be loaded with these rows
            for stale in (path, Path(f"{path}.json")):
                stale.unlink(missing_ok=True)

    def _load_ann(self, directory: Path, info: dict, mmap: bool) -> None:
        entry = info.get("ann")
        if entry is None:
            return
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or "/" in entry["file"]:
            raise ValueError(f"{directory / INDEX_FILE}: 'ann' must be {{'file': name, 'kind': ...}}, got {entry!r}")
        ann = AnnIndex.load(directory / entry["file"], mmap=mmap)
        if (ann.count, ann.dim) != (len(self), self.dim):
            raise ValueError(
                f"{directory / entry['file']} indexes {ann.count} x {ann.dim} vectors but the gallery is "
                f"{len(self)} x {self.dim}; rebuild it with GalleryIndex.build_ann() and save()"
            )
        self.ann = ann

    @classmethod
    def load(cls, directory: str | os.PathLike, *, expected_dim: int | None = None, mmap: bool = True) -> GalleryIndex:
        """Read a folder written by `save`. With ``mmap=True`` (default) the embeddings and the
        approximate index are memory-mapped rather than read into RAM (``mmap=False`` reads them).

        Raises:
            FileNotFoundError: the folder or one of its two files is missing.
            ValueError: a file is corrupt, the two files disagree (count / dim), the format is
                unknown or newer, or ``expected_dim`` (e.g. your model's embedding size) differs.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"no gallery index folder at {directory}")
        for name in (INDEX_FILE, EMBEDDINGS_FILE):
            if not (directory / name).is_file():
                raise FileNotFoundError(
                    f"{directory} is not a gallery index: {name} is missing (expected {INDEX_FILE} + {EMBEDDINGS_FILE})"
                )
        try:
            info = json.loads((directory / INDEX_FILE).read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"corrupt {directory / INDEX_FILE}: {error}") from error
        if not isinstance(info, dict) or info.get("format") != FORMAT_NAME:
            raise ValueError(f"{directory / INDEX_FILE} is not a {FORMAT_NAME} file")
        version = info.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise ValueError(
                f"{directory} has format_version {version!r}; this hf-sbir reads up to {FORMAT_VERSION} (upgrade hf-sbir)"
            )
        try:
            tensors = _map_embeddings(directory / EMBEDDINGS_FILE) if mmap else None
            tensors = tensors or load_file(str(directory / EMBEDDINGS_FILE))
        except (SafetensorError, OSError, ValueError) as error:
            raise ValueError(f"corrupt {directory / EMBEDDINGS_FILE}: {error}") from error
        if "embeddings" not in tensors:
            raise ValueError(f"{directory / EMBEDDINGS_FILE} has no 'embeddings' tensor (found {sorted(tensors)})")
        embeddings = tensors["embeddings"]
        dim, count, metadata = info.get("dim"), info.get("count"), info.get("metadata")
        if embeddings.dim() != 2 or list(embeddings.shape) != [count, dim]:
            raise ValueError(
                f"{directory}: embeddings have shape {tuple(embeddings.shape)} but {INDEX_FILE} says "
                f"count={count}, dim={dim}"
            )
        if not isinstance(metadata, list) or len(metadata) != count:
            raise ValueError(f"{directory}: {INDEX_FILE} metadata must be a list of {count} entries")
        if expected_dim is not None and dim != expected_dim:
            raise ValueError(
                f"{directory}: the index has dim {dim} but {expected_dim} was expected "
                f"(built with model {info.get('model_name_or_path')!r})"
            )
        if embeddings.dtype != torch.float32:
            raise ValueError(f"{directory / EMBEDDINGS_FILE}: embeddings are {embeddings.dtype}, float32 expected")
        name = info.get("model_name_or_path")
        if name is not None and not isinstance(name, str):
            raise ValueError(f"{directory / INDEX_FILE}: model_name_or_path must be a string or null")
        try:
            index = cls(embeddings, metadata, name, normalize=False)
        except ValueError as error:
            raise ValueError(f"{directory}: {error}") from None
        index._load_ann(directory, info, mmap)
        return index


def _map_embeddings(path: Path) -> dict[str, torch.Tensor] | None:
    """``{"embeddings": tensor}`` backed by a copy-on-write memory map of the file, or None if the
    file is not a plain float32 safetensors file (then it is read normally).

    A 10M x 512 gallery is 20 GB: mapped, only the rows a search touches (IVF-PQ re-scoring reads
    ~100 a query) are paged in, and the OS can drop them again. Copy-on-write: writes to the tensor
    never reach the file.
    """
    import numpy as np

    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size <= 0 or size > 100_000_000:
            return None
        header = json.loads(f.read(size))
    entry = header.get("embeddings")
    if not isinstance(entry, dict) or entry.get("dtype") != "F32" or len(entry.get("shape", ())) != 2:
        return None
    (rows, dim), (begin, end) = entry["shape"], entry["data_offsets"]
    if end - begin != rows * dim * 4 or rows * dim == 0 or 8 + size + end > path.stat().st_size:
        return None
    array = np.memmap(path, dtype="<f4", mode="c", offset=8 + size + begin, shape=(rows, dim))
    return {"embeddings": torch.from_numpy(array)}


def _model_name(model: Any) -> str | None:
    name = getattr(model, "name_or_path", None)
    if not name:
        name = getattr(getattr(model, "config", None), "_name_or_path", None)
    return name or None


def build_gallery_index(
    model: torch.nn.Module,
    dataset_or_folder: Any,
    transform,
    batch_size: int = 64,
    *,
    domain: str = "photo",
    model_name_or_path: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
    image_column: str = "image",
    label_column: str = "label",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
    model_kwargs: dict | None = None,
    desc: str | None = None,
) -> GalleryIndex:
    """Embed a photo gallery once and wrap it in a `GalleryIndex`.

    Args:
        dataset_or_folder: a `datasets.Dataset` split (image column + optional label/id columns)
            or a folder of images (recursive; label = top-level sub-folder; see
            `hf_sbir.retrieval.embedding.collect_items` for the metadata kept), or a list of paths.
        transform: ``transform(pil_image, domain) -> (3, H, W)`` tensor.
        domain: passed to ``transform`` (``"photo"`` for a photo gallery).
        model_name_or_path: recorded in ``index.json``; default ``model.name_or_path``.
        desc: progress-bar label.
    Other arguments as in `embed_images`.
    """
    images, metadata = collect_items(
        dataset_or_folder, image_column=image_column, label_column=label_column, extensions=extensions
    )
    embeddings = embed_images(
        model,
        images,
        transform,
        domain,
        batch_size=batch_size,
        device=device,
        progress=progress,
        image_column=image_column,
        model_kwargs=model_kwargs,
        desc=desc or f"embedding gallery ({domain})",
    )
    return GalleryIndex(embeddings, metadata, model_name_or_path or _model_name(model), normalize=False)
