"""Shape views' part of the training loop (arXiv 2306.08541): fine-tune a pretrained encoder, full model
with a small learning rate, on pairs of synthetic sketches of the same rendered view in two styles, with
the contrastive cross-entropy of `hf_sbir.losses.shape_views`; evaluate instance-level sketch -> view
retrieval (Acc@1 / Acc@5) on other shape classes (the paper's zero-shot protocol: train on one class,
test on others).

Data (`method_args.source`):
    "procedural" (default): the package's procedural renderer (`hf_sbir.data.synthetic_sketch`) draws random
        instances of `train_classes` for training and of `test_classes` for evaluation, from
        `views_per_shape` azimuths at `elevation` degrees. `args.dataset` is not used (`load_data` loads
        nothing). Queries are drawn in `query_style` (with other seeds than training), the gallery in
        `gallery_style`: the stand-in for "freehand sketch vs synthetic sketch view".
    "dataset": the `args.dataset` the loop loaded. Training views are the photos (renderings) of its `train`
        split (or `all`); both styles are synthesised from each. Evaluation uses its `test` split (or `all`):
        sketches are queries, photos the gallery, and a sketch matches the photo with the same file stem
        (`chair_12_view3.png` in both domains). With `gallery_style` set, gallery photos are first turned
        into synthetic sketches in that style (set it to null when the gallery already holds sketch views).

Each step (a pure function of (seed, step)): `batch_size` distinct training views; view i is drawn in
`styles[0]` and `styles[1]` with seeds from (seed, step, i), each drawing is augmented independently
(rotation, object-scale and position jitter, stroke width; a mirror flip shared by the pair), scale
normalised, and processed. Loss: `contrastive_cross_entropy(z^A, z^B, tau)` on the embeddings of the
model's feature layer — the features used for retrieval are the ones trained.

Method settings (`method_args`, all optional):
    source ("procedural" | "dataset"), train_classes (["chair"]), test_classes (["lamp"]),
    num_train_shapes (16), num_test_shapes (12), views_per_shape (4), elevation (20.0), render_size (128),
    styles (["clean", "stylized"]), query_style ("stylized"), gallery_style ("clean"),
    augment (true), max_rotation (8.0 degrees), scale_jitter (0.1), translate_jitter (0.05), flip (true),
    stroke_jitter (1: extra stroke half-width of 0..1 px), symmetric_loss (true),
    freeze_unused (true: parameters that cannot reach the feature layer, e.g. blocks above it and the final
    norm, are frozen — they get no gradient, and would be unused parameters under DDP),
    sweep_layers (true: the evaluation also reports Acc@k at every layer, from the same forward passes).
    Config fields (copied into the model config): feature_layer, pooling, pooling_grid_size, contrastive_temperature,
    scale_object_fraction.

Settings of the shared config it reads: seed, batch_size, image_size, backbone, backbone_config (a tiny
encoder config for tests), init_model, model_config, output_dir, eval_batch_size, dataset,
sketch_stroke_width. `sketch_ink_crop` is not used: `ShapeViewsImageTransform`'s scale normalisation
(`scale_object_fraction` of the model config) crops to the ink for both queries and gallery.
"""

from __future__ import annotations

import logging
from pathlib import PurePosixPath
from typing import Any, ClassVar, Literal, Optional

import numpy as np
import torch
from PIL import Image, ImageOps
from pydantic import Field, model_validator

from hf_sbir.models.shape_views.configuration_shape_views import ShapeViewsConfig
from hf_sbir.training.method import TrainingMethod
from hf_sbir.training.method_settings import MethodSettings

logger = logging.getLogger("hf_sbir")

