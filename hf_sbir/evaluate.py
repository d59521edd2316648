"""Evaluate a model on a zero-shot split and print the metric table.

    python -m hf_sbir.evaluate --model outputs/quickstart/model --dataset embedded --split embedded
    python -m hf_sbir.evaluate --model M --dataset ../shared/data/sbir-mini --split sbir_mini --report out.html

`--report` writes an HTML page: for a few unseen-class sketches, the top-10 photos with green (right
class) or red (wrong class) borders. `--backbone_only` scores the backbone's own features instead of
the fine-tuned embedding (the untrained baseline).

Instance-level models are evaluated with their own task, through their training method's `load_data` and
`evaluate` (the same code as the evaluation at the end of `train.py`):

    python -m hf_sbir.evaluate --model outputs/fg-sbir-cpu/model --dataset embedded      # FG-SBIR: Acc@1/5/10
    python -m hf_sbir.evaluate --model outputs/fg-sbir-cpu/model --dataset data/ShoeV2   # a QMUL-style folder
    python -m hf_sbir.evaluate --model outputs/shape-views-cpu/model --set test_classes=[lamp,table]

`--set KEY=VALUE` sets the method's settings (`method_args`, e.g. the shape-views test classes; use the
training run's values to reproduce its figures); `--seed` is the run's seed.
"""

from __future__ import annotations

import argparse
import base64
import html
import io
import json
import sys
from pathlib import Path

import torch


def load_model_and_transform(model_path: str, image_size: int | None = None):
    from transformers import AutoModel

    import hf_sbir  # noqa: F401  (Auto registration)
    from hf_sbir.data import SbirImageTransform

    path = Path(model_path)
    if path.exists() and not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} is not a saved model folder (no config.json).")
    from hf_sbir.training.checkpointing import check_model_folder

    check_model_folder(path)  # an interrupted export must not load with a default transform
    model = AutoModel.from_pretrained(model_path).eval()
    if model.config.model_type == "shape_views":
        # Its transform adds scale normalisation (and saves the settings of it in the same json file).
        from hf_sbir.models.shape_views import ShapeViewsImageTransform

        if (path / "sbir_image_transform.json").is_file():
            return model, ShapeViewsImageTransform.from_pretrained(path)
        return model, ShapeViewsImageTransform.for_model(model, image_size=image_size)
    if (path / "sbir_image_transform.json").is_file():
        transform = SbirImageTransform.from_pretrained(path)
    else:
        from hf_sbir.backbones.processing import image_processor_for_backbone

        transform = SbirImageTransform(image_processor=image_processor_for_backbone(model.config.backbone_config, image_size=image_size))
    return model, transform


# Models whose task is not category-level zero-shot retrieval: evaluated by their training method.
INSTANCE_LEVEL_METHODS = ("fg_sbir", "shape_views")


def evaluate_with_method(model, transform, method: str, dataset: str, split: str | None, batch_size: int = 32,
                         max_queries: int | None = None, seed: int = 0, method_args: dict | None = None) -> dict:
    """Evaluate `model` the way training method `method` does at the end of a run: its `load_data()` (e.g.
    fine-grained pairs, or nothing for procedural shapes) and its `evaluate()`."""
    from hf_sbir.training import TrainConfig
    from hf_sbir.training.methods import get_method_class

    args = TrainConfig(method=method, dataset=dataset, split=split, eval_batch_size=batch_size, max_eval_queries=max_queries,
                       seed=seed, method_args=dict(method_args or {}))
    runner = get_method_class(method)(args)
    return runner.evaluate(model, runner.load_data(), transform)


