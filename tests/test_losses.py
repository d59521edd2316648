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

from paper_losses import unit, ref_eq1, ref_eq2, ref_eq3, ref_eq4, ref_total

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


# -- each of the seven terms against its equation, on an asymmetric example -------------------------
# The small examples above are symmetric (sketch rows == photo rows, identity-like anchors), so a
# swapped role or a softmax over the wrong axis gives the same number there. Here every row differs:
# sketches != photos, S @ P.T is not symmetric, a class repeats in the batch, and the anchor
# similarity rows have different sums. The reference is the paper's formula in plain Python loops.

LABELS = [2, 0, 2, 1]  # class 2 twice; batch rows are not in class order
TAU, TAU_A = 0.5, 0.25
# Word and visual anchors of 3 classes in different spaces; their similarity rows have different sums.
WORD_ANCHORS = torch.tensor([[1.0, 0.2, 0.0], [0.6, 1.0, -0.3], [-0.2, 0.4, 1.0]], dtype=torch.float64)
VISUAL_ANCHORS = torch.tensor([[0.3, -1.0, 0.5, 0.2], [1.0, 0.1, 0.0, -0.4], [0.9, 0.3, 0.2, 0.0]], dtype=torch.float64)


def _outputs():
    """Sketch and photo outputs whose every field differs, and adapted anchors (C, 4) per kind."""
    sketch = SketchAnAnchorOutput(
        embeddings=unit([[1.0, 0.3, -0.2, 0.0], [0.1, 1.0, 0.4, -0.5], [0.7, -0.2, 0.9, 0.1], [-0.3, 0.2, 0.1, 1.0]]),
        word_embeddings=unit([[0.9, -0.4, 0.2, 0.3], [0.0, 0.8, -0.6, 0.2], [0.5, 0.5, 0.5, -0.1], [-0.7, 0.1, 0.3, 0.6]]),
        visual_embeddings=unit([[0.2, 0.9, 0.1, -0.3], [1.0, -0.1, 0.3, 0.0], [-0.4, 0.3, 0.8, 0.2], [0.3, 0.3, -0.9, 0.4]]),
    )
    photo = SketchAnAnchorOutput(
        embeddings=unit([[0.8, 0.6, 0.1, -0.2], [0.3, 0.9, -0.1, 0.1], [0.2, -0.5, 1.0, 0.4], [0.0, -0.3, 0.4, 0.9]]),
        word_embeddings=unit([[0.6, 0.1, 0.7, -0.2], [-0.2, 1.0, 0.0, 0.5], [0.9, 0.2, -0.3, 0.1], [0.1, -0.6, 0.5, 0.7]]),
        visual_embeddings=unit([[-0.1, 0.7, 0.6, 0.2], [0.8, 0.4, -0.2, 0.3], [0.1, 0.1, 0.9, -0.6], [0.5, -0.5, 0.1, 0.8]]),
    )
    adapted = {
        "word": unit([[0.9, 0.1, -0.3, 0.2], [0.2, 0.8, 0.4, -0.1], [-0.5, 0.3, 0.7, 0.6]]),
        "visual": unit([[0.1, -0.8, 0.5, 0.3], [0.7, 0.7, 0.0, -0.2], [0.4, 0.2, -0.6, 0.9]]),
    }
    return sketch, photo, adapted


def test_example_is_asymmetric():
    """Guards the example itself: symmetric data would hide swapped roles and wrong softmax axes."""
    sketch, photo, _ = _outputs()
    for field in ("embeddings", "word_embeddings", "visual_embeddings"):
        logits = getattr(sketch, field) @ getattr(photo, field).T
        assert not torch.allclose(logits, logits.T), field
    for anchors in (WORD_ANCHORS, VISUAL_ANCHORS):
        sums = anchor_similarity(anchors).sum(dim=1)
        assert len({round(v, 3) for v in sums.tolist()}) == 3


