"""Sketch-an-Anchor ablation on real sketches (sbir-mini, zero-shot split `sbir_mini`), the paper's Table 4.

Trains on the 14 seen classes with the packaged offline backbone (EfficientNet-Lite0 hybrid) on CPU
and scores the 7 unseen classes (sketch->photo mAP@all, mAP@200, P@100, P@200 and photo->photo
mAP@all) for each variant, same seed and iterations, under two evaluation protocols from the same
embeddings (`hf_sbir.metrics.PROTOCOLS`): "textbook" and "sake" (VOC-interpolated AP, the one most
recent zero-shot SBIR tables use):

    untrained   the backbone's own features (no SBIR training; `BackboneFeatureModel`)
    infonce     InfoNCE only (paper §3.2): no anchors
    anchors     + semantic (word + visual) anchors with the anchored contrastive loss, fixed anchors, no GCN
    full        + randomised anchors and the 4-layer GCN (the full model)

Repeated over seeds; prints one line per run and a mean ± std table per protocol (values in %), and
writes `results.json` and `table.md` to the output folder. Finished runs are reused, a stopped run
resumes; a finished run made with other settings is refused (name another `--output_dir`), never
reported. A finished run recorded before a protocol existed shows "–" for it; `--rescore` evaluates
such runs again from their saved models (no training) and records every protocol.

    python benchmarks/ablation_sbir_mini.py --seeds 0 1 2 --iterations 150 --output_dir runs/ablation   # BENCHMARKS.md
    python benchmarks/ablation_sbir_mini.py --iterations 2 --seeds 0 --image_size 64     # smoke test

`--study_preprocessing` also scores the untrained backbone with the sketch ink-box crop on/off and
stroke thickening (0/1/2 px) to choose the default sketch preprocessing.

sbir-mini is research-use data read from ../shared (or $HF_SBIR_MINI_ROOT); nothing is copied.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from pathlib import Path

import torch

from _machine import cpu_model, library_versions  # benchmarks/ is on sys.path when a script runs

VARIANTS = {
    "infonce": {"use_word_anchors": False, "use_visual_anchors": False},
    "anchors": {"randomize_word_anchors": False, "randomize_visual_anchors": False, "gcn_num_layers": 0},
    "full": {},
}
ORDER = ["untrained", *VARIANTS]
KEYS = ("map@all", "map@200", "p@100", "p@200", "photo_map@all")
PROTOCOLS = ("textbook", "sake")  # = hf_sbir.retrieval.evaluation.TRAINING_PROTOCOLS, what every run records


def protocol_metrics(result: dict, protocol: str) -> dict | None:
    """A run's metrics under `protocol`, or None when the run did not record it (made before it existed)."""
    by_protocol = result.get("by_protocol") or {}
    if protocol in by_protocol:
        return by_protocol[protocol]
    return result["metrics"] if protocol == "textbook" else None


