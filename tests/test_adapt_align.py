"""Adapt and Align: adapters, text alignment, distillation, save/load (and remote code), the training
method on tiny generated data, and config errors. Tiny models only (ViT hidden 32, 2 layers, 32 px)."""

import copy
import json
import math
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModel, ResNetConfig

import hf_sbir  # noqa: F401  (registers the Auto classes)
from hf_sbir.backbones.configuration_hybrid_efficientnet import HybridEfficientNetConfig
from hf_sbir.losses.adapt_align import AdaptAlignLoss, adapt_align_loss, alignment_logits, distillation_loss
from hf_sbir.models.adapt_align import AdaptAlignConfig, AdaptAlignModel, BottleneckAdapter
from hf_sbir.training.methods import get_method_class
from hf_sbir.training.methods.adapt_align import AdaptAlignMethod

from conftest import tiny_vit_config

PROJ = 16


def tiny_resnet_config():
    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="bottleneck")


def tiny_backbone_config(kind):
    if kind == "resnet":
        return tiny_resnet_config()
    if kind == "clip":
        from transformers import CLIPVisionConfig

        return CLIPVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
    return tiny_vit_config()


def tiny_config(backbone_config=None, **overrides):
    kwargs = dict(projection_dim=PROJ, adapter_bottleneck_size=8, adapter_dropout=0.0)
    kwargs.update(overrides)
    return AdaptAlignConfig(backbone_config=backbone_config or tiny_vit_config(), **kwargs)


def _randomise_adapters(model):
    """Trained-looking adapters (an untrained one is the identity, which hides save/load mistakes)."""
    with torch.no_grad():
        for adapter in model.backbone.adapters.values():
            adapter.up.weight.normal_(std=0.5)


# -- adapters --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "backbone, targets, expected",
    [
        ("vit", None, ["model.layers.0.mlp.fc2", "model.layers.1.mlp.fc2"]),
        ("vit", ["attention.o_proj"], ["model.layers.0.attention.o_proj", "model.layers.1.attention.o_proj"]),
        ("vit", r"model\.layers\.1\.mlp\.fc2", ["model.layers.1.mlp.fc2"]),
        ("clip", None, ["model.encoder.layers.0.mlp.fc2", "model.encoder.layers.1.mlp.fc2"]),
        ("resnet", None, ["model.encoder.stages.0.layers.0.layer", "model.encoder.stages.1.layers.0.layer"]),
    ],
)
def test_adapters_present_where_configured_and_trainable(backbone, targets, expected):
    model = AdaptAlignModel(tiny_config(tiny_backbone_config(backbone), adapter_target_modules=targets))
    assert model.adapted_modules == expected
    assert sorted(model.backbone.adapters) == sorted(name.replace(".", "-") for name in expected)
    for adapter in model.backbone.adapters.values():
        assert isinstance(adapter, BottleneckAdapter)
        assert adapter.spatial == (backbone == "resnet")
        assert all(p.requires_grad for p in adapter.parameters())
        assert torch.count_nonzero(adapter.up.weight) == 0  # identity at start
    keys = model.adapter_state_dict()
    assert keys and all(k.startswith("backbone.adapters.") for k in keys)
    # Full fine-tuning by default: the backbone trains too.
    assert all(p.requires_grad for p in model.parameters() if p is not model.logit_scale)


def test_untrained_adapters_are_the_identity():
    adapted = AdaptAlignModel(tiny_config()).eval()
    plain = AdaptAlignModel(tiny_config(use_adapters=False)).eval()
    assert not hasattr(plain.backbone, "adapters")
    missing, unexpected = plain.load_state_dict(adapted.state_dict(), strict=False)
    assert not missing and all(".adapters." in k for k in unexpected)
    x = torch.randn(2, 3, 32, 32)
    assert torch.allclose(adapted(pixel_values=x).embeddings, plain(pixel_values=x).embeddings, atol=1e-6)
    _randomise_adapters(adapted)
    assert not torch.allclose(adapted(pixel_values=x).embeddings, plain(pixel_values=x).embeddings, atol=1e-4)


