"""Fine-grained (instance-level) SBIR data: sketches paired with the one photo they were drawn from.

Accepted layouts (first match wins; `<root>` is the folder you pass):

```
QMUL Shoe-V2 / Chair-V2 ("A" = sketches, "B" = photos)   domain first                   split first
<root>/trainA/<sketch>   <root>/trainB/<photo>            <root>/sketch/train/<sketch>   <root>/train/sketch/<sketch>
<root>/testA/<sketch>    <root>/testB/<photo>             <root>/sketch/test/<sketch>    <root>/train/photo/<photo>
                                                          <root>/photo/train/<photo>     <root>/test/sketch/<sketch>
                                                          <root>/photo/test/<photo>      <root>/test/photo/<photo>
```

Domain folders may also be spelled `sketches`, and `photos`, `image` or `images`. Image files (.png
.jpg .jpeg .bmp .gif .webp .tif .tiff, any case) lie directly in the folder; other files, hidden
files and sub-folders are ignored.

Pairing, within each split, by file stem: a sketch `<stem>.png` belongs to the photo `<stem>.*`, else
a sketch `<photo_stem>_<n>.png` (QMUL: `2429245009_1.png` -> photo `2429245009.jpg`) or
`<photo_stem>-<n>.png` (Sketchy) to the photo `<photo_stem>.*`. A sketch that matches no photo raises a
`ValueError` naming it (`on_unmatched="warn"` skips it with a warning instead). Photos without a sketch
stay in the split (gallery distractors at test time, negatives in training).

Rows (`datasets.DatasetDict` with `train` and `test`): `image` (`datasets.Image()`, decoded on
access), `domain` (`"sketch"` / `"photo"`), `pair_id` (the photo's stem: a sketch and its photo
share it), `id` (path relative to `<root>`, `/` separators). `load_unlabelled_photos(folder)` reads a
folder of photos without sketches (e.g. UT-Zappos50K for shoes), recursively, into a `Dataset` with
`image`, `domain` (`"photo"`) and `id`.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path
from typing import Optional, Sequence, Union

from datasets import Dataset, DatasetDict, DatasetInfo, Features, NamedSplit, Value
from datasets import Image as ImageFeature

from hf_sbir.data.core import CorruptImageError, CorruptImageWarning, is_image_file, verify_image

PathLike = Union[str, os.PathLike]
SPLITS = ("train", "test")
SKETCH_DIR_NAMES = ("sketch", "sketches")
PHOTO_DIR_NAMES = ("photo", "photos", "image", "images")
QMUL_DIRS = {("train", "sketch"): "trainA", ("test", "sketch"): "testA", ("train", "photo"): "trainB", ("test", "photo"): "testB"}
_INSTANCE_SUFFIX = re.compile(r"^(?P<stem>.+)[_-]\d+$")

LAYOUT_HELP = (
    "expected <root>/{trainA,testA} (sketches) + <root>/{trainB,testB} (photos) as in QMUL Shoe-V2/Chair-V2, "
    "or <root>/{sketch,photo}/{train,test}, or <root>/{train,test}/{sketch,photo}"
)


class UnmatchedSketchError(ValueError):
    """Sketches whose file stem names no photo of their split. `paths` holds them."""

    def __init__(self, paths: Sequence[Path], split: str, photo_folder: Path):
        self.paths = [str(p) for p in paths]
        shown = ", ".join(self.paths[:5]) + (f" and {len(self.paths) - 5} more" if len(self.paths) > 5 else "")
        super().__init__(
            f"{len(self.paths)} {split!r} sketch(es) match no photo in {photo_folder}: {shown}. A sketch named "
            "<stem>.png, <stem>_<n>.png or <stem>-<n>.png pairs with the photo <stem>.<ext> of the same split. "
            "Pass on_unmatched='warn' to skip them."
        )


def fg_paired_features() -> Features:
    return Features({"image": ImageFeature(), "domain": Value("string"), "pair_id": Value("string"), "id": Value("string")})


def _first_dir(parent: Path, names: Sequence[str]) -> Optional[Path]:
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    return None


def detect_fg_layout(root: PathLike) -> tuple[str, dict[tuple[str, str], Path]]:
    """Return `(layout name, {(split, domain): folder})` for a fine-grained SBIR root (see the module docstring).

    Raises:
        FileNotFoundError: the root is missing, or a layout is recognised but some of its four folders are missing
            (the message names them), or no layout fits.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Fine-grained SBIR dataset root not found (or not a directory): {root}")
    candidates = []
    # QMUL: any of trainA/testA/trainB/testB present.
    qmul = {key: root / name for key, name in QMUL_DIRS.items()}
    candidates.append(("qmul", qmul, any(p.is_dir() for p in qmul.values())))
    sketch_dir, photo_dir = _first_dir(root, SKETCH_DIR_NAMES), _first_dir(root, PHOTO_DIR_NAMES)
    if sketch_dir or photo_dir:
        folders = {}
        for domain, parent, names in (("sketch", sketch_dir, SKETCH_DIR_NAMES), ("photo", photo_dir, PHOTO_DIR_NAMES)):
            for split in SPLITS:
                folders[(split, domain)] = (parent or root / names[0]) / split
        candidates.append(("domain_first", folders, True))
    if any((root / split).is_dir() for split in SPLITS):
        folders = {}
        for split in SPLITS:
            for domain, names in (("sketch", SKETCH_DIR_NAMES), ("photo", PHOTO_DIR_NAMES)):
                folders[(split, domain)] = _first_dir(root / split, names) or root / split / names[0]
        candidates.append(("split_first", folders, True))
    for name, folders, present in candidates:
        if not present:
            continue
        missing = [str(p) for p in folders.values() if not p.is_dir()]
        if missing:
            hint = ""
            if name == "domain_first" and sketch_dir is not None and not any((sketch_dir / s).is_dir() for s in SPLITS):
                # Sketchy's sketch/<class>/<photo-id>-<n>.png: pairs exist, but the train/test cut is by class.
                hint = (
                    " Its sketch/ folder holds class folders: for instance-level pairs split zero-shot by class, use "
                    "hf_sbir.data.fg_class_folders.load_fg_zero_shot(root, split)."
                )
            raise FileNotFoundError(
                f"{root} looks like the {name!r} fine-grained layout but lacks: {', '.join(missing)} ({LAYOUT_HELP}).{hint}"
            )
        return name, folders
    raise FileNotFoundError(f"Cannot recognise a fine-grained SBIR layout in {root}: {LAYOUT_HELP}.")


