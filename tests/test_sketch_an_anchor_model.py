"""Sketch-an-Anchor as a Hugging Face model: what is particular to it (RTR tokens, GCN, formulas, config
errors). Shapes, save/load, remote code, peft and gradient flow: tests/test_modeling_common.py."""

import pytest
import torch
from transformers import AutoModel

import hf_sbir  # noqa: F401  (registers the Auto classes)
from hf_sbir import SketchAnAnchorConfig, SketchAnAnchorModel
from hf_sbir.models.sketch_an_anchor import GatedLinearProjection, SelfAttentionAggregation
from hf_sbir.anchors.gcn import AnchorGCN, unified_adjacency
from hf_sbir.losses import anchor_similarity, sketch_an_anchor_loss

from conftest import tiny_vit_config


def test_forward_shapes_and_normalisation(tiny_config):
    model = SketchAnAnchorModel(tiny_config).eval()
    out = model(pixel_values=torch.randn(3, 3, 32, 32))
    for field in ("embeddings", "word_embeddings", "visual_embeddings"):
        value = getattr(out, field)
        assert value.shape == (3, 16)
        assert torch.allclose(value.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert out.word_token_state.shape == (3, 32) and out.visual_token_state.shape == (3, 32)
    assert out.aggregation_weights.shape == (3, 2)
    assert torch.allclose(out.aggregation_weights.sum(-1), torch.ones(3))
    assert out.last_hidden_state is None
    full = model(pixel_values=torch.randn(2, 3, 32, 32), output_hidden_states=True)
    # CLS + 2 RTR tokens + (32/8)^2 patches.
    assert full.last_hidden_state.shape == (2, 1 + 2 + 16, 32)


def test_rtr_tokens_change_the_sequence_not_the_backbone_weights(tiny_config):
    """RTR_word / RTR_visual are two extra tokens in the input sequence (paper §3.4): the backbone keeps the
    architecture and weights of the plain transformers model, and without the tokens computes exactly
    what that plain model computes."""
    from transformers import ViTModel

    model = SketchAnAnchorModel(tiny_config).eval()
    plain = ViTModel(tiny_config.backbone_config, add_pooling_layer=False).eval()
    # Same parameters as the plain model, so its checkpoints load as they are; the tokens live outside.
    assert set(model.backbone.model.state_dict()) == set(plain.state_dict())
    plain.load_state_dict(model.backbone.model.state_dict())
    assert model.rtr_tokens.shape == (2, 32) and not any("rtr" in k for k in model.backbone.state_dict())
    weights = {k: v.clone() for k, v in model.backbone.state_dict().items()}

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = plain(pixel_values=x).last_hidden_state  # (2, 1 + 16, 32)
        out = model(pixel_values=x, output_hidden_states=True)
        # Without the tokens the backbone is the plain model: the image features are its CLS state.
        assert torch.allclose(model.get_image_features(x), reference[:, 0], atol=1e-6)
        assert torch.allclose(model.backbone.model(pixel_values=x).last_hidden_state, reference, atol=1e-6)
    # With them the sequence is CLS, RTR_word, RTR_visual, then the 16 patches ...
    assert out.last_hidden_state.shape == (2, 1 + 2 + 16, 32)
    assert torch.equal(out.word_token_state, out.last_hidden_state[:, 1])
    assert torch.equal(out.visual_token_state, out.last_hidden_state[:, 2])
    assert torch.equal(out.image_features, out.last_hidden_state[:, 0])
    # ... the patches attend to them (the CLS state moves) ...
    assert not torch.allclose(out.image_features, reference[:, 0], atol=1e-4)
    # ... and the tokens are what the word / visual representations are read from.
    with torch.no_grad():
        model.rtr_tokens[1] += torch.randn(32)  # (a constant shift would vanish in LayerNorm)
        moved = model(pixel_values=x)
    assert not torch.allclose(moved.visual_token_state, out.visual_token_state, atol=1e-4)
    assert not torch.allclose(moved.visual_embeddings, out.visual_embeddings, atol=1e-4)
    # Running the model changed no backbone weight.
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, weights[key]), key


def test_other_resolution_interpolates_position_embeddings(tiny_config):
    model = SketchAnAnchorModel(tiny_config).eval()
    assert model(pixel_values=torch.randn(1, 3, 48, 48)).embeddings.shape == (1, 16)


