"""train.py / hf_sbir.training: loss goes down, resume equals an uninterrupted run, the exported folder
loads with AutoModel and carries a model card with the metrics."""

import json
import subprocess
import sys

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoModel

import hf_sbir  # noqa: F401
from hf_sbir.training import TrainConfig, config_from_args, list_checkpoints, train
from hf_sbir.training.config import ConfigError
from hf_sbir.training.methods import get_method_class
from hf_sbir.training.trainer import push_folder_to_hub

from conftest import REPO_ROOT, tiny_train_args
from paper_losses import ref_eq2, ref_total

pytestmark = pytest.mark.slow


def tiny_args(tmp_path, name="run", **overrides):
    return tiny_train_args(tmp_path / name, **overrides)


def _weights(result):
    return load_file(str(result.model_dir / "model.safetensors"))


def test_loss_goes_down_on_a_fixed_batch(tmp_path):
    args = tiny_args(tmp_path, iterations=10, checkpoint_every=10)
    torch.manual_seed(args.seed)
    result = train(args)
    assert result.finished and result.iterations_done == 10

    # Rebuild the untrained model exactly as train() did (same seed), and the batch of step 0.
    method = get_method_class("sketch_an_anchor")(args)
    from accelerate.utils import set_seed
    from accelerate import Accelerator

    set_seed(args.seed)
    initial = method.build_model()
    transform = method.build_transform(initial)
    from hf_sbir.training.trainer import load_data

    method.setup(initial, load_data(args), transform, Accelerator())
    batches = [method.next_batch(step) for step in range(args.iterations)]  # what the run trained on
    batch = batches[0]
    trained = AutoModel.from_pretrained(result.model_dir)
    trained.config.anchor_class_names = initial.config.anchor_class_names

    def paper_loss(model, batch):
        """The seven-term objective of the paper (eq. 1-4, plain-Python oracle) on one batch."""
        with torch.no_grad():
            sketch = model(pixel_values=batch["sketch_pixel_values"])
            photo = model(pixel_values=batch["photo_pixel_values"])
            adapted = model.adapt_anchors(batch["word_anchors"], batch["visual_anchors"]).as_dict()
        sims = {k: ref_eq2(batch[f"{k}_anchors"]) for k in ("word", "visual")}
        cfg = model.config
        return ref_total(sketch, photo, batch["labels"], adapted, sims, cfg.contrastive_temperature, cfg.anchor_similarity_temperature)

    initial.eval(), trained.eval()
    before = paper_loss(initial, batch)
    # The loop minimised the paper's loss: the method's step computes exactly that objective ...
    with torch.no_grad():
        step_loss, step_logs = method.training_step(initial, batch, 0)
    assert step_loss.item() == pytest.approx(before["loss"], rel=1e-4)
    assert set(step_logs) >= set(before)
    # ... and training lowered it, on the fixed batch of step 0 and on average over the batches it saw.
    assert paper_loss(trained, batch)["loss"] < before["loss"]
    mean = lambda model: sum(paper_loss(model, b)["loss"] for b in batches) / len(batches)  # noqa: E731
    assert mean(trained) < mean(initial)
    # Logged to the JSON-lines tracker.
    lines = (result.output_dir / "logs" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 10 and "loss_nce" in json.loads(lines[0])
    # train()'s first logged loss is that objective on the same batch and the same starting weights.
    assert json.loads(lines[0])["loss"] == pytest.approx(before["loss"], rel=1e-4)


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    full = train(tiny_args(tmp_path, "full"))
    stopped = train(tiny_args(tmp_path, "split", stop_after=2))
    assert not stopped.finished and stopped.iterations_done == 2
    assert [p.name for p in list_checkpoints(stopped.output_dir)] == ["checkpoint-2"]
    resumed = train(tiny_args(tmp_path, "split", resume=True))
    assert resumed.finished and resumed.iterations_done == 4
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_refuses_to_overwrite_a_run_without_resume(tmp_path):
    train(tiny_args(tmp_path, "x", stop_after=2))
    with pytest.raises(ConfigError, match="stopped at iteration 2 of 4. Continue it with --resume true"):
        train(tiny_args(tmp_path, "x"))


def test_exported_folder_loads_and_card_carries_metrics(tmp_path):
    result = train(tiny_args(tmp_path, "export", iterations=2, eval_before=True))
    folder = result.model_dir
    for name in ("model.safetensors", "config.json", "README.md", "sbir_image_transform.json", "preprocessor_config.json"):
        assert (folder / name).is_file(), name
    model = AutoModel.from_pretrained(folder)
    assert model.config.anchor_class_names and len(model.config.anchor_class_names) == model.config.num_anchor_classes
    card = ModelCard.load(folder / "README.md")
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    after = json.loads((result.output_dir / "eval_after.json").read_text())["metrics"]
    # What the run used is what config.json records: method_args.num_neighbours=3 built the anchors.
    assert model.config.word_anchor_neighbours == 3
    recorded = json.loads((result.output_dir / "train_config.json").read_text())
    assert recorded["method_args"] == {"word_anchor_neighbours": 3}  # validated, under the config's name
    assert set(results) == set(after)
    for key, value in after.items():
        assert results[key] == pytest.approx(value, abs=1e-6)
    assert "before fine-tuning" in card.text
    # Every exported file has the mode config.json got from the umask (the weights come through a 600 temp file).
    modes = {p.name: p.stat().st_mode & 0o777 for p in folder.iterdir() if p.is_file()}
    assert set(modes.values()) == {modes["config.json"]}, modes
    # The same command again finds the finished run and returns its results without training.
    again = train(tiny_args(tmp_path, "export", iterations=2, eval_before=True))
    assert again.already_finished and again.finished and again.iterations_done == 2 and again.model_dir == folder
    assert again.metrics_after == json.loads((result.output_dir / "eval_after.json").read_text())
    assert again.metrics_before == result.metrics_before == json.loads((result.output_dir / "eval_before.json").read_text())


def test_config_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="Unknown training setting.*did you mean 'iterations'"):
        TrainConfig.from_dict({"iteratons": 3})
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="push_to_hub needs hub_model_id"):
        TrainConfig(push_to_hub=True)
    with pytest.raises(ValueError, match="Unknown method"):
        get_method_class("nope")
    args = config_from_args(["--iterations", "7", "--learning_rate", "5e-6", "--split", "null", "--set", "method_args.gcn_num_layers=0"])
    assert args.iterations == 7 and args.learning_rate == 5e-6 and args.split is None
    assert args.method_args == {"gcn_num_layers": 0}


