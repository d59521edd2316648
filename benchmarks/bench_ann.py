"""Approximate vs exact gallery search at scale: build time, size, latency and recall@10.

The gallery is synthetic: ``--size`` L2-normalised ``--dim``-d vectors drawn around ``--clusters``
random unit centres with Gaussian noise of expected norm ``--spread`` (relative to the unit centre;
cosine to the own centre ~ 1/sqrt(1 + spread^2)). Queries are drawn the same way. With the default
spread 1.0 neighbouring clusters overlap, so an IVF index that scans few cells loses recall
(the nprobe sweep in the output shows it); tight clusters (spread ~0.3) reach recall 1.0 at
nprobe 8 and flatter every approximate index.

The noise is full-rank by default: every cluster spreads in all ``--dim`` directions, a local intrinsic
dimension near 70-90 (Levina-Bickel MLE over 10-20 neighbours, printed at the start), the worst case for
graph and partition indexes. A model's embeddings are far flatter: the packaged model fine-tuned on
sketchy-small gives ~15 on the 2,900 sketchy-small photos (``--compare-index`` prints it for any saved
gallery index). ``--intrinsic-dim D`` spreads each cluster in its own random D-dimensional subspace
instead (D=24 gives ~15.5). ``--fit-to-index DIR`` draws the set from a real embedded gallery instead: a
Gaussian mixture whose centres spread like its class means and whose rows spread around them like its
rows around theirs (centres then share the directions real classes differ in; Gaussian noise still fills
more directions than real photos do, ~45 against ~17 for the sketchy-small gallery).

Per index: build time (train + add), size on disk (the saved file), resident memory after a plain
load (and after the timed searches when memory-mapped), median latency of one query and of a
batch of 64 queries, and recall@10 against exact top-10 (the exact torch search over all queries).

    OMP_NUM_THREADS=2 python benchmarks/bench_ann.py                       # 1M x 512
    python benchmarks/bench_ann.py --size 100000 --indexes ivf_flat hnsw   # quicker

``--cache DIR`` keeps the generated vectors, the exact ground truth and every built index (with its
build time) under ``DIR``: a rerun with the same data and parameters (a wider sweep, another index)
loads them instead of regenerating and rebuilding (an HNSW build at 1M takes the better part of an hour
on 2 shared cores).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from _machine import cpu_model, median_ms  # benchmarks/ is on sys.path when a script runs


def clustered(count: int, dim: int, centres: torch.Tensor, spread: float, generator, block: int = 100_000, bases=None, out=None):
    """Rows around random centres; with `bases` (clusters, D, dim), each cluster's noise lies in its own
    D-dimensional subspace (the same expected norm, `spread`). `out`: a (count, dim) tensor to fill (e.g. a
    memory-mapped file, for galleries larger than RAM)."""
    if bases is not None:
        block = min(block, 10_000)  # the gathered bases: block x D x dim floats
    out = torch.empty(count, dim) if out is None else out
    for start in range(0, count, block):
        n = min(block, count - start)
        labels = torch.randint(0, centres.shape[0], (n,), generator=generator)
        if bases is None:
            noise = torch.randn(n, dim, generator=generator) * (spread / dim**0.5)
        else:
            rank = bases.shape[1]
            noise = torch.bmm(torch.randn(n, 1, rank, generator=generator) * (spread / rank**0.5), bases[labels]).squeeze(1)
        out[start : start + n] = F.normalize(centres[labels] + noise, dim=1)
    return out


def fitted_mixture(embeddings: torch.Tensor, labels: list[str], clusters: int, generator):
    """(centres, within-class factor) of a Gaussian mixture fitted to a real labelled gallery: `clusters`
    centres drawn from a Gaussian with the real class means' mean and covariance (so centres share the
    directions real classes differ in, and similar classes sit close together), and one factor `L` with
    `L.T @ L` the pooled within-class covariance (rows are `centre + z @ L`, z standard normal)."""
    names = sorted(set(labels))
    index = torch.tensor([names.index(label) for label in labels])
    means = torch.stack([embeddings[index == c].mean(dim=0) for c in range(len(names))])
    residual = embeddings - means[index]
    # Centres: a random combination of the centred class means has exactly their sample covariance.
    spread = means - means.mean(dim=0)
    z = torch.randn(clusters, len(names), generator=generator) / (len(names) - 1) ** 0.5
    centres = means.mean(dim=0) + z @ spread
    within = residual.T @ residual / (embeddings.shape[0] - len(names))
    values, vectors = torch.linalg.eigh(within.double())
    factor = (vectors * values.clamp(min=0).sqrt()).T.float()  # (dim, dim): factor.T @ factor == within
    return centres, factor


def fitted_rows(count: int, centres: torch.Tensor, factor: torch.Tensor, generator, block: int = 100_000, out=None):
    """L2-normalised rows of the fitted mixture, each cluster equally likely (`out` as in `clustered`)."""
    out = torch.empty(count, centres.shape[1]) if out is None else out
    for start in range(0, count, block):
        n = min(block, count - start)
        labels = torch.randint(0, centres.shape[0], (n,), generator=generator)
        noise = torch.randn(n, factor.shape[0], generator=generator) @ factor
        out[start : start + n] = F.normalize(centres[labels] + noise, dim=1)
    return out


def local_intrinsic_dimension(points: torch.Tensor, k: int = 10, samples: int = 200, seed: int = 0) -> float:
    """Levina-Bickel maximum-likelihood estimate (MacKay-Ghahramani average) of the local intrinsic
    dimension of L2-normalised `points` from each sampled point's k nearest neighbours among all of them:
    how many directions a neighbourhood really spreads in, what makes an ANN index's job hard."""
    picked = torch.randperm(points.shape[0], generator=torch.Generator().manual_seed(seed))[:samples]
    inverse = []
    for start in range(0, len(picked), 50):
        sims = torch.as_tensor(points[picked[start : start + 50]]) @ torch.as_tensor(points).T
        top = torch.topk(sims, k + 1, dim=1).values[:, 1:]  # the point itself first
        dist = torch.sqrt(torch.clamp(2 - 2 * top, min=1e-12))
        inverse.append(torch.log(dist[:, -1:] / dist[:, :-1]).mean(dim=1))
    return float(1 / torch.cat(inverse).mean())