def test_eq2_anchor_similarity_matches_its_formula():
    for anchors in (WORD_ANCHORS, VISUAL_ANCHORS):
        torch.testing.assert_close(anchor_similarity(anchors), ref_eq2(anchors))


def test_eq1_info_nce_sketch_is_the_query_and_photos_the_candidates():
    sketch, photo, _ = _outputs()
    got = info_nce_loss(sketch.embeddings, photo.embeddings, TAU).item()
    assert got == pytest.approx(ref_eq1(sketch.embeddings, photo.embeddings, TAU), rel=1e-9)
    # The roles matter on this example: photo-as-query is another number.
    assert got != pytest.approx(ref_eq1(photo.embeddings, sketch.embeddings, TAU), rel=1e-3)


def test_eq3_semantic_loss_targets_are_the_anchor_row_of_each_items_class():
    sketch, _, adapted = _outputs()
    sim = anchor_similarity(WORD_ANCHORS)
    labels = torch.tensor(LABELS)
    got = anchored_semantic_loss(sketch.word_embeddings, labels, adapted["word"], sim, TAU, TAU_A).item()
    assert got == pytest.approx(ref_eq3(sketch.word_embeddings, LABELS, adapted["word"], sim, TAU, TAU_A), rel=1e-9)
    # Temperatures are not interchangeable: tau scales the logits, tau_a the targets.
    swapped = ref_eq3(sketch.word_embeddings, LABELS, adapted["word"], sim, TAU_A, TAU)
    assert got != pytest.approx(swapped, rel=1e-3)


def test_eq4_sample_loss_sketches_query_photos_with_row_normalised_targets():
    sketch, photo, _ = _outputs()
    sim = anchor_similarity(VISUAL_ANCHORS)
    labels = torch.tensor(LABELS)
    got = anchored_sample_loss(sketch.visual_embeddings, photo.visual_embeddings, labels, sim, TAU, TAU_A).item()
    expected = ref_eq4(sketch.visual_embeddings, photo.visual_embeddings, LABELS, sim, TAU, TAU_A)
    assert got == pytest.approx(expected, rel=1e-9)
    # Photo-as-query is another number on this example, so the role check above is meaningful.
    assert expected != pytest.approx(ref_eq4(photo.visual_embeddings, sketch.visual_embeddings, LABELS, sim, TAU, TAU_A), rel=1e-3)


def test_seven_terms_each_follow_their_equation_with_the_right_roles():
    """The total's seven terms, each recomputed from the paper with the inputs it names: which domain,
    which representation (word / visual token), which anchors; and the total is their plain sum."""
    sketch, photo, adapted = _outputs()
    labels = torch.tensor(LABELS)
    sims = {"word": anchor_similarity(WORD_ANCHORS), "visual": anchor_similarity(VISUAL_ANCHORS)}
    out = sketch_an_anchor_loss(sketch, photo, labels, adapted, sims, temperature=TAU, anchor_temperature=TAU_A)
    expected = ref_total(sketch, photo, LABELS, adapted, sims, TAU, TAU_A)
    got = out.as_floats()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=1e-9), key
    # The seven terms are distinct numbers here, so a term computed on the wrong input cannot coincide.
    terms = [round(v, 4) for k, v in expected.items() if k != "loss"]
    assert len(set(terms)) == 7


def test_one_anchor_kind_gives_four_terms():
    sketch, photo, adapted = _outputs()
    labels = torch.tensor(LABELS)
    sim = anchor_similarity(VISUAL_ANCHORS)
    out = sketch_an_anchor_loss(sketch, photo, labels, {"visual": adapted["visual"]}, {"visual": sim}, TAU, TAU_A)
    assert set(out.as_floats()) == {"loss", "loss_nce", "loss_sem_visual_sketch", "loss_sem_visual_photo", "loss_sample_visual"}
    expected = (
        ref_eq1(sketch.embeddings, photo.embeddings, TAU)
        + ref_eq3(sketch.visual_embeddings, LABELS, adapted["visual"], sim, TAU, TAU_A)
        + ref_eq3(photo.visual_embeddings, LABELS, adapted["visual"], sim, TAU, TAU_A)
        + ref_eq4(sketch.visual_embeddings, photo.visual_embeddings, LABELS, sim, TAU, TAU_A)
    )
    assert out.total.item() == pytest.approx(expected, rel=1e-9)


