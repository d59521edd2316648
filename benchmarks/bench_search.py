"""Exact top-k search latency: chunked torch matmul vs faiss-cpu IndexFlatIP.

Galleries are random L2-normalised float32 embeddings (default 512-d); a 1M x 512 gallery is 2 GB
(plus a second 2 GB copy inside faiss). Prints a markdown table of the median latency (ms) over
``--repeats`` runs, after one warm-up run, for each gallery size and query batch size. Index
building (faiss ``add``) is timed separately and not counted in the search latency.

    python benchmarks/bench_search.py                       # 10k and 1M, batches 1 and 64, top-10
    python benchmarks/bench_search.py --sizes 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from _machine import cpu_model, median_ms  # benchmarks/ is on sys.path when a script runs



def _random_unit(n: int, dim: int, generator: torch.Generator, block: int = 100_000) -> torch.Tensor:
    out = torch.empty(n, dim)
    for start in range(0, n, block):
        x = torch.randn(min(block, n - start), dim, generator=generator)
        out[start : start + x.shape[0]] = torch.nn.functional.normalize(x, dim=1)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 1_000_000], help="gallery sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64], help="query batch sizes")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per cell (median reported)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=None, help="torch gallery chunk (default: automatic)")
    args = parser.parse_args(argv)

    import faiss

    from hf_sbir.retrieval.index import _build_faiss, _search_faiss, _search_torch

    generator = torch.Generator().manual_seed(0)
    print(
        f"machine: {cpu_model()}, nproc={os.cpu_count()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), faiss {faiss.__version__} ({faiss.omp_get_max_threads()} threads)"
    )
    print(f"dim={args.dim}, top-{args.k}, median of {args.repeats} runs after 1 warm-up; times in ms\n")
    rows = []
    for size in args.sizes:
        gallery = _random_unit(size, args.dim, generator)
        start = time.perf_counter()
        index = _build_faiss(gallery)
        build_ms = (time.perf_counter() - start) * 1000
        for batch in args.batches:
            queries = _random_unit(batch, args.dim, generator)
            t_torch = median_ms(lambda: _search_torch(gallery, queries, args.k, args.chunk_size), args.repeats)
            t_faiss = median_ms(lambda: _search_faiss(index, queries, args.k), args.repeats)
            # Same answers (exact search on both sides; random data has no ties).
            ti = _search_torch(gallery, queries, args.k, args.chunk_size)[1]
            fi = _search_faiss(index, queries, args.k)[1]
            agree = bool((ti == fi).all())
            faster = "faiss" if t_faiss < t_torch else "torch"
            rows.append((size, batch, t_torch, t_faiss, t_torch / t_faiss, faster, build_ms, agree))
        del index, gallery

    print("| gallery | queries | torch matmul (ms) | faiss IndexFlatIP (ms) | torch / faiss | faster | faiss build (ms) | same top-k |")
    print("|---:|---:|---:|---:|---:|---|---:|---|")
    for size, batch, t_torch, t_faiss, ratio, faster, build_ms, agree in rows:
        print(
            f"| {size:,} x {args.dim} | {batch} | {t_torch:.2f} | {t_faiss:.2f} | {ratio:.2f} | {faster} | "
            f"{build_ms:.0f} | {'yes' if agree else 'NO'} |"
        )


if __name__ == "__main__":
    main()
