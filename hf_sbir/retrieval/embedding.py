"""Embedding a set of images with a model, and turning the sources we accept into items.

A *source* of images is one of

* a `datasets.Dataset` with an image column (``"image"``; decoded to PIL by `datasets`) and
  optionally ``label``, ``domain``, ``id`` / ``pair_id`` columns;
* a folder, searched recursively for image files (label = the top-level sub-folder, the
  ``photo/<class>/<file>.jpg`` layout of Sketchy, TU-Berlin and sbir-mini);
* a list of PIL images or of file paths.

The model contract is the package's: ``model(pixel_values=batch).embeddings`` is ``(B, D)``; any
``nn.Module`` whose output has an ``embeddings`` attribute (or is a plain tensor) works.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ImageLoadError", "embed_images", "collect_items", "IMAGE_EXTENSIONS", "list_image_files"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
Transform = Callable[[Any, str | None], torch.Tensor]


class ImageLoadError(OSError):
    """An image could not be read or decoded; the message names its index and path."""


def list_image_files(folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files under ``folder`` (recursive, hidden files skipped), sorted by relative path."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"no such image folder: {root}")
    suffixes = {e.lower() for e in extensions}
    files = [
        p
        for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in suffixes and not any(part.startswith(".") for part in p.relative_to(root).parts)
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def _open_image(path: str | os.PathLike, index: int):
    from PIL import Image

    try:
        image = Image.open(path)
        image.load()
    except Exception as error:  # PIL raises OSError, SyntaxError, ValueError, ... for bad files
        raise ImageLoadError(f"could not read image {index} ({path}): {type(error).__name__}: {error}") from error
    return image


def _is_dataset(obj: Any) -> bool:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        return False
    return isinstance(obj, datasets.Dataset)


def _dataset_image_path(dataset, index: int, image_column: str) -> str | None:
    """The file path behind a dataset row's image, without decoding it (None if unknown)."""
    import datasets

    feature = dataset.features.get(image_column)
    if not isinstance(feature, datasets.Image):
        return None
    try:
        raw = dataset.select([index]).cast_column(image_column, datasets.Image(decode=False))[0][image_column]
    except Exception:
        return None
    return raw.get("path") if isinstance(raw, dict) else None


@dataclass
class _ImageSource:
    """Uniform random access to the images of any accepted source (index -> (PIL image, domain))."""

    source: Any
    image_column: str = "image"
    domain_column: str = "domain"
    _columns: list[str] = field(default_factory=list)

    def __post_init__(self):
        if _is_dataset(self.source):
            if self.image_column not in self.source.column_names:
                raise ValueError(
                    f"dataset has no {self.image_column!r} column (columns: {self.source.column_names}); "
                    "pass image_column="
                )
            self._columns = [self.image_column]
            if self.domain_column in self.source.column_names:
                self._columns.append(self.domain_column)
            self.source = self.source.select_columns(self._columns)

    def __len__(self) -> int:
        return len(self.source)

    @property
    def has_domain(self) -> bool:
        return self.domain_column in self._columns

    def describe(self, index: int) -> str:
        if _is_dataset(self.source):
            path = _dataset_image_path(self.source, index, self.image_column)
            return f"dataset row {index}" + (f" ({path})" if path else "")
        item = self.source[index]
        return f"image {index}" + (f" ({item})" if isinstance(item, (str, os.PathLike)) else "")

    def batch(self, start: int, stop: int) -> tuple[list, list | None]:
        """Images ``start:stop`` (PIL) and their per-row domains (or None)."""
        if _is_dataset(self.source):
            try:
                rows = self.source[start:stop]
                images = rows[self.image_column]
            except Exception:
                # Find the culprit row to name it.
                for index in range(start, stop):
                    try:
                        self.source[index][self.image_column]
                    except Exception as error:
                        raise ImageLoadError(
                            f"could not read {self.describe(index)}: {type(error).__name__}: {error}"
                        ) from error
                raise
            for offset, image in enumerate(images):
                if image is None:
                    raise ImageLoadError(f"{self.describe(start + offset)} has no image (None)")
            return images, (rows[self.domain_column] if self.has_domain else None)
        images = []
        for index in range(start, stop):
            item = self.source[index]
            if isinstance(item, (str, os.PathLike)):
                item = _open_image(item, index)
            elif item is None:
                raise ImageLoadError(f"image {index} is None")
            images.append(item)
        return images, None


