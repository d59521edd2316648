"""Real data: the sbir-mini developers' set at ../shared/data/sbir-mini (skipped when absent).

The counts are checked against the class table of the set's own README.
"""

import re
from collections import Counter
from pathlib import Path

import pytest

from hf_sbir.data import guard_training_set, load_sbir_dataset, load_sbir_folder, load_split, split_by_domain

SBIR_MINI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sbir-mini"

pytestmark = pytest.mark.skipif(not (SBIR_MINI / "sketch").is_dir(), reason="sbir-mini not available at ../shared")


def _readme_counts() -> dict:
    """`{class: (sketches, photos)}` from the README table (sketches: Sketchy+QuickDraw, photos: Sketchy+Caltech)."""
    counts = {}
    for line in (SBIR_MINI / "README.md").read_text().splitlines():
        m = re.match(r"^\| ([a-z_]+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \|$", line)
        if m:
            a, b, c, d = map(int, m.groups()[1:])
            counts[m.group(1)] = (a + b, c + d)
    return counts


def test_sbir_mini_with_its_split():
    ds = load_sbir_folder(SBIR_MINI, split="sbir_mini")
    expected = _readme_counts()
    assert len(expected) == 21
    assert sum(s for s, _ in expected.values()) == 997 and sum(p for _, p in expected.values()) == 1534

    names = ds["train"].features["label"].names
    assert names == sorted(expected)
    counts = Counter()
    for part in ("train", "test"):
        counts.update((names[label], dom) for label, dom in zip(ds[part]["label"], ds[part]["domain"]))
    assert {c: (counts[(c, "sketch")], counts[(c, "photo")]) for c in expected} == expected
    assert sum(v for (_, d), v in counts.items() if d == "sketch") == 997
    assert sum(v for (_, d), v in counts.items() if d == "photo") == 1534

    split = load_split("sbir_mini")
    test_names = {names[i] for i in ds["test"]["label"]}
    assert test_names == set(split.test_classes) and len(test_names) == 7
    guard_training_set(ds["train"], split)
    queries, gallery = split_by_domain(ds["test"])
    assert queries.num_rows == sum(expected[c][0] for c in split.test_classes)
    assert gallery.num_rows == sum(expected[c][1] for c in split.test_classes)
    assert queries[0]["image"].size[0] > 0  # decodes


def test_sbir_mini_by_name(monkeypatch):
    monkeypatch.setenv("HF_SBIR_MINI_ROOT", str(SBIR_MINI))
    ds = load_sbir_dataset("sbir-mini", split="sbir_mini", gzs=True)
    assert ds["train"].num_rows + ds["test"].num_rows == 997 + 1534
