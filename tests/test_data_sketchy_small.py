"""sketchy-small: 116 Sketchy classes at ../shared/data/sketchy-small (real data, skipped when absent), with the
shipped SAKE and N.O. splits (classes missing from the subset are named once, not fatal) and its fine-grained
pairs (sketch `<photo-id>-<n>.png` -> photo `<photo-id>.jpg`); the fine-grained loader is also checked on a
small generated folder (always run)."""

import csv
import warnings
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from hf_sbir.data import (
    MissingSplitClassesWarning,
    ZeroShotLeakError,
    ZeroShotSplit,
    guard_training_set,
    load_sbir_dataset,
    load_sbir_folder,
    load_split,
    sbir_metadata,
    split_by_domain,
)
from hf_sbir.data.fg_class_folders import load_fg_zero_shot
from hf_sbir.data.fg_paired import fine_grained_split, load_fg_paired

SKETCHY_SMALL = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sketchy-small"
needs_sketchy_small = pytest.mark.skipif(
    not (SKETCHY_SMALL / "sketch").is_dir(), reason="sketchy-small not available at ../shared/data/sketchy-small"
)


@pytest.fixture(autouse=True)
def _fresh_process_memory(monkeypatch):
    """Absent classes are named once per process; each test starts as a fresh process would."""
    import hf_sbir.data.core as core

    monkeypatch.setattr(core, "_NAMED_MISSING", set())


def _manifest() -> list[dict]:
    with open(SKETCHY_SMALL / "manifest.csv", newline="") as f:
        return list(csv.DictReader(f))


def _missing_warnings(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, MissingSplitClassesWarning)]


# -- category level: the SAKE and N.O. splits on the subset -------------------------------------------
@needs_sketchy_small
def test_sake_split_uses_the_present_classes_and_names_the_absent_once():
    split = load_split("sketchy_sake")
    on_disk = {p.name for p in (SKETCHY_SMALL / "sketch").iterdir() if p.is_dir()}
    absent_seen = [c for c in split.train_classes if c not in on_disk]
    absent_unseen = [c for c in split.test_classes if c not in on_disk]
    assert (len(absent_seen), len(absent_unseen)) == (6, 3)  # as the folder's README says

    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        ds = load_sbir_folder(SKETCHY_SMALL, split="sketchy_sake", verify=False)
    messages = _missing_warnings(record)
    assert len(messages) == 1, messages  # named once, in one line
    assert "\n" not in messages[0]
    assert "6 of 100 seen" in messages[0] and "3 of 25 unseen" in messages[0]
    assert all(c in messages[0] for c in absent_seen + absent_unseen)
    assert "94 seen and 22 unseen classes present" in messages[0]
    with warnings.catch_warnings(record=True) as again:  # training, evaluation ... load it again: named once
        warnings.simplefilter("always")
        load_fg_zero_shot(SKETCHY_SMALL, "sketchy_sake", splits=("test",), verify=False)
        load_sbir_folder(SKETCHY_SMALL, split="sketchy_sake", verify=False)
    assert _missing_warnings(again) == []
    meta = sbir_metadata(ds["train"])
    assert meta["missing_seen_classes"] == absent_seen and meta["missing_unseen_classes"] == absent_unseen

    names = ds["train"].features["label"].names
    counts = {part: Counter((names[y], d) for y, d in zip(ds[part]["label"], ds[part]["domain"])) for part in ds}
    train_classes = {c for c, _ in counts["train"]}
    test_classes = {c for c, _ in counts["test"]}
    assert len(train_classes) == 94 and len(test_classes) == 22
    assert train_classes <= set(split.train_classes) and test_classes <= set(split.test_classes)
    for part in ("train", "test"):
        assert set(counts[part].values()) == {25}  # 25 sketches and 25 photos of every present class
    queries, gallery = split_by_domain(ds["test"])
    assert (queries.num_rows, gallery.num_rows) == (550, 550)  # the 550 sketches / 550 photos

    # The leak guard applies: the train split passes, and unseen rows in it are refused.
    guard_training_set(ds, "sketchy_sake")
    with pytest.raises(ZeroShotLeakError, match="unseen test class"):
        guard_training_set(ds["test"], "sketchy_sake")


@needs_sketchy_small
def test_no_split_on_the_subset():
    with pytest.warns(MissingSplitClassesWarning, match=r"1 of 21 unseen \(giraffe\)"):
        ds = load_sbir_folder(SKETCHY_SMALL, split="sketchy_no", verify=False)
    names = ds["test"].features["label"].names
    assert len({names[y] for y in ds["test"]["label"]}) == 20  # 20 of the 21 N.O. unseen classes, as documented
    guard_training_set(ds, "sketchy_no")