class ShapeViewsSettings(MethodSettings):
    """`method_args` of shape_views: the data source, rendering and augmentation settings, and ShapeViewsConfig
    fields (None: the config's default)."""

    method_name: ClassVar[str] = "shape_views"
    config_class: ClassVar[type] = ShapeViewsConfig
    config_fields: ClassVar[tuple[str, ...]] = (
        "feature_layer", "pooling", "pooling_grid_size", "contrastive_temperature", "scale_object_fraction",
    )
    # The loss temperature may change on a trained model; the rest decides which features it computes.
    runtime_fields: ClassVar[tuple[str, ...]] = ("contrastive_temperature",)
    backbone_dependent_fields: ClassVar[tuple[str, ...]] = ("feature_layer",)  # valid range = the backbone's depth

    source: Literal["procedural", "dataset"] = "procedural"
    train_classes: list[str] = ["chair"]
    test_classes: list[str] = ["lamp"]
    num_train_shapes: int = Field(16, ge=1)
    num_test_shapes: int = Field(12, ge=1)
    views_per_shape: int = Field(4, ge=1)
    elevation: float = 20.0
    render_size: int = Field(128, ge=16)
    styles: list[str] = ["clean", "stylized"]
    query_style: Optional[str] = "stylized"
    gallery_style: Optional[str] = "clean"
    augment: bool = True
    max_rotation: float = Field(8.0, ge=0)
    scale_jitter: float = Field(0.1, ge=0, lt=1)
    translate_jitter: float = Field(0.05, ge=0, lt=1)
    flip: bool = True
    stroke_jitter: int = Field(1, ge=0)
    symmetric_loss: bool = True
    freeze_unused: bool = True
    sweep_layers: bool = True
    feature_layer: Optional[int] = None
    pooling: Optional[str] = None
    pooling_grid_size: Optional[int] = None
    contrastive_temperature: Optional[float] = None
    scale_object_fraction: Optional[float] = None

    @model_validator(mode="after")
    def _known_names(self):
        from hf_sbir.data.synthetic_sketch import SHAPE_CLASSES, SKETCH_STYLES

        if len(self.styles) != 2 or any(style not in SKETCH_STYLES for style in self.styles):
            raise ValueError(f"styles must be two of {SKETCH_STYLES}; got {self.styles!r}")
        for key in ("query_style", "gallery_style"):
            value = getattr(self, key)
            if value is not None and value not in SKETCH_STYLES:
                raise ValueError(f"{key} must be one of {SKETCH_STYLES} (or null); got {value!r}")
        if self.source == "procedural":
            for key in ("train_classes", "test_classes"):
                classes = getattr(self, key)
                if not classes or any(c not in SHAPE_CLASSES for c in classes):
                    raise ValueError(f"{key} must be a non-empty list of {SHAPE_CLASSES}; got {classes!r}")
            if self.query_style is None:
                raise ValueError("query_style must be a style for the procedural source")
        return self


# The defaults of the method's own settings (the model card lists the evaluation settings that differ).
_DEFAULTS: dict[str, Any] = ShapeViewsSettings().method_only()
# Seeds of the evaluation shapes and drawings live far from the training ones.
_TEST_SHAPE_SEED_OFFSET = 1_000_000
_QUERY_SEED_OFFSET = 7_000_003


