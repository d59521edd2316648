"""Shipped zero-shot splits, the leak check and the training-set guard."""

import random
from pathlib import Path

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from hf_sbir.data import (
    EMBEDDED_CLASSES,
    UnknownSplitError,
    ZeroShotLeakError,
    ZeroShotSplit,
    check_no_leak,
    guard_training_set,
    list_splits,
    load_class_list,
    load_split,
    normalize_class_name,
)

SHARED_SPLITS = Path(__file__).resolve().parents[1].parent / "shared" / "splits"

EXPECTED = {
    "sketchy_sake": (100, 25, "sketchy_all"),
    "sketchy_no": (104, 21, "sketchy_all"),
    "tuberlin_sake": (220, 30, "tuberlin_all"),
    "quickdraw_ext": (80, 30, "quickdraw_ext_all"),
    "sbir_mini": (14, 7, None),
    "embedded": (12, 4, None),
}


def test_list_splits():
    assert list_splits() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_split_sizes_disjoint_and_complete(name):
    n_train, n_test, all_list = EXPECTED[name]
    split = load_split(name)
    assert (len(split.train_classes), len(split.test_classes)) == (n_train, n_test)
    assert not set(split.train_classes) & set(split.test_classes)
    assert len(set(split.train_classes)) == n_train and split.source
    if all_list:
        assert set(split.all_classes) == set(load_class_list(all_list))


def test_split_details_from_the_sources():
    assert "airplane" in load_split("sketchy_sake").test_classes  # not the 'hotdog' variant
    assert "hotdog" in load_split("sketchy_sake").train_classes
    assert "palm tree" in load_split("quickdraw_ext").test_classes  # folder spelling
    assert "car (sedan)" in load_split("tuberlin_sake").all_classes


def test_sbir_mini_and_embedded_splits_are_the_documented_draws():
    mini = load_split("sbir-mini")  # hyphen accepted
    all_mini = sorted(mini.all_classes)
    assert len(all_mini) == 21
    assert list(mini.test_classes) == sorted(random.Random(0).sample(all_mini, 7))
    emb = load_split("embedded")
    assert set(emb.all_classes) == set(EMBEDDED_CLASSES)
    assert list(emb.test_classes) == sorted(random.Random(0).sample(sorted(EMBEDDED_CLASSES), 4))


@pytest.mark.skipif(not SHARED_SPLITS.is_dir(), reason="shared split lists not available")
@pytest.mark.parametrize(
    "stem", ["sketchy_sake_train", "sketchy_sake_test", "sketchy_no_train", "sketchy_no_test", "tuberlin_sake_train",
             "tuberlin_sake_test", "quickdraw_ext_train", "quickdraw_ext_test"],
)  # fmt: skip
def test_shipped_files_equal_shared_lists(stem):
    name, part = stem.rsplit("_", 1)
    shipped = getattr(load_split(name), f"{part}_classes")
    assert list(shipped) == (SHARED_SPLITS / f"{stem}.txt").read_text().splitlines()


def test_unknown_split_lists_known_ones():
    with pytest.raises(ValueError, match="sketchy_sake") as info:
        load_split("sketchy_random")
    assert isinstance(info.value, (KeyError, UnknownSplitError))
    assert "sketchy_random" in str(info.value)


def test_normalize_class_name():
    assert normalize_class_name("  Hot-Air__balloon ") == "hot air balloon"
    assert normalize_class_name("car_(sedan)") == normalize_class_name("car (sedan)")


def test_check_no_leak_names_every_overlap():
    check_no_leak(["cat", "dog"], ["owl"])
    with pytest.raises(ZeroShotLeakError) as info:
        check_no_leak(["cat", "Palm_Tree", "hot-air balloon", "dog"], ["palm tree", "hot_air_balloon", "owl"])
    msg = str(info.value)
    assert "Palm_Tree" in msg and "hot-air balloon" in msg and "palm tree" in msg
    assert "cat" not in msg.split(":", 1)[1].replace("class(es)", "")
    assert isinstance(info.value, ValueError)


def test_zero_shot_split_refuses_a_leaky_split():
    with pytest.raises(ZeroShotLeakError, match="owl"):
        ZeroShotSplit("bad", train_classes=["cat", "Owl"], test_classes=["owl"])


def _labelled(names, labels):
    features = Features({"label": ClassLabel(names=names), "domain": Value("string")})
    return Dataset.from_dict({"label": labels, "domain": ["sketch"] * len(labels)}, features=features)


def test_guard_training_set():
    split = ZeroShotSplit("toy", train_classes=["cat", "dog"], test_classes=["owl", "palm tree"])
    names = ["cat", "dog", "owl", "palm_tree"]
    # The ClassLabel names test classes, but no row carries them: allowed.
    clean = _labelled(names, [0, 1, 1, 0])
    assert guard_training_set(clean, split) is clean
    leaky = _labelled(names, [0, 1, 3, 2])
    with pytest.raises(ZeroShotLeakError) as info:
        guard_training_set(leaky, split)
    assert "owl" in str(info.value) and "palm_tree" in str(info.value)
    with pytest.raises(ZeroShotLeakError, match="owl"):
        guard_training_set(DatasetDict({"train": leaky}), split)
    with pytest.raises(ZeroShotLeakError, match="butterfly"):
        guard_training_set(["ant", "butterfly"], "sbir_mini")  # a plain list of names and a split name
    strings = Dataset.from_dict({"label": ["cat", "owl"]})
    with pytest.raises(ZeroShotLeakError, match="owl"):
        guard_training_set(strings, split)
