"""Loaders on tiny fake trees of generated PNGs: generic layouts, the three benchmarks, errors, GZS."""

from pathlib import Path

import pytest
from datasets import ClassLabel, DatasetDict
from PIL import Image

from hf_sbir.data import (
    CorruptImageError,
    CorruptImageWarning,
    ZeroShotSplit,
    load_quickdraw_ext,
    load_sbir_dataset,
    load_sbir_folder,
    load_sketchy,
    load_split,
    load_tuberlin,
    sbir_metadata,
    split_by_domain,
)

TOY_SPLIT = ZeroShotSplit("toy", train_classes=("cat", "dog", "hot-air_balloon"), test_classes=("owl", "palm tree"))


def _png(path: Path, value: int = 0, size=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path)
    return path


def _fill(folder: Path, n: int, ext: str = ".png") -> None:
    for i in range(n):
        _png(folder / f"img_{i:02d}{ext}", value=10 * i)


def _domain_first(root: Path, classes, n_sketch=2, n_photo=5) -> Path:
    for c in classes:
        _fill(root / "sketch" / c, n_sketch)
        _fill(root / "photo" / c, n_photo)
    return root


def _domains(ds):
    return sorted(set(ds["domain"]))


def test_generic_domain_first_without_split(tmp_path):
    root = _domain_first(tmp_path / "data", ["dog", "cat"])
    ds = load_sbir_folder(root)
    assert isinstance(ds, DatasetDict) and list(ds) == ["all"]
    all_ = ds["all"]
    assert all_.num_rows == 2 * (2 + 5)
    assert isinstance(all_.features["label"], ClassLabel)
    assert all_.features["label"].names == ["cat", "dog"]  # sorted
    assert _domains(all_) == ["photo", "sketch"]
    assert "sketch/cat/img_00.png" in all_["id"]
    row = all_[0]
    assert isinstance(row["image"], Image.Image)  # decoded lazily from the stored path
    # The image column stores paths, not bytes.
    assert all_.cast_column("image", all_.features["image"].__class__(decode=False))[0]["image"]["bytes"] is None


def test_generic_class_first_matches_domain_first(tmp_path):
    root = tmp_path / "cf"
    for c in ["dog", "cat"]:
        _fill(root / c / "sketch", 2)
        _fill(root / c / "photo", 3, ext=".jpg")
    ds = load_sbir_folder(root)["all"]
    assert ds.num_rows == 10
    assert "cat/photo/img_00.jpg" in ds["id"]
    sketches, photos = split_by_domain(ds)
    assert sketches.num_rows == 4 and photos.num_rows == 6
    assert set(sketches["domain"]) == {"sketch"}


def test_zero_shot_split_train_test(tmp_path):
    # Folder spelled 'palm_tree' must still match the split's 'palm tree' (normalised matching).
    root = _domain_first(tmp_path / "d", ["cat", "dog", "hot-air_balloon", "owl", "palm_tree"])
    ds = load_sbir_folder(root, split=TOY_SPLIT)
    names = ds["train"].features["label"].names
    assert names == sorted(names) and "palm_tree" in names
    train_classes = {names[i] for i in ds["train"]["label"]}
    test_classes = {names[i] for i in ds["test"]["label"]}
    assert train_classes == {"cat", "dog", "hot-air_balloon"}
    assert test_classes == {"owl", "palm_tree"}
    assert _domains(ds["train"]) == ["photo", "sketch"]
    queries, gallery = split_by_domain(ds["test"])
    assert queries.num_rows == 2 * 2 and gallery.num_rows == 2 * 5
    assert sbir_metadata(ds["test"]) == {"dataset": "d", "split": "toy", "gzs": False}