def variance_kept(points, dims: int, samples: int = 50_000) -> float:
    """Share of the (centred) variance of `points` in their `dims` leading principal directions, from the
    first `samples` rows: what a `pca_dim` index keeps (model embeddings ~0.88 at 128 of 512)."""
    rows = torch.as_tensor(np.asarray(points[:samples]), dtype=torch.float64)
    rows = rows - rows.mean(dim=0)
    values = torch.linalg.eigvalsh(rows.T @ rows).flip(0).clamp(min=0)
    return float(values[:dims].sum() / values.sum())


def rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")



def latency(search, queries, repeats: int) -> tuple[float, float]:
    """(ms for one query, ms for a batch of 64), medians; one query cycles through the query set."""
    position = iter(range(10**9))

    def one():
        i = next(position) % queries.shape[0]
        search(queries[i : i + 1])

    return median_ms(one, repeats * 5), median_ms(lambda: search(queries[:64]), repeats)


def _row(name, params, build, disk, ram, one, batch, recall) -> str:
    ram = ram if isinstance(ram, str) else f"{ram:.0f}"
    return f"| {name} | {params} | {build:.1f} | {disk:.0f} | {ram} | {one:.2f} | {batch:.1f} | {recall:.3f} |"


def _sweep(name, param, value, one, recall) -> str:
    return f"| {name} | {param} | {value} | {one:.2f} | {recall:.3f} |"


