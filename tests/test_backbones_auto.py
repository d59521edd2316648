"""Choosing the backbone (user's, hub, packaged) offline, and the preprocessing of each backbone."""

import logging
import re
import subprocess
import sys
import time

import pytest
import torch
from transformers import CLIPVisionConfig, Dinov2Config, ViTConfig, ViTModel

from hf_sbir.backbones import (
    CLIP_MEAN,
    IMAGENET_MEAN,
    IMAGENET_STD,
    HybridEfficientNetBackbone,
    TokenBackbone,
    image_processor_for_backbone,
    resolve_backbone,
)
from hf_sbir.backbones import auto

TINY_HYBRID = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64)


def _records(caplog):
    return [r for r in caplog.records if r.name == "hf_sbir"]


@pytest.fixture
def tiny_vit_folder(tmp_path):
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(tmp_path / "vit")
    return str(tmp_path / "vit")


@pytest.fixture
def small_packaged(monkeypatch):
    """The packaged hybrid with tiny transformer layers (same CNN weights), to keep tests fast."""
    monkeypatch.setattr(auto, "_load_packaged", lambda: auto.load_pretrained_backbone("packaged", **TINY_HYBRID))


def test_offline_picks_packaged_hybrid_with_one_log_line(monkeypatch, caplog):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with caplog.at_level(logging.INFO, logger="hf_sbir"):
        resolved = resolve_backbone()
    assert resolved.source == "packaged" and resolved.name == "packaged"
    assert isinstance(resolved.backbone, HybridEfficientNetBackbone)
    records = _records(caplog)
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert "HF_HUB_OFFLINE" in records[0].getMessage() and "facebook/dino-vits8" in records[0].getMessage()
    assert resolved.image_processor().size["height"] == 224


def test_unreachable_hub_falls_back_fast(monkeypatch, caplog, small_packaged):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(auto, "hub_is_reachable", lambda repo_id=None, timeout=None: False)
    with caplog.at_level(logging.INFO, logger="hf_sbir"):
        resolved = resolve_backbone(offline=False)
    assert resolved.source == "packaged"
    assert len(_records(caplog)) == 1 and "unreachable" in _records(caplog)[0].getMessage()


def test_hub_probe_returns_quickly_without_network():
    start = time.monotonic()
    auto.hub_is_reachable("facebook/dino-vits8", timeout=1.0)  # True or False, but never hangs
    assert time.monotonic() - start < 5


def test_failed_hub_download_falls_back(monkeypatch, caplog, small_packaged):
    monkeypatch.setattr(auto, "hub_is_reachable", lambda repo_id=None, timeout=None: True)
    real_load = auto.load_pretrained_backbone

    def load(name, **kwargs):
        if name == "packaged":
            return real_load(name, **kwargs)
        raise OSError("connection reset")

    monkeypatch.setattr(auto, "load_pretrained_backbone", load)
    with caplog.at_level(logging.INFO, logger="hf_sbir"):
        resolved = resolve_backbone(offline=False)
    assert resolved.source == "packaged"
    assert "connection reset" in _records(caplog)[0].getMessage()


def test_cached_hub_checkpoint_is_used_offline(monkeypatch, caplog, tiny_vit_folder):
    monkeypatch.setattr(auto, "cached_snapshot", lambda repo_id: tiny_vit_folder)
    with caplog.at_level(logging.INFO, logger="hf_sbir"):
        resolved = resolve_backbone(offline=True)
    assert resolved.source == "hub" and resolved.name == "facebook/dino-vits8"
    assert isinstance(resolved.backbone, TokenBackbone)
    assert len(_records(caplog)) == 1 and _records(caplog)[0].levelno == logging.INFO


def test_user_checkpoint_folder(caplog, tiny_vit_folder):
    with caplog.at_level(logging.INFO, logger="hf_sbir"):
        resolved = resolve_backbone(tiny_vit_folder)
    assert resolved.source == "user" and resolved.name == tiny_vit_folder
    out = resolved.backbone(torch.randn(1, 3, 32, 32), extra_tokens=torch.zeros(2, 32))
    assert out.extra_token_states.shape == (1, 2, 32)
    assert len(_records(caplog)) == 1
    assert list(resolved.image_processor().image_mean) == IMAGENET_MEAN


def test_user_packaged(caplog, small_packaged):
    with caplog.at_level(logging.INFO, logger="hf_sbir"):
        resolved = resolve_backbone("packaged")
    assert resolved.source == "packaged" and isinstance(resolved.backbone, HybridEfficientNetBackbone)
    assert len(_records(caplog)) == 1


def test_bad_user_path_raises_clearly(tmp_path):
    with pytest.raises(OSError, match="no such folder"):
        resolve_backbone(str(tmp_path / "missing" / "checkpoint"))
    (tmp_path / "weights.bin").write_bytes(b"0")
    with pytest.raises(OSError, match="is a file"):
        resolve_backbone(str(tmp_path / "weights.bin"))


def test_user_hub_id_offline_raises_at_once(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(OSError, match="someone/not-cached"):
        resolve_backbone("someone/not-cached")
    assert time.monotonic() - start < 5


def test_no_silent_fallback_for_a_broken_user_folder(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    with pytest.raises(ValueError, match="Unsupported backbone"):
        resolve_backbone(str(tmp_path))


@pytest.mark.parametrize(
    "config, mean, size",
    [
        (ViTConfig(image_size=224), IMAGENET_MEAN, 224),
        ({"model_type": "vit", "image_size": 384}, IMAGENET_MEAN, 384),
        (Dinov2Config(), IMAGENET_MEAN, 224),
        (CLIPVisionConfig(image_size=336), CLIP_MEAN, 336),
        ({"model_type": "sbir_hybrid_efficientnet"}, [127 / 255] * 3, 224),
        (None, [127 / 255] * 3, 224),
    ],
)
def test_image_processor_for_backbone(config, mean, size):
    processor = image_processor_for_backbone(config)
    assert list(processor.image_mean) == pytest.approx(mean)
    assert processor.size == {"height": size, "width": size}
    if mean == IMAGENET_MEAN:
        assert list(processor.image_std) == pytest.approx(IMAGENET_STD)


def test_importing_backbones_does_not_import_efficientnet():
    code = "import sys, hf_sbir.backbones; assert 'efficientnet_lite_pytorch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_hybrid_module_follows_the_remote_code_import_rules():
    """transformers' import check must not require efficientnet_lite_pytorch, and the bundler finds every module."""
    from transformers.dynamic_module_utils import get_imports

    from hf_sbir.backbones import modeling_hybrid_efficientnet
    from hf_sbir.modeling_utils import bundle_files

    assert "efficientnet_lite_pytorch" not in get_imports(modeling_hybrid_efficientnet.__file__)
    bundle = bundle_files(modeling_hybrid_efficientnet.__file__)
    expected = {"modeling_hybrid_efficientnet.py", "configuration_hybrid_efficientnet.py", "outputs.py"}  # the output class, not modeling_backbones (no import cycle)
    assert expected <= set(bundle)
    for name, source in bundle.items():
        assert not re.search(r"^\s*(from|import)\s+hf_sbir", source, re.MULTILINE), name
