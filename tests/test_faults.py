"""Fault injection (issue 19): kills at chosen points, corrupt files of each kind, bad images, hostile
gallery indexes. Each test asserts a clear one-line error naming the culprit, or a correct fallback, and
never a lost checkpoint.

The runs are the tiny ones of tests/test_training.py (a 2-layer ViT at 32 px on the embedded data, a few
iterations); one uninterrupted run is shared by the module as the reference for "resumed bit-exactly".
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import hf_sbir  # noqa: F401
from hf_sbir.training import TrainConfig, list_checkpoints, train
from hf_sbir.training.checkpointing import (
    MANIFEST_NAME,
    CheckpointError,
    IncompleteModelFolderError,
    ResumeMismatchError,
    check_model_folder,
    prune_checkpoints,
    verify_checkpoint,
)

from conftest import REPO_ROOT, tiny_train_args

ITERATIONS = 6  # checkpoints at 2, 4, 6; "stopped" runs stop after 4
STOP = 4


def tiny_args(out: Path, **overrides) -> TrainConfig:
    return tiny_train_args(out, **{"iterations": ITERATIONS, "log_with": "none", **overrides})


def _force(args: TrainConfig, **values) -> TrainConfig:
    """Set values that config validation would refuse (the code under test must be safe on its own)."""
    for key, value in values.items():
        object.__setattr__(args, key, value)
    return args


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


def _one_line(message: str) -> str:
    assert "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run: its exported weights are what every resumed run must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "run"
    result = train(tiny_args(out))
    assert result.finished
    return out


@pytest.fixture(scope="module")
def stopped(tmp_path_factory) -> Path:
    """A run stopped after its checkpoints 2 and 4, to copy and damage."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    result = train(tiny_args(out, stop_after=STOP))
    assert not result.finished
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "run"
    shutil.copytree(run, dest)
    return dest


def _damage_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "hf_sbir" and r.levelno == logging.WARNING and "checkpoint" in r.getMessage()]


# ------------------------------------------------------------------------------------ pruning
@pytest.mark.parametrize("keep", [-1, 0])
def test_pruning_never_deletes_the_checkpoint_just_written(tmp_path, keep):
    for step in (2, 4, 6):
        (tmp_path / "checkpoints" / f"checkpoint-{step}").mkdir(parents=True)
    prune_checkpoints(tmp_path, keep, protect=tmp_path / "checkpoints" / "checkpoint-4")
    # Older ones go, the new one stays, and a newer one (from an earlier, longer attempt) is not touched.
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-4", "checkpoint-6"]


def test_keep_checkpoints_minus_one_keeps_the_run_resumable(tmp_path, reference):
    out = tmp_path / "run"
    train(_force(tiny_args(out, stop_after=2), keep_checkpoints=-1))
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"]
    resumed = train(_force(tiny_args(out, resume=True), keep_checkpoints=-1))
    assert resumed.finished and [p.name for p in list_checkpoints(out)] == [f"checkpoint-{ITERATIONS}"]
    _assert_same_weights(resumed.model_dir, reference / "model")


# ------------------------------------------------------------------------ corrupt checkpoints
def _truncate(path: Path, keep_fraction: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep_fraction)])


def _garbage(path: Path):
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def _edit_iterations_done(path: Path):
    state = json.loads(path.read_text())
    state["iterations_done"] = ITERATIONS  # "finished": would export 4-iteration weights as the 6-iteration run
    path.write_text(json.dumps(state))