@needs_sketchy_small
def test_by_name_and_env_variable(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_SBIR_SKETCHY_SMALL_ROOT", str(SKETCHY_SMALL))
    monkeypatch.chdir(tmp_path)  # neither ./shared nor ../shared: only the variable finds it
    with pytest.warns(MissingSplitClassesWarning):
        ds = load_sbir_dataset("sketchy-small", split="sketchy_sake", verify=False)
    assert ds["train"].num_rows == 94 * 50 and ds["test"].num_rows == 22 * 50


def test_missing_dataset_names_the_variable(monkeypatch, tmp_path):
    import hf_sbir.data.auto as auto

    monkeypatch.setenv("HF_SBIR_SKETCHY_SMALL_ROOT", str(tmp_path / "nowhere"))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(auto, "__file__", str(tmp_path / "a" / "b" / "auto.py"))  # no checkout around it
    with pytest.raises(FileNotFoundError, match=r"sketchy-small not found \(\$HF_SBIR_SKETCHY_SMALL_ROOT is set to .*nowhere"):
        load_sbir_dataset("sketchy-small", split="sketchy_sake")


# -- fine-grained level -------------------------------------------------------------------------------
def _image(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (value, value, value)).save(path)


def _fg_tree(root: Path) -> Path:
    """Sketchy's layout in miniature: cat/dog seen, owl unseen; `owl` has a photo without sketch."""
    layout = {
        "cat": {"c1": 2, "c2": 1, "c3": 0},
        "dog": {"d1": 1, "d2": 3},
        "owl": {"o1": 2, "o2": 1, "o3": 0},
    }
    for cls, photos in layout.items():
        for i, (photo, n) in enumerate(photos.items()):
            _image(root / "photo" / cls / f"{photo}.jpg", 10 * i)
            for k in range(1, n + 1):
                _image(root / "sketch" / cls / f"{photo}-{k}.png", 200 + k)
    return root


TOY_SPLIT = ZeroShotSplit("toy", train_classes=("cat", "dog", "horse"), test_classes=("owl",))


def test_fg_zero_shot_on_a_generated_folder(tmp_path):
    root = _fg_tree(tmp_path / "fg")
    with pytest.warns(MissingSplitClassesWarning, match=r"1 of 3 seen \(horse\)"):
        ds = load_fg_zero_shot(root, TOY_SPLIT)
    train, test = ds["train"], ds["test"]
    # Training pairs: seen classes only, both domains; every sketch's pair_id names a photo of its class.
    assert {i.split("/")[1] for i in train["id"]} == {"cat", "dog"}
    assert {i.split("/")[1] for i in test["id"]} == {"owl"}
    assert Counter(train["domain"]) == {"sketch": 7, "photo": 5}
    assert Counter(test["domain"]) == {"sketch": 3, "photo": 3}  # o3 has no sketch: a gallery distractor
    sketches, photos, targets = fine_grained_split(test)
    for sketch_id, target in zip(sketches["id"], targets):
        cls, stem = sketch_id.split("/")[1], Path(sketch_id).stem.rsplit("-", 1)[0]
        assert photos[target]["id"] == f"photo/{cls}/{stem}.jpg"
    assert set(train["pair_id"]).isdisjoint(test["pair_id"])
    guard_training_set(train, TOY_SPLIT, label_column="class")  # the class column feeds the leak guard
    meta = sbir_metadata(test)
    assert meta["task"] == "fine-grained" and meta["split"] == "toy" and meta["num_photos"] == 3
    # The QMUL-style loader points a class-folder tree to this one.
    with pytest.raises(FileNotFoundError, match="load_fg_zero_shot"):
        load_fg_paired(root)


@pytest.mark.filterwarnings("ignore::hf_sbir.data.MissingSplitClassesWarning")
def test_fg_zero_shot_refuses_a_sketch_without_its_photo(tmp_path):
    root = _fg_tree(tmp_path / "fg")
    _image(root / "sketch" / "owl" / "o9-1.png", 1)
    with pytest.raises(ValueError, match=r"o9-1.png.*on_unmatched='warn'"):
        load_fg_zero_shot(root, TOY_SPLIT)
    with pytest.warns(UserWarning, match="o9-1.png"):
        ds = load_fg_zero_shot(root, TOY_SPLIT, on_unmatched="warn")
    assert "sketch/owl/o9-1.png" not in ds["test"]["id"]


@pytest.mark.filterwarnings("ignore::hf_sbir.data.MissingSplitClassesWarning")
def test_fg_zero_shot_refuses_a_split_with_no_unseen_class_present(tmp_path):
    root = _fg_tree(tmp_path / "fg")
    split = ZeroShotSplit("none", train_classes=("cat", "dog"), test_classes=("zebra",))
    with pytest.raises(FileNotFoundError, match=r"none of the 1 unseen class\(es\) of split 'none'"):
        load_fg_zero_shot(root, split)


@needs_sketchy_small
def test_fg_zero_shot_on_sketchy_small():
    with pytest.warns(MissingSplitClassesWarning):
        ds = load_fg_zero_shot(SKETCHY_SMALL, "sketchy_sake", verify=False)
    split = load_split("sketchy_sake")
    manifest = _manifest()
    instances = {(r["cls"], r["instance"]) for r in manifest if r["modality"] == "sketch"}
    assert len({i for _, i in instances}) == 540  # the README's 540 photo instances (all classes)

    test_sketches, test_photos, targets = fine_grained_split(ds["test"])
    assert (test_sketches.num_rows, test_photos.num_rows) == (550, 550)  # each sketch against all unseen photos
    for row, target in zip(test_sketches.select(range(0, 550, 37)), targets[::37]):
        cls = row["id"].split("/")[1]
        assert cls in split.test_classes
        assert test_photos[target]["id"] == f"photo/{cls}/{row['pair_id'].split('/')[-1]}.jpg"
    train_classes = set(ds["train"]["class"])
    assert len(train_classes) == 94 and train_classes <= set(split.train_classes)
    guard_training_set(ds["train"], "sketchy_sake", label_column="class")
    unseen_instances = {i for c, i in instances if c in split.test_classes}
    assert len(set(ds["test"].filter(lambda d: d == "sketch", input_columns="domain")["pair_id"])) == len(unseen_instances)


@pytest.mark.filterwarnings("ignore::hf_sbir.data.MissingSplitClassesWarning")
def test_fg_sbir_method_trains_and_evaluates_on_class_folder_pairs(tmp_path):
    """The pairs are what the FG-SBIR method reads: one training step and Acc@q on the unseen classes."""
    from types import SimpleNamespace

    from transformers import PvtV2Config

    from hf_sbir.training import TrainConfig
    from hf_sbir.training.methods import get_method_class

    data = load_fg_zero_shot(_fg_tree(tmp_path / "fg"), TOY_SPLIT)
    backbone = PvtV2Config(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], sr_ratios=[2, 1], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], image_size=32,
    )
    args = TrainConfig(
        method="fg_sbir", dataset=str(tmp_path / "fg"), split=None, backbone_config=backbone.to_dict(),
        model_config={"embedding_dim": 16}, image_size=32, batch_size=4, eval_batch_size=8,
        output_dir=str(tmp_path / "run"), progress=False, log_with="none",
    )
    method = get_method_class("fg_sbir")(args)
    model = method.build_model()
    transform = method.build_transform(model)
    method.setup(model, data, transform, SimpleNamespace(device="cpu", is_main_process=True))
    assert set(method.pairs) == {"cat/c1", "cat/c2", "dog/d1", "dog/d2"}  # seen-class photos with sketches
    batch = method.next_batch(0)
    assert all(v.shape[0] == 4 for v in batch.values() if hasattr(v, "shape"))
    result = method.evaluate(model.eval(), data, transform)
    assert (result["num_queries"], result["num_gallery"]) == (3, 3)
    assert set(result["metrics"]) == {"acc@1", "acc@5", "acc@10"}
    assert result["metrics"]["acc@5"] == 1.0  # 3 gallery photos: every target is in the top 5


