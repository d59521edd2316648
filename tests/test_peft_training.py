"""`train.py --peft`: the run a user starts, what it exports, and the one-line refusals of bad settings.
(The model-level peft round trip of every family is in tests/test_modeling_common.py.)"""

from __future__ import annotations

import json
import runpy

import pytest
import torch
import yaml

from conftest import REPO_ROOT, tiny_train_args


def _main():
    return runpy.run_path(str(REPO_ROOT / "train.py"))["main"]


def _config_file(tmp_path, **overrides):
    import dataclasses

    data = dataclasses.asdict(tiny_train_args(tmp_path / "run", iterations=2, **overrides))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--peft", "lora", "--peft_r", "0"], "peft_r: Input should be greater than or equal to 1"),
        (["--peft", "dora"], "peft: Input should be 'lora', 'loha' or 'ia3'"),
        (["--peft", "lora", "--peft_target_modules", "[no_such_layer]"], "'no_such_layer' names no layer of the backbone"),
        (["--peft", "lora", "--peft_target_modules", "[]"], "non-empty list of layer names"),
    ],
)
def test_bad_peft_settings_are_one_line_exit_2_and_nothing_written(tmp_path, capsys, flags, expected):
    code = _main()(["--config", str(_config_file(tmp_path)), *flags])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(lines) == 1 and expected in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_peft_run_exports_the_merged_model_and_a_peft_adapter(tmp_path, capsys):
    """A LoRA run end to end: model/ loads with AutoModel (merged, no adapter layers), model/adapter/ loads
    with PeftModel.from_pretrained on the untrained model and gives the same embeddings, and only the adapters
    and the heads changed."""
    from peft import PeftModel
    from transformers import AutoModel

    from hf_sbir.training import TrainConfig
    from hf_sbir.training.methods import get_method_class

    config = _config_file(tmp_path)
    code = _main()(["--config", str(config), "--peft", "lora", "--peft_r", "4", "--peft_target_modules", "[q_proj, v_proj]"])
    out = capsys.readouterr().out
    assert code == 0 and "lora adapter (peft format)" in out
    model_dir = tmp_path / "run" / "model"
    adapter_dir = model_dir / "adapter"
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["r"] == 4
    assert (adapter_dir / "adapter_model.safetensors").is_file()
    assert not (model_dir / "adapter_config.json").exists()  # AutoModel must load the merged model, not the base

    merged = AutoModel.from_pretrained(model_dir).eval()
    assert not any("lora_" in name for name, _ in merged.named_parameters())
    # The untrained model of this run (same seed, same build) is the adapter's base.
    args = TrainConfig(**yaml.safe_load(config.read_text()))
    torch.manual_seed(args.seed)
    from accelerate.utils import set_seed

    set_seed(args.seed)
    base = get_method_class(args.method)(args).build_model().eval()
    untouched = {k: v.clone() for k, v in base.state_dict().items()}
    reloaded = PeftModel.from_pretrained(base, adapter_dir).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=x).embeddings, merged(pixel_values=x).embeddings, atol=1e-5)
    # The backbone's own weights are the pretrained ones except where LoRA merged into q_proj/v_proj.
    merged_state = merged.state_dict()
    for key, value in untouched.items():
        if key.startswith("backbone.") and not any(t in key for t in (".q_proj.", ".v_proj.")):
            assert torch.equal(merged_state[key], value), key
    assert any(not torch.equal(merged_state[k], untouched[k]) for k in untouched if ".q_proj." in k)


def test_adapter_folder_alone_rebuilds_the_model_on_the_packaged_backbone(tmp_path):
    """What a user with only model/adapter/ does: `load_adapter_model` builds the untrained model on the packaged
    (offline, pretrained) backbone from base_config.json and adds the adapter; same embeddings as before saving."""
    from hf_sbir import SketchAnAnchorModel
    from hf_sbir.training.peft import apply_peft, load_adapter_model, write_adapter_folder

    model = SketchAnAnchorModel.from_backbone("packaged", projection_dim=16, gcn_hidden_size=16, word_anchor_dim=8)
    wrapped = apply_peft(model, "lora", r=4)
    with torch.no_grad():
        for param in wrapped.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.02)
    wrapped.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = wrapped(pixel_values=x).embeddings
    write_adapter_folder(wrapped, tmp_path / "adapter")
    reloaded = load_adapter_model(tmp_path / "adapter")
    with torch.no_grad():
        assert torch.allclose(reloaded(pixel_values=x).embeddings, expected, atol=1e-5)