def test_gradients_reach_adapters_backbone_and_projection():
    model = AdaptAlignModel(tiny_config())
    out = model(pixel_values=torch.randn(4, 3, 32, 32), text_embeds=torch.randn(3, PROJ))
    AdaptAlignLoss(model.config)(out, torch.tensor([0, 1, 2, 0])).total.backward()
    named = dict(model.named_parameters())
    for name in (
        "backbone.adapters.model-layers-1-mlp-fc2.up.weight",
        "backbone.model.layers.0.attention.q_proj.weight",
        "backbone.model.embeddings.patch_embeddings.projection.weight",
        "projection.weight",
    ):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name
    assert model.logit_scale.grad is None  # fixed temperature by default


def test_adapters_only_mode_freezes_the_backbone_and_its_batchnorm_statistics():
    model = AdaptAlignModel(tiny_config(tiny_resnet_config(), train_adapters_only=True)).train()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if ".adapters." in n} | {"projection.weight", "projection.bias"}
    frozen_before = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k and not k.startswith("projection")}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        out = model(pixel_values=torch.randn(4, 3, 32, 32), text_embeds=torch.randn(3, PROJ))
        AdaptAlignLoss(model.config)(out, torch.tensor([0, 1, 2, 0])).total.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    for key, value in frozen_before.items():
        assert torch.equal(after[key], value), key  # weights and BatchNorm running statistics
    assert any(torch.count_nonzero(a.up.weight) for a in model.backbone.adapters.values())
    # Switching back to full fine-tuning.
    model.configure_trainable(False)
    assert all(p.requires_grad for n, p in model.named_parameters() if n != "logit_scale")


def test_hybrid_backbone_gets_cnn_and_transformer_adapters():
    hybrid = HybridEfficientNetConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=1, image_size=64)
    model = AdaptAlignModel(tiny_config(hybrid))
    cnn = [n for n in model.adapted_modules if n.startswith("cnn.")]
    assert len(cnn) == 16 and model.adapted_modules[-1] == "layers.0.mlp_output"
    modules = dict(model.backbone.named_modules())
    for name in model.adapted_modules:
        adapter = model.backbone.adapters[name.replace(".", "-")]
        target = modules[name]
        assert adapter.width == (target.num_features if name.startswith("cnn.") else target.out_features), name
        assert adapter.spatial == name.startswith("cnn.")
    # (No forward here: a randomly initialised EfficientNet is slow on CPU; ResNet covers spatial adapters.)


# -- alignment and distillation -----------------------------------------------------------------


def test_alignment_logits_and_loss_equal_a_hand_computation():
    model = AdaptAlignModel(tiny_config(alignment_temperature=0.05)).eval()
    x, text, labels = torch.randn(3, 3, 32, 32), torch.randn(4, PROJ), torch.tensor([2, 0, 3])
    out = model(pixel_values=x, text_embeds=text)
    g = model.backbone(x).pooled_output
    f = model.projection(g)
    by_hand = 20.0 * (f / f.norm(dim=-1, keepdim=True)) @ (text / text.norm(dim=-1, keepdim=True)).T
    assert torch.allclose(out.image_features, g)
    assert torch.allclose(out.logits, by_hand, atol=1e-5)
    nll = -torch.log_softmax(by_hand, dim=-1)[torch.arange(3), labels].mean()
    assert torch.allclose(AdaptAlignLoss(model.config)(out, labels).total, nll, atol=1e-5)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(alignment_logits(f, text, 20.0), by_hand, atol=1e-5)


