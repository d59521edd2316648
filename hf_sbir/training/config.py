"""Training configuration: a dataclass read from a YAML/JSON file, with command-line overrides.

    python train.py --config configs/quickstart.yaml --iterations 50 --output_dir runs/x
    python train.py --config cfg.yaml --set method_args.gcn_num_layers=0

Defaults are the Sketch-an-Anchor paper's recipe (§4.2): 1500 iterations, batch 16, Adam at 5e-6
with linear warm-up over 150 iterations then cosine decay to 1e-6.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass
class TrainConfig:
    """Every setting of a training run. Method-specific settings go in `method_args`."""

    method: str = "sketch_an_anchor"
    # Data: "embedded" (the generated default), "sbir-mini" / a folder path, or a benchmark root.
    dataset: str = "embedded"
    split: str | None = "embedded"  # a shipped zero-shot split (hf_sbir.data.list_splits()) or None
    gzs: bool = False  # generalised zero-shot gallery (20% of seen-class photos held out)
    corrupt_images: str = "warn"  # unreadable/truncated image files: "warn" skips each, naming it; "raise" stops at the first
    # Model: a backbone hub id / folder / "packaged" / None (automatic); or a tiny config for tests.
    backbone: str | None = None
    backbone_config: dict | None = None  # build the backbone from this config (random init) instead
    init_model: str | None = None  # start from a trained hf-sbir checkpoint instead
    model_config: dict = field(default_factory=dict)  # overrides of the method's model config
    text_embedder: str | None = None  # class-name embedder: None (automatic), "minilm", a word2vec file, a CLIP id
    # Optimisation (paper §4.2).
    iterations: int = 1500
    batch_size: int = 16
    learning_rate: float = 5e-6
    min_learning_rate: float = 1e-6
    warmup_iterations: int = 150
    weight_decay: float = 0.0
    max_grad_norm: float | None = None
    gradient_accumulation_steps: int = 1
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"
    seed: int = 0
    # Images.
    image_size: int = 224
    sketch_ink_crop: bool = True
    sketch_stroke_width: int = 1  # +1 px thickening: better on real sketches (BENCHMARKS.md, sbir-mini study)
    # Bookkeeping.
    output_dir: str = "outputs/sketch-an-anchor"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    resume: bool = False
    stop_after: int | None = None  # stop this invocation after N iterations (time-sliced jobs); resume later
    log_with: str = "jsonl"  # "jsonl", "tensorboard", or any accelerate tracker name; "none" disables
    log_every: int = 1
    eval_before: bool = True  # evaluate the untrained model too (the before/after table)
    eval_batch_size: int = 32
    max_eval_queries: int | None = None  # subsample queries for a quick evaluation (seeded)
    push_to_hub: bool = False
    hub_model_id: str | None = None
    progress: bool = True
    method_args: dict = field(default_factory=dict)

    def __post_init__(self):
        errors = []
        for name in ("iterations", "batch_size", "checkpoint_every", "gradient_accumulation_steps", "image_size", "log_every", "eval_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{name} must be a positive integer (got {value!r})")
        if self.warmup_iterations < 0:
            errors.append(f"warmup_iterations must be >= 0 (got {self.warmup_iterations!r})")
        if not self.learning_rate > 0:
            errors.append(f"learning_rate must be > 0 (got {self.learning_rate!r})")
        if self.min_learning_rate < 0 or self.min_learning_rate > self.learning_rate:
            errors.append(f"min_learning_rate must be in [0, learning_rate] (got {self.min_learning_rate!r})")
        if self.mixed_precision not in ("no", "fp16", "bf16"):
            errors.append(f"mixed_precision must be 'no', 'fp16' or 'bf16' (got {self.mixed_precision!r})")
        if self.stop_after is not None and self.stop_after < 1:
            errors.append(f"stop_after must be a positive integer or None (got {self.stop_after!r})")
        if self.push_to_hub and not self.hub_model_id:
            errors.append("push_to_hub needs hub_model_id (e.g. 'your-name/sketch-an-anchor-sketchy')")
        if errors:
            raise ValueError("Invalid training config: " + "; ".join(errors))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Training config file not found: {path}")
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of settings, got {type(data).__name__}")
        data.update(overrides)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown training setting(s): {unknown}. Known settings: {sorted(known)}")
        return cls(**data)


def _parse_value(text: str) -> Any:
    """CLI values are YAML scalars: 3 -> int, 1e-5 -> float, true -> bool, null -> None, [1,2] -> list."""
    value = yaml.safe_load(text)
    # yaml reads "5e-6" as a string (no dot); accept the usual float spellings.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Train an hf-sbir model (Sketch-an-Anchor by default). Every TrainConfig field is a flag.",
    )
    parser.add_argument("--config", help="YAML or JSON file with TrainConfig fields")
    for f in dataclasses.fields(TrainConfig):
        parser.add_argument(f"--{f.name}", dest=f.name, default=None, help=f"(default: {_default_of(f)!r})")
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="nested override, e.g. --set method_args.use_word_anchors=false (repeatable)",
    )
    return parser


def _default_of(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    args = build_arg_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for f in dataclasses.fields(TrainConfig):
        raw = getattr(args, f.name)
        if raw is not None:
            if f.type == "str":
                overrides[f.name] = raw
            elif f.type == "str | None":
                overrides[f.name] = None if raw.lower() in ("null", "none") else raw
            else:
                overrides[f.name] = _parse_value(raw)
    for item in args.set:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        target = overrides
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
        target[parts[-1]] = _parse_value(raw)
    if args.config:
        base = TrainConfig.from_file(args.config).to_dict()
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return TrainConfig.from_dict(base)
    return TrainConfig.from_dict(overrides)