def test_train_py_reports_bad_config_without_traceback(tmp_path):
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--config", str(missing)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Training config file not found" in proc.stderr and "Traceback" not in proc.stderr


def test_push_to_hub_offline_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (tmp_path / "m").mkdir()
    with pytest.raises(RuntimeError, match="saved locally"):
        push_folder_to_hub(tmp_path / "m", "someone/some-model")


def test_card_base_model_is_only_a_hub_id(tmp_path):
    from hf_sbir.training.model_card import _hub_base_model

    assert _hub_base_model("facebook/dino-vits8") == "facebook/dino-vits8"
    assert _hub_base_model("packaged") is None  # the offline backbone is no Hub repository
    assert _hub_base_model(str(tmp_path)) is None  # a local folder
    assert _hub_base_model(None) is None


# -- train.py as a user runs it (issue 23): one line and exit 2 for user errors, re-runs, quiet checkpoints --
def _train_py_main():
    import runpy

    return runpy.run_path(str(REPO_ROOT / "train.py"))["main"]


def _tiny_yaml(tmp_path, name="run", **overrides):
    """A tiny run as a YAML file (what a user hands train.py)."""
    import dataclasses

    import yaml

    data = dataclasses.asdict(tiny_args(tmp_path, name, iterations=2, **overrides))
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_train_py_missing_dataset_is_one_line_and_leaves_nothing_behind(tmp_path):
    config = _tiny_yaml(tmp_path)
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config), "--dataset", str(tmp_path / "no-such-data")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: Dataset folder not found") and "no-such-data" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists()  # no empty logs/ or output folder


def _wrong_layout(tmp_path):
    from PIL import Image

    (tmp_path / "flat" / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "cats" / "a.png")
    return ["--dataset", str(tmp_path / "flat")]


USER_ERRORS = {
    "unknown method_args": (lambda p: ["--set", "method_args.num_neighbors=3"], "Unknown sketch_an_anchor method_args ['num_neighbors']"),
    "bad method_args value": (lambda p: ["--set", "method_args.contrastive_temperature=-1"], "contrastive_temperature must be > 0"),
    "wrong dataset layout": (_wrong_layout, "Cannot recognise the layout"),
    "bad config value": (lambda p: ["--keep_checkpoints", "-1"], "keep_checkpoints"),
    "split null": (lambda p: ["--split", "null"], "split is null"),
    "fg_sbir dataset in the wrong layout": (
        lambda p: ["--method", "fg_sbir", "--split", "null", "--model_config", "null", "--method_args", "null",
                   "--backbone_config", "null", "--backbone", "packaged"] + _wrong_layout(p),
        "flat",
    ),
}


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_train_py_user_errors_are_one_line_before_any_work(tmp_path, capsys, case):
    extra, expected = USER_ERRORS[case]
    config = _tiny_yaml(tmp_path)
    code = _train_py_main()(["--config", str(config), *extra(tmp_path)])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert not (tmp_path / "run").exists()  # validated before anything was written