def test_distillation_is_zero_when_student_equals_teacher():
    features = torch.randn(5, 32)
    for kind in ("cosine", "mse"):
        assert distillation_loss(features, features.clone(), kind).abs() < 1e-6
        assert distillation_loss(features, torch.randn(5, 32), kind) > 0.1
    # The model against a frozen copy of itself (how the training method builds its teacher).
    model = AdaptAlignModel(tiny_config()).eval()
    teacher = copy.deepcopy(model.backbone).requires_grad_(False)
    x = torch.randn(2, 3, 32, 32)
    assert distillation_loss(model(pixel_values=x).image_features, teacher(x).pooled_output) < 1e-6
    losses = adapt_align_loss(torch.randn(2, 3), torch.tensor([0, 1]), features[:2], features[:2] + 1, 0.5, "mse")
    assert torch.allclose(losses.total, losses.align + 0.5 * losses.distill)
    assert set(losses.as_floats()) == {"loss", "loss_align", "loss_distill"}


# A hand example where rows, columns and the two feature sets all differ (3 items x 2 features, so a distance
# taken over the wrong axis gives another number).
STUDENT = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
TEACHER = torch.tensor([[2.0, 0.0], [1.0, 0.0], [4.0, 3.0]])
COSINE_KD = (0.0 + 1.0 + (1 - 24 / 25)) / 3  # per item 1 - cos: same direction, orthogonal, cos = 24/25
MSE_KD = ((1 + 0) + (1 + 4) + (1 + 1)) / 6  # mean over the 3 x 2 squared differences
LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.2], [-0.5, 2.5, 0.0]])
LABELS = torch.tensor([0, 2, 1])


def _cross_entropy_by_hand(logits, labels):
    rows = logits.tolist()
    return sum(math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(rows, labels.tolist())) / len(rows)


def test_eq4_distillation_is_the_mean_per_item_distance_student_vs_teacher():
    student = STUDENT.clone().requires_grad_()
    teacher = TEACHER.clone().requires_grad_()
    cosine = distillation_loss(student, teacher)  # cosine is the default (the config's default too)
    assert cosine.item() == pytest.approx(COSINE_KD, rel=1e-6)
    assert distillation_loss(STUDENT, TEACHER, "mse").item() == pytest.approx(MSE_KD, rel=1e-6)
    cosine.backward()
    assert student.grad.abs().sum() > 0 and teacher.grad is None  # the teacher is frozen: no gradient into it
    # Mixed precision: a half-precision student against a float32 teacher gives a float32 loss.
    assert distillation_loss(STUDENT.half(), TEACHER).dtype == torch.float32


def test_distillation_errors_are_one_line_naming_what_differs():
    with pytest.raises(ValueError) as error:
        distillation_loss(torch.zeros(3, 2), torch.zeros(3, 4))
    assert str(error.value) == "student (3, 2) and teacher (3, 4) features differ in shape."
    with pytest.raises(ValueError) as error:
        distillation_loss(STUDENT, TEACHER, "kl")
    assert str(error.value) == "Unknown distillation loss 'kl'; use 'cosine' or 'mse'."


def test_eq5_total_is_align_plus_lambda_kd_and_kd_is_left_out_when_off():
    align = _cross_entropy_by_hand(LOGITS, LABELS)
    # Defaults: lambda = 1 and the cosine distance (AdaptAlignConfig's documented defaults).
    losses = adapt_align_loss(LOGITS, LABELS, STUDENT, TEACHER)
    assert losses.align.item() == pytest.approx(align, rel=1e-6)
    assert losses.distill.item() == pytest.approx(COSINE_KD, rel=1e-6)
    assert losses.total.item() == pytest.approx(align + COSINE_KD, rel=1e-6)
    losses = adapt_align_loss(LOGITS, LABELS, STUDENT, TEACHER, 0.5, "mse")
    assert losses.distill.item() == pytest.approx(MSE_KD, rel=1e-6)
    assert losses.total.item() == pytest.approx(align + 0.5 * MSE_KD, rel=1e-6)
    # L_kd is left out (not added as 0) when lambda == 0 or either feature set is missing.
    for student, teacher, weight in ((STUDENT, TEACHER, 0.0), (None, None, 1.0), (STUDENT, None, 1.0), (None, TEACHER, 1.0)):
        losses = adapt_align_loss(LOGITS, LABELS, student, teacher, weight)
        assert losses.distill is None
        assert losses.align.item() == losses.total.item() == pytest.approx(align, rel=1e-6)
        assert losses.as_floats() == {"loss": pytest.approx(align, rel=1e-6), "loss_align": pytest.approx(align, rel=1e-6)}


