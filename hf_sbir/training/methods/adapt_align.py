"""Adapt and Align's part of the training loop (Dong et al., arXiv 2305.05144).

Each step takes a class-balanced batch of sketches and photos (position i of both is the same seen
class; `PairedClassBatchSampler`, a pure function of (seed, step)), embeds them with the adapted
model, and minimises eq. 5 of `hf_sbir.losses.adapt_align`: the cross-entropy of the scaled cosine
similarities to the seen classes' text embeddings (eq. 2-3) plus lambda times the distance between
the model's pooled backbone features and those of a frozen copy of the starting backbone (eq. 4).

Method settings (`method_args`, all optional; `AdaptAlignSettings`):
    AdaptAlignConfig fields, copied into the model config: use_adapters, adapter_target_modules,
        adapter_bottleneck_size, adapter_dropout, adapter_scale, adapter_activation, train_adapters_only,
        alignment_temperature, learnable_temperature, distillation_weight, distillation_loss, prompt_template.
    distillation_domains ("both" | "photo" | "sketch", default "both"): which images the teacher sees.

The text encoder is `args.text_embedder` (a CLIP hub id or folder, "minilm", a word2vec file) or, when
None, CLIP ViT-B/32's text tower when the Hub is reachable, else the packaged MiniLM (offline); its
embedding size becomes the model's `projection_dim`. The prompt template applies to CLIP text encoders;
the other encoders embed the bare class names.
"""

from __future__ import annotations

import copy
import logging

from typing import ClassVar, Optional, Union

import torch
from pydantic import field_validator

from hf_sbir.models.adapt_align.configuration_adapt_align import AdaptAlignConfig
from hf_sbir.training.config import ConfigError
from hf_sbir.training.method import TrainingMethod
from hf_sbir.training.method_settings import MethodSettings

logger = logging.getLogger("hf_sbir")

DISTILLATION_DOMAINS = ("both", "photo", "sketch")


class AdaptAlignSettings(MethodSettings):
    """`method_args` of adapt_align: AdaptAlignConfig fields (None: the config's default) and distillation_domains."""

    method_name: ClassVar[str] = "adapt_align"
    config_class: ClassVar[type] = AdaptAlignConfig
    config_fields: ClassVar[tuple[str, ...]] = (
        "use_adapters", "adapter_target_modules", "adapter_bottleneck_size", "adapter_dropout", "adapter_scale",
        "adapter_activation", "train_adapters_only", "alignment_temperature", "learnable_temperature",
        "distillation_weight", "distillation_loss", "prompt_template",
    )
    # Of those, the ones that can change on an already-built model (init_model).
    runtime_fields: ClassVar[tuple[str, ...]] = (
        "train_adapters_only", "learnable_temperature", "distillation_weight", "distillation_loss", "prompt_template",
        "text_embedder",
    )

    use_adapters: Optional[bool] = None
    adapter_target_modules: Optional[Union[str, list[str]]] = None
    adapter_bottleneck_size: Optional[int] = None
    adapter_dropout: Optional[float] = None
    adapter_scale: Optional[float] = None
    adapter_activation: Optional[str] = None
    train_adapters_only: Optional[bool] = None
    alignment_temperature: Optional[float] = None
    learnable_temperature: Optional[bool] = None
    distillation_weight: Optional[float] = None
    distillation_loss: Optional[str] = None
    prompt_template: Optional[str] = None
    distillation_domains: str = "both"

    @field_validator("distillation_domains")
    @classmethod
    def _known_domains(cls, value):
        if value not in DISTILLATION_DOMAINS:
            raise ValueError(f"distillation_domains must be one of {DISTILLATION_DOMAINS}")
        return value


CONFIG_KEYS = AdaptAlignSettings.config_fields
RUNTIME_KEYS = AdaptAlignSettings.runtime_fields