def _image_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)
    if not files:
        others = sorted({p.suffix.lower() for p in folder.iterdir() if p.is_file() and p.suffix})
        hint = f" (it holds {', '.join(others)} files: rasterise or convert them first)" if others else ""
        raise FileNotFoundError(f"No image files in {folder}{hint}.")
    return files


def _verify(files: list[Path], on_error: str) -> list[Path]:
    kept = []
    for path in files:
        reason = verify_image(path)
        if reason is None:
            kept.append(path)
        elif on_error == "raise":
            raise CorruptImageError(path, reason)
        else:
            warnings.warn(f"Skipping corrupt or unreadable image file: {path} ({reason})", CorruptImageWarning, stacklevel=3)
    return kept


def match_sketch_to_photo(sketch_stem: str, photo_stems: set[str] | dict) -> Optional[str]:
    """The photo stem a sketch stem pairs with (`<stem>`, `<stem>_<n>`, `<stem>-<n>`), or None."""
    if sketch_stem in photo_stems:
        return sketch_stem
    match = _INSTANCE_SUFFIX.match(sketch_stem)
    if match and match.group("stem") in photo_stems:
        return match.group("stem")
    return None


def _split_rows(sketch_dir: Path, photo_dir: Path, root: Path, split: str, on_unmatched: str, on_error: str, verify: bool):
    photos = _image_files(photo_dir)
    sketches = _image_files(sketch_dir)
    if verify:
        photos, sketches = _verify(photos, on_error), _verify(sketches, on_error)
    by_stem: dict[str, Path] = {}
    for path in photos:
        if path.stem in by_stem:
            raise ValueError(f"Two photos share the stem {path.stem!r} in {photo_dir}: {by_stem[path.stem].name} and {path.name}.")
        by_stem[path.stem] = path
    rows, unmatched, paired = [], [], set()
    for path in sketches:
        stem = match_sketch_to_photo(path.stem, by_stem)
        if stem is None:
            unmatched.append(path)
            continue
        paired.add(stem)
        rows.append((path, "sketch", stem))
    if unmatched:
        error = UnmatchedSketchError(unmatched, split, photo_dir)
        if on_unmatched == "raise":
            raise error
        warnings.warn(f"Skipping: {error}", UserWarning, stacklevel=3)
    if not rows:
        raise ValueError(f"No sketch of the {split!r} split ({sketch_dir}) pairs with a photo of {photo_dir}.")
    rows += [(path, "photo", stem) for stem, path in by_stem.items()]
    rows.sort(key=lambda r: r[0].relative_to(root).as_posix())
    stats = {"num_sketches": sum(r[1] == "sketch" for r in rows), "num_photos": len(by_stem),
             "photos_without_sketch": len(by_stem) - len(paired), "skipped_unmatched": len(unmatched)}
    return rows, stats


