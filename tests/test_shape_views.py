"""Shape views (arXiv 2306.08541): layer selection, scale normalisation, synthetic sketches, the contrastive
loss, save/load, per-layer sweep, and a few training steps. Tiny encoders, data drawn by the tests."""

import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoConfig, AutoModel, ResNetConfig

import hf_sbir  # noqa: F401  (registers the Auto classes)
from hf_sbir.losses.shape_views import contrastive_cross_entropy
from hf_sbir.models.shape_views import (
    ScaleNormalize,
    ShapeViewsConfig,
    ShapeViewsImageTransform,
    ShapeViewsModel,
    make_shape,
    render_shape_view,
    synthesize_sketch,
)
from hf_sbir.retrieval.evaluation import evaluate_instance_retrieval, sweep_layers

from conftest import tiny_vit_config


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models run fastest on one thread; with several, OpenMP workers spin-wait on busy shared cores
    (a 64 px EfficientNet forward: 0.04 s on 1 thread, 1-5 s on 2 busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_vit(**kwargs):
    return ShapeViewsConfig(backbone_config=tiny_vit_config(num_hidden_layers=4), **kwargs)


def tiny_resnet_config():
    return ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 16, 16], depths=[1, 1, 1, 1])


# -- layer selection ------------------------------------------------------------------------------
def test_vit_layer_selection_matches_backbone_hidden_states():
    config = tiny_vit(pooling_grid_size=2)
    assert config.feature_layer == 4 and config.pooling == "grid"  # the paper's 6, clipped to a 4-block encoder (layers 0..4)
    assert ShapeViewsConfig(backbone_config=tiny_vit_config(num_hidden_layers=12)).feature_layer == 6
    model = ShapeViewsModel(config).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        own = model.backbone.model(pixel_values=x, output_hidden_states=True).hidden_states
        assert len(own) == model.num_feature_layers == 5
        for layer in (0, 2, 4, -1):
            out = model(pixel_values=x, feature_layer=layer, pooling="mean")
            torch.testing.assert_close(out.features, own[layer][:, 1:].mean(dim=1))  # mean over patch tokens
            torch.testing.assert_close(out.embeddings.norm(dim=-1), torch.ones(3))
        # default "grid": the 4 x 4 patch tokens (32 px / patch 8) average-pooled to 2 x 2, flattened
        patch_map = own[3][:, 1:].transpose(1, 2).reshape(3, 32, 4, 4)
        expected = torch.nn.functional.avg_pool2d(patch_map, 2).flatten(1)
        torch.testing.assert_close(model(pixel_values=x, feature_layer=3).features, expected)
        cls = model(pixel_values=x, feature_layer=2, pooling="cls")
        torch.testing.assert_close(cls.features, own[2][:, 0])
        flat = model(pixel_values=x, feature_layer=2, pooling="flatten")
        assert flat.features.shape == (3, 16 * 32)
        # every layer from one pass equals the single-layer result
        all_layers = model(pixel_values=x, output_all_layers=True, output_hidden_states=True)
        assert len(all_layers.layer_embeddings) == 5
        torch.testing.assert_close(all_layers.layer_embeddings[2], model(pixel_values=x, feature_layer=2).embeddings)
        torch.testing.assert_close(all_layers.hidden_states[3], own[3])
    with pytest.raises(ValueError, match="feature_layer"):
        tiny_vit(feature_layer=5)


def test_resnet_layer_selection_matches_backbone_hidden_states():
    config = ShapeViewsConfig(backbone_config=tiny_resnet_config().to_dict())
    assert config.feature_layer == 3 and config.num_feature_layers == 5  # stem + 4 stages; "ResNet layer 3"
    model = ShapeViewsModel(config).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        own = model.backbone(pixel_values=x, output_hidden_states=True).hidden_states
        out = model(pixel_values=x, pooling="mean")
        torch.testing.assert_close(out.features, own[3].mean(dim=(2, 3)))
        assert out.embeddings.shape == (2, 16)
        assert model(pixel_values=x).embeddings.shape == (2, 16 * 4 * 4)  # default 4 x 4 grid of a 4 x 4 map
        assert torch.equal(model(pixel_values=x, pooling="max").features, own[3].amax(dim=(2, 3)))
    with pytest.raises(ValueError, match="token layer"):
        ShapeViewsConfig(backbone_config=tiny_resnet_config(), pooling="cls")


