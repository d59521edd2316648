"""Shipped zero-shot splits, the leak check and the training-set guard."""

import random
import warnings
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


# --------------------------------------------------------------- what the mutation run of zero_shot.py found
@pytest.mark.parametrize(
    "plural, singular",
    [
        ("butterflies", "butterfly"), ("flies", "fly"),  # -ies -> -y from five letters on
        ("ties", "tie"), ("pies", "pie"),  # four-letter -ies words are -ie + s
        ("glasses", "glass"), ("boxes", "box"), ("buzzes", "buzz"), ("benches", "bench"), ("brushes", "brush"),
        ("buses", "bus"), ("trees", "tree"), ("cats", "cat"), ("cactuses", "cactus"),
        ("axes", "axe"),  # 'axe' is a class of Sketchy, TU-Berlin and QuickDraw; four letters: -es is -e + s
        ("glass", "glass"), ("bus", "bus"), ("axis", "axis"), ("gas", "gas"),  # not plurals: the s stays
    ],
)  # fmt: skip
def test_plural_class_names_are_the_same_class_as_their_singular(plural, singular):
    from hf_sbir.data.zero_shot import leak_key

    assert leak_key(plural) == leak_key(singular) == singular
    with pytest.raises(ZeroShotLeakError):
        check_no_leak([plural], [singular])


def test_leak_key_joins_normalised_singular_words():
    from hf_sbir.data.zero_shot import leak_key

    assert leak_key("  Palm_Trees ") == "palmtree"
    assert leak_key("Car (Sedan)") == "carsedan" and leak_key(7) == "7"
    assert normalize_class_name("Ｐalm\u00adtree\u200b!") == "palmtree"  # full width, soft hyphen, zero width


def test_leak_error_and_warning_messages_are_one_line_naming_both_spellings():
    from hf_sbir.data.zero_shot import ZeroShotLeakWarning

    with pytest.raises(ZeroShotLeakError) as info:
        check_no_leak(["owl", "Palm_Tree", "cat", "owl"], ["palm tree", "owl"])
    assert str(info.value) == (  # each class once, in sorted order
        "Zero-shot leak: 2 unseen test class(es) would be trained on: 'Palm_Tree' (test: 'palm tree'), owl. "
        "Remove them from the training data or pick a split whose test classes they are not."
    )
    with pytest.warns(ZeroShotLeakWarning) as record:
        check_no_leak(["buterfly", "cat"], ["butterfly", "Butterfly"])
    # it points at the caller's line, not at zero_shot.py (the caller is this file; under mutmut its trampoline)
    assert len(record) == 1 and Path(record[0].filename).name != "zero_shot.py"
    assert str(record[0].message) == (
        "Possible zero-shot leak: training class(es) with nearly the name of an unseen test class: "
        "'buterfly' ~ 'butterfly', 'buterfly' ~ 'Butterfly'. If they are the same class, remove it from the training data."
    )