@pytest.mark.parametrize("kind", ["dinov2", "clip_vision_model"])
def test_other_vit_family_backbones(kind, tmp_path):
    """A DINOv2 or CLIP vision checkpoint works as the backbone: `from_backbone` loads its weights (the
    image features are the checkpoint's own CLS representation), the two RTR tokens join its sequence,
    and the model saves and loads."""
    if kind == "dinov2":
        from transformers import Dinov2Config as C, Dinov2Model as M
    else:
        from transformers import CLIPVisionConfig as C, CLIPVisionModel as M
    bb = C(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, image_size=32, patch_size=8)
    checkpoint = M(bb).eval()
    checkpoint.save_pretrained(tmp_path / "ckpt")
    model = SketchAnAnchorModel.from_backbone(
        str(tmp_path / "ckpt"), projection_dim=16, gcn_hidden_size=24, gcn_num_layers=2, word_anchor_dim=10
    ).eval()
    assert model.config.backbone_config.model_type == kind
    assert model.config.backbone_name_or_path == str(tmp_path / "ckpt")  # recorded for the model card
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        reference = checkpoint(pixel_values=x)
        # The checkpoint's own image representation: DINOv2's normed CLS state, CLIP's pooled (post-LN) CLS.
        expected = reference.pooler_output if kind == "clip_vision_model" else reference.last_hidden_state[:, 0]
        torch.testing.assert_close(model.get_image_features(x), expected, atol=1e-5, rtol=1e-5)
        out = model(pixel_values=x, output_hidden_states=True)
    assert out.embeddings.shape == (2, 16)
    assert torch.allclose(out.embeddings.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert out.last_hidden_state.shape == (2, 1 + 2 + 16, 32)
    assert not torch.allclose(out.image_features, expected, atol=1e-4)  # the RTR tokens are attended to
    # Final-norm handling: the token states are normalised like the CLS state (unit-variance rows).
    token_std = out.word_token_state.std(dim=-1, unbiased=False)
    assert torch.allclose(token_std, torch.ones(2), atol=0.05)
    model.save_pretrained(tmp_path / "saved")
    loaded = AutoModel.from_pretrained(tmp_path / "saved").eval()
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).embeddings, out.embeddings)








def _loss_for(model, n_classes=3):
    torch.manual_seed(1)
    sketches, photos = torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0])
    word, visual = torch.randn(n_classes, 10), torch.randn(n_classes, 32)
    adapted = model.adapt_anchors(word, visual).as_dict()
    sims = {"word": anchor_similarity(word), "visual": anchor_similarity(visual)}
    cfg = model.config
    return sketch_an_anchor_loss(
        model(pixel_values=sketches), model(pixel_values=photos), labels, adapted, sims,
        cfg.contrastive_temperature, cfg.anchor_similarity_temperature,
    ).total


def test_gradients_reach_tokens_heads_gcn_and_backbone(tiny_config):
    model = SketchAnAnchorModel(tiny_config)
    _loss_for(model).backward()
    named = dict(model.named_parameters())
    for name in (
        "rtr_tokens",
        "word_projection.linear.weight",
        "visual_projection.gate.weight",
        "aggregation.query",
        "aggregation.value.weight",
        "anchor_gcn.word_in.weight",
        "anchor_gcn.visual_in.weight",
        "anchor_gcn.layers.0.weight",
        "anchor_gcn.layers.1.weight",
        "backbone.model.embeddings.patch_embeddings.projection.weight",
        "backbone.model.layers.0.attention.q_proj.weight",
    ):
        assert named[name].grad is not None and named[name].grad.abs().sum() > 0, name


def test_gated_projection_and_self_attention_follow_their_formulas():
    """p(x): y = Wx + b, out = y * sigmoid(W_g y + b_g) (context gating); sa(h_1..h_K): p = softmax_i(u . A h_i
    / sqrt(d)), out = sum_i p_i C h_i (Sukhbaatar et al.), a weighted average of the token outputs."""
    torch.manual_seed(0)
    proj = GatedLinearProjection(6, 4)
    x = torch.randn(3, 6)
    y = x @ proj.linear.weight.T + proj.linear.bias
    torch.testing.assert_close(proj(x), y * torch.sigmoid(y @ proj.gate.weight.T + proj.gate.bias))

    sa = SelfAttentionAggregation(6, 4)
    with torch.no_grad():
        sa.query.copy_(torch.randn(4))
    states = torch.randn(3, 2, 6)
    scores = (states @ sa.key.weight.T + sa.key.bias) @ sa.query / 2.0  # sqrt(4)
    weights = torch.softmax(scores, dim=1)
    values = states @ sa.value.weight.T + sa.value.bias
    out, got_weights = sa(states)
    torch.testing.assert_close(got_weights, weights)
    torch.testing.assert_close(out, (weights[..., None] * values).sum(dim=1))


