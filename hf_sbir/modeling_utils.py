"""Shared base for the package's PreTrainedModels: saving a folder that also loads with plain
`transformers` and `trust_remote_code=True`.

transformers copies a custom model's modeling/configuration files into the saved folder, together
with their *same-folder* relative imports only. Our model files share modules that live elsewhere
in the package (`hf_sbir/backbones`, `hf_sbir/anchors`, this file), so after the usual save we
write a flat bundle: each needed package module is copied next to config.json, and its one-line
imports of the form `from hf_sbir.<path>.<module> import names` become `from .<module> import names`.
Every module that a modeling or configuration file needs therefore follows two rules: import
package modules only in that one-line absolute form, and import optional third-party packages
inside try/except (transformers' import checker skips try blocks).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from transformers import PreTrainedModel

_PACKAGE_ROOT = Path(__file__).resolve().parent
_IMPORT_LINE = re.compile(r"^(\s*)from\s+hf_sbir((?:\.\w+)*)\.(\w+)\s+import\s", re.MULTILINE)


def _module_file(dotted: str) -> Path:
    path = _PACKAGE_ROOT.joinpath(*dotted.split(".")) if dotted else _PACKAGE_ROOT
    return path.with_suffix(".py")


def bundle_files(*module_files: str | os.PathLike) -> dict[str, str]:
    """Return {flat file name: rewritten source} for the given files and every package module they
    import, transitively."""
    bundle: dict[str, str] = {}
    todo = [Path(f) for f in module_files]
    while todo:
        path = todo.pop()
        if path.name in bundle:
            continue
        source = path.read_text(encoding="utf-8")
        for match in _IMPORT_LINE.finditer(source):
            todo.append(_module_file(f"{match.group(2).lstrip('.')}.{match.group(3)}".lstrip(".")))
        bundle[path.name] = _IMPORT_LINE.sub(lambda m: f"{m.group(1)}from .{m.group(3)} import ", source)
    return bundle


def write_remote_code_bundle(model: PreTrainedModel, save_directory: str | os.PathLike) -> list[str]:
    """Write the flat remote-code bundle for `model` into `save_directory`; returns the file names."""
    import sys

    files = [sys.modules[type(model).__module__].__file__, sys.modules[type(model.config).__module__].__file__]
    bundle = bundle_files(*files)
    for name, source in bundle.items():
        Path(save_directory, name).write_text(source, encoding="utf-8")
    return sorted(bundle)


def check_pixel_values(pixel_values, hint: str = "the model's image processor (sketches are converted to 3-channel RGB)") -> None:
    """Refuse, in one line, what no family can embed: no images, another shape than (batch, 3, H, W), or
    integer pixels (unprocessed images). `hint` names the preprocessing that produces the right input."""
    if pixel_values is None:
        raise ValueError("pixel_values is required: a (batch, 3, height, width) float tensor of processed images.")
    if not torch.is_tensor(pixel_values) or pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
        shape = tuple(pixel_values.shape) if torch.is_tensor(pixel_values) else type(pixel_values).__name__
        raise ValueError(f"pixel_values must be a (batch, 3, height, width) tensor; got {shape}. Process images with {hint}.")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be a float tensor; got {pixel_values.dtype}.")


class SbirPreTrainedModel(PreTrainedModel):
    """Base class: `save_pretrained` also writes the remote-code bundle (see module docstring)."""

    main_input_name = "pixel_values"

    def save_pretrained(self, save_directory, *args, is_main_process: bool = True, **kwargs):
        super().save_pretrained(save_directory, *args, is_main_process=is_main_process, **kwargs)
        if is_main_process:
            write_remote_code_bundle(self, save_directory)