def test_hybrid_layer_numbering():
    from hf_sbir.backbones import HybridEfficientNetConfig

    backbone = HybridEfficientNetConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64, image_size=64)
    config = ShapeViewsConfig(backbone_config=backbone)
    assert config.num_feature_layers == 8 and config.feature_layer == 3  # CNN stride-16 stage
    model = ShapeViewsModel(config).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(pixel_values=x, output_hidden_states=True, pooling="mean")
        states = out.hidden_states
        assert [s.shape[-1] for s in states[:5]] == [32, 16, 8, 4, 2]  # strides 2, 4, 8, 16, 32
        torch.testing.assert_close(states[5], model.backbone.cnn_features(x))
        torch.testing.assert_close(model.backbone.layernorm(states[-1]), model.backbone(x).last_hidden_state)
        torch.testing.assert_close(out.features, states[3].mean(dim=(2, 3)))


# -- scale normalisation --------------------------------------------------------------------------
def _chair_outline(scale: float, center: tuple[float, float], size: int = 128, supersample: int = 4) -> Image.Image:
    """A chair-like line drawing; stroke width proportional to the drawing's size (drawn at 4x, then reduced)."""
    big = size * supersample
    points = [(-0.4, -0.9), (-0.4, 0.1), (0.4, 0.1), (0.4, 0.9), (0.4, 0.1), (-0.4, 0.1), (-0.4, 0.9), (-0.4, 0.1), (-0.4, -0.9), (0.2, -0.7)]
    cx, cy = center
    xy = [((cx + scale * 0.5 * px) * big, (cy + scale * 0.5 * py) * big) for px, py in points]
    img = Image.new("L", (big, big), 255)
    ImageDraw.Draw(img).line(xy, fill=0, width=max(1, round(0.04 * scale * big)), joint="curve")
    return img.resize((size, size), Image.Resampling.LANCZOS)


def test_scale_normalize_maps_small_and_large_drawings_to_the_same_image():
    small = _chair_outline(0.4, (0.3, 0.7))  # small, off-centre
    large = _chair_outline(0.95, (0.5, 0.5))
    raw_diff = np.abs(np.asarray(small, float) - np.asarray(large, float)).mean() / 255
    step = ScaleNormalize(object_fraction=0.8)
    a, b = np.asarray(step(small), float) / 255, np.asarray(step(large), float) / 255
    assert a.shape == b.shape == (128, 128)
    diff = np.abs(a - b).mean()
    ink_a, ink_b = a < 0.5, b < 0.5
    iou = (ink_a & ink_b).sum() / (ink_a | ink_b).sum()
    raw_ink_small, raw_ink_large = np.asarray(small) < 128, np.asarray(large) < 128
    raw_iou = (raw_ink_small & raw_ink_large).sum() / (raw_ink_small | raw_ink_large).sum()
    assert diff < 0.025 and iou > 0.8, (diff, iou)  # near-identical: only the enlarged small drawing is blurrier
    assert raw_iou < 0.1 and raw_diff > 4 * diff, (raw_iou, raw_diff)
    # the object's longer side is the requested fraction of the canvas
    ink = np.argwhere(a < 200 / 255)
    extent = (ink.max(axis=0) - ink.min(axis=0) + 1).max()
    assert abs(extent - 0.8 * 128) <= 3
    # inside the package's transform, identically for query sketches and gallery views
    transform = ShapeViewsImageTransform(image_size=64, scale_object_fraction=0.8)
    q, g = transform(small, "sketch"), transform(large, "view")
    assert q.shape == (3, 64, 64)
    assert (q - g).abs().mean() < 0.1 < (transform.__class__(image_size=64, scale_object_fraction=None)(small, "sketch") - g).abs().mean()
    assert ShapeViewsImageTransform.from_dict(transform.to_dict()).scale_object_fraction == 0.8


# -- synthetic sketches ---------------------------------------------------------------------------
def test_synthetic_sketches_are_deterministic_and_styles_differ():
    view = render_shape_view(make_shape("chair", 3), azimuth=40, elevation=20, size=64)
    assert view.mask.any() and np.isinf(view.depth[~view.mask]).all()
    render_again = render_shape_view(make_shape("chair", 3), azimuth=40, elevation=20, size=64)
    assert np.array_equal(np.asarray(view.image), np.asarray(render_again.image))

    def pixels(style, seed):
        return np.asarray(synthesize_sketch(view.image, view.depth, style=style, seed=seed))

    clean, stylized = pixels("clean", 0), pixels("stylized", 0)
    assert clean.shape == (64, 64) and (clean < 128).any()
    assert np.array_equal(stylized, pixels("stylized", 0))  # same seed, same drawing
    assert not np.array_equal(stylized, pixels("stylized", 1))  # seeds differ
    assert np.array_equal(clean, pixels("clean", 5))  # the clean style has no randomness
    assert np.abs(clean.astype(float) - stylized.astype(float)).mean() > 10  # styles differ
    assert (stylized < 128).sum() > (clean < 128).sum()  # stylised strokes are thicker
    assert (np.asarray(synthesize_sketch(depth=view.depth)) < 128).any()  # depth map alone: occluding contours