def test_gzs_moves_20_percent_of_each_seen_class(tmp_path):
    root = _domain_first(tmp_path / "d", ["cat", "dog", "hot-air_balloon", "owl", "palm tree"], n_photo=10)
    plain = load_sbir_folder(root, split=TOY_SPLIT)
    ds = load_sbir_folder(root, split=TOY_SPLIT, gzs=True, seed=3)
    names = ds["test"].features["label"].names
    gallery = split_by_domain(ds["test"])[1]
    queries = split_by_domain(ds["test"])[0]
    # Queries: unseen-class sketches only.
    assert {names[i] for i in queries["label"]} == {"owl", "palm tree"}
    # Gallery: all unseen photos plus 2 of the 10 photos of each seen class.
    held = [names[i] for i in gallery["label"] if names[i] in TOY_SPLIT.train_classes]
    assert sorted(held) == sorted(c for c in TOY_SPLIT.train_classes for _ in range(2))
    assert ds["train"].num_rows == plain["train"].num_rows - 6
    assert not set(ds["train"]["id"]) & set(gallery["id"])
    assert sbir_metadata(ds["test"])["gzs_seed"] == 3 and sbir_metadata(ds["train"])["gzs_fraction"] == 0.2
    # Seeded: same seed, same hold-out; another seed, (almost surely) another one.
    again = load_sbir_folder(root, split=TOY_SPLIT, gzs=True, seed=3)
    assert again["test"]["id"] == ds["test"]["id"]
    other = load_sbir_folder(root, split=TOY_SPLIT, gzs=True, seed=4)
    assert other["test"]["id"] != ds["test"]["id"]


def test_gzs_needs_split(tmp_path):
    root = _domain_first(tmp_path / "d", ["cat"])
    with pytest.raises(ValueError, match="split"):
        load_sbir_folder(root, gzs=True)


