"""The training loop behind `train.py`, shared by every method (see `hf_sbir.training.method`).

accelerate handles devices, mixed precision, gradient accumulation and DDP; checkpoints use
`Accelerator.save_state` (model, optimiser, scheduler, RNG states) plus the loop's own state (the
iteration reached, the method's extra state), so `resume=True` continues where a stopped run left
off and ends with the same weights as a run that never stopped. How checkpoints and the exported
folder are kept safe from kills, corruption and changed settings is `hf_sbir.training.checkpointing`.

Data parallelism (`torchrun` / `accelerate launch` with N processes): `batch_size` is per process; each
process trains on its share of the global batch of the step (`hf_sbir.training.data_pipeline`), and the
losses with in-batch negatives gather the embeddings of every process (`hf_sbir.losses.distributed`), so
N processes x batch b train the same model as 1 process x batch N*b, up to float rounding. The
learning-rate schedule counts optimiser steps, whatever N. Only the main process evaluates, exports,
writes the model card and pushes.

Gradient accumulation over k micro-steps of b items: the k micro-batches are the k shares of the step's
global batch of k*b items, and their losses are averaged (accelerate divides each by k). For losses that
are means of per-sample terms (Adapt-and-Align; FG-SBIR without distillation) that is exactly the gradient
of one un-accumulated step of k*b. Losses with in-batch negatives (InfoNCE, the anchored sample loss, the
shape-views contrastive loss, FG-SBIR's L_KD) see each micro-batch's b items as the batch (as every
accumulation without a gradient cache does), so they match the k*b run in data, not in value.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import ProjectConfiguration, set_seed

from hf_sbir.training.checkpointing import (  # noqa: F401  (CHECKPOINT_PREFIX, list_checkpoints: public here too)
    CHECKPOINT_PREFIX,
    atomic_directory,
    describe_last_good,
    list_checkpoints,
    plan_resume,
    resume_from_checkpoint,
    save_checkpoint,
)
from hf_sbir.training.config import ConfigError, TrainConfig
from hf_sbir.training.data_pipeline import training_batches
from hf_sbir.training.method import load_zero_shot_data
from hf_sbir.training.methods import get_method_class
from hf_sbir.training.peft import ADAPTER_SUBFOLDER, is_peft_model, merged_model, peft_from_args, write_adapter_folder

logger = logging.getLogger("hf_sbir")


class JsonlTracker(GeneralTracker):
    """accelerate tracker that appends one JSON object per `log` call to `<logging_dir>/metrics.jsonl`."""

    name = "jsonl"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike):
        super().__init__()
        # The folder is made on first write, not here: a run refused during setup leaves no empty logs/.
        self.path = Path(logging_dir) / "metrics.jsonl"
        self.run_name = run_name

    @property
    def tracker(self):
        return self.path

    def store_init_configuration(self, values: dict):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        (self.path.parent / "config.json").write_text(json.dumps(values, indent=2, default=str))

    def log(self, values: dict, step: int | None = None, **kwargs):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, "time": time.time(), **values}, default=float) + "\n")


def lr_lambda(args: TrainConfig):
    """Linear warm-up to the base rate over `warmup_iterations`, then cosine decay to `min_learning_rate`."""

    def factor(step: int) -> float:
        if args.warmup_iterations and step < args.warmup_iterations:
            return (step + 1) / args.warmup_iterations
        span = max(1, args.iterations - args.warmup_iterations)
        progress = min(1.0, (step - args.warmup_iterations) / span)
        floor = args.min_learning_rate / args.learning_rate
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    output_dir: Path
    model_dir: Path | None
    iterations_done: int
    finished: bool
    metrics_before: dict[str, Any] | None = None
    metrics_after: dict[str, Any] | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    model: torch.nn.Module | None = None  # the exported model (e.g. the EMA copy), in eval mode, on the main process
    already_finished: bool = False  # output_dir already held this finished run: nothing was trained, results read back


def load_data(args: TrainConfig):
    """The category-level zero-shot data of `args` (what `TrainingMethod.load_data` does by default)."""
    return load_zero_shot_data(args)


def _make_trackers(args: TrainConfig, logging_dir: Path):
    if args.log_with in (None, "none", ""):
        return None
    if args.log_with == "jsonl":
        return [JsonlTracker("train", logging_dir)]
    return args.log_with


def train(args: TrainConfig) -> TrainResult:
    """Run (or resume) a training job; returns a `TrainResult`. See `TrainConfig` for the settings.

    Every user error (a wrong setting, `method_args`, dataset folder or layout, `init_model`, an output folder
    holding another run) raises `ConfigError` with one line, before anything is written. When `output_dir`
    already holds this very run, finished, its saved results are returned (`already_finished=True`)."""
    output_dir = Path(args.output_dir)
    with _user_errors():
        method = get_method_class(args.method)(args)
        method.check()
    if getattr(method, "method_settings", None) is not None:
        # The validated values under their canonical names (num_neighbours -> word_anchor_neighbours, "1e-3" ->
        # 0.001): what train_config.json, the trackers and the model card record is what the run uses.
        args = copy.copy(args)  # the caller's object stays as given; no second validation of the rest
        args.method_args = method.method_settings.model_dump(exclude_unset=True)
        method.args = args
    previous = _previous_run(args)
    if previous is not None:
        return previous
    checkpoints = list_checkpoints(output_dir) if args.resume else []
    if args.resume and not checkpoints:
        logger.warning("resume=True but no checkpoint in %s: starting from scratch.", output_dir / "checkpoints")
    resume_plan = plan_resume(output_dir, args) if checkpoints else []  # before any work: intact, same settings
    accelerator = Accelerator(
        cpu=_cpu_only_machine(),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=_make_trackers(args, output_dir / "logs"),
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        # The loop steps the scheduler once per optimiser step itself; accelerate's default would step it
        # num_processes times per step, running the warm-up + cosine schedule N times too fast.
        step_scheduler_with_optimizer=False,
    )
    set_seed(args.seed)

    with _user_errors():  # a missing folder, a wrong layout, a bad backbone id: still nothing written
        data = method.load_data()  # the zero-shot split by default; fine-grained pairs, procedural shapes ...
        model = method.build_model()
        transform = method.build_transform(model)
        model = peft_from_args(model, args)  # --peft: adapters on the backbone (a wrong target: one line)
    output_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (output_dir / RUN_SETTINGS_FILE).write_text(json.dumps(args.to_dict(), indent=2, default=str))

    metrics_before = None
    before_file = output_dir / "eval_before.json"
    if args.eval_before and accelerator.is_main_process:
        if before_file.is_file():
            metrics_before = json.loads(before_file.read_text())
        else:
            metrics_before = method.evaluate(model, data, transform)
            before_file.write_text(json.dumps(metrics_before, indent=2))
    method.setup(model, data, transform, accelerator)

    optimizer = torch.optim.Adam(method.parameter_groups(model), lr=args.learning_rate, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(args))
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    accelerator.init_trackers("hf_sbir", config={k: v for k, v in args.to_dict().items() if not isinstance(v, dict)})

    start = 0
    if checkpoints:
        start, last = resume_from_checkpoint(accelerator, method, resume_plan)
        logger.info("Resumed from %s (iteration %d of %d).", last, start, args.iterations)

    end = args.iterations if args.stop_after is None else min(args.iterations, start + args.stop_after)
    history: list[dict[str, float]] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=args.iterations, initial=start, desc="train", disable=not (args.progress and accelerator.is_main_process))
    t0 = time.perf_counter()
    model.train()
    batches = training_batches(
        method, start, end, args.batch_size, accumulation=args.gradient_accumulation_steps,
        num_processes=accelerator.num_processes, process_index=accelerator.process_index,
        num_workers=args.num_workers, pin_memory=accelerator.device.type == "cuda",
    )
    for iteration, micro_batches, data_wait_s in batches:
        micro_logs: list[dict[str, float]] = []
        for batch in micro_batches:
            batch = {k: v.to(accelerator.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
            with accelerator.accumulate(model):
                loss, step_logs = method.training_step(model, batch, iteration)
                step_logs = _mean_over_processes(accelerator, step_logs)
                if not math.isfinite(step_logs.get("loss", 0.0)) or not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"Loss became {loss.item()} at iteration {iteration}; lower the learning rate or check the data. "
                        f"Nothing was saved for it; {describe_last_good(output_dir)}."
                    )
                accelerator.backward(loss)
                if args.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad()
            micro_logs.append(step_logs)
        if not optimizer.step_was_skipped:  # fp16 overflow: accelerate skips the step, the schedule waits too
            scheduler.step()
        method.after_optimizer_step(model, iteration)
        logs = {k: sum(m[k] for m in micro_logs) / len(micro_logs) for k in micro_logs[0]}
        logs["lr"] = scheduler.get_last_lr()[0]
        logs["data_wait_s"] = data_wait_s  # time the step waited for its batches (background loading too slow if > 0)
        history.append(logs)
        if (iteration + 1) % args.log_every == 0:
            accelerator.log(logs, step=iteration + 1)
        rate = (iteration + 1 - start) / max(1e-9, time.perf_counter() - t0)
        bar.set_postfix(loss=f"{logs.get('loss', float('nan')):.4f}", it_s=f"{rate:.2f}")
        bar.update(1)
        done = iteration + 1
        if done % args.checkpoint_every == 0 or done == end:
            path = save_checkpoint(accelerator, method, output_dir, done, args.keep_checkpoints, args=args, model=model)
            logger.info("Checkpoint %d/%d saved: %s", done, args.iterations, path)
    bar.close()

    done = end
    finished = done >= args.iterations
    result = TrainResult(output_dir=output_dir, model_dir=None, iterations_done=done, finished=finished, metrics_before=metrics_before, history=history)
    if not finished:
        logger.info("Stopped after iteration %d of %d; continue with --resume true.", done, args.iterations)
        accelerator.end_training()
        return result

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = method.model_to_save(accelerator.unwrap_model(model))
        adapter = None
        if is_peft_model(final):  # the adapter goes to model/adapter/, the merged model (one file) to model/
            adapter, final = final, merged_model(final)
        final.eval()
        result.model = final
        result.metrics_after = method.evaluate(final, data, transform)
        (output_dir / "eval_after.json").write_text(json.dumps(result.metrics_after, indent=2))
        result.model_dir = export_model(final, transform, args, result, card_info=method.model_card_info(), adapter=adapter)
    accelerator.end_training()
    return result


# The settings of the run a folder holds (written when the run starts): how a re-run of the same command is
# recognised, and what it is compared with.
RUN_SETTINGS_FILE = "train_config.json"
# Settings that do not change what a run computes.
_BOOKKEEPING = ("resume", "stop_after", "progress", "output_dir", "num_workers")


@contextlib.contextmanager
def _user_errors():
    """Errors of the setup phase are the user's (settings, inputs): re-raised as a one-line `ConfigError`."""
    try:
        yield
    except ConfigError:
        raise
    except (ValueError, OSError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        raise ConfigError(" ".join(str(message).split())) from err


def _previous_run(args: TrainConfig) -> TrainResult | None:
    """What `output_dir` holds, before anything is written: nothing (None), this run finished (its saved
    results), or another / an unfinished run without `--resume true` (a `ConfigError` saying what to do)."""
    output_dir = Path(args.output_dir)
    checkpoints = list_checkpoints(output_dir)
    if args.resume or not checkpoints:
        return None
    done, saved = 0, None
    with contextlib.suppress(OSError, ValueError):  # unreadable: treated as unknown, never as "the same run"
        done = int(json.loads((checkpoints[-1] / "trainer_state.json").read_text()).get("iterations_done", 0))
    with contextlib.suppress(OSError, ValueError):
        saved = json.loads((output_dir / RUN_SETTINGS_FILE).read_text())
    current = json.loads(json.dumps(args.to_dict(), default=str))
    differ = [] if saved is None else sorted(k for k in set(saved) | set(current) if k not in _BOOKKEEPING and saved.get(k) != current.get(k))
    finished = done >= args.iterations and (output_dir / "model" / "config.json").is_file() and (output_dir / "eval_after.json").is_file()
    if finished and saved is not None and not differ:
        before = output_dir / "eval_before.json"
        return TrainResult(
            output_dir=output_dir, model_dir=output_dir / "model", iterations_done=done, finished=True,
            metrics_before=json.loads(before.read_text()) if args.eval_before and before.is_file() else None,
            metrics_after=json.loads((output_dir / "eval_after.json").read_text()), already_finished=True,
        )
    if differ:
        shown = ", ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in differ[:4]) + (", ..." if len(differ) > 4 else "")
        raise ConfigError(
            f"{output_dir} already holds another run ({shown}). Pass a new --output_dir for this one (or delete "
            f"{output_dir}); to continue that run, use its settings ({output_dir / RUN_SETTINGS_FILE}) with --resume "
            "true. Nothing was changed."
        )
    if saved is None:
        what = "a run whose settings were not recorded"
    elif done >= args.iterations:
        what = "this run, trained but not exported (stopped during the final evaluation or export)"
    else:
        what = f"this run, stopped at iteration {done} of {args.iterations}"
    raise ConfigError(
        f"{output_dir} already holds {what}. Continue it with --resume true, or pass a new --output_dir "
        f"(or delete {output_dir}) to start over; nothing was changed."
    )


def _cpu_only_machine() -> bool:
    """True where torch sees no accelerator (GPU, XPU, MPS ...). accelerate only forms a multi-process CPU (gloo)
    group under `torchrun` / `accelerate launch` when told `cpu=True`; without it every process would train
    alone, as if it were the main one."""
    probe = getattr(torch, "accelerator", None)
    return not (probe.is_available() if probe is not None else torch.cuda.is_available())


def _mean_over_processes(accelerator: Accelerator, logs: dict[str, float]) -> dict[str, float]:
    """The logged floats averaged over processes: terms computed on a process's share (per-sample means,
    accuracies) become the global batch's value, as one process would log it; gathered terms are already equal."""
    if accelerator.num_processes == 1 or not logs:
        return logs
    keys = sorted(logs)
    values = torch.tensor([float(logs[k]) for k in keys], dtype=torch.float64, device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean")
    return dict(zip(keys, values.tolist()))


def export_model(model, transform, args: TrainConfig, result: TrainResult, card_info: dict | None = None, adapter=None) -> Path:
    """`<output_dir>/model`, written atomically (`checkpointing.atomic_directory`: a kill leaves the previous
    folder or none, never a half one), then the optional push_to_hub (the whole folder: the merged model and,
    with `--peft`, its `adapter/` subfolder)."""
    model_dir = Path(args.output_dir) / "model"
    with atomic_directory(model_dir) as staging:
        write_model_folder(staging, model, transform, args, result, card_info, adapter=adapter)
    if args.push_to_hub:
        push_folder_to_hub(model_dir, args.hub_model_id)
    return model_dir


def write_model_folder(model_dir: Path, model, transform, args: TrainConfig, result: TrainResult, card_info: dict | None = None, adapter=None) -> None:
    """save_pretrained folder + processor configs + generated model card (`card_info`: the method's
    `model_card_info()`); with `adapter` (the peft-wrapped model), its peft adapter in `adapter/`."""
    from hf_sbir.training.model_card import write_model_card

    # Training tolerates a blank sketch in the data ("keep"); the saved model refuses blank queries, as the
    # default transform does, instead of silently scoring them.
    transform = transform.for_inference()
    model.save_pretrained(model_dir)
    transform.save_pretrained(model_dir)
    # The same preprocessing as a transformers image processor with its code (sketch steps included), so
    # `AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)` works without hf-sbir.
    transform.to_image_processor().save_pretrained(model_dir)
    if adapter is not None:
        # A subfolder: an adapter_config.json next to config.json would make AutoModel.from_pretrained(model/)
        # load the base model the adapter names instead of the merged one.
        write_adapter_folder(adapter, model_dir / ADAPTER_SUBFOLDER)
    # The weights arrive through a temporary file (mode 600); give every file the mode config.json got
    # from the user's umask, so a shared or uploaded folder is readable like the rest.
    mode = (model_dir / "config.json").stat().st_mode & 0o777
    for path in model_dir.rglob("*"):
        if path.is_file() and path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    write_model_card(model_dir, args, result, card_info)


def push_folder_to_hub(folder: Path, repo_id: str) -> str:
    """Upload a saved model folder; a clear error when offline or not logged in."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, commit_message="Upload hf-sbir model")
    except HfHubHTTPError as err:
        raise RuntimeError(
            f"push_to_hub to {repo_id!r} failed: {err}. Log in with `hf auth login` (or set HF_TOKEN) and check the "
            f"repository name. The model is saved locally in {folder}."
        ) from err
    except Exception as err:  # connection errors, offline mode
        raise RuntimeError(
            f"push_to_hub to {repo_id!r} failed: the Hugging Face Hub is not reachable ({type(err).__name__}: {err}). "
            f"The model is saved locally in {folder}; upload it later with `hf upload {repo_id} {folder}`."
        ) from err
    return str(info)
