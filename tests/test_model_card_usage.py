"""What a user of an exported model folder relies on, for all four families (issue 23, items 3, 8 and 9):

* the generated card's usage snippet runs as written where hf-sbir cannot be imported (a subprocess whose
  `sys.meta_path` refuses `hf_sbir`, every other installed package available), and its sketch embeddings
  equal hf-sbir's own transform + model;
* README's generic "Using a model" recipe works on every family's folder (shape views included);
* the card is titled after the model, not the folder, and links nowhere that does not exist; the
  shape-views layer sweep is in the printed table and the card; an adapters-only Adapt and Align card does
  not claim the whole model was fine-tuned; the FG-SBIR run logs its backbone; every file of the folder has
  the same mode.

One tiny run per family (a few iterations, 32 px), trained once for the module."""

import contextlib
import io
import json
import logging
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModel, PvtV2Config

import hf_sbir  # noqa: F401  (Auto registration)
from hf_sbir.data import SbirImageTransform
from hf_sbir.training import TrainConfig, train

from conftest import REPO_ROOT, tiny_vit_config

pytestmark = pytest.mark.slow

# Makes `import hf_sbir` fail the way it does where the package is not installed.
BLOCK_HF_SBIR = textwrap.dedent(
    """
    import sys

    class _NoHfSbir:
        def find_spec(self, name, path=None, target=None):
            if name == "hf_sbir" or name.startswith("hf_sbir."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, _NoHfSbir())
    """
)
SNIPPET_RUNNER = BLOCK_HF_SBIR + textwrap.dedent(
    """
    import contextlib, io, json, torch
    try:
        import hf_sbir  # noqa: F401
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("hf_sbir is importable: the test would prove nothing")
    out = {}
    for name, code in json.load(open(sys.argv[1])).items():
        namespace = {"__name__": "__main__"}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"<{name} model card>", "exec"), namespace)
        out[name] = {"sketch": namespace["sketch"], "gallery": namespace.get("photos", namespace.get("views"))}
        assert not [m for m in sys.modules if m.startswith("hf_sbir")], name
    torch.save(out, sys.argv[2])
    """
)

TINY_PVT = dict(
    num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], sr_ratios=[2, 1], patch_sizes=[7, 3],
    strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], image_size=32,
)
CASES = {
    # The Quickstart's family on the packaged backbone: the folder then needs efficientnet-lite-pytorch.
    "sketch_an_anchor": dict(
        dataset="embedded", split="embedded", backbone="packaged", text_embedder="minilm", image_size=64,
        model_config={"projection_dim": 16, "gcn_hidden_size": 16, "gcn_num_layers": 2}, method_args={"num_neighbours": 3},
    ),
    "adapt_align": dict(
        dataset="embedded", split="embedded", backbone_config=tiny_vit_config().to_dict(), text_embedder="minilm",
        max_eval_queries=16, method_args={"adapter_bottleneck_size": 8, "train_adapters_only": True},
    ),
    "fg_sbir": dict(
        dataset="embedded", split=None, backbone_config=PvtV2Config(**TINY_PVT).to_dict(),
        model_config={"embedding_dim": 16}, max_eval_queries=16, method_args={"ema_decay": 0.5},
    ),
    "shape_views": dict(
        split=None, backbone_config=tiny_vit_config(num_hidden_layers=3).to_dict(), eval_before=True,
        method_args={"num_train_shapes": 4, "views_per_shape": 2, "num_test_shapes": 3, "render_size": 48, "feature_layer": 2},
    ),
}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{method: (model folder, train.py's stdout, the run's hf_sbir log messages)}; shape views goes through
    train.py's `main` (the printed table is part of what is tested), the others through `train()`."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_script", REPO_ROOT / "train.py")
    train_script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train_script)

    root = tmp_path_factory.mktemp("cards")
    logger = logging.getLogger("hf_sbir")
    out = {}
    for method, settings in CASES.items():
        kwargs = dict(
            method=method, iterations=2, batch_size=4, learning_rate=1e-3, min_learning_rate=1e-4, warmup_iterations=1,
            image_size=32, checkpoint_every=10, eval_batch_size=64, eval_before=False, output_dir=str(root / method),
            progress=False, log_with="none",
        )
        kwargs.update(settings)
        records, old_level = _Records(), logger.level
        logger.addHandler(records)
        logger.setLevel(logging.INFO)
        stdout = io.StringIO()
        try:
            if method == "shape_views":
                config = root / "shape_views.json"
                config.write_text(json.dumps(kwargs))
                with contextlib.redirect_stdout(stdout):
                    assert train_script.main(["--config", str(config)]) == 0
            else:
                train(TrainConfig(**kwargs))
        finally:
            logger.removeHandler(records)
            logger.setLevel(old_level)
        out[method] = (root / method / "model", stdout.getvalue(), records.messages)
    return out