def load_fg_paired(
    root: PathLike,
    splits: Sequence[str] = SPLITS,
    on_unmatched: str = "raise",
    on_error: str = "warn",
    verify: bool = True,
    dataset_name: Optional[str] = None,
) -> DatasetDict:
    """Load a fine-grained SBIR folder (layouts and pairing rules in the module docstring).

    Args:
        root: the dataset folder (e.g. `.../ShoeV2` holding `trainA`, `testA`, `trainB`, `testB`).
        splits: which of `"train"`, `"test"` to load.
        on_unmatched: `"raise"` (default) or `"warn"` for sketches that pair with no photo.
        on_error: `"warn"` skips unreadable image files with a `CorruptImageWarning`, `"raise"` raises
            `CorruptImageError`.
        verify: check each file with PIL `verify()` (cheap); `False` skips it on trusted data.
        dataset_name: recorded in each split's `info.description` (default: the folder name).

    Returns:
        `DatasetDict` with the requested splits; columns `image`, `domain`, `pair_id`, `id`.
    """
    if on_unmatched not in ("raise", "warn"):
        raise ValueError(f"on_unmatched must be 'raise' or 'warn', got {on_unmatched!r}")
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits must be a non-empty subset of {SPLITS}; got {list(splits)}")
    root = Path(root).expanduser()
    layout, folders = detect_fg_layout(root)
    features = fg_paired_features()
    result = {}
    for split in splits:
        rows, stats = _split_rows(folders[(split, "sketch")], folders[(split, "photo")], root, split, on_unmatched, on_error, verify)
        meta = {"dataset": dataset_name or root.name, "layout": layout, "split": split, "task": "fine-grained", **stats}
        data = {
            "image": [str(p) for p, _, _ in rows],
            "domain": [d for _, d, _ in rows],
            "pair_id": [s for _, _, s in rows],
            "id": [p.relative_to(root).as_posix() for p, _, _ in rows],
        }
        info = DatasetInfo(description=json.dumps(meta, sort_keys=True), features=features)
        result[split] = Dataset.from_dict(data, features=features, info=info, split=NamedSplit(split))
    return DatasetDict(result)


def is_fg_paired(dataset) -> bool:
    """True for a `Dataset` / `DatasetDict` with the fine-grained columns (`pair_id` and `domain`)."""
    if isinstance(dataset, DatasetDict):
        return bool(dataset) and all(is_fg_paired(d) for d in dataset.values())
    return isinstance(dataset, Dataset) and {"pair_id", "domain", "image"} <= set(dataset.column_names)


def fine_grained_split(dataset: Dataset) -> tuple[Dataset, Dataset, list[int]]:
    """`(sketches, photos, target_index)`: the sketch rows (queries), the photo rows (gallery), and for each sketch
    the index of its paired photo among `photos` (the target of Acc@q)."""
    if not is_fg_paired(dataset):
        raise ValueError(f"Expected a fine-grained dataset with 'image', 'domain' and 'pair_id' columns; got {dataset.column_names}.")
    domains, pair_ids = dataset["domain"], dataset["pair_id"]
    sketch_rows = [i for i, d in enumerate(domains) if d == "sketch"]
    photo_rows = [i for i, d in enumerate(domains) if d == "photo"]
    position = {}
    for j, row in enumerate(photo_rows):
        if pair_ids[row] in position:
            raise ValueError(f"Two photos share the pair_id {pair_ids[row]!r}.")
        position[pair_ids[row]] = j
    missing = sorted({pair_ids[i] for i in sketch_rows} - set(position))
    if missing:
        raise ValueError(f"{len(missing)} sketch pair_id(s) have no photo in this split: {missing[:5]}")
    targets = [position[pair_ids[i]] for i in sketch_rows]
    return dataset.select(sketch_rows), dataset.select(photo_rows), targets


def load_unlabelled_photos(
    folder: PathLike, recursive: bool = True, on_error: str = "warn", verify: bool = True, max_photos: Optional[int] = None
) -> Dataset:
    """Photos without sketches (knowledge distillation's unlabelled set): a `Dataset` with `image`, `domain`
    (`"photo"`) and `id` (path relative to `folder`), sorted by `id`.

    Args:
        folder: searched recursively (`recursive=False`: only its own files); hidden files and folders are skipped.
        max_photos: keep the first `max_photos` in `id` order (None: all).
    """
    if on_error not in ("raise", "warn"):
        raise ValueError(f"on_error must be 'raise' or 'warn', got {on_error!r}")
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Unlabelled photo folder not found (or not a directory): {root}")
    candidates = root.rglob("*") if recursive else root.iterdir()
    files = sorted(
        (p for p in candidates if is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(root).parts)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    if max_photos is not None:
        files = files[:max_photos]
    if verify:
        files = _verify(files, on_error)
    if not files:
        raise FileNotFoundError(f"No image files under {root}" + ("" if recursive else " (recursive=False)") + ".")
    features = Features({"image": ImageFeature(), "domain": Value("string"), "id": Value("string")})
    data = {
        "image": [str(p) for p in files],
        "domain": ["photo"] * len(files),
        "id": [p.relative_to(root).as_posix() for p in files],
    }
    info = DatasetInfo(description=json.dumps({"dataset": root.name, "task": "unlabelled photos"}), features=features)
    return Dataset.from_dict(data, features=features, info=info)


__all__ = [
    "LAYOUT_HELP",
    "UnmatchedSketchError",
    "detect_fg_layout",
    "fg_paired_features",
    "fine_grained_split",
    "is_fg_paired",
    "load_fg_paired",
    "load_unlabelled_photos",
    "match_sketch_to_photo",
]
