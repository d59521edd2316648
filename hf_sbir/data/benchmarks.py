"""Loaders for the three zero-shot SBIR benchmarks, as they lie on disk after the usual downloads.

Each loader looks for a sketch folder and a photo folder under `root`, trying the candidates below
in order and taking the first that exists (paths relative to `root`; `<cls>` is a class folder
holding image files directly). All return the `DatasetDict` described in `hf_sbir.data.core`.

Sketchy-Extended (125 classes; split `"sketchy_sake"` or `"sketchy_no"`):

- sketches, for `sketch_variant="tx_000000000000"` (the non-augmented renderings; any other
  `tx_*` variant of the Sketchy release can be named instead):
  `256x256/sketch/tx_000000000000/<cls>`, `256x256/sketch/tx_000000000000_ready/<cls>` (SAKE),
  `rendered_256x256/256x256/sketch/tx_000000000000/<cls>`, `sketch/tx_000000000000/<cls>`,
  `sketch/tx_000000000000_ready/<cls>` (root = the `256x256` folder, or SEM-PCYC's `Sketchy/`).
- extended photos (the 73,002-photo Sketchy-Ext gallery): `EXTEND_image_sketchy/<cls>`,
  `EXTEND_image_sketchy_ready/<cls>` (SAKE), `extended_photo/<cls>` (SEM-PCYC),
  `256x256/EXTEND_image_sketchy/<cls>`.
- original photos (12,500): `256x256/photo/tx_000000000000/<cls>`,
  `256x256/photo/tx_000000000000_ready/<cls>`, `photo/tx_000000000000/<cls>`,
  `photo/tx_000000000000_ready/<cls>`.
- `photo_source="auto"` (default) uses the extended photos when found, else the originals;
  `"extended"` / `"original"` insist on one; `"both"` takes the union, dropping an original whose
  file name already appears in the same class of the extended folder (the extended release carries
  the 12,500 originals under their ImageNet names; SAKE's lists count both copies, 85,502 photos).
- Sketchy's `info/invalid-*.txt` lists are not applied (most ZS-SBIR work keeps all sketches).

TU-Berlin-Extended (250 classes; split `"tuberlin_sake"`):

- sketches: `png/<cls>`, `png_ready/<cls>` (SAKE), `sketches/<cls>` (SEM-PCYC).
- photos: `ImageResized/<cls>`, `ImageResized_ready/<cls>` (SAKE), `images/<cls>` (SEM-PCYC).

QuickDraw-Extended (110 classes; split `"quickdraw_ext"`):

- sketches: `sketch/QuickDraw/<cls>`, `sketches/<cls>` (doodle2search, ZSE-SBIR),
  `QuickDraw_sketches_final/<cls>` (the unzipped official archive).
- photos: `images/<cls>`, `image/QuickDraw/<cls>`, `photo/QuickDraw/<cls>`,
  `QuickDraw_images_final/<cls>`.

Class folder names are used as spelled on disk (e.g. `car_(sedan)`, `palm tree`); they are matched
to split names after normalisation (case, `_`/`-`/spaces), so `palm_tree` on disk still finds the
split's `palm tree`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from datasets import DatasetDict

from hf_sbir.data.core import PathLike, build_dataset_dict, check_root, class_dirs, scan_class_folders
from hf_sbir.data.zero_shot import SplitLike

_SKETCHY_PREFIXES = ("256x256", "rendered_256x256/256x256", "")
_SKETCHY_EXTENDED = (
    "EXTEND_image_sketchy",
    "EXTEND_image_sketchy_ready",
    "extended_photo",
    "256x256/EXTEND_image_sketchy",
)
_TUBERLIN_SKETCHES = ("png", "png_ready", "sketches")
_TUBERLIN_PHOTOS = ("ImageResized", "ImageResized_ready", "images")
_QUICKDRAW_SKETCHES = ("sketch/QuickDraw", "sketches", "QuickDraw_sketches_final")
_QUICKDRAW_PHOTOS = ("images", "image/QuickDraw", "photo/QuickDraw", "QuickDraw_images_final")


def _first_existing(root: Path, candidates: Sequence[str]) -> Optional[Path]:
    for rel in candidates:
        if (root / rel).is_dir():
            return root / rel
    return None


def _require(root: Path, candidates: Sequence[str], what: str) -> Path:
    found = _first_existing(root, candidates)
    if found is None:
        tried = ", ".join(f"{root}/{c}" for c in candidates)
        raise FileNotFoundError(f"No {what} folder found under {root}; tried: {tried}")
    return found


def _folders(sketch_dir: Path, photo_dirs: Sequence[Path]) -> list[tuple[str, str, Path]]:
    folders = [(d.name, "sketch", d) for d in class_dirs(sketch_dir)]
    for photo_dir in photo_dirs:
        folders.extend((d.name, "photo", d) for d in class_dirs(photo_dir))
    return folders


def _load(root, folders, name, split, gzs, on_error, seed, gzs_fraction, verify, keep=None) -> DatasetDict:
    records = scan_class_folders(folders)
    if keep is not None:
        records = [r for r in records if keep(r)]
    return build_dataset_dict(
        records,
        root,
        dataset_name=name,
        split=split,
        gzs=gzs,
        gzs_fraction=gzs_fraction,
        seed=seed,
        on_error=on_error,
        verify=verify,
    )


def load_sketchy(
    root: PathLike,
    split: Optional[SplitLike] = None,
    gzs: bool = False,
    on_error: str = "warn",
    photo_source: str = "auto",
    sketch_variant: str = "tx_000000000000",
    seed: int = 0,
    gzs_fraction: float = 0.2,
    verify: bool = True,
) -> DatasetDict:
    """Load Sketchy-Extended. Layouts and `photo_source` are described in the module docstring.

    Args:
        root: folder holding `256x256/` and `EXTEND_image_sketchy/` (or one of the variants).
        split: `"sketchy_sake"`, `"sketchy_no"`, a `ZeroShotSplit`, or `None` for one `all` split.
        gzs, on_error, seed, gzs_fraction, verify: as in `load_sbir_folder`.
        photo_source: `"auto"`, `"extended"`, `"original"` or `"both"`.
        sketch_variant: which `tx_*` sketch rendering to use.
    """
    root = check_root(root)
    if photo_source not in ("auto", "extended", "original", "both"):
        raise ValueError(f"photo_source must be 'auto', 'extended', 'original' or 'both', got {photo_source!r}")
    sketch_candidates = [
        f"{p}/sketch/{sketch_variant}{s}".lstrip("/") for p in _SKETCHY_PREFIXES for s in ("", "_ready")
    ]
    original_candidates = [
        f"{p}/photo/tx_000000000000{s}".lstrip("/") for p in _SKETCHY_PREFIXES for s in ("", "_ready")
    ]
    sketch_dir = _require(root, sketch_candidates, "Sketchy sketch")
    extended = _first_existing(root, _SKETCHY_EXTENDED)
    original = _first_existing(root, original_candidates)
    if photo_source == "auto":
        photo_source = "extended" if extended is not None else "original"
    if photo_source in ("extended", "both") and extended is None:
        _require(root, _SKETCHY_EXTENDED, "Sketchy extended photo")
    if photo_source in ("original", "both") and original is None:
        _require(root, original_candidates, "Sketchy photo")
    photo_dirs = {"extended": [extended], "original": [original], "both": [extended, original]}[photo_source]

    keep = None
    if photo_source == "both":
        # The extended folder already holds the originals under the same file names.
        in_extended = {(d.name, f.name) for d in class_dirs(extended) for f in d.iterdir()}
        keep = lambda r: not (r.path.parent.parent == original and (r.class_name, r.path.name) in in_extended)  # noqa: E731
    return _load(
        root, _folders(sketch_dir, photo_dirs), "sketchy", split, gzs, on_error, seed, gzs_fraction, verify, keep
    )


def load_tuberlin(
    root: PathLike,
    split: Optional[SplitLike] = None,
    gzs: bool = False,
    on_error: str = "warn",
    seed: int = 0,
    gzs_fraction: float = 0.2,
    verify: bool = True,
) -> DatasetDict:
    """Load TU-Berlin-Extended (`png/<cls>/*.png` sketches, `ImageResized/<cls>/*` photos, or variants).

    Args:
        root: folder holding `png/` and `ImageResized/` (or one of the variants in the module docstring).
        split: `"tuberlin_sake"`, a `ZeroShotSplit`, or `None` for one `all` split.
        gzs, on_error, seed, gzs_fraction, verify: as in `load_sbir_folder`.
    """
    root = check_root(root)
    sketch_dir = _require(root, _TUBERLIN_SKETCHES, "TU-Berlin sketch")
    photo_dir = _require(root, _TUBERLIN_PHOTOS, "TU-Berlin photo")
    return _load(root, _folders(sketch_dir, [photo_dir]), "tuberlin", split, gzs, on_error, seed, gzs_fraction, verify)


def load_quickdraw_ext(
    root: PathLike,
    split: Optional[SplitLike] = None,
    gzs: bool = False,
    on_error: str = "warn",
    seed: int = 0,
    gzs_fraction: float = 0.2,
    verify: bool = True,
) -> DatasetDict:
    """Load QuickDraw-Extended (`sketch/QuickDraw/<cls>` or `sketches/<cls>` sketches, `images/<cls>` photos, ...).

    Args:
        root: the QuickDraw-Ext folder (see the module docstring for the accepted sub-folders).
        split: `"quickdraw_ext"`, a `ZeroShotSplit`, or `None` for one `all` split.
        gzs, on_error, seed, gzs_fraction, verify: as in `load_sbir_folder`.
    """
    root = check_root(root)
    sketch_dir = _require(root, _QUICKDRAW_SKETCHES, "QuickDraw-Ext sketch")
    photo_dir = _require(root, _QUICKDRAW_PHOTOS, "QuickDraw-Ext photo")
    return _load(
        root, _folders(sketch_dir, [photo_dir]), "quickdraw_ext", split, gzs, on_error, seed, gzs_fraction, verify
    )


def detect_benchmark(root: PathLike) -> Optional[str]:
    """`"sketchy"`, `"tuberlin"` or `"quickdraw_ext"` if `root` has that benchmark's distinctive folders, else `None`.

    QuickDraw-Ext's `sketches/` + `images/` variant is also a generic domain-first tree, so only its
    `sketch/QuickDraw` and `QuickDraw_*_final` spellings count here; the generic loader reads the rest
    the same way.
    """
    root = Path(root)
    if any((root / p / "sketch").is_dir() and any((root / p / "sketch").glob("tx_*")) for p in _SKETCHY_PREFIXES):
        return "sketchy"
    if _first_existing(root, ("ImageResized", "ImageResized_ready")) and _first_existing(root, ("png", "png_ready")):
        return "tuberlin"
    if _first_existing(root, ("sketch/QuickDraw", "QuickDraw_sketches_final")):
        return "quickdraw_ext"
    return None
