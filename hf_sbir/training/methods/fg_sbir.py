"""FG-SBIR's part of the training loop: the stronger fine-grained baseline (Sain et al., CVPR 2023).

Each step trains on B training pairs (photo i and its sketches), drawn from (seed, step) only:

    sketch s_i, another sketch of photo i (s_i+), a sketch of another photo j (s_j)
    photo p_i, a structurally augmented view of p_i (p_i+), the other photo p_j
    -> eq. 5: L_CM(s_i, p_i, p_j) + lambda1 L_IM^photo(p_i, p_i+, p_j) + lambda2 L_IM^sketch(s_i, s_i+, s_j)

After every optimiser step the EMA copy is updated (eq. 4); it is the model that is evaluated and
exported. With `distillation: true`, `setup` first trains a photo-only teacher with L_IM^photo on
unlabelled photos (augmented views as positives, other photos as negatives) and caches it in
`<output_dir>/teacher`; the student then adds lambda_KD L_KD, computed on its distillation-token
embeddings against the teacher's embeddings in three ways (project page): (i) unlabelled photos,
(ii) the batch's labelled photos, (iii) the batch's sketches against the teacher's view of their
paired photos.

Method settings (`method_args`, all optional):
    distillation (bool, False): teacher stage + L_KD. Also turns the distillation token on (without
        distillation the token would have nothing to learn from, and would be an unused parameter under DDP),
        unless `use_distillation_token` is given.
    unlabelled_photos (str): folder of unlabelled photos (searched recursively; e.g. UT-Zappos50K for shoes);
        default: the training split's photos, with a warning.
    max_unlabelled_photos (int): use the first N of them.
    teacher_iterations (int, 500), teacher_learning_rate (float, args.learning_rate),
    teacher_batch_size (int, args.batch_size): the teacher stage.
    unlabelled_per_step (int, args.batch_size): unlabelled photos per student step for (i); 0 disables (i).
    use_ema (bool, True): evaluate and export the EMA weights (False: the raw weights).
    on_unmatched ("raise"): what the paired loader does with sketches that pair with no photo.
    Config fields (copied into the model config): cross_modal_margin, photo_margin, sketch_margin,
    photo_intra_weight, sketch_intra_weight, distillation_weight, distillation_temperature,
    distillation_neighbours, ema_decay, embedding_dim, use_distillation_token.

Data (`load_data()`, called by the shared loop): `args.dataset` is a fine-grained folder
(`hf_sbir.data.fg_paired`: QMUL Shoe-V2 / Chair-V2 and other layouts), or `"embedded"` for the generated
offline set of sketch/photo instance pairs (`hf_sbir.data.fg_embedded`). With a zero-shot `args.split`
(e.g. `sketchy_sake`), `args.dataset` is a class-folder tree whose sketch names name their photo (Sketchy,
`"sketchy-small"`; `hf_sbir.data.fg_class_folders`): training uses the seen classes' pairs, evaluation each
unseen sketch against all unseen photos. `args.gzs` is not used. `setup` / `evaluate` also load the paired data
themselves when the `data` they are given has no `pair_id` column.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import random
from pathlib import Path
from typing import Any, ClassVar, Literal, Optional

import torch
from PIL import Image
from pydantic import Field
from torch import nn

from hf_sbir.models.fg_sbir.configuration_fg_sbir import FGSBIRConfig
from hf_sbir.training.config import ConfigError
from hf_sbir.training.method import TrainingMethod
from hf_sbir.training.method_settings import MethodSettings

logger = logging.getLogger("hf_sbir")

class FGSBIRSettings(MethodSettings):
    """`method_args` of fg_sbir: the teacher stage and EMA switches, and FGSBIRConfig fields (None: the config's
    default)."""

    method_name: ClassVar[str] = "fg_sbir"
    config_class: ClassVar[type] = FGSBIRConfig
    config_fields: ClassVar[tuple[str, ...]] = (
        "cross_modal_margin", "photo_margin", "sketch_margin", "photo_intra_weight", "sketch_intra_weight",
        "distillation_weight", "distillation_temperature", "distillation_neighbours", "ema_decay", "embedding_dim",
        "use_distillation_token",
    )
    # Loss weights, margins and the EMA decay may change on a trained model (init_model); the embedding size
    # and the distillation token are modules.
    runtime_fields: ClassVar[tuple[str, ...]] = (
        "cross_modal_margin", "photo_margin", "sketch_margin", "photo_intra_weight", "sketch_intra_weight",
        "distillation_weight", "distillation_temperature", "distillation_neighbours", "ema_decay",
    )

    distillation: bool = False
    unlabelled_photos: Optional[str] = None
    max_unlabelled_photos: Optional[int] = Field(None, ge=1)
    teacher_iterations: int = Field(500, ge=0)
    teacher_learning_rate: Optional[float] = Field(None, gt=0)
    teacher_batch_size: Optional[int] = Field(None, ge=2)
    unlabelled_per_step: Optional[int] = Field(None, ge=0)
    use_ema: bool = True
    on_unmatched: Literal["raise", "warn"] = "raise"
    cross_modal_margin: Optional[float] = None
    photo_margin: Optional[float] = None
    sketch_margin: Optional[float] = None
    photo_intra_weight: Optional[float] = None
    sketch_intra_weight: Optional[float] = None
    distillation_weight: Optional[float] = None
    distillation_temperature: Optional[float] = None
    distillation_neighbours: Optional[int] = None
    ema_decay: Optional[float] = None
    embedding_dim: Optional[int] = None
    use_distillation_token: Optional[bool] = None



# -- EMA (eq. 4) --------------------------------------------------------------------------------------
class ModelEMA:
    """Exponential moving average of a model's weights, eq. 4: theta_ema <- beta * theta_ema + (1 - beta) * theta.

    `ModelEMA(model, decay)` starts from a copy of `model`; `update(model)` applies eq. 4 to every floating-point
    parameter and copies the buffers (e.g. BatchNorm statistics). `ema.model` is the averaged model (eval mode, no
    gradients).
    """

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1); got {decay!r}.")
        self.decay = float(decay)
        self.model = copy.deepcopy(_unwrap(model)).eval()
        self.model.requires_grad_(False)
        self.num_updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        model = _unwrap(model)
        ema_params = dict(self.model.named_parameters())
        ema_buffers = dict(self.model.named_buffers())
        for name, param in model.named_parameters():
            ema = ema_params[name]
            if ema.device != param.device:
                self.model.to(param.device)
                ema_params = dict(self.model.named_parameters())
                ema_buffers = dict(self.model.named_buffers())
                ema = ema_params[name]
            if ema.is_floating_point():
                ema.mul_(self.decay).add_(param.detach().to(ema.dtype), alpha=1.0 - self.decay)
            else:
                ema.copy_(param)
        for name, buffer in model.named_buffers():
            if name in ema_buffers:
                ema_buffers[name].copy_(buffer)
        self.num_updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "num_updates": self.num_updates, "weights": {k: v.detach().cpu() for k, v in self.model.state_dict().items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.model.load_state_dict(state["weights"])


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside a DDP / accelerate wrapper."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return model


# -- structural augmentation (the positive of eq. 2) ------------------------------------------------
def structural_augment(
    image: Image.Image,
    rng: random.Random,
    max_rotation: float = 15.0,
    scale_range: tuple[float, float] = (0.85, 1.15),
    max_shear: float = 10.0,
    max_translation: float = 0.08,
    flip_probability: float = 0.5,
    fill=(255, 255, 255),
) -> Image.Image:
    """A shape-changing view of a photo for the photo intra-modal triplet (eq. 2): the paper picks "morphological"
    augmentations, which alter shape (what a sketch carries) rather than colour. A random affine map (rotation,
    isotropic scale, shear, translation, about the centre) and a horizontal flip, drawn from `rng`; uncovered
    pixels are filled with white (product photos are on white)."""
    img = image.convert("RGB")
    width, height = img.size
    angle = math.radians(rng.uniform(-max_rotation, max_rotation))
    scale = rng.uniform(*scale_range)
    shear = math.radians(rng.uniform(-max_shear, max_shear))
    tx, ty = rng.uniform(-max_translation, max_translation) * width, rng.uniform(-max_translation, max_translation) * height
    if rng.random() < flip_probability:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    # Forward map y = A (x - c) + c + t with A = scale * R(angle) @ Shear(shear); PIL wants the inverse.
    cos, sin, tan = math.cos(angle), math.sin(angle), math.tan(shear)
    a, b, c, d = scale * cos, scale * (cos * tan - sin), scale * sin, scale * (sin * tan + cos)
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    cx, cy = width / 2.0, height / 2.0
    ox, oy = cx + tx, cy + ty
    coefficients = (ia, ib, cx - ia * ox - ib * oy, ic, id_, cy - ic * ox - id_ * oy)
    return img.transform((width, height), Image.Transform.AFFINE, coefficients, resample=Image.Resampling.BILINEAR, fillcolor=fill)


# -- teacher stage ------------------------------------------------------------------------------------
def train_photo_teacher(
    teacher: nn.Module,
    photos,
    transform,
    iterations: int,
    batch_size: int,
    learning_rate: float,
    margin: float,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> list[float]:
    """Teacher pre-training on unlabelled photos with the photo intra-modal triplet (eq. 2): anchor = photo, positive
    = its structurally augmented view, negative = the next photo of the batch. Batches depend on (seed, step) only.
    Returns the loss of each step."""
    from hf_sbir.losses.fg_sbir import photo_intra_modal_triplet_loss

    if len(photos) < 2:
        raise ValueError(f"The teacher needs at least 2 unlabelled photos; got {len(photos)}.")
    teacher.to(device).train()
    optimizer = torch.optim.Adam([p for p in teacher.parameters() if p.requires_grad], lr=learning_rate)
    size = min(batch_size, len(photos))
    history = []
    for step in range(iterations):
        rng = random.Random(f"fg_sbir-teacher:{seed}:{step}")
        images = photos.select(rng.sample(range(len(photos)), size))["image"]
        views = [structural_augment(img, rng) for img in images]
        pixels = transform.batch(list(images) + views, ["photo"] * (2 * size)).to(device)
        embeddings = teacher(pixel_values=pixels).embeddings
        anchor, positive = embeddings[:size], embeddings[size:]
        loss = photo_intra_modal_triplet_loss(anchor, positive, anchor.roll(1, dims=0), margin)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history


class FGSBIRMethod(TrainingMethod):
    name = "fg_sbir"
    settings_class = FGSBIRSettings

    def __init__(self, args):
        super().__init__(args)
        # The method's own settings, validated and coerced (only those given: the code below supplies the
        # defaults that depend on other settings, e.g. teacher_batch_size -> batch_size).
        settings = self.method_settings
        self.method_args = {
            k: v for k, v in settings.model_dump(exclude_unset=True).items() if k not in settings.config_fields
        }
        self.distillation = settings.distillation
        self.use_ema = settings.use_ema
        self._data = None
        self.transform = None
        self.ema: ModelEMA | None = None
        self.teacher: nn.Module | None = None
        self.unlabelled = None
        self._pending_state: dict | None = None

    # -- model ------------------------------------------------------------------------------------
    def _config_kwargs(self) -> dict:
        kwargs = dict(self.model_kwargs)
        # The token follows `distillation` unless given (a trained model keeps its own unless distillation asks it).
        if self.distillation or not getattr(self.args, "init_model", None):
            kwargs.setdefault("use_distillation_token", self.distillation)
        if self.distillation and not kwargs["use_distillation_token"]:
            raise ConfigError("distillation needs the distillation token: drop use_distillation_token=false.")
        return kwargs

    def build_model(self):
        from hf_sbir.models.fg_sbir import FGSBIRConfig, FGSBIRModel

        kwargs = self._config_kwargs()
        if self.args.init_model:
            model = self.load_init_model(kwargs)  # refuses another family's model (its model_type) in one line
            logger.info(
                "FG-SBIR backbone: %s (%s) — the weights of init_model %s.",
                model.config.backbone_name_or_path or "custom", model.config.backbone_config.model_type, self.args.init_model,
            )
            return model
        if self.args.backbone_config is not None:
            model = FGSBIRModel(FGSBIRConfig(backbone_config=self.args.backbone_config, **kwargs))
            reason = "built from backbone_config, randomly initialised"
        else:
            model = FGSBIRModel.from_backbone(self.args.backbone, **kwargs)
            reason = "requested" if self.args.backbone else "chosen automatically (backbone: null)"
        # Which backbone a run trains matters for every figure it prints: say it, as Sketch-an-Anchor does.
        logger.info(
            "FG-SBIR backbone: %s (%s) — %s.",
            model.config.backbone_name_or_path or "custom",
            model.config.backbone_config.model_type,
            reason,
        )
        return model

    def build_transform(self, model):
        from hf_sbir.data import SbirImageTransform

        return SbirImageTransform(
            image_processor=image_processor_for_fg_backbone(model.config.backbone_config, self.args.image_size),
            image_size=self.args.image_size,
            sketch_ink_crop=self.args.sketch_ink_crop,
            sketch_stroke_width=self.args.sketch_stroke_width,
            empty_sketch="keep",
        )

    # -- data ------------------------------------------------------------------------------------
    def load_data(self):
        """The fine-grained `DatasetDict` (`train`, `test`) of `args.dataset`: a folder (`hf_sbir.data.fg_paired`)
        or `"embedded"` (`hf_sbir.data.fg_embedded`, generated offline)."""
        if self._data is None:
            if self.args.dataset == "embedded":
                from hf_sbir.data.fg_embedded import load_fg_embedded

                self._data = load_fg_embedded()
            elif self.args.split not in (None, "embedded"):
                # "embedded" is the config's default split (the generated category set's classes): left at the
                # default, a fine-grained folder keeps its own instance-level train/test, as before.
                self._data = self._load_zero_shot_pairs()
            else:
                from hf_sbir.data.fg_paired import load_fg_paired

                self._data = load_fg_paired(self.args.dataset, on_unmatched=self.method_args.get("on_unmatched", "raise"))
        return self._data

    def _load_zero_shot_pairs(self):
        """Class folders whose sketch names name their photo (Sketchy's `<photo-id>-<n>.png`), zero-shot over the
        classes of `args.split`: train on the seen classes' pairs, test each unseen sketch against every unseen
        photo (`hf_sbir.data.fg_class_folders`). The train split goes through the leak guard, as the category-level
        methods' does: zero-shot means zero-shot."""
        from hf_sbir.data import guard_training_set
        from hf_sbir.data.auto import dataset_folder
        from hf_sbir.data.fg_class_folders import load_fg_zero_shot

        data = load_fg_zero_shot(
            dataset_folder(self.args.dataset), self.args.split,
            on_unmatched=self.method_args.get("on_unmatched", "raise"), on_error=self.args.corrupt_images,
        )
        guard_training_set(data["train"], self.args.split, label_column="class")
        return data

    def _paired(self, data):
        from hf_sbir.data.fg_paired import is_fg_paired

        if data is not None and is_fg_paired(data) and {"train", "test"} & set(data):
            return data
        return self.load_data()

    def setup(self, model, data, transform, accelerator) -> None:
        data = self._paired(data)
        if "train" not in data:
            raise ValueError("The fine-grained dataset has no 'train' split.")
        self.transform = transform
        self.config = _unwrap(model).config
        train = data["train"]
        domains = train["domain"]
        self.sketches = train.select([i for i, d in enumerate(domains) if d == "sketch"])
        self.photos = train.select([i for i, d in enumerate(domains) if d == "photo"])
        self.photo_of = {pid: j for j, pid in enumerate(self.photos["pair_id"])}
        self.sketches_of: dict[str, list[int]] = {}
        for i, pid in enumerate(self.sketches["pair_id"]):
            self.sketches_of.setdefault(pid, []).append(i)
        self.pairs = sorted(p for p in self.sketches_of if p in self.photo_of)
        if len(self.pairs) < 2:
            raise ValueError(f"FG-SBIR training needs at least 2 photos with sketches; the train split has {len(self.pairs)}.")
        if self.use_ema:
            self.ema = ModelEMA(model, self.config.ema_decay)
        if self.distillation:
            self.unlabelled = self._unlabelled_photos()
            # Data parallelism: the main process trains and caches the teacher, the others load it from the cache.
            first = getattr(accelerator, "main_process_first", None)
            with first() if first is not None else contextlib.nullcontext():
                self.teacher = self._build_teacher(model, accelerator)
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)

    def _unlabelled_photos(self):
        from hf_sbir.data.fg_paired import load_unlabelled_photos

        folder = self.method_args.get("unlabelled_photos")
        if folder:
            return load_unlabelled_photos(folder, max_photos=self.method_args.get("max_unlabelled_photos"))
        logger.warning("fg_sbir distillation: no unlabelled_photos folder given; using the %d training photos instead.", len(self.photos))
        photos = self.photos.select_columns(["image", "domain", "id"])
        limit = self.method_args.get("max_unlabelled_photos")
        return photos.select(range(min(limit, len(photos)))) if limit else photos

    def _build_teacher(self, model, accelerator) -> nn.Module:
        from hf_sbir.models.fg_sbir import FGSBIRModel

        cache = Path(self.args.output_dir) / "teacher"
        if (cache / "model.safetensors").is_file():
            teacher = FGSBIRModel.from_pretrained(cache)
            logger.info("fg_sbir: loaded the cached photo teacher from %s.", cache)
        else:
            student = _unwrap(model)
            config = copy.deepcopy(student.config)
            config.use_distillation_token = False
            teacher = FGSBIRModel(config)
            # Start from the student's (pretrained) weights; the token and its projections are the student's own.
            teacher.load_state_dict(student.state_dict(), strict=False)
            iterations = int(self.method_args.get("teacher_iterations", 500))
            history = train_photo_teacher(
                teacher, self.unlabelled, self.transform, iterations,
                batch_size=int(self.method_args.get("teacher_batch_size") or self.args.batch_size),
                learning_rate=float(self.method_args.get("teacher_learning_rate") or self.args.learning_rate),
                margin=config.photo_margin, seed=self.args.seed, device=accelerator.device,
            )
            if history:
                logger.info("fg_sbir: photo teacher trained for %d steps (loss %.4f -> %.4f).", iterations, history[0], history[-1])
            if accelerator.is_main_process:
                teacher.save_pretrained(cache)
        teacher.eval().requires_grad_(False)
        return teacher.to(accelerator.device)

    def batch_plan(self, step: int, size: int) -> dict[str, list]:
        """The global batch of `step`: `size` training pairs (at most one per photo), each with its sketch, another
        sketch of the same photo, a negative pair's sketch and photo and a seed for the structural augmentation;
        plus, with distillation, unlabelled photo rows (`unlabelled_per_step` per `batch_size` items)."""
        rng = random.Random(f"fg_sbir:{self.args.seed}:{step}")
        anchors = rng.sample(self.pairs, min(size, len(self.pairs)))
        items = []
        for pair in anchors:
            own = self.sketches_of[pair]
            sketch = rng.choice(own)
            others = [i for i in own if i != sketch]
            negative = self.pairs[rng.randrange(len(self.pairs) - 1)]
            if negative == pair:  # draw uniformly among the other pairs
                negative = self.pairs[-1]
            positive = rng.choice(others) if others else sketch
            items.append((sketch, positive, rng.choice(self.sketches_of[negative]), self.photo_of[pair], self.photo_of[negative], rng.getrandbits(64)))
        plan = {"pairs": items, "unlabelled": []}
        if self.teacher is not None:
            per_step = int(self.method_args.get("unlabelled_per_step", self.args.batch_size))
            count = min(per_step * size // self.args.batch_size, len(self.unlabelled))
            if count >= 2:
                plan["unlabelled"] = rng.sample(range(len(self.unlabelled)), count)
        return plan

    def make_batch(self, step: int, plan) -> dict[str, torch.Tensor]:
        items = plan["pairs"]
        size = len(items)
        sketch_rows, positive_rows, negative_rows, photo_rows, photo_negative_rows, seeds = (list(c) for c in zip(*items))
        rows = {"sketch": sketch_rows, "sketch_positive": positive_rows, "sketch_negative": negative_rows}
        batch = {k: self.transform.batch(list(self.sketches.select(v)["image"]), ["sketch"] * size) for k, v in rows.items()}
        photos = self.photos.select(photo_rows)["image"]
        augmented = [structural_augment(img, random.Random(s)) for img, s in zip(photos, seeds)]
        batch["photo"] = self.transform.batch(list(photos), ["photo"] * size)
        batch["photo_augmented"] = self.transform.batch(augmented, ["photo"] * size)
        batch["photo_negative"] = self.transform.batch(list(self.photos.select(photo_negative_rows)["image"]), ["photo"] * size)
        if len(plan["unlabelled"]) >= 2:
            images = self.unlabelled.select(plan["unlabelled"])["image"]
            batch["unlabelled"] = self.transform.batch(list(images), ["photo"] * len(images))
        return batch

    # -- optimisation ----------------------------------------------------------------------------
    def training_step(self, model, batch, step):
        from hf_sbir.losses.fg_sbir import FG_BATCH_GROUPS, FGSBIRLoss

        sizes = {name: batch[name].shape[0] for name in FG_BATCH_GROUPS if name in batch}
        # One forward pass over every group (one call through DDP).
        out = model(pixel_values=torch.cat([batch[name] for name in sizes]))
        teacher = None
        if self.teacher is not None:
            names = [name for name in ("photo", "unlabelled") if name in batch]
            with torch.no_grad():
                self.teacher.to(batch["photo"].device)
                embedded = self.teacher(pixel_values=torch.cat([batch[k] for k in names])).embeddings
            teacher = dict(zip(names, embedded.split([sizes[k] for k in names])))
        losses = FGSBIRLoss(self.config)(out, sizes, teacher)
        return losses.total, losses.as_floats()

    def after_optimizer_step(self, model, step: int) -> None:
        if self.ema is not None:
            self.ema.update(model)

    def state_dict(self) -> dict[str, Any]:
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state.get("ema"):
            return
        if self.ema is None:
            if not self.use_ema:
                return
            self._pending_state = state  # setup() has not run yet: restore there
            return
        self.ema.load_state_dict(state["ema"])
        self._pending_state = None

    # -- evaluation and export -------------------------------------------------------------------
    def evaluate(self, model, data, transform):
        data = self._paired(data)
        if "test" not in data:
            raise ValueError("The fine-grained dataset has no 'test' split to evaluate on.")
        from hf_sbir.retrieval.evaluation import evaluate_fine_grained

        return evaluate_fine_grained(
            model, data["test"], transform, batch_size=self.args.eval_batch_size,
            max_queries=self.args.max_eval_queries, seed=self.args.seed, progress=self.args.progress,
        ).to_dict()

    def model_to_save(self, model):
        return self.ema.model if self.ema is not None else model

    def model_card_info(self):
        name = "fg-embedded" if self.args.dataset == "embedded" else Path(self.args.dataset).name
        return {
            "task_name": "Fine-grained sketch-based image retrieval",
            "dataset_type": name,
            "dataset_name": name,
            "dataset_split": "test",
            "tags": ["fine-grained"],
        }


def image_processor_for_fg_backbone(backbone_config, image_size: int | None = None):
    """The image processor of an FG-SBIR backbone (PVT-v2 or the packaged hybrid): square bicubic resize and the
    backbone's normalisation (`hf_sbir.backbones.processing`; ImageNet mean/std for PVT-v2)."""
    from hf_sbir.backbones.processing import image_processor_for_backbone

    return image_processor_for_backbone(backbone_config, image_size=image_size)


__all__ = [
    "FGSBIRMethod",
    "ModelEMA",
    "image_processor_for_fg_backbone",
    "structural_augment",
    "train_photo_teacher",
]
