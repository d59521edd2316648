"""Checkpoints and exported model folders that survive kills, disk faults and edits.

A checkpoint is `<output_dir>/checkpoints/checkpoint-<N>/`: accelerate's `save_state` files (model,
optimiser, scheduler, RNG states), `method_state.pt` (the method's extra state), `trainer_state.json`
(the iteration reached and the run's settings) and, written last, `hf_sbir_manifest.json` (size and
sha256 of every other file). Four rules follow from the ways a run goes wrong:

- **A kill never leaves a half checkpoint under a checkpoint name.** Everything is written into a hidden
  staging folder (`.checkpoint-<N>.partial`) that is renamed into place once complete.
- **Resume trusts only verified checkpoints.** A checkpoint whose files do not match its manifest
  (truncated or empty weights, a missing file, an edited `iterations_done`, garbage RNG state ...) is
  skipped with one warning naming it, and the run resumes from the newest intact earlier one. Nothing is
  deleted: the damaged folder is left for inspection and is replaced when the run writes that step again.
- **Resume refuses a different run.** The settings that shape the weights (`run_settings`) are stored in
  `trainer_state.json` and compared on resume; a change (batch size, learning rate, seed, dataset ...) is
  refused in one line naming each difference.
- **Nothing non-finite is written, and pruning never loses the run.** Weights and method state are
  checked for NaN/inf before a checkpoint is written; old checkpoints are pruned only after the new one
  is in place, never the new one itself, and never below one.

Exported model folders (`atomic_directory`) are written into a staging sibling and renamed into place,
with the same manifest, so a kill during export leaves the previous folder (or none), never a folder that
loads with missing files; `check_model_folder` refuses an incomplete folder in one line.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
from pathlib import Path
from typing import Any, Iterator

import torch

logger = logging.getLogger("hf_sbir")

CHECKPOINT_PREFIX = "checkpoint-"
MANIFEST_NAME = "hf_sbir_manifest.json"
TRAINER_STATE_NAME = "trainer_state.json"
METHOD_STATE_NAME = "method_state.pt"
MANIFEST_FORMAT = "hf-sbir-manifest"
_CHECKPOINT_RE = re.compile(rf"^{re.escape(CHECKPOINT_PREFIX)}(\d+)$")

# Settings that may change between a stopped run and its resumption: they do not shape the weights
# (where the run writes, how it logs, how often it checkpoints, how much of it this invocation runs).
# Every other TrainConfig field is compared, so a new setting is protected unless it is listed here.
RESUMABLE_SETTINGS = frozenset(
    {
        "output_dir", "resume", "stop_after", "progress", "log_with", "log_every", "checkpoint_every",
        "keep_checkpoints", "eval_before", "eval_batch_size", "max_eval_queries", "push_to_hub", "hub_model_id",
        "corrupt_images", "num_workers",
    }
)


class CheckpointError(RuntimeError):
    """No checkpoint of the run can be trusted, or a checkpoint cannot be written safely."""


class ResumeMismatchError(ValueError):
    """`resume=True` with settings that differ from the ones the checkpoint was trained with."""


class IncompleteModelFolderError(OSError):
    """A saved model folder whose files do not match its manifest (an interrupted export or a partial copy)."""


# ------------------------------------------------------------------------------------- manifest
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder: Path, **extra: Any) -> Path:
    """Record size and sha256 of every file below `folder` in `hf_sbir_manifest.json` (written last,
    via a temporary file and a rename, so the manifest itself is never half-written)."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST_NAME):
        files[path.relative_to(folder).as_posix()] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    manifest = {"format": MANIFEST_FORMAT, "format_version": 1, **extra, "files": files}
    tmp = folder / f".{MANIFEST_NAME}.tmp"
    with tmp.open("w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / MANIFEST_NAME)
    return folder / MANIFEST_NAME


def verify_manifest(folder: Path, hashes: bool = True, sized: tuple[str, ...] | None = None) -> str | None:
    """`None` if every file listed in `folder`'s manifest is there with its size (and sha256, when
    `hashes`); otherwise a short reason naming the first bad file. With `sized` (file suffixes), only files
    with those suffixes are size-checked; the others need only exist."""
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return f"no {MANIFEST_NAME} (an interrupted write, or written by an older hf-sbir)"
    try:
        manifest = json.loads(path.read_text())
        files = manifest["files"]
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
            raise ValueError("not an hf-sbir manifest")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
        return f"{MANIFEST_NAME} is unreadable ({type(err).__name__})"
    for name, expected in files.items():
        file = folder / name
        if not file.is_file():
            return f"{name} is missing"
        if sized is not None and not name.endswith(sized):
            continue
        size = file.stat().st_size
        if size != expected.get("size"):
            return f"{name} is {size} bytes, {expected.get('size')} expected (truncated or replaced)"
        if hashes and _sha256(file) != expected.get("sha256"):
            return f"{name} does not match its checksum (corrupt or edited)"
    return None


# ---------------------------------------------------------------------------------- checkpoints
def checkpoint_step(path: Path) -> int | None:
    match = _CHECKPOINT_RE.match(path.name)
    return int(match.group(1)) if match else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoint folders of a run, oldest first (complete or not: `verify_checkpoint` tells which are
    intact). Staging and to-be-deleted folders (hidden names) are not listed."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def verify_checkpoint(path: Path) -> str | None:
    """`None` for an intact checkpoint, else why it cannot be trusted (one short phrase)."""
    problem = verify_manifest(path)
    if problem:
        return problem
    try:
        state = json.loads((path / TRAINER_STATE_NAME).read_text())
        done = state["iterations_done"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{TRAINER_STATE_NAME} is unreadable ({type(err).__name__})"
    if done != checkpoint_step(path):
        return f"{TRAINER_STATE_NAME} says iteration {done!r} but the folder is {path.name}"
    return None


def run_settings(args) -> dict[str, Any]:
    """The settings of `args` that shape the trained weights (all but `RESUMABLE_SETTINGS`), as JSON values."""
    return {k: v for k, v in _jsonable(args.to_dict()).items() if k not in RESUMABLE_SETTINGS}


def _jsonable(value):
    return json.loads(json.dumps(value, default=str))


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))
    return a == b


