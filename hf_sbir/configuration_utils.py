"""Shared base of the four families' configs: the backbone as a declared sub-config, and the value checks.

transformers propagates `dtype` and the attention implementation to the sub-configs a config declares, and
serialises nested configs in `to_dict`. Our backbone can be any of several config classes (ViT, DINOv2, CLIP
vision, ResNet, PVT, the packaged hybrid), so it is declared through `AutoConfig`; each family resolves the
dict of a saved `config.json` into its config class itself (`resolve_backbone_config`), because each accepts
a different set of backbones. Saved configs keep their keys: `backbone_config` is still a nested dict.

This file is bundled flat into saved model folders for `trust_remote_code` users: it imports package
modules only as one-line `from hf_sbir.<path>.<module> import ...` (see `hf_sbir/modeling_utils.py`).
"""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

try:  # transformers >= 5 declares sub-configs with a spec; older releases read the `sub_configs` mapping
    from transformers.configuration_utils import SubConfigSpec
except ImportError:  # pragma: no cover
    SubConfigSpec = None

from hf_sbir.backbones.configuration_hybrid_efficientnet import HybridEfficientNetConfig


class SbirConfig(PretrainedConfig):
    """Base class of the families' configs. A subclass sets `self.backbone_config` (a config object, from
    `resolve_backbone_config`) before calling `super().__init__(**kwargs)`."""

    if SubConfigSpec is not None:
        # `backbone_config` is always a config object by the time transformers looks (the family resolves it
        # first), so the spec's default type is never used to build one; it documents the packaged default.
        sub_configs_defaults = {
            "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type=HybridEfficientNetConfig.model_type)
        }
    else:  # pragma: no cover
        sub_configs = {"backbone_config": AutoConfig}

    def __init__(self, **kwargs):
        super().__init__(**kwargs)


def check_positive_int(name: str, value) -> None:
    """`value` is an integer > 0 (a bool is not), else ValueError naming the setting and the value."""
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"{name} must be a positive integer; got {value!r}.")


def check_non_negative_int(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0; got {value!r}.")


def check_positive(name: str, value) -> None:
    """`value` is a number > 0 (NaN is not)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}.")


__all__ = ["SbirConfig", "check_non_negative_int", "check_positive", "check_positive_int"]