def test_losses_stay_on_the_inputs_device():
    """Every term is computed where its inputs live (a GPU run must not build targets on the CPU). The
    "meta" device stands in for a GPU here: it has no data, but mixes with CPU tensors no better."""
    meta = lambda *shape: torch.randn(*shape, device="meta")  # noqa: E731
    labels = torch.tensor([0, 1, 1], device="meta")
    assert info_nce_loss(meta(3, 4), meta(3, 4), 0.1).device.type == "meta"
    assert anchored_semantic_loss(meta(3, 4), labels, meta(2, 4), meta(2, 2), 0.1, 0.1).device.type == "meta"
    assert anchored_sample_loss(meta(3, 4), meta(3, 4), labels, meta(2, 2), 0.1, 0.1).device.type == "meta"


def test_the_losses_warn_about_nothing():
    """A training run logs no warning per step: every softmax names its axis (torch warns about an implicit
    one, and would pick another axis for inputs of other ranks)."""
    import warnings

    sketch, photo, adapted = _outputs()
    sims = {"word": anchor_similarity(WORD_ANCHORS), "visual": anchor_similarity(VISUAL_ANCHORS)}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sketch_an_anchor_loss(sketch, photo, torch.tensor(LABELS), adapted, sims, temperature=TAU, anchor_temperature=TAU_A)


def test_gather_false_gives_the_local_loss():
    """In one process gathering changes nothing: gather=False (the local slice only) gives the same terms."""
    sketch, photo, adapted = _outputs()
    sims = {"word": anchor_similarity(WORD_ANCHORS), "visual": anchor_similarity(VISUAL_ANCHORS)}
    args = (sketch, photo, torch.tensor(LABELS), adapted, sims, TAU, TAU_A)
    assert sketch_an_anchor_loss(*args, gather=False).as_floats() == pytest.approx(sketch_an_anchor_loss(*args).as_floats(), rel=1e-12)


def test_loss_module_splits_the_output_and_reads_the_configs_temperatures():
    """SketchAnAnchorLoss on the model's output (sketch rows, then photo rows, and the adapted anchors of the
    kinds passed): the seven terms of the paper with A^s from the raw anchors given, the config's two
    temperatures; only the anchor kinds passed (none: the InfoNCE-only baseline)."""
    from types import SimpleNamespace

    from hf_sbir.losses import SketchAnAnchorLoss

    sketch, photo, adapted = _outputs()
    fields = ("embeddings", "word_embeddings", "visual_embeddings")
    output = SimpleNamespace(**{f: torch.cat([getattr(sketch, f), getattr(photo, f)]) for f in fields},
                             adapted_word_anchors=adapted["word"], adapted_visual_anchors=adapted["visual"])
    config = SimpleNamespace(contrastive_temperature=TAU, anchor_similarity_temperature=TAU_A)
    loss = SketchAnAnchorLoss(config)
    assert loss.gather is True  # data-parallel runs see the global batch (test_distributed.py)
    raw = {"word": WORD_ANCHORS, "visual": VISUAL_ANCHORS}
    for kinds in (("word", "visual"), ("visual",), ("word",), ()):
        got = loss(output, torch.tensor(LABELS), 4, *(raw[k] if k in kinds else None for k in ("word", "visual"))).as_floats()
        sims = {k: anchor_similarity(raw[k]) for k in kinds}
        expected = ref_total(sketch, photo, LABELS, {k: adapted[k] for k in kinds}, sims, TAU, TAU_A)
        assert set(got) == set(expected), kinds
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9), (kinds, key)
    assert SketchAnAnchorLoss(config, gather=False).gather is False
