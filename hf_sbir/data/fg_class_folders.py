"""Fine-grained (instance-level) zero-shot SBIR from class folders whose sketch names name their photo.

Sketchy (and sketchy-small) lay out category-level data, but every sketch was drawn from one photo and its
file name says which:

```
<root>/sketch/<class>/<photo-id>-<n>.png   ->   <root>/photo/<class>/<photo-id>.jpg
```

(any layout `hf_sbir.data.folder` reads, and the pairing rules of `hf_sbir.data.fg_paired`: `<stem>.png`,
`<stem>_<n>.png` or `<stem>-<n>.png` pair with the photo `<stem>.*` of the same class). With a zero-shot
split this gives the fine-grained `DatasetDict` that `fg_paired` gives for QMUL-style folders (what the
FG-SBIR method trains and evaluates on), zero-shot over classes:

- `train`: the sketches and photos of the split's *seen* classes present on disk (training pairs; photos
  without a sketch stay as negatives);
- `test`: the sketches of the *unseen* classes (queries) and ALL photos of the unseen classes (gallery):
  each sketch is searched against every unseen-class photo, its source photo the one relevant item
  (Acc@1/@10 via `fine_grained_split`).

Rows: `image`, `domain`, `pair_id` (`"<class>/<photo stem>"`: photo ids need not be unique across
classes), `id` (path relative to `<root>`) and `class` (the class folder's name, for the leak guard and
per-class breakdowns). Split classes absent from the folder are named once (`MissingSplitClassesWarning`)
and recorded in the metadata, as the category-level loaders do.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Sequence

from datasets import Dataset, DatasetDict, DatasetInfo, Features, NamedSplit, Value
from datasets import Image as ImageFeature

from hf_sbir.data.core import (
    ImageRecord,
    PathLike,
    check_root,
    scan_class_folders,
    verify_records,
    warn_missing_classes,
)
from hf_sbir.data.fg_paired import SPLITS, UnmatchedSketchError, match_sketch_to_photo
from hf_sbir.data.folder import folder_class_dirs
from hf_sbir.data.zero_shot import SplitLike, check_no_leak, load_split, normalize_class_name


def fg_class_folder_features() -> Features:
    return Features(
        {
            "image": ImageFeature(),
            "domain": Value("string"),
            "pair_id": Value("string"),
            "id": Value("string"),
            "class": Value("string"),
        }
    )


def _pair_class(class_name: str, sketches: list[ImageRecord], photos: list[ImageRecord]):
    """`(rows, unmatched sketches)` of one class; rows are `(record, pair_id)`."""
    by_stem: dict[str, ImageRecord] = {}
    for record in photos:
        if record.path.stem in by_stem:
            raise ValueError(
                f"Two photos of class {class_name!r} share the stem {record.path.stem!r}: "
                f"{by_stem[record.path.stem].path} and {record.path}; a sketch could not tell which it was drawn from."
            )
        by_stem[record.path.stem] = record
    rows, unmatched = [], []
    for record in sketches:
        stem = match_sketch_to_photo(record.path.stem, by_stem)
        if stem is None:
            unmatched.append(record.path)
        else:
            rows.append((record, f"{class_name}/{stem}"))
    rows += [(record, f"{class_name}/{stem}") for stem, record in by_stem.items()]
    return rows, unmatched


def load_fg_zero_shot(
    root: PathLike,
    split: SplitLike,
    splits: Sequence[str] = SPLITS,
    on_unmatched: str = "raise",
    on_error: str = "warn",
    layout: str = "auto",
    verify: bool = True,
) -> DatasetDict:
    """Instance-level pairs of a class-folder dataset, zero-shot over the classes of `split` (module docstring).

    Args:
        root: the dataset folder (e.g. `../shared/data/sketchy-small`).
        split: a shipped split name (`"sketchy_sake"`, `"sketchy_no"`, ...) or a `ZeroShotSplit`.
        splits: which of `"train"` (seen classes) and `"test"` (unseen classes) to build.
        on_unmatched: `"raise"` (default) or `"warn"` (skip, with a warning) for sketches that name no photo.
        on_error: `"warn"` skips unreadable images with a warning, `"raise"` raises `CorruptImageError`.
        layout: `"auto"`, `"domain_first"` or `"class_first"` (as `load_sbir_folder`).
        verify: check every file first (`hf_sbir.data.core.verify_image`).

    Returns:
        `DatasetDict` with the requested splits; columns `image`, `domain`, `pair_id`, `id`, `class`.

    Raises:
        FileNotFoundError: the root is missing, or none of a requested part's classes have images.
        UnmatchedSketchError: a sketch names no photo of its class (`on_unmatched="raise"`).
        ZeroShotLeakError: an unseen class would reach `train`.
    """
    if on_unmatched not in ("raise", "warn"):
        raise ValueError(f"on_unmatched must be 'raise' or 'warn', got {on_unmatched!r}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}; got {list(splits)}")
    root = check_root(root)
    split = load_split(split)
    records = scan_class_folders(folder_class_dirs(root, layout))

    on_disk = {normalize_class_name(r.class_name) for r in records}
    missing_seen = [c for c in split.train_classes if normalize_class_name(c) not in on_disk]
    missing_unseen = [c for c in split.test_classes if normalize_class_name(c) not in on_disk]
    warn_missing_classes(split, root, missing_seen, missing_unseen)
    parts = {"train": split.train_classes, "test": split.test_classes}
    features = fg_class_folder_features()
    result = {}
    for part in splits:
        wanted = {normalize_class_name(c) for c in parts[part]}
        chosen = [r for r in records if normalize_class_name(r.class_name) in wanted]
        if not chosen:
            kind = "seen" if part == "train" else "unseen"
            raise FileNotFoundError(
                f"none of the {len(parts[part])} {kind} class(es) of split {split.name!r} have images under {root}; "
                "pass the folder that holds them or another split."
            )
        if part == "train":
            check_no_leak({r.class_name for r in chosen}, split.test_classes)  # zero-shot means zero-shot
        if verify:
            chosen = verify_records(chosen, on_error)
        by_class: dict[str, dict[str, list[ImageRecord]]] = {}
        for r in chosen:
            by_class.setdefault(r.class_name, {"sketch": [], "photo": []})[r.domain].append(r)
        rows, unmatched = [], []
        for class_name, domains in sorted(by_class.items()):
            class_rows, class_unmatched = _pair_class(class_name, domains["sketch"], domains["photo"])
            rows += class_rows
            unmatched += class_unmatched
        if unmatched:
            error = UnmatchedSketchError(unmatched, part, root / "photo")
            if on_unmatched == "raise":
                raise error
            warnings.warn(f"Skipping: {error}", UserWarning, stacklevel=2)
        rows.sort(key=lambda row: row[0].path.relative_to(root).as_posix())
        sketch_pairs = {pair for r, pair in rows if r.domain == "sketch"}
        photo_count = sum(r.domain == "photo" for r, _ in rows)
        meta = {
            "dataset": root.name,
            "layout": "class_folders",
            "split": split.name,
            "part": part,
            "task": "fine-grained",
            "num_classes": len(by_class),
            "num_sketches": len(rows) - photo_count,
            "num_photos": photo_count,
            "photos_without_sketch": photo_count - len(sketch_pairs),
            "skipped_unmatched": len(unmatched),
            "missing_seen_classes": missing_seen,
            "missing_unseen_classes": missing_unseen,
        }
        data = {
            "image": [str(r.path) for r, _ in rows],
            "domain": [r.domain for r, _ in rows],
            "pair_id": [pair for _, pair in rows],
            "id": [r.path.relative_to(root).as_posix() for r, _ in rows],
            "class": [r.class_name for r, _ in rows],
        }
        info = DatasetInfo(description=json.dumps(meta, sort_keys=True), features=features)
        result[part] = Dataset.from_dict(data, features=features, info=info, split=NamedSplit(part))
    return DatasetDict(result)


__all__ = ["fg_class_folder_features", "load_fg_zero_shot"]
