"""Model cards generated from the templates in `model_cards/` with huggingface_hub's ModelCard API;
the model-index carries every evaluation figure of the run."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_DIRS = [Path(__file__).resolve().parents[2] / "model_cards", Path(__file__).resolve().parent / "model_cards"]
METRIC_NAMES = {
    "map@all": "mAP@all",
    "map@200": "mAP@200",
    "p@100": "P@100",
    "p@200": "P@200",
    "photo_map@all": "photo→photo mAP@all",
    "acc@1": "Acc@1",
    "acc@5": "Acc@5",
    "acc@10": "Acc@10",
}


def find_template(method: str) -> Path:
    for folder in TEMPLATE_DIRS:
        path = folder / f"{method}.md"
        if path.is_file():
            return path
    raise FileNotFoundError(f"No model card template for method {method!r} in {[str(d) for d in TEMPLATE_DIRS]}.")


def _hub_base_model(name: str | None) -> str | None:
    """The card's `base_model` must be a Hub id: not the packaged offline backbone, not a local folder."""
    if not name or name == "packaged" or Path(name).exists() or name.count("/") != 1:
        return None
    return name


def _fmt(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


HYBRID_MODEL_TYPE = "sbir_hybrid_efficientnet"
# Gallery domain of each family's usage snippet (3D-shape models rank sketch-like views, not photos).
GALLERY_DOMAIN = {"shape_views": "view"}


def descriptive_model_name(args, model_config=None, dataset: str | None = None) -> str:
    """The card's title and model-index name: the Hub repository's name when pushing, else
    `<method>-<backbone>-<dataset>` (a saved folder is usually called `model`, which names nothing);
    `dataset` defaults to `args.dataset` (a folder gives its name)."""
    if args.hub_model_id:
        return args.hub_model_id.split("/")[-1]
    backbone = getattr(model_config, "backbone_name_or_path", None) or args.backbone
    backbone_type = getattr(getattr(model_config, "backbone_config", None), "model_type", None)
    if backbone in (None, "packaged") and backbone_type == HYBRID_MODEL_TYPE:
        backbone = "efficientnet-lite0"
    parts = [args.method.replace("_", "-"), Path(str(backbone)).name if backbone else backbone_type]
    dataset = str(dataset or args.dataset)
    parts.append(dataset if "/" not in dataset else Path(dataset).name)
    return "-".join(str(p).replace("_", "-").lower() for p in parts if p)


def install_line(model_config=None) -> str:
    """The pip line that makes the saved folder load without hf-sbir (its code travels with the folder)."""
    packages = ["torch", "transformers", "safetensors", "pillow"]
    if getattr(getattr(model_config, "backbone_config", None), "model_type", None) == HYBRID_MODEL_TYPE:
        packages.append("efficientnet-lite-pytorch")  # the packaged backbone's architecture (weights are in the folder)
    return "pip install " + " ".join(packages)


def usage_snippet(repo_id: str, method: str) -> str:
    """The card's Python usage: plain transformers with remote code, runnable as written (it draws its own
    example images) where hf-sbir is not installed. tests/test_model_card_usage.py runs it for every family."""
    domain = GALLERY_DOMAIN.get(method, "photo")
    gallery = "views" if domain == "view" else "photos"
    return f'''import torch
from PIL import Image, ImageDraw
from transformers import AutoImageProcessor, AutoModel

model = AutoModel.from_pretrained("{repo_id}", trust_remote_code=True).eval()
processor = AutoImageProcessor.from_pretrained("{repo_id}", trust_remote_code=True)   # sketch-aware preprocessing

# Example images so that this runs as is; use yours, e.g. Image.open("sketch.png").
sketch_image = Image.new("L", (256, 256), "white")
ImageDraw.Draw(sketch_image).ellipse((48, 48, 208, 208), outline="black", width=5)
{domain}_images = []
for colour in ("firebrick", "steelblue", "darkgreen"):
    image = Image.new("RGB", (320, 240), "white")
    ImageDraw.Draw(image).ellipse((90, 50, 230, 190), outline=colour, width=12)
    {domain}_images.append(image)

with torch.no_grad():
    sketch = model(**processor(sketch_image, domain="sketch", return_tensors="pt")).embeddings   # (1, D), L2-normalised
    {gallery} = model(**processor({domain}_images, domain="{domain}", return_tensors="pt")).embeddings
ranking = (sketch @ {gallery}.T).argsort(descending=True)   # ranking[0, 0]: the best match
print(ranking)'''


def layer_sweep_rows(before: dict | None, after: dict | None) -> list[dict]:
    """Rows `{layer, acc@1 before/after, acc@5 before/after, chosen}` of a shape-views `per_layer` sweep."""
    after_layers = (after or {}).get("per_layer") or {}
    before_layers = (before or {}).get("per_layer") or {}
    chosen = (after or {}).get("feature_layer")
    rows = []
    for layer in sorted(after_layers, key=int):
        row = {"layer": layer, "chosen": chosen is not None and int(layer) == int(chosen)}
        for key in ("acc@1", "acc@5"):
            row[f"{key} before"] = _fmt((before_layers.get(layer) or {}).get(key))
            row[f"{key} after"] = _fmt(after_layers[layer].get(key))
        rows.append(row)
    return rows


def format_layer_sweep(before: dict | None, after: dict | None) -> str:
    """Markdown table of a layer sweep (values in %; `*` marks the model's feature layer); "" without a sweep."""
    rows = layer_sweep_rows(before, after)
    if not rows:
        return ""
    keys = ["acc@1 before", "acc@1 after", "acc@5 before", "acc@5 after"]
    lines = ["| layer | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for row in rows:
        lines.append(f"| {row['layer']}{' *' if row['chosen'] else ''} | " + " | ".join(row[k] for k in keys) + " |")
    return "\n".join(lines)


def build_model_card(args, result, model_config=None, info: dict | None = None) -> ModelCard:
    """The card of a finished run. `info` is the method's `model_card_info()` (task, dataset and split of the
    evaluation, extra tags, extra `template_values`); None means zero-shot category-level retrieval on
    `args.dataset` / `args.split`. Templates get the named values below plus `config` (the saved model
    config) and `args` (the run's `TrainConfig`) for method-specific settings."""
    after = (result.metrics_after or {}).get("metrics", {})
    before = (result.metrics_before or {}).get("metrics", {})
    dataset_name = f"{args.dataset} ({args.split})" if args.split else args.dataset
    info = {
        "task_name": "Zero-shot sketch-based image retrieval",
        "dataset_type": str(args.dataset),
        "dataset_name": dataset_name,
        "dataset_split": f"{args.split or 'all'}:unseen{'+gzs' if args.gzs else ''}",
        "tags": ["zero-shot"],
        **(info or {}),
    }
    eval_results = [
        EvalResult(
            task_type="sketch-based-image-retrieval",
            task_name=info["task_name"],
            dataset_type=info["dataset_type"],
            dataset_name=info["dataset_name"],
            dataset_split=info["dataset_split"],
            metric_type=key,
            metric_name=METRIC_NAMES.get(key, key),
            metric_value=round(float(value), 6),
        )
        for key, value in after.items()
        if isinstance(value, (int, float))
    ]
    repo_id = args.hub_model_id or Path(args.output_dir, "model").as_posix()
    model_name = descriptive_model_name(args, model_config, info["dataset_type"])
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        license="apache-2.0",
        pipeline_tag="image-feature-extraction",
        tags=["sketch-based-image-retrieval", *info["tags"], "hf-sbir", args.method],
        base_model=_hub_base_model(getattr(model_config, "backbone_name_or_path", None)),
        eval_results=eval_results or None,
    )
    rows = [
        {"name": METRIC_NAMES.get(k, k), "before": _fmt(before.get(k)), "after": _fmt(v)}
        for k, v in after.items()
        if isinstance(v, (int, float))
    ]
    cfg = model_config
    method_args = args.method_args or {}
    return ModelCard.from_template(
        card_data,
        template_path=str(find_template(args.method)),
        config=model_config,
        args=args,
        **info.get("template_values", {}),
        model_name=model_name,
        repo_id=repo_id,
        usage=usage_snippet(repo_id, args.method),
        install=install_line(model_config),
        layer_sweep=format_layer_sweep(result.metrics_before, result.metrics_after),
        projection_dim=getattr(cfg, "projection_dim", "?"),
        backbone=getattr(cfg, "backbone_name_or_path", None) or args.backbone or "from config",
        dataset=args.dataset,
        split=args.split,
        gzs_text="generalised: 20% of seen-class photos in the gallery" if args.gzs else "classic zero-shot",
        num_seen_classes=len(getattr(cfg, "anchor_class_names", None) or []),
        iterations=args.iterations,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        warmup_iterations=args.warmup_iterations,
        min_learning_rate=args.min_learning_rate,
        backbone_gradient_scale=getattr(cfg, "backbone_gradient_scale", "?"),
        use_word_anchors=getattr(cfg, "use_word_anchors", "?"),
        use_visual_anchors=getattr(cfg, "use_visual_anchors", "?"),
        gcn_num_layers=getattr(cfg, "gcn_num_layers", "?"),
        text_embedder=method_args.get("text_embedder_name") or args.text_embedder or "automatic",
        image_size=args.image_size,
        sketch_ink_crop=args.sketch_ink_crop,
        sketch_stroke_width=args.sketch_stroke_width,
        seed=args.seed,
        metric_rows=rows,
        gzs_note=(
            "Generalised protocol: 20% of the photos of each seen class were held out of training and added to "
            "the gallery (seeded); queries remain unseen-class sketches, so a retrieved seen-class photo is always wrong."
            if args.gzs
            else ""
        ),
    )


def write_model_card(model_dir: Path, args, result, info: dict | None = None) -> Path:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    card = build_model_card(args, result, config, info)
    path = Path(model_dir) / "README.md"
    card.save(path)
    return path