def _model_device(model: torch.nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    for tensor in model.buffers():
        return tensor.device
    return torch.device("cpu")


def _embeddings_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    embeddings = getattr(output, "embeddings", None)
    if embeddings is None and isinstance(output, dict):
        embeddings = output.get("embeddings")
    if embeddings is None:
        raise TypeError(
            f"the model returned {type(output).__name__} without an `embeddings` field; the retrieval "
            "contract is `model(pixel_values=batch).embeddings` -> (batch, dim)"
        )
    return embeddings


@torch.no_grad()
def embed_images(
    model: torch.nn.Module,
    images: Any,
    transform: Transform,
    domain: str | None,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    progress: bool = True,
    *,
    image_column: str = "image",
    domain_column: str = "domain",
    normalize: bool = True,
    model_kwargs: dict | None = None,
    desc: str | None = None,
) -> torch.Tensor:
    """Embed every image of ``images`` with ``model``; returns a float32 ``(N, D)`` CPU tensor.

    Args:
        model: any ``nn.Module`` with ``model(pixel_values=batch, **model_kwargs).embeddings`` of
            shape ``(B, D)``. It is put in eval mode for the call (and restored afterwards);
            gradients are off.
        images: a `datasets.Dataset` with an image column (and optionally a ``domain`` column),
            a list of PIL images or of file paths (str / PathLike), in the order to embed, or a
            folder (its images in `list_image_files` order).
        transform: ``transform(pil_image, domain) -> FloatTensor (3, H, W)``.
        domain: ``"sketch"`` or ``"photo"``, passed to ``transform`` for every image. ``None``
            uses the dataset's ``domain`` column row by row (an error if there is none).
        batch_size: images per forward pass.
        device: where the model runs; default: the device of the model's parameters.
        progress: show a tqdm progress bar.
        image_column / domain_column: column names for a `datasets.Dataset`.
        normalize: L2-normalise the embeddings (default), so dot products are cosine similarities.
        model_kwargs: extra keyword arguments for every model call.
        desc: progress-bar label.

    Raises:
        ImageLoadError: an image cannot be read/decoded; the message names its index and path.
    """
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(images, (str, os.PathLike)):  # a folder
        images, _ = collect_items(images)
    source = _ImageSource(images, image_column=image_column, domain_column=domain_column)
    if domain is None and not source.has_domain:
        raise ValueError(f"domain=None needs a {domain_column!r} column in the dataset; pass domain='sketch' or 'photo'")
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        with tqdm(total=len(source), desc=desc or f"embedding {domain or 'images'}", unit="img", disable=not progress) as bar:
            for start in range(0, len(source), batch_size):
                stop = min(start + batch_size, len(source))
                pil_images, domains = source.batch(start, stop)
                pixels = []
                for offset, image in enumerate(pil_images):
                    row_domain = domain if domain is not None else domains[offset]
                    try:
                        pixels.append(transform(image, row_domain))
                    except ImageLoadError:
                        raise
                    except OSError as error:  # lazily decoded files fail inside the transform
                        raise ImageLoadError(
                            f"could not decode {source.describe(start + offset)}: {error}"
                        ) from error
                batch = torch.stack(pixels).to(device)
                embeddings = _embeddings_of(model(pixel_values=batch, **(model_kwargs or {})))
                if embeddings.dim() != 2 or embeddings.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"model embeddings must be (batch, dim); got {tuple(embeddings.shape)} for a batch of {batch.shape[0]}"
                    )
                embeddings = embeddings.float()
                if normalize:
                    embeddings = F.normalize(embeddings, dim=-1)
                chunks.append(embeddings.cpu())
                bar.update(stop - start)
    finally:
        model.train(was_training)
    if not chunks:
        raise ValueError("no images to embed")
    return torch.cat(chunks)


def _json_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def collect_items(
    source: Any,
    *,
    image_column: str = "image",
    label_column: str = "label",
    extensions: Sequence[str] = IMAGE_EXTENSIONS,
) -> tuple[Any, list[dict]]:
    """Normalise a source into ``(images, metadata)``: something `embed_images` accepts, plus one
    JSON-serialisable dict per image.

    * folder: every image file below it (recursive, sorted by relative path); metadata
      ``{"id": relative path, "path": absolute path, "label": top-level sub-folder}`` (label is
      None for files directly in the folder).
    * `datasets.Dataset`: metadata = the row's scalar columns (not the image); the
      ``label_column`` is stored under ``"label"``, as its class *name* when it is a `ClassLabel`
      (so two datasets with different class orders still compare by name).
    * list of paths: ``{"id": str(path), "path": str(path)}``; list of PIL images: ``{}``.
    """
    if isinstance(source, (str, os.PathLike)):
        root = Path(source)
        files = list_image_files(root, extensions)
        if not files:
            raise ValueError(f"no image files ({', '.join(extensions)}) under {root}")
        metadata = []
        for path in files:
            relative = path.relative_to(root)
            metadata.append(
                {
                    "id": relative.as_posix(),
                    "path": str(path.resolve()),
                    "label": relative.parts[0] if len(relative.parts) > 1 else None,
                }
            )
        return [str(p) for p in files], metadata
    if _is_dataset(source):
        import datasets

        if image_column not in source.column_names:
            raise ValueError(f"dataset has no {image_column!r} column (columns: {source.column_names})")
        scalar_columns = [
            name
            for name, feature in source.features.items()
            if name != image_column and isinstance(feature, (datasets.Value, datasets.ClassLabel))
        ]
        table = source.select_columns(scalar_columns).to_dict() if scalar_columns else {}
        metadata = [{} for _ in range(len(source))]
        for name in scalar_columns:
            feature = source.features[name]
            values = table[name]
            if isinstance(feature, datasets.ClassLabel):
                values = [None if v is None or v < 0 else feature.int2str(v) for v in values]
            key = "label" if name == label_column else name
            if name == "label" and label_column != "label" and label_column in scalar_columns:
                key = "label_original"  # the chosen label column takes the "label" key
            for row, value in zip(metadata, values):
                row[key] = value
        return source, metadata
    if isinstance(source, (list, tuple)):
        metadata = [
            {"id": str(item), "path": str(item)} if isinstance(item, (str, os.PathLike)) else {} for item in source
        ]
        return list(source), metadata
    raise TypeError(
        f"unsupported image source {type(source).__name__}: pass a datasets.Dataset, a folder, or a list of "
        "PIL images / file paths"
    )
