"""Semantic Anchors (Sketch-an-Anchor §3.3, §3.5): one word vector and one visual class centre per
seen class, plus what the randomised input needs (each class's nearest word vectors, each class's
feature standard deviation).

    anchors = build_semantic_anchors(model, photos, transform, class_names, text_embedder)
    word, visual = anchors.sample(generator)      # randomised anchors for one training step
    adapted = model.adapt_anchors(word, visual)   # GCN, eq. 5
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

logger = logging.getLogger("hf_sbir")

_TENSORS = ("word", "word_neighbours", "visual_mean", "visual_std")


@dataclass
class SemanticAnchors:
    """Per-class anchors, rows in `class_names` order.

    Args:
        class_names: the C seen classes.
        word: (C, Dw) class-name vectors E_word, or None.
        word_neighbours: (C, k, Dw) the k nearest word vectors of each class, its own first, or None.
        visual_mean: (C, Dv) class centres of the backbone's photo features E_visual, or None.
        visual_std: (C, Dv) per-dimension standard deviation of those features, or None.
        meta: provenance (text provider, backbone, number of photos per class).
    """

    class_names: list[str]
    word: torch.Tensor | None = None
    word_neighbours: torch.Tensor | None = None
    visual_mean: torch.Tensor | None = None
    visual_std: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        n = len(self.class_names)
        for name in _TENSORS:
            value = getattr(self, name)
            if value is not None and value.shape[0] != n:
                raise ValueError(f"anchors.{name} has {value.shape[0]} rows but there are {n} class names.")

    def sample(
        self,
        generator: torch.Generator | None = None,
        randomize_word: bool = True,
        randomize_visual: bool = True,
        noise_scale: float = 1.0,
        use_word: bool = True,
        use_visual: bool = True,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Anchors for one training step (§3.5): each word vector swapped for one of its nearest words
        (uniformly among the k stored, its own included), each visual anchor drawn from
        N(mean, (noise_scale * std)^2). Returns (word (C, Dw) or None, visual (C, Dv) or None)."""
        word = visual = None
        if use_word:
            if self.word is None:
                raise ValueError("These anchors have no word vectors; build them with a text embedder.")
            word = self.word
            if randomize_word and self.word_neighbours is not None:
                k = self.word_neighbours.shape[1]
                pick = torch.randint(k, (len(self.class_names),), generator=generator)
                word = self.word_neighbours[torch.arange(len(self.class_names)), pick]
        if use_visual:
            if self.visual_mean is None:
                raise ValueError("These anchors have no visual centres; build them from training photos.")
            visual = self.visual_mean
            if randomize_visual and self.visual_std is not None and noise_scale > 0:
                noise = torch.randn(self.visual_mean.shape, generator=generator)
                visual = self.visual_mean + noise_scale * self.visual_std * noise
        return word, visual

    def to(self, device) -> "SemanticAnchors":
        moved = {name: getattr(self, name).to(device) if getattr(self, name) is not None else None for name in _TENSORS}
        return SemanticAnchors(class_names=self.class_names, meta=self.meta, **moved)

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {n: getattr(self, n).contiguous() for n in _TENSORS if getattr(self, n) is not None}
        save_file(tensors, str(directory / "anchors.safetensors"))
        (directory / "anchors.json").write_text(json.dumps({"class_names": self.class_names, "meta": self.meta}, indent=2))

    @classmethod
    def load(cls, directory: str | Path) -> "SemanticAnchors":
        directory = Path(directory)
        if not (directory / "anchors.json").is_file() or not (directory / "anchors.safetensors").is_file():
            raise FileNotFoundError(f"No saved anchors in {directory} (expected anchors.json and anchors.safetensors).")
        try:
            info = json.loads((directory / "anchors.json").read_text())
            tensors = load_file(str(directory / "anchors.safetensors"))
        except Exception as err:  # truncated/garbage files: safetensors and json raise several types
            raise ValueError(f"Corrupt saved anchors in {directory} ({type(err).__name__}: {err})") from None
        return cls(class_names=info["class_names"], meta=info.get("meta", {}), **{n: tensors.get(n) for n in _TENSORS})


@torch.no_grad()
def class_feature_statistics(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class mean and (population) std of features (N, D) with labels (N,) in [0, num_classes).

    Returns (mean (C, D), std (C, D), counts (C,)). A class without samples raises a clear error."""
    counts = torch.bincount(labels, minlength=num_classes)
    if (counts == 0).any():
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"No training photos for anchor classes at indices {missing}: visual anchors need at least one each.")
    one_hot = torch.zeros(num_classes, features.shape[0], dtype=features.dtype)
    one_hot[labels, torch.arange(features.shape[0])] = 1.0
    mean = one_hot @ features / counts[:, None]
    var = one_hot @ (features**2) / counts[:, None] - mean**2
    return mean, var.clamp_min(0).sqrt(), counts


@torch.no_grad()
def build_semantic_anchors(
    model,
    photos,
    transform,
    class_names: list[str],
    label_names: list[str] | None = None,
    text_embedder=None,
    num_neighbours: int = 10,
    batch_size: int = 32,
    use_word: bool = True,
    use_visual: bool = True,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> SemanticAnchors:
    """Build the Semantic Anchors of `class_names` (the seen classes, in anchor order).

    Args:
        model: a `SketchAnAnchorModel` (its `get_image_features` gives the visual features).
        photos: a `datasets.Dataset` of training photos with `image` and `label` columns.
        transform: `(PIL image, domain) -> FloatTensor (3, H, W)`.
        label_names: the dataset's label names (index -> name); defaults to the ClassLabel names.
        text_embedder: a class-name embedding provider (`hf_sbir.anchors.text`), needed for word anchors.
    """
    from tqdm.auto import tqdm

    word = neighbours = mean = std = None
    meta: dict = {"num_neighbours": num_neighbours}
    if use_word:
        if text_embedder is None:
            raise ValueError("Word anchors need a text_embedder (see hf_sbir.anchors.text.get_class_name_embedder).")
        word = text_embedder.embed(class_names).float()
        neighbours = text_embedder.neighbours(class_names, k=num_neighbours).float()
        meta["text_embedder"] = text_embedder.to_dict()
    if use_visual:
        if label_names is None:
            label_names = photos.features["label"].names
        index_of = {name: i for i, name in enumerate(class_names)}
        device = device or next(model.parameters()).device
        was_training = model.training
        model.eval()
        feats, labels = [], []
        for start in tqdm(range(0, len(photos), batch_size), desc="visual anchors", disable=not progress):
            batch = photos[start : start + batch_size]
            keep = [i for i, lab in enumerate(batch["label"]) if label_names[lab] in index_of]
            if not keep:
                continue
            pixels = torch.stack([transform(batch["image"][i], "photo") for i in keep]).to(device)
            feats.append(model.get_image_features(pixels).float().cpu())
            labels.extend(index_of[label_names[batch["label"][i]]] for i in keep)
        model.train(was_training)
        if not feats:
            raise ValueError("None of the photos belongs to the anchor classes: cannot build visual anchors.")
        mean, std, counts = class_feature_statistics(torch.cat(feats), torch.tensor(labels), len(class_names))
        meta["photos_per_class"] = counts.tolist()
        meta["backbone"] = getattr(model.config, "backbone_name_or_path", None)
    return SemanticAnchors(class_names=list(class_names), word=word, word_neighbours=neighbours, visual_mean=mean, visual_std=std, meta=meta)