def compare_run_settings(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """`["batch_size: 6 in the checkpoint, 8 now", ...]` for every setting that differs."""
    diffs = []
    for key in sorted(set(saved) | set(current)):
        if key in RESUMABLE_SETTINGS:
            continue
        old, new = saved.get(key, "<unset>"), current.get(key, "<unset>")
        if not _same(old, new):
            diffs.append(f"{key}: {json.dumps(old)} in the checkpoint, {json.dumps(new)} now")
    return diffs


def non_finite_tensors(named: dict[str, Any]) -> list[str]:
    """Names of the floating-point tensors of `named` (nested dicts/lists walked) holding NaN or inf."""
    bad = []

    def walk(prefix, value):
        if torch.is_tensor(value):
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                bad.append(prefix)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)

    walk("", named)
    return bad


def last_good_checkpoint(output_dir: str | Path) -> Path | None:
    """The newest intact checkpoint of the run (sizes checked, not hashes: this is for messages)."""
    for path in reversed(list_checkpoints(output_dir)):
        if verify_manifest(path, hashes=False) is None:
            return path
    return None


def describe_last_good(output_dir: str | Path) -> str:
    good = last_good_checkpoint(output_dir)
    if good is None:
        return f"no checkpoint was written yet in {Path(output_dir) / 'checkpoints'}"
    return f"the last good checkpoint is {good}"


def save_checkpoint(accelerator, method, output_dir: Path, done: int, keep: int, args=None, model=None) -> Path:
    """Write checkpoint `done` atomically (staging folder + manifest + rename), then prune old ones.

    Refuses (`FloatingPointError`, nothing written) when the model or the method state holds NaN/inf.
    `keep` below 1 counts as 1: the checkpoint just written is never deleted.
    """
    output_dir = Path(output_dir)
    root = output_dir / "checkpoints"
    final = root / f"{CHECKPOINT_PREFIX}{done}"
    staging = root / f".{final.name}.partial"
    method_state = method.state_dict()
    if model is not None:
        bad = non_finite_tensors(accelerator.unwrap_model(model).state_dict()) + non_finite_tensors(method_state)
        if bad:
            raise FloatingPointError(
                f"Weights became non-finite by iteration {done} (NaN/inf in {len(bad)} tensor(s), e.g. {bad[0]}); "
                f"no checkpoint was written for it and {describe_last_good(output_dir)}. Lower the learning rate or "
                "check the settings and data."
            )
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(staging, ignore_errors=True)  # left by a kill during an earlier write
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        torch.save(method_state, staging / METHOD_STATE_NAME)
        state = {"iterations_done": done, "run_settings": run_settings(args) if args is not None else None}
        (staging / TRAINER_STATE_NAME).write_text(json.dumps(state, indent=1, sort_keys=True))
        write_manifest(staging, iterations_done=done)
        _replace_directory(staging, final)
        prune_checkpoints(output_dir, keep, protect=final)
    accelerator.wait_for_everyone()
    return final


def prune_checkpoints(output_dir: Path, keep: int, protect: Path) -> list[Path]:
    """Delete checkpoints older than `protect` beyond the newest `keep` (at least 1, `protect` included).

    Checkpoints newer than `protect` (left by an earlier, longer attempt) are not touched. Each doomed
    folder is renamed to a hidden name first, so a kill during deletion never leaves a half folder that
    looks like a checkpoint."""
    keep = max(1, int(keep))
    protect_step = checkpoint_step(protect)
    older = [p for p in list_checkpoints(output_dir) if checkpoint_step(p) < protect_step]
    doomed = older[: max(0, len(older) - (keep - 1))]
    for old in doomed:
        trash = old.parent / f".{old.name}.deleting"
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(old, trash)
        shutil.rmtree(trash, ignore_errors=True)
    return doomed