class AdaptAlignMethod(TrainingMethod):
    """Adapt and Align in the shared loop.

    Args:
        args: the run's `TrainConfig` (or any object with its fields; only `seed`, `batch_size`, `image_size`,
            `backbone`, `model_config`, `output_dir`, `learning_rate` and `method_args` are required).
        class_name_embedder (*optional*): a ready class-name embedder (`embed(names) -> (C, D)`, `dim`), used
            instead of choosing one from `args.text_embedder`.
    """

    name = "adapt_align"
    settings_class = AdaptAlignSettings
    requires_split = True

    def __init__(self, args, class_name_embedder=None):
        super().__init__(args)
        self.distillation_domains = self.method_settings.distillation_domains
        self.text_embedder = class_name_embedder
        self.teacher = None
        self.sampler = None
        self.text_embeds = None
        self.class_names: list[str] = []

    def _arg(self, name: str, default=None):
        value = getattr(self.args, name, default)
        return default if value is None and default is not None else value

    # -- model ------------------------------------------------------------------------------------
    def class_name_embedder(self):
        """The text encoder of the class names (chosen once): `args.text_embedder`, else CLIP when the Hub is
        reachable, else the packaged MiniLM; CLIP encoders get the configured prompt template."""
        if self.text_embedder is None:
            from hf_sbir.anchors.text import get_class_name_embedder
            from hf_sbir.models.adapt_align.configuration_adapt_align import DEFAULT_PROMPT_TEMPLATE

            template = self._config_kwargs().get("prompt_template", DEFAULT_PROMPT_TEMPLATE)
            self.text_embedder = get_class_name_embedder(self._arg("text_embedder"))
            if getattr(self.text_embedder, "provider", None) == "clip":
                self.text_embedder.prompt_template = template
        return self.text_embedder

    def build_model(self):
        from transformers import AutoModel

        from hf_sbir.models.adapt_align import AdaptAlignConfig, AdaptAlignModel

        kwargs = self._config_kwargs()
        embedder = self.class_name_embedder()
        dim = int(embedder.dim)
        if kwargs.get("projection_dim", dim) != dim:
            raise ValueError(
                f"projection_dim={kwargs['projection_dim']} differs from the text encoder's embedding size ({dim}); "
                "leave projection_dim unset, it follows the text encoder."
            )
        kwargs["projection_dim"] = dim
        describe = getattr(embedder, "to_dict", None)
        kwargs["text_embedder"] = describe() if callable(describe) else {"name": getattr(embedder, "name", type(embedder).__name__)}

        if self._arg("peft"):
            # peft's adapters and the paper's bottleneck adapters would adapt the same backbone twice.
            for key in ("use_adapters", "train_adapters_only"):
                if kwargs.get(key):
                    raise ConfigError(
                        f"adapt_align with --peft {self._arg('peft')}: {key}=true asks for the paper's bottleneck "
                        f"adapters as well; drop method_args.{key} (peft's adapters replace them) or drop --peft."
                    )
            kwargs["use_adapters"] = False
        init_model = self._arg("init_model")
        if init_model:
            model = AutoModel.from_pretrained(init_model)
            if model.config.projection_dim != dim:
                raise ConfigError(
                    f"init_model {init_model!r} has projection_dim {model.config.projection_dim}, the text encoder gives "
                    f"{dim}; use the text_embedder it was trained with."
                )
            for key, value in self.method_settings.apply_to_trained(model.config, kwargs, init_model).items():
                setattr(model.config, key, value)
            model.configure_trainable()
            return model
        backbone_config = self._arg("backbone_config")
        if backbone_config is not None:
            return AdaptAlignModel(AdaptAlignConfig(backbone_config=backbone_config, **kwargs))
        return AdaptAlignModel.from_backbone(self._arg("backbone"), **kwargs)

    def build_transform(self, model):
        from hf_sbir.backbones.processing import IMAGENET_MEAN, IMAGENET_STD, image_processor_for_backbone
        from hf_sbir.data import SbirImageTransform

        backbone_config = model.config.backbone_config
        size = self._arg("image_size", 224)
        # ResNets use the ImageNet statistics (the default processor of SbirImageTransform).
        processor = None if backbone_config.model_type == "resnet" else image_processor_for_backbone(backbone_config, image_size=size)
        return SbirImageTransform(
            image_processor=processor,
            image_size=size,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            sketch_ink_crop=self._arg("sketch_ink_crop", True),
            sketch_stroke_width=self._arg("sketch_stroke_width", 0),
            empty_sketch="keep",
        )

    # -- data ------------------------------------------------------------------------------------
    def setup(self, model, data, transform, accelerator) -> None:
        """Seen classes and their text embeddings, the frozen teacher, the paired sampler."""
        from hf_sbir.data import PairedClassBatchSampler, split_by_domain

        self.transform = transform
        train = data["train"]
        label_names = train.features["label"].names
        self.sketches, self.photos = split_by_domain(train)
        present = sorted(set(self.sketches["label"]) & set(self.photos["label"]))
        if not present:
            raise ValueError("The training split has no class with both sketches and photos.")
        self.class_names = [label_names[i] for i in present]
        self.class_index = {label: i for i, label in enumerate(present)}  # dataset label -> text-embedding row
        self.text_embeds = self.class_name_embedder().embed(self.class_names).float().cpu()
        config = self.config = model.config
        if self.text_embeds.shape != (len(present), config.projection_dim):
            raise ValueError(
                f"The text encoder gave embeddings of shape {tuple(self.text_embeds.shape)}; the model expects "
                f"({len(present)}, {config.projection_dim})."
            )
        config.class_names = self.class_names
        device = getattr(accelerator, "device", torch.device("cpu"))
        self.teacher = None
        if config.distillation_weight > 0:
            # Eq. 4's teacher: a frozen copy of the backbone as training starts (its adapters are the identity).
            self.teacher = copy.deepcopy(model.backbone).eval().requires_grad_(False).to(device)
        self.sampler = PairedClassBatchSampler(
            self.sketches["label"], self.photos["label"], self._arg("batch_size"), seed=self._arg("seed", 0)
        )

    def batch_plan(self, step: int, size: int) -> list[tuple[int, int]]:
        """(sketch row, photo row) pairs of the global batch of `step`, class-aligned by position; a pure function
        of (seed, step, size)."""
        return list(zip(*self.sampler.batch(step, size)))

    def make_batch(self, step: int, plan) -> dict[str, torch.Tensor]:
        sketch_idx, photo_idx = (list(rows) for rows in zip(*plan))
        sketches, photos = self.sketches[sketch_idx], self.photos[photo_idx]
        return {
            "sketch_pixel_values": self.transform.batch(sketches["image"], ["sketch"] * len(sketch_idx)),
            "photo_pixel_values": self.transform.batch(photos["image"], ["photo"] * len(photo_idx)),
            "labels": torch.tensor([self.class_index[label] for label in sketches["label"]]),
        }

    # -- optimisation ----------------------------------------------------------------------------
    def training_step(self, model, batch, step):
        from hf_sbir.losses.adapt_align import AdaptAlignLoss

        config = getattr(model, "module", model).config  # DDP wraps the model
        n = batch["sketch_pixel_values"].shape[0]
        # One forward pass over sketches and photos together (one call through DDP).
        pixel_values = torch.cat([batch["sketch_pixel_values"], batch["photo_pixel_values"]])
        labels = torch.cat([batch["labels"], batch["labels"]])
        out = model(pixel_values=pixel_values, text_embeds=self.text_embeds.to(pixel_values.device))
        chosen, teacher = {"both": slice(None), "sketch": slice(0, n), "photo": slice(n, None)}[self.distillation_domains], None
        if self.teacher is not None and config.distillation_weight > 0:
            with torch.no_grad():
                teacher = self.teacher(pixel_values[chosen]).pooled_output
        losses = AdaptAlignLoss(config)(out, labels, teacher, student_rows=chosen)
        logs = losses.as_floats()
        with torch.no_grad():
            predictions = out.logits.argmax(dim=-1)
            logs["acc_sketch"] = float((predictions[:n] == labels[:n]).float().mean())
            logs["acc_photo"] = float((predictions[n:] == labels[n:]).float().mean())
        return losses.total, logs

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self, model, data, transform, protocol=None):
        """Zero-shot retrieval on the unseen classes: `metrics` under the textbook protocol, `by_protocol`
        also under SAKE's (`hf_sbir.retrieval.evaluation.TRAINING_PROTOCOLS`), from one embedding pass."""
        from hf_sbir.retrieval.evaluation import TRAINING_PROTOCOLS, evaluate_zero_shot

        return evaluate_zero_shot(
            model,
            data,
            transform,
            batch_size=self._arg("eval_batch_size", 32),
            max_queries=self._arg("max_eval_queries"),
            seed=self._arg("seed", 0),
            progress=self._arg("progress", True),
            protocol=protocol or TRAINING_PROTOCOLS,
        ).to_dict()

    def state_dict(self):
        # Batches depend on (seed, step) only; the sampler state is recorded for inspection.
        return {"sampler": self.sampler.state_dict() if self.sampler is not None else None}

    def load_state_dict(self, state) -> None:
        if self.sampler is not None and state.get("sampler"):
            self.sampler.load_state_dict(state["sampler"])
