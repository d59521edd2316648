"""`python -m hf_sbir.evaluate` as a user runs it: what it evaluates, what the table says, and one-line
errors (exit code 2, no traceback) for every user mistake."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import hf_sbir  # noqa: F401  (Auto registration)
from hf_sbir import evaluate as evaluate_cli
from hf_sbir.metrics import PROTOCOLS

from conftest import tiny_sketch_an_anchor_config

CLASSES = ["acorn", "bell", "cup", "drum", "eye", "fork", "gate", "hat", "ink", "umbrella"]  # one embedded test class


def _draw(kind: int, variant: int, photo: bool) -> Image.Image:
    """A class-specific shape (the class sets the number of corners), jittered by `variant`."""
    rng = np.random.default_rng(1000 * kind + 10 * variant + int(photo))
    img = Image.new("RGB", (40, 40), (255, 255, 255) if not photo else tuple(int(v) for v in rng.integers(150, 255, 3)))
    draw = ImageDraw.Draw(img)
    corners = 3 + kind
    angles = np.linspace(0, 2 * np.pi, corners, endpoint=False) + rng.uniform(0, 0.3)
    points = [(20 + 14 * np.cos(a) + rng.uniform(-2, 2), 20 + 14 * np.sin(a) + rng.uniform(-2, 2)) for a in angles]
    draw.polygon(points, outline=(0, 0, 0), width=2)
    return img


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A 10-class folder (domain first), 2 sketches and 3 photos per class; 'umbrella' is the only
    class of the shipped `embedded` split's test side."""
    root = tmp_path_factory.mktemp("ten_classes")
    for k, name in enumerate(CLASSES):
        for domain, count in (("sketch", 2), ("photo", 3)):
            (root / domain / name).mkdir(parents=True)
            for v in range(count):
                _draw(k, v, domain == "photo").save(root / domain / name / f"{name}_{v}.png")
    return root


def save_model(model, folder):
    """A model folder as train.py exports it: weights, config and the preprocessing."""
    from hf_sbir.backbones.processing import image_processor_for_backbone
    from hf_sbir.data import SbirImageTransform

    model.save_pretrained(folder)
    SbirImageTransform(image_processor=image_processor_for_backbone(model.config.backbone_config, image_size=32)).save_pretrained(folder)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from hf_sbir import SketchAnAnchorModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "tiny-model"
    save_model(SketchAnAnchorModel(tiny_sketch_an_anchor_config()), folder)
    return folder