# -- loss -------------------------------------------------------------------------------------------
def test_contrastive_cross_entropy_matches_hand_computation():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised inside: rows become (1, 0) and (0, 1)
    b = torch.tensor([[1.0, 0.0], [0.6, 0.8]])
    tau = 0.5
    # s = [[1, 0.6], [0, 0.8]] / tau
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    col0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(0.0)))
    col1 = -math.log(math.exp(1.6) / (math.exp(1.2) + math.exp(1.6)))
    one_way = contrastive_cross_entropy(a, b, tau, symmetric=False)
    assert one_way.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert contrastive_cross_entropy(a, b, tau).item() == pytest.approx((row0 + row1 + col0 + col1) / 4, rel=1e-6)


def test_contrastive_cross_entropy_uses_cosines_and_refuses_other_shapes():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 3, generator=g), torch.randn(5, 3, generator=g)
    unit = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    scale = torch.tensor([[0.5], [3.0], [1.0], [7.0], [0.2]])  # each row's length differs: only directions count
    expected = contrastive_cross_entropy(unit(a), unit(b), 0.3)
    torch.testing.assert_close(contrastive_cross_entropy(a * scale, b * scale.flip(0), 0.3), expected)
    with pytest.raises(ValueError, match=r"^embeds_a and embeds_b must both be \(N, D\); got \(5, 3\) and \(4, 3\)\.$"):
        contrastive_cross_entropy(a, b[:4], 0.3)
    with pytest.raises(ValueError, match=r"^embeds_a and embeds_b must both be \(N, D\); got \(1, 5, 3\) and \(1, 5, 3\)\.$"):
        contrastive_cross_entropy(a[None], b[None], 0.3)
    # Computed where the inputs live (the "meta" device stands in for a GPU: it mixes with CPU tensors no better).
    assert contrastive_cross_entropy(a.to("meta"), b.to("meta"), 0.3).device.type == "meta"


# -- save / load ------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", ["vit", "resnet"])
def test_save_load_round_trip(tmp_path, backbone):
    backbone_config = tiny_vit_config() if backbone == "vit" else tiny_resnet_config()
    model = ShapeViewsModel(ShapeViewsConfig(backbone_config=backbone_config, feature_layer=1, pooling="max")).eval()
    model.save_pretrained(tmp_path)
    for name in ("configuration_shape_views.py", "modeling_shape_views.py", "modeling_backbones.py"):
        assert (tmp_path / name).is_file()  # remote-code bundle
    assert AutoConfig.from_pretrained(tmp_path).model_type == "shape_views"
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, ShapeViewsModel)
    assert (loaded.config.feature_layer, loaded.config.pooling) == (1, "max")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).embeddings, loaded(pixel_values=x).embeddings)
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


# -- evaluation -------------------------------------------------------------------------------------
def test_sweep_layers_reports_every_layer_from_one_pass():
    model = ShapeViewsModel(tiny_vit()).eval()
    views = [render_shape_view(make_shape("lamp", k), 30, 20, size=48) for k in range(4)]
    gallery = [synthesize_sketch(v.image, v.depth, "clean") for v in views]
    queries = [synthesize_sketch(v.image, v.depth, "stylized", seed=k) for k, v in enumerate(views)]
    transform = ShapeViewsImageTransform.for_model(model, image_size=32)
    sweep = sweep_layers(model, queries, gallery, transform=transform, batch_size=3)
    assert sorted(sweep.per_layer) == [0, 1, 2, 3, 4] and sweep.best_layer in sweep.per_layer
    for layer in (1, 4):
        single = evaluate_instance_retrieval(model, queries, gallery, transform=transform, feature_layer=layer)
        assert single == sweep.per_layer[layer]
    assert "| layer |" in sweep.to_markdown()


