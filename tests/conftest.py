import os
from pathlib import Path

import pytest
import torch

# Tests never reach the Hub: CI has no network, and a hung download is worse than a clear error.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
SBIR_MINI = SHARED / "data" / "sbir-mini"


def tiny_vit_config(**overrides):
    from transformers import ViTConfig

    kwargs = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8
    )
    kwargs.update(overrides)
    return ViTConfig(**kwargs)


def tiny_sketch_an_anchor_config(backbone_config=None, **overrides):
    from hf_sbir import SketchAnAnchorConfig

    kwargs = dict(projection_dim=16, gcn_hidden_size=24, gcn_num_layers=2, word_anchor_dim=10)
    kwargs.update(overrides)
    return SketchAnAnchorConfig(backbone_config=backbone_config or tiny_vit_config(), **kwargs)


@pytest.fixture
def tiny_config():
    return tiny_sketch_an_anchor_config()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def sbir_mini_root():
    if not SBIR_MINI.is_dir():
        pytest.skip("../shared/data/sbir-mini is not available")
    return SBIR_MINI