def run(argv, capsys):
    code = evaluate_cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_folder_without_split_evaluates_every_class(folder, model_dir, capsys, tmp_path):
    code, out, err = run(["--model", model_dir, "--dataset", folder, "--json", tmp_path / "r.json"], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["num_queries"] == 20 and result["num_gallery"] == 30  # all 10 classes
    assert sorted(row["label"] for row in result["per_class"]) == CLASSES
    assert "all 10 classes" in out
    assert all(value < 1.0 for value in result["metrics"].values())  # not the 100.00 of a one-class split


def test_a_split_with_one_class_on_the_test_side_is_an_error_not_a_score(folder, model_dir, capsys):
    # The old default applied the `embedded` split: only 'umbrella' is present -> 100.00 on every metric.
    code, out, err = run(["--model", model_dir, "--dataset", folder, "--split", "embedded"], capsys)
    assert code == 2 and "| map@all |" not in out
    (line,) = [line for line in err.splitlines() if line.startswith("error")]
    assert "only 1 class (umbrella)" in line and "--test_classes" in line and "Traceback" not in err


def test_test_classes_protocol_counts_and_k_larger_than_the_gallery(folder, model_dir, capsys, tmp_path):
    argv = ["--model", model_dir, "--dataset", folder, "--test_classes", "acorn, cup,umbrella", "--protocol", "sake",
            "--name", "my model", "--json", tmp_path / "r.json"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    assert sorted(row["label"] for row in result["per_class"]) == ["acorn", "cup", "umbrella"]
    assert result["protocol"]["name"] == "sake" and result["num_queries"] == 6 and result["num_gallery"] == 9
    assert "6 sketch queries, 9 photos in the gallery" in out
    assert f"Protocol: sake ({PROTOCOLS['sake'].reference})" in out
    assert "| metric | my model |" in out
    assert "k = 200 exceeds the gallery (9 items)" in out and "k = 100 exceeds the gallery (9 items)" in out
    # The printed figures are the SAKE protocol's, not the textbook ones.
    code, _, _ = run(["--model", model_dir, "--dataset", folder, "--test_classes", "acorn,cup,umbrella",
                      "--json", tmp_path / "t.json"], capsys)
    textbook = json.loads((tmp_path / "t.json").read_text())["metrics"]
    assert textbook["map@200"] != pytest.approx(result["metrics"]["map@200"])
    # Without --name the column is titled with the model path, not the folder name "model".
    code, out, _ = run(["--model", model_dir, "--dataset", folder, "--test_classes", "acorn,cup"], capsys)
    assert f"| metric | {model_dir} |" in out


def test_untrained_baseline_is_the_backbone_the_model_was_built_from(folder, capsys, tmp_path):
    """--untrained_baseline on a fine-tuned model scores the backbone before fine-tuning;
    --backbone_features scores the fine-tuned backbone (the old --backbone_only)."""
    from transformers import set_seed

    from hf_sbir import SketchAnAnchorModel

    set_seed(0)
    base = SketchAnAnchorModel.from_backbone("packaged", projection_dim=16, gcn_hidden_size=24, gcn_num_layers=2, word_anchor_dim=10)
    save_model(base, tmp_path / "base")
    tuned = SketchAnAnchorModel.from_pretrained(tmp_path / "base")
    with torch.no_grad():  # stand-in for fine-tuning: move every backbone weight
        for p in tuned.backbone.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_model(tuned, tmp_path / "tuned")

    common = ["--dataset", folder, "--test_classes", "acorn,bell,cup", "--batch_size", 16]

    def metrics(model, *flags):
        code, out, err = run(["--model", tmp_path / model, *common, *flags, "--json", tmp_path / "m.json"], capsys)
        assert code == 0, err
        return json.loads((tmp_path / "m.json").read_text())["metrics"], out

    untrained, out = metrics("tuned", "--untrained_baseline", "--seed", 0)
    assert "| metric | untrained packaged |" in out
    assert untrained == pytest.approx(metrics("base", "--backbone_features")[0])
    tuned_backbone = metrics("tuned", "--backbone_features")[0]
    assert tuned_backbone != pytest.approx(untrained)
    assert metrics("tuned", "--backbone_only")[0] == pytest.approx(tuned_backbone)  # the old name still works


def test_report_split_and_number_of_queries(folder, model_dir, capsys, tmp_path):
    code, out, err = run(["--model", model_dir, "--dataset", folder, "--report", tmp_path / "r.html", "--report_queries", 3], capsys)
    assert code == 0, err
    page = (tmp_path / "r.html").read_text()
    assert page.count("<tr>") == 3 and "Top-10 photos for 3 sketches" in page
    code, out, err = run(["--model", model_dir, "--dataset", folder, "--report", tmp_path / "r.html", "--report_split", "train"], capsys)
    assert code == 2 and err.strip() == "error: --report_split 'train': the dataset has splits all."


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--dataset", "{tmp}/nowhere"], "Dataset folder not found"),
        (["--split", "embedded", "--test_classes", "acorn"], "not both"),
        (["--test_classes", "acorn,unicorn"], "unicorn not in"),
        (["--split", "no_such_split"], "Unknown zero-shot split 'no_such_split'"),
        (["--gzs"], "--gzs (generalised zero-shot gallery) needs a zero-shot --split"),
        (["--set", "x=1"], "--set applies to instance-level models"),
        (["--untrained_baseline"], "does not record the pretrained backbone"),
        (["--batch_size", "0"], "--batch_size must be a positive integer"),
    ],
)
def test_user_errors_are_one_line(folder, model_dir, capsys, tmp_path, argv, message):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if "--dataset" not in argv:
        argv = ["--dataset", str(folder), *argv]
    code, out, err = run(["--model", model_dir, *argv], capsys)
    assert code == 2
    (line,) = [line for line in err.splitlines() if line.startswith("error")]  # (the loaders may warn first)
    assert line.startswith("error: ") and message in line and "Traceback" not in err


def test_missing_model_and_bad_choice_are_one_line(capsys, tmp_path):
    code, _, err = run(["--model", tmp_path / "no_model"], capsys)
    assert code == 2 and err.strip().startswith("error: --model") and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_info:
        evaluate_cli.main(["--model", "m", "--protocol", "voc"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and "invalid choice: 'voc'" in err


def test_help_describes_every_flag_with_its_choices_and_defaults():
    text = evaluate_cli.build_parser().format_help()
    options = text[text.index("options:"):]
    flags = re.findall(r"^  (--\w+)", options, flags=re.M)
    assert {"--model", "--dataset", "--split", "--protocol", "--test_classes", "--untrained_baseline",
            "--backbone_features", "--report_split", "--report_queries", "--name"} <= set(flags)
    for action in evaluate_cli.build_parser()._actions:
        if action.option_strings and action.help != "==SUPPRESS==":
            assert action.help and len(action.help) > 15, action.option_strings
    assert "{textbook,sake,zse_sbir,sem_pcyc,doodle2search,dsn,tc_net}" in options
    split_help = " ".join(options[options.index("--split"):options.index("--test_classes A,B,C")].split())
    assert "default: none, i.e. every class of --dataset" in split_help
