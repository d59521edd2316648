"""Evaluate a saved model and print its metric table.

Category-level models (Sketch-an-Anchor, Adapt and Align): sketch -> photo retrieval scored under a
named protocol (`--protocol`, see `hf_sbir.metrics.PROTOCOLS`):

    python -m hf_sbir.evaluate --model outputs/quickstart/model --dataset embedded --split embedded
    python -m hf_sbir.evaluate --model M --dataset ../shared/data/sbir-mini --split sbir_mini --protocol sake
    python -m hf_sbir.evaluate --model M --dataset my_folder                      # every class of the folder
    python -m hf_sbir.evaluate --model M --dataset my_folder --test_classes cat,dog,owl

With `--split NAME` the unseen (test) classes of that shipped zero-shot split are evaluated; without
it, every class of the dataset (classes a model was trained on included); `--test_classes` picks
classes by name. `--report` writes an HTML page: for a few sketches, the top-10 photos with green
(right class) or red (wrong class) borders. `--backbone_features` scores the model's own backbone
features without its SBIR heads (for a fine-tuned model: the fine-tuned backbone);
`--untrained_baseline` scores the pretrained backbone the model was built from, before any SBIR
training (`config.backbone_name_or_path`).

Instance-level models are evaluated with their own task, through their training method's `load_data`
and `evaluate` (the same code as the evaluation at the end of `train.py`):

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

from hf_sbir.metrics.retrieval_metrics import PROTOCOLS

# Models whose task is not category-level zero-shot retrieval: evaluated by their training method.
INSTANCE_LEVEL_METHODS = ("fg_sbir", "shape_views")
# Models whose backbone features have an untrained baseline (a pretrained backbone named in their config).
BASELINE_METHODS = ("sketch_an_anchor", "adapt_align")


class UsageError(ValueError):
    """A user error the CLI reports as one line (exit code 2)."""


def load_model_and_transform(model_path: str, image_size: int | None = None):
    from transformers import AutoModel

    import hf_sbir  # noqa: F401  (Auto registration)
    from hf_sbir.data import SbirImageTransform

    path = Path(model_path)
    if path.exists() and not (path / "config.json").is_file():
        raise UsageError(f"--model {model_path}: not a saved model folder (no config.json); give the folder train.py wrote, e.g. outputs/quickstart/model.")
    if not path.exists() and (model_path.startswith((".", "/", "~")) or model_path.count("/") != 1):
        raise UsageError(f"--model {model_path}: no such folder; give a saved model folder (e.g. outputs/quickstart/model) or a Hub id (owner/name).")
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


# -- what is scored -------------------------------------------------------------------------------
class _PooledBackbone(torch.nn.Module):
    """A bare backbone with the `get_image_features` of the SBIR models (its pooled output)."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.backbone(pixel_values).pooled_output


def untrained_baseline(model, seed: int = 0) -> torch.nn.Module:
    """The pretrained backbone `model` was built from (`config.backbone_name_or_path`), before any SBIR
    training, scoring its own pooled features. Randomly initialised parts of it (the packaged hybrid's
    transformer layers) are drawn after `set_seed(seed)`, as a training run with that seed draws them."""
    from transformers import set_seed

    from hf_sbir.retrieval.evaluation import BackboneFeatureModel

    model_type = model.config.model_type
    if model_type not in BASELINE_METHODS:
        raise UsageError(f"--untrained_baseline applies to {', '.join(BASELINE_METHODS)} models, not {model_type}.")
    name = getattr(model.config, "backbone_name_or_path", None)
    if not name:
        raise UsageError(
            "--untrained_baseline: this model does not record the pretrained backbone it was built from "
            "(config.backbone_name_or_path is empty: it was built from a backbone config); use --backbone_features instead."
        )
    set_seed(seed)
    if model_type == "adapt_align":
        from hf_sbir.models.adapt_align.modeling_adapt_align import load_pretrained_adapt_align_backbone

        backbone, _ = load_pretrained_adapt_align_backbone(name)
    else:
        from hf_sbir.backbones.auto import resolve_backbone

        backbone = resolve_backbone(name).backbone
    return BackboneFeatureModel(_PooledBackbone(backbone).eval())