def test_near_duplicate_threshold_is_inclusive_and_uses_the_full_ratio():
    from hf_sbir.data.zero_shot import NEAR_DUPLICATE_RATIO, ZeroShotLeakWarning

    assert NEAR_DUPLICATE_RATIO == 0.9
    with pytest.warns(ZeroShotLeakWarning, match="'toothbrash' ~ 'toothbrush'"):  # 9 of 10 letters: ratio 0.9
        check_no_leak(["toothbrash"], ["toothbrush"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # the same letters in another order: difflib's quick bound is 1.0, the ratio 0.33; a train class equal
        # to no test class is compared with all of them, one that leaks is reported as a leak only
        check_no_leak(["tac", "dog"], ["cat", "dgo"])
        with pytest.raises(ZeroShotLeakError):
            check_no_leak(["butterfly"], ["butterfly", "buterfly"])


def test_user_made_split_keeps_its_lists_and_defaults_to_no_source():
    split = ZeroShotSplit("mine", train_classes=["dog", "ant"], test_classes=["owl", "cat"])
    assert split.train_classes == ("dog", "ant") and split.test_classes == ("owl", "cat")
    assert split.source == "" and split.all_classes == ("ant", "cat", "dog", "owl")
    assert load_split(split) is split


def test_split_names_ignore_case_spaces_and_hyphens():
    assert load_split(" Sketchy-SAKE ").name == "sketchy_sake"
    assert load_split("SBIR-MINI").test_classes == load_split("sbir_mini").test_classes


@pytest.mark.parametrize(
    "name, source",
    [
        ("sketchy_sake", "Sketchy-Ext, SAKE random split (Liu et al., ICCV 2019): qliu24/SAKE "
         "dataset/Sketchy/zeroshot1/cname_cid{,_zero}.txt @ aad0fe3"),
        ("sketchy_no", "Sketchy-Ext non-overlapping-with-ImageNet split (Yelamarthi et al., ECCV 2018), as in "
         "AnjanDutta/sem-pcyc test_classes_eccv_2018.txt, doodle2search and ZSE-SBIR"),
        ("tuberlin_sake", "TU-Berlin-Ext, SAKE split (Liu et al., ICCV 2019): qliu24/SAKE "
         "dataset/TUBerlin/zeroshot/cname_cid{,_zero}.txt @ aad0fe3"),
        ("quickdraw_ext", "QuickDraw-Extended (Dey et al., CVPR 2019): sounakdey/doodle2search "
         "src/data/zeroshot_classes_quickdraw.txt @ a2f0ed6 (spelling 'palm tree' as on disk)"),
        ("sbir_mini", "hf_sbir split of the sbir-mini developers' set: test = "
         "sorted(random.Random(0).sample(sorted(all 21 classes), 7))"),
        ("embedded", "hf_sbir split of the embedded synthetic set: test = "
         "sorted(random.Random(0).sample(sorted(all 16 classes), 4))"),
    ],
)  # fmt: skip
def test_each_shipped_split_names_its_source(name, source):
    # What a paper's reproduction cites: the repository, file and commit (splits/README.md has the details).
    assert load_split(name).source == source


def test_unknown_names_are_one_line_listing_the_known_ones():
    with pytest.raises(UnknownSplitError) as info:
        load_split("sketchy_random")
    assert str(info.value) == (
        "Unknown zero-shot split 'sketchy_random'. "
        "Known splits: embedded, quickdraw_ext, sbir_mini, sketchy_no, sketchy_sake, tuberlin_sake."
    )
    with pytest.raises(UnknownSplitError) as info:
        load_class_list("sketchy_everything")
    assert str(info.value).startswith("Unknown class list 'sketchy_everything'. Known lists: embedded_test, embedded_train, ")
    assert str(info.value).endswith(", sketchy_all, sketchy_no_test, sketchy_no_train, sketchy_sake_test, "
                                    "sketchy_sake_train, tuberlin_all, tuberlin_sake_test, tuberlin_sake_train.")
    assert str(UnknownSplitError()) == ""
    assert load_class_list("sketchy_all")[:2] == ("airplane", "alarm_clock") and len(load_class_list("sketchy_all")) == 125


def test_guard_reads_the_named_column_and_refuses_a_dict_without_train():
    split = ZeroShotSplit("toy", train_classes=["cat", "dog"], test_classes=["owl"])
    rows = Dataset.from_dict({"label": ["cat", "dog"], "category": ["cat", "owl"]})
    assert guard_training_set(rows, split) is rows
    with pytest.raises(ZeroShotLeakError, match="owl"):
        guard_training_set(rows, split, label_column="category")
    with pytest.raises(ValueError) as info:
        guard_training_set(DatasetDict({"validation": rows}), split)
    assert str(info.value) == "guard_training_set got a DatasetDict without a 'train' split: ['validation']"
    for names in (("cat", "owl"), {"owl"}, frozenset({"owl"}), [1, "owl"]):
        with pytest.raises(ZeroShotLeakError, match="owl"):
            guard_training_set(names, split)