def plan_resume(output_dir: str | Path, args) -> list[Path]:
    """The checkpoints `resume_from_checkpoint` may load, best first, checked before any work starts.

    Damaged checkpoints (see `verify_checkpoint`) are left out with one warning naming them;
    `ResumeMismatchError` if the newest intact one was trained with other settings (one line naming each
    difference); `CheckpointError` if none is intact. Nothing is deleted either way.
    """
    output_dir = Path(output_dir)
    skipped: list[str] = []
    usable: list[Path] = []
    current = run_settings(args)
    for path in reversed(list_checkpoints(output_dir)):
        problem = verify_checkpoint(path)
        if problem is None:
            saved = json.loads((path / TRAINER_STATE_NAME).read_text()).get("run_settings")
            if saved is None:
                problem = "it records no run settings (written by an older hf-sbir), so it cannot be checked"
            elif not usable:
                diffs = compare_run_settings(saved, current)
                if diffs:
                    raise ResumeMismatchError(
                        f"Cannot resume from {path}: it was trained with other settings ({'; '.join(diffs)}). "
                        "Resume with the original settings, or start this run in a new --output_dir."
                    )
        if problem is None:
            usable.append(path)
        elif not usable:
            skipped.append(f"{path.name} ({problem})")
    if not usable:
        raise CheckpointError(
            f"No intact checkpoint to resume from in {output_dir / 'checkpoints'}: {', '.join(skipped)}. Nothing was "
            "deleted; move the folder away to start over, or resume from a copy of an intact checkpoint."
        )
    if skipped:
        logger.warning("Skipped damaged checkpoint(s) %s; resuming from %s instead.", ", ".join(skipped), usable[0])
    return usable


def resume_from_checkpoint(accelerator, method, plan: list[Path]) -> tuple[int, Path]:
    """Load the first checkpoint of `plan` (from `plan_resume`) that loads into `accelerator`'s objects and
    `method`; returns `(iterations_done, path)`."""
    failed = []
    for path in plan:
        try:
            accelerator.load_state(str(path))
            method_state = path / METHOD_STATE_NAME
            if method_state.is_file():
                method.load_state_dict(torch.load(method_state, weights_only=True))
        except Exception as err:  # checksum-clean files that still do not load (e.g. a library mismatch)
            failed.append(f"{path.name} ({type(err).__name__}: {err})")
            continue
        if failed and accelerator.is_main_process:
            logger.warning("Could not load checkpoint(s) %s; resumed from %s instead.", "; ".join(failed), path)
        return int(json.loads((path / TRAINER_STATE_NAME).read_text())["iterations_done"]), path
    raise CheckpointError(f"No checkpoint of the run loads: {'; '.join(failed)}. Nothing was deleted.")


# -------------------------------------------------------------------------------- atomic folders
def _replace_directory(staging: Path, final: Path) -> None:
    """Move the complete `staging` folder to `final`, replacing an existing one. The old folder is
    renamed aside first: at every instant `final` is either the old complete folder, the new complete
    folder, or absent (a kill between the two renames; the old copy then lies in `.<name>.old`)."""
    old = final.parent / f".{final.name}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: str | Path) -> Iterator[Path]:
    """Write a folder atomically: yields an empty staging folder whose name is `final`'s name (so files
    that record the folder's name, e.g. a model card, see the real one), inside a hidden sibling; on
    success a manifest is written and the folder is renamed to `final`. On an error the staging folder
    is removed and `final` is left as it was."""
    final = Path(final)
    parent = final.parent / f".{final.name}.partial"
    shutil.rmtree(parent, ignore_errors=True)  # left by a killed export
    staging = parent / final.name
    staging.mkdir(parents=True)
    try:
        yield staging
        write_manifest(staging)
        _replace_directory(staging, final)
    finally:
        shutil.rmtree(parent, ignore_errors=True)


def check_model_folder(folder: str | Path) -> None:
    """Refuse, in one line, a saved model folder that an export did not finish.

    A folder with a manifest must hold every file it lists, the weights at their full size (cheap enough
    for every load; text files such as the model card may be edited after the export); a folder without one
    (saved by hand, or by an older hf-sbir) must at least hold the preprocessing next to the weights,
    because loading it would otherwise fall back silently to a default transform.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    if (folder / MANIFEST_NAME).is_file():
        problem = verify_manifest(folder, hashes=False, sized=(".safetensors", ".bin", ".pt", ".pth"))
        if problem:
            raise IncompleteModelFolderError(
                f"{folder} is an incomplete model folder: {problem}. Re-export it (train.py --resume true on its run) "
                "or copy it again."
            )
        return
    from hf_sbir.data.processing import TRANSFORM_CONFIG_NAME

    weights = [n for n in ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin") if (folder / n).is_file()]
    if (folder / "config.json").is_file() and weights and not (folder / TRANSFORM_CONFIG_NAME).is_file():
        raise IncompleteModelFolderError(
            f"{folder} has weights but no {TRANSFORM_CONFIG_NAME} (an interrupted export?): its preprocessing is "
            "unknown. Re-export it with train.py, or save the transform with SbirImageTransform.save_pretrained."
        )