def test_train_fg_sbir_with_a_zero_shot_split_reads_class_folder_pairs(tmp_path):
    """`train.py --method fg_sbir --split sketchy_sake` on a Sketchy-style class-folder tree: trains on the seen
    classes' pairs and scores each unseen sketch against every unseen photo (before this, fg_sbir read QMUL-style
    folders only and refused the tree)."""
    from transformers import PvtV2Config

    from hf_sbir.training import TrainConfig
    from hf_sbir.training.methods import get_method_class
    from hf_sbir.training.trainer import train

    root = tmp_path / "fg"
    # cat and dog are seen classes of SAKE's split, horse an unseen one; h3 is an unseen photo without a sketch.
    layout = {"cat": {"c1": 2, "c2": 1}, "dog": {"d1": 1, "d2": 2}, "horse": {"h1": 2, "h2": 1, "h3": 0}}
    for cls, photos in layout.items():
        for i, (photo, n) in enumerate(photos.items()):
            _image(root / "photo" / cls / f"{photo}.jpg", 10 * i)
            for k in range(1, n + 1):
                _image(root / "sketch" / cls / f"{photo}-{k}.png", 200 + k)
    backbone = PvtV2Config(
        num_encoder_blocks=2, depths=[1, 1], hidden_sizes=[16, 32], sr_ratios=[2, 1], patch_sizes=[7, 3],
        strides=[4, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], image_size=32,
    )
    args = TrainConfig(
        method="fg_sbir", dataset=str(root), split="sketchy_sake", backbone_config=backbone.to_dict(),
        model_config={"embedding_dim": 16}, image_size=32, batch_size=2, eval_batch_size=8, iterations=1,
        output_dir=str(tmp_path / "run"), progress=False, log_with="none", eval_before=False,
    )
    with pytest.warns(MissingSplitClassesWarning):
        data = get_method_class("fg_sbir")(args).load_data()
    assert set(data["train"]["class"]) == {"cat", "dog"} and set(data["test"]["class"]) == {"horse"}
    result = train(args)
    assert (result.metrics_after["num_queries"], result.metrics_after["num_gallery"]) == (3, 3)
    assert set(result.metrics_after["metrics"]) == {"acc@1", "acc@5", "acc@10"}
    # Left at the config's default split ("embedded"), a class-folder tree is still refused with the pointer.
    args.split = "embedded"
    with pytest.raises(FileNotFoundError, match="load_fg_zero_shot"):
        get_method_class("fg_sbir")(args).load_data()
