"""Shared machinery of the loaders: find image files, verify them, and build the `DatasetDict`.

Every loader (generic folder, Sketchy, TU-Berlin, QuickDraw-Ext, embedded) only decides *which
folders* hold the sketches and photos of each class; this module turns those folders into rows.

Rows have four columns:

- `image`: `datasets.Image()`; only the file path is stored, images are decoded lazily on access.
- `label`: `datasets.ClassLabel` over the sorted union of the classes found on disk and, when a split
  is given, the split's classes (so label ids are the same whichever classes happen to be present).
- `domain`: `"sketch"` or `"photo"`.
- `id`: the file's path relative to the dataset root, with `/` separators (stable across machines).

With a zero-shot split the result has `train` (seen classes, both domains) and `test` (unseen-class
sketches = queries, unseen-class photos = gallery). With `gzs=True` (generalised ZS-SBIR, Sketch-an-
Anchor's protocol, see `splits/README.md`) a seeded 20% of the photos of *each seen class* moves
from `train` to the `test` gallery; queries stay unseen-class sketches only. Without a split the
result has one `all` split. The protocol parameters are recorded as JSON in each split's
`info.description`; read them back with `sbir_metadata(dataset)`.
"""

from __future__ import annotations

import json
import os
import random
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, Features, NamedSplit, Value
from datasets import Image as ImageFeature
from PIL import Image

from hf_sbir.data.zero_shot import SplitLike, check_no_leak, load_split, normalize_class_name

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
DOMAINS = ("sketch", "photo")
PathLike = Union[str, os.PathLike]


class CorruptImageError(ValueError):
    """An image file that PIL cannot read. `path` holds the offending file."""

    def __init__(self, path: PathLike, reason: object = ""):
        self.path = str(path)
        super().__init__(f"Corrupt or unreadable image file: {self.path}" + (f" ({reason})" if reason else ""))


class CorruptImageWarning(UserWarning):
    """Warning category for image files skipped because they cannot be read."""


class MissingSplitClassesWarning(UserWarning):
    """Classes of the zero-shot split with no images on disk (a subset download, e.g. sketchy-small): the
    load goes on with the classes that are present; the missing ones are named once and recorded in the
    metadata (`sbir_metadata(ds)["missing_seen_classes"]`, `["missing_unseen_classes"]`)."""


def missing_classes_message(split, root: Path, missing_seen: Sequence[str], missing_unseen: Sequence[str]) -> str:
    """One line naming the split classes absent from `root`, seen and unseen apart (what each absence costs
    differs: a missing seen class narrows training, a missing unseen class narrows the evaluation)."""
    n_seen, n_unseen = len(split.train_classes), len(split.test_classes)
    parts = []
    if missing_seen:
        parts.append(f"{len(missing_seen)} of {n_seen} seen ({', '.join(missing_seen)})")
    if missing_unseen:
        parts.append(f"{len(missing_unseen)} of {n_unseen} unseen ({', '.join(missing_unseen)})")
    return (
        f"Split {split.name!r}: {' and '.join(parts)} class(es) have no images under {root}; using the "
        f"{n_seen - len(missing_seen)} seen and {n_unseen - len(missing_unseen)} unseen classes present "
        "(results cover those only)."
    )


# (split, root, absent classes) already named in this process: a run loads its data several times (training,
# evaluation, a benchmark's extra scores) and one line is enough; every load still records them in its metadata.
_NAMED_MISSING: set = set()


def warn_missing_classes(split, root: Path, missing_seen: Sequence[str], missing_unseen: Sequence[str]) -> None:
    """Warn (`MissingSplitClassesWarning`, `missing_classes_message`) the first time a process loads `root` with
    `split` and finds these classes absent; later loads of the same folder and split stay quiet."""
    if not (missing_seen or missing_unseen):
        return
    key = (split.name, str(Path(root).resolve()), tuple(missing_seen), tuple(missing_unseen))
    if key in _NAMED_MISSING:
        return
    _NAMED_MISSING.add(key)
    warnings.warn(missing_classes_message(split, root, missing_seen, missing_unseen), MissingSplitClassesWarning, stacklevel=4)


@dataclass(frozen=True)
class ImageRecord:
    """One image file found on disk."""

    path: Path
    class_name: str
    domain: str


