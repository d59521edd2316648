"""One home per setting: each method's `method_args` are one pydantic model (`MethodSettings` subclass).

A method's settings are of two kinds:

- its own training settings (data source, teacher stage, augmentation...), used by the method only;
- fields of its model config (`SketchAnAnchorConfig`, ...), which the model uses and `config.json` records.
  They can be given in `method_args` or in `TrainConfig.model_config` (never both with different values) and
  are merged into the config kwargs by `config_kwargs`; the config class stays the one home of their defaults
  and ranges (its `__init__` checks them), so the saved `config.json` is exactly what the run used.

With `init_model` (start from a trained model), only the config fields a method lists as `runtime_fields`
may change (temperatures, loss weights, augmentation switches); a change to any other field would describe
an architecture the saved weights do not have, and is refused. The changed config is rebuilt through the
config class, so its checks run again (`contrastive_temperature=-1` is refused there too).
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from hf_sbir.training.config import ConfigError, format_validation_error


class MethodSettings(BaseModel):
    """Base of a method's `method_args` model: typed fields, unknown keys refused with the known list.

    Subclasses declare their own settings as fields with defaults, and the model-config fields they accept
    as fields with default `None` ("the config's default") listed in `config_fields`.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, populate_by_name=True, frozen=True)

    method_name: ClassVar[str] = ""
    config_class: ClassVar[type | None] = None  # the method's PretrainedConfig subclass
    config_fields: ClassVar[tuple[str, ...]] = ()  # fields of `config_class` that method_args may set
    runtime_fields: ClassVar[tuple[str, ...]] = ()  # config fields `init_model` may change
    backbone_dependent_fields: ClassVar[tuple[str, ...]] = ()  # checked once the backbone is known

    @classmethod
    def parse(cls, method_args: dict | None) -> "MethodSettings":
        """Validate a run's `method_args`; raises `ConfigError` (one line, with the known keys) when wrong."""
        method_args = dict(method_args or {})
        known = cls.known_keys()
        unknown = sorted(set(method_args) - set(known))
        if unknown:
            raise ConfigError(
                f"Unknown {cls.method_name} method_args {unknown}; known: {', '.join(sorted(known))}."
            )
        try:
            return cls(**method_args)
        except ValidationError as err:
            raise ConfigError(
                f"Invalid {cls.method_name} method_args: {format_validation_error(err)}."
            ) from None

    @classmethod
    def known_keys(cls) -> list[str]:
        keys = []
        for name, info in cls.model_fields.items():
            keys.append(name)
            choices = getattr(info.validation_alias, "choices", None) or []
            keys += [alias for alias in choices if isinstance(alias, str) and alias != name]
        return keys

    # -- the model config ---------------------------------------------------------------------------
    def method_only(self) -> dict[str, Any]:
        """The method's own settings (all of them, defaults included), as a plain dict."""
        return {k: v for k, v in self.model_dump().items() if k not in self.config_fields}

    def config_kwargs(self, model_config: dict | None = None) -> dict[str, Any]:
        """Model-config kwargs of the run: `TrainConfig.model_config` merged with the config fields set in
        `method_args`. Refuses keys the config class does not have, and a key set in both places differently."""
        model_config = dict(model_config or {})
        allowed = _init_parameters(self.config_class) if self.config_class is not None else set()
        unknown = sorted(set(model_config) - allowed)
        if unknown:
            raise ConfigError(
                f"Unknown {self.method_name} model_config key(s) {unknown}; the {self.config_class.__name__} fields are: "
                f"{', '.join(sorted(allowed))}."
            )
        from_args = {k: getattr(self, k) for k in self.config_fields if k in self.model_fields_set}
        for key, value in from_args.items():
            if key in model_config and model_config[key] != value:
                raise ConfigError(
                    f"{key} is set twice, model_config.{key}={model_config[key]!r} and method_args.{key}={value!r}; "
                    "set it once."
                )
        return {**model_config, **from_args}

    def check_config(self, kwargs: dict[str, Any], backbone_config: dict | None) -> None:
        """Build the model config from `kwargs` (without weights) so that its own checks run now, before any
        work starts; fields that depend on the backbone are checked when the model is built."""
        if self.config_class is None:
            return
        kwargs = {k: v for k, v in kwargs.items() if backbone_config is not None or k not in self.backbone_dependent_fields}
        try:
            self.config_class(backbone_config=backbone_config, **kwargs)
        except (ValueError, TypeError) as err:
            raise ConfigError(f"Invalid {self.method_name} model settings: {_one_line(err)}") from None

    def apply_to_trained(self, config, kwargs: dict[str, Any], source: str) -> dict[str, Any]:
        """`init_model`: the config changes `kwargs` asks of a trained model's `config`. Refuses architecture
        changes (fields not in `runtime_fields`), re-validates the changed config through the config class, and
        returns the changes as the config class validated them (`TrainingMethod.load_init_model` applies them)."""
        if self.config_class is not None and config.model_type != self.config_class.model_type:
            raise ConfigError(
                f"init_model {source!r} is a {config.model_type!r} model, not {self.config_class.model_type!r}; "
                f"pick a {self.method_name} model or another --method."
            )
        changes = {k: v for k, v in kwargs.items() if getattr(config, k, object()) != v}
        frozen = sorted(k for k in changes if k not in self.runtime_fields)
        if frozen:
            now = ", ".join(f"{k}={getattr(config, k, None)!r} (asked {changes[k]!r})" for k in frozen)
            raise ConfigError(
                f"init_model {source!r}: {now} would change the trained model's architecture. Remove "
                f"{'it' if len(frozen) == 1 else 'them'}, or train from a backbone instead; with init_model only "
                f"{', '.join(self.runtime_fields) or 'nothing'} can change."
            )
        if changes:
            try:
                validated = self.config_class.from_dict({**config.to_dict(), **changes})
            except (ValueError, TypeError) as err:
                raise ConfigError(f"Invalid {self.method_name} model settings for init_model {source!r}: {_one_line(err)}") from None
            # The values the config class made of them (a clipped layer index, a coerced type), not the raw ones.
            changes = {k: getattr(validated, k) for k in changes}
        return changes


def _init_parameters(config_class) -> set[str]:
    params = inspect.signature(config_class.__init__).parameters
    # backbone_config has its own TrainConfig setting (and `backbone` / `init_model` choose the weights).
    skip = {"self", "backbone_config"}
    return {name for name, p in params.items() if name not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


__all__ = ["MethodSettings"]