class _Printed:
    """Collects table rows and prints each at once (a long run cut short still reports what it measured)."""

    def __init__(self, fmt):
        self.fmt, self.lines = fmt, []

    def append(self, row) -> None:
        self.lines.append(self.fmt(*row))
        print("row:", self.lines[-1], flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--clusters", type=int, default=10_000, help="cluster centres (default: 100 rows a cluster at 1M)")
    parser.add_argument("--spread", type=float, default=1.3)
    parser.add_argument(
        "--intrinsic-dim", type=int, default=None,
        help="spread each cluster in its own random subspace of this many dimensions (default: all; 24 matches "
        "real embeddings' local intrinsic dimension, see the docstring)",
    )
    parser.add_argument("--compare-index", type=Path, default=None, help="a saved GalleryIndex: print its local intrinsic dimension")
    parser.add_argument(
        "--fit-to-index", type=Path, default=None,
        help="a saved GalleryIndex with 'label' metadata (a real, embedded gallery): draw --clusters centres and "
        "each cluster's noise from a Gaussian mixture fitted to its classes (--spread, --intrinsic-dim ignored)",
    )
    parser.add_argument("--queries", type=int, default=500, help="queries for recall (latency uses the first ones)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument(
        "--indexes",
        nargs="+",
        default=["torch", "faiss_flat", "hnsw", "ivf_flat", "ivf_pq", "milvus"],
        help="torch faiss_flat hnsw ivf_flat ivf_pq milvus",
    )
    parser.add_argument("--nprobes", type=int, nargs="+", default=[8, 32, 64, 128, 256], help="IVF sweep")
    parser.add_argument("--ef-searches", type=int, nargs="+", default=[16, 32, 64, 128], help="HNSW sweep")
    parser.add_argument("--hnsw-m", type=int, default=None, help="override AnnConfig.m")
    parser.add_argument("--ef-construction", type=int, default=None, help="override AnnConfig.ef_construction")
    parser.add_argument("--ef-search", type=int, default=None, help="override AnnConfig.ef_search (the default row)")
    parser.add_argument("--nprobe", type=int, default=None, help="override AnnConfig.nprobe (the default row)")
    parser.add_argument("--nlist", type=int, default=None, help="override AnnConfig.nlist")
    parser.add_argument("--pca-dim", type=int, default=None, help="AnnConfig.pca_dim of the faiss indexes (default: full width)")
    parser.add_argument("--rerank", type=int, default=None, help="override AnnConfig.rerank (IVF-PQ and --pca-dim)")
    parser.add_argument("--pq-bytes", type=int, default=None, help="override AnnConfig.pq_bytes (IVF-PQ)")
    parser.add_argument("--no-mmap", action="store_true", help="skip the memory-mapped reload of each index")
    parser.add_argument("--cache", type=Path, default=None, help="keep data, ground truth and built indexes here")
    args = parser.parse_args(argv)

    import faiss

    from hf_sbir.retrieval import AnnConfig, AnnIndex, GalleryIndex, recall_at_k
    from hf_sbir.retrieval.index import _search_torch

    data_key = f"{args.size}x{args.dim}-c{args.clusters}-s{args.spread}-q{args.queries}"
    if args.intrinsic_dim:
        data_key += f"-id{args.intrinsic_dim}"
    if args.fit_to_index:
        real = GalleryIndex.load(args.fit_to_index)
        args.dim = int(real.embeddings.shape[1])  # the fitted rows have the real gallery's width
        data_key = f"{args.size}x{args.dim}-c{args.clusters}-fit-{args.fit_to_index.resolve().name}-q{args.queries}"
    cache = args.cache / data_key if args.cache else None
    start = time.perf_counter()
    if cache and (cache / "exact.npy").is_file():
        # Mapped, not read: the pages are file-backed, so under memory pressure the kernel drops them
        # instead of killing the run (an OOM kill ended a 1M HNSW build on the shared machine).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch warns that the mapping is read-only
            gallery = torch.from_numpy(np.load(cache / "gallery.npy", mmap_mode="r"))
        queries = torch.from_numpy(np.load(cache / "queries.npy"))
        exact = torch.from_numpy(np.load(cache / "exact.npy"))
        made = f"loaded from {cache} in {time.perf_counter() - start:.0f} s"
    else:
        generator = torch.Generator().manual_seed(0)
        out = None
        if cache:  # rows go straight to the cached file: a 10M x 512 gallery (20 GB) is larger than RAM
            cache.mkdir(parents=True, exist_ok=True)
            mapped = np.lib.format.open_memmap(cache / "gallery.npy", mode="w+", dtype=np.float32, shape=(args.size, args.dim))
            out = torch.from_numpy(mapped)
        if args.fit_to_index:
            labels = [row.get("label") for row in real.metadata]
            if None in labels:
                raise SystemExit(f"--fit-to-index {args.fit_to_index}: every row needs a 'label' (build it from class folders)")
            centres, factor = fitted_mixture(torch.as_tensor(real.embeddings), labels, args.clusters, generator)
            gallery = fitted_rows(args.size, centres, factor, generator, out=out)
            queries = fitted_rows(args.queries, centres, factor, generator)
        else:
            centres = F.normalize(torch.randn(args.clusters, args.dim, generator=generator), dim=1)
            bases = None
            if args.intrinsic_dim:  # orthonormal rows: the noise keeps its expected norm in any subspace
                bases = torch.linalg.qr(torch.randn(args.clusters, args.dim, args.intrinsic_dim, generator=generator)).Q.mT
            gallery = clustered(args.size, args.dim, centres, args.spread, generator, bases=bases, out=out)
            queries = clustered(args.queries, args.dim, centres, args.spread, generator, bases=bases)
            del bases
        made = f"generated in {time.perf_counter() - start:.0f} s"
        exact = None
    print(
        f"machine: {cpu_model()}, nproc={os.cpu_count()}, load average {os.getloadavg()[0]:.1f} at start, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)"
    )
    print(
        f"gallery {args.size:,} x {args.dim} ({args.clusters} clusters, "
        + (f"a mixture fitted to {args.fit_to_index}" if args.fit_to_index else
           f"spread {args.spread}, noise in {args.intrinsic_dim or args.dim} dimensions a cluster")
        + "; local intrinsic dimension "
        f"{local_intrinsic_dimension(gallery):.1f} at k=10"
        + (f"; {variance_kept(gallery, args.pca_dim):.1%} of the variance in {args.pca_dim} directions" if args.pca_dim else "")
        + f"), {args.queries} queries, top-10; {made}; medians, times in ms\n"
    )
    if args.compare_index:
        real = GalleryIndex.load(args.compare_index).embeddings
        print(
            f"{args.compare_index}: {real.shape[0]:,} real embeddings, local intrinsic dimension "
            f"{local_intrinsic_dimension(real):.1f} at k=10"
            + (f", {variance_kept(real, args.pca_dim):.1%} of the variance in {args.pca_dim} directions" if args.pca_dim else "")
            + "\n"
        )
    if exact is None:
        start = time.perf_counter()
        _, exact = _search_torch(gallery, queries, 10, None)
        print(f"exact ground truth for {args.queries} queries: {time.perf_counter() - start:.1f} s\n", flush=True)
        if cache:
            mapped.flush()  # the gallery was written in place
            np.save(cache / "queries.npy", queries.numpy())
            np.save(cache / "exact.npy", exact.numpy())  # last: its presence means the set is complete

    rows, sweeps = _Printed(_row), _Printed(_sweep)
    tmp = Path(tempfile.mkdtemp(prefix="bench_ann_"))
    for name in args.indexes:
        gc.collect()
        base = rss_mb()
        if name == "torch":
            search = lambda q: _search_torch(gallery, q, 10, None)  # noqa: E731
            one, batch = latency(search, queries, args.repeats)
            rows.append((name, "-", 0.0, 0.0, 0.0, one, batch, 1.0))
        elif name == "faiss_flat":
            start = time.perf_counter()
            index = faiss.IndexFlatIP(args.dim)
            index.add(gallery.numpy())
            build = time.perf_counter() - start
            search = lambda q: index.search(q.numpy(), 10)  # noqa: E731
            one, batch = latency(search, queries, args.repeats)
            found = torch.from_numpy(index.search(queries.numpy(), 10)[1])
            rows.append((name, "-", build, index.ntotal * args.dim * 4 / 2**20, rss_mb() - base, one, batch, recall_at_k(found, exact)))
            del index
        elif name in ("hnsw", "ivf_flat", "ivf_pq"):
            overrides = {}
            if name == "hnsw" and args.hnsw_m:
                overrides["m"] = args.hnsw_m
            if name == "hnsw" and args.ef_construction:
                overrides["ef_construction"] = args.ef_construction
            if name == "hnsw" and args.ef_search:
                overrides["ef_search"] = args.ef_search
            if name != "hnsw" and args.nprobe:
                overrides["nprobe"] = args.nprobe
            if name != "hnsw" and args.nlist:
                overrides["nlist"] = args.nlist
            if args.pca_dim:
                overrides["pca_dim"] = args.pca_dim
            if args.rerank:
                overrides["rerank"] = args.rerank
            if name == "ivf_pq" and args.pq_bytes:
                overrides["pq_bytes"] = args.pq_bytes
            config = AnnConfig(kind=name, **overrides).resolved(args.size, args.dim)
            # The cached file is keyed by what shapes the built index (search-time parameters excluded).
            shaping = ("m", "ef_construction") if name == "hnsw" else ("nlist", "train_size", "kmeans_iters", "seed")
            shaping += ("pq_bytes", "pq_nbits") if name == "ivf_pq" else ()
            if config.pca_dim:  # the projection learns from a sample (IVF's shaping names it already)
                shaping += ("pca_dim",) + (("train_size", "seed") if name == "hnsw" else ())
            stem = name + "".join(f"-{k}{getattr(config, k)}" for k in shaping)
            path = (cache or tmp) / f"{stem}.faiss"
            timing = path.with_suffix(".build.json")
            start = time.perf_counter()
            if cache and path.is_file() and timing.is_file():
                build = json.loads(timing.read_text())["build_s"]
                print(f"{name}: reusing {path} (built in {build:.0f} s)", flush=True)
            else:
                ann = AnnIndex.build(gallery, config)
                build = time.perf_counter() - start
                print(f"{name}: built in {build:.0f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
                ann.save(path)
                timing.write_text(json.dumps({"build_s": build, "load_average": os.getloadavg()}))
                del ann
            disk = path.stat().st_size / 2**20
            gc.collect()
            for mmap in (False,) if args.no_mmap else (False, True):
                base = rss_mb()
                ann = AnnIndex.load(path, mmap=mmap)
                # Search-time overrides apply to a cached index too (its .json holds the build's config).
                ann.config = replace(ann.config, nprobe=config.nprobe, ef_search=config.ef_search, rerank=config.rerank)
                loaded = rss_mb() - base
                search = lambda q: ann.search(q, 10, gallery=gallery)  # noqa: E731
                one, batch = latency(search, queries, args.repeats)
                found = search(queries)[1]
                label = f"{name}{' (mmap)' if mmap else ''}"
                params = (
                    f"M={config.m}, efC={config.ef_construction}, efSearch={config.ef_search}"
                    if name == "hnsw"
                    else f"nlist={config.nlist}, nprobe={config.nprobe}"
                    + (f", {config.pq_bytes} B x {config.pq_nbits} bit" if name == "ivf_pq" else "")
                ) + (f", PCA {config.pca_dim}" if config.pca_dim else "")
                if name == "ivf_pq" or config.pca_dim:
                    params += f", rerank {config.rerank}x"
                resident = f"{loaded:.0f} load / {rss_mb() - base:.0f} after search" if mmap else loaded
                rows.append((label, params, build, disk, resident, one, batch, recall_at_k(found, exact)))
                if not mmap:
                    sweep = args.ef_searches if name == "hnsw" else args.nprobes
                    for value in sweep:
                        kw = {"ef_search": value} if name == "hnsw" else {"nprobe": value}
                        s = lambda q: ann.search(q, 10, gallery=gallery, **kw)  # noqa: E731
                        one_s, _ = latency(s, queries, max(2, args.repeats // 4))
                        sweeps.append((name, "efSearch" if name == "hnsw" else "nprobe", value, one_s, recall_at_k(s(queries)[1], exact)))
                del ann, search
                gc.collect()
            if not cache:
                path.unlink()
        elif name == "milvus":
            from hf_sbir.retrieval.vector_db import VectorDBGallery

            index = GalleryIndex(gallery, normalize=False)
            start = time.perf_counter()
            db = VectorDBGallery.from_gallery(index, f"{tmp}/milvus.db", collection="bench")
            build = time.perf_counter() - start
            del index
            disk = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file() and "milvus" in str(p)) / 2**20
            search = lambda q: db.search(q, 10)  # noqa: E731
            one, batch = latency(search, queries, max(2, args.repeats // 4))
            found = db.search(queries, 10)[1]
            rows.append(("milvus-lite", db.describe(), build, disk, rss_mb() - base, one, batch, recall_at_k(found, exact)))
            db.close()
        else:
            raise SystemExit(f"unknown index {name!r}")
        print(f"done: {name} ({time.perf_counter() - start:.0f} s since its build started)", flush=True)

    print("\n| index | parameters | build (s) | on disk (MiB) | RSS growth (MiB) | 1 query (ms) | 64 queries (ms) | recall@10 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows.lines))
    if sweeps.lines:
        print("\n| index | parameter | value | 1 query (ms) | recall@10 |")
        print("|---|---|---:|---:|---:|")
        print("\n".join(sweeps.lines))


if __name__ == "__main__":
    main()