def test_loss_module_reads_weight_and_kind_from_the_config_and_distils_the_chosen_rows():
    from hf_sbir.models.adapt_align import AdaptAlignOutput

    config = AdaptAlignConfig(backbone_config=tiny_vit_config(), distillation_weight=0.5, distillation_loss="mse")
    features = torch.cat([torch.tensor([[9.0, -9.0]]), STUDENT])  # item 0 (a sketch, say) is not distilled
    logits = torch.cat([torch.tensor([[0.0, 1.0, 2.0]]), LOGITS])
    labels = torch.cat([torch.tensor([1]), LABELS])
    output = AdaptAlignOutput(logits=logits, embeddings=F.normalize(features, dim=-1), image_features=features)
    align = _cross_entropy_by_hand(logits, labels)
    losses = AdaptAlignLoss(config)(output, labels, TEACHER, student_rows=slice(1, None))
    assert losses.distill.item() == pytest.approx(MSE_KD, rel=1e-6)
    assert losses.total.item() == pytest.approx(align + 0.5 * MSE_KD, rel=1e-6)
    assert AdaptAlignLoss(config)(output, labels).as_floats() == {"loss": pytest.approx(align, rel=1e-6), "loss_align": pytest.approx(align, rel=1e-6)}
    # Without a teacher only the logits are read (e.g. logits computed elsewhere, no backbone features).
    assert AdaptAlignLoss(config)(AdaptAlignOutput(logits=logits), labels).total.item() == pytest.approx(align, rel=1e-6)
    with pytest.raises(ValueError) as error:
        AdaptAlignLoss(config)(AdaptAlignOutput(embeddings=output.embeddings, image_features=features), labels)
    assert str(error.value) == "The Adapt and Align loss needs the alignment logits: call the model with text_embeds."


# -- save / load ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["vit", "clip", "resnet"])
def test_save_load_round_trip_identical(tmp_path, backbone):
    bb = tiny_backbone_config(backbone)
    model = AdaptAlignModel(tiny_config(bb, train_adapters_only=True, learnable_temperature=True, class_names=["cat", "dog"])).eval()
    _randomise_adapters(model)
    with torch.no_grad():
        model.logit_scale.fill_(1.234)  # a learned temperature must survive too
    x = torch.randn(2, 3, 32, 32)
    text = torch.randn(3, PROJ)
    before = model(pixel_values=x, text_embeds=text)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["auto_map"] == {
        "AutoConfig": "configuration_adapt_align.AdaptAlignConfig",
        "AutoModel": "modeling_adapt_align.AdaptAlignModel",
    }
    assert config["backbone_config"]["model_type"] == bb.model_type
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, AdaptAlignModel) and loaded.config.class_names == ["cat", "dog"]
    after = loaded(pixel_values=x, text_embeds=text)
    assert torch.equal(before.embeddings, after.embeddings) and torch.equal(before.logits, after.logits)
    assert loaded.logit_scale.item() == pytest.approx(1.234)
    for key, value in model.adapter_state_dict().items():
        assert torch.equal(loaded.adapter_state_dict()[key], value), key
    # The adapters-only setting survives the round trip.
    assert {n for n, p in loaded.named_parameters() if p.requires_grad} == {n for n, p in model.named_parameters() if p.requires_grad}
    assert isinstance(AutoConfig.from_pretrained(tmp_path), AdaptAlignConfig)


