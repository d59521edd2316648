"""Load a user's own SBIR folder.

Two layouts are accepted and told apart automatically (`layout="auto"`):

```
domain first  (sbir-mini's layout)        class first
<root>/sketch/<class>/<image>             <root>/<class>/sketch/<image>
<root>/photo/<class>/<image>              <root>/<class>/photo/<image>
```

The domain folders may also be spelled `sketches`, and `photos`, `image` or `images`. Image files
are those with extension .png, .jpg, .jpeg, .bmp, .gif, .webp, .tif or .tiff (any case), lying
directly in the class folder; other files, hidden files and deeper sub-folders are ignored.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

from datasets import DatasetDict

from hf_sbir.data.core import PathLike, build_dataset_dict, check_root, class_dirs, scan_class_folders
from hf_sbir.data.zero_shot import SplitLike

SKETCH_DIR_NAMES = ("sketch", "sketches")
PHOTO_DIR_NAMES = ("photo", "photos", "image", "images")
LAYOUTS = ("auto", "domain_first", "class_first")


def _first_dir(parent: Path, names) -> Optional[Path]:
    for name in names:
        if (parent / name).is_dir():
            return parent / name
    return None


def detect_folder_layout(root: PathLike) -> str:
    """Return `"domain_first"` or `"class_first"` for `root`, or raise `ValueError` if neither fits."""
    root = check_root(root)
    if _first_dir(root, SKETCH_DIR_NAMES) or _first_dir(root, PHOTO_DIR_NAMES):
        return "domain_first"
    for sub in class_dirs(root):
        if _first_dir(sub, SKETCH_DIR_NAMES) or _first_dir(sub, PHOTO_DIR_NAMES):
            return "class_first"
    raise ValueError(
        f"Cannot recognise the layout of {root}: expected <root>/{{sketch,photo}}/<class>/* "
        "or <root>/<class>/{sketch,photo}/*."
    )


def folder_class_dirs(root: PathLike, layout: str = "auto") -> list[tuple[str, str, Path]]:
    """`(class_name, domain, folder)` for every class folder of a generic SBIR tree."""
    root = check_root(root)
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        layout = detect_folder_layout(root)
    folders = []
    if layout == "domain_first":
        for domain, names in (("sketch", SKETCH_DIR_NAMES), ("photo", PHOTO_DIR_NAMES)):
            domain_dir = _first_dir(root, names)
            if domain_dir is not None:
                folders.extend((d.name, domain, d) for d in class_dirs(domain_dir))
    else:
        for class_dir in class_dirs(root):
            found = False
            for domain, names in (("sketch", SKETCH_DIR_NAMES), ("photo", PHOTO_DIR_NAMES)):
                domain_dir = _first_dir(class_dir, names)
                if domain_dir is not None:
                    folders.append((class_dir.name, domain, domain_dir))
                    found = True
            if not found:
                warnings.warn(
                    f"Skipping folder without sketch/ or photo/ sub-folder: {class_dir}", UserWarning, stacklevel=2
                )
    return folders


def load_sbir_folder(
    root: PathLike,
    split: Optional[SplitLike] = None,
    gzs: bool = False,
    on_error: str = "warn",
    layout: str = "auto",
    seed: int = 0,
    gzs_fraction: float = 0.2,
    verify: bool = True,
) -> DatasetDict:
    """Load a generic SBIR folder (see the module docstring for the layouts).

    Args:
        root: dataset root.
        split: `ZeroShotSplit` or shipped split name (e.g. `"sbir_mini"`); `None` gives one `all` split.
        gzs: generalised zero-shot: move a seeded `gzs_fraction` of each seen class's photos to the test gallery.
        on_error: `"warn"` skips unreadable image files with a warning naming them; `"raise"` raises
            `CorruptImageError` naming the first one.
        layout: `"auto"`, `"domain_first"` or `"class_first"`.
        seed: seed of the GZS hold-out, recorded in `info.description`.
        gzs_fraction: share of each seen class's photos held out with `gzs=True`.
        verify: check every file at load time (PIL `verify()` and a full decode, see `hf_sbir.data.core.verify_image`).

    Returns:
        `DatasetDict` with `train`/`test` (with a split) or `all` (without); columns
        `image`, `label`, `domain`, `id`.

    Raises:
        FileNotFoundError: if `root` does not exist or holds no readable image.
    """
    root = check_root(root)
    records = scan_class_folders(folder_class_dirs(root, layout))
    return build_dataset_dict(
        records,
        root,
        dataset_name=root.name,
        split=split,
        gzs=gzs,
        gzs_fraction=gzs_fraction,
        seed=seed,
        on_error=on_error,
        verify=verify,
    )
