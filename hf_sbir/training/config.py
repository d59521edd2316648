"""Training configuration: typed, coerced, range-checked settings read from a YAML/JSON file, with
command-line overrides.

    python train.py --config configs/quickstart.yaml --iterations 50 --output_dir runs/x
    python train.py --config cfg.yaml --set method_args.gcn_num_layers=0

`TrainConfig` is a pydantic dataclass: every field carries its type, its range and a one-line description
(the `--help` text is built from them), so a bad value is refused with one line before any work starts.
Values are coerced the way YAML users expect (`learning_rate: 1e-4`, which PyYAML reads as a *string*,
becomes 0.0001; `gzs: "false"` becomes False); anything that cannot be coerced is refused, never guessed.

Defaults are the Sketch-an-Anchor paper's recipe (§4.2): 1500 iterations, batch 16, Adam at 5e-6
with linear warm-up over 150 iterations then cosine decay to 1e-6.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from pydantic import BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from hf_sbir.training.methods import METHODS

MIXED_PRECISION = ("no", "fp16", "bf16")
CORRUPT_IMAGES = ("warn", "raise")
# accelerate's tracker names (accelerate.utils.LoggerType), plus our own JSON-lines tracker and "none".
LOG_WITH = ("jsonl", "none", "tensorboard", "wandb", "trackio", "comet_ml", "mlflow", "clearml", "dvclive", "aim", "swanlab", "all")
# The coarsest backbone we support (EfficientNet / ResNet) downsamples 32x: below 32 px its last feature map
# is empty, and ViT-S/8's 8 px patches leave fewer than 16 tokens. The tests' tiny models use exactly 32 px.
MIN_IMAGE_SIZE = 32
PEFT_METHODS = ("lora", "loha", "ia3")  # the peft methods that fit a ViT / CNN backbone (hf_sbir.training.peft)


class ConfigError(ValueError):
    """A wrong setting, or a wrong input a setting names (dataset folder, `init_model`, `method_args`, output
    folder). Raised before any work starts; the message is one line naming what was wrong and what to do, and
    `train.py` prints it as is (no traceback)."""


def _not_bool(value):
    # YAML `iterations: true` would otherwise become 1; a boolean where a number belongs is a mistake.
    if isinstance(value, bool):
        raise ValueError("expected a number, got a boolean")
    return value


Int = Annotated[int, BeforeValidator(_not_bool)]
Float = Annotated[float, BeforeValidator(_not_bool)]


def _setting(default=dataclasses.MISSING, help: str = "", choices: tuple | None = None, **constraints):
    """A TrainConfig field: its default, its one-line `--help` text and (for the help) its choices."""
    extra = {"choices": list(choices)} if choices else None
    if callable(default) and default in (dict, list):
        return Field(default_factory=default, description=help, json_schema_extra=extra, **constraints)
    return Field(default, description=help, json_schema_extra=extra, **constraints)


@dataclass(config=ConfigDict(extra="forbid", allow_inf_nan=False))
class TrainConfig:
    """Every setting of a training run. Method-specific settings go in `method_args` (validated by the method,
    see `hf_sbir.training.methods`)."""

    method: Literal[tuple(METHODS)] = _setting(  # type: ignore[valid-type]
        "sketch_an_anchor", "the training method (paper)", choices=tuple(METHODS)
    )
    # Data.
    dataset: str = _setting(
        "embedded",
        "'embedded' (generated default), 'sbir-mini' (real, found via $HF_SBIR_MINI_ROOT), or a dataset folder",
        min_length=1,
    )
    split: Optional[str] = _setting(
        "embedded",
        "zero-shot class split shipped with the package, or null (one 'all' split: fg_sbir, shape_views)",
    )
    gzs: bool = _setting(False, "generalised zero-shot gallery (20% of seen-class photos held out of training)")
    corrupt_images: Literal[CORRUPT_IMAGES] = _setting(  # type: ignore[valid-type]
        "warn", "unreadable/truncated image files: warn skips each, naming it; raise stops at the first",
        choices=CORRUPT_IMAGES,
    )
    # Model.
    backbone: Optional[str] = _setting(
        None, "'packaged' (offline EfficientNet-Lite0), a Hub id or folder, or null (Hub if reachable, else packaged)"
    )
    backbone_config: Optional[dict] = _setting(None, "build the backbone from this config dict (random init; tests)")
    init_model: Optional[str] = _setting(None, "start from a trained hf-sbir model folder or Hub id (same architecture)")
    model_config: dict = _setting(dict, "model-config fields of the method (architecture, losses); see method_args")
    text_embedder: Optional[str] = _setting(
        None, "class-name embedder: 'minilm' (packaged), a word2vec file, a CLIP Hub id, or null (automatic)"
    )
    # Parameter-efficient fine-tuning of the backbone with peft (hf_sbir.training.peft).
    peft: Optional[Literal[PEFT_METHODS]] = _setting(  # type: ignore[valid-type]
        None, "adapt the backbone with peft instead of fine-tuning it in full (heads still train), or null",
        choices=PEFT_METHODS,
    )
    peft_r: Int = _setting(8, "rank of the LoRA / LoHa adapters (integer >= 1; IA3 has no rank)", ge=1)
    peft_alpha: Float = _setting(16.0, "LoRA / LoHa scaling alpha (> 0): the update is scaled by alpha / r", gt=0)
    peft_dropout: Float = _setting(0.0, "dropout on the adapter's input (LoRA) or of whole modules (LoHa), 0..1", ge=0, lt=1)
    peft_target_modules: Optional[list[str]] = _setting(
        None, "backbone layer names (or name endings) to adapt, e.g. [q_proj, v_proj]; null: every pretrained Linear/Conv2d"
    )
    # Optimisation (paper §4.2).
    iterations: Int = _setting(1500, "optimiser steps of the run", ge=1)
    batch_size: Int = _setting(16, "sketch/photo pairs per step (per process)", ge=1)
    learning_rate: Float = _setting(5e-6, "peak Adam learning rate", gt=0)
    min_learning_rate: Float = _setting(1e-6, "learning rate at the end of the cosine decay (0..learning_rate)", ge=0)
    warmup_iterations: Int = _setting(150, "linear warm-up steps before the cosine decay", ge=0)
    weight_decay: Float = _setting(0.0, "Adam weight decay", ge=0)
    max_grad_norm: Optional[Float] = _setting(None, "clip the gradient norm to this value (> 0), or null for no clipping", gt=0)
    gradient_accumulation_steps: Int = _setting(1, "micro-batches per optimiser step", ge=1)
    mixed_precision: Literal[MIXED_PRECISION] = _setting("no", "mixed precision (accelerate)", choices=MIXED_PRECISION)  # type: ignore[valid-type]
    num_workers: Int = _setting(2, "DataLoader processes that decode + transform batches in the background (0: in the loop)", ge=0)
    seed: Int = _setting(0, "seed of the data order, augmentation and initialisation (integer >= 0)", ge=0)
    # Images.
    image_size: Int = _setting(224, f"square input size in pixels (>= {MIN_IMAGE_SIZE}: the backbones downsample 32x)", ge=MIN_IMAGE_SIZE)
    sketch_ink_crop: bool = _setting(True, "crop sketches to their ink before resizing")
    sketch_stroke_width: Int = _setting(1, "thicken sketch strokes by this many pixels (0 keeps them)", ge=0)
    # Bookkeeping.
    output_dir: str = _setting("outputs/sketch-an-anchor", "folder of the run: checkpoints, logs, model/", min_length=1)
    checkpoint_every: Int = _setting(100, "save a checkpoint every N iterations (and at the end)", ge=1)
    keep_checkpoints: Int = _setting(2, "keep the newest N checkpoints (>= 1)", ge=1)
    resume: bool = _setting(False, "continue the run in output_dir from its last checkpoint")
    stop_after: Optional[Int] = _setting(None, "stop this invocation after N iterations (resume later), or null", ge=1)
    log_with: str = _setting("jsonl", "metrics tracker: jsonl (logs/metrics.jsonl), none, or an accelerate tracker", choices=LOG_WITH)
    log_every: Int = _setting(1, "log the training losses every N iterations", ge=1)
    eval_before: bool = _setting(True, "evaluate the untrained model too (the before/after table)")
    eval_batch_size: Int = _setting(32, "images per forward pass when evaluating", ge=1)
    max_eval_queries: Optional[Int] = _setting(None, "evaluate on a seeded subsample of N queries, or null for all", ge=1)
    push_to_hub: bool = _setting(False, "upload model/ to the Hub at the end (needs hub_model_id)")
    hub_model_id: Optional[str] = _setting(None, "Hub repository for push_to_hub, e.g. your-name/sketch-an-anchor")
    progress: bool = _setting(True, "show progress bars")
    method_args: dict = _setting(dict, "the method's own settings (per method: see hf_sbir/training/methods/*.py)")

    @field_validator("model_config", "method_args", mode="before")
    @classmethod
    def _empty_mapping(cls, value):
        return {} if value is None else value  # `method_args:` with nothing under it (YAML null): no settings

    @field_validator("peft_target_modules", mode="before")
    @classmethod
    def _target_list(cls, value):
        if isinstance(value, str):  # `--peft_target_modules qkv`: one name
            value = [value]
        if isinstance(value, list) and (not value or not all(isinstance(v, str) and v for v in value)):
            raise ValueError("expected a non-empty list of layer names, e.g. [query, value]")
        return value

    @field_validator("split")
    @classmethod
    def _known_split(cls, value):
        if value is None:
            return value
        from hf_sbir.data.zero_shot import list_splits

        known = list_splits()
        if value.strip().lower().replace("-", "_") not in known:
            raise ValueError(f"unknown zero-shot split {value!r}; known: {', '.join(known)} (or null)")
        return value

    @field_validator("log_with")
    @classmethod
    def _known_tracker(cls, value):
        if value not in LOG_WITH:
            raise ValueError(f"unknown tracker {value!r}; known: {', '.join(LOG_WITH)}")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"min_learning_rate ({self.min_learning_rate}) must not exceed learning_rate ({self.learning_rate})"
            )
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub needs hub_model_id (e.g. 'your-name/sketch-an-anchor-sketchy')")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_file(cls, path: str | Path, **overrides) -> "TrainConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Training config file not found: {path}")
        text = path.read_text()
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise ConfigError(f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {' '.join(str(err).split())}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path} must hold a mapping of settings (key: value lines), got {type(data).__name__}")
        data.update(overrides)
        return cls.from_dict(data, source=str(path))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> "TrainConfig":
        """Validate `data`; a wrong setting raises `ConfigError` with one line naming each culprit."""
        known = list(settings())
        unknown = sorted(set(data) - set(known))
        if unknown:
            hints = [_did_you_mean(key, known) for key in unknown]
            raise ConfigError(
                f"Unknown training setting(s) {unknown}{''.join(hints)}{f' in {source}' if source else ''}. "
                f"Known settings: {', '.join(sorted(known))}."
            )
        try:
            return cls(**data)
        except ValidationError as err:
            where = f" in {source}" if source else ""
            raise ConfigError(
                f"Invalid training setting(s){where}: {format_validation_error(err)}. "
                "Fix the value (`python train.py --help` describes each setting)."
            ) from None


def settings() -> dict[str, Any]:
    """name -> pydantic FieldInfo of every `TrainConfig` field (default, description, constraints)."""
    return dict(TrainConfig.__pydantic_fields__)


def format_validation_error(err: ValidationError, prefix: str = "") -> str:
    """pydantic's multi-line report as one line: `name: what is wrong (got value)`, joined by '; '."""
    parts = []
    for item in err.errors(include_url=False):
        loc = ".".join(str(p) for p in item["loc"] if not isinstance(p, int) or len(item["loc"]) > 1)
        msg = item["msg"]
        if msg.startswith(("Value error, ", "Assertion failed, ")):
            msg = msg.split(", ", 1)[1]
        got = "" if item["type"] in ("value_error", "missing") or not loc else f" (got {item['input']!r})"
        parts.append(f"{prefix}{loc}: {msg}{got}" if loc else f"{prefix.rstrip('.')}{': ' if prefix else ''}{msg}")
    return "; ".join(parts)