@pytest.mark.parametrize("backbone", ["vit", "resnet"])
def test_from_backbone_starts_from_the_pretrained_weights(tmp_path, backbone):
    from transformers import ResNetModel, ViTModel

    if backbone == "vit":
        pretrained = ViTModel(tiny_vit_config(), add_pooling_layer=False).eval()
    else:
        pretrained = ResNetModel(tiny_resnet_config()).eval()
    pretrained.save_pretrained(tmp_path / "backbone")
    model = AdaptAlignModel.from_backbone(str(tmp_path / "backbone"), projection_dim=PROJ, adapter_bottleneck_size=8).eval()
    assert model.config.backbone_name_or_path == str(tmp_path / "backbone") and model.adapted_modules
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = pretrained(pixel_values=x)
        expected = out.last_hidden_state[:, 0] if backbone == "vit" else out.pooler_output.flatten(1)
    # Untrained adapters are the identity: the model's backbone feature is the pretrained one.
    assert torch.allclose(model.get_image_features(x), expected, atol=1e-5)




class FakeTextEmbedder:
    """A deterministic stand-in for CLIP / MiniLM: one fixed unit vector per class name."""

    name = provider = "fake"
    dim = PROJ

    def embed(self, names):
        rows = [torch.Generator().manual_seed(zlib.crc32(n.encode())) for n in names]
        return F.normalize(torch.stack([torch.randn(self.dim, generator=g) for g in rows]), dim=-1)

    def to_dict(self):
        return {"provider": self.provider, "dim": self.dim}


def tiny_sbir_data(per_class=2):
    """A DatasetDict in the package's schema: 3 seen classes (train), 2 unseen (test), 24 px images."""
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Image as ImageFeature, Value
    from PIL import Image

    names = ["apple", "boat", "car", "fish", "star"]
    features = Features({"image": ImageFeature(), "label": ClassLabel(names=names), "domain": Value("string"), "id": Value("string")})
    rng = np.random.default_rng(0)

    def split(labels):
        rows = {"image": [], "label": [], "domain": [], "id": []}
        for label in labels:
            for domain in ("sketch", "photo"):
                for k in range(per_class):
                    base = 255 if domain == "sketch" else 40 * label
                    pixels = np.full((24, 24, 3), base, np.uint8)
                    pixels[4 + 3 * label : 12 + 3 * label, 4:20] = rng.integers(0, 120, (8, 16, 3))
                    rows["image"].append(Image.fromarray(pixels))
                    rows["label"].append(label)
                    rows["domain"].append(domain)
                    rows["id"].append(f"{domain}/{names[label]}/{k}")
        return Dataset.from_dict(rows, features=features)

    return DatasetDict({"train": split([0, 1, 2]), "test": split([3, 4])})


def tiny_args(**method_args):
    return SimpleNamespace(
        seed=0, batch_size=3, image_size=32, backbone=None, backbone_config=tiny_vit_config().to_dict(),
        model_config={"adapter_bottleneck_size": 8, "adapter_dropout": 0.0}, output_dir="unused", learning_rate=1e-2,
        eval_batch_size=8, progress=False, method_args=method_args,
    )


@pytest.fixture(scope="module")
def data():
    return tiny_sbir_data()


def _ready_method(data, **method_args):
    method = AdaptAlignMethod(tiny_args(**method_args), class_name_embedder=FakeTextEmbedder())
    model = method.build_model()
    transform = method.build_transform(model)
    method.setup(model, data, transform, accelerator=None)
    return method, model


def test_method_is_registered():
    assert get_method_class("adapt_align") is AdaptAlignMethod


