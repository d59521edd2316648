"""Training speed (iterations/s, images/s) and peak memory of `train.py` configs, by default the
Quickstart (`configs/quickstart.yaml`: Sketch-an-Anchor, packaged EfficientNet-Lite0 hybrid, embedded
data, batch 16 sketches + 16 photos, 128 px) on the CPU.

Each config runs in its own subprocess (so peak memory is per config) through the real trainer
(`hf_sbir.training.trainer.train`) for ``--iterations`` steps into a temporary output folder, with
``eval_before`` off and no final evaluation / export (``stop_after``). Only the iteration loop is
timed, from the per-step ``time`` stamps of ``<output_dir>/logs/metrics.jsonl``: data loading inside
the loop (image decoding, sketch/photo transforms, class-paired sampling) counts, while set-up (data
generation, model and anchor building) and the first ``--warmup`` iterations do not. images/s counts
every image a step encodes (sketches + photos: 2 x batch for Sketch-an-Anchor). Peak RSS is the
subprocess's ``ru_maxrss`` (set-up included); with CUDA, ``torch.cuda.max_memory_allocated`` too.

    python benchmarks/bench_train.py                                   # Quickstart, 30 iterations
    python benchmarks/bench_train.py --iterations 100 --config configs/quickstart.yaml --config my.yaml
    python benchmarks/bench_train.py --iterations 3 --warmup 1 --set image_size=224
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

from _machine import cpu_model  # benchmarks/ is on sys.path when a script runs

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULT_MARKER = "BENCH_TRAIN_RESULT "


def _rss_mib() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    return psutil.Process().memory_info().rss / 2**20


def _parse_set(items: list[str]) -> dict:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str):
            try:
                parsed = float(parsed)  # yaml reads "5e-6" as a string
            except ValueError:
                pass
        overrides[key] = parsed
    return overrides


# ------------------------------------------------------------------------------------- worker
def run_one(config_path: str, iterations: int, warmup: int, overrides: dict, output_dir: str) -> dict:
    """Train ``config_path`` for ``iterations`` steps in this process; returns the measurements."""
    from hf_sbir.training import trainer
    from hf_sbir.training.config import TrainConfig

    base = TrainConfig.from_file(config_path, **overrides)
    total = max(base.iterations, iterations + 1)  # > iterations: stop_after ends the run before the final eval/export
    args = TrainConfig.from_file(
        config_path,
        **{
            **overrides,
            "iterations": total,
            "stop_after": iterations,
            "eval_before": False,
            "output_dir": output_dir,
            "checkpoint_every": total,  # only the one checkpoint after the last step (outside the timed loop)
            "keep_checkpoints": 1,
            "log_with": "jsonl",
            "log_every": 1,
            "progress": False,
            "resume": False,
        },
    )

    counts = {"images": 0, "batches": 0, "rss_before_loop": None, "loop_start": None}
    get_method_class = trainer.get_method_class

    def counting_method_class(name):
        cls = get_method_class(name)

        class Counting(cls):
            def next_batch(self, step):
                if counts["batches"] == 0:
                    counts["loop_start"] = time.time()
                    counts["rss_before_loop"] = _rss_mib()
                batch = super().next_batch(step)
                counts["batches"] += 1
                counts["images"] += sum(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() == 4)
                return batch

        Counting.__name__ = cls.__name__
        return Counting

    trainer.get_method_class = counting_method_class
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    start = time.time()
    result = trainer.train(args)
    wall = time.time() - start
    trainer.get_method_class = get_method_class

    records = [json.loads(line) for line in (Path(output_dir) / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    stamps = {r["step"]: r["time"] for r in records if r.get("step") is not None}
    if result.iterations_done != iterations or sorted(stamps) != list(range(1, iterations + 1)):
        raise RuntimeError(f"expected steps 1..{iterations} in metrics.jsonl, got {sorted(stamps)}")
    timed = iterations - warmup
    loop_s = stamps[iterations] - stamps[warmup]  # end of step `warmup` -> end of the last step
    images_per_it = counts["images"] / max(1, counts["batches"])
    return {
        "config": config_path,
        "method": args.method,
        "backbone": args.backbone or ("backbone_config" if args.backbone_config else "auto"),
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "timed_iterations": timed,
        "loop_s": loop_s,
        "it_s": timed / loop_s,
        "s_it": loop_s / timed,
        "images_per_it": images_per_it,
        "images_s": images_per_it * timed / loop_s,
        "setup_s": counts["loop_start"] - start,  # train() called -> first batch requested
        "wall_s": wall,
        "final_loss": records[-1].get("loss"),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
        "rss_before_loop_mib": counts["rss_before_loop"],
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "device": "cuda" if torch.cuda.is_available() else "cpu",
    }


# ------------------------------------------------------------------------------------- parent
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--config", action="append", default=None,
        help="train.py config file; repeat for several (default: configs/quickstart.yaml)",
    )
    parser.add_argument("--iterations", type=int, default=30, help="training iterations per config")
    parser.add_argument("--warmup", type=int, default=1, help="first iterations left out of the timing (>= 1)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig field (all configs)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--keep-output", default=None, help="write the runs under this folder instead of a temporary one")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUTPUT_DIR"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.iterations <= args.warmup:
        parser.error("need --warmup >= 1 and --iterations > --warmup (the first step has no start stamp)")
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = _parse_set(args.set)

    if args.worker:  # one config, in this process
        result = run_one(args.worker[0], args.iterations, args.warmup, overrides, args.worker[1])
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return

    configs = [os.path.abspath(c) for c in args.config or [REPO_ROOT / "configs" / "quickstart.yaml"]]
    import transformers

    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    print(
        f"machine: {cpu_model()}, nproc={os.cpu_count()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"transformers {transformers.__version__}{gpu}"
    )
    print(
        f"{args.iterations} iterations per config, the first {args.warmup} untimed; time of the iteration loop only "
        "(data loading included, set-up / evaluation / checkpointing excluded); peak RSS of the whole run"
        + (f"; overrides {overrides}" if overrides else "")
        + "\n",
        flush=True,
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        root = Path(args.keep_output or tmp)
        for i, config in enumerate(configs):
            output_dir = root / f"{i}_{Path(config).stem}"
            if output_dir.exists() and any(output_dir.iterdir()):
                raise SystemExit(f"{output_dir} is not empty; pass another --keep-output")
            command = [sys.executable, os.path.abspath(__file__), "--worker", config, str(output_dir),
                       "--iterations", str(args.iterations), "--warmup", str(args.warmup)]
            command += [f"--set={item}" for item in args.set]
            if args.threads:
                command += ["--threads", str(args.threads)]
            proc = subprocess.run(command, stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)
            lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
            if proc.returncode != 0 or not lines:
                sys.stdout.write(proc.stdout)
                raise SystemExit(f"{config}: the training run failed (exit {proc.returncode})")
            results.append(json.loads(lines[-1][len(RESULT_MARKER):]))

    cuda = any(r["cuda_peak_mib"] is not None for r in results)
    print(
        "| config | method | backbone | batch | image size | images / it | it / s | s / it | images / s "
        "| set-up (s) | RSS before loop (MiB) | peak RSS (MiB) |" + (" peak CUDA (MiB) |" if cuda else "")
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if cuda else ""))
    for r in results:
        config = os.path.relpath(r["config"], REPO_ROOT)
        before = f"{r['rss_before_loop_mib']:.0f}" if r["rss_before_loop_mib"] is not None else "n/a"
        row = (
            f"| {config} | {r['method']} | {r['backbone']} | {r['batch_size']} | {r['image_size']} | "
            f"{r['images_per_it']:.0f} | {r['it_s']:.3f} | {r['s_it']:.2f} | {r['images_s']:.1f} | "
            f"{r['setup_s']:.1f} | {before} | {r['peak_rss_mib']:.0f} |"
        )
        if cuda:
            row += f" {r['cuda_peak_mib']:.0f} |" if r["cuda_peak_mib"] is not None else " n/a |"
        print(row)
    print(f"\n(timed: {results[0]['timed_iterations']} iterations per config; device {results[0]['device']})")


if __name__ == "__main__":
    main()