def card_snippet(folder: Path) -> str:
    text = (folder / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, f"no python block in {folder / 'README.md'}"
    return blocks[0]


def test_card_snippets_run_without_hf_sbir_and_match_hf_sbir(runs, tmp_path):
    snippets = {method: card_snippet(folder) for method, (folder, _, _) in runs.items()}
    for method, code in snippets.items():
        assert "hf_sbir" not in code and "trust_remote_code=True" in code, method
    (tmp_path / "snippets.json").write_text(json.dumps(snippets))
    (tmp_path / "runner.py").write_text(SNIPPET_RUNNER)
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        [sys.executable, "runner.py", "snippets.json", "out.pt"], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    standalone = torch.load(tmp_path / "out.pt", weights_only=True)

    for method, (folder, _, _) in runs.items():
        # The same lines with hf-sbir installed; then hf-sbir's own transform + model on the same images.
        namespace = {"__name__": "__main__"}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(snippets[method], namespace)
        gallery_images = namespace.get("photo_images", namespace.get("view_images"))
        domain = "view" if method == "shape_views" else "photo"
        model = AutoModel.from_pretrained(folder).eval()
        transform = SbirImageTransform.from_pretrained(folder)
        with torch.no_grad():
            sketch = model(pixel_values=transform(namespace["sketch_image"], "sketch")[None]).embeddings
            gallery = model(pixel_values=transform.batch(gallery_images, [domain] * len(gallery_images))).embeddings
        torch.testing.assert_close(standalone[method]["sketch"], sketch, atol=1e-6, rtol=0)
        torch.testing.assert_close(standalone[method]["gallery"], gallery, atol=1e-6, rtol=0)
        torch.testing.assert_close(namespace["sketch"], sketch, atol=1e-6, rtol=0)


def readme_recipe() -> str:
    text = (REPO_ROOT / "README.md").read_text()
    section = text.split("## Using a model", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


def test_readme_using_a_model_recipe_works_on_every_family(runs):
    recipe = readme_recipe()
    assert "outputs/quickstart/model" in recipe
    for method, (folder, _, _) in runs.items():
        namespace = {"__name__": "__main__"}
        with contextlib.redirect_stdout(io.StringIO()):
            exec(recipe.replace("outputs/quickstart/model", folder.as_posix()), namespace)
        assert namespace["scores"].shape[0] == 1, method


def test_card_is_named_after_the_model_and_links_only_to_what_exists(runs):
    for method, (folder, _, _) in runs.items():
        card = ModelCard.load(folder / "README.md")
        (index,) = card.data.to_dict()["model-index"]
        title = re.search(r"^# (.+)$", card.text, flags=re.M).group(1)
        assert index["name"] == title != "model", (method, title)
        assert title.startswith(method.replace("_", "-")), title
        assert "github.com/hf-sbir" not in card.content, method
    assert ModelCard.load(runs["sketch_an_anchor"][0] / "README.md").data.to_dict()["model-index"][0]["name"] == (
        "sketch-an-anchor-efficientnet-lite0-embedded"
    )
    # Named after what it was evaluated on (shape views: the procedural shapes, not the unused `dataset`).
    assert ModelCard.load(runs["shape_views"][0] / "README.md").data.model_name == "shape-views-vit-procedural-shapes"
    # The packaged backbone needs one package beyond torch + transformers, and the card names it.
    assert "efficientnet-lite-pytorch" in (runs["sketch_an_anchor"][0] / "README.md").read_text()
    assert "efficientnet-lite-pytorch" not in (runs["adapt_align"][0] / "README.md").read_text()


def test_card_name_is_the_hub_repository_when_pushing(runs):
    from types import SimpleNamespace

    from hf_sbir.training.model_card import build_model_card

    folder = runs["fg_sbir"][0]
    args = TrainConfig(**{**CASES["fg_sbir"], "method": "fg_sbir", "output_dir": str(folder.parent), "hub_model_id": "you/shoe-fgsbir"})
    config = AutoModel.from_pretrained(folder).config
    card = build_model_card(args, SimpleNamespace(metrics_before=None, metrics_after={"metrics": {"acc@1": 0.5}}), config)
    assert card.data.to_dict()["model-index"][0]["name"] == "shoe-fgsbir"
    assert '"you/shoe-fgsbir"' in card.text and "# shoe-fgsbir" in card.text


def test_adapters_only_card_does_not_claim_full_fine_tuning(runs):
    from types import SimpleNamespace

    from hf_sbir.training.model_card import build_model_card

    folder = runs["adapt_align"][0]
    text = (folder / "README.md").read_text()
    assert "whole model fine-tuned" not in text and "backbone frozen" in text
    # The default run (train_adapters_only=False) still says what it did.
    config = AutoModel.from_pretrained(folder).config
    config.train_adapters_only = False
    args = TrainConfig(**{**CASES["adapt_align"], "method": "adapt_align", "output_dir": str(folder.parent)})
    card = build_model_card(args, SimpleNamespace(metrics_before=None, metrics_after=None), config)
    assert "the whole model fine-tuned" in card.text and "backbone frozen" not in card.text


def test_shape_views_layer_sweep_is_printed_and_in_the_card(runs):
    folder, stdout, _ = runs["shape_views"]
    after = json.loads((folder.parent / "eval_after.json").read_text())
    layers = sorted(after["per_layer"], key=int)
    assert len(layers) == 4  # embeddings + 3 blocks of the tiny ViT
    card = (folder / "README.md").read_text()
    for text in (stdout, card):
        assert "Layer sweep" in text
        for layer in layers:
            row = re.search(rf"^\| {layer}( \*)? \|(.*)\|$", text, flags=re.M)
            assert row, (layer, text[-1500:])
            cells = [c.strip() for c in row.group(2).split("|")]
            assert cells[1] == f"{100 * after['per_layer'][layer]['acc@1']:.2f}"  # acc@1 after
            assert cells[0] != "–"  # the run evaluated before fine-tuning too
        assert re.search(rf"^\| {after['feature_layer']} \* \|", text, flags=re.M)


def test_fg_sbir_run_logs_its_backbone(runs):
    messages = runs["fg_sbir"][2]
    assert any(m.startswith("FG-SBIR backbone:") and "pvt_v2" in m for m in messages), messages


def test_every_file_of_the_exported_folder_has_the_same_mode(runs):
    for method, (folder, _, _) in runs.items():
        modes = {path.name: path.stat().st_mode & 0o777 for path in folder.iterdir() if path.is_file()}
        assert len(set(modes.values())) == 1, (method, {k: oct(v) for k, v in modes.items()})


def test_missing_backbone_package_is_named_with_its_pip_line(runs, tmp_path):
    """Where the packaged backbone's one extra package is missing, loading says which and how to install it."""
    folder = runs["sketch_an_anchor"][0]
    script = BLOCK_HF_SBIR.replace(
        'if name == "hf_sbir" or name.startswith("hf_sbir."):',
        'if name.split(".")[0] in ("hf_sbir", "efficientnet_lite_pytorch"):',
    ) + f"from transformers import AutoModel\nAutoModel.from_pretrained({str(folder)!r}, trust_remote_code=True)\n"
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert "efficientnet-lite-pytorch" in last and "pip install efficientnet-lite-pytorch`" in last, last