def test_training_steps_reduce_the_loss(data):
    method, model = _ready_method(data)
    assert model.config.projection_dim == PROJ and model.config.class_names == ["apple", "boat", "car"]
    assert model.config.text_embedder == {"provider": "fake", "dim": PROJ}
    batch = method.next_batch(0)
    assert batch["sketch_pixel_values"].shape == batch["photo_pixel_values"].shape == (3, 3, 32, 32)
    optimizer = torch.optim.Adam(method.parameter_groups(model)[0]["params"], lr=5e-4)
    model.train()
    losses = []
    for step in range(6):
        loss, logs = method.training_step(model, batch, step)
        if step == 0:
            assert logs["loss_distill"] < 1e-6  # the teacher is the starting backbone
            assert set(logs) >= {"loss", "loss_align", "loss_distill", "acc_sketch", "acc_photo"}
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert losses[-1] < losses[0], losses
    assert logs["loss_distill"] > 0  # the model moved away from the teacher, and eq. 4 sees it
    # The teacher stayed frozen.
    assert all(not p.requires_grad for p in method.teacher.parameters())


def test_next_batch_is_deterministic_and_class_aligned(data):
    method, _ = _ready_method(data, distillation_weight=0.0)
    assert method.teacher is None
    a, b = method.next_batch(5), method.next_batch(5)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    sketch_idx, photo_idx = method.sampler.batch(5)
    assert method.sketches[sketch_idx]["label"] == method.photos[photo_idx]["label"]


def test_evaluate_reports_the_shared_retrieval_metrics(data):
    method, model = _ready_method(data, use_adapters=False)
    result = method.evaluate(model, data, method.transform)
    assert {"map@all", "map@200", "p@100", "p@200"} <= set(result["metrics"])
    assert result["num_queries"] == 4 and result["num_gallery"] == 4


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"projection_dim": 0}, "projection_dim must be a positive integer"),
        ({"adapter_bottleneck_size": -2}, "adapter_bottleneck_size must be a positive integer"),
        ({"adapter_dropout": 1.0}, r"adapter_dropout must be in \[0, 1\)"),
        ({"adapter_activation": "tanh"}, "adapter_activation must be one of"),
        ({"adapter_target_modules": []}, "adapter_target_modules must be a non-empty list"),
        ({"use_adapters": False, "train_adapters_only": True}, "train_adapters_only=True needs use_adapters=True"),
        ({"alignment_temperature": 0.0}, "alignment_temperature must be > 0"),
        ({"distillation_weight": -1.0}, "distillation_weight must be >= 0"),
        ({"distillation_loss": "kl"}, "distillation_loss must be one of"),
        ({"prompt_template": "a photo"}, "prompt_template must contain"),
        ({"backbone_config": {"model_type": "bert"}}, "Unsupported backbone model_type 'bert'.*ResNetConfig"),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs, message):
    base = {"backbone_config": tiny_vit_config()}
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        AdaptAlignConfig(**base)


def test_bad_use_raises_clear_errors(data):
    with pytest.raises(ValueError, match="matched no module of the TokenBackbone backbone"):
        AdaptAlignModel(tiny_config(adapter_target_modules=["no_such_module"]))
    model = AdaptAlignModel(tiny_config())
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ValueError, match="needs the alignment logits: call the model with text_embeds"):
        AdaptAlignLoss(model.config)(model(pixel_values=x), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"text_embeds must have shape \(num_classes, 16\)"):
        model(pixel_values=x, text_embeds=torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"\(batch, 3, height, width\)"):
        model(pixel_values=torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="Unknown adapt_align method_args"):
        AdaptAlignMethod(tiny_args(gcn_num_layers=2))
    with pytest.raises(ValueError, match="distillation_domains must be one of"):
        AdaptAlignMethod(tiny_args(distillation_domains="all"))
    args = tiny_args()
    args.model_config = {"projection_dim": 32}
    with pytest.raises(ValueError, match="differs from the text encoder's embedding size"):
        AdaptAlignMethod(args, class_name_embedder=FakeTextEmbedder()).build_model()