def test_adapted_anchors_come_back_for_the_kinds_given(tiny_config):
    model = SketchAnAnchorModel(tiny_config).eval()
    x = torch.randn(2, 3, 32, 32)
    word, visual = torch.randn(3, 10), torch.randn(3, 32)
    with torch.no_grad():
        none = model(pixel_values=x)
        only_word = model(pixel_values=x, word_anchors=word)
        only_visual = model(pixel_values=x, visual_anchors=visual)
        both = model(pixel_values=x, word_anchors=word, visual_anchors=visual)
    assert none.adapted_word_anchors is None and none.adapted_visual_anchors is None
    assert only_word.adapted_word_anchors.shape == (3, 16) and only_word.adapted_visual_anchors is None
    assert only_visual.adapted_visual_anchors.shape == (3, 16) and only_visual.adapted_word_anchors is None
    adapted = model.adapt_anchors(word, visual)
    torch.testing.assert_close(both.adapted_word_anchors, adapted.word)
    torch.testing.assert_close(both.adapted_visual_anchors, adapted.visual)


def test_unified_adjacency_structure():
    word, visual = torch.randn(3, 5), torch.randn(3, 4)
    adj = unified_adjacency(word, visual, temperature=1.0)
    assert adj.shape == (6, 6)
    assert torch.allclose(adj.sum(-1), torch.ones(6))
    # No edge between word node 0 and visual node 1 (different classes across graphs).
    assert adj[0, 4] == 0 and adj[4, 0] == 0
    # Word node 0 -> visual node 0 is weighted like its self-connection (cos = 1).
    assert torch.isclose(adj[0, 3], adj[0, 0])
    # Within the word graph, weights follow the softmax of cosine similarities.
    wn = torch.nn.functional.normalize(word, dim=-1)
    logits = torch.cat([wn[0] @ wn.T, torch.tensor([1.0])])
    assert torch.allclose(adj[0, [0, 1, 2, 3]], torch.softmax(logits, 0), atol=1e-6)


def test_unified_adjacency_of_one_anchor_kind_and_its_errors():
    visual = torch.randn(4, 5, dtype=torch.float64)
    adj = unified_adjacency(None, visual, temperature=0.5)
    assert adj.shape == (4, 4) and adj.dtype == torch.float64
    vn = torch.nn.functional.normalize(visual, dim=-1)
    torch.testing.assert_close(adj, torch.softmax(vn @ vn.T / 0.5, dim=-1))
    with pytest.raises(ValueError, match=r"^unified_adjacency needs word anchors, visual anchors, or both\.$"):
        unified_adjacency(None, None, temperature=1.0)
    # Built on the anchors' device (the "meta" device stands in for a GPU).
    meta = unified_adjacency(torch.randn(3, 5, device="meta"), torch.randn(3, 4, device="meta"), temperature=1.0)
    assert meta.device.type == "meta" and meta.shape == (6, 6)


@pytest.mark.parametrize("num_layers", [1, 3])
def test_gcn_layers_follow_eq5_with_relu_between_layers(num_layers):
    """Eq. 5, V^{l+1} = Â V^l W^l, stacked with a ReLU between layers and none after the last, the output
    rows L2-normalised and split back into word and visual anchors."""
    torch.manual_seed(0)
    gcn = AnchorGCN(word_dim=5, visual_dim=4, hidden_size=8, output_dim=6, num_layers=num_layers, temperature=0.3)
    word, visual = torch.randn(3, 5), torch.randn(3, 4)
    adj = unified_adjacency(word, visual, temperature=0.3)
    hidden = torch.cat([gcn.word_in(word), gcn.visual_in(visual)])
    for i, layer in enumerate(gcn.layers):
        hidden = adj @ (hidden @ layer.weight.T)
        if i < num_layers - 1:
            hidden = hidden.clamp_min(0)
    expected = torch.nn.functional.normalize(hidden, dim=-1)
    out = gcn(word, visual)
    torch.testing.assert_close(out.word, expected[:3])
    torch.testing.assert_close(out.visual, expected[3:])
    assert (expected < 0).any()  # no ReLU after the last layer: adapted anchors can point anywhere


def test_gcn_zero_layers_is_projection_only():
    gcn = AnchorGCN(word_dim=5, visual_dim=4, hidden_size=8, output_dim=6, num_layers=0, temperature=0.1)
    word = torch.randn(3, 5)
    out = gcn(word, None)
    assert out.visual is None and out.word.shape == (3, 6)
    only_visual = gcn(None, torch.randn(3, 4))
    assert only_visual.word is None and only_visual.visual.shape == (3, 6)
    assert gcn(None, None).as_dict() == {}
    assert torch.allclose(out.word, torch.nn.functional.normalize(gcn.word_in(word), dim=-1))