DAMAGE = {
    "truncated weights": ("model.safetensors", _truncate),
    "empty weights": ("model.safetensors", lambda p: p.write_bytes(b"")),
    "truncated optimiser": ("optimizer.bin", _truncate),
    "missing scheduler": ("scheduler.bin", Path.unlink),
    "empty trainer_state.json": ("trainer_state.json", lambda p: p.write_text("")),
    "edited iterations_done": ("trainer_state.json", _edit_iterations_done),
    "truncated method state": ("method_state.pt", _truncate),
    "garbage RNG state": ("random_states_0.pkl", _garbage),
    "missing manifest": (MANIFEST_NAME, Path.unlink),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_latest_checkpoint_falls_back_to_the_intact_one(tmp_path, stopped, reference, caplog, damage):
    run = _copy(stopped, tmp_path)
    filename, corrupt = DAMAGE[damage]
    corrupt(run / "checkpoints" / "checkpoint-4" / filename)
    assert verify_checkpoint(run / "checkpoints" / "checkpoint-4") is not None
    with caplog.at_level(logging.WARNING, logger="hf_sbir"):
        resumed = train(tiny_args(run, resume=True))
    lines = _damage_warnings(caplog)
    assert len(lines) == 1 and "checkpoint-4" in _one_line(lines[0]) and "checkpoint-2" in lines[0], lines
    assert resumed.finished and resumed.iterations_done == ITERATIONS
    # Resumed from checkpoint-2, the run ends exactly where the uninterrupted run does.
    _assert_same_weights(resumed.model_dir, reference / "model")


def test_truncated_anchor_cache_is_rebuilt_and_resume_stays_exact(tmp_path, stopped, reference, caplog):
    run = _copy(stopped, tmp_path)
    _truncate(run / "anchors" / "anchors.safetensors")
    with caplog.at_level(logging.WARNING, logger="hf_sbir"):
        resumed = train(tiny_args(run, resume=True))
    lines = [r.getMessage() for r in caplog.records if r.name == "hf_sbir" and r.levelno == logging.WARNING]
    assert len(lines) == 1 and "anchors" in _one_line(lines[0]), lines
    _assert_same_weights(resumed.model_dir, reference / "model")


def test_no_intact_checkpoint_is_a_clear_error_and_deletes_nothing(tmp_path, stopped):
    run = _copy(stopped, tmp_path)
    for ckpt in list_checkpoints(run):
        _truncate(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError) as err:
        train(tiny_args(run, resume=True))
    message = _one_line(str(err.value))
    assert "checkpoint-4" in message and "checkpoint-2" in message and "model.safetensors" in message
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]


# ---------------------------------------------------------------------------- a different run
@pytest.mark.parametrize(
    "change",
    [
        {"batch_size": 8},
        {"image_size": 64},
        {"learning_rate": 2e-3},
        {"seed": 1},
        {"method_args": {"num_neighbours": 4}},
        {"dataset": "sbir-mini", "split": "sbir_mini"},
    ],
    ids=lambda c: "+".join(c),
)
def test_resume_refuses_a_run_with_other_settings(tmp_path, stopped, change):
    run = _copy(stopped, tmp_path)
    with pytest.raises(ResumeMismatchError) as err:
        train(tiny_args(run, resume=True, **change))
    message = _one_line(str(err.value))
    for key in change:
        assert f"{key}:" in message
    assert "new --output_dir" in message
    assert [p.name for p in list_checkpoints(run)] == ["checkpoint-2", "checkpoint-4"]
    assert all(verify_checkpoint(p) is None for p in list_checkpoints(run))


# ------------------------------------------------------------------------------- non-finite
def test_non_finite_weights_never_reach_a_checkpoint(tmp_path):
    out = tmp_path / "run"
    # A NaN floor of the cosine schedule makes every update after the warm-up step NaN (the probe's setting,
    # which config validation refuses; the loop must be safe without it).
    args = _force(tiny_args(out, checkpoint_every=1), min_learning_rate=float("nan"))
    with pytest.raises(FloatingPointError) as err:
        train(args)
    message = _one_line(str(err.value))
    assert "checkpoint-1" in message and "non-finite" in message
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-1"]
    assert verify_checkpoint(out / "checkpoints" / "checkpoint-1") is None
    assert all(torch.isfinite(t).all() for t in _weights(out / "checkpoints" / "checkpoint-1").values())


# ------------------------------------------------------------------------------ kills (SIGKILL)
# The child runs train() with one function wrapped so that its n-th call kills the process (SIGKILL: no
# cleanup, no finally blocks), the closest a test gets to a power cut or an OOM kill at that point.
_CHILD = textwrap.dedent(
    """
    import importlib, json, logging, os, signal, sys
    import hf_sbir
    from hf_sbir.training import TrainConfig, train

    module_name, attr, nth = sys.argv[2], sys.argv[3], int(sys.argv[4])
    module = importlib.import_module(module_name)
    original = getattr(module, attr)
    calls = [0]

    def killer(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)

    setattr(module, attr, killer)
    train(TrainConfig(**json.loads(open(sys.argv[1]).read())))
    """
)


