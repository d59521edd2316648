"""Semantic Anchors (Sketch-an-Anchor §3.3, §3.5): the per-step randomised anchors a training run draws,
their save/load round trip and the class statistics behind the visual anchors."""

import pytest
import torch

from hf_sbir.anchors.semantic_anchors import SemanticAnchors, class_feature_statistics

C, K, DW, DV = 5, 4, 6, 8


def _anchors():
    g = torch.Generator().manual_seed(123)
    neighbours = torch.randn(C, K, DW, generator=g)
    return SemanticAnchors(
        class_names=[f"class{i}" for i in range(C)],
        word=neighbours[:, 0].clone(),  # each class's own vector is its first neighbour
        word_neighbours=neighbours,
        visual_mean=torch.randn(C, DV, generator=g),
        visual_std=torch.rand(C, DV, generator=g) + 0.5,  # every entry its own scale
        meta={"num_neighbours": K},
    )


def _draws(anchors, n, **kwargs):
    g = torch.Generator().manual_seed(0)
    return [anchors.sample(g, **kwargs) for _ in range(n)]


def _neighbour_picked(anchors, word):
    """(C,) index of the stored neighbour each row of `word` is, -1 where it is none of them."""
    match = (word[:, None, :] == anchors.word_neighbours).all(dim=-1)  # (C, K)
    return torch.where(match.any(dim=1), match.int().argmax(dim=1), torch.full((C,), -1))


def test_word_anchors_swap_uniformly_among_the_stored_neighbours_of_their_own_class():
    anchors = _anchors()
    picks = torch.stack([_neighbour_picked(anchors, word) for word, _ in _draws(anchors, 800)])  # (800, C)
    assert (picks >= 0).all(), "a word anchor became a vector that is not one of its class's stored neighbours"
    # Uniform over the K stored words, own word included: a swap happens with rate (K - 1) / K.
    for c in range(C):
        freq = torch.bincount(picks[:, c], minlength=K).float() / len(picks)
        assert torch.allclose(freq, torch.full((K,), 1 / K), atol=0.06), (c, freq)
    # Classes draw independently: not all classes take the same neighbour index each step.
    assert (picks != picks[:, :1]).any(dim=1).float().mean() > 0.9


