"""One model tester for the four families (in the spirit of transformers' `ModelTesterMixin`).

Every family runs every test here on a tiny config: output shapes and L2 normalisation, the save/load round
trip, the `trust_remote_code` route from a saved folder with `hf_sbir` blocked, peft's round trip
(adapter-only save -> `PeftModel.from_pretrained` -> same outputs; merged model -> same outputs), gradients
reaching what trains and nothing that is frozen, and the shared input checks. What is particular to one family
(its formulas, its layer numbering, its adapters) stays in that family's own test file.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from transformers import AutoConfig, AutoModel

from conftest import tiny_sketch_an_anchor_config, tiny_vit_config

SIZE = 32


def _tiny_pvt_config():
    from transformers import PvtV2Config

    return PvtV2Config(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], sr_ratios=[2, 1], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], image_size=32,
    )


@dataclass
class Family:
    """What the tester needs to know about one family."""

    name: str
    model_class: Callable
    make_config: Callable  # **overrides -> a tiny config
    # The families' extra forward inputs (anchors, text embeddings), as a function of the config.
    extra_inputs: Callable = lambda config: {}
    # Output fields that are L2-normalised embeddings of shape (batch, dim).
    embedding_fields: tuple = ("embeddings",)
    # Parameter-name prefixes that must receive a gradient from a loss on the outputs (one per trained part).
    must_train: tuple = ()
    # Config overrides that freeze part of the model, and the prefixes that must then get no gradient.
    frozen_overrides: dict = field(default_factory=dict)
    frozen_prefixes: tuple = ()
    # Config overrides for the peft round trip (a family whose own adapters would compete switches them off).
    peft_overrides: dict = field(default_factory=dict)

    def model(self, **overrides):
        torch.manual_seed(0)
        return self.model_class(self.make_config(**overrides)).eval()

    def __str__(self):
        return self.name


def _sketch_an_anchor():
    from hf_sbir import SketchAnAnchorModel

    return Family(
        "sketch_an_anchor", SketchAnAnchorModel, tiny_sketch_an_anchor_config,
        extra_inputs=lambda c: {"word_anchors": torch.randn(3, c.word_anchor_dim), "visual_anchors": torch.randn(3, c.visual_anchor_dim)},
        embedding_fields=("embeddings", "word_embeddings", "visual_embeddings"),
        must_train=("rtr_tokens", "word_projection.", "visual_projection.", "aggregation.", "anchor_gcn.", "backbone.model.layers.0."),
        frozen_overrides={"backbone_gradient_scale": 0.0}, frozen_prefixes=(),  # a rate of 0, not requires_grad
    )


def _adapt_align():
    from hf_sbir.models.adapt_align import AdaptAlignConfig, AdaptAlignModel

    def make(**overrides):
        kwargs = dict(projection_dim=16, adapter_bottleneck_size=8, adapter_dropout=0.0, learnable_temperature=True)
        kwargs.update(overrides)
        return AdaptAlignConfig(backbone_config=tiny_vit_config(), **kwargs)

    return Family(
        "adapt_align", AdaptAlignModel, make,
        extra_inputs=lambda c: {"text_embeds": torch.randn(3, c.projection_dim)},
        must_train=("projection.", "logit_scale", "backbone.adapters.", "backbone.model.layers.0."),
        frozen_overrides={"train_adapters_only": True}, frozen_prefixes=("backbone.model.",),
        peft_overrides={"use_adapters": False},
    )


def _fg_sbir():
    from hf_sbir.models.fg_sbir import FGSBIRConfig, FGSBIRModel

    return Family(
        "fg_sbir", FGSBIRModel, lambda **o: FGSBIRConfig(backbone_config=_tiny_pvt_config(), embedding_dim=16, **o),
        embedding_fields=("embeddings", "distillation_embeddings"),
        must_train=("distillation_token", "embedding_head.", "distillation_head.", "backbone."),
    )


def _shape_views():
    from hf_sbir.models.shape_views import ShapeViewsConfig, ShapeViewsModel

    return Family(
        "shape_views", ShapeViewsModel, lambda **o: ShapeViewsConfig(backbone_config=tiny_vit_config(), **o),
        must_train=("backbone.model.embeddings.", "backbone.model.layers.0."),
    )


FAMILIES = [_sketch_an_anchor, _adapt_align, _fg_sbir, _shape_views]


@pytest.fixture(params=FAMILIES, ids=lambda f: f.__name__.strip("_"))
def family(request):
    return request.param()


def _inputs(family, config):
    torch.manual_seed(1)
    return {"pixel_values": torch.randn(2, 3, SIZE, SIZE), **family.extra_inputs(config)}


def _randomise(model):
    """Trained-looking weights everywhere (zero-initialised parts, identity adapters, would hide mistakes)."""
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.02)


def _same_outputs(family, a, b, atol=0.0):
    for name in family.embedding_fields:
        x, y = getattr(a, name), getattr(b, name)
        assert x is not None and y is not None, name
        assert torch.allclose(x, y, atol=atol), (name, (x - y).abs().max().item())


# -- shapes, normalisation, input checks ---------------------------------------------------------------
def test_output_shapes_and_l2_normalisation(family):
    model = family.model()
    inputs = _inputs(family, model.config)
    with torch.no_grad():
        out = model(**inputs)
    for name in family.embedding_fields:
        emb = getattr(out, name)
        assert emb.ndim == 2 and emb.shape[0] == 2, (name, emb.shape)
        assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5), name
    assert model.main_input_name == "pixel_values"


@pytest.mark.parametrize(
    "bad, message",
    [(None, "pixel_values is required: a (batch, 3, height, width) float tensor of processed images."),
     (torch.randn(3, 32, 32), "pixel_values must be a (batch, 3, height, width) tensor; got (3, 32, 32). Process images with"),
     (torch.randn(2, 1, 32, 32), "tensor; got (2, 1, 32, 32). Process images with"),
     ([[0.0]], "tensor; got list. Process images with"),
     (torch.zeros(2, 3, 32, 32, dtype=torch.uint8), "pixel_values must be a float tensor; got torch.uint8.")],
)
def test_bad_pixel_values_raise_one_clear_error(family, bad, message):
    model = family.model()
    with pytest.raises(ValueError, match=re.escape(message)):
        model(pixel_values=bad)


# -- save / load ----------------------------------------------------------------------------------------
def test_save_load_round_trip_identical(family, tmp_path):
    model = family.model()
    _randomise(model)
    inputs = _inputs(family, model.config)
    with torch.no_grad():
        before = model(**inputs)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == model.config.model_type
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModel"}
    assert isinstance(config["backbone_config"], dict) and config["backbone_config"]["model_type"] == model.config.backbone_config.model_type
    assert type(AutoConfig.from_pretrained(tmp_path)) is type(model.config)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is type(model)
    with torch.no_grad():
        _same_outputs(family, before, loaded(**inputs))
    # Every setting survives; loading records where it came from and the dtype it loaded in (on the backbone's
    # sub-config too: transformers propagates it to declared sub-configs).
    assert _settings(loaded.config) == _settings(model.config)


def _settings(config) -> dict:
    ignore = ("_name_or_path", "transformers_version", "dtype")
    data = {k: v for k, v in config.to_dict().items() if k not in ignore}
    data["backbone_config"] = {k: v for k, v in data["backbone_config"].items() if k not in ignore}
    return data


REMOTE_SCRIPT = textwrap.dedent(
    """
    import json, sys, importlib.abc, os, torch
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name == "hf_sbir" or name.startswith("hf_sbir."):
                raise ImportError("hf_sbir is blocked: this test loads through remote code only")
    sys.meta_path.insert(0, Block())
    from transformers import AutoModel
    folder, out = sys.argv[1], sys.argv[2]
    model = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    assert "hf_sbir" not in sys.modules
    inputs = torch.load(os.path.join(folder, "inputs.pt"), weights_only=True)
    with torch.no_grad():
        torch.save(model(**inputs).embeddings, out)
    print(type(model).__module__)
    """
)


@pytest.mark.slow
def test_trust_remote_code_route_with_the_package_blocked(family, tmp_path):
    """A saved folder loads with plain transformers (`trust_remote_code=True`) where hf_sbir is not importable."""
    model = family.model()
    _randomise(model)
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    for path in folder.glob("*.py"):
        assert not re.search(r"^\s*(from|import)\s+hf_sbir", path.read_text(), re.MULTILINE), path.name
    inputs = _inputs(family, model.config)
    torch.save(inputs, folder / "inputs.pt")
    script = tmp_path / "load.py"
    script.write_text(REMOTE_SCRIPT)
    env = {"HF_MODULES_CACHE": str(tmp_path / "modules"), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(folder), str(tmp_path / "emb.pt")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "transformers_modules" in proc.stdout
    with torch.no_grad():
        expected = model(**inputs).embeddings
    assert torch.allclose(torch.load(tmp_path / "emb.pt", weights_only=True), expected, atol=1e-6)


# -- peft -----------------------------------------------------------------------------------------------
def test_peft_round_trip_adapter_only_and_merged(family, tmp_path):
    from peft import PeftModel

    from hf_sbir.training.peft import apply_peft, merged_model, write_adapter_folder

    base = family.model(**family.peft_overrides)
    wrapped = apply_peft(copy.deepcopy(base), "lora", r=4, alpha=8)
    # Only the adapters train inside the backbone; every weight outside it still trains.
    for name, param in wrapped.get_base_model().named_parameters():
        if name.startswith("backbone."):
            assert param.requires_grad == ("lora_" in name), name
        else:
            assert param.requires_grad == dict(base.named_parameters())[name].requires_grad, name
    _randomise_trainable(wrapped)
    wrapped.eval()
    inputs = _inputs(family, base.config)
    with torch.no_grad():
        expected = wrapped(**inputs)
    write_adapter_folder(wrapped, tmp_path / "adapter")
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (tmp_path / "adapter").iterdir()}
    adapter_bytes = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    full_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    assert adapter_bytes < full_bytes
    reloaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path / "adapter").eval()
    merged = merged_model(wrapped).eval()
    assert type(merged) is type(base) and not any("lora_" in n for n, _ in merged.named_parameters())
    with torch.no_grad():
        _same_outputs(family, expected, reloaded(**inputs), atol=1e-6)
        _same_outputs(family, expected, merged(**inputs), atol=1e-5)
        # The adapter changed something: the base alone gives other embeddings.
        assert not torch.allclose(base(**inputs).embeddings, expected.embeddings, atol=1e-4)


def _randomise_trainable(model):
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(torch.randn_like(param) * 0.05)


# -- gradients ------------------------------------------------------------------------------------------
def _backward_on_outputs(model, inputs):
    """A loss on every float output (random weights, so no part of an output is exempt)."""
    out = model(**inputs)
    torch.manual_seed(2)
    loss = sum((value * torch.randn_like(value)).sum() for value in out.values() if torch.is_tensor(value) and value.is_floating_point())
    loss.backward()


def _grad_reaches(model, prefix) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if n.startswith(prefix))


def test_gradients_reach_what_trains_and_not_what_is_frozen(family):
    model = family.model().train()
    _randomise(model)  # zero-initialised gates and adapters would block the gradient of what follows them
    _backward_on_outputs(model, _inputs(family, model.config))
    for prefix in family.must_train:
        assert _grad_reaches(model, prefix), prefix
    if family.frozen_overrides:
        frozen = family.model(**family.frozen_overrides).train()
        _backward_on_outputs(frozen, _inputs(family, frozen.config))
        for name, param in frozen.named_parameters():
            if name.startswith(family.frozen_prefixes) and family.frozen_prefixes:
                assert not param.requires_grad and param.grad is None, name


def test_under_peft_gradients_reach_adapters_and_heads_not_backbone_weights(family):
    from hf_sbir.training.peft import apply_peft

    wrapped = apply_peft(family.model(**family.peft_overrides), "lora", r=4).train()
    _randomise_trainable(wrapped)
    _backward_on_outputs(wrapped, _inputs(family, wrapped.config))
    grads = {n: p.grad for n, p in wrapped.get_base_model().named_parameters()}
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if "lora_" in n)
    assert all(g is None for n, g in grads.items() if n.startswith("backbone.") and "lora_" not in n)