def base_config(args, seed: int, variant: str, **overrides):
    from hf_sbir.training.config import TrainConfig

    return TrainConfig(
        method="sketch_an_anchor",
        dataset=args.dataset,
        split="sbir_mini",
        backbone="packaged",
        text_embedder="minilm",
        iterations=args.iterations,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        min_learning_rate=args.learning_rate / 10,
        warmup_iterations=max(0, args.iterations // 10),
        image_size=args.image_size,
        sketch_ink_crop=args.sketch_ink_crop,
        sketch_stroke_width=args.sketch_stroke_width,
        seed=seed,
        output_dir=str(Path(args.output_dir) / f"seed{seed}" / variant),
        checkpoint_every=max(1, min(100, args.iterations)),
        keep_checkpoints=1,
        eval_before=False,
        eval_batch_size=64,
        max_eval_queries=args.max_eval_queries,
        log_with="jsonl",
        progress=args.progress,
        method_args={**args.method_arg, **VARIANTS.get(variant, {})},
        **overrides,
    )


def evaluate_untrained(cfg) -> dict:
    """The packaged backbone before any SBIR training, with the seed's (random) hybrid projection."""
    from transformers import set_seed

    from hf_sbir.retrieval.evaluation import BackboneFeatureModel
    from hf_sbir.training.methods import get_method_class

    set_seed(cfg.seed)
    method = get_method_class(cfg.method)(cfg)
    model = method.build_model().eval()
    transform = method.build_transform(model)
    return method.evaluate(BackboneFeatureModel(model), method.load_data(), transform)


# What the untrained backbone's scores depend on; a trained run depends on every setting but these.
UNTRAINED_SETTINGS = (
    "dataset", "split", "backbone", "image_size", "sketch_ink_crop", "sketch_stroke_width", "seed", "max_eval_queries",
)
NOT_SETTINGS = ("output_dir", "resume", "progress", "stop_after")


def _settings(cfg, untrained: bool = False) -> dict:
    """The settings a run's numbers depend on, JSON-normalised (tuples -> lists) for comparison."""
    items = cfg.to_dict().items()
    keep = {k: v for k, v in items if (k in UNTRAINED_SETTINGS if untrained else k not in NOT_SETTINGS)}
    return json.loads(json.dumps(keep))


def _reuse(result_file: Path, cfg, untrained: bool = False) -> dict | None:
    """A finished run's metrics, if `result_file` exists; refuses one made with other settings
    (a reused folder would otherwise print stale numbers under the new command line)."""
    if not result_file.is_file():
        return None
    metrics = json.loads(result_file.read_text())
    saved, now = metrics.get("settings"), _settings(cfg, untrained)
    if saved is not None:
        # A setting added to TrainConfig after the run was made is absent from its file; at its default
        # it cannot have changed the run (e.g. `peft_r` with `peft` off), so only a non-default counts.
        defaults = _settings(type(cfg)(), untrained)
        saved = {**{k: defaults[k] for k in now.keys() - saved.keys() if k in defaults}, **saved}
    if saved is not None and saved != now:
        keys = sorted(set(saved) | set(now))
        changed = ", ".join(f"{k}: {saved.get(k)!r} -> {now.get(k)!r}" for k in keys if saved.get(k) != now.get(k))
        raise SystemExit(
            f"{result_file.parent} holds a finished run made with other settings ({changed}); use another --output_dir"
        )
    return metrics


def _save(result_file: Path, cfg, metrics: dict, untrained: bool = False) -> dict:
    metrics["settings"] = _settings(cfg, untrained)
    metrics["versions"] = library_versions()  # each run's own: a resumed table may mix runs of several sessions
    result_file.parent.mkdir(parents=True, exist_ok=True)
    result_file.write_text(json.dumps(metrics, indent=2))
    return metrics


def rescore(cfg, metrics: dict) -> dict:
    """Evaluate a finished trained run again from its saved model (no training), recording every protocol."""
    from hf_sbir.evaluate import load_model_and_transform
    from hf_sbir.training.methods import get_method_class

    model_dir = Path(cfg.output_dir) / "model"
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"--rescore: {model_dir} holds no saved model; re-run that variant (delete {cfg.output_dir}).")
    model, transform = load_model_and_transform(str(model_dir))
    method = get_method_class(cfg.method)(cfg)
    fresh = method.evaluate(model, method.load_data(), transform)
    return {**fresh, **{k: metrics[k] for k in ("train_seconds",) if k in metrics}}


def run_variant(cfg, rescore_missing: bool = False) -> dict:
    from hf_sbir.training.trainer import list_checkpoints, train

    result_file = Path(cfg.output_dir) / "eval_after.json"
    if (cached := _reuse(result_file, cfg)) is not None:
        if rescore_missing and any(protocol_metrics(cached, p) is None for p in PROTOCOLS):
            return _save(result_file, cfg, rescore(cfg, cached))
        return cached
    cfg.resume = bool(list_checkpoints(cfg.output_dir))
    start = time.perf_counter()
    result = train(cfg)
    metrics = result.metrics_after
    metrics["train_seconds"] = time.perf_counter() - start
    return _save(result_file, cfg, metrics)