# -- data -------------------------------------------------------------------------------------------
def load_category_data(dataset: str, split: str | None, test_classes: str | None, gzs: bool):
    """(DatasetDict, name of the split to evaluate, description of the classes evaluated)."""
    from hf_sbir.data import load_sbir_dataset, normalize_class_name

    if split and test_classes:
        raise UsageError("give --split (a shipped zero-shot split) or --test_classes (your own), not both.")
    if gzs and not split:
        raise UsageError("--gzs (generalised zero-shot gallery) needs a zero-shot --split.")
    if split:
        data = load_sbir_dataset(dataset, split=split, gzs=gzs)
        return data, "test", f"unseen classes of split {split}" + (" (generalised zero-shot gallery)" if gzs else "")
    data = load_sbir_dataset(dataset, split=None)
    everything = data["all"]
    names = everything.features["label"].names
    if not test_classes:
        present = sorted({names[v] for v in everything.unique("label")})
        return data, "all", f"all {len(present)} classes (no zero-shot split: classes a model trained on count too)"
    wanted = [c.strip() for c in test_classes.split(",") if c.strip()]
    by_norm = {normalize_class_name(n): i for i, n in enumerate(names)}
    unknown = [c for c in wanted if normalize_class_name(c) not in by_norm]
    if unknown:
        raise UsageError(f"--test_classes: {', '.join(unknown)} not in {dataset}; its classes are: {', '.join(names)}.")
    ids = {by_norm[normalize_class_name(c)] for c in wanted}
    rows = [i for i, label in enumerate(everything["label"]) if label in ids]
    data["all"] = everything.select(rows)
    return data, "all", f"classes {', '.join(names[i] for i in sorted(ids))} (--test_classes)"


# -- report ------------------------------------------------------------------------------------------
def _thumb_uri(image, size: int = 96) -> str:
    from hf_sbir.data.processing import load_image

    img = load_image(image).convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def write_report(model, dataset, transform, path: str | Path, num_queries: int = 8, k: int = 10, seed: int = 0, batch_size: int = 32) -> Path:
    """HTML page: each row a query sketch of `dataset` (one split) and its top-k photos of the same
    split, green border = same class, red = wrong. Queries are one per class first (seeded by `seed`),
    then more per class until `num_queries`."""
    import random

    from hf_sbir.data import split_by_domain
    from hf_sbir.retrieval import embed_images

    sketches, photos = split_by_domain(dataset)
    if len(sketches) == 0 or len(photos) == 0:
        raise UsageError(f"--report: the split has {len(sketches)} sketches and {len(photos)} photos; it needs both.")
    names = dataset.features["label"].names
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(sketches["label"]):
        by_class.setdefault(label, []).append(i)
    rng = random.Random(seed)
    pools = [rng.sample(v, len(v)) for _, v in sorted(by_class.items())]
    picks: list[int] = []
    while len(picks) < min(num_queries, len(sketches)):  # round-robin over classes
        for pool in pools:
            if pool and len(picks) < num_queries:
                picks.append(pool.pop())
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
        f"<h2>Top-{k} photos for {len(queries)} sketches</h2><p>green = right class, red = wrong class</p>"
        "<table style='text-align:center;font:12px sans-serif'>" + "".join(rows) + "</table></body></html>"
    )
    path = Path(path)
    path.write_text(page)
    return path


# -- command line -------------------------------------------------------------------------------------
class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Appends "(default: X)" to the help of flags whose help does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        silent = action.default is None or action.default is False or action.default == [] or action.default == argparse.SUPPRESS
        if "default" not in text and action.option_strings and not silent:
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + error
        self.exit(2, f"error: {message} (see python -m hf_sbir.evaluate --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m hf_sbir.evaluate", description=__doc__, formatter_class=_Formatter)
    p.add_argument("--model", required=True, help="saved model folder (what train.py wrote, e.g. outputs/quickstart/model) or Hub id; required")
    p.add_argument("--dataset", default="embedded", help="'embedded' (generated offline), 'sbir-mini', or a dataset folder (one sub-folder per class)")
    p.add_argument("--split", default=None,
                   help="shipped zero-shot split whose unseen classes are evaluated (e.g. embedded, sbir_mini, sketchy_sake); "
                        "default: none, i.e. every class of --dataset")
    p.add_argument("--test_classes", default=None, metavar="A,B,C", help="evaluate only these classes of --dataset (comma-separated names; default: all, or the --split's)")
    p.add_argument("--protocol", default=None, choices=list(PROTOCOLS),
                   help="how mAP and P@k are computed, as the named paper's code does (hf_sbir.metrics.PROTOCOLS); default: textbook")
    p.add_argument("--gzs", action="store_true", help="generalised zero-shot gallery: seen-class photos join the test gallery (needs --split)")
    p.add_argument("--batch_size", type=int, default=32, help="images per forward pass")
    p.add_argument("--max_queries", type=int, default=None, help="score a seeded random subset of this many sketches (default: all of them)")
    scored = p.add_mutually_exclusive_group()
    scored.add_argument("--backbone_features", action="store_true",
                        help="score the model's own backbone features without its SBIR heads (fine-tuned backbone for a trained model)")
    scored.add_argument("--backbone_only", dest="backbone_features", action="store_true", help=argparse.SUPPRESS)  # old name
    scored.add_argument("--untrained_baseline", action="store_true",
                        help="score the pretrained backbone the model was built from, before SBIR training (config.backbone_name_or_path; --seed draws its random layers)")
    p.add_argument("--name", default=None, help="title of the table's column (default: the --model path)")
    p.add_argument("--report", default=None, metavar="PATH", help="also write an HTML page of top-10 photos for a few sketches (default: no report)")
    p.add_argument("--report_split", default=None, help="split the report's sketches and photos come from (default: the evaluated one)")
    p.add_argument("--report_queries", type=int, default=8, help="number of sketches in the report")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result as JSON (default: none)")
    p.add_argument("--seed", type=int, default=0, help="seed of query subsampling, the report's sketches, procedural test shapes")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="instance-level models: a method setting, repeatable (default: the method's defaults)")
    return p


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split()) or type(err).__name__