def test_visual_noise_is_standard_normal_per_class_and_entry_scaled_by_the_class_std():
    anchors = _anchors()
    z = torch.stack([(visual - anchors.visual_mean) / anchors.visual_std for _, visual in _draws(anchors, 600)])  # (600, C, DV)
    assert z.mean().abs() < 0.05 and (z.std() - 1).abs() < 0.05
    # Every class and every entry has its own standard-normal noise ...
    per_cell_std = z.std(dim=0)
    assert ((per_cell_std - 1).abs() < 0.2).all()
    # ... drawn independently: no two classes, and no two entries of a class, move together.
    flat = z.reshape(len(z), -1)
    corr = torch.corrcoef(flat.T)
    off_diagonal = corr[~torch.eye(len(corr), dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.2


def test_noise_scale_multiplies_the_std():
    anchors = _anchors()
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    _, full = anchors.sample(g1, noise_scale=1.0)
    _, half = anchors.sample(g2, noise_scale=0.5)
    torch.testing.assert_close(half - anchors.visual_mean, 0.5 * (full - anchors.visual_mean))
    _, none = anchors.sample(torch.Generator().manual_seed(5), noise_scale=0.0)
    assert torch.equal(none, anchors.visual_mean)


def test_same_seed_same_draw_other_seed_other_draw():
    anchors = _anchors()
    a = anchors.sample(torch.Generator().manual_seed(11))
    b = anchors.sample(torch.Generator().manual_seed(11))
    c = anchors.sample(torch.Generator().manual_seed(12))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_randomisation_switches_give_the_stored_anchors():
    anchors = _anchors()
    word, visual = anchors.sample(torch.Generator().manual_seed(0), randomize_word=False, randomize_visual=False)
    assert torch.equal(word, anchors.word) and torch.equal(visual, anchors.visual_mean)
    word, visual = anchors.sample(torch.Generator().manual_seed(0), use_word=False)
    assert word is None and visual.shape == (C, DV)
    word, visual = anchors.sample(torch.Generator().manual_seed(0), use_visual=False)
    assert visual is None and word.shape == (C, DW)
    # Anchors built without neighbours / std (e.g. loaded from an older run) are used as stored.
    plain = SemanticAnchors(class_names=anchors.class_names, word=anchors.word, visual_mean=anchors.visual_mean)
    word, visual = plain.sample(torch.Generator().manual_seed(0))
    assert torch.equal(word, anchors.word) and torch.equal(visual, anchors.visual_mean)


def test_missing_anchor_kind_is_a_clear_error():
    only_visual = SemanticAnchors(class_names=["a"], visual_mean=torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"^These anchors have no word vectors; build them with a text embedder\.$"):
        only_visual.sample()
    only_word = SemanticAnchors(class_names=["a"], word=torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"^These anchors have no visual centres; build them from training photos\.$"):
        only_word.sample()
    with pytest.raises(ValueError, match="anchors.visual_std has 2 rows but there are 1 class names"):
        SemanticAnchors(class_names=["a"], visual_mean=torch.zeros(1, 3), visual_std=torch.ones(2, 3))


def test_save_load_round_trip(tmp_path):
    anchors = _anchors()
    anchors.save(tmp_path / "anchors")
    loaded = SemanticAnchors.load(tmp_path / "anchors")
    assert loaded.class_names == anchors.class_names and loaded.meta == anchors.meta
    for name in ("word", "word_neighbours", "visual_mean", "visual_std"):
        assert torch.equal(getattr(loaded, name), getattr(anchors, name)), name
    # A run resumed from the saved anchors draws exactly what the original run drew.
    a = anchors.sample(torch.Generator().manual_seed(3))
    b = loaded.sample(torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    partial = SemanticAnchors(class_names=["a", "b"], word=torch.ones(2, 3))
    partial.save(tmp_path / "partial")
    again = SemanticAnchors.load(tmp_path / "partial")
    assert torch.equal(again.word, partial.word) and again.visual_mean is None and again.word_neighbours is None
    with pytest.raises(FileNotFoundError, match="No saved anchors"):
        SemanticAnchors.load(tmp_path / "nothing")
    moved = anchors.to("cpu")
    assert torch.equal(moved.visual_std, anchors.visual_std) and moved.class_names == anchors.class_names


def test_class_feature_statistics_are_the_per_class_mean_and_population_std():
    g = torch.Generator().manual_seed(0)
    features = torch.randn(11, 4, generator=g, dtype=torch.float64)
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 1, 1, 1, 2, 0])
    mean, std, counts = class_feature_statistics(features, labels, 3)
    assert counts.tolist() == [3, 4, 4]
    for c in range(3):
        rows = features[labels == c]
        torch.testing.assert_close(mean[c], rows.mean(dim=0))
        torch.testing.assert_close(std[c], rows.std(dim=0, unbiased=False))
    # One sample: std 0, not NaN.
    _, std1, _ = class_feature_statistics(features[:1], torch.tensor([0]), 1)
    assert torch.equal(std1, torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"No training photos for anchor classes at indices \[1\]"):
        class_feature_statistics(features[:2], torch.tensor([0, 2]), 3)


def test_save_overwrites_and_load_needs_both_files(tmp_path):
    anchors = _anchors()
    anchors.save(tmp_path / "a")
    anchors.save(tmp_path / "a")  # a rerun writes its anchors again into the same folder
    (tmp_path / "a" / "anchors.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="expected anchors.json and anchors.safetensors"):
        SemanticAnchors.load(tmp_path / "a")
    # Anchors saved without provenance load with an empty `meta`, like a freshly built one.
    SemanticAnchors(class_names=["a"], word=torch.ones(1, 2)).save(tmp_path / "b")
    (tmp_path / "b" / "anchors.json").write_text('{"class_names": ["a"]}')
    assert SemanticAnchors.load(tmp_path / "b").meta == {}


def test_to_keeps_missing_kinds_missing_and_the_provenance():
    partial = SemanticAnchors(class_names=["a", "b"], visual_mean=torch.zeros(2, 3, dtype=torch.float64), meta={"backbone": "x"})
    moved = partial.to(torch.device("cpu"))
    assert moved.word is None and moved.word_neighbours is None and moved.visual_std is None
    assert moved.meta == {"backbone": "x"} and moved.visual_mean.dtype == torch.float64


def test_to_moves_every_stored_tensor():
    moved = _anchors().to("meta")  # "meta" stands in for a GPU: tensors without data
    for name in ("word", "word_neighbours", "visual_mean", "visual_std"):
        assert getattr(moved, name).device.type == "meta", name


def test_corrupt_saved_anchors_are_one_clear_error(tmp_path):
    _anchors().save(tmp_path / "a")
    (tmp_path / "a" / "anchors.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match=r"^Corrupt saved anchors in .*a \([A-Za-z]+(Error|Exception): .+\)$"):
        SemanticAnchors.load(tmp_path / "a")
