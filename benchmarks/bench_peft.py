#!/usr/bin/env python
"""Full fine-tuning vs peft's LoRA vs Adapt and Align's bottleneck adapters (issue 20): trainable parameters,
checkpoint size, step time, peak memory and unseen mAP@all, one seed, printed as a Markdown table.

All three train Adapt and Align (the method that has both kinds of adapters) on the packaged EfficientNet-Lite0
hybrid with the packaged MiniLM class-name embeddings, the same data, schedule and seed:

- full: every weight trains (`use_adapters=false`);
- lora: `--peft lora` (r, alpha below) on the backbone's pretrained layers; the heads and the hybrid's new
  transformer layers train in full (`hf_sbir.training.peft`);
- bottleneck: the paper's bottleneck adapters with `train_adapters_only=true` (backbone frozen).

Each variant runs in its own process, so that its peak RSS (`ru_maxrss`, training and the final evaluation
together) is its own.

    python benchmarks/bench_peft.py --dataset sketchy-small --split sketchy_sake --iterations 150 \
        --output_dir runs/bench_peft
    python benchmarks/bench_peft.py --dataset embedded --split embedded --iterations 3 --output_dir /tmp/bp  # smoke
    # the variants side by side, under the same load, then one table:
    for v in full lora bottleneck; do python benchmarks/bench_peft.py --variants $v --output_dir runs/bench_peft/$v & done; wait
    python benchmarks/bench_peft.py --merge runs/bench_peft/full runs/bench_peft/lora runs/bench_peft/bottleneck
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
from pathlib import Path

from _machine import cpu_model, library_versions  # benchmarks/ is on sys.path when a script runs

VARIANTS = {
    "full": {"method_args": {"use_adapters": False}},
    "lora": {"peft": "lora", "method_args": {}},
    "bottleneck": {"method_args": {"use_adapters": True, "train_adapters_only": True}},
}


def train_config(args, variant: str):
    from hf_sbir.training.config import TrainConfig

    spec = VARIANTS[variant]
    return TrainConfig(
        method="adapt_align", dataset=args.dataset, split=args.split, backbone="packaged", text_embedder="minilm",
        iterations=args.iterations, batch_size=args.batch_size, learning_rate=args.learning_rate,
        min_learning_rate=args.learning_rate / 10, warmup_iterations=max(0, args.iterations // 10),
        image_size=args.image_size, seed=args.seed, output_dir=str(Path(args.output_dir) / variant),
        checkpoint_every=args.iterations, keep_checkpoints=1, eval_before=False, eval_batch_size=64,
        num_workers=args.num_workers, log_with="jsonl", progress=False,
        peft=spec.get("peft"), peft_r=args.peft_r, peft_alpha=args.peft_alpha, method_args=spec["method_args"],
    )


def trainable_parameters(cfg) -> tuple[int, int]:
    """(trainable, total) parameters of the model the run trains (built the way the loop builds it)."""
    from hf_sbir.training.methods import get_method_class
    from hf_sbir.training.peft import peft_from_args

    method = get_method_class(cfg.method)(cfg)
    model = peft_from_args(method.build_model(), cfg)
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def run_variant(args, variant: str) -> dict:
    import tempfile

    from safetensors.torch import save_file

    from hf_sbir.training import train

    cfg = train_config(args, variant)
    trainable, total = trainable_parameters(cfg)
    result = train(cfg)
    model_dir = Path(result.model_dir)
    if variant == "lora":
        checkpoint = model_dir / "adapter" / "adapter_model.safetensors"
        checkpoint_bytes = checkpoint.stat().st_size
    elif variant == "bottleneck":
        # A&A has no adapter-only export: the bytes of what trained (adapters, projection) as one safetensors file.
        state = {k: v.detach().contiguous() for k, v in result.model.named_parameters() if v.requires_grad}
        with tempfile.TemporaryDirectory() as tmp:
            save_file(state, f"{tmp}/trained.safetensors")
            checkpoint_bytes = Path(f"{tmp}/trained.safetensors").stat().st_size
    else:
        checkpoint_bytes = (model_dir / "model.safetensors").stat().st_size
    times = [json.loads(line)["time"] for line in (Path(cfg.output_dir) / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [b - a for a, b in zip(times, times[1:])][5:]  # the first steps warm up (allocator, workers)
    after = result.metrics_after
    return {
        "variant": variant, "trainable_parameters": trainable, "total_parameters": total,
        "checkpoint_bytes": checkpoint_bytes, "full_model_bytes": (model_dir / "model.safetensors").stat().st_size,
        "step_seconds_median": statistics.median(steps) if steps else None,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "map_all_textbook": after["by_protocol"]["textbook"]["map@all"],
        "map_all_sake": after["by_protocol"]["sake"]["map@all"],
    }


def format_table(rows: list[dict]) -> str:
    lines = [
        "| variant | trainable params | checkpoint | step (s, median) | peak RSS (MiB) | mAP@all textbook | mAP@all SAKE |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['trainable_parameters'] / 1e6:.2f} M of {r['total_parameters'] / 1e6:.2f} M "
            f"| {r['checkpoint_bytes'] / 2**20:.1f} MiB | {r['step_seconds_median']:.2f} | {r['peak_rss_mib']:.0f} "
            f"| {100 * r['map_all_textbook']:.2f} | {100 * r['map_all_sake']:.2f} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="sketchy-small")
    parser.add_argument("--split", default="sketchy_sake")
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--peft_r", type=int, default=8)
    parser.add_argument("--peft_alpha", type=float, default=16.0)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--output_dir", default="runs/bench_peft")
    parser.add_argument("--one", choices=list(VARIANTS), help=argparse.SUPPRESS)  # child process: one variant
    parser.add_argument("--merge", nargs="+", metavar="DIR", help="print one table from the results.json of these output dirs")
    args = parser.parse_args(argv)

    if args.merge:  # variants run as separate invocations (in parallel, under the same load)
        rows = [row for d in args.merge for row in json.loads((Path(d) / "results.json").read_text())["rows"]]
        print(format_table(rows))
        return 0

    if args.one:
        print("RESULT " + json.dumps(run_variant(args, args.one)), flush=True)
        return 0
    rows = []
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    for variant in args.variants:
        proc = subprocess.run([sys.executable, __file__, *forwarded, "--one", variant], capture_output=True, text=True)
        found = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not found:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"variant {variant} failed (exit {proc.returncode})")
        rows.append(json.loads(found[-1][len("RESULT "):]))
        print(f"{variant}: done", file=sys.stderr, flush=True)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from importlib import metadata

    versions = {**library_versions(), "peft": metadata.version("peft")}
    (out / "results.json").write_text(json.dumps({"rows": rows, "settings": vars(args), "versions": versions}, indent=2))
    print(f"CPU: {cpu_model()}; {args.dataset} / {args.split}, seed {args.seed}, {args.iterations} iterations, "
          f"batch {args.batch_size}, {args.image_size} px\n")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
