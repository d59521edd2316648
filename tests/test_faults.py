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

from conftest import REPO_ROOT, tiny_vit_config

ITERATIONS = 6  # checkpoints at 2, 4, 6; "stopped" runs stop after 4
STOP = 4


def tiny_args(out: Path, **overrides) -> TrainConfig:
    kwargs = dict(
        dataset="embedded",
        split="embedded",
        backbone_config=tiny_vit_config().to_dict(),
        text_embedder="minilm",
        model_config={"projection_dim": 16, "gcn_hidden_size": 16, "gcn_num_layers": 2},
        iterations=ITERATIONS,
        batch_size=6,
        learning_rate=1e-3,
        min_learning_rate=1e-4,
        warmup_iterations=1,
        image_size=32,
        checkpoint_every=2,
        eval_batch_size=64,
        eval_before=False,
        output_dir=str(out),
        progress=False,
        log_with="none",
        method_args={"num_neighbours": 3},
    )
    kwargs.update(overrides)
    return TrainConfig(**kwargs)


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
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
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