class ShapeViewsMethod(TrainingMethod):
    name = "shape_views"
    settings_class = ShapeViewsSettings

    def __init__(self, args):
        super().__init__(args)
        self.settings = self.method_settings.method_only()
        self.transform = None
        self.train_views: list | None = None  # RenderedView or PIL image per training view
        self._eval_set = None
        self._edge_cache: dict[int, np.ndarray] = {}

    # -- model ------------------------------------------------------------------------------------
    def check(self) -> None:
        super().check()
        s = self.settings
        views = int(s["num_train_shapes"]) * int(s["views_per_shape"])
        if s["source"] == "procedural" and self.args.batch_size > views:
            from hf_sbir.training.config import ConfigError

            raise ConfigError(
                f"batch_size {self.args.batch_size} exceeds the {views} training views (num_train_shapes "
                f"{s['num_train_shapes']} x views_per_shape {s['views_per_shape']}); a batch holds distinct views. "
                "Lower batch_size or raise method_args.num_train_shapes / views_per_shape."
            )

    def build_model(self):
        from hf_sbir.models.shape_views import ShapeViewsConfig, ShapeViewsModel

        kwargs = self._config_kwargs()
        if self.args.init_model:
            return self.load_init_model(kwargs)
        if self.args.backbone_config is not None:
            return ShapeViewsModel(ShapeViewsConfig(backbone_config=self.args.backbone_config, **kwargs))
        return ShapeViewsModel.from_backbone(self.args.backbone, **kwargs)

    def build_transform(self, model):
        from hf_sbir.models.shape_views.processing_shape_views import ShapeViewsImageTransform

        self.transform = ShapeViewsImageTransform.for_model(
            model, image_size=self.args.image_size, sketch_stroke_width=self.args.sketch_stroke_width
        )
        return self.transform

    # -- data ------------------------------------------------------------------------------------
    def load_data(self):
        """None for the procedural source (its shapes are drawn in `setup` / `evaluate`); else `args.dataset`
        with `args.split` (null: one `all` split) and the zero-shot leak guard."""
        return None if self.settings["source"] == "procedural" else super().load_data()

    def _shapes(self, classes, count: int, seed_offset: int):
        from hf_sbir.data.synthetic_sketch import make_shape

        # Shapes are spread over the classes round-robin; shape k of a run has seed (run seed, offset, k).
        return [
            make_shape(classes[k % len(classes)], self.args.seed * 100_003 + seed_offset + k) for k in range(count)
        ]

    def _render(self, shapes):
        from hf_sbir.data.synthetic_sketch import render_views, view_angles

        s = self.settings
        angles = view_angles(int(s["views_per_shape"]), elevation=float(s["elevation"]))
        return render_views(shapes, angles, size=int(s["render_size"]))

    def setup(self, model, data, transform, accelerator) -> None:
        s = self.settings
        self.transform = transform
        if s["source"] == "procedural":
            if self.args.dataset not in (None, "embedded"):
                logger.info("shape_views with source='procedural' ignores dataset=%r.", self.args.dataset)
            self.train_views = self._render(self._shapes(s["train_classes"], int(s["num_train_shapes"]), 0))
        else:
            split = "train" if "train" in data else "all"
            from hf_sbir.data import split_by_domain

            _, photos = split_by_domain(data[split])
            if len(photos) == 0:
                raise ValueError(f"The {split!r} split has no photos (rendered views) to synthesise training sketches from.")
            self.train_views = list(photos["image"])
        if self.args.batch_size > len(self.train_views):
            raise ValueError(
                f"batch_size {self.args.batch_size} exceeds the {len(self.train_views)} training views; a batch holds "
                "distinct views (the others are its negatives). Lower batch_size or add shapes/views."
            )
        if s["freeze_unused"]:
            frozen = freeze_unreached_parameters(model, self.args.image_size)
            if frozen:
                logger.info("shape_views: froze %d parameter tensors that cannot reach feature layer %d.", frozen, model.config.feature_layer)

    def _edges(self, view, key=None) -> np.ndarray:
        """The view's contour map (style-independent); training views' maps are cached by index."""
        from hf_sbir.data.synthetic_sketch import sketch_edges

        if key is not None and key in self._edge_cache:
            return self._edge_cache[key]
        if hasattr(view, "depth"):  # a RenderedView: image edges and depth contours
            edges = sketch_edges(view.image, view.depth)
        else:
            from hf_sbir.data.processing import load_image

            edges = sketch_edges(load_image(view))
        if key is not None:
            self._edge_cache[key] = edges
        return edges

    def _drawing(self, view, style: str, seed: int, key=None) -> Image.Image:
        from hf_sbir.data.synthetic_sketch import draw_edges

        return draw_edges(self._edges(view, key), style, seed)

    def _augment(self, drawing: Image.Image, rng: np.random.Generator, flip: bool) -> Image.Image:
        """Rotation, stroke width, object scale and position jitter on a black-on-white "L" drawing; returns the
        scale-normalised RGB image ready for the image processor."""
        from hf_sbir.data.processing import thicken_strokes
        from hf_sbir.models.shape_views.processing_shape_views import ScaleNormalize

        s = self.settings
        if not s["augment"]:
            return self.transform.prepare(drawing, "sketch")
        if flip:
            drawing = ImageOps.mirror(drawing)
        angle = float(rng.uniform(-1, 1)) * float(s["max_rotation"])
        drawing = drawing.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=255)
        base_fraction = self.transform.scale_object_fraction
        if base_fraction is not None:  # jittered scale normalisation, then a small shift
            fraction = float(np.clip(base_fraction * (1 + float(s["scale_jitter"]) * rng.uniform(-1, 1)), 0.2, 1.0))
            drawing = ScaleNormalize(object_fraction=fraction, ink_threshold=self.transform.scale_ink_threshold)(drawing)
            shift = float(s["translate_jitter"]) * drawing.size[0]
            dx, dy = (float(v) for v in rng.uniform(-shift, shift, size=2))
            drawing = drawing.transform(drawing.size, Image.Transform.AFFINE, (1, 0, dx, 0, 1, dy), fillcolor=255)
        width = int(rng.integers(0, int(s["stroke_jitter"]) + 1)) + self.transform.sketch_stroke_width
        return thicken_strokes(drawing, width).convert("RGB")

    def batch_plan(self, step: int, size: int) -> list[tuple[int, int, int, bool, int]]:
        """`size` distinct training views of `step`, each with its two drawing seeds, the pair's mirror flip and
        the seed of its augmentations; a pure function of (seed, step, size)."""
        if self.train_views is None:
            raise RuntimeError("Call setup() before drawing batches.")
        if size > len(self.train_views):
            raise ValueError(
                f"The global batch ({size} views: batch_size x processes x accumulation steps) exceeds the "
                f"{len(self.train_views)} training views; a batch holds distinct views (the others are its negatives)."
            )
        rng = np.random.default_rng([int(self.args.seed), int(step)])
        idx = rng.choice(len(self.train_views), size=size, replace=False)
        plan = []
        for view_index in idx:
            seed_a, seed_b, augment_seed = (int(x) for x in rng.integers(0, 2**31 - 1, size=3))
            flip = bool(self.settings["flip"]) and bool(rng.random() < 0.5)
            plan.append((int(view_index), seed_a, seed_b, flip, augment_seed))
        return plan

    def make_batch(self, step: int, plan) -> dict[str, torch.Tensor]:
        s = self.settings
        images_a, images_b = [], []
        for view_index, seed_a, seed_b, flip, augment_seed in plan:
            view = self.train_views[view_index]
            # Each item has its own augmentation stream, so a share of the batch is drawn alike on any process.
            rng = np.random.default_rng(augment_seed)
            images_a.append(self._augment(self._drawing(view, s["styles"][0], seed_a, view_index), rng, flip))
            images_b.append(self._augment(self._drawing(view, s["styles"][1], seed_b, view_index), rng, flip))
        processor = self.transform.image_processor
        return {
            "style_a_pixel_values": processor(images=images_a, return_tensors="pt")["pixel_values"].float(),
            "style_b_pixel_values": processor(images=images_b, return_tensors="pt")["pixel_values"].float(),
            "view_index": torch.as_tensor([item[0] for item in plan], dtype=torch.long),
        }

    # -- optimisation ----------------------------------------------------------------------------
    def training_step(self, model, batch, step):
        from hf_sbir.losses.shape_views import ShapeViewsLoss

        a, b = batch["style_a_pixel_values"], batch["style_b_pixel_values"]
        n = a.shape[0]
        # One forward pass over both styles (one call through DDP).
        out = model(pixel_values=torch.cat([a, b]))
        loss = ShapeViewsLoss(_unwrap(model).config, self.settings["symmetric_loss"])(out, n)
        embeddings = out.embeddings
        with torch.no_grad():
            sims = embeddings[:n] @ embeddings[n:].T
            pair_acc = (sims.argmax(dim=1) == torch.arange(n, device=sims.device)).float().mean()
        return loss, {"loss": loss.item(), "pair_acc@1": pair_acc.item()}

    # -- evaluation ------------------------------------------------------------------------------
    def _procedural_eval_set(self):
        s = self.settings
        views = self._render(self._shapes(s["test_classes"], int(s["num_test_shapes"]), _TEST_SHAPE_SEED_OFFSET))
        base = self.args.seed * 100_003 + _QUERY_SEED_OFFSET
        from hf_sbir.data.synthetic_sketch import draw_edges as draw

        edges = [self._edges(v) for v in views]
        queries = [draw(e, s["query_style"], base + 2 * k) for k, e in enumerate(edges)]
        gallery = [draw(e, s["gallery_style"] or "clean", base + 2 * k + 1) for k, e in enumerate(edges)]
        per_view = int(s["views_per_shape"])
        classes = [s["test_classes"][(k // per_view) % len(s["test_classes"])] for k in range(len(views))]
        return queries, gallery, torch.arange(len(views)), classes

    def _dataset_eval_set(self, data):
        from hf_sbir.data import split_by_domain

        s = self.settings
        split = "test" if "test" in data else "all"
        sketches, photos = split_by_domain(data[split])
        stems = [PurePosixPath(i).stem for i in photos["id"]]
        where = {}
        for k, stem in enumerate(stems):
            if stem in where:
                raise ValueError(f"Two gallery views share the file stem {stem!r}; sketch-view pairing needs unique stems.")
            where[stem] = k
        query_rows, target = [], []
        for k, item in enumerate(sketches["id"]):
            stem = PurePosixPath(item).stem
            if stem in where:
                query_rows.append(k)
                target.append(where[stem])
        if not query_rows:
            raise ValueError(f"No sketch of the {split!r} split has a photo (view) with the same file stem.")
        if len(query_rows) < len(sketches):
            logger.warning("shape_views: %d of %d sketches have no view with the same file stem; left out.", len(sketches) - len(query_rows), len(sketches))
        queries = sketches.select(query_rows)
        names = data[split].features["label"].names
        classes = [names[label] for label in queries["label"]]
        gallery = list(photos["image"])
        if s["gallery_style"] is not None:
            gallery = [self._drawing(img, s["gallery_style"], self.args.seed + k) for k, img in enumerate(gallery)]
        return list(queries["image"]), gallery, torch.tensor(target), classes

    def evaluate(self, model, data, transform):
        """Instance-level sketch -> view Acc@1/5 at the model's feature layer (per test class too) and,
        with `sweep_layers`, at every layer from the same forward passes (`per_layer`, `best_layer`)."""
        from hf_sbir.retrieval.evaluation import embed_all_layers, evaluate_layers

        model = _unwrap(model)
        if self._eval_set is None:
            self._eval_set = self._procedural_eval_set() if self.settings["source"] == "procedural" else self._dataset_eval_set(data)
        queries, gallery, target, classes = self._eval_set
        device = next(model.parameters()).device
        batch_size = self.args.eval_batch_size
        was_training = model.training
        model.eval()
        try:  # one pass per batch gives every layer; the model's own layer is one of them
            q = embed_all_layers(model, queries, transform, "sketch", batch_size, device, None)
            g = embed_all_layers(model, gallery, transform, "view", batch_size, device, None)
        finally:
            model.train(was_training)
        return evaluate_layers(
            q, g, target, model.config.feature_layer, query_classes=classes, ks=(1, 5), sweep=bool(self.settings["sweep_layers"]),
        ).to_dict()

    def state_dict(self) -> dict[str, Any]:
        return {}  # batches are a pure function of (seed, step)

    def model_card_info(self) -> dict[str, Any]:
        s = self.settings
        if s["source"] == "procedural":
            classes = ", ".join(s["test_classes"])
            dataset = {"dataset_type": "procedural-shapes", "dataset_name": f"procedural shapes ({classes})", "dataset_split": f"test classes: {classes}"}
            train_data = (
                f"procedural shapes of {', '.join(s['train_classes'])}: {s['num_train_shapes']} shapes × "
                f"{s['views_per_shape']} views at {s['elevation']}° elevation"
            )
        else:
            dataset = {"dataset_type": str(self.args.dataset), "dataset_name": str(self.args.dataset), "dataset_split": self.args.split or "all"}
            train_data = f"the rendered views (photos) of {self.args.dataset}"
        # The evaluate-CLI flags that rebuild this run's test set (settings that differ from the defaults).
        flags = [] if s["source"] == "procedural" else ["--dataset", str(self.args.dataset), "--split", str(self.args.split)]
        flags += ["--seed", str(self.args.seed)] if self.args.seed else []
        for key in ("source", "test_classes", "num_test_shapes", "views_per_shape", "elevation", "render_size", "query_style", "gallery_style"):
            if s[key] != _DEFAULTS[key]:
                value = f"[{','.join(s[key])}]" if isinstance(s[key], list) else ("null" if s[key] is None else s[key])
                flags += ["--set", f"{key}={value}"]
        return {
            "task_name": "Zero-shot sketch-view retrieval (unseen shape classes)",
            "tags": ["zero-shot", "3d-shape-retrieval"],
            **dataset,
            "template_values": {"train_data": train_data, "styles": " / ".join(s["styles"]), "eval_flags": " ".join(flags)},
        }


def _unwrap(model):
    """The model inside DDP / accelerate wrappers."""
    while hasattr(model, "module"):
        model = model.module
    return model


def freeze_unreached_parameters(model, image_size: int) -> int:
    """Set `requires_grad=False` on every parameter with no path to the feature layer's embeddings (found
    with one backward pass on a blank batch, in eval mode); returns how many tensors were frozen."""
    model = _unwrap(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        return 0
    was_training = model.training
    model.eval()
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        device = params[0].device
        pixel_values = torch.zeros(2, 3, image_size, image_size, device=device)
        with torch.enable_grad():
            model(pixel_values=pixel_values).features.sum().backward()
        unreached = [p for p in params if p.grad is None]
    finally:
        for p, grad in zip(params, saved):
            p.grad = grad
        model.train(was_training)
    for p in unreached:
        p.requires_grad_(False)
    return len(unreached)
