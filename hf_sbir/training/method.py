"""What one method contributes to the shared training loop.

The loop (`hf_sbir.training.trainer.train`) owns everything methods have in common: accelerate
(device placement, mixed precision, gradient accumulation, DDP), the optimiser and the warm-up +
cosine schedule, checkpoints and `--resume`, logging, the final evaluation, `save_pretrained`, the
model card and `push_to_hub`. A method says how to build its model and transform, how to make the
batch of step `t`, and how to turn a batch into a loss; methods whose data is not a category-level
zero-shot split (fine-grained pairs, procedural shapes) also override `load_data`.

Settings: a method declares its `method_args` as one `MethodSettings` model (`settings_class`); the loop
calls `check()` before any work, so a wrong setting is refused in one line before anything is written.

Batches (data parallelism, background loading). A method describes the *global* batch of step t with
`batch_plan(t, size)`: a cheap list of what each item is made of (dataset rows, augmentation seeds), a
pure function of (seed, t, size). The loop (`hf_sbir.training.data_pipeline`) draws the plan for
`batch_size x processes x accumulation steps` items, gives each process and micro-step an equal share,
and has `make_batch(t, share)` decode and transform that share in DataLoader worker processes. So a
run's data depends only on (seed, t), never on the number of processes, resume is exact, and N
processes x batch b see the same items as 1 process x batch N*b.

Resumability rule: `batch_plan` and `make_batch` must depend only on (seed, step) and on the data
loaded in `setup` (never on global random state or on anything training changes), so that a run
stopped after step t and resumed gives the same batches as one that never stopped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn


class TrainingMethod:
    """Base class; subclasses register themselves in `hf_sbir.training.methods.METHODS` by `name`.

    Args:
        args: the run's `TrainConfig` (method-specific settings live in `args.method_args`, a dict).
    """

    name: str = ""
    # The method's `method_args` model (`hf_sbir.training.method_settings.MethodSettings` subclass).
    settings_class = None
    # Category-level zero-shot methods train on the seen classes of `args.split` (a `train` split must exist).
    requires_split: bool = False

    def __init__(self, args):
        self.args = args
        if self.settings_class is not None:
            # Parsed once: unknown keys and wrong types are refused here, with one line.
            self.method_settings = self.settings_class.parse(getattr(args, "method_args", None))
            self.model_kwargs = self.method_settings.config_kwargs(getattr(args, "model_config", None))

    def check(self) -> None:
        """Validate the run's settings before any work starts (the loop calls this first): the model-config
        values through the config class, or with `init_model` the changes asked of the trained model (only
        runtime fields may change). Raises `ConfigError` (one line)."""
        from hf_sbir.training.config import ConfigError

        if self.requires_split and getattr(self.args, "split", None) is None:
            from hf_sbir.data import list_splits

            raise ConfigError(
                f"{self.name} trains on the seen classes of a zero-shot split, but split is null (one 'all' split, "
                f"no train/test classes); set split to one of: {', '.join(list_splits())}."
            )
        if self.settings_class is None:
            return
        init_model = getattr(self.args, "init_model", None)
        if not init_model:
            self.method_settings.check_config(self._config_kwargs(), getattr(self.args, "backbone_config", None))
            return
        from transformers import AutoConfig

        # A path that does not exist gets its own message (the Hub's "repo id must be in the form..." misleads).
        looks_local = Path(init_model).expanduser().is_absolute() or init_model.startswith((".", "~")) or init_model.count("/") > 1
        if looks_local and not Path(init_model).expanduser().is_dir():
            raise ConfigError(f"init_model folder not found: {Path(init_model).expanduser().resolve()}; pass a trained model's folder.")
        try:
            config = AutoConfig.from_pretrained(init_model)
        except (OSError, ValueError) as err:
            raise ConfigError(
                f"init_model {init_model!r} is not a saved model folder or a reachable Hub id: {' '.join(str(err).split())[:300]}"
            ) from None
        self.method_settings.apply_to_trained(config, self._config_kwargs(), init_model)

    # -- model ------------------------------------------------------------------------------------
    def _config_kwargs(self) -> dict[str, Any]:
        """The model-config kwargs of the run (`model_config` + the config fields of `method_args`)."""
        return dict(getattr(self, "model_kwargs", {}))

    def build_model(self) -> nn.Module:
        """The PreTrainedModel to train (from `args.model` / `args.backbone`), before any data is seen."""
        raise NotImplementedError

    def load_init_model(self, kwargs: dict[str, Any]) -> nn.Module:
        """The trained model of `args.init_model`, with the runtime config changes of `kwargs` applied as the
        config class validated them (the one place that does it for every method)."""
        from transformers import AutoModel

        model = AutoModel.from_pretrained(self.args.init_model)
        for key, value in self.method_settings.apply_to_trained(model.config, kwargs, self.args.init_model).items():
            setattr(model.config, key, value)
        return model

    def build_transform(self, model: nn.Module):
        """`(PIL image, domain) -> FloatTensor (3, H, W)` used for training and evaluation."""
        raise NotImplementedError

    # -- data ------------------------------------------------------------------------------------
    def load_data(self):
        """The data the run trains and evaluates on, loaded once by the loop and passed to `setup` and
        `evaluate`. Default: `args.dataset` with the zero-shot split `args.split`, its `train` split checked
        by the leak guard (no unseen class may be trained on)."""
        return load_zero_shot_data(self.args)

    def setup(self, model: nn.Module, data, transform, accelerator) -> None:
        """Called once before training with the result of `load_data()` (by default a `DatasetDict` whose
        `train` split holds seen classes only — the leak guard has already run on it). Precompute what the
        method needs (anchors, teacher features); cache in `args.output_dir` if slow."""

    def batch_plan(self, step: int, size: int) -> list | dict[str, list]:
        """What the global batch of step `step` (0-based) with `size` items is made of: a list with one entry per
        item (row indices, augmentation seeds; no decoding), or a dict of such lists whose lengths are multiples
        of `size`'s shares (e.g. extra unlabelled images). Shares are contiguous slices, one per process and
        micro-step (`hf_sbir.training.data_pipeline.share_of_plan`)."""
        raise NotImplementedError

    def make_batch(self, step: int, plan) -> dict[str, torch.Tensor]:
        """The CPU tensors of `plan` (a share of `batch_plan(step, ...)`). Runs in DataLoader worker processes:
        it may only read what `setup` prepared."""
        raise NotImplementedError

    def next_batch(self, step: int) -> dict[str, torch.Tensor]:
        """The batch of step `step` for one process without accumulation (`args.batch_size` items)."""
        return self.make_batch(step, self.batch_plan(step, self.args.batch_size))

    # -- optimisation ----------------------------------------------------------------------------
    def parameter_groups(self, model: nn.Module) -> list[dict[str, Any]]:
        """Optimiser parameter groups; default: every trainable parameter at `args.learning_rate`."""
        return [{"params": [p for p in model.parameters() if p.requires_grad]}]

    def training_step(self, model: nn.Module, batch: dict[str, torch.Tensor], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Return (loss to backpropagate, floats to log)."""
        raise NotImplementedError

    def after_optimizer_step(self, model: nn.Module, step: int) -> None:
        """Hook after each optimiser step (e.g. an EMA update)."""

    def state_dict(self) -> dict[str, Any]:
        """Extra method state saved with each checkpoint (tensors or JSON-able values)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    # -- evaluation and export -------------------------------------------------------------------
    def evaluate(self, model: nn.Module, data, transform) -> dict[str, Any]:
        """Metrics on the held-out (unseen) split: {"metrics": {name: float}, "per_class": [...], "task": str}."""
        raise NotImplementedError

    def model_to_save(self, model: nn.Module) -> nn.Module:
        """The model whose weights are exported (e.g. the EMA copy)."""
        return model

    def model_card_info(self) -> dict[str, Any]:
        """How the model card's model-index describes the evaluation: any of `task_name`, `dataset_type`,
        `dataset_name`, `dataset_split`, `tags` (a list), and `template_values` (extra values for the method's
        card template). Default `{}`: zero-shot category-level retrieval on the unseen classes of
        `args.dataset` / `args.split` (see `hf_sbir.training.model_card`)."""
        return {}


def load_zero_shot_data(args):
    """`args.dataset` with the zero-shot split `args.split` (and `args.gzs`); the `train` split goes through
    the leak guard, because zero-shot means zero-shot."""
    from hf_sbir.data import guard_training_set, load_sbir_dataset

    data = load_sbir_dataset(args.dataset, split=args.split, gzs=args.gzs, on_error=args.corrupt_images)
    if args.split:
        guard_training_set(data["train"], args.split)
    return data