def test_train_py_rerun_of_a_finished_run_shows_its_results(tmp_path, capsys, caplog):
    import logging

    config = _tiny_yaml(tmp_path, checkpoint_every=1)
    main = _train_py_main()
    with caplog.at_level(logging.INFO):
        assert main(["--config", str(config)]) == 0
    # One line of ours per checkpoint, none of accelerate's five.
    assert [r.name for r in caplog.records if r.name.startswith("accelerate")] == []
    saved = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Checkpoint ")]
    assert len(saved) == 2 and saved[0].startswith("Checkpoint 1/2 saved: ")
    first = capsys.readouterr().out
    weights = tmp_path / "run" / "model" / "model.safetensors"
    stamp = weights.stat().st_mtime_ns

    # The README command again, as a user types it: the finished result, no traceback, nothing retrained.
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--config", str(config)], capture_output=True, text=True)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert "already holds this run, finished" in proc.stdout
    table = first[first.index("| metric"):]
    assert table in proc.stdout  # the same figures
    assert weights.stat().st_mtime_ns == stamp

    # Other settings in the same folder: one line saying what to do, exit 2, the run untouched.
    assert main(["--config", str(config), "--iterations", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another run (iterations: 2 -> 3)" in err and "a new --output_dir" in err
    assert "train_config.json) with --resume true" in err
    assert weights.stat().st_mtime_ns == stamp


def _backbone_and_head_updates(tmp_path, scale):
    """Mean |delta| of the backbone's and of the heads' weights after 3 training iterations at `scale`."""
    from accelerate.utils import set_seed

    args = tiny_args(tmp_path, f"scale{scale}", iterations=3, checkpoint_every=3, model_config={
        "projection_dim": 16, "gcn_hidden_size": 16, "gcn_num_layers": 2, "backbone_gradient_scale": scale})
    result = train(args)
    set_seed(args.seed)  # train() builds its model right after seeding, so this is the same initial model
    initial = get_method_class("sketch_an_anchor")(args).build_model().state_dict()
    trained = _weights(result)
    deltas = {"backbone": [], "heads": []}
    for key, value in trained.items():
        if key in initial and value.is_floating_point():
            deltas["backbone" if key.startswith("backbone.") else "heads"].append((value - initial[key]).abs().flatten())
    return {k: torch.cat(v).mean().item() for k, v in deltas.items()}


def test_backbone_gradient_scale_sets_the_backbones_pace_under_adam(tmp_path):
    """Paper §4.2: the backbone learns at 0.1 x the heads' pace. A gradient multiplier would cancel out in Adam
    (m / sqrt(v)); the backbone's own optimiser group at 0.1 x the learning rate does not."""
    frozen = _backbone_and_head_updates(tmp_path, 0.0)
    assert frozen["backbone"] == 0.0 and frozen["heads"] > 0  # also shows the initial model is rebuilt exactly
    full, tenth = _backbone_and_head_updates(tmp_path, 1.0), _backbone_and_head_updates(tmp_path, 0.1)
    assert full["backbone"] > 0
    assert 0.07 < tenth["backbone"] / full["backbone"] < 0.14, (tenth, full)
    assert 0.7 < tenth["heads"] / full["heads"] < 1.4, (tenth, full)  # the heads keep their pace


def test_accumulated_micro_batches_are_the_shares_of_the_larger_batch(tmp_path):
    """gradient_accumulation_steps=2 x batch 3 trains on the items of batch 6 (the two halves of its global batch);
    for a loss that is a mean of per-sample terms (Adapt-and-Align) that is the same model as one step of 6."""
    from test_methods_train_entry import tiny_args as method_args

    # No dropout: its masks are random draws, which no two batch layouts share.
    settings = dict(iterations=2, checkpoint_every=2, method_args={"adapter_bottleneck_size": 8, "adapter_dropout": 0.0})
    runs = {
        name: train(method_args(tmp_path, "adapt_align", name, **settings, **extra))
        for name, extra in (("one", dict(batch_size=6)), ("acc", dict(batch_size=3, gradient_accumulation_steps=2)), ("small", dict(batch_size=3)))
    }
    # Compared as functions, not weight by weight: the attention key biases get a gradient that is zero in exact
    # arithmetic (a softmax ignores a shift shared by a row), so they hold summation-order noise, which Adam
    # normalises to full-size steps of either sign (seen: 4e-3 apart with another thread count). They change no output.
    pixel_values = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    embeddings = {}
    for name, result in runs.items():
        model = AutoModel.from_pretrained(result.model_dir).eval()
        with torch.no_grad():
            embeddings[name] = model(pixel_values=pixel_values).embeddings
    torch.testing.assert_close(embeddings["acc"], embeddings["one"], rtol=1e-4, atol=1e-5)
    # Batch 3 without accumulation is another model (so the comparison above can fail).
    assert (embeddings["small"] - embeddings["one"]).abs().max() > 1e-2