def _run_killed(args: TrainConfig, target: str, nth: int, tmp_path: Path):
    config = tmp_path / "args.json"
    config.write_text(json.dumps(args.to_dict()))
    module, attr = target.split(":")
    # The child computes with this process's thread count: a different one changes float reduction order, and the
    # resumed weights are compared bit for bit with a run made here.
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(config), module, attr, str(nth)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


KILL_POINTS = {
    # where                                 (function wrapped, its n-th call, intact checkpoints left)
    "before the second checkpoint": ("hf_sbir.training.trainer:save_checkpoint", 2, ["checkpoint-2"]),
    "inside accelerate's save_state": ("torch:save", 5, ["checkpoint-2"]),
    "before the manifest": ("hf_sbir.training.checkpointing:write_manifest", 2, ["checkpoint-2"]),
    "after the rename, before pruning": ("hf_sbir.training.checkpointing:prune_checkpoints", 2, ["checkpoint-2", "checkpoint-4"]),
    "during the export": ("hf_sbir.training.model_card:write_model_card", 1, ["checkpoint-6"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("where", list(KILL_POINTS))
def test_a_kill_never_loses_a_checkpoint_and_resume_is_exact(tmp_path, reference, where):
    target, nth, intact = KILL_POINTS[where]
    out = tmp_path / "run"
    _run_killed(tiny_args(out, keep_checkpoints=1), target, nth, tmp_path)
    assert [p.name for p in list_checkpoints(out)] == intact
    assert all(verify_checkpoint(p) is None for p in list_checkpoints(out))
    # A killed export leaves no model folder at all, never one that loads with files missing.
    assert not (out / "model").exists()
    resumed = train(tiny_args(out, keep_checkpoints=1, resume=True))
    assert resumed.finished
    _assert_same_weights(resumed.model_dir, reference / "model")
    check_model_folder(resumed.model_dir)


@pytest.mark.slow
def test_a_kill_during_re_export_keeps_the_previous_model_folder(tmp_path, reference):
    run = _copy(reference, tmp_path)
    before = {p.name: p.read_bytes() for p in (run / "model").iterdir()}
    # Resuming a finished run re-exports it; kill that export half-way (weights written, card not).
    _run_killed(tiny_args(run, resume=True), "hf_sbir.training.model_card:write_model_card", 1, tmp_path)
    after = {p.name: p.read_bytes() for p in (run / "model").iterdir()}
    assert after == before
    check_model_folder(run / "model")


# --------------------------------------------------------------------------- exported folders
def test_evaluate_refuses_a_half_written_model_folder(tmp_path, reference, capsys):
    from hf_sbir import evaluate as evaluate_cli

    # What a kill during the old, non-atomic export left: weights and config, no preprocessing, no manifest.
    legacy = tmp_path / "legacy"
    shutil.copytree(reference / "model", legacy)
    (legacy / "sbir_image_transform.json").unlink()
    (legacy / MANIFEST_NAME).unlink()
    # A folder with a manifest whose weights were cut short (a partial copy).
    cut = tmp_path / "cut"
    shutil.copytree(reference / "model", cut)
    _truncate(cut / "model.safetensors")
    for folder, culprit in ((legacy, "sbir_image_transform.json"), (cut, "model.safetensors")):
        with pytest.raises(IncompleteModelFolderError, match=culprit):
            check_model_folder(folder)
        assert evaluate_cli.main(["--model", str(folder)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and culprit in _one_line(err) and str(folder) in err
    # Editing the model card after the export is not damage.
    edited = tmp_path / "edited"
    shutil.copytree(reference / "model", edited)
    (edited / "README.md").write_text((edited / "README.md").read_text() + "\nMy notes.\n")
    check_model_folder(edited)


def test_the_saved_transform_refuses_blank_sketches(reference):
    from hf_sbir.data import EmptySketchError, SbirImageTransform

    transform = SbirImageTransform.from_pretrained(reference / "model")
    assert transform.empty_sketch == "raise"  # training used "keep"; the saved model must not score blanks
    with pytest.raises(EmptySketchError, match="Empty sketch"):
        transform(Image.new("L", (64, 64), 255), "sketch")


# ------------------------------------------------------------------------------------- images
def _ink(size=(64, 64)) -> Image.Image:
    img = Image.new("L", size, 255)
    img.paste(0, (10, 10, 50, 14))
    img.paste(0, (10, 10, 14, 50))
    return img


def _photo(seed: int, size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


@pytest.fixture
def folder_with_truncated_jpeg(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    for cls in ("cat", "dog"):
        (root / "sketch" / cls).mkdir(parents=True)
        (root / "photo" / cls).mkdir(parents=True)
        for i in range(2):
            _ink().save(root / "sketch" / cls / f"s{i}.png")
            _photo(i).save(root / "photo" / cls / f"p{i}.jpg", quality=90)
    bad = root / "photo" / "dog" / "p1.jpg"
    _truncate(bad, 0.6)
    with Image.open(bad) as img:
        img.verify()  # the old check passes it: only a full decode sees the truncation
    return root, bad


def test_truncated_jpeg_is_caught_at_load_time_under_warn_and_raise(folder_with_truncated_jpeg):
    from hf_sbir.data import CorruptImageError, CorruptImageWarning, load_sbir_folder

    root, bad = folder_with_truncated_jpeg
    with pytest.warns(CorruptImageWarning, match=str(bad)):
        data = load_sbir_folder(root, on_error="warn")
    assert "photo/dog/p1.jpg" not in data["all"]["id"] and len(data["all"]) == 7
    with pytest.raises(CorruptImageError) as err:
        load_sbir_folder(root, on_error="raise")
    assert str(bad) in _one_line(str(err.value))


def test_train_config_corrupt_image_policy_reaches_the_loader(folder_with_truncated_jpeg):
    from hf_sbir.data import CorruptImageError, CorruptImageWarning
    from hf_sbir.training.method import load_zero_shot_data

    root, bad = folder_with_truncated_jpeg
    with pytest.raises(CorruptImageError, match=str(bad)):
        load_zero_shot_data(TrainConfig(dataset=str(root), split=None, corrupt_images="raise"))
    with pytest.warns(CorruptImageWarning, match=str(bad)):
        load_zero_shot_data(TrainConfig(dataset=str(root), split=None, corrupt_images="warn"))


def test_evaluation_names_a_file_that_broke_after_loading(folder_with_truncated_jpeg):
    from hf_sbir.data import CorruptImageError, SbirImageTransform, load_sbir_folder
    from hf_sbir.retrieval import embed_images
    from hf_sbir.retrieval.embedding import ImageLoadError

    root, bad = folder_with_truncated_jpeg
    data = load_sbir_folder(root, verify=False)["all"]  # trusted data, no check: the error comes at use
    model = torch.nn.Module()
    model.forward = lambda pixel_values: type("Out", (), {"embeddings": pixel_values.flatten(1)})()
    with pytest.raises((CorruptImageError, ImageLoadError)) as err:
        embed_images(model, data, SbirImageTransform(image_size=16), "photo", progress=False)
    assert str(bad) in _one_line(str(err.value))


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_greyscale_photos_keep_their_brightness(tmp_path, mode):
    from hf_sbir.data import SbirImageTransform

    rng = np.random.default_rng(0)
    eight = rng.integers(0, 256, (48, 64), dtype=np.uint8)
    wide = Image.fromarray((eight.astype(np.uint16) * 257).astype(np.uint16 if mode == "I;16" else np.int32), mode=mode)
    wide.save(tmp_path / "photo16.png")
    Image.fromarray(eight, "L").save(tmp_path / "photo8.png")
    with Image.open(tmp_path / "photo16.png") as img:
        assert img.mode.startswith("I")  # PNG keeps 16 bits
    transform = SbirImageTransform(image_size=32)
    a = transform(str(tmp_path / "photo16.png"), "photo")
    b = transform(str(tmp_path / "photo8.png"), "photo")
    assert torch.allclose(a, b, atol=1e-5)  # before the fix: pure white, cosine 0.36 to the 8-bit copy


# ---------------------------------------------------------------------------------- leak guard
@pytest.mark.parametrize(
    "train_name, test_name",
    [
        ("palmtree", "palm tree"),
        ("palm_trees", "palm tree"),
        ("palm\u200btree", "palm tree"),  # zero-width space
        ("\uff50\uff41\uff4c\uff4d \uff54\uff52\uff45\uff45", "palm tree"),  # full-width letters
        ("palm.tree", "palm tree"),
        ("BUTTER_FLY", "butterfly"),
        ("Butterflies", "butterfly"),
        ("hot-air balloons", "hot_air_balloon"),
    ],
)
def test_leak_guard_catches_spelling_variants(train_name, test_name):
    from hf_sbir.data import ZeroShotLeakError, check_no_leak

    with pytest.raises(ZeroShotLeakError) as err:
        check_no_leak(["cat", train_name], ["dog", test_name])
    assert repr(train_name) in _one_line(str(err.value)) and repr(test_name) in str(err.value)


def test_leak_guard_flags_near_duplicates_and_passes_distinct_classes():
    from hf_sbir.data import check_no_leak
    from hf_sbir.data.zero_shot import ZeroShotLeakWarning

    with pytest.warns(ZeroShotLeakWarning, match="'buterfly' ~ 'butterfly'"):
        check_no_leak(["buterfly"], ["butterfly"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_no_leak(["glass", "bus", "car_(sedan)", "horse", "airplane"], ["glasses_case", "car", "house", "bush"])


# ------------------------------------------------------------------------------- gallery index
def _index_folder(tmp_path: Path, embeddings=None, metadata=None) -> Path:
    from hf_sbir.retrieval import GalleryIndex

    good = GalleryIndex(torch.randn(3, 8), [{"id": f"p{i}.jpg", "label": "cat", "path": f"/data/p{i}.jpg"} for i in range(3)])
    folder = good.save(tmp_path / "index")
    info = json.loads((folder / "index.json").read_text())
    if metadata is not None:
        info["metadata"] = metadata
        (folder / "index.json").write_text(json.dumps(info))
    if embeddings is not None:
        from safetensors.torch import save_file

        save_file({"embeddings": embeddings}, str(folder / "embeddings.safetensors"))
    return folder


@pytest.mark.parametrize(
    "damage, culprit",
    [
        ("nan", "NaN"),
        ("unnormalised", "not L2-normalised"),
        ("path traversal", "not an image file path"),
        ("metadata type", "must be a dict"),
        ("duplicate ids", "same id"),
    ],
)
def test_gallery_index_is_validated_on_load(tmp_path, damage, culprit):
    from hf_sbir.retrieval import GalleryIndex

    e = torch.nn.functional.normalize(torch.randn(3, 8), dim=1)
    rows = [{"id": f"p{i}.jpg", "label": "cat", "path": f"/data/p{i}.jpg"} for i in range(3)]
    embeddings, metadata = None, None
    if damage == "nan":
        embeddings = e.clone()
        embeddings[1, 2] = float("nan")
    elif damage == "unnormalised":
        embeddings = e * 3
    elif damage == "path traversal":
        metadata = rows[:2] + [{"id": "x", "label": "cat", "path": "../../etc/passwd"}]
    elif damage == "metadata type":
        metadata = rows[:2] + ["<script>"]
    elif damage == "duplicate ids":
        metadata = rows[:2] + [dict(rows[0])]
    folder = _index_folder(tmp_path, embeddings, metadata)
    with pytest.raises(ValueError) as err:
        GalleryIndex.load(folder)
    message = _one_line(str(err.value))
    assert culprit in message and str(folder) in message
    with pytest.raises(ValueError, match=culprit):  # the same rules when an index is built in memory
        GalleryIndex(embeddings if embeddings is not None else e, metadata or rows, normalize=False)


def test_the_space_shows_markup_in_labels_as_text_and_keeps_pils_bomb_limit(tmp_path):
    import zlib

    sys.path.insert(0, str(REPO_ROOT / "spaces" / "sketch-an-anchor"))
    import sketch_search

    label = "<script>alert(1)</script>"
    rendered = sketch_search.markdown_text(label)
    assert "<" not in rendered and ">" not in rendered and "script" in rendered

    limit = Image.MAX_IMAGE_PIXELS
    _ink().save(tmp_path / "sketch.png")
    sketch_search.open_upload(tmp_path / "sketch.png")
    assert Image.MAX_IMAGE_PIXELS == limit  # was set to None for the whole process by the first upload

    # A PNG header announcing 20000 x 20000 pixels (400 MP): refused before any pixel is decoded.
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    ihdr = (20000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(sketch_search.SketchSearchError) as err:
        sketch_search.open_upload(tmp_path / "bomb.png")
    assert "bomb.png" in _one_line(str(err.value))
    assert Image.MAX_IMAGE_PIXELS == limit