# -- training ---------------------------------------------------------------------------------------
def test_training_steps_reduce_the_loss(tmp_path):
    from hf_sbir.training import TrainConfig
    from hf_sbir.training.methods import get_method_class

    args = TrainConfig(
        method="shape_views", backbone_config=tiny_vit_config(num_hidden_layers=3).to_dict(), batch_size=6, image_size=32,
        learning_rate=1e-3, eval_batch_size=16, output_dir=str(tmp_path), progress=False,
        method_args={"num_train_shapes": 4, "views_per_shape": 2, "num_test_shapes": 3, "render_size": 48, "feature_layer": 2},
    )
    method = get_method_class("shape_views")(args)
    model = method.build_model()
    transform = method.build_transform(model)
    method.setup(model, None, transform, None)
    # blocks above the feature layer and the final norm cannot reach the embeddings: frozen
    vit = model.backbone.model
    blocks = vit.layers if hasattr(vit, "layers") else vit.encoder.layer  # the block list moved in transformers 5
    assert not any(p.requires_grad for p in [*blocks[2].parameters(), *vit.layernorm.parameters()])
    assert all(p.requires_grad for p in blocks[1].parameters())
    batch = method.next_batch(0)
    assert batch["style_a_pixel_values"].shape == batch["style_b_pixel_values"].shape == (6, 3, 32, 32)
    assert all(torch.equal(batch[k], method.next_batch(0)[k]) for k in batch)  # a pure function of (seed, step)
    assert not torch.equal(batch["style_a_pixel_values"], batch["style_b_pixel_values"])

    with torch.no_grad():
        before, _ = method.training_step(model.eval(), batch, 0)
    optimizer = torch.optim.Adam(method.parameter_groups(model), lr=args.learning_rate)
    model.train()
    for step in range(5):
        loss, logs = method.training_step(model, method.next_batch(step), step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert set(logs) == {"loss", "pair_acc@1"}
    with torch.no_grad():
        after, _ = method.training_step(model.eval(), batch, 0)
    assert after.item() < before.item()

    result = method.evaluate(model, None, transform)
    assert set(result["metrics"]) == {"acc@1", "acc@5"} and result["num_queries"] == 6
    assert 0.0 <= result["metrics"]["acc@1"] <= result["metrics"]["acc@5"] <= 1.0
    assert sorted(result["per_layer"]) == ["0", "1", "2", "3"]
    assert result["per_layer"]["2"] == result["metrics"]


def test_loss_module_pairs_the_two_halves_with_the_configs_temperature():
    """ShapeViewsLoss on the model output: the first `num_first` embeddings against the rest, row i with row i,
    at the config's temperature, symmetric by default (both directions averaged) or one-way when asked."""
    from types import SimpleNamespace

    from hf_sbir.losses.shape_views import ShapeViewsLoss

    g = torch.Generator().manual_seed(0)
    embeddings = torch.randn(6, 5, generator=g, dtype=torch.float64)
    output = SimpleNamespace(embeddings=embeddings)
    config = SimpleNamespace(contrastive_temperature=0.25)
    a, b = embeddings[:3], embeddings[3:]
    one_way = contrastive_cross_entropy(a, b, 0.25, symmetric=False)
    both = contrastive_cross_entropy(a, b, 0.25, symmetric=True)
    assert not torch.isclose(one_way, both) and not torch.isclose(both, contrastive_cross_entropy(a, b, 1.0))
    torch.testing.assert_close(ShapeViewsLoss(config)(output, num_first=3), both)
    torch.testing.assert_close(ShapeViewsLoss(config, symmetric=False)(output, num_first=3), one_way)
    assert ShapeViewsLoss(config).symmetric is True


def test_contrastive_cross_entropy_gathers_the_global_batch_by_default(monkeypatch):
    """Under data parallelism the other views of the *global* batch are the negatives, by default (a stand-in
    for the two-process gather: this process holds the first half, the other process the second; the real
    gather is tested with two processes in test_distributed.py)."""
    import hf_sbir.losses.shape_views as shape_views

    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(6, 4, generator=g, dtype=torch.float64), torch.randn(6, 4, generator=g, dtype=torch.float64)
    local_a, local_b = a[:3], b[:3]
    other = {id(local_a): a[3:], id(local_b): b[3:]}
    monkeypatch.setattr(shape_views, "gather_with_grad", lambda t: torch.cat([t, other[id(t)]]))
    torch.testing.assert_close(contrastive_cross_entropy(local_a, local_b, 0.1), contrastive_cross_entropy(a, b, 0.1, gather=False))
    local = contrastive_cross_entropy(local_a, local_b, 0.1, gather=False)
    assert not torch.isclose(local, contrastive_cross_entropy(a, b, 0.1, gather=False))
