"""PairedClassBatchSampler: pairing, class balance, determinism, resume."""

from collections import Counter
from itertools import islice

import numpy as np
import pytest

from hf_sbir.data import PairedClassBatchSampler

# 6 classes with uneven sizes; class 6 has sketches but no photo, class 7 photos but no sketch.
SKETCH_LABELS = [0] * 3 + [1] * 10 + [2] * 1 + [3] * 7 + [4] * 2 + [5] * 20 + [6] * 4
PHOTO_LABELS = [0] * 5 + [1] * 2 + [2] * 9 + [3] * 1 + [4] * 6 + [5] * 3 + [7] * 3


def _sampler(**kw):
    kw.setdefault("batch_size", 4)
    return PairedClassBatchSampler(SKETCH_LABELS, PHOTO_LABELS, **kw)


def test_pairs_share_a_class_and_only_eligible_classes():
    sampler = _sampler(batch_size=8, seed=1)
    for s_idx, p_idx in islice(sampler, 50):
        assert len(s_idx) == len(p_idx) == 8
        s_cls = [SKETCH_LABELS[i] for i in s_idx]
        assert s_cls == [PHOTO_LABELS[j] for j in p_idx]
        assert set(s_cls) <= {0, 1, 2, 3, 4, 5}


def test_distinct_classes_per_batch_by_default_and_classes_per_batch():
    # Checked on every batch of several seeds, not one lucky draw.
    for seed in range(5):
        default = _sampler(batch_size=4, seed=seed)
        for step in range(40):
            s_idx, _ = default.batch(step)
            assert len({SKETCH_LABELS[i] for i in s_idx}) == 4, (seed, step)
        two = _sampler(batch_size=6, classes_per_batch=2, seed=seed)
        for step in range(40):
            s_idx, _ = two.batch(step)
            assert sorted(Counter(SKETCH_LABELS[i] for i in s_idx).values()) == [3, 3], (seed, step)
    with pytest.raises(ValueError, match="classes_per_batch"):
        _sampler(batch_size=4, classes_per_batch=5)
    with pytest.raises(ValueError, match="classes_per_batch"):
        _sampler(batch_size=4, classes_per_batch=0)
    # One class per batch is allowed: every position the same class.
    s_idx, p_idx = _sampler(batch_size=4, classes_per_batch=1, seed=1).batch(0)
    assert len({SKETCH_LABELS[i] for i in s_idx} | {PHOTO_LABELS[j] for j in p_idx}) == 1


def test_batch_size_one_is_one_pair_and_zero_is_refused():
    s_idx, p_idx = _sampler(batch_size=1).batch(0)
    assert len(s_idx) == len(p_idx) == 1 and SKETCH_LABELS[s_idx[0]] == PHOTO_LABELS[p_idx[0]]
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        _sampler(batch_size=0)


def test_more_positions_than_classes_repeat_every_class_evenly():
    # 6 eligible classes, batch 8: every class appears, two of them twice, on every batch.
    for seed in range(5):
        sampler = _sampler(batch_size=8, seed=seed)
        for step in range(40):
            s_idx, p_idx = sampler.batch(step)
            counts = Counter(SKETCH_LABELS[i] for i in s_idx)
            assert set(counts) == {0, 1, 2, 3, 4, 5} and sorted(counts.values()) == [1, 1, 1, 1, 2, 2], (seed, step)
    # Uneven shares: batch 7 over 3 classes is 3 + 2 + 2.
    s_idx, _ = _sampler(batch_size=7, classes_per_batch=3, seed=4).batch(9)
    assert sorted(Counter(SKETCH_LABELS[i] for i in s_idx).values()) == [2, 2, 3]


@pytest.mark.parametrize("batch_size", [8, 6])  # 4 or 3 positions per class: class sizes on both sides of it
def test_items_repeat_within_a_class_only_when_it_is_too_small(batch_size):
    per_class = batch_size // 2
    sampler = _sampler(batch_size=batch_size, classes_per_batch=2, seed=0)
    for step in range(60):
        s_idx, p_idx = sampler.batch(step)
        for c in {SKETCH_LABELS[i] for i in s_idx}:
            for chosen, labels in (([i for i in s_idx if SKETCH_LABELS[i] == c], SKETCH_LABELS), ([j for j in p_idx if PHOTO_LABELS[j] == c], PHOTO_LABELS)):
                assert len(chosen) == per_class
                assert set(chosen) <= {i for i, label in enumerate(labels) if label == c}
                if labels.count(c) >= per_class:  # enough items (exactly enough included): no repeat
                    assert len(set(chosen)) == per_class, (step, c)