def table(columns: dict[str, dict[str, list[float | None]]]) -> str:
    """Markdown table: rows = variants, cells = mean ± std (or the value for one seed), in %; "–" where a
    seed's run did not record the value."""
    lines = ["| variant | " + " | ".join(KEYS) + " |", "|---|" + "---|" * len(KEYS)]
    for name, values in columns.items():
        cells = []
        for key in KEYS:
            if any(v is None for v in values[key]):
                cells.append("–")
                continue
            xs = [100 * v for v in values[key]]
            cells.append(f"{xs[0]:.2f}" if len(xs) == 1 else f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def study_preprocessing(args) -> str:
    rows = ["| ink-box crop | stroke +px | map@all | map@200 | p@100 | photo_map@all |", "|---|---|---|---|---|---|"]
    for crop in (True, False):
        for width in (0, 1, 2):
            # A copy: `args` is what results.json records for the main table.
            study = argparse.Namespace(**{**vars(args), "sketch_ink_crop": crop, "sketch_stroke_width": width})
            m = evaluate_untrained(base_config(study, args.seeds[0], "untrained"))["metrics"]
            rows.append(
                f"| {crop} | {width} | {100 * m['map@all']:.2f} | {100 * m['map@200']:.2f} | {100 * m['p@100']:.2f} | "
                f"{100 * m['photo_map@all']:.2f} |"
            )
            print(rows[-1], flush=True)
    return "\n".join(rows)


def _parse_setting(item: str) -> tuple[str, object]:
    from hf_sbir.training.config import _parse_value

    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"--method_arg needs KEY=VALUE, got {item!r}")
    return key, _parse_value(value)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=ORDER, choices=ORDER)
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--sketch_ink_crop", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--sketch_stroke_width", type=int, default=1)
    parser.add_argument("--max_eval_queries", type=int, default=None, help="subsample unseen sketches (smoke tests)")
    parser.add_argument("--dataset", default="sbir-mini", help="'sbir-mini' (found via $HF_SBIR_MINI_ROOT or ../shared) or its path")
    parser.add_argument("--output_dir", default="runs/ablation")
    parser.add_argument(
        "--method_arg", action="append", default=[], metavar="KEY=VALUE",
        help="a Sketch-an-Anchor method_args setting for every trained variant, e.g. backbone_gradient_scale=1.0",
    )
    parser.add_argument("--study_preprocessing", action="store_true")
    parser.add_argument(
        "--rescore", action="store_true",
        help="evaluate finished runs that lack a protocol's figures again from their saved models (no training)",
    )
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    args.method_arg = dict(_parse_setting(item) for item in args.method_arg)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    print(
        f"# machine: {cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}\n"
        f"# {args.iterations} iterations, batch {args.batch_size}, lr {args.learning_rate}, {args.image_size} px, "
        f"ink crop {args.sketch_ink_crop}, stroke +{args.sketch_stroke_width} px, method_args {args.method_arg}",
        flush=True,
    )

    results: dict[int, dict[str, dict]] = {}
    for seed in args.seeds:
        results[seed] = {}
        for variant in args.variants:
            cfg = base_config(args, seed, variant)
            if variant == "untrained":
                cache = Path(cfg.output_dir) / "eval.json"
                metrics = _reuse(cache, cfg, untrained=True)
                if metrics is None or (args.rescore and any(protocol_metrics(metrics, p) is None for p in PROTOCOLS)):
                    metrics = _save(cache, cfg, evaluate_untrained(cfg), untrained=True)
            else:
                metrics = run_variant(cfg, rescore_missing=args.rescore)
            results[seed][variant] = metrics
            seconds = metrics.get("train_seconds")
            for protocol in PROTOCOLS:
                m = protocol_metrics(metrics, protocol)
                figures = " ".join(f"{k}={100 * m[k]:.2f}" for k in KEYS) if m else "not recorded (--rescore)"
                print(
                    f"seed {seed} {variant:9s} {protocol:8s} {figures}"
                    + (f" ({seconds / 60:.1f} min)" if seconds and protocol == PROTOCOLS[0] else ""),
                    flush=True,
                )

    text = ""
    for protocol in PROTOCOLS:
        columns = {}
        for v in args.variants:
            per_seed = [protocol_metrics(results[s][v], protocol) for s in args.seeds]
            columns[v] = {k: [None if m is None else m[k] for m in per_seed] for k in KEYS}
        text += (
            f"Unseen classes of sbir-mini (split sbir_mini), {protocol} protocol, {len(args.seeds)} seed(s) {args.seeds}, "
            f"values in % (mean ± std over seeds):\n\n{table(columns)}\n\n"
        )
    if args.study_preprocessing:
        text += "\nSketch preprocessing, untrained backbone (seed %d):\n\n%s\n" % (args.seeds[0], study_preprocessing(args))
    print("\n" + text)
    (out / "table.md").write_text(text)
    summary = {"args": vars(args), "versions": library_versions(), "results": {str(s): r for s, r in results.items()}}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
