"""Zero-shot class splits shipped with the package, and the guard that keeps unseen classes out of training.

A zero-shot SBIR split names the *seen* classes (used for training) and the *unseen* classes
(sketch queries and photo gallery at test time). The lists live in `hf_sbir/data/splits/` as plain
text, one class name per line, spelled exactly as the dataset's folder names; their sources and
caveats are in `hf_sbir/data/splits/README.md`.

Example:

```python
>>> from hf_sbir.data import load_split, check_no_leak
>>> split = load_split("sketchy_sake")
>>> len(split.train_classes), len(split.test_classes)
(100, 25)
>>> check_no_leak(["cat", "hot-air balloon"], ["hot_air_balloon"])   # raises ZeroShotLeakError
```
"""

from __future__ import annotations

import difflib
import re
import unicodedata
import warnings
from dataclasses import dataclass
from importlib import resources
from typing import Iterable, Union

from datasets import DatasetDict

# Where each shipped split comes from; the details are in splits/README.md.
_SPLIT_SOURCES = {
    "sketchy_sake": "Sketchy-Ext, SAKE random split (Liu et al., ICCV 2019): qliu24/SAKE "
    "dataset/Sketchy/zeroshot1/cname_cid{,_zero}.txt @ aad0fe3",
    "sketchy_no": "Sketchy-Ext non-overlapping-with-ImageNet split (Yelamarthi et al., ECCV 2018), as in "
    "AnjanDutta/sem-pcyc test_classes_eccv_2018.txt, doodle2search and ZSE-SBIR",
    "tuberlin_sake": "TU-Berlin-Ext, SAKE split (Liu et al., ICCV 2019): qliu24/SAKE "
    "dataset/TUBerlin/zeroshot/cname_cid{,_zero}.txt @ aad0fe3",
    "quickdraw_ext": "QuickDraw-Extended (Dey et al., CVPR 2019): sounakdey/doodle2search "
    "src/data/zeroshot_classes_quickdraw.txt @ a2f0ed6 (spelling 'palm tree' as on disk)",
    "sbir_mini": "hf_sbir split of the sbir-mini developers' set: test = "
    "sorted(random.Random(0).sample(sorted(all 21 classes), 7))",
    "embedded": "hf_sbir split of the embedded synthetic set: test = "
    "sorted(random.Random(0).sample(sorted(all 16 classes), 4))",
}


class ZeroShotLeakError(ValueError):
    """Raised when a class of the zero-shot test (unseen) set appears among the training classes."""


class ZeroShotLeakWarning(UserWarning):
    """A training class that is not an unseen test class but nearly the same name (a typo or variant?)."""


class UnknownSplitError(ValueError, KeyError):
    """Raised for a split or class-list name that is not shipped; the message lists the known ones."""

    def __str__(self):
        # KeyError would show the repr of the message (with quotes); show it as plain text.
        return str(self.args[0]) if self.args else ""


# Near-duplicate class names (difflib ratio of the leak keys) at or above this are flagged with a warning:
# "aeroplane"/"airplane" (0.82) are not, "butterfly"/"buterfly" (0.94) are.
NEAR_DUPLICATE_RATIO = 0.9


def normalize_class_name(name: str) -> str:
    """Normalise a class name for matching: Unicode NFKC (full-width letters -> ASCII), format characters
    (zero-width spaces, soft hyphens) removed, case-folded, and every run of spaces and punctuation
    (`_`, `-`, `.`, ...) -> one space.

    Parentheses count as punctuation but their words are kept, so `car_(sedan)` and `car (sedan)` match
    each other but not `car`.
    """
    text = unicodedata.normalize("NFKC", str(name))
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf").casefold()
    return re.sub(r"[\W_]+", " ", text).strip()


def _singular(word: str) -> str:
    """English simple plurals only (the spelling variants of class names): trees -> tree,
    butterflies -> butterfly, boxes/benches -> box/bench; glass, bus keep their s. Four-letter words
    are -ie/-e + s (ties -> tie, axes -> axe: 'axe' is a class of Sketchy, TU-Berlin and QuickDraw)."""
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def leak_key(name: str) -> str:
    """What two names must share to count as the same class in the leak check: `normalize_class_name`,
    each word singular, spaces removed ("palm_trees", "palmtree", "Palm.Tree" -> "palmtree")."""
    return "".join(_singular(w) for w in normalize_class_name(name).split())


def check_no_leak(train_class_names: Iterable[str], test_class_names: Iterable[str]) -> None:
    """Raise `ZeroShotLeakError` if any training class is, after normalisation (`leak_key`), an unseen test
    class; warn (`ZeroShotLeakWarning`) about near-duplicates (`NEAR_DUPLICATE_RATIO`), which may be typos.

    Args:
        train_class_names: class names that will be trained on.
        test_class_names: the unseen classes of the zero-shot split.

    Raises:
        ZeroShotLeakError: naming every overlapping class (as spelled on both sides).
    """
    test_by_key: dict[str, list[str]] = {}
    for name in test_class_names:
        test_by_key.setdefault(leak_key(name), []).append(name)
    leaks, near = [], []
    for name in sorted(set(train_class_names)):
        key = leak_key(name)
        for test_name in test_by_key.get(key, []):
            leaks.append(name if name == test_name else f"{name!r} (test: {test_name!r})")
        if key not in test_by_key:
            matcher = difflib.SequenceMatcher(None, b=key)  # b is the cached side
            for test_key, test_names in test_by_key.items():
                matcher.set_seq1(test_key)
                if matcher.quick_ratio() >= NEAR_DUPLICATE_RATIO and matcher.ratio() >= NEAR_DUPLICATE_RATIO:
                    near.extend(f"{name!r} ~ {t!r}" for t in test_names)
    if near:
        warnings.warn(
            f"Possible zero-shot leak: training class(es) with nearly the name of an unseen test class: "
            f"{', '.join(near)}. If they are the same class, remove it from the training data.",
            ZeroShotLeakWarning,
            stacklevel=2,
        )
    if leaks:
        raise ZeroShotLeakError(
            f"Zero-shot leak: {len(leaks)} unseen test class(es) would be trained on: {', '.join(leaks)}. "
            "Remove them from the training data or pick a split whose test classes they are not."
        )


