"""`load_sbir_dataset`: one entry point that picks the right loader from a name or a path."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

from datasets import DatasetDict

from hf_sbir.data.zero_shot import SplitLike

SBIR_MINI_ENV = "HF_SBIR_MINI_ROOT"
SKETCHY_SMALL_ENV = "HF_SBIR_SKETCHY_SMALL_ROOT"


def sbir_mini_root() -> Path:
    """Find the sbir-mini developers' set (it is not shipped with the package: its licence is research-only).

    Looked up, in order: `$HF_SBIR_MINI_ROOT`; `shared/data/sbir-mini` under the current directory;
    `../shared/data/sbir-mini` relative to the current directory and to the repository root of this
    package (the layout of the hf-sbir development checkout).
    """
    return _shared_dataset_root("sbir-mini", SBIR_MINI_ENV)


def sketchy_small_root() -> Path:
    """Find sketchy-small (116 Sketchy classes, 25 sketches + 25 photos each; research-only, not shipped).

    Looked up as for `sbir_mini_root`, with `$HF_SBIR_SKETCHY_SMALL_ROOT` and `shared/data/sketchy-small`.
    """
    return _shared_dataset_root("sketchy-small", SKETCHY_SMALL_ENV)


_NAMED_ROOTS = {
    "sbir-mini": sbir_mini_root, "sbir_mini": sbir_mini_root,
    "sketchy-small": sketchy_small_root, "sketchy_small": sketchy_small_root,
}


def dataset_folder(name_or_path: Union[str, os.PathLike]) -> Path:
    """The folder a dataset argument stands for: the developers' sets by name (`"sbir-mini"`,
    `"sketchy-small"`, found by their `*_root()`), anything else as the path it is. One home for the names,
    so every loader that takes `--dataset` accepts the same ones."""
    name = os.fspath(name_or_path)
    return _NAMED_ROOTS[name]() if name in _NAMED_ROOTS else Path(name)


def _shared_dataset_root(name: str, env_var: str) -> Path:
    """The folder (holding `sketch/` and `photo/`) of a developers' data set: `$env_var`, else `shared/data/<name>`
    beside or one level above the current directory and this package's checkout."""
    env = os.environ.get(env_var)
    candidates = [Path(env).expanduser()] if env else []
    repo_root = Path(__file__).resolve().parents[2]
    candidates += [
        Path.cwd() / "shared/data" / name,
        Path.cwd().parent / "shared/data" / name,
        repo_root / "shared/data" / name,
        repo_root.parent / "shared/data" / name,
    ]
    for path in candidates:
        if (path / "sketch").is_dir() and (path / "photo").is_dir():
            return path
    # Absolute and once each: from the project root "../shared" and from elsewhere "../shared" are different
    # folders, and the same folder is often reached twice.
    tried = list(dict.fromkeys(str(p.resolve()) for p in candidates))
    env_note = f" (${env_var} is set to {env!r}, which has no sketch/ and photo/ folders)" if env else ""
    raise FileNotFoundError(
        f"{name} not found{env_note}. Point ${env_var} at the folder that holds its sketch/ and photo/ "
        f"folders (export {env_var}=/path/to/{name}), or pass that folder itself as the dataset. "
        f"Looked in: {', '.join(tried)}."
    )


def load_sbir_dataset(
    name_or_path: Union[str, os.PathLike],
    split: Optional[SplitLike] = None,
    gzs: bool = False,
    on_error: str = "warn",
    layout: Optional[str] = None,
    **kwargs,
) -> DatasetDict:
    """Load an SBIR dataset by name or folder.

    Dispatch:

    - `"embedded"`: the package's synthetic default (`load_embedded_default`);
    - `"sbir-mini"`: the developers' real-data set, found by `sbir_mini_root()` (folder loader);
    - `"sketchy-small"`: 116 Sketchy classes, found by `sketchy_small_root()` (folder loader; use the
      `"sketchy_sake"` or `"sketchy_no"` split: the classes it lacks are named once in a warning);
    - a folder: `layout` if given (`"sketchy"`, `"tuberlin"`, `"quickdraw_ext"`, `"folder"`), else a
      benchmark recognised by its distinctive sub-folders, else the generic folder loader.

    Args:
        name_or_path: `"embedded"`, `"sbir-mini"`, `"sketchy-small"` or a folder.
        split: zero-shot split name or `ZeroShotSplit`; `None` gives one `all` split.
        gzs: generalised zero-shot protocol (see `hf_sbir.data.core`).
        on_error: `"warn"` or `"raise"` for unreadable image files.
        layout: force a loader for a folder.
        **kwargs: passed on to the chosen loader (e.g. `seed`, `photo_source`).
    """
    from hf_sbir.data.benchmarks import detect_benchmark, load_quickdraw_ext, load_sketchy, load_tuberlin
    from hf_sbir.data.folder import load_sbir_folder

    name = os.fspath(name_or_path)
    if name == "embedded":
        from hf_sbir.data.embedded import load_embedded_default

        return load_embedded_default(split=split, gzs=gzs, on_error=on_error, **kwargs)
    if name in _NAMED_ROOTS:
        return load_sbir_folder(dataset_folder(name), split=split, gzs=gzs, on_error=on_error, **kwargs)

    path = Path(name).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"Dataset folder not found: {path.resolve()}. Pass an existing folder (with sketch/ and photo/ inside), "
            "or one of the names 'embedded' (generated, offline), 'sbir-mini' and 'sketchy-small'."
        )
    loaders = {
        "sketchy": load_sketchy,
        "tuberlin": load_tuberlin,
        "quickdraw_ext": load_quickdraw_ext,
        "folder": load_sbir_folder,
    }
    layout = layout or detect_benchmark(path) or "folder"
    if layout not in loaders:
        raise ValueError(f"layout must be one of {sorted(loaders)}, got {layout!r}")
    return loaders[layout](path, split=split, gzs=gzs, on_error=on_error, **kwargs)
