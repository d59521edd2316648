"""Sketch-an-Anchor's part of the training loop (paper §3.2-3.5, §4.2).

Method settings (`method_args`, all optional; `SketchAnAnchorSettings`): every one is a
`SketchAnAnchorConfig` field, so `config.json` records what the run used. Ablation switches
use_word_anchors, use_visual_anchors (both False = InfoNCE baseline), gcn_num_layers,
randomize_word_anchors, randomize_visual_anchors; word_anchor_neighbours (alias num_neighbours): word
neighbours of the anchor randomisation; visual_anchor_noise_scale, backbone_gradient_scale,
contrastive_temperature, anchor_similarity_temperature, projection_dim, gcn_hidden_size.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from typing import ClassVar, Optional

import torch
from pydantic import AliasChoices, Field

from hf_sbir.models.sketch_an_anchor.configuration_sketch_an_anchor import SketchAnAnchorConfig
from hf_sbir.training.method import TrainingMethod
from hf_sbir.training.method_settings import MethodSettings

logger = logging.getLogger("hf_sbir")

class SketchAnAnchorSettings(MethodSettings):
    """`method_args` of sketch_an_anchor: all `SketchAnAnchorConfig` fields (None: the config's default)."""

    method_name: ClassVar[str] = "sketch_an_anchor"
    config_class: ClassVar[type] = SketchAnAnchorConfig
    config_fields: ClassVar[tuple[str, ...]] = (
        "use_word_anchors", "use_visual_anchors", "gcn_num_layers", "randomize_word_anchors", "randomize_visual_anchors",
        "visual_anchor_noise_scale", "backbone_gradient_scale", "contrastive_temperature",
        "anchor_similarity_temperature", "projection_dim", "gcn_hidden_size", "word_anchor_neighbours",
    )
    # What a trained model (init_model) may change: the loss, the anchor sampling and the gradient scale. The
    # rest shapes its modules; anchor_similarity_temperature is also fixed at build time inside the GCN.
    runtime_fields: ClassVar[tuple[str, ...]] = (
        "use_word_anchors", "use_visual_anchors", "randomize_word_anchors", "randomize_visual_anchors",
        "visual_anchor_noise_scale", "backbone_gradient_scale", "contrastive_temperature", "word_anchor_neighbours",
    )

    use_word_anchors: Optional[bool] = None
    use_visual_anchors: Optional[bool] = None
    gcn_num_layers: Optional[int] = None
    randomize_word_anchors: Optional[bool] = None
    randomize_visual_anchors: Optional[bool] = None
    visual_anchor_noise_scale: Optional[float] = None
    backbone_gradient_scale: Optional[float] = None
    contrastive_temperature: Optional[float] = None
    anchor_similarity_temperature: Optional[float] = None
    projection_dim: Optional[int] = None
    gcn_hidden_size: Optional[int] = None
    # num_neighbours is the older name; both set the config field, so config.json shows what the anchors used.
    word_anchor_neighbours: Optional[int] = Field(None, validation_alias=AliasChoices("word_anchor_neighbours", "num_neighbours"))


class SketchAnAnchorMethod(TrainingMethod):
    name = "sketch_an_anchor"
    settings_class = SketchAnAnchorSettings
    requires_split = True

    def __init__(self, args):
        super().__init__(args)
        self.text_embedder = None
        self.anchors = None
        self.sampler = None

    # -- model ------------------------------------------------------------------------------------
    def _uses_word_anchors(self, config_kwargs: dict | None = None) -> bool:
        kwargs = self._config_kwargs() if config_kwargs is None else config_kwargs
        return kwargs.get("use_word_anchors", True)

    def build_model(self):
        from hf_sbir.models.sketch_an_anchor import SketchAnAnchorConfig, SketchAnAnchorModel

        kwargs = self._config_kwargs()
        if self._uses_word_anchors(kwargs):
            from hf_sbir.anchors.text import get_class_name_embedder

            self.text_embedder = get_class_name_embedder(self.args.text_embedder)
            kwargs.setdefault("word_anchor_dim", self.text_embedder.dim)
        if self.args.init_model:
            return self.load_init_model(kwargs)
        if self.args.backbone_config is not None:
            return SketchAnAnchorModel(SketchAnAnchorConfig(backbone_config=self.args.backbone_config, **kwargs))
        return SketchAnAnchorModel.from_backbone(self.args.backbone, **kwargs)

    def build_transform(self, model):
        from hf_sbir.backbones.processing import image_processor_for_backbone
        from hf_sbir.data import SbirImageTransform

        processor = image_processor_for_backbone(model.config.backbone_config, image_size=self.args.image_size)
        return SbirImageTransform(
            image_processor=processor,
            image_size=self.args.image_size,
            sketch_ink_crop=self.args.sketch_ink_crop,
            sketch_stroke_width=self.args.sketch_stroke_width,
            empty_sketch="keep",
        )

    # -- data ------------------------------------------------------------------------------------
    def setup(self, model, data, transform, accelerator) -> None:
        from hf_sbir.data import PairedClassBatchSampler, split_by_domain

        self.transform = transform
        train = data["train"]
        label_names = train.features["label"].names
        self.sketches, self.photos = split_by_domain(train)
        present = sorted(set(self.sketches["label"]) & set(self.photos["label"]))
        if not present:
            raise ValueError("The training split has no class with both sketches and photos.")
        self.class_names = [label_names[i] for i in present]
        self.anchor_index = {label: i for i, label in enumerate(present)}  # dataset label -> anchor row
        cfg = self._config = model.config
        cfg.anchor_class_names = self.class_names
        cfg.num_anchor_classes = len(self.class_names)

        cache = Path(self.args.output_dir) / "anchors"
        # Data parallelism: the main process builds and caches the anchors, the others then load its files
        # (one computation, and bitwise the same anchors on every process).
        first = getattr(accelerator, "main_process_first", None)
        with first() if first is not None else contextlib.nullcontext():
            self._load_or_build_anchors(model, transform, cache, label_names, accelerator)
        self.sampler = PairedClassBatchSampler(self.sketches["label"], self.photos["label"], self.args.batch_size, seed=self.args.seed)

    def _load_or_build_anchors(self, model, transform, cache, label_names, accelerator) -> None:
        from hf_sbir.anchors.semantic_anchors import SemanticAnchors, build_semantic_anchors

        cfg = self._config
        use_word, use_visual = cfg.use_word_anchors, cfg.use_visual_anchors
        self.anchors = None
        if (cache / "anchors.json").is_file():
            try:
                self.anchors = SemanticAnchors.load(cache)
            except ValueError as err:  # a cache: rebuilt from the same untrained model and names, so identical
                logger.warning("%s; rebuilding them.", err)
            if self.anchors is not None and self.anchors.class_names != self.class_names:
                raise ValueError(f"Cached anchors in {cache} are for other classes; remove the folder or use a new output_dir.")
        if self.anchors is None and (use_word or use_visual):
            self.anchors = build_semantic_anchors(
                model, self.photos, transform, self.class_names,
                label_names=label_names, text_embedder=self.text_embedder,
                num_neighbours=cfg.word_anchor_neighbours,
                batch_size=self.args.eval_batch_size, use_word=use_word, use_visual=use_visual,
                device=accelerator.device, progress=self.args.progress,
            )
            if accelerator.is_main_process:
                self.anchors.save(cache)

    def batch_plan(self, step: int, size: int) -> list[tuple[int, int]]:
        """(sketch row, photo row) pairs of the global batch of `step`, class-aligned (`PairedClassBatchSampler`)."""
        return list(zip(*self.sampler.batch(step, size)))

    def make_batch(self, step: int, plan) -> dict[str, torch.Tensor]:
        sketch_idx, photo_idx = (list(rows) for rows in zip(*plan))
        sketches, photos = self.sketches[sketch_idx], self.photos[photo_idx]
        batch = {
            "sketch_pixel_values": self.transform.batch(sketches["image"], ["sketch"] * len(sketch_idx)),
            "photo_pixel_values": self.transform.batch(photos["image"], ["photo"] * len(photo_idx)),
            "labels": torch.tensor([self.anchor_index[label] for label in sketches["label"]]),
        }
        if self.anchors is not None:
            cfg = self.config
            # Anchor randomisation (§3.5) drawn from (seed, step): a resumed run draws the same, and so does
            # every process of a data-parallel run (the anchors are shared, only the items are split).
            generator = torch.Generator().manual_seed(self.args.seed * 1_000_003 + step)
            word, visual = self.anchors.sample(
                generator,
                randomize_word=cfg.randomize_word_anchors,
                randomize_visual=cfg.randomize_visual_anchors,
                noise_scale=cfg.visual_anchor_noise_scale,
                use_word=cfg.use_word_anchors,
                use_visual=cfg.use_visual_anchors,
            )
            if word is not None:
                batch["word_anchors"] = word
            if visual is not None:
                batch["visual_anchors"] = visual
        return batch

    # -- optimisation ----------------------------------------------------------------------------
    def parameter_groups(self, model):
        """Heads at the base rate; the backbone in its own group at `backbone_gradient_scale` x that rate.

        The paper (§4.2) multiplies the backbone's gradient by 0.1 "to accelerate learning of the
        projectors". Adam divides such a constant factor out again (its step is m / sqrt(v)), so the
        intent, a backbone that moves at a tenth of the heads' pace, is implemented as a learning-rate
        ratio; the warm-up + cosine schedule multiplies both groups' rates alike."""
        model = getattr(model, "module", model)
        scale = float(model.config.backbone_gradient_scale)
        backbone = [p for p in model.backbone.parameters() if p.requires_grad]
        in_backbone = {id(p) for p in backbone}
        heads = [p for p in model.parameters() if p.requires_grad and id(p) not in in_backbone]
        groups = [{"params": heads, "name": "heads"}]
        if backbone:
            groups.append({"params": backbone, "lr": self.args.learning_rate * scale, "name": "backbone"})
        return groups

    @property
    def config(self):
        return self._config

    def training_step(self, model, batch, step):
        from hf_sbir.losses.sketch_an_anchor import SketchAnAnchorLoss

        # One forward pass over sketches and photos together (one call through DDP, GCN included).
        word, visual = batch.get("word_anchors"), batch.get("visual_anchors")
        out = model(pixel_values=torch.cat([batch["sketch_pixel_values"], batch["photo_pixel_values"]]), word_anchors=word, visual_anchors=visual)
        losses = SketchAnAnchorLoss(self.config)(out, batch["labels"], batch["sketch_pixel_values"].shape[0], word, visual)
        return losses.total, losses.as_floats()

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, model, data, transform, protocol=None):
        """Zero-shot retrieval on the unseen classes: `metrics` under the textbook protocol, `by_protocol`
        also under SAKE's (`hf_sbir.retrieval.evaluation.TRAINING_PROTOCOLS`), from one embedding pass."""
        from hf_sbir.retrieval.evaluation import TRAINING_PROTOCOLS, evaluate_zero_shot

        return evaluate_zero_shot(
            model, data, transform, batch_size=self.args.eval_batch_size,
            max_queries=self.args.max_eval_queries, seed=self.args.seed, progress=self.args.progress,
            protocol=protocol or TRAINING_PROTOCOLS,
        ).to_dict()

    def state_dict(self):
        return {"sampler": self.sampler.state_dict() if self.sampler is not None else None}