@dataclass(frozen=True)
class ZeroShotSplit:
    """A seen/unseen class split.

    Args:
        name: registry name (e.g. `"sketchy_sake"`), or any label for a user-made split.
        train_classes: seen classes, in the order of the source file.
        test_classes: unseen classes, in the order of the source file.
        source: where the lists come from (free text).
    """

    name: str
    train_classes: tuple[str, ...]
    test_classes: tuple[str, ...]
    source: str = ""

    def __post_init__(self):
        # Accept lists; a frozen dataclass needs object.__setattr__ to normalise the fields.
        object.__setattr__(self, "train_classes", tuple(self.train_classes))
        object.__setattr__(self, "test_classes", tuple(self.test_classes))
        check_no_leak(self.train_classes, self.test_classes)

    @property
    def all_classes(self) -> tuple[str, ...]:
        """Seen and unseen classes together, sorted."""
        return tuple(sorted(set(self.train_classes) | set(self.test_classes)))


SplitLike = Union[str, ZeroShotSplit]


def _split_dir():
    return resources.files("hf_sbir.data").joinpath("splits")


def _read_list(filename: str) -> tuple[str, ...]:
    text = _split_dir().joinpath(filename).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def list_splits() -> list[str]:
    """Names of the zero-shot splits shipped with the package (those with both `_train` and `_test` files)."""
    files = {entry.name for entry in _split_dir().iterdir()}
    stems = [f[: -len("_train.txt")] for f in files if f.endswith("_train.txt")]
    return sorted(stem for stem in stems if f"{stem}_test.txt" in files)


def load_split(name: SplitLike) -> ZeroShotSplit:
    """Load a shipped zero-shot split by name (`"sbir-mini"` and `"sbir_mini"` are the same).

    Args:
        name: one of `list_splits()`, or a `ZeroShotSplit` (returned as is).

    Raises:
        UnknownSplitError: (a `ValueError` and `KeyError`) for an unknown name, listing the known ones.
    """
    if isinstance(name, ZeroShotSplit):
        return name
    key = name.strip().lower().replace("-", "_")
    known = list_splits()
    if key not in known:
        raise UnknownSplitError(f"Unknown zero-shot split {name!r}. Known splits: {', '.join(known)}.")
    return ZeroShotSplit(
        name=key,
        train_classes=_read_list(f"{key}_train.txt"),
        test_classes=_read_list(f"{key}_test.txt"),
        source=_SPLIT_SOURCES.get(key, f"hf_sbir/data/splits/{key}_{{train,test}}.txt"),
    )


def load_class_list(name: str) -> tuple[str, ...]:
    """Read any shipped class list by file stem, e.g. `"sketchy_all"` (125 names, sorted)."""
    filename = f"{name}.txt"
    if not _split_dir().joinpath(filename).is_file():
        known = sorted(e.name[:-4] for e in _split_dir().iterdir() if e.name.endswith(".txt"))
        raise UnknownSplitError(f"Unknown class list {name!r}. Known lists: {', '.join(known)}.")
    return _read_list(filename)


def _present_class_names(dataset, label_column: str) -> set[str]:
    """Class names that occur in the rows of `dataset` (not merely in its ClassLabel names)."""
    if isinstance(dataset, (list, tuple, set, frozenset)):
        return {str(n) for n in dataset}
    feature = dataset.features[label_column]
    values = dataset.unique(label_column)
    names = getattr(feature, "names", None)
    if names is not None:
        return {names[v] for v in values}
    return {str(v) for v in values}


def guard_training_set(dataset, split: SplitLike, label_column: str = "label"):
    """Refuse to train on a dataset that contains unseen classes of `split`.

    Call this on whatever is about to be trained on. Only label values that actually occur in the
    rows count: a `ClassLabel` that *names* test classes (as all loaders here do, for a stable label
    space) is fine as long as no training row carries them.

    Args:
        dataset: a `datasets.Dataset` (its `label_column` may be a `ClassLabel` or strings), a
            `DatasetDict` (its `"train"` split is checked), or an iterable of class names.
        split: a `ZeroShotSplit` or the name of a shipped one.
        label_column: the column holding the class.

    Returns:
        `dataset`, unchanged, so the call can be chained.

    Raises:
        ZeroShotLeakError: naming every unseen class found.
    """
    split = load_split(split)
    target = dataset
    if isinstance(dataset, DatasetDict):
        if "train" not in dataset:
            raise ValueError(f"guard_training_set got a DatasetDict without a 'train' split: {list(dataset)}")
        target = dataset["train"]
    check_no_leak(_present_class_names(target, label_column), split.test_classes)
    return dataset
