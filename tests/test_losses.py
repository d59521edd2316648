"""Each Sketch-an-Anchor loss against a hand computation on a tiny example."""

import math

import pytest
import torch

from hf_sbir.losses import (
    anchor_similarity,
    anchored_sample_loss,
    anchored_semantic_loss,
    info_nce_loss,
    sketch_an_anchor_loss,
)
from hf_sbir.models.sketch_an_anchor import SketchAnAnchorOutput

E = math.e


def test_info_nce_eq1_hand_computed():
    # Two orthogonal pairs, tau = 1: logits [[1, 0], [0, 1]] -> each row -log(e / (e + 1)).
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -math.log(E / (E + 1))
    assert info_nce_loss(s, p, temperature=1.0).item() == pytest.approx(expected, rel=1e-6)
    # tau = 0.5 doubles the logits: -log(e^2 / (e^2 + 1)).
    assert info_nce_loss(s, p, temperature=0.5).item() == pytest.approx(-math.log(E**2 / (E**2 + 1)), rel=1e-6)


def test_info_nce_swapped_pairs_is_worse():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    # Positive logit 0, negative 1: -log(1 / (1 + e)).
    assert info_nce_loss(s, p, 1.0).item() == pytest.approx(math.log(1 + E), rel=1e-6)


def test_anchor_similarity_eq2_is_cosine():
    c = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    a = anchor_similarity(c)
    assert a[0, 1].item() == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert torch.allclose(a.diagonal(), torch.ones(2))


def test_anchored_semantic_loss_eq3_hand_computed():
    # One item of class 0; anchors are the axes; A = [[1, 0], [0, 1]]; tau = tau_a = 1.
    r = torch.tensor([[1.0, 0.0]])
    anchors = torch.eye(2)
    sim = torch.eye(2)
    target = [E / (E + 1), 1 / (E + 1)]  # softmax([1, 0])
    log_p = [-math.log(1 + math.exp(-1)), -math.log(1 + E)]  # log_softmax([1, 0])
    expected = -(target[0] * log_p[0] + target[1] * log_p[1])
    got = anchored_semantic_loss(r, torch.tensor([0]), anchors, sim, temperature=1.0, anchor_temperature=1.0)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_anchored_sample_loss_eq4_hand_computed():
    # Two pairs of classes 0 and 1; A = [[1, .5], [.5, 1]]; tau = 1, tau_a = 0.5.
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    sim = torch.tensor([[1.0, 0.5], [0.5, 1.0]])
    # Row targets: softmax([1, .5] / .5) = softmax([2, 1]) (and mirrored for row 1).
    t_hi, t_lo = E**2 / (E**2 + E), E / (E**2 + E)
    # Row logits: [1, 0] -> log_softmax = [-log(1 + e^-1), -log(1 + e)].
    l_hi, l_lo = -math.log(1 + math.exp(-1)), -math.log(1 + E)
    per_row = -(t_hi * l_hi + t_lo * l_lo)
    got = anchored_sample_loss(s, p, torch.tensor([0, 1]), sim, temperature=1.0, anchor_temperature=0.5)
    assert got.item() == pytest.approx(per_row, rel=1e-6)


def test_anchored_sample_loss_same_class_pairs_share_target():
    # Both pairs from class 0: the target over the two photos is uniform, whatever A says.
    s = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    p = torch.nn.functional.normalize(torch.randn(2, 4), dim=-1)
    sim = torch.tensor([[1.0, 0.2], [0.2, 1.0]])
    logits = s @ p.T / 0.3
    expected = -(0.5 * torch.log_softmax(logits, -1)).sum(-1).mean()
    got = anchored_sample_loss(s, p, torch.tensor([0, 0]), sim, temperature=0.3, anchor_temperature=0.1)
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def _fake_output(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    norm = lambda t: torch.nn.functional.normalize(t, dim=-1)  # noqa: E731
    return SketchAnAnchorOutput(
        embeddings=norm(torch.randn(n, d, generator=g)),
        word_embeddings=norm(torch.randn(n, d, generator=g)),
        visual_embeddings=norm(torch.randn(n, d, generator=g)),
    )


def test_total_is_equal_weighted_sum_of_seven_terms():
    sk, ph = _fake_output(4, 8, 1), _fake_output(4, 8, 2)
    labels = torch.tensor([0, 1, 2, 1])
    anchors = {k: torch.nn.functional.normalize(torch.randn(3, 8), dim=-1) for k in ("word", "visual")}
    sims = {k: anchor_similarity(torch.randn(3, 5)) for k in ("word", "visual")}
    out = sketch_an_anchor_loss(sk, ph, labels, anchors, sims, temperature=0.2, anchor_temperature=0.1)
    assert set(out.semantic) == {"word_sketch", "word_photo", "visual_sketch", "visual_photo"}
    assert set(out.sample) == {"word", "visual"}
    manual = out.nce + sum(out.semantic.values()) + sum(out.sample.values())
    assert out.total.item() == pytest.approx(manual.item(), rel=1e-6)
    # The semantic term for word/sketch is exactly eq. 3 on the word embeddings of the sketches.
    direct = anchored_semantic_loss(sk.word_embeddings, labels, anchors["word"], sims["word"], 0.2, 0.1)
    assert out.semantic["word_sketch"].item() == pytest.approx(direct.item(), rel=1e-6)


def test_baseline_is_info_nce_only():
    sk, ph = _fake_output(3, 8, 3), _fake_output(3, 8, 4)
    out = sketch_an_anchor_loss(sk, ph, torch.tensor([0, 1, 2]), {}, {}, temperature=0.2, anchor_temperature=0.1)
    assert out.total.item() == pytest.approx(info_nce_loss(sk.embeddings, ph.embeddings, 0.2).item(), rel=1e-6)
    assert out.semantic == {} and out.sample == {}