def check_root(root: PathLike) -> Path:
    """Return `root` as a `Path`, or raise `FileNotFoundError` naming it if it is not a directory."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"SBIR dataset root not found (or not a directory): {path}")
    return path


def _check_on_error(on_error: str) -> None:
    if on_error not in ("warn", "raise"):
        raise ValueError(f"on_error must be 'warn' or 'raise', got {on_error!r}")


def is_image_file(path: Path) -> bool:
    """True for a visible file with a known image extension (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def class_dirs(parent: Path) -> list[Path]:
    """Visible sub-directories of `parent`, sorted by name (each one is a class)."""
    return sorted((p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def scan_class_folders(folders: Iterable[tuple[str, str, Path]], on_empty: str = "warn") -> list[ImageRecord]:
    """List the image files directly inside each `(class_name, domain, folder)`.

    A folder without image files is skipped with a warning (it is not an error: downloads often
    carry empty placeholder folders). Sub-folders and non-image files are ignored.
    """
    records = []
    for class_name, domain, folder in folders:
        files = sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: p.name)
        if not files:
            if on_empty == "warn":
                warnings.warn(f"Skipping class folder with no images: {folder}", UserWarning, stacklevel=3)
            continue
        records.extend(ImageRecord(p, class_name, domain) for p in files)
    return records


def verify_image(path: PathLike) -> Optional[str]:
    """Check that `path` is a readable image: PIL `verify()` (headers, PNG checksums), then a full decode.

    `verify()` alone passes a truncated JPEG, which then fails mid-training inside `datasets`' decoder
    without naming the file; decoding the whole stream catches it here. JPEGs are decoded at 1/8 scale
    (`draft`), which still reads every entropy-coded byte but costs a fraction of a full decode.

    Returns:
        `None` if the file looks fine, else a short reason.
    """
    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:  # verify() leaves the image unusable: reopen to decode
            if img.format == "JPEG":
                img.draft(img.mode, (max(1, img.size[0] // 8), max(1, img.size[1] // 8)))
            img.load()
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, struct.error ... on bad files
        return f"{type(err).__name__}: {err}"
    return None


def verify_records(records: Sequence[ImageRecord], on_error: str = "warn", num_threads: int = 8) -> list[ImageRecord]:
    """Drop (with a warning) or refuse (`on_error="raise"`) records whose file cannot be read.

    Verification is I/O bound, so a small thread pool speeds it up on large datasets.
    """
    _check_on_error(on_error)
    if len(records) > 256 and num_threads > 1:
        with ThreadPoolExecutor(max_workers=num_threads) as pool:
            reasons = list(pool.map(lambda r: verify_image(r.path), records))
    else:
        reasons = [verify_image(r.path) for r in records]
    kept = []
    for record, reason in zip(records, reasons):
        if reason is None:
            kept.append(record)
        elif on_error == "raise":
            raise CorruptImageError(record.path, reason)
        else:
            warnings.warn(
                f"Skipping corrupt or unreadable image file: {record.path} ({reason})",
                CorruptImageWarning,
                stacklevel=3,
            )
    return kept


def sbir_features(class_names: Sequence[str]) -> Features:
    """The feature schema shared by all loaders."""
    return Features(
        {
            "image": ImageFeature(),
            "label": ClassLabel(names=list(class_names)),
            "domain": Value("string"),
            "id": Value("string"),
        }
    )


def _make_dataset(rows: list[ImageRecord], root: Path, features: Features, split_name: str, metadata: dict) -> Dataset:
    rows = sorted(rows, key=lambda r: r.path.relative_to(root).as_posix())
    label_of = {name: i for i, name in enumerate(features["label"].names)}
    data = {
        "image": [str(r.path) for r in rows],
        "label": [label_of[r.class_name] for r in rows],
        "domain": [r.domain for r in rows],
        "id": [r.path.relative_to(root).as_posix() for r in rows],
    }
    info = DatasetInfo(description=json.dumps(metadata, sort_keys=True), features=features)
    return Dataset.from_dict(data, features=features, info=info, split=NamedSplit(split_name))


def sbir_metadata(dataset: Dataset) -> dict:
    """The loader's record for `dataset` (dataset name, split, GZS flag, fraction and seed)."""
    try:
        return json.loads(dataset.info.description or "{}")
    except json.JSONDecodeError:
        return {}


def _gzs_holdout(photos: list[ImageRecord], root: Path, fraction: float, seed: int) -> set[Path]:
    """Pick `round(fraction * n)` photos of each seen class, seeded per class by name.

    Seeding each class from `(seed, class name)` keeps the choice for a class independent of which
    other classes are present, so adding a class to the folder does not reshuffle the others.
    """
    by_class: dict[str, list[ImageRecord]] = {}
    for r in photos:
        by_class.setdefault(r.class_name, []).append(r)
    held = set()
    for class_name, items in by_class.items():
        items = sorted(items, key=lambda r: r.path.relative_to(root).as_posix())
        k = int(fraction * len(items) + 0.5)
        rng = random.Random(f"{seed}:{class_name}")  # str seeds are hashed with sha512: stable across runs
        held.update(r.path for r in rng.sample(items, k))
    return held


def build_dataset_dict(
    records: Sequence[ImageRecord],
    root: Path,
    dataset_name: str,
    split: Optional[SplitLike] = None,
    gzs: bool = False,
    gzs_fraction: float = 0.2,
    seed: int = 0,
    on_error: str = "warn",
    verify: bool = True,
) -> DatasetDict:
    """Turn image records into the `DatasetDict` described in the module docstring.

    Args:
        records: files found by a loader.
        root: dataset root; ids are paths relative to it.
        dataset_name: recorded in the metadata.
        split: a `ZeroShotSplit` or shipped split name; `None` gives one `all` split.
        gzs: generalised zero-shot protocol (needs `split`).
        gzs_fraction: share of each seen class's photos moved to the test gallery.
        seed: seed of the GZS hold-out (recorded in the metadata).
        on_error: `"warn"` skips unreadable files with a warning, `"raise"` raises `CorruptImageError`.
        verify: check every file first (PIL `verify()` and a full decode, see `verify_image`; `False` skips it on trusted data).
    """
    _check_on_error(on_error)
    if gzs and split is None:
        raise ValueError("gzs=True needs a zero-shot split (split=...)")
    records = verify_records(records, on_error) if verify else list(records)
    if not records:
        raise FileNotFoundError(f"No readable images found under {root}")
    found = sorted({r.class_name for r in records})
    meta = {"dataset": dataset_name, "split": None, "gzs": False}

    if split is None:
        features = sbir_features(found)
        return DatasetDict({"all": _make_dataset(list(records), root, features, "all", meta)})

    split = load_split(split)
    train_norm = {normalize_class_name(c) for c in split.train_classes}
    test_norm = {normalize_class_name(c) for c in split.test_classes}
    found_norm = {normalize_class_name(c) for c in found}
    outside = [c for c in found if normalize_class_name(c) not in train_norm | test_norm]
    if outside:
        warnings.warn(
            f"{len(outside)} class(es) on disk are in neither part of split {split.name!r} and are left out: "
            + ", ".join(outside),
            UserWarning,
            stacklevel=2,
        )
    missing_seen = [c for c in split.train_classes if normalize_class_name(c) not in found_norm]
    missing_unseen = [c for c in split.test_classes if normalize_class_name(c) not in found_norm]
    warn_missing_classes(split, root, missing_seen, missing_unseen)

    # Classes present on disk keep their folder spelling; split classes not on disk are added so that
    # the label space does not depend on which folders were downloaded.
    names = sorted(set(found) | {c for c in split.all_classes if normalize_class_name(c) not in found_norm})
    features = sbir_features(names)
    train = [r for r in records if normalize_class_name(r.class_name) in train_norm]
    test = [r for r in records if normalize_class_name(r.class_name) in test_norm]
    check_no_leak({r.class_name for r in train}, split.test_classes)

    meta.update(split=split.name, gzs=bool(gzs))
    if missing_seen or missing_unseen:
        # Recorded so that a result computed on a partial download says which classes it lacks.
        meta.update(missing_seen_classes=missing_seen, missing_unseen_classes=missing_unseen)
    if gzs:
        meta.update(gzs_fraction=gzs_fraction, gzs_seed=seed)
        held = _gzs_holdout([r for r in train if r.domain == "photo"], root, gzs_fraction, seed)
        test = test + [r for r in train if r.path in held]
        train = [r for r in train if r.path not in held]
    return DatasetDict(
        {
            "train": _make_dataset(train, root, features, "train", meta),
            "test": _make_dataset(test, root, features, "test", meta),
        }
    )


def split_by_domain(dataset: Union[Dataset, DatasetDict]):
    """Split rows into `(sketches, photos)`; on a `DatasetDict`, each is a `DatasetDict`.

    On a zero-shot `test` split this gives `(queries, gallery)`.
    """
    if isinstance(dataset, DatasetDict):
        pairs = {name: split_by_domain(ds) for name, ds in dataset.items()}
        return (
            DatasetDict({n: p[0] for n, p in pairs.items()}),
            DatasetDict({n: p[1] for n, p in pairs.items()}),
        )
    domains = list(dataset["domain"])
    sketches = [i for i, d in enumerate(domains) if d == "sketch"]
    photos = [i for i, d in enumerate(domains) if d == "photo"]
    return dataset.select(sketches), dataset.select(photos)