def _thumb_uri(image, size: int = 96) -> str:
    from hf_sbir.data.processing import load_image

    img = load_image(image).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def write_report(model, data, transform, path: str | Path, num_queries: int = 8, k: int = 10, seed: int = 0, batch_size: int = 32) -> Path:
    """HTML page: each row a query sketch and its top-k photos, green border = same class, red = wrong."""
    import random

    from hf_sbir.data import split_by_domain
    from hf_sbir.retrieval import embed_images

    sketches, photos = split_by_domain(data["test"])
    names = data["test"].features["label"].names
    # One query per class first, so the report covers the unseen classes.
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(sketches["label"]):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    picks = [rng.choice(v) for _, v in sorted(by_class.items())][:num_queries]
    queries = sketches.select(picks)
    q = embed_images(model, queries, transform, "sketch", batch_size=batch_size, progress=False)
    g = embed_images(model, photos, transform, "photo", batch_size=batch_size, progress=True)
    scores, idx = (q @ g.T).topk(min(k, g.shape[0]), dim=1)
    rows = []
    for qi in range(len(queries)):
        q_label = queries[qi]["label"]
        cells = [f'<td><img src="{_thumb_uri(queries[qi]["image"])}" style="border:4px solid #333"><br><b>{html.escape(names[q_label])}</b></td>']
        for score, gi in zip(scores[qi].tolist(), idx[qi].tolist()):
            ok = photos[gi]["label"] == q_label
            color = "#1a9c3e" if ok else "#d62728"
            cells.append(
                f'<td><img src="{_thumb_uri(photos[gi]["image"])}" style="border:4px solid {color}"><br>'
                f'{html.escape(names[photos[gi]["label"]])} {score:.2f}</td>'
            )
        rows.append("<tr>" + "".join(cells) + "</tr>")
    page = (
        "<html><head><meta charset='utf-8'><title>hf-sbir retrieval report</title></head><body>"
        f"<h2>Top-{k} photos for unseen-class sketches</h2><p>green = right class, red = wrong class</p>"
        "<table style='text-align:center;font:12px sans-serif'>" + "".join(rows) + "</table></body></html>"
    )
    path = Path(path)
    path.write_text(page)
    return path


def main(argv=None) -> int:
    from hf_sbir.data import load_sbir_dataset
    from hf_sbir.training.evaluation import BackboneFeatureModel, evaluate_zero_shot, format_metric_table

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="saved model folder or Hub id")
    parser.add_argument("--dataset", default="embedded", help="'embedded', 'sbir-mini', or a dataset folder")
    parser.add_argument("--split", default="embedded", help="shipped zero-shot split name")
    parser.add_argument("--gzs", action="store_true", help="generalised zero-shot gallery")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--max_queries", type=int, default=None)
    parser.add_argument("--backbone_only", action="store_true", help="score the backbone's own features")
    parser.add_argument("--report", help="write a qualitative HTML report to this path")
    parser.add_argument("--json", help="also write the metrics as JSON to this path")
    parser.add_argument("--seed", type=int, default=0, help="seed of query subsampling / procedural test shapes")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="instance-level models: a method setting (repeatable)")
    args = parser.parse_args(argv)
    try:
        model, transform = load_model_and_transform(args.model)
        model_type = model.config.model_type
        if model_type in INSTANCE_LEVEL_METHODS:
            return _main_instance_level(args, model, transform, model_type)
        if args.set:
            raise ValueError("--set applies to instance-level models (fg_sbir, shape_views) only.")
        data = load_sbir_dataset(args.dataset, split=args.split, gzs=args.gzs)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    scored = BackboneFeatureModel(model) if args.backbone_only else model
    result = evaluate_zero_shot(scored, data, transform, batch_size=args.batch_size, max_queries=args.max_queries)
    name = "backbone features" if args.backbone_only else Path(args.model).name
    print(f"Zero-shot retrieval, unseen classes of {args.dataset} ({args.split}); textbook metrics, in %:\n")
    print(format_metric_table({name: result}))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.report:
        print(f"\nReport: {write_report(scored, data, transform, args.report, batch_size=args.batch_size)}")
    return 0


def _main_instance_level(args, model, transform, method: str) -> int:
    from hf_sbir.training.config import _parse_value
    from hf_sbir.training.evaluation import format_metric_table

    unsupported = [flag for flag, on in (("--report", args.report), ("--backbone_only", args.backbone_only), ("--gzs", args.gzs)) if on]
    if unsupported:
        raise ValueError(f"{', '.join(unsupported)}: category-level options; a {method} model is evaluated on its own instance-level task.")
    method_args = {}
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        method_args[key] = _parse_value(raw)
    result = evaluate_with_method(model, transform, method, args.dataset, args.split, args.batch_size, args.max_queries, args.seed, method_args)
    keys = [k for k, v in result["metrics"].items() if isinstance(v, (int, float))]
    task = result["task"]
    print(f"{task[0].upper()}{task[1:]}, in %:\n")
    print(format_metric_table({Path(args.model).name: result}, keys=keys))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
