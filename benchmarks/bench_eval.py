"""Time and peak memory of category-level evaluation at scale: the engine (chunked,
`hf_sbir.retrieval.evaluation.evaluate_embeddings`) against the naive full-matrix computation
(the whole Q x G similarity matrix, one stable sort of it, textbook metrics from the sorted matrix).

Synthetic L2-normalised embeddings (Gaussian, `--dim`), `--num_classes` balanced random classes.
Each measurement runs in a fresh subprocess, so its peak resident memory (ru_maxrss) is its own;
"extra" is that peak minus the resident memory once the embeddings exist. Both ways must give the
same figures when run at the same size (checked, to 1e-9).

    python benchmarks/bench_eval.py --num_queries 50 --num_gallery 1000000 --mode both   # BENCHMARKS.md
    python benchmarks/bench_eval.py --num_queries 1000 --num_gallery 1000000 --mode chunked

The naive way holds Q x G floats plus the sort's Q x G int64 indices and the float64 precision
matrix (about 29 bytes per entry): 10k x 1M would need ~290 GB, so it is measured at a smaller Q.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from _machine import cpu_model  # benchmarks/ is on sys.path when a script runs


def make_data(num_queries: int, num_gallery: int, dim: int, num_classes: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    gallery = torch.nn.functional.normalize(torch.randn(num_gallery, dim, generator=gen), dim=1)
    queries = torch.nn.functional.normalize(torch.randn(num_queries, dim, generator=gen), dim=1)
    # Queries resemble their class centre a little, so the rankings are not pure noise.
    centres = torch.nn.functional.normalize(torch.randn(num_classes, dim, generator=gen), dim=1)
    gallery_labels = torch.randint(0, num_classes, (num_gallery,), generator=gen)
    query_labels = torch.randint(0, num_classes, (num_queries,), generator=gen)
    gallery = torch.nn.functional.normalize(gallery + 0.5 * centres[gallery_labels], dim=1)
    queries = torch.nn.functional.normalize(queries + 0.5 * centres[query_labels], dim=1)
    return queries, gallery, query_labels, gallery_labels


def naive_textbook(queries, gallery, query_labels, gallery_labels, map_k=200, precision_ks=(100, 200)) -> dict[str, float]:
    """The full-matrix computation: S = Q x G similarities, one stable sort, textbook metrics."""
    scores = queries @ gallery.T
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    del scores
    rel = gallery_labels[order] == query_labels[:, None]
    del order
    hits = rel.cumsum(dim=1)
    precision = torch.where(rel, hits / torch.arange(1, rel.shape[1] + 1, dtype=torch.float64), 0.0)
    num_relevant = hits[:, -1].double()
    ap_all = precision.sum(dim=1) / num_relevant.clamp(min=1)
    k = min(map_k, rel.shape[1])
    hits_k = hits[:, k - 1].double()
    ap_k = torch.where(hits_k > 0, precision[:, :k].sum(dim=1) / hits_k.clamp(min=1), 0.0)
    out = {"map@all": float(ap_all.mean()), f"map@{map_k}": float(ap_k.mean())}
    for p in precision_ks:
        kk = min(p, rel.shape[1])
        out[f"p@{p}"] = float((hits[:, kk - 1].double() / kk).mean())
    return out


def worker(args) -> dict:
    queries, gallery, q_labels, g_labels = make_data(args.num_queries, args.num_gallery, args.dim, args.num_classes, args.seed)
    from hf_sbir.retrieval.evaluation import evaluate_embeddings  # (imported before the clock starts)

    rss_data_kb = int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() // 1024
    start = time.perf_counter()
    if args.worker == "naive":
        metrics = naive_textbook(queries, gallery, q_labels, g_labels)
    else:
        result = evaluate_embeddings(queries, gallery, q_labels, g_labels, protocol=args.protocol, per_class=False)
        metrics = result.metrics
    seconds = time.perf_counter() - start
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "mode": args.worker, "protocol": args.protocol if args.worker == "chunked" else "textbook",
        "num_queries": args.num_queries, "num_gallery": args.num_gallery, "dim": args.dim,
        "seconds": seconds, "ms_per_query": 1000 * seconds / args.num_queries,
        "peak_rss_gib": peak_kb / 2**20, "extra_peak_gib": (peak_kb - rss_data_kb) / 2**20, "metrics": metrics,
    }


def run_mode(args, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", mode, "--num_queries", str(args.num_queries), "--num_gallery", str(args.num_gallery),
           "--dim", str(args.dim), "--num_classes", str(args.num_classes), "--seed", str(args.seed), "--protocol", args.protocol]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{mode} run failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num_queries", type=int, default=50)
    parser.add_argument("--num_gallery", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--num_classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol", default="textbook", help="protocol of the chunked run (the naive one is textbook)")
    parser.add_argument("--mode", choices=["chunked", "naive", "both"], default="both")
    parser.add_argument("--worker", choices=["chunked", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return []
    print(f"# {cpu_model()}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.num_queries} queries x {args.num_gallery} gallery, dim {args.dim}, {args.num_classes} classes")
    modes = ["chunked", "naive"] if args.mode == "both" else [args.mode]
    rows = [run_mode(args, mode) for mode in modes]
    print("| way | queries x gallery | time | ms / query | peak RSS | extra peak | map@all | map@200 |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} ({r['protocol']}) | {r['num_queries']} x {r['num_gallery']} | {r['seconds']:.1f} s | "
              f"{r['ms_per_query']:.0f} | {r['peak_rss_gib']:.2f} GiB | {r['extra_peak_gib']:.2f} GiB | "
              f"{100 * r['metrics']['map@all']:.4f} | {100 * r['metrics']['map@200']:.4f} |")
    if len(rows) == 2 and args.protocol == "textbook":
        for key, value in rows[1]["metrics"].items():
            if abs(value - rows[0]["metrics"][key]) > 1e-9:
                raise SystemExit(f"chunked and naive disagree on {key}: {rows[0]['metrics'][key]} vs {value}")
        print("chunked and naive agree on every metric (to 1e-9)")
    return rows


if __name__ == "__main__":
    main()
