"""Adapt and Align, FG-SBIR and shape views through the real entry point (`train()`, what `train.py` runs):
the exported folder loads with AutoModel and embeds like the in-memory final model, the evaluate CLI
reproduces the run's final metrics, the model card's model-index carries them, and a resumed run ends
with the same weights as an uninterrupted one. Tiny encoders, 32 px images, a few iterations."""

import json
import re

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel, PvtV2Config

import hf_sbir  # noqa: F401  (Auto registration)
from hf_sbir import evaluate as evaluate_cli
from hf_sbir.training import TrainConfig, config_from_args, list_checkpoints, train
from hf_sbir.training.methods import get_method_class

from conftest import REPO_ROOT, tiny_vit_config

pytestmark = pytest.mark.slow


def tiny_pvt_config():
    return PvtV2Config(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], sr_ratios=[2, 1], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], image_size=32,
    )


SHAPE_VIEWS_ARGS = {"num_train_shapes": 4, "views_per_shape": 2, "num_test_shapes": 3, "render_size": 48, "feature_layer": 2}
# Per method: the run's settings, and the evaluate-CLI flags that reproduce its final evaluation.
CASES = {
    "adapt_align": (
        dict(dataset="embedded", split="embedded", backbone_config=tiny_vit_config().to_dict(), text_embedder="minilm",
             max_eval_queries=16, method_args={"adapter_bottleneck_size": 8}),
        ["--dataset", "embedded", "--split", "embedded", "--max_queries", "16"],
    ),
    "fg_sbir": (
        dict(dataset="embedded", split=None, backbone_config=tiny_pvt_config().to_dict(), model_config={"embedding_dim": 16},
             max_eval_queries=16, method_args={"ema_decay": 0.5}),
        ["--dataset", "embedded", "--max_queries", "16"],
    ),
    "shape_views": (  # the CLI flags are the ones its model card gives
        dict(split=None, backbone_config=tiny_vit_config(num_hidden_layers=3).to_dict(), method_args=SHAPE_VIEWS_ARGS),
        None,
    ),
}


def tiny_args(tmp_path, method, name="run", **overrides):
    kwargs = dict(
        method=method, iterations=3, batch_size=4, learning_rate=1e-3, min_learning_rate=1e-4, warmup_iterations=1,
        image_size=32, checkpoint_every=1, eval_batch_size=64, eval_before=False, output_dir=str(tmp_path / name),
        progress=False, log_with="none",
    )
    kwargs.update(CASES[method][0])
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


@pytest.mark.parametrize("method", sorted(CASES))
def test_train_exports_a_loadable_model_with_its_metrics(tmp_path, method):
    result = train(tiny_args(tmp_path, method))
    assert result.finished and result.iterations_done == 3
    folder = result.model_dir
    for name in ("model.safetensors", "config.json", "README.md", "sbir_image_transform.json", "preprocessor_config.json"):
        assert (folder / name).is_file(), name

    # The folder gives the same embeddings as the model the run evaluated (for FG-SBIR: the EMA copy).
    loaded = AutoModel.from_pretrained(folder).eval()
    assert loaded.config.model_type == method
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).embeddings, result.model(pixel_values=pixel_values).embeddings)

    # The model card's model-index carries the final metrics, under the method's own task.
    after = json.loads((result.output_dir / "eval_after.json").read_text())
    metrics = after["metrics"]
    card = ModelCard.load(folder / "README.md")
    (entry,) = {r.task_name for r in card.data.eval_results}
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == pytest.approx(metrics, abs=1e-6)
    assert method in card.data.tags and "| metric | before fine-tuning | after |" in card.text
    if method == "fg_sbir":
        assert set(metrics) == {"acc@1", "acc@5", "acc@10"} and entry.startswith("Fine-grained")
    elif method == "shape_views":
        assert set(metrics) == {"acc@1", "acc@5"} and "sketch-view" in entry
    else:
        assert "map@all" in metrics and entry.startswith("Zero-shot sketch-based")

    # The evaluate CLI loads the folder (transform subclass included) and reproduces the run's figures.
    flags = CASES[method][1]
    if flags is None:
        flags = re.search(r"`python -m hf_sbir.evaluate --model \S+ (.*)` re-runs", card.text).group(1).split()
        assert flags == ["--set", "num_test_shapes=3", "--set", "views_per_shape=2", "--set", "render_size=48"]
    out = tmp_path / "eval.json"
    assert evaluate_cli.main(["--model", str(folder), "--json", str(out), *flags]) == 0
    assert json.loads(out.read_text())["metrics"] == pytest.approx(metrics, abs=1e-5)


def test_fg_sbir_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # FG-SBIR carries method state across the checkpoint (the EMA weights, which are what is exported).
    full = train(tiny_args(tmp_path, "fg_sbir", "full"))
    stopped = train(tiny_args(tmp_path, "fg_sbir", "split", stop_after=2))
    assert not stopped.finished and stopped.iterations_done == 2
    assert (list_checkpoints(stopped.output_dir)[-1] / "method_state.pt").is_file()
    resumed = train(tiny_args(tmp_path, "fg_sbir", "split", resume=True))
    assert resumed.finished and resumed.iterations_done == 3
    a, b = (load_file(str(r.model_dir / "model.safetensors")) for r in (full, resumed))
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_fg_embedded_pairs_are_deterministic(tmp_path):
    from hf_sbir.data.fg_embedded import load_fg_embedded, render_fg_instance
    from hf_sbir.data.fg_paired import fine_grained_split

    photo, sketches = render_fg_instance("key", 3, num_sketches=2)
    again, _ = render_fg_instance("key", 3, num_sketches=1)
    assert photo.tobytes() == again.tobytes() and sketches[0].tobytes() != sketches[1].tobytes()
    data = load_fg_embedded(classes=["key", "star"], cache_dir=tmp_path, train_photos_per_class=2, test_photos_per_class=1, size=48)
    sketch_rows, photo_rows, targets = fine_grained_split(data["test"])
    assert len(photo_rows) == 2 and len(sketch_rows) == 4 and sorted(targets) == [0, 0, 1, 1]
    assert set(data["train"]["pair_id"]).isdisjoint(data["test"]["pair_id"])  # instances split, not sketches


@pytest.mark.parametrize("name", ["adapt_align", "fg_sbir", "shape_views"])
def test_shipped_configs_parse(name):
    for config in (f"{name}.yaml", f"{name}_cpu.yaml"):
        args = config_from_args(["--config", str(REPO_ROOT / "configs" / config)])
        assert args.method == name
        get_method_class(name)(args).check()  # the method accepts its method_args and model settings
    cpu = config_from_args(["--config", str(REPO_ROOT / "configs" / f"{name}_cpu.yaml")])
    assert cpu.backbone == "packaged" and cpu.dataset == "embedded"  # runs offline