def test_positions_are_mixed_not_in_class_blocks():
    sampler = _sampler(batch_size=6, classes_per_batch=2, seed=0)
    blocks = 0
    for step in range(50):
        s_idx, _ = sampler.batch(step)
        labels = [SKETCH_LABELS[i] for i in s_idx]
        blocks += labels[:3] == [labels[0]] * 3
    assert blocks < 25  # a fixed class-by-class layout would give 50


def test_class_balance_is_roughly_uniform():
    # Class 5 has 20 sketches and class 2 one, but classes are drawn uniformly.
    counts = Counter()
    for s_idx, _ in islice(_sampler(batch_size=3, seed=0), 2000):
        counts.update(SKETCH_LABELS[i] for i in s_idx)
    freq = np.array([counts[c] for c in range(6)]) / sum(counts.values())
    assert np.allclose(freq, 1 / 6, atol=0.02), freq


def test_deterministic_for_a_seed():
    a = list(islice(_sampler(seed=7), 20))
    b = list(islice(_sampler(seed=7), 20))
    c = list(islice(_sampler(seed=8), 20))
    assert a == b and a != c


def test_resume_continues_the_exact_sequence():
    reference = list(islice(_sampler(seed=3), 30))
    run = _sampler(seed=3)
    first = list(islice(iter(run), 12))
    state = run.state_dict()
    assert state["step"] == 12 and state["seed"] == 3
    resumed = _sampler(seed=999)  # the seed comes from the state
    resumed.load_state_dict(state)
    rest = list(islice(iter(resumed), 18))
    assert first + rest == reference
    with pytest.raises(ValueError, match="batch_size"):
        _sampler(batch_size=5).load_state_dict(state)


def test_num_batches_and_endless_len():
    sampler = _sampler(num_batches=5)
    assert len(sampler) == 5 and len(list(sampler)) == 5
    assert list(sampler) == []  # the sequence is used up
    with pytest.raises(TypeError):
        len(_sampler())


def test_no_eligible_class():
    with pytest.raises(ValueError, match="^No class has both a sketch and a photo; cannot build paired batches$"):
        PairedClassBatchSampler([0, 0], [1], batch_size=2)


def test_resume_refuses_a_state_with_other_classes_per_batch():
    state = _sampler(batch_size=6, classes_per_batch=2).state_dict()
    assert state == {"seed": 0, "step": 0, "batch_size": 6, "classes_per_batch": 2}
    with pytest.raises(ValueError, match="state_dict has classes_per_batch=2 but this sampler has 3"):
        _sampler(batch_size=6, classes_per_batch=3).load_state_dict(state)


def test_endless_sampler_len_error_says_why():
    with pytest.raises(TypeError, match=r"^PairedClassBatchSampler without num_batches is endless and has no len\(\)$"):
        len(_sampler())


def test_from_datasets_reads_the_label_columns():
    import datasets

    sketches = datasets.Dataset.from_dict({"label": SKETCH_LABELS, "cls": SKETCH_LABELS})
    photos = datasets.Dataset.from_dict({"label": PHOTO_LABELS, "cls": PHOTO_LABELS})
    direct = _sampler(batch_size=4, seed=2)
    for kwargs in ({}, {"label_column": "cls"}):
        built = PairedClassBatchSampler.from_datasets(sketches, photos, batch_size=4, seed=2, **kwargs)
        assert [built.batch(s) for s in range(5)] == [direct.batch(s) for s in range(5)]
    with pytest.raises((KeyError, ValueError), match="nope"):
        PairedClassBatchSampler.from_datasets(sketches, photos, batch_size=4, label_column="nope")


def test_batch_of_another_size_is_drawn_from_the_same_seed_and_step():
    """`batch(step, batch_size=n)`: the training loop's global batch (batch_size x processes x accumulation), of
    n pairs, the same for the same (seed, step) whatever the sampler's own batch size; with the default
    `classes_per_batch` the class count follows n (min(n, classes)), with an explicit one it stays."""
    small, large = _sampler(batch_size=2, seed=3), _sampler(batch_size=8, seed=3)
    sketches, photos = small.batch(5, batch_size=8)
    assert (sketches, photos) == large.batch(5) and len(sketches) == len(photos) == 8
    n_classes = len(set(SKETCH_LABELS) & set(PHOTO_LABELS))
    assert len({SKETCH_LABELS[i] for i in sketches}) == min(8, n_classes)
    fixed = _sampler(batch_size=4, classes_per_batch=2, seed=3)
    assert len({SKETCH_LABELS[i] for i in fixed.batch(5, batch_size=8)[0]}) == 2
    assert small.batch(5) == small.batch(5, batch_size=None) and len(small.batch(5)[0]) == 2
    with pytest.raises(ValueError, match=r"^batch_size must be >= 1, got 0$"):
        small.batch(5, batch_size=0)