def main(argv=None) -> int:
    from hf_sbir.retrieval.evaluation import TooFewClassesError

    from transformers.utils import logging as hf_logging

    args = build_parser().parse_args(argv)
    hf_logging.disable_progress_bar()  # "Loading weights" bars would bury the table and the error lines
    try:
        for flag in ("batch_size", "report_queries"):
            if getattr(args, flag) < 1:
                raise UsageError(f"--{flag} must be a positive integer, got {getattr(args, flag)}.")
        if args.max_queries is not None and args.max_queries < 1:
            raise UsageError(f"--max_queries must be a positive integer, got {args.max_queries}.")
        model, transform = load_model_and_transform(args.model)
        model_type = model.config.model_type
        if model_type in INSTANCE_LEVEL_METHODS:
            return _main_instance_level(args, model, transform, model_type)
        return _main_category_level(args, model, transform)
    except (UsageError, OSError, ValueError, KeyError) as err:
        message = _one_line(err)
        if isinstance(err, TooFewClassesError):
            message += " Omit --split to evaluate every class of the dataset, or name them with --test_classes a,b,c."
        print(f"error: {message}", file=sys.stderr)
        return 2


def _main_category_level(args, model, transform) -> int:
    from hf_sbir.metrics import get_protocol
    from hf_sbir.retrieval.evaluation import BackboneFeatureModel, evaluate_zero_shot, format_metric_table

    if args.set:
        raise UsageError("--set applies to instance-level models (fg_sbir, shape_views) only.")
    protocol = get_protocol(args.protocol or "textbook")
    data, split, classes = load_category_data(args.dataset, args.split, args.test_classes, args.gzs)
    if args.report_split is not None and args.report_split not in data:
        raise UsageError(f"--report_split {args.report_split!r}: the dataset has splits {', '.join(data)}.")
    title = args.name or args.model
    if args.untrained_baseline:
        scored, title = untrained_baseline(model, args.seed), args.name or f"untrained {model.config.backbone_name_or_path}"
    elif args.backbone_features:
        scored, title = BackboneFeatureModel(model), args.name or f"{args.model} (backbone features)"
    else:
        scored = model
    result = evaluate_zero_shot(scored, data, transform, batch_size=args.batch_size, max_queries=args.max_queries,
                                seed=args.seed, split=split, protocol=protocol)
    subset = f" (a seeded subset of {args.max_queries})" if args.max_queries is not None and result.num_queries == args.max_queries else ""
    print(
        f"Sketch->photo retrieval on {args.dataset}, {classes}: {result.num_queries} sketch queries{subset}, "
        f"{result.num_gallery} photos in the gallery. Values in %.\n"
    )
    print(format_metric_table({title: result}))  # (+ the protocol and notes such as k > gallery)
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "dataset": args.dataset, "classes": classes, **result.to_dict()}, indent=2))
    if args.report:
        report = write_report(scored, data[args.report_split or split], transform, args.report, num_queries=args.report_queries,
                              seed=args.seed, batch_size=args.batch_size)
        print(f"\nReport: {report}")
    return 0


def _main_instance_level(args, model, transform, method: str) -> int:
    from hf_sbir.retrieval.evaluation import format_metric_table, layer_table
    from hf_sbir.training.config import _parse_value

    category_flags = (
        ("--report", args.report), ("--backbone_features", args.backbone_features), ("--untrained_baseline", args.untrained_baseline),
        ("--gzs", args.gzs), ("--protocol", args.protocol), ("--test_classes", args.test_classes),
    )
    unsupported = [flag for flag, on in category_flags if on]
    if unsupported:
        raise UsageError(f"{', '.join(unsupported)}: category-level options; a {method} model is evaluated on its own instance-level task.")
    method_args = {}
    for item in args.set:
        if "=" not in item:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        method_args[key] = _parse_value(raw)
    result = evaluate_with_method(model, transform, method, args.dataset, args.split, args.batch_size, args.max_queries, args.seed, method_args)
    task = result["task"]
    print(f"{task[0].upper()}{task[1:]}: {result['num_queries']} queries, {result['num_gallery']} gallery items. Values in %.\n")
    print(format_metric_table({args.name or args.model: result}))
    if result.get("per_layer"):
        print(f"\nEvery layer (* best, (model) the model's feature layer):\n\n{layer_table(result['per_layer'], result.get('best_layer'), result.get('feature_layer'))}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "dataset": args.dataset, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
