"""The sbir-mini zero-shot protocol and the ablation's reproduction command (BENCHMARKS.md), run end to end
at 2 iterations on the real data at ../shared (skipped when absent)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import benchmark_module

from hf_sbir.data import load_split

ROOT = Path(__file__).resolve().parents[1]
SBIR_MINI = ROOT.parent / "shared" / "data" / "sbir-mini"
SEVEN_TERMS = {
    "loss", "loss_nce", "loss_sem_word_sketch", "loss_sem_word_photo", "loss_sem_visual_sketch",
    "loss_sem_visual_photo", "loss_sample_word", "loss_sample_visual",
}


def test_sbir_mini_split_has_no_class_overlap():
    split = load_split("sbir_mini")
    assert len(split.test_classes) >= 6
    assert not set(split.train_classes) & set(split.test_classes)
    assert len(split.train_classes) + len(split.test_classes) == 21


@pytest.mark.skipif(not (SBIR_MINI / "sketch").is_dir(), reason="sbir-mini not available at ../shared")
def test_reproduction_command_runs_at_two_iterations(tmp_path):
    out = tmp_path / "ablation"
    cmd = [
        sys.executable, "benchmarks/ablation_sbir_mini.py", "--iterations", "2", "--seeds", "0",
        "--image_size", "32", "--max_eval_queries", "16", "--dataset", str(SBIR_MINI), "--output_dir", str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = (out / "table.md").read_text()
    for variant in ("untrained", "infonce", "anchors", "full"):
        assert f"| {variant} |" in table
    results = json.loads((out / "results.json").read_text())["results"]["0"]
    assert set(results) == {"untrained", "infonce", "anchors", "full"}
    keys = ("map@all", "map@200", "p@100", "p@200", "photo_map@all")
    for variant, result in results.items():
        assert set(result["metrics"]) >= set(keys), variant
        assert all(0.0 <= v <= 1.0 for v in result["metrics"].values())
        # The table prints exactly the recorded numbers, in %, in the column order of its header.
        row = next(line for line in table.splitlines() if line.startswith(f"| {variant} |"))
        assert row == f"| {variant} | " + " | ".join(f"{100 * result['metrics'][k]:.2f}" for k in keys) + " |"
    # The untrained row scores the backbone the trained variants start from, on the same queries.
    assert results["untrained"]["num_queries"] == results["full"]["num_queries"] == 16

    # Each trained variant trained what its name says (paper Table 4): its saved config carries its
    # switches, and its loss had the terms those switches imply.
    expected = {
        "infonce": dict(use_word_anchors=False, use_visual_anchors=False, terms={"loss", "loss_nce"}),
        "anchors": dict(use_word_anchors=True, use_visual_anchors=True, randomize_word_anchors=False,
                        randomize_visual_anchors=False, gcn_num_layers=0, terms=SEVEN_TERMS),
        "full": dict(use_word_anchors=True, use_visual_anchors=True, randomize_word_anchors=True,
                     randomize_visual_anchors=True, gcn_num_layers=4, terms=SEVEN_TERMS),
    }
    for variant, switches in expected.items():
        run = out / "seed0" / variant
        assert results[variant]["metrics"] == json.loads((run / "eval_after.json").read_text())["metrics"]
        config = json.loads((run / "model" / "config.json").read_text())
        terms = switches.pop("terms")
        for key, value in switches.items():
            assert config[key] == value, (variant, key)
        logged = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines()]
        assert len(logged) == 2, variant
        assert {k for k in logged[0] if k.startswith("loss")} == terms, variant
    # Zero-shot: the trained model's anchors cover the seen classes only.
    split = load_split("sbir_mini")
    config = json.loads((out / "seed0" / "full" / "model" / "config.json").read_text())
    assert sorted(config["anchor_class_names"]) == sorted(split.train_classes)


def _finish_runs_without_training(ablation, argv):
    """Result files as a finished run writes them (seed 0, untrained + infonce), with made-up metrics."""
    args = ablation.parse_args(argv)
    for variant, name in (("untrained", "eval.json"), ("infonce", "eval_after.json")):
        cfg = ablation.base_config(args, 0, variant)
        metrics = {"metrics": {k: 0.25 for k in ablation.KEYS}}
        ablation._save(Path(cfg.output_dir) / name, cfg, metrics, untrained=variant == "untrained")


def test_finished_runs_are_reused_with_the_same_settings(tmp_path):
    ablation = benchmark_module("ablation_sbir_mini")
    argv = ["--seeds", "0", "--variants", "untrained", "infonce", "--output_dir", str(tmp_path)]
    _finish_runs_without_training(ablation, argv)
    summary = ablation.main(argv)  # nothing to train: both runs are finished
    assert summary["results"]["0"]["infonce"]["metrics"]["map@all"] == 0.25
    assert "| infonce | 25.00 |" in (tmp_path / "table.md").read_text()


def test_a_finished_run_with_other_settings_is_refused_not_reported(tmp_path):
    ablation = benchmark_module("ablation_sbir_mini")
    _finish_runs_without_training(ablation, ["--seeds", "0", "--output_dir", str(tmp_path)])
    # The untrained score does not depend on the iterations, so only the trained run is refused.
    with pytest.raises(SystemExit, match=r"infonce holds a finished run made with other settings \(iterations: 150 -> 600"):
        ablation.main(["--seeds", "0", "--variants", "untrained", "infonce", "--iterations", "600", "--output_dir", str(tmp_path)])
    with pytest.raises(SystemExit, match=r"untrained holds a finished run made with other settings \(image_size: 128 -> 224"):
        ablation.main(["--seeds", "0", "--variants", "untrained", "--image_size", "224", "--output_dir", str(tmp_path)])


def test_a_run_made_before_a_setting_existed_is_reused_only_at_that_settings_default(tmp_path):
    # Runs written before TrainConfig grew `peft_r` lack it; with PEFT off it cannot have changed them.
    ablation = benchmark_module("ablation_sbir_mini")
    argv = ["--seeds", "0", "--variants", "infonce", "--output_dir", str(tmp_path)]
    _finish_runs_without_training(ablation, argv)
    result_file = next(tmp_path.rglob("infonce/*.json"))
    run = json.loads(result_file.read_text())
    del run["settings"]["peft_r"]
    result_file.write_text(json.dumps(run))
    assert ablation.main(argv)["results"]["0"]["infonce"]["metrics"]["map@all"] == 0.25
    run["settings"]["peft_r"] = 4  # recorded with another value: still refused
    result_file.write_text(json.dumps(run))
    with pytest.raises(SystemExit, match=r"other settings \(peft_r: 4 -> 8\)"):
        ablation.main(argv)


def test_preprocessing_study_leaves_the_recorded_settings_alone(tmp_path, monkeypatch):
    ablation = benchmark_module("ablation_sbir_mini")
    argv = ["--seeds", "0", "--variants", "untrained", "--study_preprocessing", "--output_dir", str(tmp_path)]
    _finish_runs_without_training(ablation, argv)
    studied = []

    def fake_untrained(cfg):  # the study's six evaluations, without loading sbir-mini
        studied.append((cfg.sketch_ink_crop, cfg.sketch_stroke_width))
        return {"metrics": {k: 0.5 for k in ablation.KEYS}}

    monkeypatch.setattr(ablation, "evaluate_untrained", fake_untrained)
    ablation.main(argv)
    assert studied == [(True, 0), (True, 1), (True, 2), (False, 0), (False, 1), (False, 2)]
    recorded = json.loads((tmp_path / "results.json").read_text())["args"]
    assert (recorded["sketch_ink_crop"], recorded["sketch_stroke_width"]) == (True, 1)


def test_both_protocols_are_recorded_and_tabled(tmp_path):
    ablation = benchmark_module("ablation_sbir_mini")
    assert ablation.PROTOCOLS == ("textbook", "sake")
    from hf_sbir.retrieval.evaluation import TRAINING_PROTOCOLS

    assert ablation.PROTOCOLS == TRAINING_PROTOCOLS  # what every training run's evaluation records
    argv = ["--seeds", "0", "--variants", "untrained", "infonce", "--output_dir", str(tmp_path)]
    args = ablation.parse_args(argv)
    for variant, name in (("untrained", "eval.json"), ("infonce", "eval_after.json")):
        cfg = ablation.base_config(args, 0, variant)
        textbook, sake = {k: 0.25 for k in ablation.KEYS}, {k: 0.5 for k in ablation.KEYS}
        result = {"metrics": textbook, "by_protocol": {"textbook": textbook, "sake": sake}}
        ablation._save(Path(cfg.output_dir) / name, cfg, result, untrained=variant == "untrained")
    ablation.main(argv)
    text = (tmp_path / "table.md").read_text()
    textbook_part, sake_part = text.split("sake protocol")
    assert "textbook protocol" in textbook_part and "| infonce | 25.00 | 25.00 |" in textbook_part
    assert "| infonce | 50.00 | 50.00 |" in sake_part and "| untrained | 50.00 |" in sake_part


def test_runs_recorded_before_sake_show_a_dash_until_rescored(tmp_path, monkeypatch):
    ablation = benchmark_module("ablation_sbir_mini")
    argv = ["--seeds", "0", "--variants", "untrained", "infonce", "--output_dir", str(tmp_path)]
    _finish_runs_without_training(ablation, argv)  # old format: textbook metrics only
    ablation.main(argv)
    sake_part = (tmp_path / "table.md").read_text().split("sake protocol")[1]
    assert "| infonce | – | – | – | – | – |" in sake_part  # not recorded, not invented

    fresh = {"metrics": {k: 0.25 for k in ablation.KEYS}, "by_protocol": {
        "textbook": {k: 0.25 for k in ablation.KEYS}, "sake": {k: 0.75 for k in ablation.KEYS}}}
    rescored = []
    monkeypatch.setattr(ablation, "evaluate_untrained", lambda cfg: rescored.append("untrained") or json.loads(json.dumps(fresh)))
    monkeypatch.setattr(ablation, "rescore", lambda cfg, old: rescored.append(cfg.output_dir) or json.loads(json.dumps(fresh)))
    ablation.main([*argv, "--rescore"])
    assert rescored == ["untrained", str(tmp_path / "seed0" / "infonce")]
    sake_part = (tmp_path / "table.md").read_text().split("sake protocol")[1]
    assert "| infonce | 75.00 |" in sake_part and "| untrained | 75.00 |" in sake_part
    ablation.main([*argv, "--rescore"])  # recorded now: nothing is evaluated again
    assert len(rescored) == 2
