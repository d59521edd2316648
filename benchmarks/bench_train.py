"""Training throughput, split into its parts: is the model waiting for data?

For each config, three measurements on the same set-up (method, data, model, anchors):

    data   the batch pipeline alone (`hf_sbir.training.data_pipeline`: decode + transform in `num_workers`
           DataLoader workers), images/s over `--iterations` steps;
    model  the training step alone on one ready batch (forward, loss, backward, Adam step), images/s;
    loop   the real training loop (`hf_sbir.training.trainer.train`, `stop_after`), images/s from the per-step
           time stamps of `logs/metrics.jsonl`, and the share of its time spent waiting for data (the loop logs
           `data_wait_s` every step).

With background loading the loop should run at about min(data, model): on the CPU the target is >= 90%.
images count every image a step encodes (sketches + photos: 2 x batch for Sketch-an-Anchor). The first
`--warmup` steps of each measurement are not timed.

Configs: train.py config files (`--config`), and named shapes (`--shape`):
    quickstart   configs/quickstart.yaml (packaged EfficientNet-Lite0 hybrid, batch 16, 128 px)
    paper        the paper's shape: ViT-S/8 (12 layers, hidden 384, patch 8), 224 px, batch 16, random init
                 (no ViT weights offline; speed does not depend on the weights), MiniLM word anchors
    tiny         a 2-layer hidden-32 ViT at 32 px (seconds; a smoke test of this script)

    python benchmarks/bench_train.py                                   # quickstart + paper shape on the CPU
    python benchmarks/bench_train.py --shape paper --device cuda --iterations 50 --set mixed_precision=bf16
    python benchmarks/bench_train.py --config my.yaml --set num_workers=4
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAPES = {
    "quickstart": {"config": str(REPO_ROOT / "configs" / "quickstart.yaml")},
    "paper": {
        "method": "sketch_an_anchor",
        "dataset": "embedded",
        "split": "embedded",
        "text_embedder": "minilm",
        "backbone_config": {
            "model_type": "vit", "hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
            "intermediate_size": 1536, "patch_size": 8, "image_size": 224, "qkv_bias": True,
        },
        "image_size": 224,
        "batch_size": 16,
    },
    "tiny": {
        "method": "sketch_an_anchor",
        "dataset": "embedded",
        "split": "embedded",
        "text_embedder": "minilm",
        "backbone_config": {"model_type": "vit", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                            "intermediate_size": 64, "patch_size": 8, "image_size": 32},
        "model_config": {"projection_dim": 16, "gcn_hidden_size": 16, "gcn_num_layers": 2},
        "method_args": {"num_neighbours": 3},
        "image_size": 32,
        "batch_size": 6,
    },
}


def _parse_set(items):
    import yaml

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


def _config(name_or_path: str, overrides: dict, output_dir: Path):
    from hf_sbir.training.config import TrainConfig

    bookkeeping = {"output_dir": str(output_dir), "eval_before": False, "progress": False, "log_with": "jsonl", "log_every": 1, "resume": False}
    shape = SHAPES.get(name_or_path)
    if shape is None or "config" in shape:
        path = shape["config"] if shape else name_or_path
        return TrainConfig.from_file(path, **overrides, **bookkeeping)
    return TrainConfig.from_dict({**shape, **overrides, **bookkeeping})


def _images(batch) -> int:
    import torch

    return sum(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() == 4)


def measure(name: str, overrides: dict, iterations: int, warmup: int, device: str, root: Path) -> dict:
    import torch
    from accelerate import Accelerator

    from hf_sbir.training import trainer
    from hf_sbir.training.data_pipeline import training_batches
    from hf_sbir.training.methods import get_method_class

    output_dir = root / Path(name).stem
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    args = _config(name, overrides, output_dir)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=args.mixed_precision)
    method = get_method_class(args.method)(args)
    data = method.load_data()
    model = method.build_model()
    transform = method.build_transform(model)
    method.setup(model, data, transform, accelerator)  # caches anchors in output_dir: the loop below reuses them

    # -- data alone: the pipeline the loop uses, nothing consuming it
    timed = iterations - warmup
    stream = training_batches(method, 0, iterations, args.batch_size, num_workers=args.num_workers)
    images = 0
    for step, micro, _ in stream:
        if step == warmup:
            began = time.perf_counter()
        if step >= warmup:
            images += sum(_images(b) for b in micro)
    data_s = time.perf_counter() - began
    data_rate = images / data_s
    images_per_step = images / timed

    # -- model alone: training steps on one ready batch
    batch = {k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in method.next_batch(0).items()}
    model.to(accelerator.device).train()
    optimizer = torch.optim.Adam(method.parameter_groups(model), lr=args.learning_rate)

    def sync():
        if accelerator.device.type == "cuda":
            torch.cuda.synchronize()

    for step in range(iterations):
        if step == warmup:
            sync()
            began = time.perf_counter()
        with accelerator.autocast():
            loss, _ = method.training_step(model, batch, step)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    sync()
    model_rate = _images(batch) * timed / (time.perf_counter() - began)
    del model, optimizer, batch

    # -- the whole loop, as train.py runs it
    loop_args = _config(name, {**overrides, "iterations": iterations + 1, "stop_after": iterations,
                               "checkpoint_every": iterations + 1, "keep_checkpoints": 1}, output_dir)
    if device == "cpu" and torch.cuda.is_available():
        raise SystemExit("--device cpu on a machine with a GPU: run with CUDA_VISIBLE_DEVICES= to time the loop on the CPU")
    trainer.train(loop_args)
    records = [json.loads(line) for line in (output_dir / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
    stamps = {r["step"]: r for r in records}
    loop_s = stamps[iterations]["time"] - stamps[warmup]["time"]  # end of step `warmup` -> end of the last step
    waited = sum(stamps[s]["data_wait_s"] for s in range(warmup + 1, iterations + 1))
    loop_rate = images_per_step * timed / loop_s
    return {
        "config": name, "method": args.method, "batch_size": args.batch_size, "image_size": args.image_size,
        "num_workers": args.num_workers, "images_per_step": images_per_step, "data_images_s": data_rate,
        "model_images_s": model_rate, "loop_images_s": loop_rate, "data_wait_share": waited / loop_s,
        "loop_vs_min": loop_rate / min(data_rate, model_rate), "timed_steps": timed, "device": str(accelerator.device),
        # ru_maxrss: KiB on Linux; the whole process so far (configs run one after another in it)
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cuda_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
    }


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", action="append", default=None, choices=sorted(SHAPES), help="named config (repeatable)")
    parser.add_argument("--config", action="append", default=[], help="train.py config file (repeatable)")
    parser.add_argument("--iterations", type=int, default=12, help="steps per measurement")
    parser.add_argument("--warmup", type=int, default=2, help="first steps left out of each timing")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a TrainConfig field (all configs)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    if args.warmup < 1 or args.iterations <= args.warmup:
        parser.error("need --warmup >= 1 and --iterations > --warmup")
    if args.device == "cpu":
        os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")  # before torch is imported: the loop must not pick a GPU
    import torch
    import transformers

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device.")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _machine import cpu_model

    names = (args.shape or ([] if args.config else ["quickstart", "paper"])) + args.config
    overrides = _parse_set(args.set)
    gpu = f", GPU {torch.cuda.get_device_name()}" if args.device == "cuda" else ""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"machine: {cpu_model()}, nproc={os.cpu_count()}, load average {load:.2f}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}{gpu}")
    print(f"{args.iterations} steps per measurement, the first {args.warmup} untimed" + (f"; overrides {overrides}" if overrides else "") + "\n", flush=True)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        for name in names:
            results.append(measure(name, overrides, args.iterations, args.warmup, args.device, Path(tmp)))
            print(f"  {name}: done (load average {os.getloadavg()[0]:.2f})", flush=True)
    print("\n| config | batch | image size | workers | images / step | data images/s | model images/s | loop images/s "
          "| loop / min(data, model) | loop time waiting for data | peak RSS so far (MiB) | peak CUDA (MiB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        config = os.path.relpath(r["config"], REPO_ROOT) if os.path.sep in r["config"] else r["config"]
        print(f"| {config} | {r['batch_size']} | {r['image_size']} | {r['num_workers']} | {r['images_per_step']:.0f} | "
              f"{r['data_images_s']:.1f} | {r['model_images_s']:.1f} | {r['loop_images_s']:.1f} | "
              f"{100 * r['loop_vs_min']:.0f}% | {100 * r['data_wait_share']:.0f}% | {r['peak_rss_mib']:.0f} | "
              + (f"{r['cuda_peak_mib']:.0f} |" if r["cuda_peak_mib"] is not None else "n/a |"))
    print(f"\n(device {results[0]['device']}; {results[0]['timed_steps']} timed steps per measurement)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