def _did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _parse_value(text: str) -> Any:
    """CLI values are YAML scalars: 3 -> int, 1e-5 -> float, true -> bool, null -> None, [1,2] -> list."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML (e.g. an unbalanced bracket): keep the text, the validation names it
    # yaml reads "5e-6" as a string (no dot); accept the usual float spellings.
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _field_kind(info) -> str:
    """'str' for plain-text fields (kept verbatim), 'optional-str' (null/none -> None), else 'yaml'."""
    annotation = info.annotation
    if annotation is str:
        return "str"
    if typing.get_origin(annotation) in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if args == [str]:
            return "optional-str"
    return "yaml"


def _help(info) -> str:
    text = info.description or ""
    extra = info.json_schema_extra or {}
    if extra.get("choices"):
        text += f"; one of: {', '.join(map(str, extra['choices']))}"
    default = info.default_factory() if info.default_factory is not None else info.default
    shown = "null" if default is None else str(default).lower() if isinstance(default, bool) else default
    text += f" (default: {shown})"
    return text.replace("%", "%%")  # argparse %-formats help strings


class _ArgumentParser(argparse.ArgumentParser):
    def format_help(self) -> str:
        # Listing each method's method_args imports every method; only --help pays for that (a run imports
        # only the method it uses).
        self.epilog = _method_args_help()
        return super().format_help()


def build_arg_parser() -> argparse.ArgumentParser:
    parser = _ArgumentParser(
        prog="train.py",
        description=(
            "Train an hf-sbir model (Sketch-an-Anchor by default). Every flag is also a key of the --config "
            "file; flags override the file. Values are YAML scalars: true/false, null, 1e-4, [a, b]."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML or JSON file of settings (the keys below)")
    for name, info in settings().items():
        kind = _field_kind(info)
        choices = (info.json_schema_extra or {}).get("choices")
        metavar = "NAME" if choices else {"str": "TEXT", "optional-str": "TEXT"}.get(kind) or _metavar(info)
        parser.add_argument(f"--{name}", dest=name, default=None, metavar=metavar, help=_help(info))
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE",
        help="nested override, e.g. --set method_args.use_word_anchors=false (repeatable)",
    )
    return parser


def _method_args_help() -> str:
    """The `method_args` keys of each method (from its settings model), for the end of `--help`."""
    import textwrap

    from hf_sbir.training.methods import get_method_class

    lines = ["method_args of each method (--set method_args.KEY=VALUE; details in hf_sbir/training/methods/<method>.py):"]
    for name in METHODS:
        settings_class = get_method_class(name).settings_class
        keys = ", ".join(settings_class.known_keys()) if settings_class is not None else "(none)"
        lines += textwrap.wrap(f"{name}: {keys}", width=100, initial_indent="  ", subsequent_indent="    ")
    return "\n".join(lines)


def _metavar(info) -> str:
    annotation = info.annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is not Literal and type(None) in typing.get_args(annotation):
        annotation = args[0]  # Optional[X] -> X
    if typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is Literal or (info.json_schema_extra or {}).get("choices"):
        return "NAME"
    return {bool: "BOOL", int: "INT", float: "FLOAT", dict: "MAPPING"}.get(annotation, "VALUE")


def config_from_args(argv: list[str] | None = None) -> TrainConfig:
    """Parse train.py's command line: `--config` file, then flags, then `--set` overrides. Raises `ConfigError`
    (one line) for a wrong setting, `FileNotFoundError` for a missing config file."""
    args = build_arg_parser().parse_args(argv)
    overrides: dict[str, Any] = {}
    for name, info in settings().items():
        raw = getattr(args, name)
        if raw is None:
            continue
        kind = _field_kind(info)
        if kind == "str":
            overrides[name] = raw
        elif kind == "optional-str":
            overrides[name] = None if raw.lower() in ("null", "none", "~") else raw
        else:
            overrides[name] = _parse_value(raw)
    for item in args.set:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. method_args.gcn_num_layers=0), got {item!r}")
        target = overrides
        parts = key.split(".")
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a mapping of settings")
        target[parts[-1]] = _parse_value(raw)
    if args.config:
        base = TrainConfig.from_file(args.config).to_dict()
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        return TrainConfig.from_dict(base, source=f"{args.config} + command line" if overrides else args.config)
    return TrainConfig.from_dict(overrides)
