import importlib
import os
import sys
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


def benchmark_module(name: str):
    """Import ``benchmarks/<name>.py`` as a module. Its folder is on ``sys.path`` only while it imports, as
    when the script runs (the scripts import their sibling ``_machine``), and is not left there for other tests."""
    folder = str(REPO_ROOT / "benchmarks")
    sys.path.insert(0, folder)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(folder)


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


def tiny_train_args(output_dir, **overrides):
    """A Sketch-an-Anchor `TrainConfig` that trains in seconds: tiny ViT, 32 px, 4 iterations, checkpoints every 2."""
    from hf_sbir.training import TrainConfig

    kwargs = dict(
        dataset="embedded",
        split="embedded",
        backbone_config=tiny_vit_config().to_dict(),
        text_embedder="minilm",
        model_config={"projection_dim": 16, "gcn_hidden_size": 16, "gcn_num_layers": 2},
        iterations=4,
        batch_size=6,
        learning_rate=1e-3,
        min_learning_rate=1e-4,
        warmup_iterations=1,
        image_size=32,
        checkpoint_every=2,
        eval_batch_size=64,
        eval_before=False,
        output_dir=str(output_dir),
        progress=False,
        log_with="jsonl",
        method_args={"num_neighbours": 3},
    )
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


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