def test_missing_root_names_it(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_sbir_folder(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_sbir_dataset(missing)


def test_corrupt_file_warn_and_raise(tmp_path):
    root = _domain_first(tmp_path / "d", ["cat", "dog"])
    bad = root / "photo" / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    with pytest.warns(CorruptImageWarning, match="broken.png"):
        ds = load_sbir_folder(root)
    assert "photo/dog/broken.png" not in ds["all"]["id"]
    assert ds["all"].num_rows == 14
    with pytest.raises(CorruptImageError, match="broken.png") as info:
        load_sbir_folder(root, on_error="raise")
    assert isinstance(info.value, ValueError) and info.value.path == str(bad)
    with pytest.raises(ValueError, match="on_error"):
        load_sbir_folder(root, on_error="ignore")


def test_empty_class_folder_is_skipped_with_warning(tmp_path):
    root = _domain_first(tmp_path / "d", ["cat", "dog"])
    (root / "sketch" / "empty").mkdir()
    (root / "sketch" / "dog" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="empty"):
        ds = load_sbir_folder(root)
    assert ds["all"].features["label"].names == ["cat", "dog"]


def test_split_classes_missing_on_disk_warn(tmp_path):
    root = _domain_first(tmp_path / "d", ["cat", "owl", "zebra"])
    with pytest.warns(UserWarning) as record:
        ds = load_sbir_folder(root, split=TOY_SPLIT)
    messages = " ".join(str(w.message) for w in record)
    assert "zebra" in messages  # on disk, in neither part of the split
    assert "palm tree" in messages  # in the split, not on disk
    # The label space still covers every split class, so ids do not depend on the download.
    assert set(TOY_SPLIT.all_classes) <= set(ds["train"].features["label"].names)


def _sketchy_tree(root: Path, classes, extended=True, original=True, ready=False) -> Path:
    suffix = "_ready" if ready else ""
    for c in classes:
        _fill(root / "256x256" / "sketch" / f"tx_000000000000{suffix}" / c, 1)
        _png(root / "256x256" / "sketch" / "tx_000000000010" / c / "aug.png")  # another variant: ignored
        if original:
            _png(root / "256x256" / "photo" / f"tx_000000000000{suffix}" / c / "n0001_1.jpg")
        if extended:
            _png(root / f"EXTEND_image_sketchy{suffix}" / c / "n0001_1.jpg")
            _png(root / f"EXTEND_image_sketchy{suffix}" / c / "ext_1.jpg")
    return root


def test_sketchy_with_sake_split(tmp_path):
    split = load_split("sketchy_sake")
    root = _sketchy_tree(tmp_path / "Sketchy", split.all_classes)
    ds = load_sketchy(root, split="sketchy_sake")
    names = ds["train"].features["label"].names
    assert len(names) == 125
    assert len({ds["test"].features["label"].names[i] for i in ds["test"]["label"]}) == 25
    assert ds["train"].num_rows == 100 * (1 + 2) and ds["test"].num_rows == 25 * (1 + 2)
    assert all(i.startswith(("256x256/sketch/tx_000000000000/", "EXTEND_image_sketchy/")) for i in ds["train"]["id"])
    # Dispatch recognises the layout.
    assert load_sbir_dataset(root, split="sketchy_sake")["test"].num_rows == ds["test"].num_rows


@pytest.mark.parametrize("photo_source, photos_per_class", [("auto", 2), ("extended", 2), ("original", 1), ("both", 2)])
def test_sketchy_photo_sources(tmp_path, photo_source, photos_per_class):
    root = _sketchy_tree(tmp_path / "S", ["airplane", "cat"])
    ds = load_sketchy(root, photo_source=photo_source)["all"]
    assert split_by_domain(ds)[1].num_rows == 2 * photos_per_class


def test_sketchy_variants_sake_ready_and_original_only(tmp_path):
    root = _sketchy_tree(tmp_path / "S", ["airplane", "cat"], extended=False, ready=True)
    ds = load_sketchy(root)["all"]
    assert ds.num_rows == 4
    assert any(i.startswith("256x256/photo/tx_000000000000_ready/") for i in ds["id"])
    with pytest.raises(FileNotFoundError, match="EXTEND_image_sketchy"):
        load_sketchy(root, photo_source="extended")


def test_tuberlin(tmp_path):
    split = load_split("tuberlin_sake")
    root = tmp_path / "TUBerlin"
    for c in split.all_classes:  # names with spaces and parentheses, e.g. 'car (sedan)'
        _png(root / "png" / c / "1.png")
        _png(root / "ImageResized" / c / "a.JPEG")
    ds = load_tuberlin(root, split=split)
    assert ds["train"].num_rows == 220 * 2 and ds["test"].num_rows == 30 * 2
    assert len(ds["train"].features["label"].names) == 250
    assert load_sbir_dataset(root, split=split)["train"].num_rows == 440


@pytest.mark.parametrize("sketch_dir, photo_dir", [("sketch/QuickDraw", "images"), ("sketches", "images")])
def test_quickdraw_ext(tmp_path, sketch_dir, photo_dir):
    split = load_split("quickdraw_ext")
    root = tmp_path / "QuickDraw"
    for c in split.all_classes:
        _png(root / sketch_dir / c / "123.png")
        _png(root / photo_dir / c / "image_00001.jpg")
    ds = load_quickdraw_ext(root, split="quickdraw_ext")
    assert ds["train"].num_rows == 80 * 2 and ds["test"].num_rows == 30 * 2
    test_names = {ds["test"].features["label"].names[i] for i in ds["test"]["label"]}
    assert "palm tree" in test_names
    # Either layout also loads through the dispatcher.
    assert load_sbir_dataset(root, split="quickdraw_ext")["test"].num_rows == 60


def test_benchmark_layout_not_found(tmp_path):
    root = _domain_first(tmp_path / "d", ["cat"])
    with pytest.raises(FileNotFoundError, match="TU-Berlin sketch"):
        load_tuberlin(root)


def test_dispatch_generic_and_bad_layout(tmp_path):
    root = _domain_first(tmp_path / "d", ["cat", "dog"])
    assert load_sbir_dataset(str(root))["all"].num_rows == 14
    with pytest.raises(ValueError, match="layout"):
        load_sbir_dataset(root, layout="nonsense")
