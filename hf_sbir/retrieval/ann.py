"""Approximate top-k search over a gallery: faiss HNSW, IVF-Flat and IVF-PQ behind one small class.

Exact search costs ``N x D`` multiply-adds per query (134 ms at 1M x 512 on one core here, see
BENCHMARKS.md), so past a few hundred thousand photos a gallery needs an approximate index:

* ``"hnsw"``: a graph (faiss ``IndexHNSWFlat``); fastest queries, no training, but the slowest build
  and the vectors plus ``2 * M`` links each stay in RAM.
* ``"ivf_flat"``: k-means cells (faiss ``IndexIVFFlat``); a query scans the ``nprobe`` nearest cells.
  Builds in seconds to a minute, full float vectors (exact scores within the scanned cells).
* ``"ivf_pq"``: the same cells with vectors compressed to ``pq_bytes`` bytes (faiss ``IndexIVFPQ``),
  the index for galleries that do not fit in RAM as float32. Compressed scores are coarse, so the
  ``rerank * k`` best candidates are re-scored exactly from the gallery's float embeddings (which
  may stay memory-mapped on disk: only the candidate rows are read).

All use inner product on L2-normalised vectors, i.e. cosine similarity, like the exact backends.
With ``pca_dim`` any of them is built over the embeddings projected on their leading principal
directions instead (faiss ``PCAMatrix`` in front; L2 there, since the centred projection keeps
distances, not inner products): each distance costs ``pca_dim / dim`` as much, which is most of a
large HNSW query's time, and the ``rerank * k`` best candidates are re-scored exactly.
`AnnConfig` holds every build and search parameter; the default index (HNSW) reaches recall@10 >= 0.95
against exact search on the clustered sets of tests/test_index_ann.py and benchmarks/bench_ann.py;
IVF's recall depends on the data (see `AnnConfig.nprobe` and BENCHMARKS.md).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["ANN_KINDS", "AnnConfig", "AnnIndex", "recall_at_k"]

ANN_KINDS = ("hnsw", "ivf_flat", "ivf_pq")


def _faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - faiss-cpu is a dependency
        raise ImportError("approximate search needs the faiss-cpu package: pip install faiss-cpu") from error
    return faiss


def default_ef_search(count: int) -> int:
    """HNSW's default candidate list for a gallery of ``count`` rows (see `AnnConfig.ef_search`): 96 up
    to 100k rows, then 8x per 10x rows, through the two sizes where it was measured."""
    if count <= 100_000:
        return 96
    return int(round(96 * 8 ** math.log10(count / 100_000)))


# The `AnnConfig` fields whose default `resolved` derives from the gallery size.
_SIZE_DERIVED = ("nlist", "nprobe", "ef_search", "pq_nbits", "train_size")


@dataclass
class AnnConfig:
    """Build and search parameters of an approximate index. ``None`` means "derive from the gallery size".

    Args:
        kind: ``"hnsw"`` (default), ``"ivf_flat"`` or ``"ivf_pq"`` (see the module docstring). HNSW is
            the default (and what ``backend="auto"`` builds) because it keeps recall without scanning
            much of the gallery: on the hard 1M benchmark set IVF-Flat needs 10 % of its cells for
            recall@10 0.954, while HNSW held 0.991 at 100k in under a millisecond (BENCHMARKS.md); it
            builds slowest (a one-off the CLI and the Space cache). At 1M rows in 10,000 random,
            equidistant clusters (the benchmark's worst case) the default graph reaches only 0.56-0.72 at
            ``ef_search`` 96 and a cheaper one (m=16, ef_construction=20) 0.12; on 1M rows fitted to a real
            gallery's class structure 96 reaches 0.75 and the size-dependent default (768) 0.959 in ~11 ms,
            and a projected, denser graph (``pca_dim=128, m=48, ef_construction=80, ef_search=256``) 0.954
            in 3.1 ms; so check `recall_at_k` on your own embeddings before relying on a large gallery,
            and raise ``ef_search`` / ``ef_construction`` rather than lowering them.
        nlist: IVF cells. Default ``2 * sqrt(N)`` (the low end of faiss' 1-16 x sqrt(N) advice: k-means
            training costs ~nlist^2 and took minutes at 1M rows on the 2 shared cores here), at least 1
            and at most N / 39 so that k-means has 39 training points per cell.
        nprobe: IVF cells scanned per query. Default ``max(16, nlist // 10)`` (~10 % of the gallery),
            the least that kept recall@10 >= 0.95 on the hard 1M benchmark set (0.954; nlist // 16
            gave 0.943, BENCHMARKS.md). On embeddings whose clusters are finer than the cells IVF
            must scan that much, so a query costs ~1/10 of exact search: IVF is offered for memory
            (IVF-PQ) and build time, ``backend="auto"`` never builds it, and HNSW answers such a
            gallery 10-100x faster. On coarser clusters a few cells suffice (0.998 at nprobe 8 on the
            100k set): measure on your own embeddings (`recall_at_k`) and lower it.
        m: HNSW links per node (faiss ``M``); more = better recall, more RAM (``8 * M`` bytes a vector).
        ef_construction: HNSW candidate list while building; more = better graph, slower build.
        ef_search: HNSW candidate list per query (raised to ``k`` if smaller). Default 96 up to 100k
            rows, then 8 times more per 10 times more rows (768 at 1M): the values measured to keep
            recall@10 >= 0.95 on the benchmark set fitted to real embeddings at those two sizes (0.950 at
            100k in ~1 ms, 0.959 at 1M in ~11 ms; 96 gave only 0.747 at 1M; BENCHMARKS.md). Past 1M it
            is an extrapolation: measure with `recall_at_k`.
        pq_bytes: IVF-PQ bytes per vector (sub-quantisers of 8 bits). Default: the largest divisor
            of the indexed width (``pca_dim`` or ``dim``) that is at most ``dim / 8`` (64 bytes for
            512-d, i.e. 32x smaller than float32, with or without a projection).
        pq_nbits: bits per PQ sub-quantiser code. Default 8, fewer when the training sample is
            smaller than the 39 points per centroid faiss asks for (galleries under ~10k rows).
        pca_dim: build the index over the embeddings projected on their ``pca_dim`` leading principal
            directions (learned from the ``train_size`` sample) and re-score the ``rerank * k`` best
            candidates exactly from the float embeddings. Default ``None`` (full width). Model
            embeddings are flat (the packaged model's sketchy-small photos keep 88 % of their variance
            in 128 of 512 directions), so ``pca_dim=128`` loses little and makes every distance, the
            bulk of a large HNSW search, 4x cheaper (BENCHMARKS.md); on embeddings whose variance is
            spread evenly it loses recall that no ``ef_search`` recovers: check `recall_at_k`.
        rerank: IVF-PQ and ``pca_dim`` indexes re-score ``rerank * k`` candidates exactly (needs the
            float embeddings).
        train_size: at most this many gallery rows train the IVF k-means / PQ codebooks (a random
            sample; default ``256 * nlist``, the most faiss uses per cell). Fewer rows a cell cost
            recall on clustered embeddings: when a cell holds several clusters, k-means trained on a
            few rows of each cuts them across cells and a query's neighbours fall in cells it does not
            probe (on a 200k replica of the 1M benchmark set, 50 rows a cell gave recall@10 0.857 at
            nprobe nlist // 16, 256 gave 0.973; tests/test_index_ann.py, BENCHMARKS.md). k-means
            costs ``nlist x train_size`` per iteration, so this is the slowest part of an IVF build.
        kmeans_iters: k-means iterations of the IVF training (faiss' default is 25; 10 loses little
            here and costs 2.5x less).
        seed: sampling and k-means seed (builds are reproducible).
    """

    kind: str = "hnsw"
    nlist: int | None = None
    nprobe: int | None = None
    m: int = 32
    ef_construction: int = 40
    ef_search: int | None = None
    pq_bytes: int | None = None
    pq_nbits: int | None = None
    pca_dim: int | None = None
    rerank: int = 10
    train_size: int | None = None
    kmeans_iters: int = 10
    seed: int = 0

    def __post_init__(self):
        if self.kind not in ANN_KINDS:
            raise ValueError(f"ANN kind must be one of {list(ANN_KINDS)}, got {self.kind!r}")
        for name in ("nlist", "nprobe", "ef_search", "pq_bytes", "pq_nbits", "pca_dim", "train_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"AnnConfig.{name} must be a positive integer or None, got {value!r}")
        for name in ("m", "ef_construction", "rerank", "kmeans_iters"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"AnnConfig.{name} must be a positive integer, got {value!r}")

    def unresolved(self) -> AnnConfig:
        """A copy with the values `resolved` derives from the gallery size set back to ``None``: how a
        built index is rebuilt over a grown gallery (its kind, graph and projection kept)."""
        return replace(self, **dict.fromkeys(_SIZE_DERIVED))

    def resolved(self, count: int, dim: int) -> AnnConfig:
        """A copy with every ``None`` replaced by its value for a gallery of ``count x dim``."""
        nlist = self.nlist or max(1, min(int(round(2 * math.sqrt(count))), count // 39))
        nlist = min(nlist, count)
        nprobe = min(self.nprobe or max(16, nlist // 10), nlist)
        if self.pca_dim is not None and self.pca_dim >= dim:
            raise ValueError(f"pca_dim={self.pca_dim} must be smaller than the embedding dim {dim} (or None: full width)")
        width = self.pca_dim or dim  # what the index itself stores
        pq_bytes = self.pq_bytes
        if pq_bytes is None:
            # Sized by the embedding, not the projection: 16 B for a 128-d projection of 512-d rows kept
            # recall@10 at 0.39 at 10M where 64 B reached 0.952 (BENCHMARKS.md).
            pq_bytes = max(b for b in range(1, max(1, dim // 8) + 1) if width % b == 0)
        if self.kind == "ivf_pq" and width % pq_bytes:
            raise ValueError(f"pq_bytes={pq_bytes} must divide the indexed width {width}")
        train_size = min(count, self.train_size or 256 * nlist)
        ef_search = self.ef_search or default_ef_search(count)
        pq_nbits = self.pq_nbits or max(1, min(8, int(math.log2(max(2, train_size // 39)))))
        return replace(
            self, nlist=nlist, nprobe=nprobe, ef_search=ef_search, pq_bytes=pq_bytes, pq_nbits=pq_nbits, train_size=train_size
        )

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> AnnConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ANN parameters {unknown}; known: {sorted(known)}")
        return cls(**data)


def _as_float32(array: Any) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().float().numpy()
    return np.ascontiguousarray(array, dtype=np.float32)


class AnnIndex:
    """A built faiss approximate index plus the `AnnConfig` that built it (resolved to the gallery size).

    Row ``i`` of the index is row ``i`` of the gallery embeddings it was built from.
    """

    def __init__(self, index: Any, config: AnnConfig):
        self.index = index
        self.config = config

    def __repr__(self) -> str:
        return f"AnnIndex(kind={self.config.kind!r}, count={self.count}, dim={self.dim})"

    @property
    def kind(self) -> str:
        return self.config.kind

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    # ------------------------------------------------------------------------------- build
    @classmethod
    def build(cls, embeddings: Any, config: AnnConfig | None = None, **overrides) -> AnnIndex:
        """Build over ``embeddings (N, D)`` (L2-normalised float32). ``overrides`` replace config fields."""
        faiss = _faiss()
        config = replace(config or AnnConfig(), **overrides) if overrides else (config or AnnConfig())
        if not isinstance(embeddings, (torch.Tensor, np.ndarray)):
            embeddings = _as_float32(embeddings)
        # Read block by block, never converted whole: a memory-mapped 10M x 512 gallery is 20 GB.
        shape = tuple(embeddings.shape)
        if len(shape) != 2 or shape[0] == 0:
            raise ValueError(f"embeddings must be a non-empty (N, D) matrix, got shape {shape}")
        count, dim = shape
        config = config.resolved(count, dim)
        width = config.pca_dim or dim
        # A centred projection keeps distances, not inner products: L2 there (same ranking on unit vectors).
        metric = faiss.METRIC_L2 if config.pca_dim else faiss.METRIC_INNER_PRODUCT
        if config.kind == "hnsw":
            index = faiss.IndexHNSWFlat(width, config.m, metric)
            index.hnsw.efConstruction = config.ef_construction
        else:
            quantizer = faiss.IndexFlat(width, metric)
            if config.kind == "ivf_flat":
                index = faiss.IndexIVFFlat(quantizer, width, config.nlist, metric)
            else:
                index = faiss.IndexIVFPQ(quantizer, width, config.nlist, config.pq_bytes, config.pq_nbits, metric)
            index.cp.seed = config.seed
            index.cp.niter = config.kmeans_iters
            index.own_fields = True
            quantizer.this.disown()  # the IVF index owns (and frees) its quantizer
        if config.pca_dim:
            inner, projection = index, faiss.PCAMatrix(dim, config.pca_dim)
            index = faiss.IndexPreTransform(projection, inner)
            index.own_fields = True  # frees the projection and the inner index with it
            inner.this.disown()
            projection.this.disown()
        if not index.is_trained:
            # k-means, PQ codebooks and the projection learn from a random sample: enough points per
            # cell, bounded time.
            rows = np.random.default_rng(config.seed).choice(count, config.train_size, replace=False)
            rows.sort()
            index.train(_as_float32(embeddings[rows]))
        # Adding in blocks keeps faiss' temporary buffers (and a torch->numpy copy) small.
        for start in range(0, count, 262_144):
            index.add(_as_float32(embeddings[start : start + 262_144]))
        return cls(index, config)

    # ------------------------------------------------------------------------------ search
    def search(
        self,
        queries: Any,
        k: int,
        *,
        gallery: Any = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        rerank: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate inner-product top-k: ``(scores (Q, k), indices (Q, k))``, best first.

        A slot the index could not fill (e.g. IVF cells holding fewer than k vectors) has index -1
        and score ``-inf``. ``nprobe`` / ``ef_search`` / ``rerank`` override the config for this call.
        ``gallery``: the float embeddings, needed by IVF-PQ and ``pca_dim`` indexes to re-score their
        candidates exactly (without it they return their compressed / projected scores).
        """
        faiss = _faiss()
        queries = _as_float32(queries)
        config = self.config
        coarse = self.kind == "ivf_pq" or config.pca_dim is not None  # scores worth re-scoring exactly
        candidates = min(k * (rerank or config.rerank) if coarse and gallery is not None else k, self.count)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(ef_search or config.ef_search, candidates))
        else:
            params = faiss.SearchParametersIVF(nprobe=min(nprobe or config.nprobe, config.nlist))
        if config.pca_dim:  # the inner parameters must outlive the search: keep both names
            inner_params, params = params, faiss.SearchParametersPreTransform(index_params=params)
        scores, indices = self.index.search(queries, candidates, params=params)
        scores, indices = torch.from_numpy(scores), torch.from_numpy(indices).long()
        if config.pca_dim:
            scores = 1 - scores / 2  # squared L2 between unit vectors -> cosine (in the projection)
        if candidates > k:
            scores, indices = _rerank(gallery, torch.from_numpy(queries), indices, k)
        scores[indices < 0] = float("-inf")
        return scores, indices

    # ------------------------------------------------------------------------- persistence
    def save(self, path: str | os.PathLike) -> Path:
        """Write the faiss index to ``path`` and its config next to it (``path`` + ``.json``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(path))
        Path(f"{path}.json").write_text(json.dumps(self.config.to_dict(), indent=1), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True) -> AnnIndex:
        """Read an index written by `save`.

        ``mmap=True`` maps the file instead of reading it where faiss supports that (IVF inverted
        lists; flat/HNSW vectors with faiss >= 1.9): opening is instant and the OS pages in only
        what searches touch. Index types faiss cannot map are read normally.
        """
        faiss = _faiss()
        path = Path(path)
        if not path.is_file() or not Path(f"{path}.json").is_file():
            raise FileNotFoundError(f"no approximate index at {path} (expected {path.name} and {path.name}.json)")
        try:
            config = AnnConfig.from_dict(json.loads(Path(f"{path}.json").read_text(encoding="utf-8")))
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise ValueError(f"corrupt {path}.json: {error}") from error
        index = None
        if mmap:
            for flag in _mmap_flags(faiss, config.kind):
                try:
                    index = faiss.read_index(str(path), flag)
                    break
                except RuntimeError:
                    continue  # this index type cannot be mapped with this flag: try the next, then a plain read
        if index is None:
            try:
                index = faiss.read_index(str(path))
            except RuntimeError as error:
                raise ValueError(f"corrupt approximate index {path}: {str(error).splitlines()[0]}") from error
        return cls(index, config)


def _mmap_flags(faiss, kind: str) -> list[int]:
    flags = []
    if kind in ("ivf_flat", "ivf_pq"):
        flags.append(faiss.IO_FLAG_MMAP)  # inverted lists read straight from the file
    if hasattr(faiss, "IO_FLAG_MMAP_IFC"):
        flags.append(faiss.IO_FLAG_MMAP_IFC)  # flat codes (HNSW's vectors) mapped, graph read
    return flags


def _rerank(gallery: Any, queries: torch.Tensor, candidates: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact scores of each query's candidate rows; the best ``k`` of them."""
    valid = candidates >= 0
    flat = candidates.clamp(min=0).flatten()
    # A numpy (possibly memory-mapped) gallery: gather the candidate rows there, a copy torch may own.
    rows = gallery[flat] if isinstance(gallery, torch.Tensor) else torch.from_numpy(np.asarray(gallery[flat.numpy()]))
    rows = rows.float().view(*candidates.shape, -1)
    scores = torch.einsum("qd,qcd->qc", queries.float(), rows)
    scores[~valid] = float("-inf")
    best, position = scores.topk(k, dim=1)
    return best, candidates.gather(1, position)


def recall_at_k(approximate: torch.Tensor, exact: torch.Tensor) -> float:
    """Mean fraction of each query's exact top-k indices found in its approximate top-k."""
    approximate, exact = torch.as_tensor(approximate), torch.as_tensor(exact)
    k = exact.shape[1]
    hits = (approximate[:, :, None] == exact[:, None, :]).any(dim=1).sum().item()
    return hits / (exact.shape[0] * k)