def test_adapt_anchors_checks_shapes(tiny_config):
    model = SketchAnAnchorModel(tiny_config)
    with pytest.raises(ValueError, match="word_anchors must have shape"):
        model.adapt_anchors(torch.randn(3, 7), None)
    with pytest.raises(ValueError, match=r"^visual_anchors must have shape \(num_classes, 32\); got \(3, 7\)\.$"):
        model.adapt_anchors(None, torch.randn(3, 7))
    with pytest.raises(ValueError, match=r"^word_anchors \(3 classes\) and visual_anchors \(4\) differ\.$"):
        model.adapt_anchors(torch.randn(3, 10), torch.randn(4, 32))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"projection_dim": 0}, "projection_dim must be a positive integer"),
        ({"gcn_num_layers": -1}, "gcn_num_layers must be an integer >= 0"),
        ({"contrastive_temperature": 0.0}, "contrastive_temperature must be > 0"),
        ({"backbone_gradient_scale": -1.0}, "backbone_gradient_scale must be >= 0"),
        ({"backbone_config": {"model_type": "bert"}}, "Unsupported backbone model_type 'bert'"),
        ({"backbone_config": {"hidden_size": 3}}, "must be a transformers config or a dict with a 'model_type'"),
        ({"anchor_class_names": ["a", "b"], "num_anchor_classes": 3}, "does not match"),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs, message):
    base = {"backbone_config": tiny_vit_config()}
    base.update(kwargs)
    with pytest.raises(ValueError, match=message):
        SketchAnAnchorConfig(**base)


def test_config_defaults_are_the_papers_recipe():
    """§4.2 and §3.5: 512-unit projections and a 4-layer, 512-unit GCN, backbone gradient x 0.1, the 10 nearest
    words, visual noise at the class std, both anchor kinds and both randomisations on."""
    config = SketchAnAnchorConfig(backbone_config=tiny_vit_config())
    expected = dict(
        projection_dim=512, gcn_num_layers=4, gcn_hidden_size=512, backbone_gradient_scale=0.1, word_anchor_neighbours=10,
        visual_anchor_noise_scale=1.0, randomize_word_anchors=True, randomize_visual_anchors=True, use_word_anchors=True,
        use_visual_anchors=True, word_anchor_dim=384, visual_anchor_dim=32, num_anchor_classes=0, anchor_class_names=None,
        backbone_name_or_path=None, contrastive_temperature=0.1, anchor_similarity_temperature=0.1, initializer_range=0.02,
    )
    for key, value in expected.items():
        assert getattr(config, key) == value, key


def test_config_records_what_it_is_given():
    config = SketchAnAnchorConfig(
        backbone_config=tiny_vit_config(), backbone_name_or_path="some/backbone", visual_anchor_dim=7,
        anchor_class_names=("cat", "dog"), randomize_word_anchors=False, gcn_num_layers=0, backbone_gradient_scale=0.0,
        visual_anchor_noise_scale=0.0, word_anchor_dim=1,
    )
    assert config.backbone_name_or_path == "some/backbone" and config.visual_anchor_dim == 7
    assert config.anchor_class_names == ["cat", "dog"] and config.num_anchor_classes == 2  # derived from the names
    assert config.randomize_word_anchors is False and config.gcn_num_layers == 0
    assert SketchAnAnchorConfig(backbone_config=tiny_vit_config(), num_anchor_classes=5).num_anchor_classes == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"word_anchor_dim": 0}, "word_anchor_dim must be a positive integer; got 0."),
        ({"gcn_hidden_size": -3}, "gcn_hidden_size must be a positive integer; got -3."),
        ({"word_anchor_neighbours": True}, "word_anchor_neighbours must be a positive integer; got True."),
        ({"visual_anchor_dim": 0}, "visual_anchor_dim must be a positive integer; got 0."),
        ({"projection_dim": 2.5}, "projection_dim must be a positive integer; got 2.5."),
        ({"anchor_similarity_temperature": 0.0}, "anchor_similarity_temperature must be > 0; got 0.0."),
        ({"visual_anchor_noise_scale": -0.5}, "visual_anchor_noise_scale must be >= 0; got -0.5."),
        ({"anchor_class_names": ["a", "b"], "num_anchor_classes": 1}, "num_anchor_classes (1) does not match len(anchor_class_names) (2)."),
    ],
)
def test_config_errors_name_the_setting_and_the_value(kwargs, message):
    with pytest.raises(ValueError) as info:
        SketchAnAnchorConfig(backbone_config=tiny_vit_config(), **kwargs)
    assert str(info.value) == message


def test_return_dict_false_gives_a_tuple(tiny_config):
    model = SketchAnAnchorModel(tiny_config).eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        out = model(pixel_values=x)
        as_tuple = model(pixel_values=x, return_dict=False)
        explicit = model(pixel_values=x, return_dict=True)
    assert isinstance(as_tuple, tuple) and torch.equal(as_tuple[0], out.embeddings)
    assert torch.equal(explicit.embeddings, out.embeddings)




def test_config_dict_round_trip(tiny_config):
    again = SketchAnAnchorConfig.from_dict(tiny_config.to_dict())
    assert again.backbone_config.to_dict() == tiny_config.backbone_config.to_dict()
    assert again.projection_dim == 16 and again.gcn_num_layers == 2
